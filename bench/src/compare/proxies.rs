//! The proxies the harness knows: where to find them, the equivalent
//! configuration each one gets, and how to start, check and stop them.
//!
//! "Equivalent" means, for every proxy: one worker process / thread / shard,
//! keep-alive to the client and a keep-alive pool to the origin, no access
//! log, and connection and file-descriptor limits far above what a scenario
//! opens (Debian's nginx ships `worker_connections 768`, which the idle
//! connection scenario would hit). Each proxy listens on 127.0.0.1 and
//! forwards every request, whatever its path, to the one origin.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::http::{FrameError, ResponseReader, Step};

/// Why a proxy (or another process of the run) did not start. The caller
/// says which proxy; the variant says which step and which file.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port to listen on")]
    FreePort(#[source] std::io::Error),
    #[error("cannot write the configuration {}", path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the log {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no \"bound {listener}=\" line on stderr within 15 s; see {}", log.display())]
    NoBoundLine { listener: String, log: PathBuf },
    #[error("exited with {status} at start; see {}", log.display())]
    Exited { status: ExitStatus, log: PathBuf },
    #[error("not listening on {addr} after 15 s")]
    NotListening { addr: SocketAddr },
}

/// Why a check request got no status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set a read timeout on the connection to {addr}")]
    ReadTimeout {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("write")]
    Write(#[source] std::io::Error),
    #[error("read")]
    Read(#[source] std::io::Error),
    #[error("bad response")]
    Response(#[source] FrameError),
}

/// Which proxy a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Coremesh,
    Nginx,
    Haproxy,
    Envoy,
    Caddy,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "coremesh" => Kind::Coremesh,
            "nginx" => Kind::Nginx,
            "haproxy" => Kind::Haproxy,
            "envoy" => Kind::Envoy,
            "caddy" => Kind::Caddy,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Coremesh => "coremesh",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Envoy => "envoy",
            Kind::Caddy => "caddy",
        }
    }

    pub fn config_ext(self) -> &'static str {
        match self {
            Kind::Coremesh => "toml",
            Kind::Nginx => "conf",
            Kind::Haproxy => "cfg",
            Kind::Envoy => "yaml",
            Kind::Caddy => "Caddyfile",
        }
    }
}

/// Finds an executable on PATH or in the sbin directories (nginx and
/// haproxy live in /usr/sbin, which is not on every user's PATH).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First line of `bin ARGS` (stdout or stderr), for the report.
pub fn version(bin: &Path, kind: Kind) -> String {
    let args: &[&str] = match kind {
        Kind::Coremesh => &["--version"],
        Kind::Nginx => &["-v"],
        Kind::Haproxy => &["-v"],
        Kind::Envoy => &["--version"],
        Kind::Caddy => &["version"],
    };
    Command::new(bin)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// A port the OS says is free now (bound and released: a small race,
/// acceptable on a benchmark host).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Client connections every proxy is configured to accept: as many as the
/// file-descriptor limit allows with one upstream connection each (HAProxy
/// refuses to start when its maxconn needs more fds than it may open).
pub fn max_conns(nofile: u64) -> u64 {
    (nofile / 2).saturating_sub(100).clamp(1000, 100_000)
}

/// HAProxy's `global` and `defaults` sections, shared by every generated
/// HAProxy config: one thread, connection limits from RLIMIT_NOFILE, no
/// access log, long keep-alive. `extra_global` lines (indented, each ending
/// in a newline) go at the end of `global`.
pub fn haproxy_head(what: &str, extra_global: &str, dir: &Path, nofile: u64) -> String {
    let conns = max_conns(nofile);
    format!(
        r#"# coremesh-bench compare: {what}.
global
    nbthread 1
    maxconn {conns}
    pidfile {d}/haproxy.pid
{extra_global}
defaults
    mode http
    # No "log" line: no access log.
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    maxconn {conns}
"#,
        d = dir.display()
    )
}

/// The configuration file text for `kind` listening on `port` (ignored by
/// coremesh, which binds port 0 and reports the port) and forwarding to
/// `origin`. `dir` holds the proxy's own files (pid, temp, logs); `nofile`
/// is the file-descriptor limit the proxy inherits.
pub fn config(kind: Kind, port: u16, origin: SocketAddr, dir: &Path, nofile: u64) -> String {
    let d = dir.display();
    let conns = max_conns(nofile);
    let fds = conns * 2 + 100;
    match kind {
        Kind::Coremesh => format!(
            "# coremesh-bench compare: one shard, outbound listener forwarding Host: origin\n\
             # to the bench origin. Access log is off unless [proxy] access_log is set.\n\
             [proxy]\n\
             service = \"bench\"\n\
             cores = 1\n\
             admin = \"127.0.0.1:0\"\n\
             \n\
             [outbound]\n\
             listen = \"127.0.0.1:0\"\n\
             \n\
             [[services]]\n\
             name = \"origin\"\n\
             endpoints = [\"{origin}\"]\n"
        ),
        Kind::Nginx => format!(
            r#"# coremesh-bench compare: nginx as a reverse proxy, one worker.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fds};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;

events {{
    # Debian's default is 768, which the idle-connection scenario exceeds.
    worker_connections {fds};
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    # Keep client connections open as long as the benchmark does.
    keepalive_requests 10000000;
    keepalive_timeout 300s;

    upstream origin {{
        server {origin};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            # HTTP/1.1 and no "Connection: close" upstream: pooled keep-alive.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Stream in memory; never spool large bodies to disk.
            proxy_buffering on;
            proxy_buffers 16 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"#
        ),
        Kind::Haproxy => format!(
            r#"{head}
frontend bench
    bind 127.0.0.1:{port}
    default_backend origin

backend origin
    # Reuse idle server connections across client connections (a pool).
    http-reuse always
    server origin {origin} maxconn {conns}
"#,
            head = haproxy_head("HAProxy in HTTP mode, one thread", "", dir, nofile)
        ),
        Kind::Envoy => format!(
            r#"# coremesh-bench compare: Envoy with --concurrency 1 (set on the command line).
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          # No access_log entry: no access log.
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: origin }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - max_connections: {conns}
        max_pending_requests: {conns}
        max_requests: {conns}
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {oport} }}
"#,
            ip = origin.ip(),
            oport = origin.port()
        ),
        Kind::Caddy => format!(
            r#"# coremesh-bench compare: Caddy, GOMAXPROCS=1 (set in the environment).
{{
    admin off
    auto_https off
    persist_config off
}}

http://:{port} {{
    bind 127.0.0.1
    # Caddy writes no access log unless a "log" directive asks for one.
    reverse_proxy {origin} {{
        transport http {{
            keepalive 300s
            keepalive_idle_conns 256
        }}
    }}
}}
"#
        ),
    }
}

/// A proxy (or the origin) running as a child of the harness.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a process runs: the CPUs (a taskset list) and the taskset that
/// pins it to them (None: taskset is missing and nothing is pinned).
#[derive(Debug, Clone, Copy)]
pub struct Pin<'a> {
    pub cpus: &'a str,
    pub taskset: Option<&'a Path>,
}

impl Pin<'_> {
    /// `bin` under a `taskset -c CPUS` prefix, or alone when taskset is
    /// missing.
    pub fn command(self, bin: &Path) -> Command {
        match self.taskset {
            Some(t) => {
                let mut c = Command::new(t);
                c.arg("-c").arg(self.cpus).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }
}

/// Writes the configuration (coremesh's with `extra` TOML appended),
/// starts the proxy pinned by `pin`, and waits until it accepts
/// connections.
#[allow(clippy::too_many_arguments)] // three call sites, each naming every part of one instance
pub fn start(
    nofile: u64,
    kind: Kind,
    label: &str,
    bin: &Path,
    origin: SocketAddr,
    dir: &Path,
    pin: Pin<'_>,
    extra: &str,
) -> Result<Running, StartError> {
    let own = dir.join("run").join(file_label(label));
    create_dir(&own)?;
    let configs = dir.join("configs");
    create_dir(&configs)?;
    let port = if kind == Kind::Coremesh {
        0
    } else {
        free_port().map_err(StartError::FreePort)?
    };
    let config_path = configs.join(format!("{}.{}", file_label(label), kind.config_ext()));
    // `extra` is TOML: only coremesh's configuration takes it.
    let mut text = config(kind, port, origin, &own, nofile);
    if kind == Kind::Coremesh {
        text.push_str(extra);
    }
    write_config(&config_path, &text)?;
    let log_path = own.join("stderr.log");
    if kind == Kind::Coremesh {
        return start_coremesh(bin, config_path, log_path, "outbound", pin);
    }
    spawn(kind, bin, &own, config_path, port, log_path, pin)
}

/// Starts a proxy other than coremesh with the configuration already
/// written at `config_path` (its own files in `own`), pinned by `pin`,
/// and waits until it accepts connections on `port`.
pub fn spawn(
    kind: Kind,
    bin: &Path,
    own: &Path,
    config_path: PathBuf,
    port: u16,
    log_path: PathBuf,
    pin: Pin<'_>,
) -> Result<Running, StartError> {
    let mut cmd = pin.command(bin);
    match kind {
        Kind::Coremesh => {
            return start_coremesh(bin, config_path, log_path, "outbound", pin);
        }
        Kind::Nginx => {
            cmd.arg("-p")
                .arg(own)
                .arg("-c")
                .arg(&config_path)
                .arg("-e")
                .arg(own.join("nginx-error.log"));
        }
        Kind::Haproxy => {
            cmd.arg("-f").arg(&config_path).arg("-db");
        }
        Kind::Envoy => {
            cmd.arg("-c").arg(&config_path).args([
                "--concurrency",
                "1",
                "--log-level",
                "warn",
                "--disable-hot-restart",
            ]);
        }
        Kind::Caddy => {
            cmd.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&config_path)
                .env("GOMAXPROCS", "1");
        }
    }
    let (log, log2) = open_log(&log_path)?;
    cmd.stdin(Stdio::null()).stdout(log2).stderr(log);
    let child = cmd.spawn().map_err(|source| StartError::Spawn {
        bin: bin.to_path_buf(),
        source,
    })?;
    let mut running = Running {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        config_path,
        log_path,
    };
    wait_listening(&mut running)?;
    Ok(running)
}

/// Starts coremesh with the configuration at `config_path`, pinned by
/// `pin`, its output in `log_path`. coremesh binds port 0 and says which
/// port it got on stderr (`... bound inbound=ADDR outbound=ADDR
/// admin=ADDR`); the address named `listener` (`inbound` or `outbound`) is
/// the one returned in [`Running::addr`], once it accepts connections.
pub fn start_coremesh(
    bin: &Path,
    config_path: PathBuf,
    log_path: PathBuf,
    listener: &str,
    pin: Pin<'_>,
) -> Result<Running, StartError> {
    start_coremesh_with(pin.command(bin), bin, config_path, log_path, listener)
}

/// [`start_coremesh`] by `cmd`, which runs `bin` (in a network namespace,
/// with environment variables, ...); the listening check connects from
/// the calling thread.
pub fn start_coremesh_with(
    mut cmd: Command,
    bin: &Path,
    config_path: PathBuf,
    log_path: PathBuf,
    listener: &str,
) -> Result<Running, StartError> {
    let (log, stdout_log) = open_log(&log_path)?;
    cmd.arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(stdout_log)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
        bin: bin.to_path_buf(),
        source,
    })?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let key = format!("{listener}=");
    std::thread::spawn(move || copy_and_find_bound(stderr, log, &key, tx));
    let addr = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::NoBoundLine {
                listener: listener.to_string(),
                log: log_path,
            });
        }
    };
    let mut running = Running {
        child,
        addr,
        config_path,
        log_path,
    };
    wait_listening(&mut running)?;
    Ok(running)
}

/// Waits until `r` accepts a TCP connection (15 s at most), or has exited.
fn wait_listening(r: &mut Running) -> Result<(), StartError> {
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = r.child.try_wait() {
            return Err(StartError::Exited {
                status,
                log: r.log_path.clone(),
            });
        }
        if TcpStream::connect_timeout(&r.addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(15) {
            return Err(StartError::NotListening { addr: r.addr });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `fs::create_dir_all`, naming the directory on failure.
pub fn create_dir(path: &Path) -> Result<(), StartError> {
    fs::create_dir_all(path).map_err(|source| StartError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a generated configuration, naming it on failure.
pub fn write_config(path: &Path, text: &str) -> Result<(), StartError> {
    fs::write(path, text).map_err(|source| StartError::WriteConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a process's log file: two handles, for stderr and stdout.
fn open_log(path: &Path) -> Result<(fs::File, fs::File), StartError> {
    let log_err = |source| StartError::Log {
        path: path.to_path_buf(),
        source,
    };
    let log = fs::File::create(path).map_err(log_err)?;
    let other = log.try_clone().map_err(log_err)?;
    Ok((log, other))
}

/// Copies coremesh's stderr to its log; sends the address after `key`
/// (`outbound=`) on its `bound` line.
fn copy_and_find_bound(
    stderr: impl Read,
    mut log: fs::File,
    key: &str,
    tx: mpsc::Sender<SocketAddr>,
) {
    let mut sent = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if !sent {
            if let Some(a) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.trim_matches('"').parse().ok())
            {
                sent = tx.send(a).is_ok();
            }
        }
    }
}

/// "coremesh#2" -> "coremesh-2": labels as file names.
pub fn file_label(label: &str) -> String {
    label.replace(['#', '/', ' '], "-")
}

/// Sends one `GET path` with `Host: origin` and returns the status.
pub fn probe(addr: SocketAddr, path: &str) -> Result<u16, ProbeError> {
    probe_host(addr, path, "origin")
}

/// Sends one `GET path` with `Host: host` and returns the status.
pub fn probe_host(addr: SocketAddr, path: &str, host: &str) -> Result<u16, ProbeError> {
    let mut s = connect(addr)?;
    request_host(&mut s, path, host)
}

/// A TCP connection to `addr` (2 s to connect) whose reads time out
/// after 5 s.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|source| ProbeError::Connect { addr, source })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|source| ProbeError::ReadTimeout { addr, source })?;
    Ok(s)
}

/// One keep-alive request with `Host: origin` on an open connection;
/// returns the status.
pub fn request_on(s: &mut TcpStream, path: &str) -> Result<u16, ProbeError> {
    request_host(s, path, "origin")
}

/// One keep-alive request with `Host: host` on any open byte stream (a
/// TCP connection, a TLS session over one); returns the status.
pub fn request_host<S: Read + Write>(s: &mut S, path: &str, host: &str) -> Result<u16, ProbeError> {
    let req = crate::http::build_request(path, host, &[], 0, false);
    s.write_all(&req).map_err(ProbeError::Write)?;
    read_status(s)
}

/// Reads one whole response from `s`; returns its status.
pub fn read_status<S: Read>(s: &mut S) -> Result<u16, ProbeError> {
    let mut r = ResponseReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..]).map_err(ProbeError::Read)?;
        if n == 0 {
            return r
                .feed_eof()
                .map(|resp| resp.status)
                .map_err(ProbeError::Response);
        }
        filled += n;
        let (used, step) = r.feed(&buf[..filled]).map_err(ProbeError::Response)?;
        buf.copy_within(used..filled, 0);
        filled -= used;
        if let Step::Done(resp) = step {
            return Ok(resp.status);
        }
    }
}

#[cfg(test)]
mod tests;
