//! A TLS connection without I/O, over rustls's unbuffered API.
//!
//! [`Session`] owns the rustls connection and three byte areas:
//!
//! * `rx`: ciphertext read from the socket and not yet processed. The socket
//!   read appends into its spare capacity ([`Session::take_rx`] /
//!   [`Session::put_rx`]); records are processed from its front and the
//!   consumed prefix is discarded lazily (one compaction per read, not per
//!   record).
//! * `plain`: decrypted bytes that did not fit the caller's buffer. A record
//!   carries up to 16 KiB, so a caller reading into a nearly full buffer gets
//!   the rest on its next read.
//! * `tx`: ciphertext waiting to be sent: handshake flights, alerts, and
//!   encrypted application data. Encryption writes straight into it, so a
//!   write costs one pass over the plaintext (rustls encrypts into its own
//!   record, then into `tx`), where the buffered API adds a copy through its
//!   internal send queue.
//!
//! Driving it: [`Session::handshake`] until it says done (sending `tx` and
//! reading into `rx` in between), then [`Session::decrypt`] and
//! [`Session::encrypt`]. The I/O layer (`stream.rs`) always sends `tx` before
//! it waits for input, so a flight the session produced is never stuck
//! behind a read.

use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

/// One record's worth of ciphertext (RFC 8446 5.2: 2^14 + 256 bytes of
/// protected payload plus the 5-byte header). A read asks for at least this
/// much room, so a whole record always fits.
pub const RECORD: usize = 16384 + 256 + 5;

/// What went wrong in a TLS session, for logs and status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub msg: String,
    /// The peer's certificate is valid but names another service than the
    /// one called (see identity.rs): someone answered for an address that
    /// is not theirs.
    pub identity_mismatch: bool,
}

impl TlsError {
    fn new(msg: impl Into<String>) -> TlsError {
        TlsError {
            msg: msg.into(),
            identity_mismatch: false,
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for TlsError {}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError {
            identity_mismatch: matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                )
            ),
            msg: e.to_string(),
        }
    }
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

enum Side {
    Client(rustls::client::UnbufferedClientConnection),
    Server(rustls::server::UnbufferedServerConnection),
}

/// Ciphertext to send: `buf[..len]`; `buf` stays zero-filled to its length
/// so encryption can write into it without re-initialising.
#[derive(Default)]
pub struct TxBuf {
    pub buf: Vec<u8>,
    pub len: usize,
}

impl TxBuf {
    fn room(&mut self, need: usize) -> &mut [u8] {
        if self.buf.len() - self.len < need {
            self.buf.resize(self.len + need, 0);
        }
        &mut self.buf[self.len..]
    }
}

/// Outcome of one [`Session::decrypt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decrypted {
    /// Plaintext bytes appended to the caller's buffer.
    pub bytes: usize,
    /// The peer sent close_notify: no more data will come (after `bytes`).
    pub eof: bool,
}

/// What the processing loop stopped on.
enum Stop {
    /// Needs more ciphertext (mid-handshake, or a partial record).
    Input,
    /// Handshake complete and nothing left to process; encrypted `data`
    /// (if any was given) into `tx`.
    Traffic,
    /// Both sides closed.
    Closed,
}

pub struct Session {
    side: Side,
    rx: Vec<u8>,
    rx_start: usize,
    plain: Vec<u8>,
    plain_start: usize,
    tx: TxBuf,
    /// Gathers a vectored write's small slices into one record.
    pub stage: Vec<u8>,
    /// Set while the I/O layer has `tx` out for a write (see stream.rs).
    pub tx_busy: bool,
    peer_closed: bool,
    close_sent: bool,
}

impl Session {
    /// A client offering one ALPN protocol (what the connection carries).
    pub fn client_with_alpn(
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
        alpn: &[u8],
    ) -> Result<Session, TlsError> {
        Session::client_with_alpns(config, name, &[alpn])
    }

    /// A client session offering `alpns`, in order of preference (the
    /// server picks; [`Session::alpn`] says which).
    pub fn client_with_alpns(
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
        alpns: &[&[u8]],
    ) -> Result<Session, TlsError> {
        let alpns = alpns.iter().map(|a| a.to_vec()).collect();
        let c = rustls::client::UnbufferedClientConnection::new_with_alpn(config, name, alpns)?;
        Ok(Session::new(Side::Client(c)))
    }

    pub fn server(config: std::sync::Arc<rustls::ServerConfig>) -> Result<Session, TlsError> {
        let c = rustls::server::UnbufferedServerConnection::new(config)?;
        Ok(Session::new(Side::Server(c)))
    }

    fn new(side: Side) -> Session {
        Session {
            side,
            rx: Vec::new(),
            rx_start: 0,
            plain: Vec::new(),
            plain_start: 0,
            tx: TxBuf::default(),
            stage: Vec::new(),
            tx_busy: false,
            peer_closed: false,
            close_sent: false,
        }
    }

    fn common(&self) -> &rustls::CommonState {
        match &self.side {
            Side::Client(c) => c,
            Side::Server(s) => s,
        }
    }

    /// The peer's certificate chain (leaf first), once the handshake is done.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.common().peer_certificates()
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        self.common().alpn_protocol()
    }

    #[cfg(test)]
    pub fn is_handshaking(&self) -> bool {
        self.common().is_handshaking()
    }

    /// Whether the handshake was an abbreviated one (session resumption).
    pub fn resumed(&self) -> bool {
        self.common().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Whether a read can make progress without the socket: decrypted bytes
    /// are waiting, or a complete record is buffered.
    pub fn has_buffered(&self) -> bool {
        if self.plain.len() > self.plain_start || self.peer_closed {
            return true;
        }
        let rx = &self.rx[self.rx_start..];
        rx.len() >= 5 && rx.len() >= 5 + u16::from_be_bytes([rx[3], rx[4]]) as usize
    }

    /// The receive buffer, for a socket read to append into. It has at least
    /// one record's room. Give it back with [`Session::put_rx`].
    pub fn take_rx(&mut self) -> Vec<u8> {
        if self.rx_start > 0 {
            // One compaction per read: the unprocessed tail (at most a
            // partial record) moves to the front.
            self.rx.copy_within(self.rx_start.., 0);
            self.rx.truncate(self.rx.len() - self.rx_start);
            self.rx_start = 0;
        }
        if self.rx.capacity() - self.rx.len() < RECORD {
            self.rx.reserve(RECORD);
        }
        std::mem::take(&mut self.rx)
    }

    pub fn put_rx(&mut self, rx: Vec<u8>) {
        self.rx = rx;
    }

    /// Drops the buffers of a connection that has nothing in flight, so an
    /// idle TLS connection holds no more than the rustls state.
    pub fn release_idle(&mut self) {
        if self.rx_start == self.rx.len() {
            self.rx = Vec::new();
            self.rx_start = 0;
        }
        if self.plain_start == self.plain.len() {
            self.plain = Vec::new();
            self.plain_start = 0;
        }
        if self.tx.len == 0 && !self.tx_busy {
            self.tx = TxBuf::default();
        }
        self.stage = Vec::new();
    }

    /// Ciphertext waiting to be sent.
    pub fn pending_tx(&self) -> usize {
        self.tx.len
    }

    /// Takes the ciphertext to send (marks `tx_busy`).
    pub fn take_tx(&mut self) -> TxBuf {
        self.tx_busy = true;
        std::mem::take(&mut self.tx)
    }

    /// Returns a sent buffer for reuse. Bytes queued while it was out (a
    /// reader answering a key update) stay queued.
    pub fn sent_tx(&mut self, mut sent: TxBuf) {
        self.tx_busy = false;
        if self.tx.len == 0 {
            sent.len = 0;
            self.tx = sent;
        }
    }

    /// The ciphertext waiting to be sent, for a readiness-based writer
    /// (see tls/poll.rs), which then says how much went out.
    pub fn tx_bytes(&self) -> &[u8] {
        &self.tx.buf[..self.tx.len]
    }

    /// Drops the first `n` bytes of the ciphertext waiting (they were sent).
    pub fn consume_tx(&mut self, n: usize) {
        let n = n.min(self.tx.len);
        self.tx.buf.copy_within(n..self.tx.len, 0);
        self.tx.len -= n;
    }

    /// Advances the handshake with what `rx` holds. `Ok(true)`: complete.
    /// `Ok(false)`: send `tx`, then read more.
    pub fn handshake(&mut self) -> Result<bool, TlsError> {
        match self.run(None, None)? {
            Stop::Traffic => Ok(true),
            Stop::Input => Ok(false),
            Stop::Closed => Err(TlsError::new(
                "peer closed the connection during the handshake",
            )),
        }
    }

    /// Appends decrypted application data to `out` (within its spare
    /// capacity; the rest waits for the next call). `bytes == 0` and not
    /// `eof`: read more ciphertext first.
    pub fn decrypt(&mut self, out: &mut Vec<u8>) -> Result<Decrypted, TlsError> {
        let mut bytes = self.drain_plain(out);
        if bytes == 0 && !self.peer_closed {
            let before = out.len();
            match self.run(Some(out), None)? {
                Stop::Closed => self.peer_closed = true,
                Stop::Input | Stop::Traffic => {}
            }
            bytes = out.len() - before;
        }
        Ok(Decrypted {
            bytes,
            eof: bytes == 0 && self.peer_closed,
        })
    }

    /// Encrypts `data` into `tx` (as many records as it needs).
    pub fn encrypt(&mut self, data: &[u8]) -> Result<(), TlsError> {
        if data.is_empty() {
            return Ok(());
        }
        match self.run(None, Some(data))? {
            Stop::Traffic => Ok(()),
            Stop::Input => Err(TlsError::new("write before the handshake completed")),
            Stop::Closed => Err(TlsError::new("write after the connection closed")),
        }
    }

    /// Queues a close_notify alert (once).
    pub fn close_notify(&mut self) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        let _ = self.run(None, Some(&[]));
    }

    fn drain_plain(&mut self, out: &mut Vec<u8>) -> usize {
        let avail = self.plain.len() - self.plain_start;
        if avail == 0 {
            return 0;
        }
        let n = avail.min(out.capacity() - out.len());
        out.extend_from_slice(&self.plain[self.plain_start..self.plain_start + n]);
        self.plain_start += n;
        if self.plain_start == self.plain.len() {
            self.plain.clear();
            self.plain_start = 0;
        }
        n
    }

    /// The processing loop: handles states until one needs the caller.
    /// `data: Some(&[])` queues close_notify instead of encrypting.
    fn run(
        &mut self,
        mut out: Option<&mut Vec<u8>>,
        data: Option<&[u8]>,
    ) -> Result<Stop, TlsError> {
        loop {
            let rx = &mut self.rx[self.rx_start..];
            let mut sink = Sink {
                out: out.as_deref_mut(),
                plain: &mut self.plain,
            };
            let (discard, step) = match &mut self.side {
                Side::Client(c) => {
                    let UnbufferedStatus { discard, state } = c.process_tls_records(rx);
                    (discard, step(state, &mut sink, &mut self.tx, data)?)
                }
                Side::Server(s) => {
                    let UnbufferedStatus { discard, state } = s.process_tls_records(rx);
                    (discard, step(state, &mut sink, &mut self.tx, data)?)
                }
            };
            self.rx_start += discard;
            if self.rx_start == self.rx.len() {
                self.rx.clear();
                self.rx_start = 0;
            }
            match step {
                Step::Again => {}
                Step::PeerClosed => {
                    self.peer_closed = true;
                    if out.is_some() {
                        return Ok(Stop::Closed);
                    }
                }
                Step::Input => return Ok(Stop::Input),
                Step::Traffic => return Ok(Stop::Traffic),
                Step::Closed => return Ok(Stop::Closed),
            }
        }
    }
}

/// Where decrypted records go: the caller's buffer while it has room, then
/// the session's overflow.
struct Sink<'a> {
    out: Option<&'a mut Vec<u8>>,
    plain: &'a mut Vec<u8>,
}

impl Sink<'_> {
    fn push(&mut self, mut payload: &[u8]) {
        if let Some(out) = self.out.as_deref_mut() {
            let n = payload.len().min(out.capacity() - out.len());
            out.extend_from_slice(&payload[..n]);
            payload = &payload[n..];
        }
        self.plain.extend_from_slice(payload);
    }
}

enum Step {
    Again,
    Input,
    Traffic,
    PeerClosed,
    Closed,
}

/// One state of the unbuffered state machine. Generic over the client and
/// server connection data; the caller applies the discard.
fn step<Data>(
    state: Result<ConnectionState<'_, '_, Data>, rustls::Error>,
    sink: &mut Sink<'_>,
    tx: &mut TxBuf,
    data: Option<&[u8]>,
) -> Result<Step, TlsError> {
    match state? {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                let rec = rec?;
                sink.push(rec.payload);
            }
            Ok(Step::Again)
        }
        // 0-RTT is never enabled (early data is replayable).
        ConnectionState::ReadEarlyData(_) => Err(TlsError::new("unexpected early data")),
        ConnectionState::EncodeTlsData(mut e) => {
            let mut need = 4096;
            loop {
                match e.encode(tx.room(need)) {
                    Ok(n) => {
                        tx.len += n;
                        return Ok(Step::Again);
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        need = required_size;
                    }
                    Err(e) => {
                        return Err(TlsError::new(format!("encoding a handshake record: {e}")))
                    }
                }
            }
        }
        ConnectionState::TransmitTlsData(t) => {
            // The bytes are in `tx`; the I/O layer sends them before it
            // waits for input, which is what `done` promises.
            t.done();
            Ok(Step::Again)
        }
        ConnectionState::BlockedHandshake => Ok(Step::Input),
        ConnectionState::WriteTraffic(mut w) => {
            let Some(data) = data else {
                return Ok(Step::Traffic);
            };
            let mut need = data.len() + data.len().div_ceil(16384).max(1) * 64;
            loop {
                let res = if data.is_empty() {
                    w.queue_close_notify(tx.room(need))
                } else {
                    w.encrypt(data, tx.room(need))
                };
                match res {
                    Ok(n) => {
                        tx.len += n;
                        return Ok(Step::Traffic);
                    }
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => {
                        need = required_size;
                    }
                    Err(e) => return Err(TlsError::new(format!("encrypting: {e}"))),
                }
            }
        }
        ConnectionState::PeerClosed => Ok(Step::PeerClosed),
        ConnectionState::Closed => Ok(Step::Closed),
        _ => Err(TlsError::new("unexpected TLS connection state")),
    }
}
