//! systemd integration (`Type=notify`, `WatchdogSec=`): the sd_notify(3)
//! messages the agent sends about the proxy's state, and the watchdog.
//!
//! | when | message |
//! | --- | --- |
//! | listeners bound, last good snapshot (or the file's services) applied, every shard answering | `READY=1` |
//! | SIGHUP received | `RELOADING=1` with `MONOTONIC_USEC` (systemd ≥ 253 matches the two) |
//! | reload done or rejected, the shards have taken it | `READY=1` |
//! | SIGTERM/SIGINT: draining starts | `STOPPING=1` |
//! | an upgrade's successor serves (`--upgrade-from`); this process drains | `MAINPID=<successor>` |
//! | every half `WATCHDOG_USEC`, while every shard answers | `WATCHDOG=1` |
//!
//! Nothing is sent without `NOTIFY_SOCKET` (not started by systemd).
//!
//! Why the watchdog asks the shards: the agent thread runs on its own tokio
//! runtime, so pinging from a timer there would keep a proxy alive whose
//! shards (which carry all the traffic) are stuck. Each ping first sends every
//! shard a [`ShardMsg::Snapshot`] (the stats request `/metrics` already uses,
//! handled in the shard's message loop, off the request path) and pings only
//! if all of them answer within a quarter of the watchdog period. One stuck
//! shard withholds the pings, and systemd restarts the proxy when the period
//! runs out.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::Signal;
use tokio::time::Instant;

use crate::msg::{ShardHandle, ShardMsg};

/// An sd_notify message that could not be sent (logged, never fatal: the
/// proxy serves whether or not systemd hears about it).
#[derive(Debug, thiserror::Error)]
#[error("cannot send {what} to systemd (NOTIFY_SOCKET={socket}): {source}")]
pub struct NotifyError {
    what: &'static str,
    socket: String,
    #[source]
    source: std::io::Error,
}

/// Whether the proxy was started with a notification socket (by systemd,
/// or by a test standing in for it).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `states` as one datagram; `what` names them in the log.
fn send(what: &'static str, states: &[NotifyState]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(source) = sd_notify::notify(states) {
        let e = NotifyError {
            what,
            socket: socket.to_string_lossy().into_owned(),
            source,
        };
        tracing::warn!("{e}");
    }
}

/// `READY=1`: the proxy serves (after start or after a reload).
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// `RELOADING=1` and `MONOTONIC_USEC=` (newer systemd reads the reload's
/// start from it; without a readable clock the message goes without).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING=1", &[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: draining starts.
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// `MAINPID=<successor>`: an upgrade handed the listeners to `pid`
/// (`--upgrade-from`), so the service goes on in that process, not
/// stopping. systemd accepts it from the main process (NotifyAccess=main)
/// for a process in the unit's cgroup; afterwards it watches the successor.
pub fn handed_over(pid: u32) {
    let status = format!("STATUS=handed over to pid {pid}");
    send(
        "MAINPID",
        &[NotifyState::MainPid(pid), NotifyState::Custom(&status)],
    );
}

/// The watchdog period systemd set (`WATCHDOG_USEC`, for this process if
/// `WATCHDOG_PID` names one), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// How often the watchdog pings and how long shards have to answer before a
/// ping: half the period between pings (as sd_watchdog_enabled(3)
/// recommends), a quarter for the answers, so a slow but live shard still
/// makes the ping land within the period.
pub fn watchdog_timing(period: Duration) -> (Duration, Duration) {
    (period / 2, period / 4)
}

/// Whether every shard answers a stats request within `within`. A shard
/// whose inbox is closed (its thread ended) counts as not answering.
pub async fn shards_answer(shards: &[ShardHandle], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut pending = Vec::with_capacity(shards.len());
    for shard in shards {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if shard.tx.try_send(ShardMsg::Snapshot(tx)).is_err() {
            tracing::warn!(shard = shard.index, "shard does not take messages");
            return false;
        }
        pending.push((shard.index, rx));
    }
    for (index, rx) in pending {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                tracing::warn!(shard = index, "shard dropped a stats request");
                return false;
            }
            Err(_) => {
                tracing::warn!(shard = index, "shard did not answer within {within:?}");
                return false;
            }
        }
    }
    true
}

/// Waits until every shard answers (so each runs its message loop: its
/// listeners are adopted and every table sent before, such as the restored
/// snapshot, is in force), then sends `READY=1`.
pub async fn started(shards: &[ShardHandle]) {
    while !shards_answer(shards, Duration::from_secs(1)).await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ready();
}

/// Under systemd, at start: `READY=1` once every shard answers (see
/// [`started`]), then the watchdog task if systemd asked for one. Returns
/// true if SIGTERM or SIGINT came first (the caller drains at once).
pub async fn start(shards: &[ShardHandle], term: &mut Signal, int: &mut Signal) -> bool {
    let stop = tokio::select! {
        _ = started(shards) => false,
        _ = term.recv() => true,
        _ = int.recv() => true,
    };
    if let Some(period) = watchdog_period() {
        tokio::task::spawn_local(watchdog(shards.to_vec(), period));
    }
    stop
}

/// After a reload: waits (at most a second) for the shards to take what
/// the reload sent them, then sends `READY=1` whatever they did, since
/// systemd waits for it to finish `systemctl reload`. Without systemd it
/// returns at once.
pub async fn reloaded(shards: &[ShardHandle]) {
    if !enabled() {
        return;
    }
    shards_answer(shards, Duration::from_secs(1)).await;
    ready();
}

/// Pings the watchdog every half `period` while every shard answers; runs
/// until the agent ends.
pub async fn watchdog(shards: Vec<ShardHandle>, period: Duration) {
    let (every, within) = watchdog_timing(period);
    tracing::info!("systemd watchdog: {period:?}; pinging every {every:?} while all shards answer");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shards_answer(&shards, within).await {
            send("WATCHDOG=1", &[NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "systemd watchdog: not pinging, a shard is not answering; systemd restarts the proxy once {period:?} pass without a ping"
            );
        }
    }
}

#[cfg(test)]
mod tests;
