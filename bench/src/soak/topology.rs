//! The soak's mesh on loopback, and what the faults do to it: kill and
//! restart an app, an endpoint's proxy or control on the same ports;
//! SIGHUP a proxy; apply api's Route with other weights.
//!
//! ```text
//!   load (http/1.1, h2, grpc) ─▶ web proxy [outbound] ─▶ mutual TLS ─┬─▶ api-v1-a proxy ─▶ origin
//!                                                                    ├─▶ api-v1-b proxy ─▶ origin
//!                                                                    └─▶ api-v2 proxy   ─▶ origin
//!   load (tcp) ─▶ web proxy [outbound.tcp db] ─▶ mutual TLS ─▶ db proxy (protocol tcp) ─▶ origin
//!   coremesh-control (QUIC; certificates of a short lifetime, renewed all along)
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{log, SoakError};
use crate::compare::proxies::{self, Running, StartError};
use crate::http::build_request;
use crate::load::{self, LoadConfig};
use crate::mesh::{self, q, Control, ControlSpec, Member};

/// The api instances: node name (also the origin's `x-instance`) and its
/// `version` label.
pub const API: [(&str, &str); 3] = [("api-v1-a", "v1"), ("api-v1-b", "v1"), ("api-v2", "v2")];
/// How long control may take to see every proxy connected and current.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the mesh may take to answer from every api instance and db.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(40);
/// What the HTTP load asks for (a 128-byte answer).
pub const LOAD_PATH: &str = "/size/128";

/// The binaries the soak runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub proxy: PathBuf,
    pub control: PathBuf,
    /// coremesh-bench itself, for the origins.
    pub bench: PathBuf,
}

/// api's Route with v1 and v2 at these weights. GETs are retried (three
/// tries, on any endpoint failure), so an endpoint fault must fail none.
pub fn route_yaml(v1: u32, v2: u32) -> String {
    format!(
        r#"kind: Route
name: api
service: api
rules:
  - match: {{ pathPrefix: / }}
    timeout: 5s
    retries: {{ attempts: 3, perTryTimeout: 2s, on: [connect-failure, reset, 5xx, gateway-error] }}
    backends:
      - {{ subset: {{ version: v1 }}, weight: {v1} }}
      - {{ subset: {{ version: v2 }}, weight: {v2} }}
"#
    )
}

/// Every resource of the mesh.
pub fn resources_yaml() -> String {
    format!(
        r#"kind: Service
name: web
protocol: http
---
kind: Service
name: api
protocol: http
---
kind: Service
name: db
protocol: tcp
---
{}---
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
---
kind: AccessPolicy
name: db-access
service: db
default: deny
rules:
  - from: [web]
---
# web's proxy probes every api endpoint each second (2 failed probes: out)
# and ejects one after 5 failures in a row; the retry budget is generous
# so that the retries an endpoint fault needs are never refused.
kind: Resilience
service: api
loadBalancer: round-robin
outlierDetection: {{ consecutiveFailures: 5, baseEjection: 5s, maxEjectedPercent: 50 }}
healthCheck: {{ interval: 1s, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2 }}
retryBudget: {{ ratio: 0.5, minPerSecond: 100 }}
"#,
        route_yaml(90, 10)
    )
}

/// An app (origin) and its proxy: an api instance or db.
pub struct Instance {
    pub node: &'static str,
    pub member: Member,
    pub app: Running,
    pub proxy: Running,
    /// How many times each was started (names the next log file).
    app_starts: u32,
    proxy_starts: u32,
}

/// The running mesh. Dropping it stops every process: the proxies first,
/// then the apps, then control.
pub struct SoakMesh {
    pub control: Control,
    control_starts: u32,
    control_cmd: Vec<String>,
    pub web: Running,
    pub web_outbound: SocketAddr,
    pub web_tcp: SocketAddr,
    pub instances: Vec<Instance>,
    bins: Bins,
    dir: PathBuf,
}

impl Drop for SoakMesh {
    fn drop(&mut self) {
        self.web.stop();
        for i in &mut self.instances {
            i.proxy.stop();
            i.app.stop();
        }
        self.control.running.stop();
    }
}

impl SoakMesh {
    /// The processes to watch: (name, pid).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut v = vec![
            ("control".to_string(), self.control.running.pid()),
            ("web proxy".to_string(), self.web.pid()),
        ];
        for i in &self.instances {
            v.push((format!("{} proxy", i.node), i.proxy.pid()));
            v.push((format!("{} app", i.node), i.app.pid()));
        }
        v
    }

    fn instance_mut(&mut self, node: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.node == node)
            .expect("a node of the mesh")
    }

    /// SIGKILL to `node`'s app.
    pub fn kill_app(&mut self, node: &str) {
        kill9(&mut self.instance_mut(node).app);
    }

    /// Starts `node`'s app again, on the port it had.
    pub fn restart_app(&mut self, node: &str) -> Result<(), SoakError> {
        let bench = self.bins.bench.clone();
        let i = self.instance_mut(node);
        i.app_starts += 1;
        let log_path = i.member.dir.join(format!("app-{}.log", i.app_starts));
        i.app = start_origin(&bench, node, i.app.addr, &log_path)?;
        Ok(())
    }

    /// SIGKILL to `node`'s proxy.
    pub fn kill_proxy(&mut self, node: &str) {
        kill9(&mut self.instance_mut(node).proxy);
    }

    /// Starts `node`'s proxy again with its proxy.toml (the port it had)
    /// and its state directory (certificate and last snapshot).
    pub fn restart_proxy(&mut self, node: &str) -> Result<(), SoakError> {
        let bin = self.bins.proxy.clone();
        let i = self.instance_mut(node);
        i.proxy_starts += 1;
        let log_path = i.member.dir.join(format!("stderr-{}.log", i.proxy_starts));
        let config = i.proxy.config_path.clone();
        i.proxy = start_proxy(&bin, node, config, log_path, "inbound")?;
        Ok(())
    }

    /// SIGKILL to control.
    pub fn kill_control(&mut self) {
        kill9(&mut self.control.running);
    }

    /// Starts control again on its data directory and its addresses.
    pub fn restart_control(&mut self) -> Result<(), SoakError> {
        self.control_starts += 1;
        let log_path = self
            .dir
            .join(format!("control-{}.log", self.control_starts));
        let log_err = |source| SoakError::Start {
            what: "coremesh-control (restart)".into(),
            source: StartError::Log {
                path: log_path.clone(),
                source,
            },
        };
        let log = fs::File::create(&log_path).map_err(log_err)?;
        let mut cmd = Command::new(&self.bins.control);
        cmd.args(&self.control_cmd)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().map_err(log_err)?);
        let mut child = cmd.spawn().map_err(|source| SoakError::Start {
            what: "coremesh-control (restart)".into(),
            source: StartError::Spawn {
                bin: self.bins.control.clone(),
                source,
            },
        })?;
        let rx = mesh::tee_stdout(
            child.stdout.take().expect("piped"),
            log,
            mesh::parse_listening,
        );
        let mut running = Running {
            child,
            addr: self.control.api,
            config_path: PathBuf::new(),
            log_path: log_path.clone(),
        };
        if rx.recv_timeout(Duration::from_secs(15)).is_err() {
            running.stop();
            return Err(SoakError::ControlRestart { log: log_path });
        }
        self.control.running = running;
        Ok(())
    }

    /// SIGHUP to `node`'s proxy (`web` or an instance).
    pub fn sighup(&mut self, node: &str) {
        let pid = if node == "web" {
            self.web.pid()
        } else {
            self.instance_mut(node).proxy.pid()
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    }
}

fn kill9(r: &mut Running) {
    let _ = r.child.kill();
    let _ = r.child.wait();
}

fn write(path: &Path, text: &str) -> Result<(), SoakError> {
    fs::write(path, text).map_err(|source| SoakError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Starts the mesh under `dir`, control issuing certificates of
/// `cert_lifetime`, and waits until control reports it converged and a
/// second of load is answered by every api instance and by db without a
/// failure.
pub fn start(bins: &Bins, dir: &Path, cert_lifetime: Duration) -> Result<SoakMesh, SoakError> {
    let data_dir = dir.join("control-data");
    let lifetime = format!("{}s", cert_lifetime.as_secs().max(1));
    let mut cmd = Command::new(&bins.control);
    cmd.args(["--cert-lifetime", &lifetime]);
    let control = mesh::start_control(ControlSpec {
        cmd,
        bin: &bins.control,
        data_dir: &data_dir,
        run_dir: dir,
        listen: "127.0.0.1:0",
        api: "127.0.0.1:0",
    })?;
    // A restart comes back on the same addresses and data.
    let control_cmd = vec![
        "--cert-lifetime".into(),
        lifetime,
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        control.quic.to_string(),
        "--api".into(),
        control.api.to_string(),
    ];
    let yaml = resources_yaml();
    let yaml_path = dir.join("mesh.yaml");
    write(&yaml_path, &yaml)?;
    let version = control
        .apply(&yaml)
        .map_err(|source| SoakError::Apply {
            path: yaml_path.clone(),
            source: Box::new(source),
        })?
        .version;
    let mut instances = Vec::new();
    let nodes = API
        .iter()
        .map(|(n, v)| (*n, "api", Some(*v)))
        .chain([("db", "db", None)]);
    for (node, service, version) in nodes {
        let m = Member::fresh(service, node, dir.join(node))?;
        control.token(&m)?;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let app = start_origin(&bins.bench, node, any, &m.dir.join("app-0.log"))?;
        // Bound on port 0 first; the file is then rewritten with the port
        // it got, so a restart comes back on it.
        let config_path = m.dir.join("proxy.toml");
        write(
            &config_path,
            &instance_toml(control.quic, &m, version, any, app.addr),
        )?;
        let proxy = start_proxy(
            &bins.proxy,
            node,
            config_path.clone(),
            m.dir.join("stderr-0.log"),
            "inbound",
        )?;
        write(
            &config_path,
            &instance_toml(control.quic, &m, version, proxy.addr, app.addr),
        )?;
        instances.push(Instance {
            node,
            member: m,
            app,
            proxy,
            app_starts: 0,
            proxy_starts: 0,
        });
    }
    let web_m = Member::fresh("web", "web", dir.join("web"))?;
    control.token(&web_m)?;
    let web_config = web_m.dir.join("proxy.toml");
    write(&web_config, &web_toml(control.quic, &web_m))?;
    let web_log = web_m.dir.join("stderr.log");
    let web = start_proxy(&bins.proxy, "web", web_config, web_log.clone(), "outbound")?;
    let web_tcp = bound_tcp(&web_log)?;
    let mesh = SoakMesh {
        control,
        control_starts: 0,
        control_cmd,
        web_outbound: web.addr,
        web,
        web_tcp,
        instances,
        bins: bins.clone(),
        dir: dir.to_path_buf(),
    };
    let all: BTreeSet<&str> = std::iter::once("web")
        .chain(API.iter().map(|(n, _)| *n))
        .chain(["db"])
        .collect();
    let endpoints: BTreeSet<&str> = all.iter().copied().filter(|n| *n != "web").collect();
    let took = mesh::converge(&mesh.control, &all, &endpoints, version, CONVERGE_TIMEOUT)?;
    log(&format!("mesh converged in {:.1} s", took.as_secs_f64()));
    wait_healthy(&mesh)?;
    Ok(mesh)
}

/// The web proxy: one shard, an outbound listener for api (HTTP) and
/// one for db (TCP), on loopback.
fn web_toml(control: SocketAddr, m: &Member) -> String {
    format!(
        "# coremesh-bench soak: web's proxy; the load enters its outbound listeners.\n\
         [proxy]\n\
         service = \"web\"\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         \n\
         [outbound]\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         [[outbound.tcp]]\n\
         service = \"db\"\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         {}",
        m.control_table(control, Some(&["api".to_string(), "db".to_string()]))
    )
}

/// An instance's proxy: one shard, a mutual-TLS inbound listener in front
/// of its origin, whose health it checks every second; api instances are
/// HTTP with a `version` label, db a TCP service.
fn instance_toml(
    control: SocketAddr,
    m: &Member,
    version: Option<&str>,
    inbound: SocketAddr,
    app: SocketAddr,
) -> String {
    let (labels, protocol, health) = match version {
        Some(v) => (
            format!("labels = {{ version = {} }}\n", q(v)),
            "",
            "kind = \"http\"\npath = \"/healthz\"\n",
        ),
        None => (String::new(), "protocol = \"tcp\"\n", "kind = \"tcp\"\n"),
    };
    format!(
        "# coremesh-bench soak: the proxy of {node}, in front of its origin.\n\
         [proxy]\n\
         service = {service}\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         {labels}\
         \n\
         [inbound]\n\
         listen = {inbound}\n\
         app = {app}\n\
         {protocol}\
         \n\
         {control}\
         \n\
         [control.health]\n\
         {health}\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n",
        node = m.node,
        service = q(&m.service),
        inbound = q(&inbound.to_string()),
        app = q(&app.to_string()),
        control = m.control_table(control, None)
    )
}

/// Starts a proxy with `config` (its stderr in `log_path`) and returns it
/// once `listener` accepts connections.
fn start_proxy(
    bin: &Path,
    node: &str,
    config: PathBuf,
    log_path: PathBuf,
    listener: &str,
) -> Result<Running, SoakError> {
    let mut cmd = Command::new(bin);
    cmd.env("NO_COLOR", "1");
    proxies::start_coremesh_with(cmd, bin, config, log_path, listener).map_err(|source| {
        SoakError::Start {
            what: format!("the proxy of {node}"),
            source,
        }
    })
}

/// web's `tcp:db=ADDR` from its `bound` line.
fn bound_tcp(log_path: &Path) -> Result<SocketAddr, SoakError> {
    let text = fs::read_to_string(log_path).map_err(|source| SoakError::ReadLog {
        path: log_path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter(|l| l.contains(" bound "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("tcp:db=").and_then(|a| a.parse().ok()))
        .ok_or_else(|| SoakError::NoTcpListener {
            log: log_path.to_path_buf(),
        })
}

/// Starts `coremesh-bench origin --instance NODE` on `addr`; reads the
/// bound address from its `listening on ADDR` line.
fn start_origin(
    bench: &Path,
    node: &str,
    addr: SocketAddr,
    log_path: &Path,
) -> Result<Running, SoakError> {
    let start_err = |source| SoakError::Start {
        what: format!("the origin of {node}"),
        source,
    };
    let log_err = |source| {
        start_err(StartError::Log {
            path: log_path.to_path_buf(),
            source,
        })
    };
    let log_file = fs::File::create(log_path).map_err(log_err)?;
    let mut cmd = Command::new(bench);
    cmd.args(["origin", "--instance", node, "--listen"])
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file.try_clone().map_err(log_err)?);
    let mut child = cmd.spawn().map_err(|source| {
        start_err(StartError::Spawn {
            bin: bench.to_path_buf(),
            source,
        })
    })?;
    let rx = mesh::tee_stdout(child.stdout.take().expect("piped"), log_file, |line| {
        line.strip_prefix("listening on ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
    });
    let mut running = Running {
        child,
        addr,
        config_path: PathBuf::new(),
        log_path: log_path.to_path_buf(),
    };
    running.addr = rx.recv_timeout(Duration::from_secs(15)).map_err(|_| {
        running.stop();
        SoakError::NoOrigin {
            node: node.to_string(),
            log: log_path.to_path_buf(),
        }
    })?;
    Ok(running)
}

/// HTTP/1.1 GETs of [`LOAD_PATH`] with `Host: host` into `addr`, with a
/// timeline.
pub fn http1_config(
    addr: SocketAddr,
    host: &str,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> LoadConfig {
    LoadConfig {
        url: format!("http://{addr}{LOAD_PATH} (Host: {host})"),
        addr,
        request: build_request(LOAD_PATH, host, &[], 0, false),
        rate,
        duration,
        warmup: Duration::ZERO,
        connections,
        threads: 1,
        new_conn: false,
        drain: Duration::from_secs(6),
        timeline: true,
    }
}

/// Sends a second of load through web (api and db) until one has no
/// failure and answers from every api instance and from db.
fn wait_healthy(mesh: &SoakMesh) -> Result<(), SoakError> {
    let t = Instant::now();
    let api = http1_config(mesh.web_outbound, "api", 60.0, Duration::from_secs(1), 8);
    let db = http1_config(mesh.web_tcp, "db", 20.0, Duration::from_secs(1), 4);
    let mut last = String::new();
    while t.elapsed() < HEALTHY_TIMEOUT {
        let (a, d) = std::thread::scope(|s| {
            let d = s.spawn(|| load::run_with_timeline(&db));
            let a = load::run_with_timeline(&api);
            (a, d.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        });
        match (a, d) {
            (Ok((ra, ta)), Ok((rd, td))) => {
                let mut answered: BTreeSet<String> = BTreeSet::new();
                for o in ta.iter().chain(&td) {
                    if let Some(i) = &o.instance {
                        answered.insert(String::from_utf8_lossy(i.as_bytes()).into_owned());
                    }
                }
                let failed = ra.errors.total() + rd.errors.total();
                let all = API.iter().map(|(n, _)| *n).chain(["db"]);
                if failed == 0 && all.clone().all(|n| answered.contains(n)) {
                    log(&format!(
                        "healthy after {:.1} s: answers from {answered:?}",
                        t.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                last = format!(
                    "answers from {answered:?}; api failures: {}; db failures: {}",
                    ra.errors.describe(),
                    rd.errors.describe()
                );
            }
            (Err(e), _) | (_, Err(e)) => last = format!("load: {e}"),
        }
    }
    Err(SoakError::NotHealthy {
        timeout: HEALTHY_TIMEOUT,
        last,
    })
}
