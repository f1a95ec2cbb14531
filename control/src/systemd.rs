//! systemd integration (`Type=notify`, `WatchdogSec=`): `READY=1` once the
//! QUIC and API sockets are bound, `STOPPING=1` when SIGTERM/SIGINT starts
//! the shutdown, and `WATCHDOG=1` every half `WATCHDOG_USEC` from a task on
//! control's tokio runtime (a runtime that stops running tasks stops the
//! pings, and systemd restarts control). Nothing is sent without
//! `NOTIFY_SOCKET`.

use std::time::Duration;

use sd_notify::NotifyState;

/// An sd_notify message that could not be sent (logged, never fatal:
/// control serves whether or not systemd hears about it).
#[derive(Debug, thiserror::Error)]
#[error("cannot send {what} to systemd (NOTIFY_SOCKET={socket}): {source}")]
pub struct NotifyError {
    what: &'static str,
    socket: String,
    #[source]
    source: std::io::Error,
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

/// `READY=1`: both sockets are bound and the store is open.
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// `STOPPING=1`: shutdown starts.
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// The interval between watchdog pings: half the period systemd set
/// (`WATCHDOG_USEC`, for this process if `WATCHDOG_PID` names one), as
/// sd_watchdog_enabled(3) recommends; `None` without a watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    interval_for(sd_notify::watchdog_enabled())
}

/// Half of `period`, unless there is none (or it is zero).
pub fn interval_for(period: Option<Duration>) -> Option<Duration> {
    period.filter(|p| !p.is_zero()).map(|p| p / 2)
}

/// Pings the watchdog every `every`; spawn it on the runtime whose health
/// it vouches for.
pub async fn watchdog(every: Duration) {
    tracing::info!("systemd watchdog: pinging every {every:?}");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        send("WATCHDOG=1", &[NotifyState::Watchdog]);
    }
}

#[cfg(test)]
mod tests;
