//! The origin's HTTP/2 side: h2c with prior knowledge on the same port as
//! HTTP/1.1. The mio loop reads a connection's first bytes; when they are
//! the HTTP/2 connection preface it hands the socket, with the bytes
//! already read, to this module's thread, which serves it with the `h2`
//! crate on a current-thread tokio runtime (one task per connection).
//!
//! - `GET /size/N` (any method without a gRPC content type) answers 200
//!   with N bytes, anything else with `--body-size` bytes, like HTTP/1.1;
//!   a request body is read and discarded first.
//! - A gRPC call (`content-type: application/grpc...`) to
//!   [`grpc::METHOD`] answers one `Reply` of the payload size its
//!   `Request` asks for and `grpc-status: 0` in the trailers; another
//!   method gets UNIMPLEMENTED (12) and a malformed message INTERNAL (13),
//!   both trailers-only.
//!
//! Responses are built from bytes made once per size; `--delay` and
//! `--instance` apply as they do to HTTP/1.1.

use std::cell::RefCell;
use std::io;
use std::net::TcpStream as StdTcpStream;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::OriginConfig;
use crate::grpc;
use crate::http::INSTANCE_HEADER;

/// The HTTP/2 connection preface every h2c client with prior knowledge
/// sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// The preface so far, but not all of it yet.
    Undecided,
    Http2,
    Http1,
}

/// Whether `first` (a connection's first bytes) starts an HTTP/2 preface.
pub fn sniff(first: &[u8]) -> Sniff {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        Sniff::Http1
    } else if n < PREFACE.len() {
        Sniff::Undecided
    } else {
        Sniff::Http2
    }
}

/// A connection handed over: the socket and the bytes read from it so far.
type Handed = (StdTcpStream, Vec<u8>);

/// The HTTP/2 thread; it ends when this is dropped.
pub struct Handoff {
    tx: Option<mpsc::UnboundedSender<Handed>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handoff {
    /// Starts the thread.
    pub fn start(cfg: OriginConfig) -> io::Result<Handoff> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("origin-h2".into())
            .spawn(move || {
                crate::sys::set_min_timer_slack();
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, accept_loop(rx, cfg));
            })?;
        Ok(Handoff {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Serves `stream` over HTTP/2; `read` holds its first bytes.
    pub fn hand(&self, stream: StdTcpStream, read: Vec<u8>) {
        if let Some(tx) = &self.tx {
            // A send fails only when the thread is gone: the socket closes.
            let _ = tx.send((stream, read));
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Response bytes made once per size.
struct Shared {
    cfg: OriginConfig,
    bodies: RefCell<Vec<(usize, Bytes)>>,
    replies: RefCell<Vec<(usize, Bytes)>>,
}

const MAX_CACHED: usize = 64;

impl Shared {
    fn cached(
        cache: &RefCell<Vec<(usize, Bytes)>>,
        size: usize,
        make: fn(usize) -> Vec<u8>,
    ) -> Bytes {
        if let Some((_, b)) = cache.borrow().iter().find(|(s, _)| *s == size) {
            return b.clone();
        }
        let b = Bytes::from(make(size));
        let mut c = cache.borrow_mut();
        if c.len() < MAX_CACHED {
            c.push((size, b.clone()));
        }
        b
    }

    fn body(&self, size: usize) -> Bytes {
        Shared::cached(&self.bodies, size.min(super::MAX_BODY), |n| vec![b'x'; n])
    }

    fn reply(&self, size: usize) -> Bytes {
        Shared::cached(&self.replies, size.min(super::MAX_BODY), |n| {
            grpc::frame(&grpc::reply(n))
        })
    }

    fn instance(&self, h: &mut HeaderMap) {
        if let Some(v) = self
            .cfg
            .instance
            .as_deref()
            .and_then(|i| HeaderValue::from_str(i).ok())
        {
            h.insert(INSTANCE_HEADER, v);
        }
    }
}

async fn accept_loop(mut rx: mpsc::UnboundedReceiver<Handed>, cfg: OriginConfig) {
    let shared = Rc::new(Shared {
        cfg,
        bodies: RefCell::new(Vec::new()),
        replies: RefCell::new(Vec::new()),
    });
    while let Some((stream, read)) = rx.recv().await {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            let _ = serve_conn(stream, read, shared).await;
        });
    }
}

async fn serve_conn(stream: StdTcpStream, read: Vec<u8>, shared: Rc<Shared>) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let io = Prefixed {
        read,
        pos: 0,
        inner: TcpStream::from_std(stream)?,
    };
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(1024)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(io::Error::other)?;
    while let Some(next) = conn.accept().await {
        let (req, respond) = next.map_err(io::Error::other)?;
        handle(req, respond, &shared);
    }
    Ok(())
}

/// Answers one stream: inline when nothing is to be read or waited for,
/// else in a task of its own.
fn handle(req: Request<h2::RecvStream>, respond: SendResponse<Bytes>, shared: &Rc<Shared>) {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| grpc::is_grpc(v.as_bytes()));
    let size = req
        .uri()
        .path()
        .strip_prefix("/size/")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(shared.cfg.body_size);
    if !is_grpc && req.body().is_end_stream() && shared.cfg.delay.is_zero() {
        answer(respond, size, shared);
        return;
    }
    let shared = shared.clone();
    tokio::task::spawn_local(async move {
        let path_ok = req.uri().path() == grpc::METHOD;
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { return };
            let _ = body.flow_control().release_capacity(chunk.len());
            if is_grpc {
                got.extend_from_slice(&chunk);
            }
        }
        if !shared.cfg.delay.is_zero() {
            tokio::time::sleep(shared.cfg.delay).await;
        }
        if !is_grpc {
            answer(respond, size, &shared);
        } else if !path_ok {
            grpc_error(respond, grpc::UNIMPLEMENTED, "unknown method");
        } else {
            match grpc::unframe(&got).and_then(grpc::parse_request) {
                Ok(n) => grpc_answer(respond, n as usize, &shared),
                Err(_) => grpc_error(respond, grpc::INTERNAL, "malformed request message"),
            }
        }
    });
}

fn answer(mut respond: SendResponse<Bytes>, size: usize, shared: &Shared) {
    let mut resp = Response::new(());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(size));
    shared.instance(h);
    let Ok(mut stream) = respond.send_response(resp, size == 0) else {
        return;
    };
    if size > 0 {
        let _ = stream.send_data(shared.body(size), true);
    }
}

fn grpc_headers(resp: &mut Response<()>) {
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(grpc::CONTENT_TYPE),
    );
}

fn grpc_answer(mut respond: SendResponse<Bytes>, size: usize, shared: &Shared) {
    let mut resp = Response::new(());
    grpc_headers(&mut resp);
    shared.instance(resp.headers_mut());
    let Ok(mut stream) = respond.send_response(resp, false) else {
        return;
    };
    if stream.send_data(shared.reply(size), false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(grpc::OK));
    let _ = stream.send_trailers(trailers);
}

/// A trailers-only answer: HTTP 200 and the status in the headers.
fn grpc_error(mut respond: SendResponse<Bytes>, code: u32, message: &'static str) {
    let mut resp = Response::new(());
    grpc_headers(&mut resp);
    resp.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    resp.headers_mut()
        .insert("grpc-message", HeaderValue::from_static(message));
    let _ = respond.send_response(resp, true);
}

/// A socket whose first bytes were already read by the mio loop: reads
/// return those first.
struct Prefixed {
    read: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.read.len() {
            let n = (self.read.len() - self.pos).min(buf.remaining());
            let from = self.pos;
            buf.put_slice(&self.read[from..from + n]);
            self.pos += n;
            if self.pos == self.read.len() {
                self.read = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
