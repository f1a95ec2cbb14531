//! `coremesh-bench`: load generator, origin and proxy comparison. See the
//! library's crate doc for how the parts fit together.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use coremesh_bench::compare::{self, Scenario};
use coremesh_bench::failover::{self, Case};
use coremesh_bench::{error_chain, fleet, http, load, origin, parse_duration, soak, sys};

/// What a subcommand fails with: a library error (shown with its causes)
/// or a message made here.
type CmdResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Parser)]
#[command(
    name = "coremesh-bench",
    version,
    about = "Open-loop HTTP/1.1 load generator, fast origin, and side-by-side proxy comparison"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send HTTP/1.1 requests (or h2c with --h2, gRPC with --grpc) at a
    /// constant rate (open loop) or as fast as possible (--rate 0) and
    /// report latency from each request's intended send time.
    Load(LoadArgs),
    /// Serve HTTP/1.1 keep-alive responses from pre-built bytes
    /// (`GET /size/N` answers with N bytes); h2c with prior knowledge and
    /// a unary gRPC method on the same port.
    Origin(OriginArgs),
    /// Compare coremesh with other proxies installed here, side by side.
    Compare(CompareArgs),
    /// Simulate a fleet of proxy sessions against coremesh-control, apply a
    /// route change and time its propagation to every affected session.
    Fleet(FleetArgs),
    /// Run the quickstart's mesh in network namespaces and fail parts of
    /// it (an app, a subset, a proxy, a host's link; with control up and
    /// down): failed requests, time until no request goes to the faulty
    /// endpoint, added p99.
    Failover(FailoverArgs),
    /// Run the quickstart's mesh (HTTP/1.1, h2, gRPC, a TCP service)
    /// under open-loop load while apps, endpoints and control are killed
    /// and restarted, proxies reloaded, routes changed and certificates
    /// renewed: every failure attributed to a fault or unexplained, RSS and
    /// fds of every process over time. Exits non-zero when it fails.
    Soak(SoakArgs),
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// How long the load runs (e.g. 3m, 1h).
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    duration: Duration,
    /// Resource trends are fitted after this; default a sixth of
    /// --duration, at least 30 s.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// A fault (of the rotation) starts this often.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    fault_interval: Duration,
    /// How long a killed app, proxy or control stays down.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    down: Duration,
    /// After a killed process is back, how long failures on its way are
    /// still counted as its doing.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// api's Route is applied with other weights this often.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    route_interval: Duration,
    /// Every process's RSS, fds and sockets are read this often; default
    /// --duration / 600, at least 1 s.
    #[arg(long, value_parser = parse_duration)]
    sample_interval: Option<Duration>,
    /// Lifetime of the certificates control issues (renewed at about two
    /// thirds of it).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    cert_lifetime: Duration,
    /// HTTP/1.1 GETs per second (service api).
    #[arg(long, default_value_t = 100.0)]
    http1_rate: f64,
    /// h2c GETs per second (service api).
    #[arg(long, default_value_t = 50.0)]
    h2_rate: f64,
    /// Unary gRPC calls per second (service api).
    #[arg(long, default_value_t = 50.0)]
    grpc_rate: f64,
    /// HTTP/1.1 GETs per second through the TCP service db.
    #[arg(long, default_value_t = 50.0)]
    tcp_rate: f64,
    /// The coremesh proxy binary; default coremesh-proxy next to this one.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// The coremesh-control binary; default coremesh-control next to this one.
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Configs, each process's logs, report.json, report.md, resources.svg.
    #[arg(long, default_value = "bench-results/soak")]
    out: PathBuf,
    /// Print the report as JSON (else markdown).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    /// GET requests per second, open loop, into web's outbound listener.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// The fault window of each phase: load after the fault.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the fault in each phase.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    baseline: Duration,
    /// Phases, comma-separated (default all): app-kill, subset-kill,
    /// proxy-kill, link-down, control-down+app-kill,
    /// control-down+link-down, strict+app-kill, strict+subset-kill.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// The coremesh proxy binary; default coremesh-proxy next to this one.
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// The coremesh-control binary; default coremesh-control next to this one.
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Generated configs, each process's logs, report.json and report.md.
    #[arg(long, default_value = "bench-results/failover")]
    out: PathBuf,
    /// Print the report as JSON (else markdown).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// Proxy sessions (QUIC connections), each with a client certificate.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Control's QUIC address (a running control; not with --replicas).
    #[arg(
        long,
        required_unless_present = "replicas",
        conflicts_with = "replicas"
    )]
    control: Option<std::net::SocketAddr>,
    /// Control's API address (HTTPS, verified with DATA_DIR/api-ca.pem).
    #[arg(long, default_value = "127.0.0.1:7080")]
    api: std::net::SocketAddr,
    /// Control's data directory (operator.credential, ca.pem).
    #[arg(
        long,
        required_unless_present = "replicas",
        conflicts_with = "replicas"
    )]
    data_dir: Option<PathBuf>,
    /// Start this many coremesh-control replicas on --store instead (on
    /// loopback, data in a temp dir removed after the run): session i
    /// connects to replica i % N, the applies go through replica 0.
    #[arg(long, requires = "store")]
    replicas: Option<usize>,
    /// The replicas' etcd store: etcd://HOST:PORT,... (a fresh key prefix
    /// per run, left in etcd afterwards: delete it with `etcdctl del
    /// --prefix`), or etcd://local: a three-member etcd cluster started
    /// here from /usr/bin/etcd on loopback for the run.
    #[arg(long, requires = "replicas")]
    store: Option<String>,
    /// The coremesh-control binary for --replicas; default
    /// coremesh-control next to this one.
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// With --replicas: keep the run's work directory (each replica's
    /// control.log and data directory, the local etcd members' logs) and
    /// print where it is.
    #[arg(long, requires = "replicas")]
    keep_work_dir: bool,
    /// Services (fleet-000, fleet-001, ...).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Registered endpoints per service (the first sessions of each service).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Services each session calls.
    #[arg(long, default_value_t = 5)]
    calls: usize,
    /// Services whose Route the measured apply changes; default all.
    #[arg(long)]
    changed: Option<usize>,
    /// Control's pid for RSS/CPU; default: the coremesh-control started
    /// with this --data-dir.
    #[arg(long)]
    control_pid: Option<u32>,
    /// Client UDP sockets the sessions are spread over.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Handshakes in flight while connecting.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Before the apply, wait until no snapshot has arrived for this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
    /// How long to wait for every affected session after the apply.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Do not ask control for compressed snapshots (the proxy does ask;
    /// this shows what compression buys).
    #[arg(long)]
    no_compression: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Target URL (http only): http://HOST:PORT/PATH.
    #[arg(long)]
    url: String,
    /// Extra request header, "Name: value"; repeatable. A Host header here
    /// replaces the one from the URL.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Requests per second over all connections; 0 = closed loop (max throughput).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to measure (30s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Run this long first without recording latency.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Concurrent connections (keep-alive, one request in flight on each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Event-loop threads; connections and rate are split evenly.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Request body size in bytes (sent as POST with Content-Length when > 0).
    #[arg(long, default_value_t = 0)]
    body_size: usize,
    /// Open a new connection for every request (and send Connection: close).
    #[arg(long)]
    new_conn: bool,
    /// After the run, how long in-flight requests may take before they count as timeouts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// HTTP/2 over cleartext (h2c, prior knowledge) instead of HTTP/1.1:
    /// GET requests, up to --streams concurrent streams per connection.
    #[arg(long)]
    h2: bool,
    /// Unary gRPC calls over h2c (implies --h2): POST
    /// /coremesh.bench.Bench/Unary, one length-prefixed message, each call
    /// checked for grpc-status 0 in the trailers.
    #[arg(long)]
    grpc: bool,
    /// HTTP/2: concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// gRPC: the reply payload size each call asks for.
    #[arg(long, default_value_t = 128)]
    grpc_size: u32,
}

#[derive(Debug, Args)]
struct OriginArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Response body size in bytes for paths other than /size/N.
    #[arg(long, default_value_t = 128)]
    body_size: usize,
    /// Delay before each response (e.g. 10ms).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    delay: Duration,
    /// Name this origin in an `x-instance` header of every response (at
    /// most 31 bytes), so a client can tell which instance answered.
    #[arg(long)]
    instance: Option<String>,
    /// Also answer HTTP/1.1 on a Unix socket at this path (a socket file
    /// left there by an earlier run is replaced; mode 0666). stdout keeps
    /// one line, the TCP address (callers may stop reading after it); the
    /// path goes to stderr.
    #[arg(long)]
    unix: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Proxies to compare, comma-separated: coremesh, nginx, haproxy, envoy,
    /// caddy. Missing ones are skipped with a note.
    #[arg(
        long,
        default_value = "coremesh,nginx,haproxy,envoy,caddy",
        value_delimiter = ','
    )]
    proxies: Vec<String>,
    /// Rounds; each round runs every scenario through every target in turn
    /// (the direct baseline first, the proxies starting one place later
    /// every round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPUs for the proxies (taskset list: "1", "2,3"); default the last CPU.
    /// The origin and load generator get the other CPUs.
    #[arg(long, value_parser = sys::parse_cpu_list)]
    proxy_cores: Option<Vec<usize>>,
    /// Results JSON; generated configs, logs and pid files go next to it.
    #[arg(long, default_value = "bench-results/results.json")]
    out: PathBuf,
    /// Write SVG charts (cpu.svg, throughput.svg, latency.svg) here.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// The coremesh proxy binary.
    #[arg(long, default_value = "target/release/coremesh-proxy")]
    coremesh_bin: PathBuf,
    /// coremesh built with --features runtime-glommio; compared when present.
    #[arg(long, default_value = "target/glommio/release/coremesh-proxy")]
    coremesh_glommio_bin: PathBuf,
    /// The coremesh-control binary, for the policy scenarios.
    #[arg(long, default_value = "target/release/coremesh-control")]
    control_bin: PathBuf,
    /// Measured time per run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measured run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Client connections in every load run.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Fixed rate of the latency scenarios; default a quarter of the slowest
    /// target's saturation throughput in round 1 (`small` for `rate`,
    /// `mtls` for `mtls-rate`).
    #[arg(long)]
    rate: Option<f64>,
    /// Idle keep-alive connections opened to measure RSS per connection.
    #[arg(long, default_value_t = 5000)]
    idle_conns: usize,
    /// The burst scenario: new connections in the burst, each with one
    /// request, all in flight together.
    #[arg(long, default_value_t = 2000)]
    burst_conns: usize,
    /// The burst scenario: how long the burst's connections sit idle
    /// before the proxy's RSS is read.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    burst_idle: Duration,
    /// Scenarios, comma-separated: small, rate, 16k, 1m, newconn, idle,
    /// policy-plain, policy-full (`policy` = both: load -> web proxy ->
    /// mutual TLS -> api proxy -> origin under coremesh-control, without
    /// and with 100 Routes and a Resilience block; CPU of both proxies),
    /// mtls, mtls-rate (load -> outbound proxy -> mutual TLS 1.3 -> inbound
    /// proxy -> origin, a pair of each proxy kind, harness-made
    /// certificates; saturation and fixed rate; CPU of both proxies),
    /// h2, h2-rate (h2c through one proxy, --h2-connections x
    /// --h2-streams, 128 B responses), h2-idle (RSS per idle h2c client
    /// connection), grpc, grpc-rate (unary gRPC: load -> outbound proxy ->
    /// h2 over mutual TLS 1.3 -> inbound proxy -> origin; CPU of both
    /// proxies); `http2` = all five; burst (RSS of a fresh one-hop proxy
    /// before, during and after --burst-conns requests in flight together
    /// on new connections, then per connection after --burst-idle).
    #[arg(
        long,
        default_value = "small,rate,16k,1m,newconn,idle",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Do not run coremesh a second time (the A/A noise pair).
    #[arg(long)]
    no_aa: bool,
    /// mtls scenarios: also run `coremesh-unix`, `nginx-unix` and
    /// `haproxy-unix` pairs, whose inbound proxy reaches the origin over a
    /// Unix socket instead of TCP (the origin listens on both).
    #[arg(long)]
    app_unix: bool,
    /// Tracing cost: one more coremesh one-hop target per sampling ratio
    /// (`--tracing 0.01,1.0` adds `coremesh-trace-0.01` and
    /// `coremesh-trace-1`), configured with `[tracing] sampling = R` and
    /// a collector the bench runs itself (an OTLP/HTTP sink that answers
    /// every export with 200 and counts them).
    #[arg(long, value_delimiter = ',')]
    tracing: Vec<f64>,
    /// Count the proxies' system calls per request with `perf stat -e
    /// raw_syscalls:sys_enter` (needs perf; costs each system call a
    /// little, so compare CPU from a run without it).
    #[arg(long)]
    count_syscalls: bool,
    /// HTTP/2 scenarios: client connections.
    #[arg(long, default_value_t = 8)]
    h2_connections: usize,
    /// HTTP/2 scenarios: concurrent streams on each client connection (all
    /// busy at saturation; at most this many at the fixed rate).
    #[arg(long, default_value_t = 16)]
    h2_streams: usize,
    /// gRPC scenarios: send this deadline (`grpc-timeout`) with every call
    /// (e.g. 5s); by default calls carry none.
    #[arg(long, value_parser = parse_duration)]
    grpc_timeout: Option<Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Load(a) => cmd_load(a),
        Cmd::Origin(a) => cmd_origin(a),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Fleet(a) => cmd_fleet(a),
        Cmd::Failover(a) => cmd_failover(a),
        Cmd::Soak(a) => cmd_soak(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coremesh-bench: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn cmd_load(a: LoadArgs) -> CmdResult {
    let (host, addr, path) = load::parse_url(&a.url)?;
    let headers = a
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .filter(|(n, _)| !n.is_empty())
                .ok_or_else(|| format!("--header {h:?}: expected \"Name: value\""))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    sys::raise_nofile(a.connections as u64 + 1024);
    let shown = match headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")) {
        Some((_, v)) => format!("{} (Host: {v})", a.url),
        None => a.url.clone(),
    };
    if a.h2 || a.grpc {
        if a.new_conn || a.body_size > 0 {
            return Err("--new-conn and --body-size are HTTP/1.1 only".into());
        }
        if a.streams == 0 {
            return Err("--streams must be at least 1".into());
        }
        let authority = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map_or(host.clone(), |(_, v)| v.clone());
        let cfg = load::http2::H2Config {
            url: shown,
            addr,
            authority,
            path,
            headers: headers
                .into_iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect(),
            mode: if a.grpc {
                load::http2::Mode::Grpc {
                    reply_size: a.grpc_size,
                }
            } else {
                load::http2::Mode::Get
            },
            rate: a.rate,
            duration: a.duration,
            warmup: a.warmup,
            connections: a.connections,
            streams: a.streams,
            threads: a.threads,
            drain: a.drain,
        };
        let report = load::http2::run(&cfg).map_err(|e| format!("load: {e}"))?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
        } else {
            print!("{}", report.render());
        }
        return Ok(());
    }
    let cfg = load::LoadConfig {
        url: shown,
        addr,
        request: http::build_request(&path, &host, &headers, a.body_size, a.new_conn),
        rate: a.rate,
        duration: a.duration,
        warmup: a.warmup,
        connections: a.connections,
        threads: a.threads,
        new_conn: a.new_conn,
        drain: a.drain,
        timeline: false,
    };
    let report = load::run(&cfg).map_err(|e| format!("load: {e}"))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn cmd_origin(a: OriginArgs) -> CmdResult {
    sys::raise_nofile(1 << 20);
    let listener = origin::bind(a.listen).map_err(|e| format!("--listen {}: {e}", a.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let unix = match &a.unix {
        Some(p) => Some(origin::bind_unix(p).map_err(|e| format!("--unix {}: {e}", p.display()))?),
        None => None,
    };
    println!("listening on {bound}");
    if let Some(p) = &a.unix {
        eprintln!("listening on unix:{}", p.display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if let Some(i) = &a.instance {
        if http::Tag::new(i.as_bytes()).is_none() || i.contains(['\r', '\n']) {
            return Err(format!("--instance {i:?}: at most 31 bytes, one line").into());
        }
    }
    let cfg = origin::OriginConfig {
        body_size: a.body_size,
        delay: a.delay,
        instance: a.instance,
    };
    origin::serve_with_unix(listener, unix, cfg, Arc::new(AtomicBool::new(false)))
        .map_err(|e| format!("origin: {e}"))?;
    Ok(())
}

fn cmd_compare(a: CompareArgs) -> CmdResult {
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in &a.scenarios {
        let named = match s.trim() {
            "policy" => vec![Scenario::PolicyPlain, Scenario::PolicyFull],
            "http2" => vec![
                Scenario::H2,
                Scenario::H2Rate,
                Scenario::H2Idle,
                Scenario::Grpc,
                Scenario::GrpcRate,
            ],
            name => vec![Scenario::parse(name).ok_or_else(|| {
                format!(
                    "--scenarios: unknown {s:?} (small, rate, 16k, 1m, newconn, idle, policy-plain, policy-full, policy, mtls, mtls-rate, h2, h2-rate, h2-idle, grpc, grpc-rate, http2)"
                )
            })?],
        };
        for sc in named {
            if !scenarios.contains(&sc) {
                scenarios.push(sc);
            }
        }
    }
    if a.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if a.burst_conns == 0 {
        return Err("--burst-conns must be at least 1".into());
    }
    if a.h2_connections == 0 || a.h2_streams == 0 {
        return Err("--h2-connections and --h2-streams must be at least 1".into());
    }
    if let Some(r) = a.tracing.iter().find(|r| !(0.0..=1.0).contains(*r)) {
        return Err(format!("--tracing: {r} is not a sampling ratio from 0.0 to 1.0").into());
    }
    let opts = compare::Options {
        proxies: a
            .proxies
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        rounds: a.rounds,
        proxy_cores: a.proxy_cores,
        out: a.out,
        svg_dir: a.svg_dir,
        coremesh_bin: a.coremesh_bin,
        coremesh_glommio_bin: a.coremesh_glommio_bin,
        control_bin: a.control_bin,
        duration: a.duration,
        warmup: a.warmup,
        connections: a.connections,
        rate: a.rate,
        idle_conns: a.idle_conns,
        burst_conns: a.burst_conns,
        burst_idle: a.burst_idle,
        scenarios,
        aa: !a.no_aa,
        app_unix: a.app_unix,
        count_syscalls: a.count_syscalls,
        tracing: a.tracing,
        h2_connections: a.h2_connections,
        h2_streams: a.h2_streams,
        grpc_timeout: a.grpc_timeout,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let results = compare::run(&opts)?;
    print!("{}", compare::report::markdown(&results));
    eprintln!("[compare] results: {}", opts.out.display());
    Ok(())
}

fn cmd_fleet(a: FleetArgs) -> CmdResult {
    let replicas = match (a.replicas, a.store) {
        (Some(count), Some(store)) => {
            let bench =
                std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
            let beside = bench
                .parent()
                .map_or(PathBuf::from("coremesh-control"), |d| {
                    d.join("coremesh-control")
                });
            Some(fleet::replicas::ReplicasConfig {
                count,
                store,
                control_bin: a.control_bin.unwrap_or(beside),
                keep: a.keep_work_dir,
            })
        }
        _ => None,
    };
    let cfg = fleet::FleetConfig {
        sessions: a.sessions,
        // Unused with --replicas (clap requires them otherwise).
        control: a
            .control
            .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        api: a.api,
        data_dir: a.data_dir.unwrap_or_default(),
        services: a.services,
        endpoints: a.endpoints,
        calls: a.calls,
        changed: a.changed.unwrap_or(a.services),
        control_pid: a.control_pid,
        sockets: a.sockets,
        concurrency: a.concurrency,
        settle: a.settle,
        timeout: a.timeout,
        threads: a.threads,
        compression: !a.no_compression,
        replicas,
    };
    let report = fleet::run(&cfg, std::env::args().collect::<Vec<_>>().join(" "))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn cmd_failover(a: FailoverArgs) -> CmdResult {
    let cases = if a.faults.is_empty() {
        Case::ALL.to_vec()
    } else {
        a.faults
            .iter()
            .map(|f| {
                Case::parse(f.trim()).ok_or_else(|| {
                    let all: Vec<String> = Case::ALL.iter().map(|c| c.name()).collect();
                    format!("--faults: unknown {f:?} ({})", all.join(", "))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if a.rate <= 0.0 {
        return Err("--rate must be above 0 (the load is open loop)".into());
    }
    let bench = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let beside = |name: &str| bench.parent().map_or(PathBuf::from(name), |d| d.join(name));
    let out = std::path::absolute(&a.out).map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    let opts = failover::Options {
        cases,
        rate: a.rate,
        baseline: a.baseline,
        duration: a.duration,
        bins: failover::topology::Bins {
            proxy: a.proxy_bin.unwrap_or_else(|| beside("coremesh-proxy")),
            control: a.control_bin.unwrap_or_else(|| beside("coremesh-control")),
            bench: bench.clone(),
        },
        out_dir: out.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = failover::run(&opts)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let md = failover::report::markdown(&report);
    for (name, text) in [("report.json", &json), ("report.md", &md)] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{md}");
    }
    Ok(())
}

fn cmd_soak(a: SoakArgs) -> CmdResult {
    for (name, rate) in [
        ("--http1-rate", a.http1_rate),
        ("--h2-rate", a.h2_rate),
        ("--grpc-rate", a.grpc_rate),
        ("--tcp-rate", a.tcp_rate),
    ] {
        if rate <= 0.0 {
            return Err(format!("{name} must be above 0 (the load is open loop)").into());
        }
    }
    if a.duration < Duration::from_secs(30) {
        return Err("--duration must be at least 30s (faults come every few seconds)".into());
    }
    for (name, d) in [
        ("--fault-interval", a.fault_interval),
        ("--route-interval", a.route_interval),
    ] {
        if d.is_zero() {
            return Err(format!("{name} must be above 0").into());
        }
    }
    let warmup = a
        .warmup
        .unwrap_or((a.duration / 6).max(Duration::from_secs(30)));
    if warmup >= a.duration {
        return Err(format!("--warmup {warmup:?} leaves nothing of --duration to judge").into());
    }
    let bench = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let beside = |name: &str| bench.parent().map_or(PathBuf::from(name), |d| d.join(name));
    let out = std::path::absolute(&a.out).map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    let opts = soak::Options {
        duration: a.duration,
        warmup,
        fault_interval: a.fault_interval,
        down: a.down,
        grace: a.grace,
        route_interval: a.route_interval,
        sample_interval: a
            .sample_interval
            .unwrap_or((a.duration / 600).max(Duration::from_secs(1))),
        cert_lifetime: a.cert_lifetime,
        http1_rate: a.http1_rate,
        h2_rate: a.h2_rate,
        grpc_rate: a.grpc_rate,
        tcp_rate: a.tcp_rate,
        bins: soak::topology::Bins {
            proxy: a.proxy_bin.unwrap_or_else(|| beside("coremesh-proxy")),
            control: a.control_bin.unwrap_or_else(|| beside("coremesh-control")),
            bench: bench.clone(),
        },
        out_dir: out.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = soak::run(&opts)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let md = soak::report::markdown(&report);
    for (name, text) in [("report.json", &json), ("report.md", &md)] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{md}");
    }
    eprintln!(
        "[soak] report: {}, chart: {}",
        out.join("report.md").display(),
        out.join("resources.svg").display()
    );
    if report.passed() {
        Ok(())
    } else {
        Err(format!("the soak failed: {}", report.failures.join("; ")).into())
    }
}
