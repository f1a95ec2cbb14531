//! An h2 stream to an app that speaks only HTTP/1.1 (`[inbound]
//! app_protocol = "http1"`): the request goes out through hyper's HTTP/1.1
//! client over the shard's socket, and the answer comes back as h2.
//!
//! Translation: `:authority` becomes `Host` and the target is sent in
//! origin form; a body without `content-length` goes chunked; fields that
//! belong to one connection are dropped both ways; the app's chunked body
//! and trailers come back as DATA and a trailing HEADERS frame. `te:
//! trailers` is passed on, so an app may send trailers.
//!
//! The client's trailers reach the app only when the request announces
//! them in a `trailer` field and goes chunked (no `content-length`):
//! hyper's HTTP/1.1 client writes only announced trailer fields (hyper
//! 1.x, `proto::h1::encode::Encoder::encode_trailers`), and leaves out some
//! that RFC 9110 6.5.1 keeps out of trailers (`content-type`,
//! `authorization`, ...). Announcing them for the client is not possible:
//! the head goes out before the trailers arrive, and holding it back would
//! stop streaming bodies (gRPC streams) from streaming.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::*;
use crate::forward::h2::body::send_all;

/// Idle HTTP/1.1 connections to apps, on this shard's thread.
struct Idle {
    addr: SocketAddr,
    since: Instant,
    send: SendRequest<ClientBody>,
}

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// The client's request body, as hyper pulls it. Capacity is released to
/// the client as hyper takes each chunk (hyper writes it before it asks
/// for the next one).
struct ClientBody {
    recv: RecvStream,
    data_done: bool,
    received: Rc<Cell<u64>>,
    /// The identity field (inbound): the proxy's word in the head, so a
    /// client's trailer of that name is dropped.
    identity: Option<HeaderName>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = &mut *self;
        if !me.data_done {
            match me.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    let _ = me.recv.flow_control().release_capacity(b.len());
                    me.received.set(me.received.get() + b.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => me.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match me.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(mut t))) => {
                if let Some(name) = &me.identity {
                    t.remove(name);
                }
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// An idle HTTP/1.1 connection to `addr`, if one is pooled.
fn pooled(addr: SocketAddr, cfg: &Config) -> Option<SendRequest<ClientBody>> {
    let idle_limit = cfg.upstream.pool_idle_timeout;
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|c| !c.send.is_closed() && c.since.elapsed() < idle_limit);
        let i = idle
            .iter()
            .position(|c| c.addr == addr && c.send.is_ready())?;
        Some(idle.swap_remove(i).send)
    })
}

/// A new HTTP/1.1 connection to `addr`.
async fn connect(
    addr: SocketAddr,
    cfg: &Config,
    deadline: Instant,
) -> Result<SendRequest<ClientBody>, ErrorKind> {
    let limit = cfg.timeouts.connect.min(left(deadline));
    let tcp = crate::forward::upstream::connect_to(cfg, addr, limit)
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                ErrorKind::ConnectTimeout
            } else {
                ErrorKind::ConnectFailed
            }
        })?;
    let io = tcp.into_poll().map_err(|_| ErrorKind::ConnectFailed)?;
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| ErrorKind::ConnectFailed)?;
    runtime::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!("HTTP/1.1 connection to the app ended: {e}");
        }
    });
    Ok(send)
}

/// What stopped the wait for the app's answer.
enum Waited {
    Answer(
        Box<
            Result<
                http::Response<hyper::body::Incoming>,
                hyper::client::conn::TrySendError<http::Request<ClientBody>>,
            >,
        >,
    ),
    ClientReset,
    Timeout,
}

impl Call<'_> {
    /// Serves the stream through HTTP/1.1 to the app, or to an endpoint of
    /// a static service that speaks only HTTP/1.1 (one try).
    pub(super) async fn via_http1(
        &mut self,
        endpoints: &Endpoints<'_>,
        recv: RecvStream,
        deadline: Instant,
    ) {
        let (app, _) = endpoints.pick(self.shard, &Tried::default(), None, Instant::now());
        self.ex.upstream = Some(app);
        let mut req = self.upstream_request(None);
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        if let Some(a) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            req.headers_mut().insert(http::header::HOST, a);
        }
        let origin_form = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        *req.uri_mut() = origin_form;
        *req.version_mut() = http::Version::HTTP_11;
        let received = Rc::new(Cell::new(0));
        let body = ClientBody {
            recv,
            data_done: false,
            received: received.clone(),
            identity: self.identity_field(),
        };
        let (parts, ()) = req.into_parts();
        let mut req = http::Request::from_parts(parts, body);
        // A pooled connection the app closed meanwhile does not take the
        // request (hyper gives it back unsent): it goes on a new one.
        let mut reuse = pooled(app, self.cfg);
        let (send, answer) = loop {
            let fresh = reuse.is_none();
            let mut send = match reuse.take() {
                Some(s) => s,
                None => match connect(app, self.cfg, deadline).await {
                    Ok(s) => s,
                    Err(kind) => return self.answer(&Answer::Error(kind)),
                },
            };
            if let Some(rec) = self.ex.trace.rec.as_mut() {
                rec.connected(Instant::now());
            }
            let answer = self.wait_http1(send.try_send_request(req), deadline).await;
            match answer {
                Waited::Answer(r) if r.is_err() && !fresh => {
                    let Err(mut e) = *r else {
                        unreachable!("checked")
                    };
                    match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => break (send, Waited::Answer(Box::new(Err(e)))),
                    }
                }
                other => break (send, other),
            }
        };
        self.ex.bytes_in = received.get();
        let resp = match answer {
            Waited::Answer(r) => match *r {
                Ok(r) => {
                    if let Some(rec) = self.ex.trace.rec.as_mut() {
                        rec.first_byte(Instant::now());
                    }
                    r
                }
                Err(e) => {
                    tracing::debug!(%app, "HTTP/1.1 app failed the request: {}", e.error());
                    return self.answer(&Answer::Error(ErrorKind::UpstreamReset));
                }
            },
            Waited::ClientReset => return self.count_reset(ResetBy::Client),
            Waited::Timeout => return self.answer(&Answer::Error(ErrorKind::UpstreamTimeout)),
        };
        let (mut rparts, mut incoming) = resp.into_parts();
        // An HTTP/1.0 answer, or `connection: close`: hyper closes it after.
        let reusable = rparts.version == http::Version::HTTP_11
            && !rparts
                .headers
                .get_all(http::header::CONNECTION)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
            "trailer",
        ] {
            rparts.headers.remove(name);
        }
        // `coremesh-error` is this proxy's word to its callers.
        rparts.headers.remove(COREMESH_ERROR);
        rparts.version = http::Version::HTTP_2;
        self.ex.status = rparts.status.as_u16();
        if self.is_grpc {
            self.grpc_status = grpc_code(rparts.headers.get(GRPC_STATUS));
        }
        let end = incoming.is_end_stream();
        let mut client_send = match self
            .respond
            .send_response(http::Response::from_parts(rparts, ()), end)
        {
            Ok(s) => s,
            Err(_) => return self.count_reset(ResetBy::Client),
        };
        if end {
            self.ex.end = Some(Instant::now());
            if reusable {
                self.keep(app, send);
            }
            return;
        }
        match self.relay_http1(&mut incoming, &mut client_send).await {
            Ok(()) => {
                self.ex.end = Some(Instant::now());
                if reusable {
                    self.keep(app, send);
                }
            }
            Err(by) => {
                client_send.send_reset(Reason::CANCEL);
                self.count_reset(by);
            }
        }
    }

    /// Waits for the app's answer, the client's reset or the deadline.
    async fn wait_http1<F>(&mut self, fut: F, deadline: Instant) -> Waited
    where
        F: std::future::Future<
            Output = Result<
                http::Response<hyper::body::Incoming>,
                hyper::client::conn::TrySendError<http::Request<ClientBody>>,
            >,
        >,
    {
        let mut fut = std::pin::pin!(fut);
        let mut timer = std::pin::pin!(runtime::sleep(left(deadline)));
        let respond = &mut self.respond;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Waited::Answer(Box::new(r)));
            }
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(Waited::ClientReset);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Waited::Timeout);
            }
            Poll::Pending
        })
        .await
    }

    /// Relays the app's body and trailers. `Err`: who ended it early.
    async fn relay_http1(
        &mut self,
        incoming: &mut hyper::body::Incoming,
        to: &mut h2::SendStream<Bytes>,
    ) -> Result<(), ResetBy> {
        let idle = self.cfg.timeouts.idle;
        let last = Cell::new(Instant::now());
        loop {
            let frame = {
                let mut next = std::pin::pin!(std::future::poll_fn(
                    |cx| Pin::new(&mut *incoming).poll_frame(cx)
                ));
                match runtime::timeout(idle, &mut next).await {
                    Ok(f) => f,
                    Err(_) => return Err(ResetBy::Proxy),
                }
            };
            match frame {
                None => {
                    to.send_data(Bytes::new(), true)
                        .map_err(|_| ResetBy::Client)?;
                    return Ok(());
                }
                Some(Err(e)) => {
                    tracing::debug!("HTTP/1.1 app's body failed: {e}");
                    return Err(ResetBy::Upstream);
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => {
                        let n = data.len() as u64;
                        send_all(to, data, &last, false)
                            .await
                            .map_err(|_| ResetBy::Client)?;
                        self.ex.bytes_out += n;
                    }
                    Err(f) => {
                        if let Ok(mut t) = f.into_trailers() {
                            if self.is_grpc {
                                self.grpc_status =
                                    grpc_code(t.get(GRPC_STATUS)).or(self.grpc_status);
                            }
                            t.remove(COREMESH_ERROR);
                            to.send_trailers(t).map_err(|_| ResetBy::Client)?;
                            return Ok(());
                        }
                    }
                },
            }
        }
    }

    /// Keeps a connection whose exchange completed for the next stream.
    fn keep(&self, addr: SocketAddr, send: SendRequest<ClientBody>) {
        if send.is_closed() {
            return;
        }
        let max = self.cfg.upstream.max_idle_per_endpoint;
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.iter().filter(|c| c.addr == addr).count() < max {
                idle.push(Idle {
                    addr,
                    since: Instant::now(),
                    send,
                });
            }
        });
    }
}
