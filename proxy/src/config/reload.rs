//! Which keys a running proxy can apply on SIGHUP. Listening sockets, the shard
//! threads and their pinning, the admin endpoint, the identity and the access log
//! file are set up once at start; everything that is read per request or per
//! connection (services, endpoints, timeouts, limits, pooling, labels) may change.
//! `[control]` is read once by the control client at start: every key in it
//! needs a restart. `[tls]` may point at other files (they are re-read on
//! every reload anyway) but may not appear or disappear: it decides whether
//! the inbound port speaks plaintext or mutual TLS.

use super::{Config, ConfigError, ControlConfig, ListenAddr, TcpUpstreamConfig};

pub(crate) fn check(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let changed = |place: &str, key: &str, from: String, to: String| {
        ConfigError::needs_restart(
            &new.source,
            place,
            key,
            format!("changed from {from} to {to}; this key needs a restart"),
        )
    };
    let (a, b) = (&old.proxy, &new.proxy);
    if a.service != b.service {
        return Err(changed(
            "[proxy]",
            "service",
            quoted(&a.service),
            quoted(&b.service),
        ));
    }
    if a.cores != b.cores {
        return Err(changed(
            "[proxy]",
            "cores",
            a.cores.to_string(),
            b.cores.to_string(),
        ));
    }
    if a.cpus != b.cpus {
        return Err(changed("[proxy]", "cpus", cpus(&a.cpus), cpus(&b.cpus)));
    }
    if a.admin != b.admin {
        return Err(changed(
            "[proxy]",
            "admin",
            quoted(a.admin),
            quoted(b.admin),
        ));
    }
    if a.access_log != b.access_log {
        let show = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or("none".to_owned(), |p| quoted(p.display()))
        };
        return Err(changed(
            "[proxy]",
            "access_log",
            show(&a.access_log),
            show(&b.access_log),
        ));
    }
    if a.upgrade_socket != b.upgrade_socket {
        let show = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or("none".to_owned(), |p| quoted(p.display()))
        };
        return Err(changed(
            "[proxy]",
            "upgrade_socket",
            show(&a.upgrade_socket),
            show(&b.upgrade_socket),
        ));
    }
    section(new, "[inbound]", &old.inbound, &new.inbound)?;
    if let (Some(a), Some(b)) = (&old.inbound, &new.inbound) {
        if a.listen != b.listen {
            return Err(changed(
                "[inbound]",
                "listen",
                quoted(a.listen),
                quoted(b.listen),
            ));
        }
        if a.tcp != b.tcp {
            let p = |tcp: bool| quoted(if tcp { "tcp" } else { "http" });
            return Err(changed("[inbound]", "protocol", p(a.tcp), p(b.tcp)));
        }
    }
    section(new, "[outbound]", &old.outbound, &new.outbound)?;
    if let (Some(a), Some(b)) = (&old.outbound, &new.outbound) {
        if a.listen != b.listen {
            // The mode and owner are applied when the socket is bound.
            let key = match (&a.listen, &b.listen) {
                (ListenAddr::Unix(x), ListenAddr::Unix(y)) if x.path == y.path => {
                    "listen_mode, listen_owner or listen_group"
                }
                _ => "listen",
            };
            if key != "listen" {
                return Err(ConfigError::needs_restart(
                    &new.source,
                    "[outbound]",
                    key,
                    "changed; the socket file's mode and owner are set when it is bound",
                ));
            }
            return Err(changed(
                "[outbound]",
                "listen",
                quoted(&a.listen),
                quoted(&b.listen),
            ));
        }
        tcp(new, &a.tcp, &b.tcp)?;
    }
    // Switching between plaintext and mutual TLS changes what the inbound
    // port accepts; the files themselves are re-read on every reload.
    section(new, "[tls]", &old.tls, &new.tls)?;
    // The mark is set on sockets as they are opened, and the ruleset in
    // the kernel was rendered from the file the proxy started with.
    section(new, "[intercept]", &old.intercept, &new.intercept)?;
    if old.intercept != new.intercept {
        return Err(ConfigError::needs_restart(
            &new.source,
            "[intercept]",
            "",
            "changed; this section needs a restart (and the ruleset re-applied)",
        ));
    }
    control(new, &old.control, &new.control)
}

/// `[[outbound.tcp]]` listeners are bound at start: any change to the list
/// needs a restart. The error names the first entry that differs.
fn tcp(
    new: &Config,
    old: &[TcpUpstreamConfig],
    now: &[TcpUpstreamConfig],
) -> Result<(), ConfigError> {
    let restart = |place: &str, key: &str, from: String, to: String| {
        Err(ConfigError::needs_restart(
            &new.source,
            place,
            key,
            format!("changed from {from} to {to}; this key needs a restart"),
        ))
    };
    for (i, (a, b)) in old.iter().zip(now).enumerate() {
        let place = format!("[[outbound.tcp]] #{}", i + 1);
        if a.service != b.service {
            return restart(&place, "service", quoted(&a.service), quoted(&b.service));
        }
        if a.listen != b.listen {
            return restart(&place, "listen", quoted(a.listen), quoted(b.listen));
        }
    }
    if old.len() != now.len() {
        let what = if now.len() > old.len() {
            "added"
        } else {
            "removed"
        };
        let n = old.len().min(now.len()) + 1;
        return Err(ConfigError::needs_restart(
            &new.source,
            &format!("[[outbound.tcp]] #{n}"),
            "",
            format!("entry was {what}; this needs a restart"),
        ));
    }
    Ok(())
}

/// Any change to `[control]` or `[control.health]` needs a restart; the error
/// names the first key that changed.
fn control(
    new: &Config,
    old: &Option<ControlConfig>,
    now: &Option<ControlConfig>,
) -> Result<(), ConfigError> {
    section(new, "[control]", old, now)?;
    let (Some(a), Some(b)) = (old, now) else {
        return Ok(());
    };
    let debug = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let dur = |d| quoted(super::duration::format(d));
    let keys: [(&str, &str, String, String); 11] = [
        (
            "[control]",
            "address",
            debug(&a.addresses),
            debug(&b.addresses),
        ),
        (
            "[control]",
            "token_file",
            debug(&a.token_file),
            debug(&b.token_file),
        ),
        (
            "[control]",
            "state_dir",
            debug(&a.state_dir),
            debug(&b.state_dir),
        ),
        ("[control]", "node", debug(&a.node), debug(&b.node)),
        (
            "[control]",
            "advertise",
            debug(&a.advertise),
            debug(&b.advertise),
        ),
        ("[control]", "calls", debug(&a.calls), debug(&b.calls)),
        (
            "[control]",
            "allow_store_change",
            debug(&a.allow_store_change),
            debug(&b.allow_store_change),
        ),
        (
            "[control.health]",
            "kind",
            debug(&a.health.kind.as_str()),
            debug(&b.health.kind.as_str()),
        ),
        (
            "[control.health]",
            "path",
            debug(&a.health.path),
            debug(&b.health.path),
        ),
        (
            "[control.health]",
            "interval",
            dur(a.health.interval),
            dur(b.health.interval),
        ),
        (
            "[control.health]",
            "timeout",
            dur(a.health.timeout),
            dur(b.health.timeout),
        ),
    ];
    for (place, key, from, to) in keys {
        if from != to {
            return Err(ConfigError::needs_restart(
                &new.source,
                place,
                key,
                format!("changed from {from} to {to}; this key needs a restart"),
            ));
        }
    }
    Ok(())
}

/// A listener, `[tls]` or `[control]` section may not appear or disappear:
/// its socket is bound (the inbound protocol chosen, the client started) at
/// start.
fn section<T>(
    new: &Config,
    place: &str,
    old: &Option<T>,
    now: &Option<T>,
) -> Result<(), ConfigError> {
    let what = match (old, now) {
        (None, Some(_)) => "section was added",
        (Some(_), None) => "section was removed",
        _ => return Ok(()),
    };
    Err(ConfigError::needs_restart(
        &new.source,
        place,
        "",
        format!("{what}; this needs a restart"),
    ))
}

fn quoted(v: impl std::fmt::Display) -> String {
    format!("\"{v}\"")
}

fn cpus(cpus: &Option<Vec<usize>>) -> String {
    cpus.as_ref()
        .map_or("none".to_owned(), |c| format!("{c:?}"))
}
