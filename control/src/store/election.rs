//! Elections on etcd: work that must run once among the replicas
//! (withdrawing endpoints whose heartbeats stopped, issuing the next root
//! of a rotation) runs on the replica that leads the election of that name.
//!
//! An election is one key, `<prefix>election/<name>`, put under the
//! candidate's lease only if it does not exist (a transaction comparing its
//! create revision with 0). The replica whose put created it leads, until
//! its lease ends (the process died, or etcd stopped hearing from it for the
//! TTL): etcd then deletes the key, and the next candidate's put creates
//! it. Each candidate tries once per session tick ([`Session::tick`], at
//! most a second), so a dead leader is replaced within the TTL plus a tick.
//!
//! Leading is a belief that can be stale: a leader cut off from etcd does
//! not know its lease ended and another replica leads. So what the leader
//! does in etcd is fenced: the key's create revision when this replica
//! created it is the [`Fence`], and [`EtcdStore::txn_fenced`] runs a
//! transaction only if the key still has that create revision. A deposed
//! leader's transaction then fails ([`Fenced::NotLeader`]) however late it
//! arrives.
//!
//! [`Session::tick`]: super::etcd::Session::tick

// Control is not the data plane: these locks guard short sections (no
// await inside), taken per election round or registration change.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::etcd::{EtcdStore, Inner, Retry};
use super::StoreError;

/// A fencing token: this replica led `name` when the leader key `key` was
/// created at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

impl Fence {
    /// The compare every fenced transaction carries: create_revision(key)
    /// == revision.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }
}

/// What a fenced transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Every compare held: the operations ran.
    Done,
    /// This replica no longer leads (the leader key is gone or another
    /// replica's): nothing ran.
    NotLeader,
    /// This replica leads, but one of the caller's own compares failed:
    /// nothing ran.
    Raced,
}

/// What a candidate knows: the fence while it leads, and when etcd last
/// confirmed it.
#[derive(Debug, Default)]
struct State {
    fence: Option<Fence>,
    confirmed: Option<Instant>,
}

/// One election this replica takes part in ([`Election::start`]). Dropping
/// it stops campaigning (the key, if this replica holds it, goes with the
/// lease).
pub struct Election {
    name: String,
    state: Arc<Mutex<State>>,
    /// How long a confirmation of leadership is believed: the lease TTL
    /// (after that, etcd may have given the key to another replica).
    trust: Duration,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// What one campaign round found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Round {
    Leading(Fence),
    /// Another replica leads (its name, from the key's value).
    Following(String),
}

impl Election {
    /// Campaign for `name` (e.g. "withdraw", "ca-rotation") in the
    /// background on the store's runtime, under the replica's lease;
    /// campaigns again after losing leadership or the lease.
    pub fn start(store: &EtcdStore, name: &str, replica: &str) -> Election {
        let state = Arc::new(Mutex::new(State::default()));
        let Some(session) = store.session().cloned() else {
            // No session, no lease: never leads.
            tracing::warn!(
                election = name,
                "no etcd session: this replica does not campaign"
            );
            return Election {
                name: name.to_string(),
                state,
                trust: Duration::ZERO,
                task: None,
            };
        };
        let inner = store.inner();
        let key = inner.keys().election(name);
        let (name_owned, replica) = (name.to_string(), replica.to_string());
        let st = state.clone();
        let tick = session.tick();
        let trust = session.ttl;
        let handle = store.spawn_handle(async move {
            let mut was: Option<Round> = None;
            loop {
                let lease = session.lease();
                let round = campaign(&inner, &key, &replica, lease).await;
                {
                    let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                    match &round {
                        Ok(Round::Leading(f)) => {
                            s.fence = Some(f.clone());
                            s.confirmed = Some(Instant::now());
                        }
                        Ok(Round::Following(_)) => {
                            s.fence = None;
                            s.confirmed = None;
                        }
                        // Not heard: the belief stands until `trust` runs out.
                        Err(_) => {}
                    }
                }
                match round {
                    Ok(r) => {
                        if was.as_ref() != Some(&r) {
                            match &r {
                                Round::Leading(f) => tracing::info!(election = %name_owned, replica = %replica, fence = f.revision, "leading election {name_owned}"),
                                Round::Following(l) => tracing::info!(election = %name_owned, leader = %l, "election {name_owned} is led by {l}"),
                            }
                        }
                        was = Some(r);
                    }
                    Err(e) => {
                        tracing::debug!(election = %name_owned, "campaign round failed: {e}");
                    }
                }
                tokio::time::sleep(tick).await;
            }
        });
        Election {
            name: name.to_string(),
            state,
            trust,
            task: handle,
        }
    }

    /// The fence, if this replica leads now (as far as etcd confirmed
    /// within the lease TTL).
    pub fn leading(&self) -> Option<Fence> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (&s.fence, s.confirmed) {
            (Some(f), Some(at)) if at.elapsed() < self.trust => Some(f.clone()),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One round: create the key under `lease` if nobody holds it, else read
/// who does. A key under this replica's own lease is its own (it created
/// it in an earlier round).
async fn campaign(
    inner: &Inner,
    key: &str,
    replica: &str,
    lease: i64,
) -> Result<Round, StoreError> {
    if lease == 0 {
        return Ok(Round::Following(String::new()));
    }
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            replica,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    // A lost answer is safe to repeat: the second try finds the key under
    // this lease.
    let resp = inner.txn(txn, "campaigning", Retry::Any).await?;
    if resp.succeeded() {
        let revision = resp.header().map_or(0, |h| h.revision());
        return Ok(Round::Leading(Fence {
            key: key.to_string(),
            revision,
        }));
    }
    let kv = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    Ok(match kv {
        Some(kv) if kv.lease() == lease => Round::Leading(Fence {
            key: key.to_string(),
            revision: kv.create_revision(),
        }),
        Some(kv) => Round::Following(String::from_utf8_lossy(kv.value()).into_owned()),
        // Deleted between the compare and the get: next round.
        None => Round::Following(String::new()),
    })
}

impl EtcdStore {
    /// One transaction: `fence.compare()` plus `compares`; `ops` run only
    /// if all hold. Sent once more only if it certainly did not reach etcd.
    pub fn txn_fenced(
        &self,
        fence: &Fence,
        what: &'static str,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Fenced, StoreError> {
        let fence = fence.clone();
        self.run(what, move |inner| async move {
            fenced(&inner, &fence, what, compares, ops).await
        })
    }
}

/// [`EtcdStore::txn_fenced`] on the store's runtime.
pub(crate) async fn fenced(
    inner: &Inner,
    fence: &Fence,
    what: &'static str,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<Fenced, StoreError> {
    let mut when = Vec::with_capacity(compares.len() + 1);
    when.push(fence.compare());
    when.extend(compares);
    let txn = Txn::new()
        .when(when)
        .and_then(ops)
        .or_else([TxnOp::get(fence.key.clone(), None)]);
    let resp = inner.txn(txn, what, Retry::Unsent).await?;
    if resp.succeeded() {
        return Ok(Fenced::Done);
    }
    let holder = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
        _ => None,
    });
    Ok(verdict(fence, holder))
}

/// Why a fenced transaction failed, from the leader key's create revision
/// after it (`None`: the key is gone).
fn verdict(fence: &Fence, holder: Option<i64>) -> Fenced {
    if holder == Some(fence.revision) {
        Fenced::Raced
    } else {
        Fenced::NotLeader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fenced_txn_is_not_leader_unless_the_key_is_still_ours() {
        let f = Fence {
            key: "/coremesh/election/withdraw".into(),
            revision: 42,
        };
        assert_eq!(verdict(&f, Some(42)), Fenced::Raced);
        assert_eq!(verdict(&f, Some(43)), Fenced::NotLeader);
        assert_eq!(verdict(&f, None), Fenced::NotLeader);
    }

    #[test]
    fn the_fence_compares_the_leader_keys_create_revision() {
        let f = Fence {
            key: "/coremesh/election/withdraw".into(),
            revision: 7,
        };
        let want = Compare::create_revision("/coremesh/election/withdraw", CompareOp::Equal, 7);
        assert_eq!(format!("{:?}", f.compare()), format!("{want:?}"));
    }
}
