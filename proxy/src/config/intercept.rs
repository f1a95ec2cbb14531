//! `[intercept]` → [`InterceptConfig`]: defaults from the listeners, and
//! the checks that make the rendered nftables ruleset sound (a redirect
//! needs a fixed port to go to, and a section it goes to).

use std::path::Path;

use super::file::InterceptFile;
use super::{AppAddr, ConfigError, InboundConfig, InterceptConfig, OutboundConfig};

/// Errors name `[intercept]` and the key in `path`.
struct At<'a>(&'a Path);

impl At<'_> {
    fn err(&self, key: &str, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::invalid(self.0, "[intercept]", key, reason)
    }
}

/// The default SO_MARK: "CM" in ASCII, unlikely to clash with marks other
/// tools set (routing tables, firewalls usually use small numbers).
pub const DEFAULT_MARK: u32 = 0x434d;

pub(super) fn resolve(
    path: &Path,
    f: InterceptFile,
    inbound: &Option<InboundConfig>,
    outbound: &Option<OutboundConfig>,
) -> Result<InterceptConfig, ConfigError> {
    let at = At(path);
    let mark = match f.mark {
        None => DEFAULT_MARK,
        Some(m) => u32::try_from(m)
            .ok()
            .filter(|&m| m != 0)
            .ok_or_else(|| at.err("mark", format!("{m} is not a mark (1..=4294967295)")))?,
    };
    let outbound_on = f.outbound.unwrap_or(outbound.is_some());
    if outbound_on {
        let Some(o) = outbound else {
            return Err(at.err(
                "outbound",
                "true needs an [outbound] section to redirect to",
            ));
        };
        let Some(listen) = o.listen.tcp() else {
            return Err(at.err(
                "outbound",
                format!(
                    "[outbound] listen \"{}\" is a Unix socket; nftables redirects TCP to a port: give [outbound] a TCP listen address, or set outbound = false",
                    o.listen
                ),
            ));
        };
        if listen.port() == 0 {
            return Err(at.err(
                "outbound",
                format!(
                    "[outbound] listen \"{listen}\" has port 0; nftables redirects to a fixed port: give it one"
                ),
            ));
        }
        // The output hook's redirect sends to the loopback address.
        if !(listen.ip().is_loopback() || listen.ip().is_unspecified()) {
            return Err(at.err(
                "outbound",
                format!(
                    "[outbound] listen \"{listen}\" is not on loopback; a redirected connection arrives at 127.0.0.1 (::1)"
                ),
            ));
        }
    }
    let inbound_ports = match f.inbound_ports {
        Some(ports) => ports_in(&at, "inbound_ports", ports)?,
        None => match inbound.as_ref().map(|i| &i.app) {
            None => Vec::new(),
            Some(AppAddr::Tcp(a)) => vec![a.port()],
            // The default is the port callers used to reach the app at:
            // an app on a socket file had none.
            Some(app @ AppAddr::Unix(_)) => {
                return Err(at.err(
                    "inbound_ports",
                    format!("is needed: [inbound] app \"{app}\" is a Unix socket, so it has no port to redirect by default; list the ports callers connect to, or write inbound_ports = []"),
                ))
            }
        },
    };
    if !inbound_ports.is_empty() {
        let Some(i) = inbound else {
            return Err(at.err("inbound_ports", "needs an [inbound] section to redirect to"));
        };
        if i.listen.port() == 0 {
            return Err(at.err(
                "inbound_ports",
                format!(
                    "[inbound] listen \"{}\" has port 0; nftables redirects to a fixed port: give it one",
                    i.listen
                ),
            ));
        }
        // The prerouting hook's redirect sends to the address of the
        // interface the connection came in on.
        if i.listen.ip().is_loopback() {
            return Err(at.err(
                "inbound_ports",
                format!(
                    "[inbound] listen \"{}\" is on loopback; a redirected connection arrives at the host's address: listen on it or on 0.0.0.0",
                    i.listen
                ),
            ));
        }
        if inbound_ports.contains(&i.listen.port()) {
            return Err(at.err(
                "inbound_ports",
                format!("{} is [inbound] listen's own port", i.listen.port()),
            ));
        }
    }
    let exclude_outbound_ports = ports_in(
        &at,
        "exclude_outbound_ports",
        f.exclude_outbound_ports.unwrap_or_default(),
    )?;
    let exclude_uids = f
        .exclude_uids
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            u32::try_from(u).map_err(|_| at.err("exclude_uids", format!("{u} is not a user id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InterceptConfig {
        mark,
        outbound: outbound_on,
        inbound_ports,
        exclude_outbound_ports,
        exclude_uids,
    })
}

fn ports_in(at: &At<'_>, key: &str, ports: Vec<i64>) -> Result<Vec<u16>, ConfigError> {
    ports
        .into_iter()
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| at.err(key, format!("{p} is not a port (1..=65535)")))
        })
        .collect()
}
