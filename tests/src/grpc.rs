//! The Python apps and clients under `tests/py/`: the gRPC test app and
//! client (grpcio, PyPI `grpcio`), the WebSocket echo app and client (PyPI
//! `websockets`).
//!
//! * [`PyApp`]: starts `python3 tests/py/SCRIPT --name NAME --listen
//!   127.0.0.1:0`, waits for its `READY ADDR` line (the port the OS picked),
//!   kills it on drop (or on [`PyApp::kill`], a server that dies) and prints
//!   its output when a test panics.
//! * [`GrpcClient`]: runs `tests/py/grpc_client.py` (one channel, so one
//!   HTTP/2 connection, per run) and returns its JSON ([`GrpcRun`]).
//! * [`ws_client`]: runs `tests/py/ws_client.py`.
//! * [`require_python`] and [`require_program`]: a test that needs a Python
//!   package or a program says so and is skipped when it is missing, except
//!   under CI (`CI=true`), where it fails with what to install.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{have_program, under_ci};

/// How long a Python app may take to print `READY`.
pub const APP_START: Duration = Duration::from_secs(30);
/// Bound on one client run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// `tests/py/NAME`.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

/// The interpreter: `$COREMESH_E2E_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("COREMESH_E2E_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether `python3` imports every module of `modules` (`(import name,
/// PyPI package)`). When one is missing: under CI, panics saying what to
/// install; elsewhere prints `SKIPPED: ...` and returns false.
pub fn require_python(modules: &[(&str, &str)]) -> bool {
    let py = python();
    let missing: Vec<&(&str, &str)> = modules
        .iter()
        .filter(|(m, _)| {
            !Command::new(&py)
                .args(["-c", &format!("import {m}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what: Vec<String> = missing
        .iter()
        .map(|(m, p)| format!("{m} (PyPI package {p})"))
        .collect();
    let msg = format!(
        "{py} cannot import {}; scripts/install-deps.sh installs them",
        what.join(", ")
    );
    assert!(!under_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// Whether `program` is on PATH. When missing: under CI, panics saying
/// which Debian package has it; elsewhere prints `SKIPPED: ...`.
pub fn require_program(program: &str, debian_package: &str) -> bool {
    if have_program(program) {
        return true;
    }
    let msg = format!(
        "{program} is not installed (Debian package {debian_package}; \
         scripts/install-deps.sh installs it)"
    );
    assert!(!under_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// A Python command with proxy variables cleared (grpcio honours
/// `http_proxy` and `grpc_proxy`), unbuffered output.
fn py_command(script: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg("-u").arg(py_script(script));
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "grpc_proxy",
        "no_proxy",
        "NO_PROXY",
        "no_grpc_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.stdin(Stdio::null());
    cmd
}

/// A running Python app from `tests/py/`.
pub struct PyApp {
    child: Child,
    addr: SocketAddr,
    name: String,
    script: String,
    log: Arc<Mutex<Vec<String>>>,
    killed: bool,
}

impl PyApp {
    /// `tests/py/grpc_app.py` named `name` (its replies carry the name).
    pub fn grpc(name: &str) -> PyApp {
        PyApp::start("grpc_app.py", name)
    }

    /// `tests/py/ws_echo.py` named `name`.
    pub fn websocket(name: &str) -> PyApp {
        PyApp::start("ws_echo.py", name)
    }

    /// Starts `tests/py/SCRIPT --name NAME --listen 127.0.0.1:0` and waits
    /// for its `READY ADDR` line.
    pub fn start(script: &str, name: &str) -> PyApp {
        let mut cmd = py_command(script);
        cmd.args(["--name", name, "--listen", "127.0.0.1:0"]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {script}: {e}", python()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        read_lines(child.stdout.take().expect("stdout"), log.clone(), Some(tx));
        read_lines(child.stderr.take().expect("stderr"), log.clone(), None);
        let deadline = Instant::now() + APP_START;
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(50)) {
                break a;
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{script} ({name}) {} before printing READY; its output:\n{}",
                    match exited {
                        Some(s) => format!("exited with {s}"),
                        None => format!("printed nothing for {APP_START:?}"),
                    },
                    log.lock().expect("log").join("\n")
                );
            }
        };
        PyApp {
            child,
            addr,
            name: name.to_string(),
            script: script.to_string(),
            log,
            killed: false,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// SIGKILL, as a crash: from the time this returns, connecting to its
    /// port is refused and its open connections are closed.
    pub fn kill(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.killed = true;
        }
    }
}

impl Drop for PyApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- {} ({}) at {}: last 40 lines of its output:\n{}\n----",
                self.script,
                self.name,
                self.addr,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        self.kill();
    }
}

fn read_lines(
    src: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    ready: Option<mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines() {
            let Ok(line) = line else { break };
            let addr = ready
                .as_ref()
                .and_then(|_| line.strip_prefix("READY "))
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            log.lock().expect("log").push(line);
            if let (Some(tx), Some(a)) = (&ready, addr) {
                let _ = tx.send(a);
            }
        }
    });
}

/// Runs `cmd` to its end (at most `timeout`); (exit code, stdout, stderr).
fn run(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn python client");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (
                t_out.join().unwrap_or_default(),
                t_err.join().unwrap_or_default(),
            );
            panic!(
                "{:?} ran longer than {timeout:?}\nstdout: {o}\nstderr: {e}",
                cmd.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default(),
    )
}

/// `tests/py/grpc_client.py` against one target.
#[derive(Clone, Debug)]
pub struct GrpcClient {
    target: SocketAddr,
    authority: Option<String>,
    timeout: Option<f64>,
    metadata: Vec<String>,
}

impl GrpcClient {
    /// Calls to `target` (a proxy's outbound listener, or the app).
    pub fn new(target: SocketAddr) -> GrpcClient {
        GrpcClient {
            target,
            authority: None,
            timeout: None,
            metadata: Vec::new(),
        }
    }
    /// `:authority` of every call (the service name, through a proxy).
    pub fn authority(mut self, a: &str) -> Self {
        self.authority = Some(a.to_string());
        self
    }
    /// A deadline on every call (sent as `grpc-timeout`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t.as_secs_f64());
        self
    }
    /// Metadata (a request header) on every call.
    pub fn metadata(mut self, k: &str, v: &str) -> Self {
        self.metadata.push(format!("{k}={v}"));
        self
    }

    /// Runs `grpc_client.py ... COMMAND ARGS` (e.g. `&["unary", "--count",
    /// "3"]`); panics unless it prints its JSON.
    pub fn run(&self, args: &[&str]) -> GrpcRun {
        let mut cmd = py_command("grpc_client.py");
        cmd.arg("--target").arg(self.target.to_string());
        if let Some(a) = &self.authority {
            cmd.arg("--authority").arg(a);
        }
        if let Some(t) = self.timeout {
            cmd.arg("--timeout").arg(format!("{t}"));
        }
        for m in &self.metadata {
            cmd.arg("--metadata").arg(m);
        }
        cmd.args(args);
        let (code, stdout, stderr) = run(cmd, CLIENT_TIMEOUT);
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| {
                panic!("grpc_client.py {args:?} exited {code} without its JSON\nstdout: {stdout}\nstderr: {stderr}")
            });
        GrpcRun { json, stderr }
    }
}

/// What one `grpc_client.py` run printed.
#[derive(Clone, Debug)]
pub struct GrpcRun {
    pub json: serde_json::Value,
    pub stderr: String,
}

impl GrpcRun {
    pub fn calls(&self) -> &[serde_json::Value] {
        self.json["calls"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    /// The only call of the run; panics if there are several.
    pub fn call(&self) -> &serde_json::Value {
        let c = self.calls();
        assert_eq!(c.len(), 1, "one call expected: {}", self.json);
        &c[0]
    }
    /// Calls per status name (`OK`, `UNAVAILABLE`, ...).
    pub fn codes(&self) -> BTreeMap<String, usize> {
        count_map(&self.json["codes"])
    }
    /// Calls answered per app instance.
    pub fn instances(&self) -> BTreeMap<String, usize> {
        count_map(&self.json["instances"])
    }
    /// How many calls ended with status `name`.
    pub fn count(&self, name: &str) -> usize {
        self.codes().get(name).copied().unwrap_or(0)
    }
    /// A short description for assertion messages: codes, instances and
    /// the first failed call.
    pub fn summary(&self) -> String {
        let failed = self.calls().iter().find(|c| c["code"] != "OK");
        format!(
            "codes {:?}, instances {:?}, first failure: {}",
            self.codes(),
            self.instances(),
            failed
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into())
        )
    }
}

fn count_map(v: &serde_json::Value) -> BTreeMap<String, usize> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) as usize))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `tests/py/ws_client.py --connect ADDR --url URL EXTRA...` and
/// returns its JSON report.
pub fn ws_client(connect: SocketAddr, url: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = py_command("ws_client.py");
    cmd.arg("--connect")
        .arg(connect.to_string())
        .arg("--url")
        .arg(url)
        .args(extra);
    let (code, stdout, stderr) = run(cmd, CLIENT_TIMEOUT);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "ws_client.py exited {code} without its JSON\nstdout: {stdout}\nstderr: {stderr}"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixtures against each other, no proxy: what the e2e tests
    /// assert through the mesh holds directly.
    #[test]
    fn grpc_fixtures_talk_directly() {
        if !require_python(&[("grpc", "grpcio")]) {
            return;
        }
        let mut app = PyApp::grpc("direct");
        let c = GrpcClient::new(app.addr());
        let r = c.run(&["unary", "--count", "3", "--size", "10", "--reply-size", "7"]);
        assert_eq!(r.count("OK"), 3, "{}", r.summary());
        assert_eq!(r.instances().get("direct"), Some(&3));
        assert_eq!(r.calls()[0]["reply"]["got_size"], 10);
        assert_eq!(r.calls()[0]["reply_size"], 7);
        let r = c.run(&["status", "--code", "7", "--details", "nope"]);
        assert_eq!(r.call()["code"], "PERMISSION_DENIED");
        assert_eq!(r.call()["details"], "nope");
        let r = c.run(&["bidi", "--count", "5", "--size", "3"]);
        assert_eq!(r.call()["replies"].as_array().unwrap().len(), 5);
        let r = c.run(&["health"]);
        assert_eq!(r.call()["serving"], true);
        let r = c
            .clone()
            .timeout(Duration::from_millis(300))
            .run(&["sleep", "--ms", "5000"]);
        assert_eq!(r.call()["code"], "DEADLINE_EXCEEDED");
        app.kill();
        let r = c.run(&["unary"]);
        assert_eq!(r.call()["code"], "UNAVAILABLE", "{}", r.summary());
    }

    #[test]
    fn websocket_fixtures_talk_directly() {
        if !require_python(&[("websockets", "websockets")]) {
            return;
        }
        let app = PyApp::websocket("ws");
        let r = ws_client(app.addr(), "ws://api/chat", &["--count", "5"]);
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["greeting"]["instance"], "ws");
        assert_eq!(r["greeting"]["path"], "/chat");
        assert_eq!(r["greeting"]["host"], "api");
        assert_eq!(r["sent"], r["echoed"], "{r}");
        assert_eq!(r["close_code"], 1000);
    }
}
