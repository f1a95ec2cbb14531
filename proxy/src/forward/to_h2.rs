//! An HTTP/1.1 request to an upstream that speaks only h2c (`[inbound]
//! app_protocol = "h2c"`, or a static service's `protocol = "h2c"`): the
//! request goes out as an h2 stream on the shard's pooled h2 connections,
//! and the answer comes back as HTTP/1.1.
//!
//! Translation: `Host` becomes `:authority`; a Content-Length or chunked
//! body becomes DATA (the chunked framing is removed; its trailer section
//! becomes a trailing HEADERS frame, without the fields RFC 9110 6.5.1
//! keeps out of trailers); fields that belong to one connection are
//! dropped both ways. The answer keeps its Content-Length when it has
//! one, else it goes chunked (with the upstream's trailers) to an HTTP/1.1
//! client and delimited by the close to an HTTP/1.0 one.
//!
//! The tries are the same as over HTTP/1.1 (forward/tries.rs): a body the
//! client sent whole can be sent again; a streaming one is tried once.
//!
//! Between proxies (the multiplexed mesh hop) the same translation carries
//! HTTP/1.1 requests as streams of a few shared h2 connections over mutual
//! TLS; the request says so in `coremesh-http1`, and the peer gives its
//! app HTTP/1.1 again.

use std::cell::Cell;

use bytes::Bytes;

use super::h2::upstream::{connection_or_http1, for_try, Opened};
use super::h2::{send_all, CARRIED_HTTP1};
use super::tries::{Connected, GiveUp, Last, Plan, Protocol, TryFail};
use super::*;
use crate::shard::h2pool::StreamSlot;

/// Request fields that belong to the HTTP/1.1 connection (or are carried
/// by h2 pseudo-headers). `trailer` is end to end: it announces the
/// trailers, which a peer proxy needs to give its HTTP/1.1 app.
const REQUEST_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "expect",
];

/// How the answer's body is framed towards the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length,
    Chunked,
    UntilClose,
}

/// An HTTP/1.1 request's side of the tries (forward/tries.rs) when its
/// upstream speaks h2: an h2c app, or a peer proxy over the multiplexed
/// mesh hop. Each try opens a stream on a pooled h2 connection; a body
/// the client sent whole (buffered for a retry) is sent again from `cbuf`,
/// a streaming one is read from the client as it goes (one try).
pub(super) struct H2Tries<'c, 'a, 'b> {
    pub(super) ctx: &'c mut RequestCtx<'a, 'b>,
    pub(super) cbuf: Buf,
    /// The request head for the first try (later ones build it again).
    pub(super) first: Option<(http::Request<()>, Vec<String>)>,
    /// The upstream is a peer proxy, which gives its app HTTP/1.1 again.
    pub(super) carried: bool,
}

/// The connection of one try: a stream's room on an h2 connection, or an
/// HTTP/1.1 connection to a peer that does not multiplex.
pub(super) enum MeshConn {
    H2(std::rc::Rc<crate::shard::h2pool::H2Up>),
    Http1(Conn, Option<crate::shard::pool::Permit>),
}

impl Protocol for H2Tries<'_, '_, '_> {
    type Conn = MeshConn;
    type Fail = TryFail;
    type Done = (Next, Buf);

    fn exchange_record(&self) -> &super::ctx::Exchange {
        &self.ctx.ex
    }

    async fn connect(
        &mut self,
        endpoints: &Endpoints<'_>,
        tried: &mut upstream::Tried,
        plan: &Plan<'_>,
    ) -> Result<Connected<MeshConn>, ProxyError> {
        let ctx = &mut *self.ctx;
        let (shard, cfg) = (ctx.shard, ctx.cfg);
        if !self.carried {
            let c = for_try(shard, cfg, endpoints, tried, plan, plan.deadline).await;
            ctx.ex.upstream = tried.last();
            return c.map(|c| Connected {
                conn: MeshConn::H2(c.conn),
                addr: c.addr,
                reused: c.reused,
            });
        }
        let (addr, backend) = endpoints.pick(shard, tried, plan.key, plan.now);
        if shard.h2.http1_only(addr, plan.now) {
            // A peer that chose HTTP/1.1 lately: the HTTP/1.1 pool, as
            // without multiplexing (it picks the endpoint again).
            return self.http1_conn(endpoints, tried, plan).await;
        }
        tried.note(addr, backend);
        ctx.ex.upstream = Some(addr);
        let mtls = endpoints.mtls();
        match connection_or_http1(shard, cfg, addr, mtls, plan.deadline).await {
            Ok(Opened::H2(up)) => Ok(Connected {
                reused: up.served.get() > 0,
                conn: MeshConn::H2(up),
                addr,
            }),
            Ok(Opened::Http1(conn)) => Ok(Connected {
                conn: MeshConn::Http1(conn, None),
                addr,
                reused: false,
            }),
            Err(e) => {
                if endpoints.tracked() {
                    shard.outcomes.record(addr, false);
                    shard.endpoint_outcome(addr, Some(e.kind), Instant::now());
                }
                Err(e)
            }
        }
    }

    async fn exchange(
        &mut self,
        c: Connected<MeshConn>,
        endpoints: &Endpoints<'_>,
        plan: &Plan<'_>,
    ) -> Result<(Next, Buf), TryFail> {
        match c.conn {
            MeshConn::H2(up) => self.over_stream(up, endpoints, plan).await,
            MeshConn::Http1(up, permit) => {
                let conn = super::exchange::TryConn {
                    up,
                    permit,
                    addr: c.addr,
                    peer: endpoints.mtls().is_some() && plan.attempts.may_move(plan.now),
                };
                let cbuf = std::mem::take(&mut self.cbuf);
                let retry = super::exchange::RetryStatus::of(plan);
                let res = Box::pin(super::exchange::over_connection(
                    self.ctx,
                    cbuf,
                    conn,
                    plan.deadline,
                    retry,
                ))
                .await;
                res.map_err(|f| {
                    let (fail, cbuf) = f.into_try_fail();
                    self.cbuf = cbuf;
                    fail
                })
            }
        }
    }

    async fn give_up(
        &mut self,
        how: GiveUp,
        last: Last<TryFail>,
        addr: Option<std::net::SocketAddr>,
    ) -> (Next, Buf) {
        let cbuf = std::mem::take(&mut self.cbuf);
        super::exchange::give_up_http1(self.ctx, cbuf, how, last.error(), addr).await
    }
}

/// A request sent on a stream.
struct Sent {
    resp: ::h2::client::ResponseFuture,
    /// The whole request was sent from `cbuf`, which still holds it (a
    /// retry can send it again).
    intact: bool,
    /// Bytes of `cbuf` the request took (when `intact`).
    used: usize,
    /// The client's body was read whole (the connection can go on).
    body_whole: bool,
}

/// Whether a peer proxy's answer is its own that it could not connect to
/// its app (see forward/exchange.rs `app_unreachable`).
fn peer_could_not_reach_app<B>(resp: &http::Response<B>) -> bool {
    matches!(resp.status().as_u16(), 502 | 504)
        && resp.headers().get("coremesh-error").is_some_and(|v| {
            let v = v.as_bytes();
            v == ErrorKind::ConnectFailed.text().as_bytes()
                || v == ErrorKind::ConnectTimeout.text().as_bytes()
        })
}

impl H2Tries<'_, '_, '_> {
    /// An HTTP/1.1 connection from the pool (or a new one) for a peer
    /// that does not multiplex.
    async fn http1_conn(
        &mut self,
        endpoints: &Endpoints<'_>,
        tried: &mut upstream::Tried,
        plan: &Plan<'_>,
    ) -> Result<Connected<MeshConn>, ProxyError> {
        let ctx = &mut *self.ctx;
        let connect = upstream::ConnectPlan {
            fresh_only: plan.fresh_only,
            non_idempotent: !plan.attempts.idempotent(),
            key: plan.key,
            now: plan.now,
            deadline: plan.deadline,
        };
        let (up, addr, reused, permit) =
            upstream::upstream_conn(ctx.shard, ctx.cfg, endpoints, tried, connect).await?;
        ctx.ex.upstream = Some(addr);
        Ok(Connected {
            conn: MeshConn::Http1(up, permit),
            addr,
            reused,
        })
    }

    /// One try as a stream on an h2 connection.
    async fn over_stream(
        &mut self,
        up: std::rc::Rc<crate::shard::h2pool::H2Up>,
        endpoints: &Endpoints<'_>,
        plan: &Plan<'_>,
    ) -> Result<(Next, Buf), TryFail> {
        let (mut req, hop) = match self.first.take() {
            Some(r) => r,
            // The first try's head was built from the same bytes: this
            // cannot fail, but if it did, the request is not sent again.
            None => self.ctx.h2_request(&self.cbuf).ok_or_else(|| {
                TryFail::new(
                    ErrorKind::UpstreamReset,
                    "rebuilding the request head",
                    false,
                )
            })?,
        };
        if self.carried {
            let v = if self.ctx.head.version == Version::Http10 {
                "1.0"
            } else {
                "1.1"
            };
            req.headers_mut().insert(
                http::header::HeaderName::from_static(CARRIED_HTTP1),
                http::header::HeaderValue::from_static(v),
            );
        }
        let slot = StreamSlot::new(up);
        let sent = self.send(&slot, req, &hop, plan.deadline).await?;
        let resp = match runtime::timeout_at(plan.deadline, sent.resp).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!("the h2 upstream failed the request: {e}");
                // Refused, or above the last stream of the upstream's
                // GOAWAY: it never processed the request (RFC 9113, 8.7).
                let unseen = e.reason() == Some(::h2::Reason::REFUSED_STREAM) || e.is_go_away();
                if e.is_go_away() {
                    slot.connection_gone();
                }
                return Err(TryFail {
                    replayable: unseen && sent.intact,
                    ..TryFail::new(
                        ErrorKind::UpstreamReset,
                        "HTTP/2 response head",
                        sent.intact,
                    )
                });
            }
            Err(_) => {
                return Err(TryFail::new(
                    ErrorKind::UpstreamTimeout,
                    "HTTP/2 response head",
                    sent.intact,
                ))
            }
        };
        let status = resp.status().as_u16();
        let peer = endpoints.mtls().is_some() && plan.attempts.may_move(plan.now);
        if sent.intact && peer && peer_could_not_reach_app(&resp) {
            let context = "the peer proxy could not reach its app";
            return Err(TryFail::new(ErrorKind::PeerAppUnreachable, context, true));
        }
        if sent.intact && plan.attempts.retries_status(status) && (plan.budget)() {
            self.ctx.ex.status = status;
            return Err(TryFail::new(
                ErrorKind::RetryableStatus,
                "response status",
                true,
            ));
        }
        if sent.intact {
            // Sent from the buffer: the head and body are done with.
            consume(&mut self.cbuf, sent.used);
        }
        let cbuf = std::mem::take(&mut self.cbuf);
        Ok(self.ctx.h2_response(resp, cbuf, sent.body_whole).await)
    }

    /// Opens a stream and sends the request: head and body from `cbuf`
    /// when the client sent it whole, else the body as the client sends
    /// it (`cbuf` is then consumed as it goes).
    async fn send(
        &mut self,
        slot: &StreamSlot,
        req: http::Request<()>,
        hop: &[String],
        deadline: Instant,
    ) -> Result<Sent, TryFail> {
        let head = &self.ctx.head;
        let (head_len, framing) = (head.head_len, head.framing);
        let whole = match framing {
            Framing::None => Some(0),
            Framing::Length(n) => Some(n as usize).filter(|&n| self.cbuf.len() >= head_len + n),
            _ => None,
        };
        let refused = || TryFail {
            replayable: whole.is_some(),
            ..TryFail::new(
                ErrorKind::UpstreamReset,
                "opening an HTTP/2 stream",
                whole.is_some(),
            )
        };
        let ready = runtime::timeout_at(deadline, slot.conn().send.clone().ready()).await;
        let Ok(Ok(mut send)) = ready else {
            slot.connection_gone();
            return Err(refused());
        };
        let eos = framing == Framing::None;
        let Ok((resp, mut up_send)) = send.send_request(req, eos) else {
            slot.connection_gone();
            return Err(refused());
        };
        if let Some(n) = whole {
            if n > 0 {
                let body = Bytes::copy_from_slice(&self.cbuf[head_len..head_len + n]);
                let last = Cell::new(Instant::now());
                if send_all(&mut up_send, body, &last, true).await.is_err() {
                    // The upstream stopped taking it: its answer says why.
                    tracing::debug!("the h2 upstream did not take the whole body");
                }
            }
            self.ctx.ex.bytes_in += n as u64;
            return Ok(Sent {
                resp,
                intact: true,
                used: head_len + n,
                body_whole: true,
            });
        }
        // Streaming: the head is carried; what follows it is the body.
        let ctx = &mut *self.ctx;
        consume(&mut self.cbuf, head_len);
        if ctx.head.expect_continue && ctx.head.version == Version::Http11 {
            let cont = super::answer::CONTINUE.to_vec();
            if write_bounded(ctx.client, cont, ctx.ex.idle).await.is_err() {
                return Err(TryFail::started(
                    ErrorKind::ClientGone,
                    "writing 100 Continue",
                ));
            }
        }
        let cbuf = std::mem::take(&mut self.cbuf);
        let (b, body_whole) = ctx.h2_body(cbuf, &mut up_send, hop).await;
        self.cbuf = b;
        Ok(Sent {
            resp,
            intact: false,
            used: 0,
            body_whole,
        })
    }
}

impl RequestCtx<'_, '_> {
    /// The request head as an h2 request, and the field names its
    /// Connection header makes this hop's (left out of trailers too).
    pub(super) fn h2_request(&self, cbuf: &Buf) -> Option<(http::Request<()>, Vec<String>)> {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut fields);
        parsed.parse(&cbuf[..self.head.head_len]).ok()?;
        let authority = self
            .head
            .authority
            .clone()
            .map(|s| &cbuf[s])
            .and_then(|a| std::str::from_utf8(a).ok())
            .unwrap_or("localhost");
        let path = std::str::from_utf8(&cbuf[self.head.path.clone()]).ok()?;
        let path = if path.starts_with('/') { path } else { "/" };
        let uri: http::Uri = format!("http://{authority}{path}").parse().ok()?;
        let method = http::Method::from_bytes(self.head.method_bytes(cbuf)).ok()?;
        let mut req = http::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        // Fields the Connection header names are this hop's too.
        let named: Vec<String> = parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
            .collect();
        let identity = self.identity_field();
        let h = req.headers_mut();
        for f in parsed.headers.iter() {
            let name = f.name.to_ascii_lowercase();
            if REQUEST_HOP.contains(&name.as_str())
                || named.contains(&name)
                || identity == Some(name.as_str())
                || (name == "te" && !f.value.eq_ignore_ascii_case(b"trailers"))
            {
                continue;
            }
            let name = http::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = http::header::HeaderValue::from_bytes(f.value).ok()?;
            h.append(name, value);
        }
        if let (Some(name), Some(id)) = (identity, self.client.peer_id()) {
            let name = http::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
            h.insert(name, http::header::HeaderValue::from_str(id).ok()?);
        }
        if let Some(id) = &self.scratch.request_id {
            // Generated for this request (request_id.rs); an empty one
            // the client sent is replaced.
            let name = http::header::HeaderName::from_static(super::request_id::NAME);
            h.insert(name, http::header::HeaderValue::from_bytes(id).ok()?);
        }
        Some((req, named))
    }

    /// The field that carries the caller's identity to the app (inbound):
    /// the proxy sets it, so the client's own is dropped.
    fn identity_field(&self) -> Option<&str> {
        (self.dir == Direction::Inbound)
            .then(|| self.cfg.inbound.as_ref()?.identity_header.as_deref())
            .flatten()
    }

    /// The trailer section of a finished chunked body as h2 trailers,
    /// without the fields that may not be trailers (RFC 9110 6.5.1), the
    /// ones the request's Connection header names, and the identity
    /// field. `None` when nothing is left: the body ends with DATA.
    fn h2_trailers(&self, dec: &ChunkedDecoder, hop: &[String]) -> Option<http::HeaderMap> {
        let identity = self.identity_field();
        let mut out = http::HeaderMap::new();
        for (name, value) in dec.trailers() {
            let dropped = http1::is_prohibited_trailer(name)
                || hop.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
                || identity.is_some_and(|i| name.eq_ignore_ascii_case(i.as_bytes()));
            if dropped {
                continue;
            }
            // The codec accepted both (a token, visible bytes and
            // whitespace); `http` lowercases the name as h2 wants.
            let (Ok(name), Ok(value)) = (
                http::header::HeaderName::from_bytes(name),
                http::header::HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            out.append(name, value);
        }
        (!out.is_empty()).then_some(out)
    }

    /// Sends the request body as DATA: what `cbuf` holds, then what the
    /// client still sends, then a chunked body's trailers. Returns the
    /// buffer (with any bytes after the body: the next request) and
    /// whether the whole body was read; when the upstream stops taking it
    /// (an early answer), the rest is not read.
    async fn h2_body(
        &mut self,
        mut cbuf: Buf,
        to: &mut ::h2::SendStream<Bytes>,
        hop: &[String],
    ) -> (Buf, bool) {
        let last = Cell::new(Instant::now());
        let mut left = match self.head.framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut dec = ChunkedDecoder::keeping_trailers();
        let chunked = self.head.framing == Framing::Chunked;
        loop {
            let (data, used) = if chunked {
                let mut spans = Vec::new();
                let used = match dec.feed_with(&cbuf, |r| spans.push(r)) {
                    Ok(u) => u,
                    Err(_) => return (cbuf, false),
                };
                let mut data = Vec::new();
                for r in spans {
                    data.extend_from_slice(&cbuf[r]);
                }
                (data, used)
            } else {
                let take = (cbuf.len() as u64).min(left) as usize;
                left -= take as u64;
                (cbuf[..take].to_vec(), take)
            };
            consume(&mut cbuf, used);
            self.ex.bytes_in += used as u64;
            let done = if chunked { dec.is_done() } else { left == 0 };
            let trailers = done.then(|| self.h2_trailers(&dec, hop)).flatten();
            let end = done && trailers.is_none();
            if (done || !data.is_empty())
                && send_all(to, Bytes::from(data), &last, end).await.is_err()
            {
                return (cbuf, false);
            }
            if let Some(t) = trailers {
                if let Err(e) = to.send_trailers(t) {
                    tracing::debug!("h2c upstream did not take the request trailers: {e}");
                    return (cbuf, false);
                }
            }
            if done {
                return (cbuf, true);
            }
            if cbuf.capacity() - cbuf.len() < 4096 {
                cbuf.reserve(16 * 1024);
            }
            let read = runtime::timeout(self.ex.idle, self.client.read(cbuf)).await;
            let (res, back) = match read {
                Ok(r) => r,
                Err(_) => return (Vec::new(), false),
            };
            cbuf = back;
            match res {
                Ok(0) | Err(_) => return (cbuf, false),
                Ok(_) => {}
            }
        }
    }

    /// Relays the h2 answer as HTTP/1.1.
    async fn h2_response(
        &mut self,
        resp: http::Response<::h2::RecvStream>,
        cbuf: Buf,
        body_whole: bool,
    ) -> (Next, Buf) {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        self.ex.status = status;
        let no_body = self.head.method == Method::Head || status == 204 || status == 304;
        let length = parts.headers.get(http::header::CONTENT_LENGTH).is_some();
        let out = if no_body {
            Out::None
        } else if length {
            Out::Length
        } else if self.head.version == Version::Http11 {
            Out::Chunked
        } else {
            Out::UntilClose
        };
        let close = !self.head.keep_alive
            || !body_whole
            || out == Out::UntilClose
            || self.shard.draining.get();
        // The head and the first DATA go out in one write (most answers
        // are one DATA frame).
        let mut first = None;
        if out == Out::Length && !body.is_end_stream() {
            match runtime::timeout(self.ex.idle, body.data()).await {
                Ok(Some(Ok(chunk))) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    first = Some(chunk);
                }
                Ok(None) => {}
                Ok(Some(Err(_))) | Err(_) => {
                    return self
                        .answer_and_close(Answer::Error(ErrorKind::UpstreamReset), cbuf)
                        .await
                }
            }
        }
        let mut head = Vec::with_capacity(512 + first.as_ref().map_or(0, Bytes::len));
        head.extend_from_slice(
            format!("HTTP/1.1 {status} {}\r\n", http1::reason_phrase(status)).as_bytes(),
        );
        for (name, value) in &parts.headers {
            if matches!(
                name.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "trailer"
            ) || (self.dir == Direction::Inbound && name.as_str() == "coremesh-error")
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if out == Out::Chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        } else if self.head.version == Version::Http10 {
            head.extend_from_slice(b"connection: keep-alive\r\n");
        }
        head.extend_from_slice(b"\r\n");
        if let Some(chunk) = &first {
            head.extend_from_slice(chunk);
        }
        self.ex.bytes_out += head.len() as u64;
        if write_bounded(self.client, head, self.ex.idle)
            .await
            .is_err()
        {
            return (Next::Close, cbuf);
        }
        let relayed = if out == Out::None || (first.is_some() && body.is_end_stream()) {
            Ok(())
        } else {
            self.h2_body_out(&mut body, out).await
        };
        self.ex.end = Some(Instant::now());
        match relayed {
            Ok(()) if !close => (Next::KeepAlive, cbuf),
            _ => (Next::Close, cbuf),
        }
    }

    /// Relays the answer's DATA (and trailers, when chunked).
    async fn h2_body_out(&mut self, body: &mut ::h2::RecvStream, out: Out) -> Result<(), ()> {
        loop {
            let next = runtime::timeout(self.ex.idle, body.data()).await;
            let chunk = match next {
                Err(_) | Ok(Some(Err(_))) => return Err(()),
                Ok(None) => break,
                Ok(Some(Ok(c))) => c,
            };
            let n = chunk.len();
            let mut w = Vec::with_capacity(n + 16);
            if out == Out::Chunked {
                if n == 0 {
                    continue;
                }
                w.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                w.extend_from_slice(&chunk);
                w.extend_from_slice(b"\r\n");
            } else {
                w.extend_from_slice(&chunk);
            }
            self.ex.bytes_out += w.len() as u64;
            write_bounded(self.client, w, self.ex.idle)
                .await
                .map_err(|_| ())?;
            let _ = body.flow_control().release_capacity(n);
        }
        if out != Out::Chunked {
            return Ok(());
        }
        let trailers = body.trailers().await.ok().flatten();
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.ex.bytes_out += end.len() as u64;
        write_bounded(self.client, end, self.ex.idle)
            .await
            .map_err(|_| ())
    }
}
