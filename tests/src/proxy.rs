//! Starting the real `coremesh-proxy` binary.
//!
//! [`ProxyBuilder`] renders a `proxy.toml` into a per-test temp dir (every
//! listener on `127.0.0.1:0` unless a test says otherwise), spawns the binary
//! and waits for the log line that reports the bound addresses:
//!
//! ```text
//! ... INFO coremesh_proxy: bound inbound=127.0.0.1:40123 outbound=127.0.0.1:40124 admin=127.0.0.1:40125
//! ```
//!
//! The binary is `$COREMESH_PROXY_BIN`, else `$CARGO_TARGET_DIR/debug/coremesh-proxy`
//! when `CARGO_TARGET_DIR` is set, else `<workspace>/target/debug/coremesh-proxy`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{Client, Request, Response};
use crate::metrics::Metrics;
use crate::util::{strip_ansi, wait_for, TempDir};

/// How long a proxy may take from spawn to its `bound` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of the proxy binary under test; panics if it is not built.
pub fn proxy_bin() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let path = if let Some(p) = std::env::var_os("COREMESH_PROXY_BIN") {
        // Relative to the workspace, as scripts run from there.
        workspace.join(p)
    } else {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
            Some(t) => workspace.join(t),
            None => workspace.join("target"),
        };
        target.join("debug").join("coremesh-proxy")
    };
    if !path.is_file() {
        panic!(
            "no proxy binary at {}: build it first: cargo build -p coremesh-proxy \
             (or set COREMESH_PROXY_BIN)",
            path.display()
        );
    }
    path
}

/// Builds a `proxy.toml` and starts the proxy with it.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    service: String,
    cores: Option<usize>,
    admin: String,
    proxy_extra: Vec<(String, String)>,
    inbound: Option<(String, String)>,
    inbound_extra: Vec<(String, String)>,
    outbound: Option<String>,
    outbound_extra: Vec<(String, String)>,
    passthrough: Option<bool>,
    services: Vec<(String, Vec<String>)>,
    timeouts: Vec<(String, String)>,
    limits: Vec<(String, u64)>,
    upstream: Vec<(String, String)>,
    extra: String,
    log_json: bool,
    env: Vec<(String, String)>,
    netns: Option<String>,
}

impl ProxyBuilder {
    /// A proxy for local service `service`, admin on `127.0.0.1:0`, no listeners yet.
    pub fn new(service: &str) -> ProxyBuilder {
        ProxyBuilder {
            service: service.to_string(),
            cores: None,
            admin: "127.0.0.1:0".to_string(),
            proxy_extra: Vec::new(),
            inbound: None,
            inbound_extra: Vec::new(),
            outbound: None,
            outbound_extra: Vec::new(),
            passthrough: None,
            services: Vec::new(),
            timeouts: Vec::new(),
            limits: Vec::new(),
            upstream: Vec::new(),
            extra: String::new(),
            log_json: false,
            env: Vec::new(),
            netns: None,
        }
    }
    /// Runs the proxy inside a test host (a network namespace of
    /// `coremesh_testnet`); its admin endpoint and listeners are reached
    /// from inside that host.
    pub fn on_host(mut self, host: &coremesh_testnet::Host) -> Self {
        self.netns = Some(host.netns().to_string());
        self
    }
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = Some(n);
        self
    }
    pub fn admin_at(mut self, addr: &str) -> Self {
        self.admin = addr.to_string();
        self
    }
    /// Another `[proxy]` key, value given as TOML (e.g. `("drain_timeout", "\"5s\"")`).
    pub fn proxy_key(mut self, key: &str, toml_value: &str) -> Self {
        self.proxy_extra
            .push((key.to_string(), toml_value.to_string()));
        self
    }
    /// `[inbound]` on `127.0.0.1:0` forwarding to `app`.
    pub fn inbound(mut self, app: SocketAddr) -> Self {
        self.inbound = Some(("127.0.0.1:0".to_string(), app.to_string()));
        self
    }
    /// `[inbound]` on `listen` (an address and port, such as a test host's
    /// `10.77.0.3:0`) forwarding to `app`.
    pub fn inbound_on(mut self, listen: SocketAddr, app: SocketAddr) -> Self {
        self.inbound = Some((listen.to_string(), app.to_string()));
        self
    }
    /// `[inbound]` on `127.0.0.1:0` forwarding to `app` as written
    /// (`"unix:/PATH"`).
    pub fn inbound_app(mut self, app: &str) -> Self {
        self.inbound = Some(("127.0.0.1:0".to_string(), app.to_string()));
        self
    }
    /// One more `[inbound]` key, as raw TOML (`inbound_key("identity_header", "\"x-caller\"")`).
    pub fn inbound_key(mut self, key: &str, toml_value: &str) -> Self {
        self.inbound_extra
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    /// `[outbound]` on `127.0.0.1:0`.
    pub fn outbound(self) -> Self {
        self.outbound_at("127.0.0.1:0")
    }
    pub fn outbound_at(mut self, listen: &str) -> Self {
        self.outbound = Some(listen.to_string());
        self
    }
    /// One more `[outbound]` key, as raw TOML (`outbound_key("listen_mode", "\"0660\"")`).
    pub fn outbound_key(mut self, key: &str, toml_value: &str) -> Self {
        self.outbound_extra
            .push((key.to_string(), toml_value.to_string()));
        self
    }
    pub fn passthrough(mut self, on: bool) -> Self {
        self.passthrough = Some(on);
        self
    }
    /// A `[[services]]` entry.
    pub fn service(self, name: &str, endpoints: &[SocketAddr]) -> Self {
        let eps: Vec<String> = endpoints.iter().map(SocketAddr::to_string).collect();
        self.service_raw(name, &eps)
    }
    pub fn service_raw(mut self, name: &str, endpoints: &[String]) -> Self {
        self.services.push((name.to_string(), endpoints.to_vec()));
        self
    }
    /// A `[timeouts]` key, e.g. `("head_read", "1s")`.
    pub fn timeout(mut self, key: &str, value: &str) -> Self {
        self.timeouts.push((key.to_string(), value.to_string()));
        self
    }
    /// A `[limits]` key, e.g. `("max_headers", 10)`.
    pub fn limit(mut self, key: &str, value: u64) -> Self {
        self.limits.push((key.to_string(), value));
        self
    }
    /// An `[upstream]` key, value given as TOML.
    pub fn upstream(mut self, key: &str, toml_value: &str) -> Self {
        self.upstream
            .push((key.to_string(), toml_value.to_string()));
        self
    }
    /// Raw TOML appended to the file.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }
    /// Run with `--log-format json`.
    pub fn log_json(mut self) -> Self {
        self.log_json = true;
        self
    }
    /// An environment variable for the proxy process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// The `proxy.toml` this builder describes.
    pub fn render(&self) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut t = String::from("[proxy]\n");
        t += &format!("service = {}\n", q(&self.service));
        if let Some(c) = self.cores {
            t += &format!("cores = {c}\n");
        }
        t += &format!("admin = {}\n", q(&self.admin));
        for (k, v) in &self.proxy_extra {
            t += &format!("{k} = {v}\n");
        }
        if let Some((listen, app)) = &self.inbound {
            t += &format!("\n[inbound]\nlisten = {}\napp = {}\n", q(listen), q(app));
            for (k, v) in &self.inbound_extra {
                t += &format!("{k} = {v}\n");
            }
        }
        if let Some(listen) = &self.outbound {
            t += &format!("\n[outbound]\nlisten = {}\n", q(listen));
            if let Some(p) = self.passthrough {
                t += &format!("passthrough = {p}\n");
            }
            for (k, v) in &self.outbound_extra {
                t += &format!("{k} = {v}\n");
            }
        }
        for (name, eps) in &self.services {
            let eps: Vec<String> = eps.iter().map(|e| q(e)).collect();
            t += &format!(
                "\n[[services]]\nname = {}\nendpoints = [{}]\n",
                q(name),
                eps.join(", ")
            );
        }
        if !self.timeouts.is_empty() {
            t += "\n[timeouts]\n";
            for (k, v) in &self.timeouts {
                t += &format!("{k} = {}\n", q(v));
            }
        }
        if !self.limits.is_empty() {
            t += "\n[limits]\n";
            for (k, v) in &self.limits {
                t += &format!("{k} = {v}\n");
            }
        }
        if !self.upstream.is_empty() {
            t += "\n[upstream]\n";
            for (k, v) in &self.upstream {
                t += &format!("{k} = {v}\n");
            }
        }
        if !self.extra.is_empty() {
            t += "\n";
            t += &self.extra;
        }
        t
    }

    fn command(&self, config: &Path) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(proxy_bin());
                c
            }
            None => Command::new(proxy_bin()),
        };
        cmd.arg("--config").arg(config);
        if self.log_json {
            cmd.args(["--log-format", "json"]);
        }
        // Tests see the proxy's default log level unless asked otherwise.
        cmd.env_remove("RUST_LOG");
        if let Ok(filter) = std::env::var("COREMESH_E2E_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Writes the config, starts the proxy and waits for its `bound` line.
    /// Panics with the proxy's output if it exits or stays silent for 15 s.
    pub fn start(self) -> Proxy {
        let dir = TempDir::new(&format!("proxy-{}", self.service));
        let config = dir.write("proxy.toml", self.render());
        self.launch(Arc::new(dir), config, &[])
    }

    /// Runs the proxy on a config file written elsewhere (e.g. by `meshctl
    /// bootstrap`), kept in `dir`. The builder is not rendered: its inbound
    /// and outbound settings only say which bound addresses to wait for.
    pub fn start_file(self, dir: TempDir, config: PathBuf) -> Proxy {
        self.launch(Arc::new(dir), config, &[])
    }

    /// Runs the proxy with `config` (in `dir`) and `extra` arguments; waits
    /// for its `bound` line.
    fn launch(self, dir: Arc<TempDir>, config: PathBuf, extra: &[&std::ffi::OsStr]) -> Proxy {
        let mut cmd = self.command(&config);
        cmd.args(extra);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", proxy_bin().display()));
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout = child.stdout.take().expect("piped stdout");
        let readers = vec![
            spawn_log_reader(stderr, log.clone(), Some(tx)),
            spawn_log_reader(stdout, log.clone(), None),
        ];

        let mut proxy = Proxy {
            child,
            pid: 0,
            dir,
            config,
            log,
            inbound: None,
            outbound: None,
            admin: None,
            builder: self.clone(),
            exited: None,
            readers,
        };
        proxy.pid = proxy.child.id();
        let want_in = self.inbound.is_some();
        // A `unix:` outbound listener has no address to wait for (the
        // `bound` line names its path).
        let want_out = self
            .outbound
            .as_ref()
            .is_some_and(|o| !o.starts_with("unix:"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(b) => {
                    let b: Bound = b;
                    if b.admin.is_some()
                        && (!want_in || b.inbound.is_some())
                        && (!want_out || b.outbound.is_some())
                    {
                        proxy.inbound = b.inbound;
                        proxy.outbound = b.outbound;
                        proxy.admin = b.admin;
                        return proxy;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                proxy.join_readers();
                panic!(
                    "proxy exited with {status} before reporting its bound addresses\nconfig:\n{}\noutput:\n{}",
                    self.render(),
                    proxy.log_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "proxy did not log a `bound ... admin=ADDR` line within {START_TIMEOUT:?}\nconfig:\n{}\noutput:\n{}",
                    self.render(),
                    proxy.log_text()
                );
            }
        }
    }

    /// Starts the proxy expecting it to exit on its own (a start-up error);
    /// returns its exit status and output. Panics if it runs past `timeout`.
    pub fn start_expecting_exit(self, timeout: Duration) -> (ExitStatus, String) {
        let dir = TempDir::new(&format!("proxy-{}", self.service));
        let config = dir.write("proxy.toml", self.render());
        let mut cmd = self.command(&config);
        run_with_timeout(&mut cmd, timeout)
    }

    /// Runs `coremesh-proxy --config FILE --check` on this builder's file.
    pub fn check(&self) -> (ExitStatus, String) {
        check_config_text(&self.render())
    }
}

/// Runs `coremesh-proxy --config FILE --check` on `toml`; returns the exit
/// status and everything printed (stdout then stderr).
pub fn check_config_text(toml: &str) -> (ExitStatus, String) {
    let dir = TempDir::new("check");
    let config = dir.write("proxy.toml", toml);
    let mut cmd = Command::new(proxy_bin());
    cmd.arg("--config").arg(&config).arg("--check");
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    run_with_timeout(&mut cmd, Duration::from_secs(15))
}

fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn proxy");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let so = t_out.join().unwrap_or_default();
            let se = t_err.join().unwrap_or_default();
            panic!(
                "proxy still running after {timeout:?}; output:\n{}{}",
                String::from_utf8_lossy(&so),
                String::from_utf8_lossy(&se)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let so = t_out.join().unwrap_or_default();
    let se = t_err.join().unwrap_or_default();
    let text = strip_ansi(&format!(
        "{}{}",
        String::from_utf8_lossy(&so),
        String::from_utf8_lossy(&se)
    ));
    (status, text)
}

/// Addresses reported on a `bound` line.
#[derive(Clone, Debug, Default)]
struct Bound {
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

fn spawn_log_reader(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    bound_tx: Option<mpsc::Sender<Bound>>,
) -> JoinHandle<()> {
    let verbose = std::env::var_os("COREMESH_E2E_VERBOSE").is_some();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
            if verbose {
                eprintln!("[proxy] {line}");
            }
            // Into the log first: once `start` has the addresses, the line
            // that carried them is in `log_lines`.
            let bound = bound_tx.as_ref().and_then(|_| parse_bound_line(&line));
            log.lock().expect("log lock").push(line);
            if let (Some(tx), Some(b)) = (&bound_tx, bound) {
                let _ = tx.send(b);
            }
        }
    })
}

/// Finds `key=VALUE` (text logs) or `"key":"VALUE"` (JSON logs) where `key`
/// is a whole word.
fn field(line: &str, key: &str) -> Option<String> {
    for (pat, quoted) in [(format!("{key}="), false), (format!("\"{key}\":"), true)] {
        let mut from = 0;
        while let Some(i) = line[from..].find(&pat) {
            let at = from + i;
            from = at + pat.len();
            let before = line[..at].chars().next_back();
            let whole_word = !quoted && before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            if !(whole_word || quoted) {
                continue;
            }
            let rest = line[at + pat.len()..].trim_start();
            let rest = rest.trim_start_matches('"');
            let value: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',' && *c != '}')
                .collect();
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
    None
}

fn parse_bound_line(line: &str) -> Option<Bound> {
    if !line.contains("bound") {
        return None;
    }
    let get = |k: &str| field(line, k).and_then(|v| v.parse::<SocketAddr>().ok());
    let b = Bound {
        inbound: get("inbound"),
        outbound: get("outbound"),
        admin: get("admin"),
    };
    if b.inbound.is_none() && b.outbound.is_none() && b.admin.is_none() {
        return None;
    }
    Some(b)
}

/// A running proxy. Killed on drop; if the test is panicking, its log tail is
/// printed first, so every failure shows what the proxy said.
pub struct Proxy {
    child: Child,
    pid: u32,
    /// Shared with the process that takes over from this one.
    dir: Arc<TempDir>,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    builder: ProxyBuilder,
    exited: Option<ExitStatus>,
    /// The output readers; they end at EOF, once the process has exited.
    readers: Vec<JoinHandle<()>>,
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The outbound listener's bound address; panics if not configured.
    pub fn outbound(&self) -> SocketAddr {
        self.outbound.expect("proxy has no [outbound] listener")
    }
    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("proxy has no [inbound] listener")
    }
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("proxy reported no admin address")
    }
    pub fn config_path(&self) -> &Path {
        &self.config
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The builder this proxy was started from (to derive a reload file).
    pub fn builder(&self) -> &ProxyBuilder {
        &self.builder
    }

    /// Everything the proxy printed so far, one line each.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }
    /// The last `n` lines of output, for failure messages.
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

    /// Overwrites the config file (followed by [`Proxy::signal`] SIGHUP to reload).
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config, toml)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.config.display()));
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGHUP`, ...).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid);
    }

    /// Waits for the process to exit; None if it still runs after `timeout`.
    /// Waits for the output readers to reach EOF, so that `log_lines` holds
    /// everything the exited process wrote.
    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// The exit status if the process has exited, without waiting for its
    /// output to end (a successor it started holds the same pipes).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
            }
        }
        self.exited
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                self.join_readers();
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size from /proc/PID/status, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", self.pid));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid))
    }

    /// Starts the same binary on the same config with `--upgrade-from
    /// socket` (the config's `[proxy] upgrade_socket`): it takes this
    /// proxy's listeners over, and this one drains and exits. Returns the
    /// new proxy once it logged its bound addresses.
    pub fn upgrade(&self, socket: &Path) -> Proxy {
        let arg = std::ffi::OsString::from("--upgrade-from");
        self.builder.clone().launch(
            self.dir.clone(),
            self.config.clone(),
            &[&arg, socket.as_os_str()],
        )
    }

    /// `GET path` on the admin endpoint.
    pub fn admin_get(&self, path: &str) -> Response {
        let mut c = self.client_to(self.admin());
        c.request(
            &Request::get(path)
                .host("localhost")
                .header("Connection", "close"),
        )
    }

    /// Scrapes `/metrics`; panics unless it answers 200.
    pub fn metrics(&self) -> Metrics {
        let r = self.admin_get("/metrics");
        assert_eq!(
            r.status,
            200,
            "/metrics answered {} {:?}",
            r.status,
            r.body_str()
        );
        Metrics::parse(&r.body_str())
    }

    /// A new client connection to the outbound listener.
    pub fn outbound_client(&self) -> Client {
        self.client_to(self.outbound())
    }
    /// A new client connection to the inbound listener.
    pub fn inbound_client(&self) -> Client {
        self.client_to(self.inbound())
    }
    /// A connection to `addr` from the proxy's host (its network namespace
    /// when it runs on a test host).
    pub fn client_to(&self, addr: SocketAddr) -> Client {
        Client::try_connect_in(self.builder.netns.as_deref(), addr)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }
    /// The test host's namespace the proxy runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.builder.netns.as_deref()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- coremesh-proxy (pid {}) config {}:\n{}\n---- last 60 lines of its output:\n{}\n----",
                self.pid,
                self.config.display(),
                self.builder.render(),
                self.log_tail(60)
            );
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_bound_line() {
        let b = parse_bound_line(
            "2025-01-01T00:00:00Z  INFO coremesh_proxy: bound inbound=127.0.0.1:40123 outbound=127.0.0.1:40124 admin=127.0.0.1:40125",
        )
        .unwrap();
        assert_eq!(b.inbound.unwrap().port(), 40123);
        assert_eq!(b.outbound.unwrap().port(), 40124);
        assert_eq!(b.admin.unwrap().port(), 40125);

        let b = parse_bound_line("INFO bound outbound=\"[::1]:5\" admin=127.0.0.1:6").unwrap();
        assert!(b.inbound.is_none());
        assert_eq!(b.outbound.unwrap().to_string(), "[::1]:5");
        assert!(parse_bound_line("INFO listening on port").is_none());
    }

    #[test]
    fn parses_json_bound_line() {
        let b = parse_bound_line(
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"bound","outbound":"127.0.0.1:7","admin":"127.0.0.1:8"},"target":"coremesh_proxy"}"#,
        )
        .unwrap();
        assert_eq!(b.outbound.unwrap().port(), 7);
        assert_eq!(b.admin.unwrap().port(), 8);
    }

    #[test]
    fn renders_toml() {
        let t = ProxyBuilder::new("web")
            .cores(2)
            .outbound()
            .passthrough(true)
            .service_raw("api", &["127.0.0.1:1".into(), "127.0.0.1:2".into()])
            .timeout("head_read", "1s")
            .limit("max_headers", 10)
            .render();
        assert!(
            t.contains("[proxy]\nservice = \"web\"\ncores = 2\nadmin = \"127.0.0.1:0\"\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "[[services]]\nname = \"api\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]"
            ),
            "{t}"
        );
        assert!(t.contains("[timeouts]\nhead_read = \"1s\""), "{t}");
        assert!(t.contains("[limits]\nmax_headers = 10"), "{t}");
        assert!(t.contains("passthrough = true"), "{t}");
    }
}
