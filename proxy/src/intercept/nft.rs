//! The nftables ruleset of one proxy, and installing or removing it with
//! the `nft` program (`nft -f -`: one atomic transaction per call).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::config::Config;

/// The table the ruleset lives in. Nothing else of the host's firewall is
/// touched: applying replaces this table, removing deletes it.
pub const TABLE: &str = "inet coremesh";

/// Why the ruleset could not be rendered, installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("{file}: no [intercept] section: nothing to redirect (add [intercept], see --help)")]
    NotConfigured { file: String },
    #[error("cannot run `nft -f -` to {what} table {TABLE}: {source} (is the nftables package installed, and nft on PATH?)")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`nft -f -` failed to {what} table {TABLE} ({status}): {stderr}")]
    Nft {
        what: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// `meta nfproto` for the family of a listener: the redirect rewrites the
/// destination to an address of the same family (loopback for locally
/// generated traffic, the incoming interface's address otherwise), which
/// the listener must accept on.
fn family(listen: SocketAddr) -> &'static str {
    if listen.is_ipv6() {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// `{ 1, 2 }` (an anonymous nft set).
fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The ruleset for `cfg`'s `[intercept]`, as `nft -f` reads it. The first
/// two lines make applying it replace an earlier version in the same
/// transaction (creating the table first, so the delete never fails).
pub fn ruleset(cfg: &Config) -> Result<String, InterceptError> {
    let Some(i) = &cfg.intercept else {
        return Err(InterceptError::NotConfigured {
            file: cfg.source.display().to_string(),
        });
    };
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# coremesh-proxy --intercept, from {}\ntable {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{",
        cfg.source.display()
    );
    // A Unix outbound listener with outbound interception is refused when
    // the file is read (config/intercept.rs).
    let outbound_tcp = cfg.outbound.as_ref().and_then(|o| o.listen.tcp());
    if let (true, Some(listen)) = (i.outbound, outbound_tcp) {
        let _ = writeln!(
            r,
            "\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;"
        );
        // The proxy's own connections (to peers, to passed-through
        // destinations, to its app) carry the mark.
        let _ = writeln!(r, "\t\tmeta mark {:#010x} return", i.mark);
        if !i.exclude_uids.is_empty() {
            let _ = writeln!(r, "\t\tmeta skuid {} return", set(&i.exclude_uids));
        }
        // Connections to this host's own addresses stay local.
        let _ = writeln!(r, "\t\toifname \"lo\" return");
        if !i.exclude_outbound_ports.is_empty() {
            let _ = writeln!(r, "\t\ttcp dport {} return", set(&i.exclude_outbound_ports));
        }
        let _ = writeln!(
            r,
            "\t\tmeta nfproto {} meta l4proto tcp redirect to :{}\n\t}}",
            family(listen),
            listen.port()
        );
    }
    if let (false, Some(inb)) = (i.inbound_ports.is_empty(), &cfg.inbound) {
        let _ = writeln!(
            r,
            "\tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;"
        );
        let _ = writeln!(
            r,
            "\t\tmeta nfproto {} tcp dport {} redirect to :{}\n\t}}",
            family(inb.listen),
            set(&i.inbound_ports),
            inb.listen.port()
        );
    }
    r.push_str("}\n");
    Ok(r)
}

/// Installs `rules` (from [`ruleset`]) in one transaction.
pub fn apply(rules: &str) -> Result<(), InterceptError> {
    nft("apply", rules)
}

/// Deletes the table; without one, nothing happens.
pub fn remove() -> Result<(), InterceptError> {
    nft("remove", &format!("table {TABLE}\ndelete table {TABLE}\n"))
}

fn nft(what: &'static str, input: &str) -> Result<(), InterceptError> {
    let spawn = |source| InterceptError::Spawn { what, source };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        return Ok(());
    }
    Err(InterceptError::Nft {
        what,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
