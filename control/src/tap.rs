//! Taps: `meshctl tap SERVICE`, a live stream of the requests going
//! through a service's proxies.
//!
//! ```text
//! meshctl ──GET /v1/tap/api──▶ api.rs ──start──▶ Taps ──TapStart──▶ each session of api
//!    ▲                          (NDJSON body)            (that said it knows taps)
//!    └──── TapEvent lines ◀── rate limit ◀── records ◀──TapRecords── proxies
//! ```
//!
//! A tap lives as long as the HTTP response that streams it: when meshctl
//! goes away, the body is dropped, its [`TapGuard`] with it, and every
//! proxy is sent TapStop. Control renews each tap on the proxies every
//! [`RENEW_EVERY`] with a [`TTL`], so a proxy whose control died (or whose
//! TapStop was lost) stops tapping by itself.
//!
//! Limits: each proxy hands over at most `max_rps` requests a second
//! (split between its cores), and control passes on at most `max_rps` a
//! second in all, dropping (and counting) the rest; the queue to the HTTP
//! client is bounded too, so a slow client loses lines, never control's
//! memory.

// Like the hub's: short, synchronous sections, a few per tap message.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use coremesh_api::http::{TapEvent, TapRequest, TapStatus};
use coremesh_api::wire::{ControlMsg, TapRecord, FEATURE_TAP};
use tokio::sync::mpsc;

use crate::registry::ProxyId;

/// How long a proxy keeps tapping without hearing from control.
pub const TTL: Duration = Duration::from_secs(15);
/// How often control renews a tap on the proxies.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often the stream gets a status line (which also tells a closed
/// client connection, whose writes then fail, from a quiet one).
pub const STATUS_EVERY: Duration = Duration::from_secs(2);
/// `max_rps` when meshctl does not say.
pub const DEFAULT_MAX_RPS: u32 = 100;
/// The largest `max_rps` accepted.
pub const MAX_MAX_RPS: u32 = 10_000;
/// Taps running at once, at most: each costs the tapped proxies a copy of
/// every request it wants.
pub const MAX_TAPS: usize = 16;
/// Lines waiting for the HTTP client, per tap.
const QUEUE: usize = 1024;

/// The taps running and the sessions they go to.
pub struct Taps {
    inner: Mutex<Inner>,
    /// `spiffe://<trust domain>/service/`: an outbound request's caller
    /// is the tapped proxy's own service.
    spiffe_prefix: String,
}

#[derive(Default)]
struct Inner {
    next: u64,
    sessions: HashMap<ProxyId, Session>,
    taps: HashMap<u64, Tap>,
}

struct Session {
    service: String,
    node: String,
    /// The proxy said it knows taps (Features).
    tappable: bool,
    tx: mpsc::UnboundedSender<ControlMsg>,
}

struct Tap {
    service: String,
    path_prefix: Option<String>,
    max_rps: u32,
    out: mpsc::Sender<TapEvent>,
    /// The current one-second window and the lines passed on in it.
    window: (Instant, u32),
    dropped: u64,
}

impl Tap {
    fn start_msg(&self, id: u64) -> ControlMsg {
        ControlMsg::TapStart {
            tap: id,
            path_prefix: self.path_prefix.clone(),
            max_rps: self.max_rps,
            ttl_ms: TTL.as_millis() as u64,
        }
    }

    /// Whether one more line fits this second's `max_rps`.
    fn admit(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        if self.window.1 < self.max_rps {
            self.window.1 += 1;
            true
        } else {
            false
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a tap cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    #[error("max_rps: {0} is not between 1 and {MAX_MAX_RPS}")]
    MaxRps(u32),
    #[error("path: {0:?} does not start with '/'")]
    Path(String),
    #[error("{MAX_TAPS} taps are running already; stop one (its meshctl tap) first")]
    TooMany,
}

/// Stops its tap when dropped (the HTTP client went away).
pub struct TapGuard {
    taps: Arc<Taps>,
    id: u64,
}

impl TapGuard {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.taps.stop(self.id);
    }
}

impl Taps {
    pub fn new(spiffe_prefix: String) -> Taps {
        Taps {
            inner: Mutex::new(Inner::default()),
            spiffe_prefix,
        }
    }

    /// A session started; what control sends it about taps comes out of
    /// the receiver.
    pub fn attach(
        &self,
        id: ProxyId,
        service: &str,
        node: &str,
    ) -> mpsc::UnboundedReceiver<ControlMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner).sessions.insert(
            id,
            Session {
                service: service.to_string(),
                node: node.to_string(),
                tappable: false,
                tx,
            },
        );
        rx
    }

    pub fn detach(&self, id: ProxyId) {
        lock(&self.inner).sessions.remove(&id);
    }

    /// The session's proxy said which optional features it supports; a
    /// tap-capable one joins the taps running on its service at once.
    pub fn features(&self, id: ProxyId, features: &[String]) {
        if !features.iter().any(|f| f == FEATURE_TAP) {
            return;
        }
        let mut inner = lock(&self.inner);
        let Inner { sessions, taps, .. } = &mut *inner;
        let Some(s) = sessions.get_mut(&id) else {
            return;
        };
        s.tappable = true;
        for (tap_id, t) in taps.iter() {
            if t.service == s.service {
                let _ = s.tx.send(t.start_msg(*tap_id));
            }
        }
    }

    /// Starts a tap on every tap-capable session of `service`.
    pub fn start(
        self: &Arc<Self>,
        service: &str,
        path_prefix: Option<String>,
        max_rps: u32,
    ) -> Result<(TapGuard, mpsc::Receiver<TapEvent>), TapError> {
        if max_rps == 0 || max_rps > MAX_MAX_RPS {
            return Err(TapError::MaxRps(max_rps));
        }
        if let Some(p) = path_prefix.as_deref().filter(|p| !p.starts_with('/')) {
            return Err(TapError::Path(p.to_string()));
        }
        let (out, rx) = mpsc::channel(QUEUE);
        let mut inner = lock(&self.inner);
        if inner.taps.len() >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        inner.next += 1;
        let id = inner.next;
        let tap = Tap {
            service: service.to_string(),
            path_prefix,
            max_rps,
            out,
            window: (Instant::now(), 0),
            dropped: 0,
        };
        let msg = tap.start_msg(id);
        for s in inner.sessions.values() {
            if s.tappable && s.service == service {
                let _ = s.tx.send(msg.clone());
            }
        }
        inner.taps.insert(id, tap);
        drop(inner);
        tracing::info!(tap = id, service, max_rps, "tap started");
        Ok((
            TapGuard {
                taps: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// Renews tap `id` on its proxies (`renew`) and says where it stands;
    /// `None` once it stopped.
    pub fn status(&self, id: u64, renew: bool) -> Option<TapStatus> {
        let inner = lock(&self.inner);
        let tap = inner.taps.get(&id)?;
        let msg = tap.start_msg(id);
        let mut proxies = 0;
        let mut untapped = Vec::new();
        for s in inner.sessions.values().filter(|s| s.service == tap.service) {
            if !s.tappable {
                untapped.push(s.node.clone());
                continue;
            }
            proxies += 1;
            if renew {
                let _ = s.tx.send(msg.clone());
            }
        }
        untapped.sort();
        Some(TapStatus {
            service: tap.service.clone(),
            proxies,
            untapped,
            dropped: tap.dropped,
        })
    }

    /// Ends tap `id`: every proxy of its service is told to stop.
    pub fn stop(&self, id: u64) {
        let mut inner = lock(&self.inner);
        let Some(tap) = inner.taps.remove(&id) else {
            return;
        };
        for s in inner.sessions.values() {
            if s.tappable && s.service == tap.service {
                let _ = s.tx.send(ControlMsg::TapStop { tap: id });
            }
        }
        tracing::info!(tap = id, service = %tap.service, dropped = tap.dropped, "tap stopped");
    }

    /// Requests session `from` caught for tap `id`: passed on within the
    /// tap's rate, the rest counted as dropped. Records for a tap that
    /// ended, or from a proxy of another service, are ignored.
    pub fn records(&self, from: ProxyId, id: u64, records: Vec<TapRecord>, dropped: u64) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let Inner { sessions, taps, .. } = &mut *inner;
        let (Some(s), Some(tap)) = (sessions.get(&from), taps.get_mut(&id)) else {
            return;
        };
        if s.service != tap.service {
            return;
        }
        tap.dropped += dropped;
        for r in records {
            if !tap.admit(now) {
                tap.dropped += 1;
                continue;
            }
            let caller = match (r.caller, r.direction.as_str()) {
                (Some(c), _) => Some(c),
                (None, "outbound") => Some(format!("{}{}", self.spiffe_prefix, s.service)),
                (None, _) => None,
            };
            let event = TapEvent::Request(TapRequest {
                at_ms: r.at_ms,
                node: s.node.clone(),
                direction: r.direction,
                caller,
                service: r.service,
                method: r.method,
                authority: r.authority,
                path: r.path,
                status: r.status,
                latency_us: r.latency_us,
                trace_id: r.trace_id,
            });
            if tap.out.try_send(event).is_err() {
                tap.dropped += 1;
            }
        }
    }

    /// Whether a session of `service` is attached (for the API's "no such
    /// service").
    pub fn has_sessions(&self, service: &str) -> bool {
        lock(&self.inner)
            .sessions
            .values()
            .any(|s| s.service == service)
    }
}

/// The HTTP body of a tap: one JSON line per event. Dropping it (the client
/// went away) stops the tap.
pub struct TapBody {
    rx: mpsc::Receiver<TapEvent>,
    _guard: TapGuard,
}

impl TapBody {
    /// The body for `guard`'s tap, and the task that renews it and sends
    /// status lines until it stops.
    pub fn new(taps: Arc<Taps>, guard: TapGuard, rx: mpsc::Receiver<TapEvent>) -> TapBody {
        let id = guard.id();
        let out = lock(&taps.inner).taps.get(&id).map(|t| t.out.clone());
        if let Some(out) = out {
            tokio::spawn(renew(taps, id, out));
        }
        TapBody { rx, _guard: guard }
    }
}

/// Renews tap `id` every [`RENEW_EVERY`] and sends a status line every
/// [`STATUS_EVERY`] (the first at once), until it stops.
async fn renew(taps: Arc<Taps>, id: u64, out: mpsc::Sender<TapEvent>) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut renewed = Instant::now();
    loop {
        tick.tick().await;
        let renew = renewed.elapsed() >= RENEW_EVERY;
        if renew {
            renewed = Instant::now();
        }
        let Some(status) = taps.status(id, renew) else {
            return;
        };
        // A full queue: the status line waits; a closed one: the client
        // is gone.
        if out.send(TapEvent::Status(status)).await.is_err() {
            return;
        }
    }
}

impl futures_lite::Stream for TapBody {
    type Item = Result<axum::body::Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                Poll::Ready(Some(Ok(line.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests;
