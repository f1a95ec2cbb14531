//! What control sends a proxy: a full, versioned view of what it needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::resource::{Protocol, Route};

/// A full snapshot for one proxy. Snapshots are never deltas: a proxy that
/// applies one has everything it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases with every change control makes (config or endpoints),
    /// also across control restarts. Proxies ACK or NACK it.
    pub version: u64,
    /// The store version (`meshctl history`) this snapshot reflects.
    pub config_version: u64,
    /// The services this proxy may call, with their endpoints.
    pub services: Vec<ServiceEndpoints>,
    /// The Routes of those services.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A service and its current endpoints. Unhealthy endpoints are left out,
/// unless none is healthy: then all are kept (fail open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
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
