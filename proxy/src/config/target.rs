//! Addresses to connect to, as configured: an IP literal, or a host name
//! and port that the agent resolves (at start and again periodically; see
//! `crate::agent::names`). The config never resolves: `--check` and a
//! SIGHUP reload do not wait for DNS, and the shards only ever see
//! resolved addresses.

use std::fmt;
use std::net::SocketAddr;

/// A host name and a port (`control.example:7443`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where to connect: an address, or a name to resolve first.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Addr(SocketAddr),
    Name(HostPort),
}

/// As written in the file, so messages that print a list of them
/// (`changed from [...] to [...]`) read like the config.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => a.fmt(f),
            Target::Name(n) => n.fmt(f),
        }
    }
}

impl Target {
    /// Whether it certainly is this host: a loopback IP, or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Target::Addr(a) => a.ip().is_loopback(),
            Target::Name(n) => n.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// Why a text is not a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("is not an address (IP:port, [IPv6]:port or host:port)")]
    Shape,
    #[error("has port 0, which cannot be connected to")]
    PortZero,
    #[error("has a host name that is not valid (letters, digits, '-', '.', labels of 1 to 63 characters)")]
    BadHost,
}

/// `10.0.0.5:80`, `[::1]:80` or `api.internal:80`; port 0 names no
/// listener and is refused.
pub fn parse_target(text: &str) -> Result<Target, TargetError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(TargetError::PortZero)
        } else {
            Ok(Target::Addr(a))
        };
    }
    let (host, port) = text.rsplit_once(':').ok_or(TargetError::Shape)?;
    let port: u16 = port.parse().map_err(|_| TargetError::Shape)?;
    if host.contains(':') || host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        // An IPv6 address without brackets, or a bad literal.
        return Err(TargetError::Shape);
    }
    if port == 0 {
        return Err(TargetError::PortZero);
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // A numeric last label is a mistyped IP address, never a real name.
    let numeric_tld = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if host.is_empty() || host.len() > 253 || numeric_tld || !host.split('.').all(valid_label) {
        return Err(TargetError::BadHost);
    }
    Ok(Target::Name(HostPort {
        host: host.to_ascii_lowercase(),
        port,
    }))
}

#[cfg(test)]
mod tests;
