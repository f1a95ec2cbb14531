//! [`PollTls`]: a [`Session`] over a readiness-mode socket, with tokio's
//! `AsyncRead`/`AsyncWrite` surface, for the HTTP/2 stack (the `h2` crate
//! drives its connection through those traits).
//!
//! Reads: decrypted bytes are staged in `plain` and copied out; when none
//! are left, ciphertext is read straight into the session's receive buffer.
//! Writes: plaintext is encrypted into the session's send buffer, which is
//! written out by `poll_flush` (and opportunistically by every write). A
//! write is refused (`Pending`) while more than [`TX_HIGH`] bytes of
//! ciphertext wait, so a peer that stops reading stalls the writer instead
//! of growing the buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::session::Session;
use std::rc::Rc;

mod scan;
use crate::runtime::PollTcp;
pub use scan::{Flood, FrameLimits, SentCounts};
use scan::{ReadScan, WriteScan};

/// Ciphertext the session may hold unsent before writes wait.
const TX_HIGH: usize = 64 * 1024;

/// Plaintext handed to one encryption at most (four TLS records).
const WRITE_CHUNK: usize = 64 * 1024;

pub struct PollTls {
    /// The connection's registration by peer certificate (tls/revoked.rs):
    /// first, so it is dropped before the socket closes.
    _registered: Option<super::revoked::PeerGuard>,
    io: PollTcp,
    s: Session,
    plain: Vec<u8>,
    plain_start: usize,
}

impl PollTls {
    pub fn new(io: PollTcp, s: Session, registered: Option<super::revoked::PeerGuard>) -> PollTls {
        PollTls {
            _registered: registered,
            io,
            s,
            plain: Vec::new(),
            plain_start: 0,
        }
    }

    /// Writes queued ciphertext until none is left or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.s.pending_tx() > 0 {
            let n = match Pin::new(&mut self.io).poll_write(cx, self.s.tx_bytes()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.s.consume_tx(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext into the session. `Ok(0)`: the socket reached EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut rx = self.s.take_rx();
        let len = rx.len();
        let res = {
            let mut rb = ReadBuf::uninit(rx.spare_capacity_mut());
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        };
        if let Poll::Ready(Ok(n)) = res {
            // SAFETY: `rb` wraps exactly `rx`'s spare capacity (from
            // `rx.len()` on) and `PollTcp::poll_read` (monoio's poll-io
            // stream) fills that buffer, never swapping in another; a
            // `ReadBuf` counts as filled only bytes written through it, so
            // `n = rb.filled().len()` bytes right after `len` are
            // initialised, and `len + n` is within the capacity.
            unsafe { rx.set_len(len + n) };
        }
        self.s.put_rx(rx);
        res
    }
}

impl AsyncRead for PollTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.plain_start < me.plain.len() {
                let n = buf.remaining().min(me.plain.len() - me.plain_start);
                buf.put_slice(&me.plain[me.plain_start..me.plain_start + n]);
                me.plain_start += n;
                return Poll::Ready(Ok(()));
            }
            me.plain.clear();
            me.plain_start = 0;
            if me.plain.capacity() < 16 * 1024 {
                me.plain.reserve(16 * 1024);
            }
            let d = me.s.decrypt(&mut me.plain).map_err(io::Error::from)?;
            // A key update or an alert the peer's records asked for.
            if me.s.pending_tx() > 0 {
                if let Poll::Ready(Err(e)) = me.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if d.bytes > 0 {
                continue;
            }
            if d.eof {
                return Poll::Ready(Ok(()));
            }
            match me.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for PollTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.s.pending_tx() >= TX_HIGH {
            match me.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if me.s.pending_tx() >= TX_HIGH => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        let n = data.len().min(WRITE_CHUNK);
        me.s.encrypt(&data[..n]).map_err(io::Error::from)?;
        // Sent now if the socket takes it; otherwise by the next flush.
        if let Poll::Ready(Err(e)) = me.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.s.close_notify();
        match me.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.io).poll_shutdown(cx),
            other => other,
        }
    }
}

/// A connection for the HTTP/2 stack: plaintext (h2c, the local app) or
/// mutual TLS (another proxy), with a read budget.
///
/// The budget: the `h2` crate reads and handles frames for as long as the
/// socket has bytes, all in one poll of the connection's task; a peer that
/// keeps the socket full (a SETTINGS or PING flood) would hold the shard,
/// and every other connection on it would wait. After [`READ_BUDGET`]
/// reads in a row that found bytes, a read says `Pending` once (and wakes
/// the task at once), so the shard's other tasks run in between.
pub struct PollConn {
    io: PollIo,
    reads: u32,
    scan: ReadScan,
    /// Server side only: what the proxy sends, for refused streams.
    sent: Option<WriteScan>,
}

enum PollIo {
    Plain(PollTcp),
    Tls(Box<PollTls>),
}

/// Reads that found bytes before a connection yields to the shard's other
/// tasks (the h2 codec reads up to 8 KiB at a time: about 900 SETTINGS
/// frames of a flood per read).
const READ_BUDGET: u32 = 8;

impl AsyncRead for PollConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.reads >= READ_BUDGET {
            me.reads = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let res = match &mut me.io {
            PollIo::Plain(c) => Pin::new(c).poll_read(cx, buf),
            PollIo::Tls(c) => Pin::new(&mut **c).poll_read(cx, buf),
        };
        match res {
            Poll::Ready(Ok(())) => {
                me.reads += 1;
                if let Err(flood) = me.scan.feed(&buf.filled()[before..]) {
                    return Poll::Ready(Err(io::Error::other(flood)));
                }
            }
            Poll::Pending => me.reads = 0,
            Poll::Ready(Err(_)) => {}
        }
        res
    }
}

impl AsyncWrite for PollConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let res = match &mut me.io {
            PollIo::Plain(c) => Pin::new(c).poll_write(cx, data),
            PollIo::Tls(c) => Pin::new(&mut **c).poll_write(cx, data),
        };
        if let (Poll::Ready(Ok(n)), Some(sent)) = (&res, &mut me.sent) {
            sent.feed(&data[..*n]);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            PollIo::Plain(c) => Pin::new(c).poll_flush(cx),
            PollIo::Tls(c) => Pin::new(&mut **c).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            PollIo::Plain(c) => Pin::new(c).poll_shutdown(cx),
            PollIo::Tls(c) => Pin::new(&mut **c).poll_shutdown(cx),
        }
    }
}

impl PollConn {
    /// A connection in readiness mode: the plain socket, or the TLS
    /// session over it. `server`: the peer starts with the client preface
    /// (and the proxy's refused streams are counted). `limits`: the peer's
    /// frame rates.
    pub fn from_conn(
        c: crate::conn::Conn,
        server: bool,
        limits: FrameLimits,
    ) -> io::Result<PollConn> {
        let io = match c {
            crate::conn::Conn::Plain(t) => PollIo::Plain(t.into_poll()?),
            crate::conn::Conn::Tls(t) => {
                let parts = t.into_parts().ok_or_else(|| {
                    io::Error::other("TLS session still shared; cannot switch to HTTP/2")
                })?;
                PollIo::Tls(Box::new(PollTls::new(
                    parts.tcp.into_poll()?,
                    parts.session,
                    parts.registered,
                )))
            }
        };
        let preface = if server { 24 } else { 0 };
        Ok(PollConn {
            io,
            reads: 0,
            scan: ReadScan::new(preface, limits),
            sent: server.then(WriteScan::new),
        })
    }

    /// What the proxy sent on a server connection (`None`: a client one).
    pub fn sent_counts(&self) -> Option<Rc<SentCounts>> {
        self.sent.as_ref().map(|s| s.counts.clone())
    }
}

#[cfg(test)]
mod tests;
