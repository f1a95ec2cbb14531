//! The answer phase: every response the proxy makes itself (a local error,
//! a denial, an injected fault, a probe answer, a refused head) is an
//! [`Answer`] written here, in HTTP/1.1, and nowhere else; so are its two
//! fixed answers, [`CONTINUE`] and [`CONNECTED`].

use super::*;
use crate::error::Answer;

/// The interim answer the proxy sends itself to `Expect: 100-continue`
/// (once the upstream is connected, or before buffering a body for retries).
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The answer to a `CONNECT` whose tunnel is open.
pub(super) const CONNECTED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Whether the connection can carry another request after answering this
/// one locally: only if the request had no body (its unread body would be
/// taken for the next request) and the client did not ask to close.
pub(super) fn keeps_alive(head: &RequestHead) -> bool {
    head.keep_alive && head.framing == Framing::None
}

/// Writes `answer`, with `connection: close` when `close`.
pub(super) async fn write_answer(
    client: &mut Conn,
    answer: &Answer<'_>,
    close: bool,
    limit: Duration,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(256);
    match *answer {
        Answer::Probe { healthy } => http1::write_probe_response(healthy, close, &mut out),
        _ => http1::write_error_response(answer.status(), &answer.reason(), close, &mut out),
    }
    write_bounded(client, out, limit).await
}

/// Writes all of `out` to the client, bounded by `limit` (`timeouts.idle`):
/// a client that stops reading never holds a request in flight forever.
///
/// Boxed inside: error answers and interim responses are rare, and their
/// timed write (~2 KiB of future) would otherwise sit in the state of every
/// request that might send one.
pub(super) async fn write_bounded(
    client: &mut Conn,
    out: Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    let len = out.len();
    match Box::pin(runtime::timeout(limit, client.write_all(out, 0..len))).await {
        Ok((res, _)) => res,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

impl RequestCtx<'_, '_> {
    /// Answers the request locally and says what the connection does next:
    /// it stays open only if [`keeps_alive`] and the answer went out; then
    /// the request's head is dropped from `cbuf` (pipelined bytes stay).
    pub(super) async fn answer(&mut self, answer: Answer<'_>, mut cbuf: Buf) -> (Next, Buf) {
        let close = !keeps_alive(&self.head);
        self.ex.status = answer.status();
        let res = write_answer(self.client, &answer, close, self.ex.idle).await;
        if close || res.is_err() {
            return (Next::Close, cbuf);
        }
        consume(&mut cbuf, self.head.head_len);
        (Next::KeepAlive, cbuf)
    }

    /// Answers and closes the connection whatever the request (part of it
    /// went upstream, or its framing is lost).
    pub(super) async fn answer_and_close(&mut self, answer: Answer<'_>, cbuf: Buf) -> (Next, Buf) {
        self.ex.status = answer.status();
        let _ = write_answer(self.client, &answer, true, self.ex.idle).await;
        (Next::Close, cbuf)
    }
}
