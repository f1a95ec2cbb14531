//! Starting the real `coremesh-control`, running `meshctl` against it, and
//! joining proxies to it.
//!
//! [`ControlBuilder`] starts
//! `coremesh-control --data-dir TMP --listen 127.0.0.1:0 --api 127.0.0.1:0`
//! and waits for the line control prints once both sockets are bound:
//!
//! ```text
//! listening quic=127.0.0.1:40123 api=127.0.0.1:40124
//! ```
//!
//! The running [`Control`] runs `meshctl --api https://ADDR --data-dir TMP ...`
//! (meshctl pins the data directory's `api-ca.pem`)
//! ([`Control::meshctl`], giving exit code, stdout and stderr), and can be
//! killed with SIGKILL and restarted on the same data directory and the same
//! addresses, so proxies and meshctl find it again ([`Control::kill9`],
//! [`Control::restart`]).
//!
//! A [`Member`] is what a proxy keeps across its own restarts: its
//! `state_dir` (key, certificate, last good snapshot) and its token file.
//! [`ControlSection`] renders the proxy's `[control]` table for it, and
//! [`MeshProxy`] adds it (and `[proxy] labels`) to a [`ProxyBuilder`].
//!
//! The binaries are `$COREMESH_CONTROL_BIN` / `$COREMESH_MESHCTL_BIN`, else
//! `$CARGO_TARGET_DIR/debug/{coremesh-control,meshctl}` when
//! `CARGO_TARGET_DIR` is set, else `<workspace>/target/debug/...`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proxy::ProxyBuilder;
use crate::util::{strip_ansi, wait_for, TempDir};

/// How long control may take from spawn to its `listening` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one meshctl run (it has its own 5 s connect timeout).
pub const MESHCTL_TIMEOUT: Duration = Duration::from_secs(30);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace: `$ENV_VAR` (relative to the workspace), else
/// the debug build in the target dir. Panics with how to build it.
fn workspace_bin(env_var: &str, name: &str, package: &str) -> PathBuf {
    let ws = workspace();
    let path = if let Some(p) = std::env::var_os(env_var) {
        ws.join(p)
    } else {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
            Some(t) => ws.join(t),
            None => ws.join("target"),
        };
        target.join("debug").join(name)
    };
    if !path.is_file() {
        panic!(
            "no {name} binary at {}: build it first: cargo build -p {package} (or set {env_var})",
            path.display()
        );
    }
    path
}

/// Path of the `coremesh-control` binary under test.
pub fn control_bin() -> PathBuf {
    workspace_bin(
        "COREMESH_CONTROL_BIN",
        "coremesh-control",
        "coremesh-control",
    )
}

/// Path of the `meshctl` binary under test.
pub fn meshctl_bin() -> PathBuf {
    workspace_bin("COREMESH_MESHCTL_BIN", "meshctl", "coremesh-control")
}

/// What one meshctl run did.
#[derive(Debug, Clone)]
pub struct Meshctl {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Meshctl {
    /// Panics, with both outputs, unless meshctl exited 0.
    pub fn ok(self) -> Meshctl {
        assert_eq!(
            self.code, 0,
            "meshctl failed with exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
    /// stdout as JSON (`-o json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "meshctl stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Options for a control process.
#[derive(Clone, Debug, Default)]
pub struct ControlBuilder {
    args: Vec<String>,
    /// The test host's namespace and the address QUIC listens on there.
    host: Option<(String, std::net::IpAddr)>,
    /// Environment variables for the control process (every start).
    env: Vec<(String, String)>,
}

impl ControlBuilder {
    pub fn new() -> ControlBuilder {
        ControlBuilder::default()
    }
    /// `--grace`: after a start, how long control expires no endpoint and
    /// holds reconnecting proxies' snapshots.
    pub fn grace(self, d: &str) -> Self {
        self.arg("--grace", d)
    }
    /// `--heartbeat-timeout`.
    pub fn heartbeat_timeout(self, d: &str) -> Self {
        self.arg("--heartbeat-timeout", d)
    }
    /// `--ca-cert`/`--ca-key` of `first`'s data directory: a replica that
    /// issues from the same CA as `first` (as every replica on one store
    /// must); `None`: its own.
    pub fn ca_of(self, first: Option<&Control>) -> Self {
        let Some(first) = first else {
            return self;
        };
        let dir = first.data_dir();
        self.arg("--ca-cert", dir.join("ca.pem").to_str().expect("UTF-8"))
            .arg("--ca-key", dir.join("ca.key").to_str().expect("UTF-8"))
    }
    /// Runs control (and every meshctl and subcommand run) inside a test
    /// host: QUIC on the host's address, the API on the host's loopback.
    pub fn on_host(mut self, host: &coremesh_testnet::Host) -> Self {
        self.host = Some((host.netns().to_string(), host.addr()));
        self
    }
    /// Any other flag and its value.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }
    /// An environment variable for the control process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// A flag without a value (`--api-plaintext`).
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }

    /// Starts control on a new data directory; waits for its `listening` line.
    pub fn start(self) -> Control {
        let data = TempDir::new("control");
        let mut control = Control {
            child: None,
            pid: 0,
            data_dir: data.path().join("data"),
            _data: data,
            quic: "0.0.0.0:0".parse().expect("addr"),
            api: "0.0.0.0:0".parse().expect("addr"),
            log: Arc::new(Mutex::new(Vec::new())),
            args: self.args,
            env: self.env,
            netns: self.host.as_ref().map(|(ns, _)| ns.clone()),
        };
        let listen = match self.host {
            Some((_, ip)) => SocketAddr::new(ip, 0).to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        control.spawn(&listen, "127.0.0.1:0");
        control
    }
}

/// A running (or killed) coremesh-control. Killed on drop; if the test is
/// panicking, its log tail is printed first.
pub struct Control {
    child: Option<Child>,
    pid: u32,
    /// Holds the data dir; removed on drop.
    _data: TempDir,
    data_dir: PathBuf,
    quic: SocketAddr,
    api: SocketAddr,
    /// Output of every run, stdout and stderr interleaved.
    log: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
    /// Environment variables for every run of the control process.
    env: Vec<(String, String)>,
    /// The test host control runs on, if any.
    netns: Option<String>,
}

impl Control {
    /// A command for `program`, inside control's test host if it has one.
    fn host_command(&self, program: PathBuf) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Control with default options.
    pub fn start() -> Control {
        ControlBuilder::new().start()
    }

    fn spawn(&mut self, listen: &str, api: &str) {
        if let Err((status, output)) = self.try_spawn(listen, api, &[]) {
            panic!("coremesh-control exited with {status} before its `listening` line\noutput:\n{output}");
        }
    }

    /// Starts the process with `extra` flags after the builder's; waits for
    /// its `listening` line. `Err((exit status, what this run printed))`
    /// when it exits first.
    fn try_spawn(
        &mut self,
        listen: &str,
        api: &str,
        extra: &[&str],
    ) -> Result<(), (ExitStatus, String)> {
        let mut cmd = self.host_command(control_bin());
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", listen, "--api", api])
            .args(&self.args)
            .args(extra);
        cmd.env_remove("RUST_LOG");
        if let Ok(filter) = std::env::var("COREMESH_E2E_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let first_line = self.log_lines().len();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", control_bin().display()));
        self.pid = child.id();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = [
            read_lines(stdout, self.log.clone(), Some(tx)),
            read_lines(stderr, self.log.clone(), None),
        ];
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((quic, api)) = rx.recv_timeout(Duration::from_millis(50)) {
                self.quic = quic;
                self.api = api;
                return Ok(());
            }
            if let Some(status) = self.try_exit() {
                // Everything it wrote is in the log once the readers end.
                for r in readers {
                    let _ = r.join();
                }
                self.child = None;
                let output = self.log_lines()[first_line..].join("\n");
                return Err((status, output));
            }
            if Instant::now() >= deadline {
                panic!(
                    "coremesh-control did not print `listening quic=ADDR api=ADDR` within {START_TIMEOUT:?}\noutput:\n{}",
                    self.log_text()
                );
            }
        }
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The QUIC address proxies connect to.
    pub fn quic(&self) -> SocketAddr {
        self.quic
    }
    /// The API address (HTTPS).
    pub fn api(&self) -> SocketAddr {
        self.api
    }
    /// `https://ADDR`, as meshctl's `--api` takes it.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.api)
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Whether the process runs (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Everything control printed so far (all runs), one line each.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }
    pub fn log_tail(&self, n: usize) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
    /// Waits until a line after the first `skip` lines satisfies `pred`.
    pub fn wait_for_log(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_for(timeout, || {
            self.log_lines().into_iter().skip(skip).find(|l| pred(l))
        })
    }

    /// Sends a signal to the running process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid);
    }

    /// SIGKILL, and reap it: nothing gets a chance to shut down cleanly.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts control again on the same data directory and the same QUIC
    /// and API addresses (the proxies' `[control] address` and meshctl's
    /// `--api` stay valid). Kills the running process first, if any.
    pub fn restart(&mut self) {
        self.kill9();
        // The old sockets went with the process: UDP has no TIME_WAIT and
        // the API listener sets SO_REUSEADDR, so the same addresses bind.
        let (quic, api) = (self.quic.to_string(), self.api.to_string());
        self.spawn(&quic, &api);
    }

    /// Starts control again on the same data directory and addresses with
    /// `extra` flags, like [`Control::restart`], but returns the exit status
    /// and output of a start that fails instead of panicking. Kills the
    /// running process first, if any.
    pub fn try_restart(&mut self, extra: &[&str]) -> Result<(), (ExitStatus, String)> {
        self.kill9();
        let (quic, api) = (self.quic.to_string(), self.api.to_string());
        self.try_spawn(&quic, &api, extra)
    }

    /// Runs `coremesh-control ARGS...` (a subcommand such as `backup`)
    /// to completion: (exit code, stdout, stderr).
    pub fn command(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .host_command(control_bin())
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", control_bin().display()));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `meshctl --api URL --data-dir DIR ARGS...`.
    pub fn meshctl(&self, args: &[&str]) -> Meshctl {
        self.meshctl_with_input(args, None)
    }

    /// meshctl left running (`meshctl tap`): stdout and stderr piped.
    pub fn meshctl_spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = self.host_command(meshctl_bin());
        cmd.arg("--api")
            .arg(self.api_url())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args);
        for var in ["COREMESH_API", "COREMESH_CREDENTIAL", "COREMESH_CA"] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshctl")
    }

    /// Runs meshctl with `input` on its stdin (for `apply -f -`).
    pub fn meshctl_stdin(&self, args: &[&str], input: &str) -> Meshctl {
        self.meshctl_with_input(args, Some(input))
    }

    fn meshctl_with_input(&self, args: &[&str], input: Option<&str>) -> Meshctl {
        let mut cmd = self.host_command(meshctl_bin());
        cmd.arg("--api")
            .arg(self.api_url())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args);
        for var in ["COREMESH_API", "COREMESH_CREDENTIAL", "COREMESH_CA"] {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1");
        run(cmd, input)
    }

    /// `meshctl apply -f FILE` with `yaml`; panics unless it succeeds.
    /// Returns the config version it printed (`version N: ...` or
    /// `unchanged (version N)`).
    pub fn apply(&self, yaml: &str) -> u64 {
        let out = self.try_apply(yaml).ok();
        version_in(&out.stdout)
            .unwrap_or_else(|| panic!("no version in meshctl apply's output:\n{}", out.stdout))
    }

    /// `meshctl apply -f FILE` with `yaml`, whatever the outcome.
    pub fn try_apply(&self, yaml: &str) -> Meshctl {
        let dir = TempDir::new("apply");
        let file = dir.write("mesh.yaml", yaml);
        let file = file.to_str().expect("UTF-8 temp path").to_string();
        self.meshctl(&["apply", "-f", &file])
    }

    /// `meshctl get WHAT -o json`, parsed; panics unless it succeeds.
    pub fn get_json(&self, what: &str) -> serde_json::Value {
        self.meshctl(&["get", what, "-o", "json"]).ok().json()
    }

    /// `meshctl get proxies -o json`: one object per proxy session.
    pub fn proxies(&self) -> Vec<serde_json::Value> {
        array(self.get_json("proxies"))
    }

    /// `meshctl get endpoints -o json`.
    pub fn endpoints(&self) -> Vec<serde_json::Value> {
        array(self.get_json("endpoints"))
    }

    /// Addresses of the registered endpoints of `service`, sorted.
    pub fn endpoint_addrs(&self, service: &str) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .endpoints()
            .iter()
            .filter(|e| e["service"] == service)
            .filter_map(|e| e["address"].as_str().and_then(|a| a.parse().ok()))
            .collect();
        v.sort();
        v
    }

    /// The newest config version in `meshctl history` (0 before any apply).
    pub fn config_version(&self) -> u64 {
        let out = self.meshctl(&["history"]).ok();
        out.stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// `meshctl token create --service SERVICE --allow-undefined EXTRA...`;
    /// returns the token (meshctl prints it alone on stdout). Tests start
    /// their proxies before or without applying a Service for them, so the
    /// token is made with `--allow-undefined` (the refusal without it has
    /// its own test).
    pub fn token(&self, service: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--service", service, "--allow-undefined"];
        args.extend_from_slice(extra);
        let out = self.meshctl(&args).ok();
        let token = out.stdout.trim().to_string();
        assert!(
            token.starts_with("cmjt1.") && !token.contains('\n'),
            "meshctl token create should print the token alone on stdout, got:\n{}",
            out.stdout
        );
        token
    }

    /// A new [`Member`] of `service` named `node`, with a fresh one-use token.
    pub fn member(&self, service: &str, node: &str) -> Member {
        let m = Member::new(service, node);
        m.write_token(&self.token(service, &[]));
        m
    }

    /// The `[control]` table for `member`, pointing at this control.
    pub fn section(&self, member: &Member) -> ControlSection {
        member.section(self.quic)
    }

    /// Waits until every connected proxy has acknowledged the last snapshot
    /// control sent it, carrying config version `config_version`, with no
    /// NACK, and `meshctl get endpoints` lists `endpoints` endpoints; the
    /// state must hold on two polls in a row (control debounces changes, so
    /// a registration may not have been pushed yet on the first). Returns the
    /// connected proxies. Panics with what was seen after `timeout`.
    pub fn wait_converged(
        &self,
        proxies: usize,
        endpoints: usize,
        config_version: u64,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let mut last = String::new();
        let mut stable = 0;
        let found = wait_for(timeout, || {
            let ps: Vec<serde_json::Value> = self
                .proxies()
                .into_iter()
                .filter(|p| p["connected"] == true)
                .collect();
            let es = self.endpoints();
            let ok = ps.len() == proxies
                && es.len() == endpoints
                && ps.iter().all(|p| {
                    p["nack"].is_null()
                        && !p["applied_version"].is_null()
                        && p["applied_version"] == p["sent_version"]
                        && p["applied_config_version"] == config_version
                });
            last = format!(
                "proxies: {}\nendpoints: {}",
                serde_json::to_string_pretty(&ps).unwrap_or_default(),
                serde_json::to_string_pretty(&es).unwrap_or_default()
            );
            if ok {
                stable += 1;
            } else {
                stable = 0;
            }
            if stable >= 2 {
                Some(ps)
            } else {
                std::thread::sleep(Duration::from_millis(150));
                None
            }
        });
        found.unwrap_or_else(|| {
            panic!(
                "control did not converge within {timeout:?} on {proxies} connected proxies \
                 with ACKed snapshots of config version {config_version} and {endpoints} \
                 endpoints; last seen:\n{last}\nmeshctl status:\n{}",
                self.meshctl(&["status"]).stdout
            )
        })
    }

    /// Like [`Control::wait_converged`], for an apply that changes only
    /// some proxies' views: control sends a snapshot only to sessions whose
    /// view changed (an AccessPolicy of api changes api's proxies, a Route
    /// of api its callers'), so the others keep the config version of
    /// their last snapshot. Waits until every connected proxy has ACKed
    /// its last snapshot with no NACK, `endpoints` endpoints are listed,
    /// and the proxies of each service in `must` run config version
    /// `config_version`; stable over two polls.
    pub fn wait_applied(
        &self,
        proxies: usize,
        endpoints: usize,
        config_version: u64,
        must: &[&str],
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let mut last = String::new();
        let mut stable = 0;
        let found = wait_for(timeout, || {
            let ps: Vec<serde_json::Value> = self
                .proxies()
                .into_iter()
                .filter(|p| p["connected"] == true)
                .collect();
            let es = self.endpoints();
            let ok = ps.len() == proxies
                && es.len() == endpoints
                && ps.iter().all(|p| {
                    p["nack"].is_null()
                        && !p["applied_version"].is_null()
                        && p["applied_version"] == p["sent_version"]
                        && (!must.iter().any(|m| p["service"] == *m)
                            || p["applied_config_version"] == config_version)
                });
            last = format!(
                "proxies: {}\nendpoints: {}",
                serde_json::to_string_pretty(&ps).unwrap_or_default(),
                serde_json::to_string_pretty(&es).unwrap_or_default()
            );
            if ok {
                stable += 1;
            } else {
                stable = 0;
            }
            if stable >= 2 {
                Some(ps)
            } else {
                std::thread::sleep(Duration::from_millis(150));
                None
            }
        });
        found.unwrap_or_else(|| {
            panic!(
                "control did not converge within {timeout:?} on {proxies} connected proxies \
                 with ACKed snapshots ({must:?} at config version {config_version}) and \
                 {endpoints} endpoints; last seen:\n{last}\nmeshctl status:\n{}",
                self.meshctl(&["status"]).stdout
            )
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- coremesh-control (pid {}) data dir {}:\n---- last 60 lines of its output:\n{}\n----",
                self.pid,
                self.data_dir.display(),
                self.log_tail(60)
            );
        }
        self.kill9();
    }
}

fn array(v: serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(a) => a,
        other => panic!("expected a JSON array from meshctl, got {other}"),
    }
}

/// `version N: ...` or `unchanged (version N)` -> N.
pub fn version_in(out: &str) -> Option<u64> {
    let at = out.find("version ")? + "version ".len();
    let digits: String = out[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs `cmd` to completion (at most [`MESHCTL_TIMEOUT`]), feeding `input`.
fn run(mut cmd: Command, input: Option<&str>) -> Meshctl {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn meshctl");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
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
    let deadline = Instant::now() + MESHCTL_TIMEOUT;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "meshctl {:?} ran longer than {MESHCTL_TIMEOUT:?}",
                cmd.get_args()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Meshctl {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Collects lines into `log`; sends the addresses of a `listening` line.
fn read_lines(
    src: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    listening: Option<mpsc::Sender<(SocketAddr, SocketAddr)>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            // Into the log first: once the caller has the addresses, the
            // line that carried them is in `log_lines`.
            let addrs = listening.as_ref().and_then(|_| parse_listening(&line));
            log.lock().expect("log lock").push(line);
            if let (Some(tx), Some(addrs)) = (&listening, addrs) {
                let _ = tx.send(addrs);
            }
        }
    })
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

/// What a proxy keeps across its own restarts: a directory holding its
/// `state_dir` (key, certificate, CA, last good snapshot) and its token
/// file. Removed on drop.
pub struct Member {
    dir: TempDir,
    pub service: String,
    pub node: String,
}

impl Member {
    /// A member of `service` named `node`, with no token yet.
    pub fn new(service: &str, node: &str) -> Member {
        Member {
            dir: TempDir::new(&format!("member-{node}")),
            service: service.to_string(),
            node: node.to_string(),
        }
    }
    /// Writes (or replaces) the token file, with a newline as an operator's
    /// `meshctl token create > file` would leave it.
    pub fn write_token(&self, token: &str) {
        self.dir.write("join.token", format!("{token}\n"));
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("join.token")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// `state_dir/cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir().join("cert.pem")
    }
    /// `state_dir/key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.state_dir().join("key.pem")
    }
    /// `state_dir/snapshot.json`: the last good snapshot.
    pub fn snapshot_path(&self) -> PathBuf {
        self.state_dir().join("snapshot.json")
    }
    /// The `[control]` table for this member, pointing at `address`.
    pub fn section(&self, address: SocketAddr) -> ControlSection {
        ControlSection {
            address,
            more_addresses: Vec::new(),
            token_file: Some(self.token_file()),
            state_dir: self.state_dir(),
            node: Some(self.node.clone()),
            calls: None,
            health: Vec::new(),
            keys: Vec::new(),
        }
    }
}

/// A proxy's `[control]` (and `[control.health]`) table.
#[derive(Clone, Debug)]
pub struct ControlSection {
    pub address: SocketAddr,
    /// More control addresses after `address` (`address = [...]`), tried
    /// in order.
    pub more_addresses: Vec<SocketAddr>,
    pub token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub node: Option<String>,
    pub calls: Option<Vec<String>>,
    /// `[control.health]` keys, values as TOML.
    pub health: Vec<(String, String)>,
    /// Other `[control]` keys, values as TOML.
    pub keys: Vec<(String, String)>,
}

impl ControlSection {
    /// Another control address, tried after the ones before it.
    pub fn also(mut self, address: SocketAddr) -> Self {
        self.more_addresses.push(address);
        self
    }
    /// `calls = [...]`: the services the local app calls.
    pub fn calls(mut self, services: &[&str]) -> Self {
        self.calls = Some(services.iter().map(|s| s.to_string()).collect());
        self
    }
    /// A `[control.health]` key, value as TOML (`("interval", "\"1s\"")`).
    pub fn health(mut self, key: &str, toml_value: &str) -> Self {
        self.health.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Another `[control]` key, value as TOML (`("allow_store_change", "true")`).
    pub fn key(mut self, key: &str, toml_value: &str) -> Self {
        self.keys.push((key.to_string(), toml_value.to_string()));
        self
    }

    pub fn render(&self) -> String {
        let q = |s: &str| format!("{s:?}");
        let p = |p: &Path| q(p.to_str().expect("UTF-8 path"));
        let mut t = String::from("[control]\n");
        if self.more_addresses.is_empty() {
            t += &format!("address = {}\n", q(&self.address.to_string()));
        } else {
            let all: Vec<String> = std::iter::once(&self.address)
                .chain(&self.more_addresses)
                .map(|a| q(&a.to_string()))
                .collect();
            t += &format!("address = [{}]\n", all.join(", "));
        }
        if let Some(f) = &self.token_file {
            t += &format!("token_file = {}\n", p(f));
        }
        t += &format!("state_dir = {}\n", p(&self.state_dir));
        if let Some(n) = &self.node {
            t += &format!("node = {}\n", q(n));
        }
        if let Some(calls) = &self.calls {
            let c: Vec<String> = calls.iter().map(|s| q(s)).collect();
            t += &format!("calls = [{}]\n", c.join(", "));
        }
        for (k, v) in &self.keys {
            t += &format!("{k} = {v}\n");
        }
        if !self.health.is_empty() {
            t += "\n[control.health]\n";
            for (k, v) in &self.health {
                t += &format!("{k} = {v}\n");
            }
        }
        t
    }
}

/// Mesh settings on a [`ProxyBuilder`].
pub trait MeshProxy {
    /// Adds the `[control]` table.
    fn control(self, section: &ControlSection) -> Self;
    /// `[proxy] labels = { k = "v", ... }`.
    fn labels(self, labels: &[(&str, &str)]) -> Self;
}

impl MeshProxy for ProxyBuilder {
    fn control(self, section: &ControlSection) -> Self {
        self.extra(&section.render())
    }
    fn labels(self, labels: &[(&str, &str)]) -> Self {
        let kv: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        self.proxy_key("labels", &format!("{{ {} }}", kv.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (q, a) = parse_listening("listening quic=127.0.0.1:40123 api=127.0.0.1:40124").unwrap();
        assert_eq!((q.port(), a.port()), (40123, 40124));
        let (q, _) = parse_listening("x INFO listening quic=[::1]:5 api=\"127.0.0.1:6\"").unwrap();
        assert_eq!(q.to_string(), "[::1]:5");
        assert!(parse_listening("operator credential: /x").is_none());
        assert!(parse_listening("listening quic=127.0.0.1:1").is_none());
    }

    #[test]
    fn versions_in_apply_output() {
        assert_eq!(version_in("version 3: route/a, service/b\n"), Some(3));
        assert_eq!(version_in("unchanged (version 12)\n"), Some(12));
        assert_eq!(version_in("nothing"), None);
    }

    #[test]
    fn renders_the_control_table() {
        let m = Member::new("web", "web-1");
        let t = m
            .section("127.0.0.1:7443".parse().unwrap())
            .calls(&["api", "db"])
            .health("interval", "\"1s\"")
            .render();
        assert!(
            t.starts_with("[control]\naddress = \"127.0.0.1:7443\"\n"),
            "{t}"
        );
        assert!(t.contains("node = \"web-1\"\n"), "{t}");
        assert!(t.contains("calls = [\"api\", \"db\"]\n"), "{t}");
        assert!(t.contains("\n[control.health]\ninterval = \"1s\"\n"), "{t}");
        let two = m
            .section("127.0.0.1:7443".parse().unwrap())
            .also("127.0.0.1:7444".parse().unwrap())
            .render();
        assert!(
            two.starts_with("[control]\naddress = [\"127.0.0.1:7443\", \"127.0.0.1:7444\"]\n"),
            "{two}"
        );
        let b = ProxyBuilder::new("api")
            .labels(&[("version", "v2")])
            .render();
        assert!(b.contains("labels = { \"version\" = \"v2\" }"), "{b}");
    }
}
