//! `fleet --replicas N --store etcd://...`: N coremesh-control replicas
//! started by the bench on one etcd store, and, for `--store etcd://local`,
//! a three-member etcd cluster started from Debian's `/usr/bin/etcd` on
//! loopback for the run.
//!
//! Replica 0 starts first on a fresh data directory and makes the CA; the
//! others are started with `--ca-cert`/`--ca-key` pointing at replica 0's
//! `ca.pem` and `ca.key` (every replica must issue from the same CA, as in
//! tests/tests/etcd.rs). Each run uses its own `--etcd-prefix`, so runs on
//! one etcd never see each other's config. Everything lives in one work
//! directory under the system temp dir, removed when the run ends (the
//! replicas are stopped and the etcd members killed first).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::mesh::{self, Control, ControlSpec, MeshError};

/// Where Debian's etcd-server package puts etcd.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// `--store` value that asks for a local cluster started by the bench.
pub const LOCAL: &str = "etcd://local";
/// Members of the local cluster.
const LOCAL_MEMBERS: usize = 3;
const ETCD_START: Duration = Duration::from_secs(30);

/// Why the replicas (or the local etcd) could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ReplicasError {
    #[error("--store {store}: not etcd://HOST:PORT,... or {LOCAL}")]
    Store { store: String },
    #[error("--replicas must be at least 1")]
    Zero,
    #[error("cannot create the work directory {}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ETCD_BIN} is missing (Debian: apt-get install etcd-server)")]
    NoEtcd,
    #[error("cannot find free loopback ports for etcd")]
    Ports(#[source] std::io::Error),
    #[error("cannot start etcd member {name} ({ETCD_BIN}); log: {}", log.display())]
    EtcdSpawn {
        name: String,
        log: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd members not healthy within {ETCD_START:?}; logs in {}", dir.display())]
    EtcdUnhealthy { dir: PathBuf },
    #[error("control replica {index}")]
    Replica {
        index: usize,
        #[source]
        source: MeshError,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ReplicasConfig {
    pub count: usize,
    /// `etcd://h1:2379,...`, or [`LOCAL`].
    pub store: String,
    pub control_bin: PathBuf,
    /// Keep the work directory (the replicas' and etcd members' logs and
    /// data) instead of removing it.
    pub keep: bool,
}

/// The running replicas (and local etcd); all stopped, and the work
/// directory removed, on drop.
pub struct Replicas {
    /// Stopped before the etcd members are killed.
    pub controls: Vec<Control>,
    pub data_dirs: Vec<PathBuf>,
    /// The store URL the replicas were given.
    pub store: String,
    pub prefix: String,
    etcd: Option<LocalEtcd>,
    dir: PathBuf,
    keep: bool,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.controls {
            c.running.stop();
        }
        if let Some(e) = &mut self.etcd {
            e.kill();
        }
        if self.keep {
            eprintln!("[fleet] logs and data kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts the local etcd if asked, then the replicas, one after another
/// (replica 0 first: its CA is the others').
pub fn start(cfg: &ReplicasConfig) -> Result<Replicas, ReplicasError> {
    if cfg.count == 0 {
        return Err(ReplicasError::Zero);
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run = format!("{}-{stamp}", std::process::id());
    let dir = std::env::temp_dir().join(format!("coremesh-bench-fleet-{run}"));
    std::fs::create_dir_all(&dir).map_err(|source| ReplicasError::WorkDir {
        path: dir.clone(),
        source,
    })?;
    let mut set = Replicas {
        controls: Vec::with_capacity(cfg.count),
        data_dirs: Vec::with_capacity(cfg.count),
        store: cfg.store.clone(),
        prefix: format!("/coremesh-bench-fleet-{run}/"),
        etcd: None,
        dir: dir.clone(),
        keep: cfg.keep,
    };
    if cfg.store == LOCAL {
        let etcd = LocalEtcd::start(&dir.join("etcd"), LOCAL_MEMBERS, &run)?;
        set.store = etcd.url();
        eprintln!(
            "[fleet] local etcd: {} members at {}",
            LOCAL_MEMBERS, set.store
        );
        set.etcd = Some(etcd);
    } else if cfg.store.strip_prefix("etcd://").is_none_or(str::is_empty) {
        return Err(ReplicasError::Store {
            store: cfg.store.clone(),
        });
    }
    for index in 0..cfg.count {
        let data_dir = dir.join(format!("replica-{index}"));
        let mut cmd = Command::new(&cfg.control_bin);
        cmd.args(["--store", &set.store, "--etcd-prefix", &set.prefix]);
        if let Some(first) = set.data_dirs.first() {
            cmd.arg("--ca-cert")
                .arg(first.join("ca.pem"))
                .arg("--ca-key")
                .arg(first.join("ca.key"));
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let control = mesh::start_control(ControlSpec {
            cmd,
            bin: &cfg.control_bin,
            data_dir: &data_dir,
            run_dir: &dir.join(format!("replica-{index}-run")),
            listen: "127.0.0.1:0",
            api: "127.0.0.1:0",
        })
        .map_err(|source| ReplicasError::Replica { index, source })?;
        eprintln!(
            "[fleet] replica {index}: pid {} quic {} api {}",
            control.running.pid(),
            control.quic,
            control.api
        );
        set.controls.push(control);
        set.data_dirs.push(data_dir);
    }
    Ok(set)
}

/// A small etcd cluster on loopback (a compact counterpart of
/// tests/src/etcd.rs, which the bench cannot depend on): explicit free
/// ports, one data directory and log per member (under the run's work
/// directory), health read from each member's plain-HTTP metrics port.
struct LocalEtcd {
    clients: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
    children: Vec<Child>,
}

impl LocalEtcd {
    fn start(dir: &Path, n: usize, run: &str) -> Result<LocalEtcd, ReplicasError> {
        if !Path::new(ETCD_BIN).is_file() {
            return Err(ReplicasError::NoEtcd);
        }
        std::fs::create_dir_all(dir).map_err(|source| ReplicasError::WorkDir {
            path: dir.to_path_buf(),
            source,
        })?;
        // etcd takes explicit ports: bind all at once (distinct), release.
        let ports = (0..3 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ReplicasError::Ports)?;
        let peer = |i: usize| ports[3 * i + 1];
        let initial = (0..n)
            .map(|i| format!("m{i}=http://{}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = LocalEtcd {
            clients: (0..n).map(|i| ports[3 * i]).collect(),
            metrics: (0..n).map(|i| ports[3 * i + 2]).collect(),
            children: Vec::with_capacity(n),
        };
        for i in 0..n {
            let name = format!("m{i}");
            let log = dir.join(format!("{name}.log"));
            let spawn_err = |source| ReplicasError::EtcdSpawn {
                name: name.clone(),
                log: log.clone(),
                source,
            };
            let out = std::fs::File::create(&log).map_err(spawn_err)?;
            let client = format!("http://{}", etcd.clients[i]);
            let peer_url = format!("http://{}", peer(i));
            let child = Command::new(ETCD_BIN)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args([
                    "--listen-metrics-urls",
                    &format!("http://{}", etcd.metrics[i]),
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("coremesh-bench-{run}")])
                .stdin(Stdio::null())
                .stdout(out.try_clone().map_err(spawn_err)?)
                .stderr(out)
                .spawn()
                .map_err(spawn_err)?;
            etcd.children.push(child);
        }
        let deadline = Instant::now() + ETCD_START;
        while !etcd.metrics.iter().all(|m| healthy(*m)) {
            if Instant::now() >= deadline {
                return Err(ReplicasError::EtcdUnhealthy {
                    dir: dir.to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(etcd)
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self.clients.iter().map(|c| c.to_string()).collect();
        format!("etcd://{}", hosts.join(","))
    }

    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the member with metrics port `addr` answers `GET /health` with
/// `"health":"true"` (it has a leader and serves).
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let req = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
        && answer.contains("\"health\":\"true\"")
}
