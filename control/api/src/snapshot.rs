//! What control sends a proxy: a full, versioned view of what it needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::resource::{Access, AccessPolicy, Protocol, Resilience, Route};

/// A full snapshot for one proxy. Snapshots are never deltas: a proxy that
/// applies one has everything it needs.
///
/// Fields added after the first release have `#[serde(default)]`, so a
/// snapshot from an older control still reads (and an older proxy ignores
/// what it does not know).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases with every change control makes (config or endpoints),
    /// also across control restarts. Proxies ACK or NACK it.
    pub version: u64,
    /// The store version (`meshctl history`) this snapshot reflects.
    /// Within one store (same [`Snapshot::store_id`]) it never goes down:
    /// a rollback is a new, higher version. A proxy refuses (NACKs) a
    /// snapshot whose config version is lower than the one it runs from
    /// the same store, so a control that lost its store cannot hand out an
    /// older (or empty) policy as if it were new.
    pub config_version: u64,
    /// The identity of the store `config_version` counts in: a random id
    /// created with the store and recorded in control's data directory.
    /// Empty from a control older than store identities. A proxy refuses a
    /// snapshot from a store other than the one it runs, unless its
    /// operator allows the change (`[control] allow_store_change`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store_id: String,
    /// SHA-256 of the whole config at `config_version`, recorded when it was
    /// committed. Two snapshots of the same store and config version with
    /// different digests are different configs (a reinitialized store
    /// numbers its versions from 1 again): a proxy refuses the one it does
    /// not run. Empty from an older control: not compared.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_digest: String,
    /// The services this proxy may call, with their endpoints; also the
    /// mirror services of their Resiliences ([`Resilience::mirror`]),
    /// which receive copies of requests even when the proxy's `calls`
    /// does not list them. Mirrors are not followed further: a mirror
    /// service's own mirror is here only if the proxy calls it too (copies
    /// are never mirrored again).
    pub services: Vec<ServiceEndpoints>,
    /// The Routes of those services.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The Resilience of each of those services that has one, and of this
    /// proxy's own service (whose `rateLimit` its inbound side enforces),
    /// at most one per service, sorted by service. A service without one
    /// gets the defaults (p2c-ewma, the default retry budget, nothing
    /// else).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resilience: Vec<Resilience>,
    /// The AccessPolicy of this proxy's own service, if it has one. Only
    /// its own: a proxy never learns another service's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
    /// What the inbound side does without an AccessPolicy: the
    /// MeshConfig's `defaultAccess` (allow when there is none).
    #[serde(default)]
    pub default_access: Access,
    /// The MeshConfig's `outboundPolicy`: what an intercepting proxy does
    /// with a connection to a destination that is no mesh service. Absent
    /// (an older control, or `allow`): passed through.
    #[serde(default, skip_serializing_if = "Access::is_allow")]
    pub outbound_policy: Access,
    /// The MeshConfig's `tracing` (a proxy's own `[tracing]` overrides
    /// it). Absent (none, or an older control): no spans recorded unless
    /// the proxy's config says so. Boxed: a snapshot message stays within
    /// the size of the other control messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Box<crate::resource::Tracing>>,
    /// The CA certificates (PEM, one certificate each) whose peer
    /// certificates this proxy trusts, on the data plane and for control:
    /// control's CA first, then extra roots during a rotation. Empty from an
    /// older control: keep the CA from the join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_bundle: Vec<String>,
    /// Certificates control revoked (`meshctl node evict`): the proxy
    /// refuses a peer that presents one, on new handshakes in both
    /// directions, and closes its open connections that use one. The
    /// same list goes to every proxy; a certificate leaves it once it has
    /// expired. Empty from an older control, and an older proxy ignores it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<RevokedCert>,
}

/// One revoked certificate ([`Snapshot::revoked`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RevokedCert {
    /// The certificate's serial number as [`serial_hex`] writes it.
    pub serial: String,
    /// The node it was issued to (for logs; the serial is what is checked).
    pub node: String,
    /// When it expires, Unix seconds: after that it is refused as expired
    /// and leaves the list.
    pub not_after: u64,
}

/// A certificate serial number (the content octets of its DER INTEGER) as
/// lowercase hex without leading zero bytes: how control records the
/// serials it issued and how proxies compare a peer's against the
/// revocation list, so both agree however the INTEGER was padded.
pub fn serial_hex(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let mut out = String::with_capacity(2 * (raw.len() - start));
    for b in &raw[start..] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// The bytes of a [`serial_hex`] string (leading zero bytes dropped), or
/// `None` when it is not even-length lowercase or uppercase hex.
pub fn serial_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks(2) {
        out.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    let start = out.iter().position(|b| *b != 0).unwrap_or(out.len());
    out.drain(..start);
    Some(out)
}

/// A service and its current endpoints. Unhealthy endpoints are left out,
/// unless none is healthy: then all are kept (fail open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    /// The Service's `port` ([`crate::resource::Service::port`]): an
    /// intercepted connection to an endpoint's host at this port, or to one
    /// of `addresses` at it, is a call to this service. Skipped when absent,
    /// and an older proxy ignores it (this struct accepts unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The Service's virtual IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint proxy's inbound address.
    pub address: SocketAddr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node: String,
    #[serde(default = "yes")]
    pub healthy: bool,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests;
