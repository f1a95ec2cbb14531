//! coremesh-testnet: hosts for multi-host tests and benchmarks, built as
//! Linux network namespaces that the caller creates and that are removed
//! again when the [`Net`] is dropped (also when a test panics).
//!
//! ```text
//!   ns <prefix>-hub:  br0 ──┬── h0 ═══ eth0  ns <prefix>-control  10.77.0.2/24
//!                           ├── h1 ═══ eth0  ns <prefix>-web      10.77.0.3/24
//!                           └── h2 ═══ eth0  ns <prefix>-api      10.77.0.4/24
//! ```
//!
//! Each host is a namespace with its own loopback and one veth link to a
//! bridge in a hub namespace; nothing is created in the caller's own
//! namespace, so the addresses exist only inside the [`Net`] and two nets
//! (parallel tests) never see each other. [`Host::link_down`] takes the hub
//! side of a host's link down: the host is cut off (a partition) while its
//! processes keep running.
//!
//! Processes run inside a host through `ip netns exec` ([`Host::command`]);
//! the child's pid is the program's own, so signals reach it directly.
//! Threads of the caller can enter a host with [`Host::enter`]: sockets
//! created there (listeners, connections) belong to that host for life.
//!
//! Namespaces are named `cmt<pid>n<seq>-<host>`. A test process killed
//! before its `Drop` ran leaves its namespaces behind; the next
//! [`Net::new`] removes those of processes that no longer exist.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why the machine cannot build test hosts (tests that need them skip, or
/// fail in CI, with this text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network namespaces are not available: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// A step of building, changing or entering the test network that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the namespace file {path}")]
    OpenNamespace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setns into {netns}")]
    Setns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a test network holds at most {max} hosts, {asked} were asked for")]
    TooManyHosts { asked: usize, max: usize },
    #[error("host name {0:?} is empty, repeated or not [a-z0-9-]")]
    BadName(String),
}

/// Whether this process can build test hosts: root, the `ip` tool, and a
/// namespace that can really be created. Probed once per process (tests
/// ask from parallel threads).
pub fn available() -> Result<(), Unavailable> {
    static PROBED: std::sync::OnceLock<Result<(), Unavailable>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn probe() -> Result<(), Unavailable> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Unavailable("not running as root".into()));
    }
    let probe = format!("cmt{}probe", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| Unavailable(e.to_string()))?;
    ip(&["netns", "del", &probe]).map_err(|e| Unavailable(e.to_string()))?;
    Ok(())
}

/// The first three octets of every host address.
const SUBNET: [u8; 3] = [10, 77, 0];
/// Hosts get .2, .3, ...; .1 is left free (a gateway in the real world).
const FIRST_HOST: u8 = 2;
const MAX_HOSTS: usize = 200;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A test network: one namespace per host, joined by a bridge.
#[derive(Debug)]
pub struct Net {
    hub: String,
    hosts: Vec<Host>,
}

/// One host of a [`Net`].
#[derive(Debug)]
pub struct Host {
    name: String,
    netns: String,
    hub: String,
    hub_link: String,
    addr: Ipv4Addr,
}

impl Net {
    /// Builds hosts named `hosts` (in that order: host `i` has the address
    /// 10.77.0.(i+2)). Everything already created is removed again if a
    /// step fails.
    pub fn new(hosts: &[&str]) -> Result<Net, NetError> {
        if hosts.len() > MAX_HOSTS {
            return Err(NetError::TooManyHosts {
                asked: hosts.len(),
                max: MAX_HOSTS,
            });
        }
        for (i, h) in hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && *h != "hub"
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !hosts[..i].contains(h);
            if !ok {
                return Err(NetError::BadName((*h).to_string()));
            }
        }
        remove_stale();
        let prefix = format!(
            "cmt{}n{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{prefix}-hub");
        let mut net = Net {
            hub: hub.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let [a, b, c] = SUBNET;
            let host = Host {
                name: (*name).to_string(),
                netns: format!("{prefix}-{name}"),
                hub: hub.clone(),
                hub_link: format!("h{i}"),
                addr: Ipv4Addr::new(a, b, c, FIRST_HOST + i as u8),
            };
            ip(&["netns", "add", &host.netns])?;
            net.hosts.push(host);
            net.hosts[i].wire()?;
        }
        Ok(net)
    }

    /// The host called `name`.
    ///
    /// # Panics
    /// When the net has no such host: a mistake in the test.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("the test network has no host {name:?}"))
    }

    /// Every host, in the order given to [`Net::new`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Processes still running inside keep the namespace alive until
            // they exit; the name is gone either way.
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}

impl Host {
    fn wire(&self) -> Result<(), NetError> {
        let (hub, ns, link) = (&self.hub, &self.netns, &self.hub_link);
        ip(&[
            "-n", hub, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", hub, "link", "set", link, "master", "br0"])?;
        ip(&["-n", hub, "link", "set", link, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let cidr = format!("{}/24", self.addr);
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])
    }

    /// The host's name, as given to [`Net::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address, reachable from every other host of its net.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(self.addr)
    }

    /// The namespace's name (for `ip netns exec`, `nsenter`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` inside this host. `ip netns exec`
    /// replaces itself with the program, so the child's pid is the
    /// program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// Runs `f` on a new thread that has entered this host's network
    /// namespace, and returns its result. Sockets `f` creates belong to the
    /// host for their whole life, whichever thread uses them later.
    ///
    /// # Panics
    /// When the namespace cannot be entered (the net was dropped), or when
    /// `f` panics.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter_netns(&self.netns, f)
    }

    /// Takes the host's link down: packets to and from it are dropped
    /// (a partition). Its processes keep running.
    pub fn link_down(&self) -> Result<(), NetError> {
        ip(&["-n", &self.hub, "link", "set", &self.hub_link, "down"])
    }

    /// Brings the link back.
    pub fn link_up(&self) -> Result<(), NetError> {
        ip(&["-n", &self.hub, "link", "set", &self.hub_link, "up"])
    }
}

/// [`Host::enter`] by namespace name, for code that keeps only the name.
///
/// # Panics
/// When the namespace cannot be entered, or when `f` panics.
pub fn enter_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Err(e) = setns(netns) {
                panic!("{e}");
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn setns(netns: &str) -> Result<(), NetError> {
    let path = format!("/run/netns/{netns}");
    let f = File::open(&path).map_err(|source| NetError::OpenNamespace { path, source })?;
    // SAFETY: `f` is an open namespace file for the duration of the call;
    // setns(2) changes only the calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetError::Setns {
            netns: netns.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetError::Command {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Removes the namespaces of test processes that died before dropping
/// their [`Net`].
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

/// The pid in a name `cmt<pid>n<seq>-<host>` or `cmt<pid>probe`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("cmt")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    let tail = &rest[end..];
    if !(tail.starts_with('n') || tail == "probe") {
        return None;
    }
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests;
