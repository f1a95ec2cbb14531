//! The admin HTTP endpoint, served on the agent thread (tokio current-thread
//! runtime inside a `LocalSet`, hyper 1, HTTP/1.1 only).
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text format 0.0.4, all shards ([`crate::stats::render_prometheus`]) |
//! | `GET /stats/cores` | per-core JSON ([`crate::stats::cores_json`]) |
//! | `GET /ready` | 200 `ready` when every shard is ready and the proxy is not draining, else 503 `not ready` |
//! | `GET /live` | 200 `live` |
//! | `GET /config` | the running configuration as JSON ([`AdminState::config_json`]) |
//!
//! Other paths get 404, other methods on these paths 405.
//!
//! Stats are pulled, not pushed: a `/metrics` request sends
//! [`ShardMsg::Snapshot`] to every shard and waits at most
//! [`SNAPSHOT_TIMEOUT`] for the answers; a shard that is stuck or gone is left
//! out of that scrape rather than stalling it.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::msg::{ShardHandle, ShardMsg};
use crate::stats::{self, ShardSnapshot};

/// How long a scrape waits for the shards' snapshots.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1);

/// Content type of `/metrics` (Prometheus text exposition format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client must send its request head within this time (slow-loris guard:
/// the admin port is served by the same thread as the control agent).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoint reads. Owned by the agent thread.
pub struct AdminState {
    pub shards: Vec<ShardHandle>,
    /// The running configuration; set by the agent at start and on every
    /// reload.
    pub config_json: RefCell<serde_json::Value>,
    /// Set by the agent when it starts draining; `/ready` then answers 503.
    pub draining: Cell<bool>,
    /// The certificate in use: its SPIFFE ID and notAfter (Unix seconds).
    pub certificate: RefCell<Option<(String, i64)>>,
}

impl AdminState {
    /// Every shard runs and the proxy is not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.get() && self.shards.iter().all(|s| s.ready.load(Ordering::Acquire))
    }
}

/// Serves the admin endpoint on `listener` until the future is dropped. Each
/// connection is its own local task, so a bad or slow client only ends its
/// own connection.
pub async fn serve(listener: TcpListener, state: Rc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning, then keep
                // serving.
                crate::lograte::log_limited!(tracing::Level::WARN, %err, "admin: accept failed");
                let pause = crate::stats::accept::ACCEPT_FAILURES
                    .count(crate::stats::accept::Listener::Admin, &err);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = conn.await {
                tracing::debug!(%err, %peer, "admin: connection ended with an error");
            }
        });
    }
}

/// Asks every shard for a snapshot and returns the answers that arrive within
/// [`SNAPSHOT_TIMEOUT`] (one deadline for all shards, so a scrape takes at
/// most that long however many shards are stuck), sorted by core.
pub async fn collect_snapshots(state: &AdminState) -> Vec<ShardSnapshot> {
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    let mut pending = Vec::with_capacity(state.shards.len());
    for shard in &state.shards {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = match shard.tx.try_send(ShardMsg::Snapshot(tx)) {
            Ok(()) => true,
            Err(async_channel::TrySendError::Full(msg)) => {
                matches!(
                    tokio::time::timeout_at(deadline, shard.tx.send(msg)).await,
                    Ok(Ok(()))
                )
            }
            Err(async_channel::TrySendError::Closed(_)) => false,
        };
        if sent {
            pending.push((shard.index, rx));
        } else {
            tracing::debug!(
                shard = shard.index,
                "admin: shard did not take the snapshot request"
            );
        }
    }
    let mut snaps = Vec::with_capacity(pending.len());
    for (index, rx) in pending {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(snap)) => snaps.push(snap),
            Ok(Err(_)) => {
                tracing::debug!(shard = index, "admin: shard dropped the snapshot request")
            }
            Err(_) => tracing::warn!(
                shard = index,
                "admin: shard did not answer a snapshot request in time"
            ),
        }
    }
    snaps.sort_by_key(|s| s.core);
    snaps
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/metrics" | "/stats/cores" | "/ready" | "/live" | "/config"
    );
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    match path {
        "/metrics" => {
            let snaps = collect_snapshots(state).await;
            let mut out = String::with_capacity(16 * 1024);
            stats::render_prometheus(&snaps, &mut out);
            stats::accept::ACCEPT_FAILURES.render(&mut out);
            let budget = state.config_json.borrow()["limits"]["buffer_budget"].as_u64();
            crate::shard::budget::REFUSALS.render(&mut out, budget.unwrap_or(0) as usize);
            crate::accesslog::COUNTERS.render(&mut out);
            if let Some((id, not_after)) = state.certificate.borrow().as_ref() {
                stats::render_certificate(id, *not_after, &mut out);
            }
            body(StatusCode::OK, METRICS_CONTENT_TYPE, out.into())
        }
        "/stats/cores" => {
            let snaps = collect_snapshots(state).await;
            json(&stats::cores_json(&snaps))
        }
        "/ready" => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/live" => text(StatusCode::OK, "live\n"),
        _ => {
            // "/config". The borrow ends before this returns (no await).
            let v = state.config_json.borrow();
            json(&v)
        }
    }
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, s: &'static str) -> Response<Full<Bytes>> {
    body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(s.as_bytes()),
    )
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    // Serializing a `Value` cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    body(StatusCode::OK, "application/json", out.into())
}

#[cfg(test)]
mod tests;
