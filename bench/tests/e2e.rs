//! End-to-end: the real `coremesh-bench` binary on loopback, ports picked by
//! the OS. Nothing here asserts speed; rates are kept low so the tests pass
//! on a loaded CI machine.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coremesh-bench");

struct Origin {
    child: Child,
    addr: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn origin(extra: &[&str]) -> Origin {
    let mut child = Command::new(BIN)
        .args(["origin", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start origin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    Origin { child, addr }
}

fn load(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("load")
        .arg("--json")
        .args(args)
        .output()
        .expect("run load");
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn open_and_closed_loop_against_the_origin() {
    let o = origin(&["--body-size", "100"]);
    let url = format!("http://{}/", o.addr);

    let r = load(&[
        "--url",
        &url,
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--connections",
        "4",
    ]);
    assert_eq!(r["errors"]["connect"], 0, "{r}");
    assert_eq!(
        r["errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        0
    );
    // Open loop sends what the schedule says, no more: 2000 in 1 s.
    let n = r["responses"].as_u64().unwrap();
    assert!((1900..=2000).contains(&n), "{r}");
    assert!(r["achieved_rate"].as_f64().unwrap() > 0.0);
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_us"][p].as_f64().unwrap() > 0.0, "{p}: {r}");
    }
    assert!(
        r["generator"]["user_s"].as_f64().unwrap() + r["generator"]["sys_s"].as_f64().unwrap()
            > 0.0
    );

    // Closed loop, large bodies, and a new connection per request.
    let big = format!("http://{}/size/1048576", o.addr);
    let r = load(&[
        "--url",
        &big,
        "--rate",
        "0",
        "--duration",
        "500ms",
        "--connections",
        "2",
    ]);
    assert!(r["responses"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["parse"], 0, "{r}");
    let r = load(&[
        "--url",
        &url,
        "--rate",
        "0",
        "--duration",
        "500ms",
        "--connections",
        "2",
        "--new-conn",
    ]);
    assert!(r["responses"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["connect"], 0, "{r}");
    assert_eq!(r["errors"]["closed"], 0, "{r}");

    // POST bodies are read and skipped by the origin.
    let r = load(&[
        "--url",
        &url,
        "--rate",
        "500",
        "--duration",
        "500ms",
        "--connections",
        "2",
        "--body-size",
        "5000",
    ]);
    assert!(r["responses"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"]["timeout"], 0, "{r}");
}

/// The sum of a report's error counters.
fn error_total(r: &Value) -> u64 {
    r["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[test]
fn h2c_and_grpc_load_against_the_origin() {
    let o = origin(&["--body-size", "100"]);
    let url = format!("http://{}/size/128", o.addr);
    // Open loop over 2 connections x 4 streams: what the schedule says.
    let r = load(&[
        "--h2",
        "--url",
        &url,
        "--rate",
        "1000",
        "--duration",
        "1s",
        "--connections",
        "2",
        "--streams",
        "4",
    ]);
    assert_eq!(error_total(&r), 0, "{r}");
    assert_eq!(
        (r["protocol"].as_str(), r["streams"].as_u64()),
        (Some("h2c"), Some(4))
    );
    let n = r["responses"].as_u64().unwrap();
    assert!((950..=1000).contains(&n), "{r}");
    for p in ["p50", "p99", "max"] {
        assert!(r["latency_us"][p].as_f64().unwrap() > 0.0, "{p}: {r}");
    }
    // Closed loop gRPC: every call checked for grpc-status 0.
    let r = load(&[
        "--grpc",
        "--url",
        &format!("http://{}/", o.addr),
        "--header",
        "Host: api",
        "--rate",
        "0",
        "--duration",
        "500ms",
        "--connections",
        "2",
        "--streams",
        "8",
    ]);
    assert!(r["responses"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(error_total(&r), 0, "{r}");
    assert_eq!(r["protocol"], "grpc", "{r}");
}

#[test]
fn a_slow_origin_shows_in_latency_from_the_intended_time() {
    // One connection, 100 req/s asked, but every response takes 50 ms: the
    // origin can serve 20 req/s. Measured from the send time every request
    // would take ~50 ms; measured from its intended time the queue shows.
    let o = origin(&["--delay", "50ms"]);
    let url = format!("http://{}/", o.addr);
    let r = load(&[
        "--url",
        &url,
        "--rate",
        "100",
        "--duration",
        "1s",
        "--connections",
        "1",
    ]);
    let p99 = r["latency_us"]["p99"].as_f64().unwrap();
    assert!(p99 > 400_000.0, "queueing hidden: {r}");
    assert!(r["unsent"].as_u64().unwrap() > 0, "{r}");
    assert!(r["achieved_rate"].as_f64().unwrap() < 100.0, "{r}");
}

#[test]
fn load_refuses_bad_arguments() {
    let out = Command::new(BIN)
        .args(["load", "--url", "https://x/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
    let out = Command::new(BIN)
        .args(["compare", "--scenarios", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown \"nope\""));
}

fn coremesh_bin() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        std::env::var_os("COREMESH_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| PathBuf::from(d).join("release/coremesh-proxy")),
        Some(root.join("target/release/coremesh-proxy")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn on_path(name: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ]
    .iter()
    .any(|d| PathBuf::from(d).join(name).is_file())
}

/// A short compare of coremesh against nginx: every field is present, every
/// measured rate is above zero and there are no errors. Needs the release
/// proxy binary (`cargo build --release -p coremesh-proxy`, or COREMESH_BIN)
/// and nginx (scripts/install-bench-deps.sh); says so and passes without them.
#[test]
fn short_compare_of_coremesh_and_nginx() {
    let Some(coremesh) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    if !on_path("nginx") {
        eprintln!("SKIPPED: nginx is not installed (scripts/install-bench-deps.sh)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("coremesh-bench-e2e-{}", std::process::id()));
    let out = dir.join("results.json");
    let svg = dir.join("svg");
    let status = Command::new(BIN)
        .args([
            "compare",
            "--proxies",
            "coremesh,nginx",
            "--rounds",
            "1",
            "--duration",
            "1s",
        ])
        .args([
            "--warmup",
            "200ms",
            "--idle-conns",
            "200",
            "--connections",
            "8",
        ])
        .arg("--coremesh-bin")
        .arg(&coremesh)
        .arg("--coremesh-glommio-bin")
        .arg(dir.join("absent"))
        .arg("--out")
        .arg(&out)
        .arg("--svg-dir")
        .arg(&svg)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(stdout.contains("| coremesh |"), "{stdout}");
    assert!(stdout.contains("split: user / kernel"), "{stdout}");
    assert!(
        stdout.contains("Kernel work per request: TCP segments"),
        "{stdout}"
    );
    assert!(stdout.contains("% kernel) |"), "{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();

    for key in [
        "command",
        "machine",
        "started_at",
        "proxy_cores",
        "load_cores",
        "rounds",
        "duration_s",
        "warmup_s",
        "connections",
        "idle_connections",
        "fixed_rate",
        "targets",
        "notes",
        "samples",
        "idle",
        "summary",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    let ok: Vec<&str> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "ok")
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    assert_eq!(ok, ["coremesh", "coremesh#2", "nginx"], "{}", r["targets"]);
    for t in r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "ok")
    {
        assert!(
            std::path::Path::new(t["config"].as_str().unwrap()).is_file(),
            "config written: {t}"
        );
    }
    let samples = r["samples"].as_array().unwrap();
    for scenario in ["small", "rate", "16k", "1m", "newconn"] {
        for target in ["direct", "coremesh", "coremesh#2", "nginx"] {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["target"] == target)
                .unwrap_or_else(|| panic!("no sample for {scenario} {target}"));
            assert!(s["achieved_rps"].as_f64().unwrap() > 0.0, "{s}");
            let errors: u64 = s["errors"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(errors, 0, "{s}");
            for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
                assert!(s["latency_us"][p].as_f64().is_some(), "{s}");
            }
            // Every hop carries a request and its response: at least two
            // segments each (more on this busy machine, never fewer).
            let hops = if target == "direct" { 1.0 } else { 2.0 };
            let segments = s["tcp_segments_per_req"].as_f64().unwrap();
            assert!(segments >= 2.0 * hops, "{s}");
            if target != "direct" {
                assert!(
                    s["proxy_context_switches_per_req"].as_f64().unwrap() >= 0.0,
                    "{s}"
                );
                let cpu = s["proxy_cpu_us_per_req"].as_f64().unwrap();
                assert!(cpu > 0.0, "{s}");
                // The split adds up to the total.
                let user = s["proxy_user_us_per_req"].as_f64().unwrap();
                let sys = s["proxy_sys_us_per_req"].as_f64().unwrap();
                assert!(user >= 0.0 && sys >= 0.0, "{s}");
                assert!((user + sys - cpu).abs() < 1e-6 * cpu.max(1.0), "{s}");
            } else {
                assert!(s["proxy_cpu_us_per_req"].is_null(), "{s}");
                assert!(s["proxy_user_us_per_req"].is_null(), "{s}");
                assert!(s["proxy_context_switches_per_req"].is_null(), "{s}");
            }
        }
    }
    let idle = r["idle"].as_array().unwrap();
    assert_eq!(idle.len(), 3, "{idle:?}");
    assert!(idle.iter().all(|s| s["connections"] == 200));
    assert!(r["fixed_rate"].as_f64().unwrap() > 0.0);
    let summary = r["summary"].as_array().unwrap();
    assert!(summary
        .iter()
        .any(|s| s["target"] == "nginx" && s["ratio_vs_coremesh"].as_f64().is_some()));
    for chart in ["cpu.svg", "throughput.svg", "latency.svg"] {
        let text = std::fs::read_to_string(svg.join(chart)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("coremesh"),
            "{chart}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A workspace binary: `$ENV_VAR`, else the release build, else the debug
/// build, in `$CARGO_TARGET_DIR` or `<workspace>/target`.
fn workspace_bin(env_var: &str, name: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    [
        std::env::var_os(env_var).map(PathBuf::from),
        Some(target.join("release").join(name)),
        Some(target.join("debug").join(name)),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

/// The policy scenarios, briefly: coremesh-control, four web/api pairs
/// (plain and full policy, each with its A/A twin), every pair answered
/// with no errors, the full pairs held 100 Routes and a Resilience, and
/// the report has the policy-cost table and issue 6's verdict. Needs the
/// release proxy and coremesh-control (`cargo build --release -p
/// coremesh-proxy -p coremesh-control`, or COREMESH_BIN and
/// COREMESH_CONTROL_BIN); says so and passes without them.
#[test]
fn short_compare_of_the_policy_scenarios() {
    let Some(coremesh) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    let Some(control) = workspace_bin("COREMESH_CONTROL_BIN", "coremesh-control") else {
        eprintln!("SKIPPED: no coremesh-control binary (set COREMESH_CONTROL_BIN or build it)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("coremesh-bench-policy-{}", std::process::id()));
    let out = dir.join("results.json");
    let run = Command::new(BIN)
        .args(["compare", "--proxies", "coremesh", "--scenarios", "policy"])
        .args(["--rounds", "1", "--duration", "1s", "--warmup", "200ms"])
        .args(["--connections", "8"])
        .arg("--coremesh-bin")
        .arg(&coremesh)
        .arg("--control-bin")
        .arg(&control)
        .arg("--coremesh-glommio-bin")
        .arg(dir.join("absent"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed: {stderr}");
    assert!(stdout.contains("### Policy cost"), "{stdout}");
    assert!(stdout.contains("Target (issue 6"), "{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();

    let pairs: Vec<(&str, &str)> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "ok")
        .map(|t| {
            (
                t["topology"].as_str().unwrap(),
                t["label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("policy-plain", "coremesh"),
            ("policy-plain", "coremesh#2"),
            ("policy-full", "coremesh"),
            ("policy-full", "coremesh#2"),
        ],
        "{}\n{stderr}",
        r["targets"]
    );
    for t in r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "ok")
    {
        for key in ["config", "inbound_config"] {
            let path = t[key].as_str().unwrap();
            assert!(std::path::Path::new(path).is_file(), "{key} written: {t}");
        }
    }
    assert!(dir.join("configs/policy.yaml").is_file());
    let notes: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for label in ["coremesh", "coremesh#2"] {
        let full = format!("policy-full {label}: web proxy holds 100 Routes and 1 Resilience");
        assert!(notes.iter().any(|n| n.starts_with(&full)), "{notes:?}");
        let plain = format!("policy-plain {label}: web proxy holds 0 Routes and 0 Resilience");
        assert!(notes.iter().any(|n| n.starts_with(&plain)), "{notes:?}");
    }

    let samples = r["samples"].as_array().unwrap();
    for scenario in ["policy-plain", "policy-full"] {
        for target in ["coremesh", "coremesh#2"] {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["target"] == target)
                .unwrap_or_else(|| panic!("no sample for {scenario} {target}"));
            assert!(s["responses_total"].as_u64().unwrap() > 0, "{s}");
            let errors: u64 = s["errors"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(errors, 0, "{scenario} {target}: {s}");
            assert!(s["proxy_cpu_us_per_req"].as_f64().unwrap() > 0.0, "{s}");
        }
    }
    assert!(
        !samples.iter().any(|s| s["target"] == "direct"),
        "the policy scenarios run through mesh pairs only"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The mesh-hop scenarios, briefly: a coremesh pair (and its A/A twin), an
/// nginx pair and, when installed, an HAProxy pair, each outbound proxy ->
/// mutual TLS 1.3 -> inbound proxy -> origin; every pair passed its checks
/// (200 through it, plaintext and certificate-less TLS refused by its
/// inbound side), every field of the JSON is there, every rate is above
/// zero and there are no errors. Needs the release proxy binary (or
/// COREMESH_BIN) and nginx; says so and passes without them.
#[test]
fn short_compare_of_the_mtls_scenarios() {
    let Some(coremesh) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    if !on_path("nginx") {
        eprintln!("SKIPPED: nginx is not installed (scripts/install-bench-deps.sh)");
        return;
    }
    let haproxy = on_path("haproxy");
    if !haproxy {
        eprintln!("haproxy is not installed: comparing coremesh with nginx only");
    }
    let dir = std::env::temp_dir().join(format!("coremesh-bench-mtls-{}", std::process::id()));
    let out = dir.join("results.json");
    let svg = dir.join("svg");
    let run = Command::new(BIN)
        .args(["compare", "--proxies"])
        .arg(if haproxy {
            "coremesh,nginx,haproxy"
        } else {
            "coremesh,nginx"
        })
        .args(["--scenarios", "mtls,mtls-rate"])
        .args(["--rounds", "1", "--duration", "1s", "--warmup", "200ms"])
        .args(["--connections", "8"])
        .arg("--coremesh-bin")
        .arg(&coremesh)
        .arg("--coremesh-glommio-bin")
        .arg(dir.join("absent"))
        .arg("--out")
        .arg(&out)
        .arg("--svg-dir")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed: {stderr}");
    assert!(stdout.contains("### Mesh hop"), "{stdout}");
    assert!(stdout.contains("Target (issue 5"), "{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();

    for key in [
        "command",
        "machine",
        "started_at",
        "proxy_cores",
        "load_cores",
        "rounds",
        "duration_s",
        "warmup_s",
        "connections",
        "idle_connections",
        "fixed_rate",
        "mtls_fixed_rate",
        "targets",
        "notes",
        "samples",
        "idle",
        "summary",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    assert!(r["mtls_fixed_rate"].as_f64().unwrap() > 0.0, "{r}");
    // coremesh's pair runs twice: HTTP/1.1 between the proxies (the
    // default) and multiplexed (`coremesh-mux`).
    let mut want = vec!["coremesh", "coremesh-mux", "coremesh#2", "nginx"];
    if haproxy {
        want.push("haproxy");
    }
    let ok: Vec<&str> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "ok")
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    assert_eq!(ok, want, "{}\n{stderr}", r["targets"]);
    for t in r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "ok")
    {
        assert_eq!(t["topology"], "mtls", "{t}");
        for key in ["config", "inbound_config"] {
            let path = t[key].as_str().unwrap();
            assert!(std::path::Path::new(path).is_file(), "{key} written: {t}");
        }
    }
    for f in ["ca.pem", "web.crt", "web.key", "api.crt", "api.key"] {
        assert!(dir.join("configs/mtls").join(f).is_file(), "{f}");
    }
    let notes: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for label in &want {
        let checked = format!("mtls {label}: 200 through the pair; the inbound proxy refuses");
        assert!(notes.iter().any(|n| n.starts_with(&checked)), "{notes:?}");
    }

    let samples = r["samples"].as_array().unwrap();
    for scenario in ["mtls", "mtls-rate"] {
        for target in std::iter::once(&"direct").chain(&want) {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["target"] == *target)
                .unwrap_or_else(|| panic!("no sample for {scenario} {target}"));
            assert!(s["achieved_rps"].as_f64().unwrap() > 0.0, "{s}");
            assert!(s["responses_total"].as_u64().unwrap() > 0, "{s}");
            let errors: u64 = s["errors"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(errors, 0, "{scenario} {target}: {s}");
            for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
                assert!(s["latency_us"][p].as_f64().is_some(), "{s}");
            }
            if *target == "direct" {
                assert!(s["proxy_cpu_us_per_req"].is_null(), "{s}");
            } else {
                assert!(s["proxy_cpu_us_per_req"].as_f64().unwrap() > 0.0, "{s}");
                assert!(s["proxy_cores_used"].as_f64().unwrap() > 0.0, "{s}");
            }
        }
    }
    let summary = r["summary"].as_array().unwrap();
    assert!(summary.iter().any(|s| s["scenario"] == "mtls"
        && s["target"] == "nginx"
        && s["metric"] == "proxy_cpu_us_per_req"
        && s["ratio_vs_coremesh"].as_f64().is_some()));
    for chart in ["cpu.svg", "throughput.svg", "latency-mtls.svg"] {
        let text = std::fs::read_to_string(svg.join(chart)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("coremesh"),
            "{chart}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A short mtls compare with `--app-unix --count-syscalls`: beside each
/// TCP pair runs a `-unix` pair whose inbound proxy reaches the origin over
/// its Unix socket (coremesh `app = "unix:..."`, nginx `server unix:...`,
/// HAProxy `unix@...`); every pair answers through the hop, the report has
/// the app-unix table and issue 16's targets, and each sample carries
/// segments and (with perf installed) system calls per request. Needs the
/// release proxy binary (or COREMESH_BIN) and nginx; says so and passes
/// without them.
#[test]
fn short_compare_of_the_app_unix_pairs() {
    let Some(coremesh) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    if !on_path("nginx") {
        eprintln!("SKIPPED: nginx is not installed (scripts/install-bench-deps.sh)");
        return;
    }
    let haproxy = on_path("haproxy");
    // perf installed and allowed to count the tracepoint here.
    let perf = on_path("perf")
        && Command::new("perf")
            .args(["stat", "-e", "raw_syscalls:sys_enter", "--", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
    let dir = std::env::temp_dir().join(format!("coremesh-bench-unix-{}", std::process::id()));
    let out = dir.join("results.json");
    let run = Command::new(BIN)
        .args(["compare", "--proxies"])
        .arg(if haproxy {
            "coremesh,nginx,haproxy"
        } else {
            "coremesh,nginx"
        })
        .args([
            "--scenarios",
            "mtls",
            "--app-unix",
            "--count-syscalls",
            "--no-aa",
        ])
        .args(["--rounds", "1", "--duration", "1s", "--warmup", "200ms"])
        .args(["--connections", "8"])
        .arg("--coremesh-bin")
        .arg(&coremesh)
        .arg("--coremesh-glommio-bin")
        .arg(dir.join("absent"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed: {stderr}");
    assert!(
        stdout.contains("### App hop over a Unix socket"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Targets (issue 16), mtls: coremesh-unix"),
        "{stdout}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mut want = vec![
        "coremesh",
        "coremesh-mux",
        "coremesh-unix",
        "nginx",
        "nginx-unix",
    ];
    if haproxy {
        want.extend(["haproxy", "haproxy-unix"]);
    }
    let targets = r["targets"].as_array().unwrap();
    let ok: Vec<&str> = targets
        .iter()
        .filter(|t| t["status"] == "ok")
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    assert_eq!(ok, want, "{}\n{stderr}", r["targets"]);
    let socket = dir.join("run/origin.sock");
    for t in targets.iter().filter(|t| t["status"] == "ok") {
        let label = t["label"].as_str().unwrap();
        let inbound = std::fs::read_to_string(t["inbound_config"].as_str().unwrap()).unwrap();
        let names_socket = inbound.contains(&socket.display().to_string());
        assert_eq!(names_socket, label.ends_with("-unix"), "{label}: {inbound}");
    }
    let notes: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for label in &want {
        let checked = format!("mtls {label}: 200 through the pair; the inbound proxy refuses");
        assert!(notes.iter().any(|n| n.starts_with(&checked)), "{notes:?}");
    }
    let samples = r["samples"].as_array().unwrap();
    for target in &want {
        let s = samples
            .iter()
            .find(|s| s["scenario"] == "mtls" && s["target"] == *target)
            .unwrap_or_else(|| panic!("no sample for {target}"));
        assert!(s["achieved_rps"].as_f64().unwrap() > 0.0, "{s}");
        let errors: u64 = s["errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(errors, 0, "{target}: {s}");
        assert!(s["proxy_cpu_us_per_req"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["tcp_segments_per_req"].as_f64().is_some(), "{s}");
        if perf {
            // Every request costs each proxy at least one system call.
            let calls = s["proxy_syscalls_per_req"].as_f64();
            assert!(calls.is_some_and(|n| n >= 1.0), "{s}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The failover scenario, briefly: two faults (an app killed, a host's
/// link down) on a fresh namespace mesh each, with the JSON report's
/// fields and no failed GET. Needs root (network namespaces) and the
/// release binaries; says SKIPPED without them (which fails scripts/test.sh).
#[test]
fn short_failover_run() {
    let Some(proxy) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    let Some(control) = workspace_bin("COREMESH_CONTROL_BIN", "coremesh-control") else {
        eprintln!("SKIPPED: no coremesh-control binary (set COREMESH_CONTROL_BIN or build it)");
        return;
    };
    if let Err(e) = coremesh_testnet::available() {
        eprintln!("SKIPPED: {e}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("coremesh-bench-failover-{}", std::process::id()));
    let run = Command::new(BIN)
        .args(["failover", "--faults", "app-kill,link-down", "--json"])
        .args(["--rate", "100", "--baseline", "2s", "--duration", "4s"])
        .arg("--proxy-bin")
        .arg(&proxy)
        .arg("--control-bin")
        .arg(&control)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "failover failed: {stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{r}");
    for f in results {
        assert!(f["during"]["requests"].as_u64().unwrap() > 100, "{f}");
        // One endpoint of three fails: no GET may fail.
        assert_eq!(f["during"]["failed"], 0, "{f}");
        assert!(f["before"]["p99_ms"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["last_to_faulty_ms"].is_number(), "{f}");
    }
    assert!(dir.join("report.md").is_file() && dir.join("report.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The HTTP/2 scenarios, briefly: h2c through one proxy, unary gRPC
/// through the mutual-TLS pairs, RSS per idle h2c connection, through
/// coremesh (release build, or COREMESH_BIN), nginx and HAProxy when
/// installed; says so and passes without coremesh or nginx.
#[test]
fn short_compare_of_the_http2_scenarios() {
    let Some(coremesh) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    if !on_path("nginx") {
        eprintln!("SKIPPED: nginx is not installed (scripts/install-bench-deps.sh)");
        return;
    }
    let haproxy = on_path("haproxy");
    let dir = std::env::temp_dir().join(format!("coremesh-bench-http2-{}", std::process::id()));
    let out = dir.join("results.json");
    let run = Command::new(BIN)
        .args(["compare", "--proxies"])
        .arg(if haproxy {
            "coremesh,nginx,haproxy"
        } else {
            "coremesh,nginx"
        })
        .args(["--scenarios", "http2"])
        .args(["--rounds", "1", "--duration", "1s", "--warmup", "200ms"])
        .args([
            "--h2-connections",
            "2",
            "--h2-streams",
            "4",
            "--idle-conns",
            "50",
        ])
        .arg("--coremesh-bin")
        .arg(&coremesh)
        .arg("--coremesh-glommio-bin")
        .arg(dir.join("absent"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed: {stderr}");
    for want in [
        "### HTTP/2: h2c through one proxy",
        "### gRPC mesh hop",
        "### RSS per idle h2c client connection",
        "Target (issue 14",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(r["h2_fixed_rate"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["grpc_fixed_rate"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(
        (r["h2_connections"].as_u64(), r["h2_streams"].as_u64()),
        (Some(2), Some(4))
    );
    let mut want = vec!["coremesh", "coremesh#2", "nginx"];
    if haproxy {
        want.push("haproxy");
    }
    for topology in ["h2", "grpc"] {
        let ok: Vec<&str> = r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"] == "ok" && t["topology"] == topology)
            .map(|t| t["label"].as_str().unwrap())
            .collect();
        assert_eq!(ok, want, "{topology}: {}\n{stderr}", r["targets"]);
    }
    let samples = r["samples"].as_array().unwrap();
    for scenario in ["h2", "h2-rate", "grpc", "grpc-rate"] {
        for target in std::iter::once(&"direct").chain(&want) {
            let s = samples
                .iter()
                .find(|s| s["scenario"] == scenario && s["target"] == *target)
                .unwrap_or_else(|| panic!("no sample for {scenario} {target}"));
            assert!(s["responses_total"].as_u64().unwrap() > 0, "{s}");
            let errors: u64 = s["errors"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(errors, 0, "{scenario} {target}: {s}");
            assert_eq!(
                s["proxy_cpu_us_per_req"].is_null(),
                *target == "direct",
                "{s}"
            );
        }
    }
    for target in &want {
        assert!(
            r["idle"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["scenario"] == "h2-idle"
                    && s["target"] == *target
                    && s["connections"] == 50),
            "h2-idle {target}: {}",
            r["idle"]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The burst scenario, briefly: 200 connections with a request each in
/// flight together, idle 1 s, through a fresh coremesh (release build, or
/// COREMESH_BIN), nginx and HAProxy when installed: every proxy has its
/// four readings, the peak is above the baseline, and the report has the
/// burst table with a verdict per proxy. Says so and passes without
/// coremesh or nginx.
#[test]
fn short_compare_of_the_burst_scenario() {
    let Some(coremesh) = coremesh_bin() else {
        eprintln!("SKIPPED: no coremesh-proxy release binary (set COREMESH_BIN or build it)");
        return;
    };
    if !on_path("nginx") {
        eprintln!("SKIPPED: nginx is not installed (scripts/install-bench-deps.sh)");
        return;
    }
    let haproxy = on_path("haproxy");
    let dir = std::env::temp_dir().join(format!("coremesh-bench-burst-{}", std::process::id()));
    let out = dir.join("results.json");
    let run = Command::new(BIN)
        .args(["compare", "--proxies"])
        .arg(if haproxy {
            "coremesh,nginx,haproxy"
        } else {
            "coremesh,nginx"
        })
        .args(["--scenarios", "burst", "--rounds", "1", "--no-aa"])
        .args(["--burst-conns", "200", "--burst-idle", "1s"])
        .arg("--coremesh-bin")
        .arg(&coremesh)
        .arg("--coremesh-glommio-bin")
        .arg(dir.join("absent"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed: {stderr}");
    assert!(
        stdout.contains("### Memory after a burst") && stdout.contains("200 new connections"),
        "{stdout}"
    );
    assert!(stdout.contains("Target (issue 20"), "{stdout}");
    let mut want = vec!["coremesh", "nginx"];
    if haproxy {
        want.push("haproxy");
    }
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    // No load scenario ran: the burst is all there is.
    assert!(r["samples"].as_array().unwrap().is_empty(), "{r}");
    for target in &want {
        let s = r["idle"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scenario"] == "burst" && s["target"] == *target)
            .unwrap_or_else(|| panic!("no burst sample for {target}: {}\n{stderr}", r["idle"]));
        assert_eq!(s["connections"], 200, "{s}");
        let b = &s["burst"];
        let (before, peak) = (
            s["rss_before"].as_u64().unwrap(),
            b["peak"].as_u64().unwrap(),
        );
        assert!(before > 0 && peak > before, "{target}: {s}");
        assert!(b["closed"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(b["idle_s"].as_f64(), Some(1.0), "{s}");
        assert!(
            stdout.contains(&format!("| {target} |")),
            "{target}: {stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fleet --replicas 3 --store etcd://local`, small: 300 sessions over
/// three coremesh-control replicas on a three-member etcd cluster the
/// bench starts from /usr/bin/etcd, a route change applied through
/// replica 0 reaching every affected session on every replica, and each
/// replica's `GET /v1/proxies` recording its own sessions' ACKs. Needs
/// coremesh-control (release or debug, or COREMESH_CONTROL_BIN) and
/// Debian's etcd-server; says so and passes without them.
#[test]
fn short_fleet_on_three_etcd_replicas() {
    let Some(control) = workspace_bin("COREMESH_CONTROL_BIN", "coremesh-control") else {
        eprintln!("SKIPPED: no coremesh-control binary (set COREMESH_CONTROL_BIN or build it)");
        return;
    };
    if !std::path::Path::new("/usr/bin/etcd").is_file() {
        eprintln!(
            "SKIPPED: /usr/bin/etcd is missing (scripts/install-deps.sh installs etcd-server)"
        );
        return;
    }
    let run = Command::new(BIN)
        .args([
            "fleet",
            "--replicas",
            "3",
            "--store",
            "etcd://local",
            "--json",
        ])
        .args(["--sessions", "300", "--services", "30", "--endpoints", "3"])
        .args(["--settle", "1s", "--timeout", "20s"])
        .arg("--control-bin")
        .arg(&control)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "fleet failed: {stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["connected"], 300, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    let affected = r["affected"].as_u64().unwrap();
    assert!(affected > 0, "{r}");
    assert_eq!(r["reached"], affected, "{r}");
    assert!(
        r["store"]
            .as_str()
            .unwrap()
            .starts_with("etcd://127.0.0.1:"),
        "{r}"
    );
    let rows = r["replicas"].as_array().expect("replica rows");
    assert_eq!(rows.len(), 3, "{r}");
    for row in rows {
        assert_eq!(row["sessions"], 100, "{row}");
        assert_eq!(row["connected"], 100, "{row}");
        assert_eq!(row["reached"], row["affected"], "{row}");
        assert_eq!(row["recorded_acks"], row["affected"], "{row}");
        assert!(
            row["propagation"]["p99_ms"].as_f64().unwrap() >= 0.0,
            "{row}"
        );
        assert!(row["usage"]["rss_hwm_mib"].as_f64().unwrap() > 0.0, "{row}");
    }
    // The run's temp dir (etcd data, the replicas' data dirs) is gone.
    let prefix = r["etcd_prefix"].as_str().unwrap();
    let run_id = prefix
        .trim_matches('/')
        .trim_start_matches("coremesh-bench-fleet-");
    let dir = std::env::temp_dir().join(format!("coremesh-bench-fleet-{run_id}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}
