//! Running coremesh as a mesh for a scenario: coremesh-control on a fresh
//! data directory, join tokens and state directories for the proxies, and
//! waiting until control reports the mesh converged. Shared by the policy
//! scenarios of `compare` ([`crate::compare::policy`]) and `failover`
//! ([`crate::failover`]); the caller builds the commands, so the processes
//! may run pinned to CPUs or inside a network namespace.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coremesh_api::http::{ApplyResult, EndpointStatus, ProxyStatus, TokenCreated};
use coremesh_api::snapshot::Snapshot;

use crate::compare::proxies::{Running, StartError};
use crate::operator::{self, OperatorError};

/// A step of starting a mesh that failed, naming the file, node or
/// request.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the old {}", path.display())]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a snapshot", path.display())]
    Snapshot {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("coremesh-control did not start")]
    Control(#[source] StartError),
    #[error("coremesh-control printed no `listening quic=ADDR api=ADDR` line within 15 s; see {}", log.display())]
    NoListeningLine { log: PathBuf },
    #[error("join token for {node} (service {service})")]
    Token {
        node: String,
        service: String,
        #[source]
        source: Box<OperatorError>,
    },
    #[error("reading the mesh's state from coremesh-control")]
    Status(#[source] Box<OperatorError>),
    #[error("the mesh did not converge within {timeout:?}: {last}")]
    NotConverged { timeout: Duration, last: String },
}

/// What one proxy of the mesh keeps: its token file and state directory.
pub struct Member {
    pub service: String,
    pub node: String,
    pub dir: PathBuf,
}

impl Member {
    /// A member whose directory `dir` is emptied first (state from an
    /// earlier run holds a certificate of another CA).
    pub fn fresh(service: &str, node: &str, dir: PathBuf) -> Result<Member, MeshError> {
        fresh_dir(&dir)?;
        Ok(Member {
            service: service.into(),
            node: node.into(),
            dir,
        })
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("join.token")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The last snapshot the proxy applied (from its state directory).
    pub fn snapshot(&self) -> Result<Snapshot, MeshError> {
        let path = self.state_dir().join("snapshot.json");
        let text = fs::read(&path).map_err(|source| MeshError::ReadFile {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| MeshError::Snapshot { path, source })
    }
    /// The `[control]` table of the member's proxy.toml.
    pub fn control_table(&self, control: SocketAddr, calls: Option<&[String]>) -> String {
        let mut t = format!(
            "[control]\naddress = {}\ntoken_file = {}\nstate_dir = {}\nnode = {}\n",
            q(&control.to_string()),
            qp(&self.token_file()),
            qp(&self.state_dir()),
            q(&self.node)
        );
        if let Some(c) = calls {
            let c: Vec<String> = c.iter().map(|s| q(s)).collect();
            t += &format!("calls = [{}]\n", c.join(", "));
        }
        t
    }
}

/// A TOML (and YAML) basic string.
pub fn q(s: &str) -> String {
    format!("{s:?}")
}

/// A path as a TOML basic string.
pub fn qp(p: &Path) -> String {
    q(&p.display().to_string())
}

/// coremesh-control, running.
pub struct Control {
    pub running: Running,
    pub quic: SocketAddr,
    pub api: SocketAddr,
    /// The API's TLS client (verifies control with its `api-ca.pem`).
    operator: operator::Api,
    credential: String,
}

impl Control {
    /// `GET path` on the operator API, read as JSON.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, OperatorError> {
        operator::json(&self.operator, &self.credential, "GET", path, b"")
    }

    /// Applies YAML resources through the operator API.
    pub fn apply(&self, yaml: &str) -> Result<ApplyResult, OperatorError> {
        operator::apply(&self.operator, &self.credential, yaml)
    }

    /// A one-use join token for `m`'s service, written to `m`'s token file.
    pub fn token(&self, m: &Member) -> Result<(), MeshError> {
        // A calling service may have no Service resource (nothing calls it).
        let body = serde_json::json!({"service": m.service, "uses": 1, "ttl_secs": 3600, "allow_undefined": true});
        let created: TokenCreated = operator::json(
            &self.operator,
            &self.credential,
            "POST",
            "/v1/tokens",
            body.to_string().as_bytes(),
        )
        .map_err(|source| MeshError::Token {
            node: m.node.clone(),
            service: m.service.clone(),
            source: Box::new(source),
        })?;
        let path = m.token_file();
        fs::write(&path, format!("{}\n", created.token))
            .map_err(|source| MeshError::WriteFile { path, source })
    }
}

/// `listening quic=ADDR api=ADDR` -> (quic, api).
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = &line[line.find("listening ")?..];
    let get = |key: &str| -> Option<SocketAddr> {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.trim_matches('"').parse().ok())
    };
    Some((get("quic=")?, get("api=")?))
}

/// Where a control starts: `cmd` runs the binary `bin` (pinned, or in a
/// namespace), on a fresh `data_dir`, QUIC on `listen` and the operator
/// API on `api` (port 0: the OS picks); its log goes to
/// `<run_dir>/control.log`.
pub struct ControlSpec<'a> {
    pub cmd: Command,
    pub bin: &'a Path,
    pub data_dir: &'a Path,
    pub run_dir: &'a Path,
    pub listen: &'a str,
    pub api: &'a str,
}

/// Starts coremesh-control and waits for its `listening` line.
pub fn start_control(spec: ControlSpec<'_>) -> Result<Control, MeshError> {
    let ControlSpec {
        mut cmd,
        bin,
        data_dir,
        run_dir,
        listen,
        api,
    } = spec;
    // A fresh mesh: a data directory left by an earlier run holds its
    // config, and its proxies' state directories certificates of that CA.
    remove_dir(data_dir)?;
    create_dir(run_dir)?;
    let log_path = run_dir.join("control.log");
    let log_err = |source| {
        MeshError::Control(StartError::Log {
            path: log_path.clone(),
            source,
        })
    };
    let log = fs::File::create(&log_path).map_err(log_err)?;
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", listen, "--api", api])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone().map_err(log_err)?);
    let mut child = cmd.spawn().map_err(|source| {
        MeshError::Control(StartError::Spawn {
            bin: bin.to_path_buf(),
            source,
        })
    })?;
    let rx = tee_stdout(child.stdout.take().expect("piped"), log, parse_listening);
    let mut running = Running {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        config_path: PathBuf::new(),
        log_path: log_path.clone(),
    };
    let (quic, api) = rx.recv_timeout(Duration::from_secs(15)).map_err(|_| {
        running.stop();
        MeshError::NoListeningLine {
            log: log_path.clone(),
        }
    })?;
    running.addr = api;
    let cred_path = data_dir.join("operator.credential");
    let credential = fs::read_to_string(&cred_path)
        .map_err(|source| MeshError::ReadFile {
            path: cred_path,
            source,
        })?
        .trim()
        .to_string();
    let operator = operator::Api::new(api, data_dir).map_err(|e| MeshError::Status(Box::new(e)))?;
    Ok(Control {
        running,
        quic,
        api,
        operator,
        credential,
    })
}

/// Waits until control lists every proxy of `nodes` as connected with its
/// last snapshot ACKed (no NACK) at config version `version` or later, and
/// every node of `endpoints` as an endpoint, on two polls in a row (control
/// debounces changes, so a registration may not have been pushed yet on the
/// first). Returns how long it took.
pub fn converge(
    control: &Control,
    nodes: &BTreeSet<&str>,
    endpoints: &BTreeSet<&str>,
    version: u64,
    timeout: Duration,
) -> Result<Duration, MeshError> {
    let t = Instant::now();
    let mut stable = 0;
    let mut last = String::new();
    while t.elapsed() < timeout {
        let proxies: Vec<ProxyStatus> = control
            .get("/v1/proxies")
            .map_err(|e| MeshError::Status(Box::new(e)))?;
        let listed: Vec<EndpointStatus> = control
            .get("/v1/endpoints")
            .map_err(|e| MeshError::Status(Box::new(e)))?;
        let ready: BTreeSet<&str> = proxies
            .iter()
            .filter(|p| {
                p.connected
                    && p.nack.is_none()
                    && p.applied_version.is_some()
                    && p.applied_version == p.sent_version
                    && p.applied_config_version >= Some(version)
            })
            .map(|p| p.node.as_str())
            .collect();
        let registered: BTreeSet<&str> = listed.iter().map(|e| e.node.as_str()).collect();
        let ok = nodes.iter().all(|n| ready.contains(n))
            && endpoints.iter().all(|n| registered.contains(n));
        stable = if ok { stable + 1 } else { 0 };
        if stable >= 2 {
            return Ok(t.elapsed());
        }
        last = format!(
            "ready {:?} of {:?}; endpoints {:?}; NACKs {:?}",
            ready,
            nodes,
            registered,
            proxies
                .iter()
                .filter_map(|p| p.nack.as_ref().map(|n| (&p.node, n)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(MeshError::NotConverged { timeout, last })
}

/// `fs::create_dir_all`, naming the directory on failure.
pub fn create_dir(path: &Path) -> Result<(), MeshError> {
    fs::create_dir_all(path).map_err(|source| MeshError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes what an earlier run left at `path`, if anything.
pub fn remove_dir(path: &Path) -> Result<(), MeshError> {
    if path.exists() {
        fs::remove_dir_all(path).map_err(|source| MeshError::RemoveDir {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// An empty directory at `path`: whatever an earlier run left there is
/// removed first.
pub fn fresh_dir(path: &Path) -> Result<(), MeshError> {
    remove_dir(path)?;
    create_dir(path)
}

/// Copies a child's stdout into `log` line by line, on a thread of its
/// own, and sends what `parse` finds in a line (the address a process says
/// it listens on) to the returned receiver.
pub(crate) fn tee_stdout<T: Send + 'static>(
    stdout: std::process::ChildStdout,
    mut log: fs::File,
    parse: impl Fn(&str) -> Option<T> + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            if let Some(found) = parse(&line) {
                let _ = tx.send(found);
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests;
