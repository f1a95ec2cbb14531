//! A real etcd cluster on loopback for the tests of control's etcd store:
//! `/usr/bin/etcd` (Debian's `etcd-server`, installed by
//! scripts/install-deps.sh), three members by default, each with its own
//! data directory in a temp dir and its own client and peer ports.
//!
//! etcd takes explicit ports, not port 0: [`EtcdCluster::start`] binds a
//! port-0 socket per port to learn free ones, releases them all, and
//! passes them on. Health is read from each member's plain-HTTP metrics
//! port (`/health`), so it works the same when clients must speak TLS
//! ([`EtcdCluster::start_tls`]: a server certificate, and client
//! certificates required). Members can be killed with SIGKILL and started again on
//! their data directory ([`EtcdCluster::kill9`], [`EtcdCluster::restart`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::util::TempDir;

/// Where Debian's etcd-server puts etcd.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// How long a new cluster may take to elect a leader and answer.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether etcd is installed.
pub fn have_etcd() -> bool {
    Path::new(ETCD_BIN).is_file()
}

/// Set (to anything) to skip the etcd tests: scripts/test.sh's second
/// e2e pass (monoio's epoll driver) sets it, since these tests are about
/// control, which does not run on monoio, and they ran in the first pass.
pub const SKIP_ETCD_ENV: &str = "COREMESH_E2E_SKIP_ETCD";

/// Whether an etcd test should skip, printing why: asked to
/// ([`SKIP_ETCD_ENV`]), or etcd is missing outside CI. Under CI
/// (`CI=true`) a missing etcd fails the test instead:
/// scripts/install-deps.sh installs it there.
pub fn skip_etcd_test() -> bool {
    if std::env::var_os(SKIP_ETCD_ENV).is_some() {
        eprintln!("skipped: {SKIP_ETCD_ENV} is set (the etcd tests ran in another pass)");
        return true;
    }
    if have_etcd() {
        return false;
    }
    assert!(
        !crate::util::under_ci(),
        "{ETCD_BIN} is missing under CI: scripts/install-deps.sh installs Debian's etcd-server"
    );
    eprintln!(
        "skipped: {ETCD_BIN} is missing (scripts/install-deps.sh installs Debian's etcd-server)"
    );
    true
}

struct EtcdMember {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    /// Plain HTTP: `/health` and `/metrics`.
    metrics: SocketAddr,
    child: Option<Child>,
}

/// The files of a cluster whose clients speak TLS.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA (PEM) that signed the server's and the clients' certificates.
    pub ca: PathBuf,
    /// A client certificate and key the cluster accepts.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A running etcd cluster; every member is killed on drop.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    tls: Option<EtcdTls>,
}

/// `n` distinct free loopback ports: all bound at once (so no two are the
/// same), then released.
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr"))
        .collect()
}

impl EtcdCluster {
    /// Starts `n` members and waits until each says it is healthy (it has
    /// a leader and answers). Panics with the members' logs if not.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None)
    }

    /// Like [`EtcdCluster::start`], with clients on TLS: a server
    /// certificate for 127.0.0.1 from `pki`, and a client certificate from
    /// the same CA required (`--client-cert-auth`). Peers speak plain HTTP.
    pub fn start_tls(n: usize, pki: &crate::pki::Pki) -> EtcdCluster {
        EtcdCluster::start_with(n, Some(pki))
    }

    fn start_with(n: usize, pki: Option<&crate::pki::Pki>) -> EtcdCluster {
        let dir = TempDir::new("etcd");
        let tls = pki.map(|pki| {
            let ip = std::net::IpAddr::from([127, 0, 0, 1]);
            let (server_cert, server_key) = pki.leaf_for_ip(ip);
            let (client_cert, client_key) = pki.leaf_for_ip(ip);
            EtcdTls {
                ca: dir.write("ca.pem", &pki.ca_pem),
                client_cert: dir.write("client.pem", client_cert),
                client_key: dir.write("client.key", client_key),
                server_cert: dir.write("server.pem", server_cert),
                server_key: dir.write("server.key", server_key),
            }
        });
        let ports = free_ports(3 * n);
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client: ports[3 * i],
                peer: ports[3 * i + 1],
                metrics: ports[3 * i + 2],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("coremesh-e2e-{}-{}", std::process::id(), ports[0].port());
        let mut cluster = EtcdCluster {
            dir,
            members,
            initial_cluster,
            token,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>(), ETCD_START_TIMEOUT);
        cluster
    }

    /// The TLS files, for a cluster from [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log file");
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{}", m.client);
        let peer_url = format!("http://{}", m.peer);
        let mut cmd = Command::new(ETCD_BIN);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client_url])
            .args(["--listen-metrics-urls", &format!("http://{}", m.metrics)])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCD_BIN}: {e}"));
        self.members[i].child = Some(child);
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,...`, as control's `--store`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|m| m.client.to_string()).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Member `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// Whether member `i` answers `GET /health` (on its metrics port) with
    /// `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        let Ok(mut c) = Client::try_connect(self.members[i].metrics) else {
            return false;
        };
        c.set_read_timeout(Duration::from_secs(3));
        let req = crate::client::Request::get("/health").host("127.0.0.1");
        if c.try_send(&req.to_bytes()).is_err() {
            return false;
        }
        match c.try_read_response() {
            Ok(r) => r.status == 200 && r.body_str().contains("\"health\":\"true\""),
            Err(_) => false,
        }
    }

    /// Waits until every member in `which` is healthy; panics with the
    /// logs after `timeout`.
    pub fn wait_healthy(&self, which: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !which.iter().all(|&i| self.healthy(i)) {
            if Instant::now() >= deadline {
                panic!(
                    "etcd members {which:?} not healthy within {timeout:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL member `i`, and reap it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory (killing it first if
    /// it runs). Does not wait: see [`EtcdCluster::wait_healthy`].
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.members.len() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "---- etcd {} (last 15 lines):\n{}\n",
                self.members[i].name,
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
