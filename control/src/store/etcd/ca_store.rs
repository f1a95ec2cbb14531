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
