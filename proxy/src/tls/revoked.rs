//! Revoked peer certificates: the list control sends in every snapshot
//! (`Snapshot::revoked`, the certificates of evicted nodes) and, per
//! shard, the mutual TLS connections open with a peer, so that a
//! revocation also ends the connections that use a revoked certificate.
//!
//! Three places check the list:
//! * the verifiers of a full handshake ([`super::identity`]), both
//!   directions: the peer gets a `certificate_revoked` alert;
//! * [`PeerConns::register`], once a handshake completes: a resumed session
//!   is not verified again by rustls, and a handshake that began before the
//!   list arrived was verified against the old one;
//! * [`PeerConns::set_revoked`], when a new list arrives: every open
//!   connection whose peer's serial is on it is shut (shutdown(2) on its
//!   socket; its tasks see the end of the stream and close it).
//!
//! Cost: a handshake reads the peer's serial once (the leaf is parsed for
//! its SPIFFE ID anyway) and inserts one entry in a per-shard map; the
//! connection's end removes it. Nothing per request.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use coremesh_api::snapshot::{serial_bytes, RevokedCert};
use rustc_hash::FxHashMap;

/// The serial numbers of revoked certificates (content octets of the DER
/// INTEGER, leading zero bytes dropped).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    serials: HashSet<Box<[u8]>>,
}

impl Revocations {
    /// The list of a snapshot; an entry whose serial is not hex is logged
    /// and skipped.
    pub fn from_list(list: &[RevokedCert]) -> Revocations {
        let mut serials = HashSet::with_capacity(list.len());
        for c in list {
            match serial_bytes(&c.serial) {
                Some(b) if !b.is_empty() => {
                    serials.insert(b.into_boxed_slice());
                }
                _ => {
                    tracing::warn!(serial = %c.serial, node = %c.node, "ignoring a revoked certificate whose serial is not hex")
                }
            }
        }
        Revocations { serials }
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether a serial (as [`leaf_serial`] reads it) is revoked.
    pub fn contains(&self, serial: &[u8]) -> bool {
        self.serials.contains(serial)
    }

    /// Whether the certificate `der` is revoked; an unreadable one is not
    /// (the chain verification refuses it on its own).
    pub fn revokes(&self, der: &[u8]) -> bool {
        !self.is_empty() && leaf_serial(der).is_some_and(|s| self.contains(&s))
    }
}

/// The serial number of a certificate, leading zero bytes dropped.
pub fn leaf_serial(der: &[u8]) -> Option<Box<[u8]>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(strip(cert.raw_serial()).into())
}

/// `raw` without leading zero bytes.
pub fn strip(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    &raw[start..]
}

/// A refused peer: its certificate's serial is revoked.
#[derive(Debug, thiserror::Error)]
#[error("the peer's certificate (serial {serial}) is revoked: its node was evicted from the mesh")]
pub struct RevokedPeer {
    pub serial: String,
}

/// A registered connection: its peer's serial and its socket.
type OpenConn = (Box<[u8]>, RawFd);

/// One shard's open mutual TLS connections by peer serial, and the
/// revocation list in force on it.
#[derive(Default)]
pub struct PeerConns {
    revoked: RefCell<Arc<Revocations>>,
    open: RefCell<FxHashMap<u64, OpenConn>>,
    next: Cell<u64>,
}

impl PeerConns {
    /// The list in force (for the shard's TLS configurations).
    pub fn revoked(&self) -> Arc<Revocations> {
        self.revoked.borrow().clone()
    }

    /// How many connections are registered.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.borrow().len()
    }

    /// Registers a connection that completed its handshake with a peer
    /// whose certificate has `serial`, on socket `fd`; refused if the
    /// serial is revoked. The guard unregisters it: keep it as long as
    /// the socket is open (it is dropped with the connection).
    pub fn register(
        self: &Rc<Self>,
        serial: Box<[u8]>,
        fd: RawFd,
    ) -> Result<PeerGuard, RevokedPeer> {
        if self.revoked.borrow().contains(&serial) {
            return Err(RevokedPeer {
                serial: coremesh_api::snapshot::serial_hex(&serial),
            });
        }
        let id = self.next.get();
        self.next.set(id + 1);
        self.open.borrow_mut().insert(id, (serial.clone(), fd));
        Ok(PeerGuard {
            conns: self.clone(),
            id,
            serial,
        })
    }

    /// Puts `revoked` in force and shuts every open connection whose peer
    /// it revokes; returns how many. `shut` does the shutdown(2) (a
    /// parameter so that tests need no sockets).
    pub fn set_revoked(&self, revoked: Arc<Revocations>, shut: impl Fn(RawFd)) -> usize {
        let mut closed = 0;
        for (serial, fd) in self.open.borrow().values() {
            if revoked.contains(serial) {
                shut(*fd);
                closed += 1;
            }
        }
        *self.revoked.borrow_mut() = revoked;
        closed
    }
}

/// A registered connection ([`PeerConns::register`]); unregisters it when
/// dropped.
pub struct PeerGuard {
    conns: Rc<PeerConns>,
    id: u64,
    serial: Box<[u8]>,
}

impl PeerGuard {
    /// Registers a second descriptor of the same connection (the other
    /// half of a tunnel), which may outlive this one's.
    pub fn also(&self, fd: RawFd) -> Result<PeerGuard, RevokedPeer> {
        self.conns.register(self.serial.clone(), fd)
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.conns.open.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests;
