//! `meshctl bootstrap`: a ready `proxy.toml` for a new host and its
//! one-time join token, written side by side into one directory.
//!
//! The token goes into its own file (mode 0600), never onto the terminal
//! or into the config: the config can be shown, diffed and kept in a
//! repository, the token is a secret that is spent on the first join. Both
//! files are created new, so a second bootstrap into the same directory
//! cannot silently replace a config someone edited.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The config file's name in the output directory.
pub const CONFIG_FILE: &str = "proxy.toml";
/// The token file's name in the output directory.
pub const TOKEN_FILE: &str = "join.token";

/// What goes into the proxy.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub service: String,
    pub node: String,
    /// `HOST:PORT` of control's QUIC listener.
    pub control_address: String,
    /// Absolute path of the token file, as the proxy will read it.
    pub token_file: PathBuf,
    pub state_dir: PathBuf,
    pub admin: String,
    /// `(listen, app)` of the inbound section, when asked for.
    pub inbound: Option<(String, String)>,
    /// The outbound listener, unless none is wanted.
    pub outbound: Option<String>,
}

/// Why bootstrap refused; each says which flag or file.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "{flag} {value:?}: expected HOST:PORT (a host name, an IPv4 address or [IPv6], and a port)"
    )]
    BadAddress { flag: &'static str, value: String },
    #[error("{0} already exists; remove it or choose another --out (bootstrap never overwrites)")]
    Exists(PathBuf),
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Checks `value` is `HOST:PORT` with a non-empty host and a port number.
pub fn check_address(flag: &'static str, value: &str) -> Result<(), BootstrapError> {
    let bad = || BootstrapError::BadAddress {
        flag,
        value: value.to_string(),
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `https://control.example:7080` -> `control.example:7443`: control's
/// default QUIC port on the API's host, the usual layout.
pub fn default_control_address(api_url: &str) -> Option<String> {
    let rest = api_url
        .strip_prefix("https://")
        .or_else(|| api_url.strip_prefix("http://"))?;
    let authority = rest.trim_end_matches('/');
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| format!("{host}:7443"))
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The proxy.toml text, with a comment on what to do with it.
pub fn render(plan: &Plan) -> String {
    let path = |p: &Path| q(&p.display().to_string());
    let mut t = format!(
        "# coremesh-proxy for service {service} on node {node}, from `meshctl bootstrap`.\n\
         # Start it with: coremesh-proxy --config proxy.toml\n\
         # The join token in {token} is spent on the first start; keep it secret.\n\n",
        service = plan.service,
        node = plan.node,
        token = plan.token_file.display(),
    );
    t += &format!(
        "[proxy]\nservice = {}\nadmin = {}\n",
        q(&plan.service),
        q(&plan.admin)
    );
    if let Some((listen, app)) = &plan.inbound {
        t += &format!("\n[inbound]\nlisten = {}\napp = {}\n", q(listen), q(app));
    }
    if let Some(listen) = &plan.outbound {
        t += &format!("\n[outbound]\nlisten = {}\n", q(listen));
    }
    t += &format!(
        "\n[control]\naddress = {}\nnode = {}\ntoken_file = {}\nstate_dir = {}\n",
        q(&plan.control_address),
        q(&plan.node),
        path(&plan.token_file),
        path(&plan.state_dir)
    );
    t
}

/// The files [`write`] will create in `out`; errors if either exists, so
/// that no token is created for a bootstrap that cannot be written.
pub fn targets(out: &Path) -> Result<(PathBuf, PathBuf), BootstrapError> {
    let config = out.join(CONFIG_FILE);
    let token = out.join(TOKEN_FILE);
    for p in [&config, &token] {
        if p.exists() {
            return Err(BootstrapError::Exists(p.clone()));
        }
    }
    Ok((config, token))
}

/// Creates `out` (0700 when new) and returns its absolute path.
pub fn prepare_dir(out: &Path) -> Result<PathBuf, BootstrapError> {
    let io = |what| {
        move |source| BootstrapError::Io {
            path: out.to_path_buf(),
            what,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(io("create directory"))?;
    std::fs::canonicalize(out).map_err(io("resolve"))
}

/// Writes a new file with mode 0600 (never replacing one).
pub fn write_new(path: &Path, contents: &str) -> Result<(), BootstrapError> {
    let io = |what| {
        move |source| BootstrapError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BootstrapError::Exists(path.to_path_buf())
            } else {
                io("create")(e)
            }
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("write"))
}

#[cfg(test)]
mod tests;
