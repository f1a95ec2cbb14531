//! The sealed CA in etcd (`--ca-in-store`): reading `ca/<slot>` and
//! creating it once. What a record holds and how it is sealed is in
//! [`crate::store::ca_record`]; who writes it at start is in
//! [`crate::store::startup::ca_from_etcd`].

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{first_get, EtcdStore, Retry};
use crate::store::StoreError;

/// The slot of the CA the replicas issue from: `<prefix>ca/current`.
pub const CA_CURRENT: &str = "current";

impl EtcdStore {
    /// The raw value at `ca/<slot>` (`None`: absent).
    pub fn ca_value(&self, slot: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys().ca(slot);
        self.run("reading the CA", |inner| async move {
            Ok(inner
                .get_one(&key, "reading the CA")
                .await?
                .map(|kv| kv.value().to_vec()))
        })
    }

    /// Stores `value` at `ca/<slot>` if nothing is there (one transaction,
    /// compare: the key does not exist). `Ok(None)`: stored; `Ok(Some(v))`:
    /// another control was first, and `v` is what it stored.
    pub fn create_ca_value(
        &self,
        slot: &str,
        value: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys().ca(slot);
        self.run("storing the CA", |inner| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            // Safe to send again: a second try fails its compare and reads
            // back what the first stored, which is then ours.
            let resp = inner.txn(txn, "storing the CA", Retry::Any).await?;
            if resp.succeeded() {
                return Ok(None);
            }
            let held = first_get(&resp).map(|kv| kv.value().to_vec());
            match held {
                Some(v) if v == value => Ok(None),
                other => Ok(Some(other.unwrap_or_default())),
            }
        })
    }
}

/// The slot of the next root during a rotation: `<prefix>ca/next`.
pub const CA_NEXT: &str = "next";
/// The slot of the old root after a rotation's switch: `<prefix>ca/previous`.
pub const CA_PREVIOUS: &str = "previous";
/// The slot of an operator's request for a next root: `<prefix>ca/rotation`.
pub const CA_REQUEST: &str = "rotation";

/// One slot's value and `mod_revision` (for a guarded change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub value: Vec<u8>,
    pub revision: i64,
}

/// Every `ca/` slot, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaSlots {
    pub current: Option<Slot>,
    pub next: Option<Slot>,
    pub previous: Option<Slot>,
    pub request: Option<Slot>,
}

/// A compare that holds while `slot` is as read: its `mod_revision`, or
/// absent.
pub fn unchanged(key: &str, slot: &Option<Slot>) -> Compare {
    match slot {
        Some(s) => Compare::mod_revision(key, CompareOp::Equal, s.revision),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    }
}

impl EtcdStore {
    /// Every `ca/` slot, at one revision.
    pub fn ca_slots(&self) -> Result<CaSlots, StoreError> {
        self.run("reading the CA", |inner| async move {
            let kvs = inner.range("ca/", "reading the CA").await?;
            let mut slots = CaSlots::default();
            for kv in kvs {
                let slot = Some(Slot {
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision(),
                });
                match kv.key().strip_prefix(inner.keys.ca("").as_bytes()) {
                    Some(b"current") => slots.current = slot,
                    Some(b"next") => slots.next = slot,
                    Some(b"previous") => slots.previous = slot,
                    Some(b"rotation") => slots.request = slot,
                    _ => {}
                }
            }
            Ok(slots)
        })
    }

    /// One transaction on the `ca/` slots: `ops` if every compare holds.
    /// False when one did not (another control changed a slot first).
    pub fn ca_txn(
        &self,
        what: &'static str,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, StoreError> {
        self.run(what, move |inner| async move {
            let txn = Txn::new().when(compares).and_then(ops);
            Ok(inner.txn(txn, what, Retry::Unsent).await?.succeeded())
        })
    }
}
