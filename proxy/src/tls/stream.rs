//! [`TlsStream`]: a [`Session`] over a shard's TCP connection, with the same
//! owned-buffer surface as [`TcpStream`] (read appends into a buffer's spare
//! capacity, writes take the buffer and give it back).
//!
//! The session sits behind an `Rc<RefCell<_>>` so that a tunnel (a TCP
//! service, a WebSocket) can read and write at once from two tasks: each
//! half has its own descriptor for the socket and borrows the session only
//! between awaits. Ciphertext goes out only through [`TlsStream::flush`],
//! which takes `tx` for the duration of the write (`tx_busy`), so two halves
//! never interleave bytes on the socket.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::revoked::{leaf_serial, PeerConns, PeerGuard};
use super::session::Session;
use crate::runtime::{self, Buf, IoVecs, Linger, TcpStream};

pub struct TlsStream {
    /// This connection in its shard's registry of open connections by peer
    /// certificate (tls/revoked.rs). First field: dropped before the
    /// socket closes, so the registry never holds a closed descriptor.
    registered: Option<PeerGuard>,
    tcp: TcpStream,
    s: Rc<RefCell<Session>>,
    /// The peer's SPIFFE ID, read once after the handshake.
    peer: Option<Rc<str>>,
}

/// A [`TlsStream`] taken apart ([`TlsStream::into_parts`]).
pub struct TlsParts {
    /// Drop it before (or with) the socket.
    pub registered: Option<PeerGuard>,
    pub tcp: TcpStream,
    pub session: Session,
}

impl TlsStream {
    /// Runs the handshake to completion on `tcp`, bounded by `limit`, and
    /// registers the connection in `peers` (refused if the peer's
    /// certificate was revoked meanwhile, or the session was resumed).
    pub async fn handshake(
        tcp: TcpStream,
        session: Session,
        limit: Duration,
        peers: &Rc<PeerConns>,
    ) -> io::Result<TlsStream> {
        let mut t = TlsStream {
            registered: None,
            tcp,
            s: Rc::new(RefCell::new(session)),
            peer: None,
        };
        match runtime::timeout(limit, t.drive_handshake()).await {
            Ok(Ok(())) => {
                let leaf =
                    t.s.borrow()
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| super::identity::leaf_identity(leaf).ok());
                // A resumed session is not verified again by rustls: its
                // certificate must still be valid, whoever issued the
                // ticket (revocation is checked when it registers, below).
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if t.resumed() && leaf.as_ref().is_none_or(|(_, not_after)| *not_after <= now) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "resumed TLS session with an expired peer certificate",
                    ));
                }
                t.peer = leaf.map(|(id, _)| Rc::from(id));
                let serial =
                    t.s.borrow()
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| leaf_serial(leaf));
                if let Some(serial) = serial {
                    let guard = peers
                        .register(serial, t.tcp.raw_fd())
                        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
                    t.registered = Some(guard);
                }
                Ok(t)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    async fn drive_handshake(&mut self) -> io::Result<()> {
        loop {
            let done = self.s.borrow_mut().handshake();
            // A flight the handshake produced goes out even when it failed
            // (it carries the alert that tells the peer why).
            self.flush().await?;
            if done.map_err(io::Error::from)? {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    /// The socket, the session and the connection's registration (to keep while the socket is open), for a connection
    /// that goes on in readiness mode (HTTP/2, see tls/poll.rs). `None`:
    /// the session is shared (a tunnel half still holds it).
    pub fn into_parts(self) -> Option<TlsParts> {
        let TlsStream {
            registered, tcp, s, ..
        } = self;
        let s = Rc::try_unwrap(s).ok()?.into_inner();
        Some(TlsParts {
            registered,
            tcp,
            session: s,
        })
    }

    /// The peer's SPIFFE ID.
    pub fn peer_id(&self) -> Option<&Rc<str>> {
        self.peer.as_ref()
    }

    pub fn alpn_is(&self, proto: &[u8]) -> bool {
        self.s.borrow().alpn() == Some(proto)
    }

    pub fn resumed(&self) -> bool {
        self.s.borrow().resumed()
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.raw_fd()
    }

    pub fn release_idle_state(&mut self) {
        self.tcp.release_idle_state();
        self.s.borrow_mut().release_idle();
    }

    /// Sends whatever ciphertext the session has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        loop {
            let tx = {
                let mut s = self.s.borrow_mut();
                if s.tx_busy || s.pending_tx() == 0 {
                    return Ok(());
                }
                s.take_tx()
            };
            let len = tx.len;
            let (res, buf) = self.tcp.write_all(tx.buf, 0..len).await;
            self.s
                .borrow_mut()
                .sent_tx(super::session::TxBuf { buf, len });
            res?;
        }
    }

    /// Reads ciphertext into the session's receive buffer.
    async fn fill(&mut self) -> io::Result<usize> {
        let rx = self.s.borrow_mut().take_rx();
        let (res, rx) = self.tcp.read(rx).await;
        self.s.borrow_mut().put_rx(rx);
        res
    }

    /// Reads plaintext into the spare capacity of `buf`. `Ok(0)`: the peer
    /// closed (close_notify or TCP EOF).
    pub async fn read(&mut self, mut buf: Buf) -> (io::Result<usize>, Buf) {
        if buf.len() == buf.capacity() {
            // No room: as a plain socket read of zero bytes would.
            return (Ok(0), buf);
        }
        loop {
            let d = self.s.borrow_mut().decrypt(&mut buf);
            match d {
                Err(e) => return (Err(e.into()), buf),
                Ok(d) if d.bytes > 0 || d.eof => {
                    // Processing may have queued a reply (a key update).
                    if let Err(e) = self.flush().await {
                        return (Err(e), buf);
                    }
                    return (Ok(d.bytes), buf);
                }
                Ok(_) => {}
            }
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
            match self.fill().await {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// As [`TcpStream::read_linger`]: the socket read stays posted until
    /// `until` at the latest; nothing is lost when it is cancelled, as the
    /// session keeps whatever ciphertext arrived.
    pub async fn read_linger(&mut self, buf: Buf, until: Instant, rest: Duration) -> Linger {
        if self.s.borrow().has_buffered() {
            let (res, buf) = self.read(buf).await;
            return Linger::Read(res, buf);
        }
        if let Err(e) = self.flush().await {
            return Linger::Read(Err(e), buf);
        }
        let rx = self.s.borrow_mut().take_rx();
        match self.tcp.read_linger(rx, until).await {
            Linger::Idle(rx) => {
                self.s.borrow_mut().put_rx(rx);
                Linger::Idle(buf)
            }
            Linger::Read(res, rx) => {
                self.s.borrow_mut().put_rx(rx);
                match res {
                    Ok(0) => Linger::Read(Ok(0), buf),
                    // The rest of the record, bounded: a timeout drops the
                    // read (and the connection, which the caller closes).
                    Ok(_) => match runtime::timeout(rest, self.read(buf)).await {
                        Ok((res, buf)) => Linger::Read(res, buf),
                        Err(_) => Linger::Read(
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "TLS record incomplete past the head-read timeout",
                            )),
                            Vec::new(),
                        ),
                    },
                    Err(e) => Linger::Read(Err(e), buf),
                }
            }
        }
    }

    /// Waits until a read can make progress, without holding a buffer.
    pub async fn readable(&mut self) -> io::Result<()> {
        if self.s.borrow().has_buffered() {
            return Ok(());
        }
        self.tcp.readable().await
    }

    /// Waits until the socket itself has bytes (or is closed), whatever the
    /// session has buffered: for discarding what a peer still sends.
    pub async fn socket_readable(&mut self) -> io::Result<()> {
        self.tcp.readable().await
    }

    /// Encrypts and sends `buf[range]`.
    pub async fn write_all(
        &mut self,
        buf: Buf,
        range: std::ops::Range<usize>,
    ) -> (io::Result<()>, Buf) {
        let res = self.s.borrow_mut().encrypt(&buf[range]);
        if let Err(e) = res {
            return (Err(e.into()), buf);
        }
        (self.flush().await, buf)
    }

    /// Encrypts and sends every pending byte of `v`. Small slices (the head
    /// pieces) are gathered into one record; large ones (body bytes) are
    /// encrypted from where they lie.
    pub async fn write_vectored(&mut self, mut v: IoVecs) -> (io::Result<()>, IoVecs) {
        let res = {
            let mut guard = self.s.borrow_mut();
            let s = &mut *guard;
            let mut stage = std::mem::take(&mut s.stage);
            stage.clear();
            let mut res = Ok(());
            for slice in v.pending_slices() {
                if slice.len() >= 4096 {
                    res = s.encrypt(&stage).and_then(|()| s.encrypt(slice));
                    stage.clear();
                    if res.is_err() {
                        break;
                    }
                } else {
                    stage.extend_from_slice(slice);
                }
            }
            if res.is_ok() {
                res = s.encrypt(&stage);
            }
            stage.clear();
            s.stage = stage;
            res
        };
        if let Err(e) = res {
            return (Err(e.into()), v);
        }
        let n = v.remaining();
        v.advance(n);
        (self.flush().await, v)
    }

    /// Sends close_notify and shuts down the socket's write side.
    pub async fn shutdown_write(&mut self) {
        self.s.borrow_mut().close_notify();
        let _ = self.flush().await;
        self.tcp.shutdown_write();
    }

    /// A second handle on the same session and socket, for the other
    /// direction of a tunnel.
    pub fn try_clone(&self) -> io::Result<TlsStream> {
        let tcp = self.tcp.try_clone()?;
        // Its own descriptor, which may outlive this one's: registered too.
        let registered = match &self.registered {
            Some(g) => Some(
                g.also(tcp.raw_fd())
                    .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?,
            ),
            None => None,
        };
        Ok(TlsStream {
            registered,
            tcp,
            s: self.s.clone(),
            peer: self.peer.clone(),
        })
    }
}
