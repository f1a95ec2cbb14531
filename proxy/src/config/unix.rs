//! Unix stream sockets in `proxy.toml`: `[inbound] app = "unix:/PATH"` (the
//! app listens on a socket file) and `[outbound] listen = "unix:/PATH"` (the
//! app calls out through one), with the listening file's `listen_mode`,
//! `listen_owner` and `listen_group`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// The prefix that makes an address a Unix socket path.
pub const UNIX_PREFIX: &str = "unix:";

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes,
/// with the terminating NUL).
const MAX_PATH: usize = 107;

/// How the request path knows a Unix-socket app. Upstream pools, tries and
/// the access log key an upstream by socket address (a `Copy` key, cheap to
/// hash on every request); port 0 is never an endpoint (every address to
/// connect to is checked for it, and passthrough refuses it), so this one
/// stands for the app's socket file and nothing else. Only the connect
/// ([`crate::forward`]'s `connect_upstream`) and the access log look at it.
pub const UNIX_APP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// `[inbound] app`: where the local app listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAddr {
    /// A TCP address (`"127.0.0.1:8080"`).
    Tcp(SocketAddr),
    /// A Unix stream socket (`"unix:/run/api/app.sock"`), absolute.
    Unix(PathBuf),
}

impl AppAddr {
    /// The key the request path uses for the app (see [`UNIX_APP`]).
    pub fn key(&self) -> SocketAddr {
        match self {
            AppAddr::Tcp(a) => *a,
            AppAddr::Unix(_) => UNIX_APP,
        }
    }

    /// The TCP address, if the app has one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            AppAddr::Tcp(a) => Some(*a),
            AppAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for AppAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppAddr::Tcp(a) => write!(f, "{a}"),
            AppAddr::Unix(p) => write!(f, "{UNIX_PREFIX}{}", p.display()),
        }
    }
}

/// `[outbound] listen`: where the local app sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket file.
    Unix(UnixListen),
}

impl ListenAddr {
    /// The TCP address, if the listener has one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(u) => write!(f, "{UNIX_PREFIX}{}", u.path.display()),
        }
    }
}

/// A listening Unix socket file and what is applied to it once bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    /// Absolute path of the socket file.
    pub path: PathBuf,
    /// Permission bits (`listen_mode`); `None`: as created (umask).
    pub mode: Option<u32>,
    /// Owner (`listen_owner`), a user id; `None`: this process's user.
    pub owner: Option<u32>,
    /// Group (`listen_group`), a group id; `None`: this process's group.
    pub group: Option<u32>,
}

/// `"unix:/PATH"` → `Some(Ok(path))`; another address → `None`. The path
/// must be absolute (the proxy's working directory is nobody's business)
/// and fit a socket address.
pub(super) fn parse_path(text: &str) -> Option<Result<PathBuf, String>> {
    let path = text.strip_prefix(UNIX_PREFIX)?;
    Some(if path.is_empty() {
        Err(format!(
            "\"{text}\" names no path: write \"unix:/run/app.sock\""
        ))
    } else if !path.starts_with('/') {
        Err(format!("\"{text}\" is not an absolute path"))
    } else if path.len() > MAX_PATH {
        Err(format!(
            "\"{text}\" is {} bytes long; a Unix socket path holds at most {MAX_PATH}",
            path.len()
        ))
    } else if path.contains('\0') {
        Err(format!("\"{}\" contains a NUL byte", text.escape_debug()))
    } else {
        Ok(PathBuf::from(path))
    })
}

/// `listen_mode`: permission bits written in octal as a string
/// (`"0660"`, `"660"`); at most `"0777"`.
pub(super) fn parse_mode(v: &toml::Value) -> Result<u32, String> {
    let toml::Value::String(s) = v else {
        return Err(format!(
            "{v} is not a string; write the mode in octal, as a string: \"0660\""
        ));
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!(
            "\"{}\" is not an octal mode such as \"0660\"",
            s.escape_debug()
        ));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if mode > 0o777 {
        return Err(format!(
            "\"{s}\" sets setuid, setgid or sticky bits, which mean nothing on a socket; at most \"0777\""
        ));
    }
    Ok(mode)
}

/// Which id database a name is looked up in.
#[derive(Clone, Copy)]
pub(super) enum Ids {
    User,
    Group,
}

/// `listen_owner` / `listen_group`: a name (looked up now, so `--check`
/// catches a typo) or a numeric id (an integer, or a string of digits).
pub(super) fn parse_id(v: &toml::Value, ids: Ids) -> Result<u32, String> {
    let what = match ids {
        Ids::User => "user",
        Ids::Group => "group",
    };
    let name = match v {
        toml::Value::Integer(n) => {
            return u32::try_from(*n).map_err(|_| format!("{n} is not a {what} id"))
        }
        toml::Value::String(s) => s,
        other => return Err(format!("{other} is not a {what} name or id")),
    };
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return name
            .parse()
            .map_err(|_| format!("\"{name}\" is not a {what} id"));
    }
    let found = match ids {
        Ids::User => nix::unistd::User::from_name(name).map(|u| u.map(|u| u.uid.as_raw())),
        Ids::Group => nix::unistd::Group::from_name(name).map(|g| g.map(|g| g.gid.as_raw())),
    };
    match found {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(format!(
            "no {what} is called \"{}\" on this host",
            name.escape_debug()
        )),
        Err(e) => Err(format!(
            "cannot look up {what} \"{}\": {e}",
            name.escape_debug()
        )),
    }
}
