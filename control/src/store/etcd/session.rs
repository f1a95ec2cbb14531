//! This replica's session with etcd: one lease per control process
//! (granted by [`EtcdStore::start_session`], TTL = `--heartbeat-timeout`),
//! kept alive from the store's own runtime, and what that says about the
//! replica's link to etcd ([`StoreHealth`]).
//!
//! Keys this replica owns (its election keys, its proxies' registrations)
//! are put with the lease: when the process dies, etcd deletes them after
//! the TTL. When the lease is lost anyway (etcd unreachable for longer than
//! the TTL, or its majority lost that long), the session grants a new one
//! and calls the hooks given to [`EtcdStore::on_new_lease`], which put what
//! the replica owns again under the new lease.

// Control is not the data plane: these locks guard short sections (no
// await inside), taken per election round or registration change.
#![allow(clippy::disallowed_types)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{io, EtcdError, EtcdStore, Inner, Retry};
use crate::store::StoreError;

/// A hook run (on the store's runtime) after a new lease replaced a lost
/// one, with the new lease's id. It must not block.
pub type LeaseHook = Box<dyn Fn(i64) + Send + Sync>;

/// The replica's session: its name, its lease, and when it last heard
/// from etcd.
pub struct Session {
    pub(crate) replica: String,
    pub(crate) ttl: Duration,
    /// The lease's id; 0 while none is granted.
    lease: AtomicI64,
    hooks: Mutex<Vec<LeaseHook>>,
    link: Mutex<Link>,
}

/// What the session last knew of etcd.
struct Link {
    /// When etcd last answered a keep-alive (or the grant).
    last_ok: Instant,
    /// Since when (wall clock) it has not, once that is longer than the
    /// cut-off threshold; `None` while etcd answers.
    cut_off_since: Option<SystemTime>,
    /// Why, in etcd's words.
    why: String,
}

/// How this replica's link to etcd is ([`EtcdStore::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// etcd answered within the threshold.
    Ok,
    /// No answer from etcd for longer than the threshold.
    CutOff { since: SystemTime, why: String },
}

impl Session {
    pub(super) fn new(replica: String, ttl: Duration, lease: i64) -> Session {
        Session {
            replica,
            ttl,
            lease: AtomicI64::new(lease),
            hooks: Mutex::new(Vec::new()),
            link: Mutex::new(Link {
                last_ok: Instant::now(),
                cut_off_since: None,
                why: String::new(),
            }),
        }
    }

    pub(crate) fn lease(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    /// How often the lease is renewed: a third of the TTL, at most every
    /// second (one small request per replica).
    pub fn tick(&self) -> Duration {
        (self.ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// How long without an answer from etcd makes the replica cut off: a
    /// third of the TTL, at least two ticks (so one slow answer is not an
    /// outage).
    pub fn threshold(&self) -> Duration {
        (self.ttl / 3).max(self.tick() * 2)
    }

    fn heard(&self) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        link.last_ok = Instant::now();
        if link.cut_off_since.take().is_some() {
            tracing::info!(replica = %self.replica, "etcd answers again: this replica is no longer cut off");
        }
    }

    fn missed(&self, why: String) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        let silent = link.last_ok.elapsed();
        if silent > self.threshold() && link.cut_off_since.is_none() {
            let since = SystemTime::now()
                .checked_sub(silent)
                .unwrap_or_else(SystemTime::now);
            tracing::warn!(replica = %self.replica, "cut off from etcd for {:.1}s: {why}; not pushing changes until it answers", silent.as_secs_f64());
            link.cut_off_since = Some(since);
        }
        link.why = why;
    }

    pub(super) fn health(&self) -> StoreHealth {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        match link.cut_off_since {
            Some(since) => StoreHealth::CutOff {
                since,
                why: link.why.clone(),
            },
            None if link.last_ok.elapsed() > self.threshold() => StoreHealth::CutOff {
                since: SystemTime::now()
                    .checked_sub(link.last_ok.elapsed())
                    .unwrap_or_else(SystemTime::now),
                why: "no answer from etcd to this replica's lease keep-alives".to_string(),
            },
            None => StoreHealth::Ok,
        }
    }

    pub(super) fn add_hook(&self, hook: LeaseHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }
}

impl Inner {
    /// A new lease of `ttl` (whole seconds, at least 1).
    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .call(
                "granting this replica's lease",
                Retry::Any,
                |c| async move { c.lease_client().grant(secs, None).await },
            )
            .await?;
        Ok(resp.id())
    }

    /// Renews lease `id` once; `Ok(false)` when etcd no longer has it.
    /// Each member gets `per_try` to answer, from the preferred one on: a
    /// member that hangs (stopped, or cut off from its peers) must not make
    /// this replica look cut off while the others answer; the one that
    /// does becomes the preferred member for every request.
    async fn renew(&self, id: i64, per_try: Duration) -> Result<bool, String> {
        let n = self.clients.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut why = String::new();
        for k in 0..n {
            let i = (start + k) % n;
            let mut lease = self.clients[i].lease_client();
            match tokio::time::timeout(per_try, lease.keep_alive(id)).await {
                Ok(Ok(_)) => {
                    if k > 0 {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok(true);
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => return Ok(false),
                Ok(Err(e)) => why = format!("{e}{}", super::hint(&e)),
                Err(_) => {
                    why = format!(
                        "no answer to a lease keep-alive within {:.1}s",
                        per_try.as_secs_f64()
                    )
                }
            }
        }
        Err(format!("etcd at {}: {why}", self.endpoints))
    }

    /// Keeps the session's lease alive every tick, forever; grants a new
    /// one when it is lost and runs the hooks.
    async fn keep_alive(self, session: Arc<Session>) {
        loop {
            tokio::time::sleep(session.tick()).await;
            let id = session.lease();
            match self.renew(id, session.tick()).await {
                Ok(true) => session.heard(),
                Ok(false) => {
                    tracing::warn!(replica = %session.replica, lease = id, "etcd no longer has this replica's lease (it expired while etcd did not hear from us): granting a new one and putting this replica's keys again");
                    match self.grant(session.ttl).await {
                        Ok(new) => {
                            session.lease.store(new, Ordering::Release);
                            session.heard();
                            let hooks = session.hooks.lock().unwrap_or_else(|p| p.into_inner());
                            for hook in hooks.iter() {
                                hook(new);
                            }
                        }
                        Err(e) => session.missed(e.to_string()),
                    }
                }
                Err(why) => session.missed(why),
            }
        }
    }
}

impl EtcdStore {
    /// Starts this replica's session: grants its lease (TTL `ttl`, whole
    /// seconds) and keeps it alive from the store's runtime. `replica`
    /// names this control process in election values and registration
    /// owners (`--replica-name`). Fails when etcd does not answer.
    pub fn start_session(&mut self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        let id = self.run("granting this replica's lease", move |inner| async move {
            inner.grant(ttl).await
        })?;
        let session = Arc::new(Session::new(replica.to_string(), ttl, id));
        self.inner.session = Some(session.clone());
        let Some(rt) = &self.rt else {
            return Err(io(EtcdError::Gone("shut down")));
        };
        rt.spawn(self.inner.clone().keep_alive(session));
        tracing::info!(replica, lease = id, ttl = ?ttl, "etcd session started");
        Ok(())
    }

    /// This replica's lease id (one lease per control process, kept alive
    /// by the store's runtime); `None` before [`EtcdStore::start_session`].
    pub fn lease(&self) -> Option<i64> {
        self.inner.session.as_ref().map(|s| s.lease())
    }

    /// This replica's name (for election values and registration owners):
    /// `--replica-name`, default hostname:api-port. Empty before
    /// [`EtcdStore::start_session`].
    pub fn replica(&self) -> &str {
        self.inner
            .session
            .as_ref()
            .map_or("", |s| s.replica.as_str())
    }

    /// The session (lease TTL, tick), once started.
    pub fn session(&self) -> Option<&Arc<Session>> {
        self.inner.session.as_ref()
    }

    /// Runs `hook` with the new lease's id each time a lost lease is
    /// replaced.
    pub fn on_new_lease(&self, hook: LeaseHook) {
        if let Some(s) = &self.inner.session {
            s.add_hook(hook);
        }
    }

    /// Whether this replica hears from etcd ([`StoreHealth::Ok`] before the
    /// session starts).
    pub fn health(&self) -> StoreHealth {
        self.inner
            .session
            .as_ref()
            .map_or(StoreHealth::Ok, |s| s.health())
    }

    /// Spawns `fut` on the store's runtime (which drives the etcd client).
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.rt {
            rt.spawn(fut);
        }
    }
}
