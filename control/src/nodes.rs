//! Evicted nodes and the revocation list, as the hub holds them in memory
//! (the store holds them durably: [`crate::store::NodeRecord`]).
//!
//! Sans-I/O: built from the store's node records, asked with `now` (Unix
//! seconds). The revocation list is every certificate an eviction revoked
//! that has not expired yet, the same for every proxy; it is shared
//! (`Arc`) by every view, so a change of it reaches every session in one
//! push, and an expired entry leaves it ([`Nodes::expire`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coremesh_api::http::NodeStatus;
use coremesh_api::snapshot::RevokedCert;

use crate::store::NodeRecord;

#[derive(Debug, Default)]
pub struct Nodes {
    records: HashMap<String, NodeRecord>,
    /// Node name -> Unix seconds of its eviction.
    evicted: HashMap<String, u64>,
    /// Sorted by serial, what every snapshot carries.
    revoked: Arc<Vec<RevokedCert>>,
    serials: HashSet<String>,
}

impl Nodes {
    pub fn new(records: Vec<NodeRecord>, now: u64) -> Nodes {
        let mut nodes = Nodes::default();
        for r in records {
            nodes.records.insert(r.node.clone(), r);
        }
        nodes.rebuild(now);
        nodes
    }

    /// Replaces one node's record (after the store changed it).
    pub fn update(&mut self, record: NodeRecord, now: u64) {
        if record.is_empty() {
            self.records.remove(&record.node);
        } else {
            self.records.insert(record.node.clone(), record);
        }
        self.rebuild(now);
    }

    fn rebuild(&mut self, now: u64) {
        self.evicted = self
            .records
            .values()
            .filter_map(|r| r.evicted_at.map(|at| (r.node.clone(), at)))
            .collect();
        let mut revoked: Vec<RevokedCert> = self
            .records
            .values()
            .flat_map(|r| {
                r.revoked.iter().map(|c| RevokedCert {
                    serial: c.serial.clone(),
                    node: r.node.clone(),
                    not_after: c.not_after,
                })
            })
            .filter(|c| c.not_after > now)
            .collect();
        revoked.sort();
        self.serials = revoked.iter().map(|c| c.serial.clone()).collect();
        self.revoked = Arc::new(revoked);
    }

    /// When `node` was evicted, if it is.
    pub fn evicted_at(&self, node: &str) -> Option<u64> {
        self.evicted.get(node).copied()
    }

    /// Whether the certificate with this serial ([`coremesh_api::snapshot::serial_hex`]) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// The revocation list for the snapshots.
    pub fn revoked(&self) -> &Arc<Vec<RevokedCert>> {
        &self.revoked
    }

    /// Drops revoked certificates that expired by `now`; true if the list
    /// changed (then every proxy is sent the shorter one).
    pub fn expire(&mut self, now: u64) -> bool {
        if self.revoked.iter().all(|c| c.not_after > now) {
            return false;
        }
        for r in self.records.values_mut() {
            r.prune(now);
        }
        self.records.retain(|_, r| !r.is_empty());
        self.rebuild(now);
        true
    }

    /// Every known node, by name, for `GET /v1/nodes`.
    pub fn status(&self, now: u64) -> Vec<NodeStatus> {
        let mut out: Vec<NodeStatus> = self
            .records
            .values()
            .map(|r| NodeStatus {
                node: r.node.clone(),
                evicted_at: r.evicted_at,
                certificates: r.issued.iter().filter(|c| c.not_after > now).count(),
                revoked: r.revoked.iter().filter(|c| c.not_after > now).count(),
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

/// What a proxy of an evicted node is told when control refuses it (join,
/// session, renewal), and what control logs.
pub fn evicted_message(node: &str, at: u64) -> String {
    format!(
        "node {node:?} was evicted from the mesh (at Unix time {at}; `meshctl node evict`): control refuses its joins, sessions and renewals and every proxy refuses its certificates; after the host is cleaned up, `meshctl node readmit {node}` and a new join token"
    )
}

#[cfg(test)]
mod tests;
