//! The failover mesh of one phase, started in the test hosts: control,
//! web's proxy, and per api instance an origin and its proxy; the faults
//! it can suffer.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coremesh_testnet::{Host, Net};

use super::config::{self, Failover, INSTANCES};
use super::{log, FailoverError, Fault};
use crate::compare::proxies::{self, Running, StartError};
use crate::http::build_request;
use crate::load::{self, LoadConfig};
use crate::mesh::{self, Control, ControlSpec, Member};

/// How long control may take to see every proxy connected and current.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the mesh may take to answer from every instance.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(40);
/// The web proxy's log level: request-path debug lines name every try
/// that failed, with its endpoint.
pub const WEB_RUST_LOG: &str = "info,coremesh_proxy::forward=debug";
/// What the load asks for (a 128-byte answer).
pub const LOAD_PATH: &str = "/size/128";

/// The binaries a phase runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub proxy: PathBuf,
    pub control: PathBuf,
    /// coremesh-bench itself, for the origins.
    pub bench: PathBuf,
}

/// One api instance, running.
pub struct Instance {
    pub name: &'static str,
    pub app: Running,
    pub proxy: Running,
}

/// The mesh of one phase. Dropping it stops every process: the proxies
/// first (SIGTERM: the web proxy writes out its access log), then the
/// apps, then control.
pub struct PhaseMesh {
    pub control: Control,
    pub web: Running,
    pub web_access_log: PathBuf,
    pub instances: Vec<Instance>,
}

impl Drop for PhaseMesh {
    fn drop(&mut self) {
        self.web.stop();
        for i in &mut self.instances {
            i.proxy.stop();
            i.app.stop();
        }
        self.control.running.stop();
    }
}

impl PhaseMesh {
    pub fn instance(&self, name: &str) -> &Instance {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .expect("an instance of INSTANCES")
    }

    fn instance_mut(&mut self, name: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.name == name)
            .expect("an instance of INSTANCES")
    }

    /// SIGKILL to control (the control-down phases).
    pub fn kill_control(&mut self) {
        let _ = self.control.running.child.kill();
        let _ = self.control.running.child.wait();
    }

    /// Injects `fault` into `faulty`; a link taken down comes back up when
    /// the returned guard drops.
    pub fn inject<'n>(
        &mut self,
        net: &'n Net,
        fault: Fault,
        faulty: &str,
    ) -> Result<Option<LinkDown<'n>>, FailoverError> {
        match fault {
            Fault::AppKill | Fault::SubsetKill => {
                let app = &mut self.instance_mut(faulty).app.child;
                let _ = app.kill();
                let _ = app.wait();
            }
            Fault::ProxyKill => {
                let proxy = &mut self.instance_mut(faulty).proxy.child;
                let _ = proxy.kill();
                let _ = proxy.wait();
            }
            Fault::LinkDown => {
                let host = net.host(faulty);
                host.link_down().map_err(|source| FailoverError::Fault {
                    host: faulty.to_string(),
                    source,
                })?;
                return Ok(Some(LinkDown(host)));
            }
        }
        Ok(None)
    }
}

/// A host whose link is down; brought back up on drop.
pub struct LinkDown<'n>(&'n Host);

impl Drop for LinkDown<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.link_up() {
            log(&format!(
                "cannot bring {}'s link back up: {}",
                self.0.name(),
                crate::error_chain(&e)
            ));
        }
    }
}

/// Starts the mesh of a phase in `net`'s hosts, its files under `dir`,
/// and waits until control reports it converged and a load through web
/// is answered by every instance without a failure.
pub fn start(
    net: &Net,
    bins: &Bins,
    failover: Failover,
    dir: &Path,
) -> Result<PhaseMesh, FailoverError> {
    let ctl_host = net.host("control");
    let listen = SocketAddr::new(ctl_host.addr(), 0).to_string();
    let control = mesh::start_control(ControlSpec {
        cmd: ctl_host.command(&bins.control),
        bin: &bins.control,
        data_dir: &dir.join("control-data"),
        run_dir: dir,
        listen: &listen,
        api: "127.0.0.1:0",
    })?;
    let yaml = config::resources_yaml(failover);
    let yaml_path = dir.join("mesh.yaml");
    write(&yaml_path, &yaml)?;
    let version = ctl_host
        .enter(|| control.apply(&yaml))
        .map_err(|source| FailoverError::Apply {
            path: yaml_path.clone(),
            source: Box::new(source),
        })?
        .version;
    let web_m = Member::fresh("web", "web", dir.join("web"))?;
    let api_ms = INSTANCES
        .iter()
        .map(|(name, _)| Member::fresh("api", name, dir.join(name)))
        .collect::<Result<Vec<_>, _>>()?;
    ctl_host.enter(|| -> Result<(), FailoverError> {
        control.token(&web_m)?;
        for m in &api_ms {
            control.token(m)?;
        }
        Ok(())
    })?;
    let mut instances = Vec::new();
    for (m, (name, version)) in api_ms.iter().zip(INSTANCES) {
        let host = net.host(name);
        let app = start_origin(host, &bins.bench, name, &m.dir.join("app.log"))?;
        let inbound = SocketAddr::new(host.addr(), 0);
        let text = config::api_toml(control.quic, m, version, inbound, app.addr);
        let proxy = start_proxy(host, &bins.proxy, m, &text, "inbound", None)?;
        instances.push(Instance { name, app, proxy });
    }
    let web_host = net.host("web");
    let web_access_log = web_m.dir.join("access.log");
    let text = config::web_toml(control.quic, &web_m, &web_access_log);
    let web = start_proxy(
        web_host,
        &bins.proxy,
        &web_m,
        &text,
        "outbound",
        Some(WEB_RUST_LOG),
    )?;
    let mesh = PhaseMesh {
        control,
        web,
        web_access_log,
        instances,
    };
    let nodes: BTreeSet<&str> = std::iter::once("web")
        .chain(INSTANCES.iter().map(|(n, _)| *n))
        .collect();
    let apis: BTreeSet<&str> = INSTANCES.iter().map(|(n, _)| *n).collect();
    let took = ctl_host
        .enter(|| mesh::converge(&mesh.control, &nodes, &apis, version, CONVERGE_TIMEOUT))?;
    log(&format!("mesh converged in {:.1} s", took.as_secs_f64()));
    wait_healthy(web_host, mesh.web.addr)?;
    Ok(mesh)
}

fn write(path: &Path, text: &str) -> Result<(), FailoverError> {
    fs::write(path, text).map_err(|source| FailoverError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `m`'s proxy.toml and starts the proxy inside `host`, its
/// stderr in `<m.dir>/stderr.log`.
fn start_proxy(
    host: &Host,
    bin: &Path,
    m: &Member,
    text: &str,
    listener: &str,
    rust_log: Option<&str>,
) -> Result<Running, FailoverError> {
    let config_path = m.dir.join("proxy.toml");
    write(&config_path, text)?;
    let mut cmd = host.command(bin);
    cmd.env("NO_COLOR", "1");
    if let Some(l) = rust_log {
        cmd.env("RUST_LOG", l);
    }
    let log_path = m.dir.join("stderr.log");
    host.enter(|| proxies::start_coremesh_with(cmd, bin, config_path, log_path, listener))
        .map_err(|source| FailoverError::Start {
            what: format!("the proxy of {}", m.node),
            source,
        })
}

/// Starts `coremesh-bench origin` on `host`'s loopback, naming itself
/// `name`; reads the address from its `listening on ADDR` line.
fn start_origin(
    host: &Host,
    bench: &Path,
    name: &str,
    log_path: &Path,
) -> Result<Running, FailoverError> {
    let what = || format!("the origin of {name}");
    let start_err = |source| FailoverError::Start {
        what: what(),
        source,
    };
    let log_err = |source| {
        start_err(StartError::Log {
            path: log_path.to_path_buf(),
            source,
        })
    };
    let log_file = fs::File::create(log_path).map_err(log_err)?;
    let mut cmd = host.command(bench);
    cmd.args(["origin", "--listen", "127.0.0.1:0", "--instance", name])
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
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        config_path: PathBuf::new(),
        log_path: log_path.to_path_buf(),
    };
    running.addr = rx.recv_timeout(Duration::from_secs(15)).map_err(|_| {
        running.stop();
        FailoverError::NoOrigin {
            instance: name.to_string(),
            log: log_path.to_path_buf(),
        }
    })?;
    Ok(running)
}

/// The load of a phase (or of a health check): GETs of [`LOAD_PATH`] for
/// service api, into web's outbound listener at `web`.
pub fn load_config(
    web: SocketAddr,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> LoadConfig {
    LoadConfig {
        url: format!("http://{web}{LOAD_PATH} (Host: api)"),
        addr: web,
        request: build_request(LOAD_PATH, "api", &[], 0, false),
        rate,
        duration,
        warmup: Duration::ZERO,
        connections,
        threads: 1,
        new_conn: false,
        drain: Duration::from_secs(3),
        timeline: true,
    }
}

/// Sends 1 s of load at 100 req/s through web until one second has no
/// failure and answers from every instance (their connections and
/// balancer state warm).
fn wait_healthy(web_host: &Host, web: SocketAddr) -> Result<(), FailoverError> {
    let t = Instant::now();
    let cfg = load_config(web, 100.0, Duration::from_secs(1), 8);
    let mut last = String::new();
    while t.elapsed() < HEALTHY_TIMEOUT {
        let out = web_host.enter(|| load::run_with_timeline(&cfg));
        match out {
            Ok((_, timeline)) => {
                let s = super::analysis::slice(timeline.iter());
                let all = INSTANCES
                    .iter()
                    .all(|(n, _)| s.answered_by.contains_key(*n));
                if s.failed == 0 && all {
                    log(&format!(
                        "healthy after {:.1} s: {:?}",
                        t.elapsed().as_secs_f64(),
                        s.answered_by
                    ));
                    return Ok(());
                }
                last = format!("answers {:?}, failures {:?}", s.answered_by, s.failures);
            }
            Err(e) => last = format!("load: {e}"),
        }
    }
    Err(FailoverError::NotHealthy {
        timeout: HEALTHY_TIMEOUT,
        last,
    })
}

/// The host address of an instance's proxy's inbound listener.
pub fn inbound_of(mesh: &PhaseMesh, name: &str) -> SocketAddr {
    mesh.instance(name).proxy.addr
}
