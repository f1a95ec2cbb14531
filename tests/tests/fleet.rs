//! The fleet view (issue 17: golden metrics per edge, `meshctl top`): the
//! proxies' edge summaries reach control, which merges them, and what
//! `meshctl top -o json`, `GET /v1/edges/series` and control's `/metrics`
//! show matches the requests sent. Also: every metric name the Grafana
//! dashboard in docs/grafana queries appears in a live proxy's `/metrics`.
//!
//! ```text
//!  test ──▶ web proxy [outbound] ══mTLS══▶ api proxy (version=v1) ──▶ origin api-v1
//!           Route api: 90/10      ╚═════▶ api proxy (version=v2) ──▶ origin api-v2
//!  test ──▶ api-v1 proxy [outbound] ══mTLS══▶ db proxy ──▶ origin db
//!  test ──TCP──▶ web proxy [[outbound.tcp]] cache ══mTLS══▶ cache proxy ──▶ echo server
//!                 ▲                                 ▲
//!                 └── QUIC: snapshots, EdgeStats ───┴── coremesh-control ◀── meshctl top
//! ```
//!
//! The test plays both apps that call: web's (through web's proxy) and
//! api's (through api-v1's proxy, to db).

use std::process::Command;
use std::time::Duration;

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Client, Control, ControlBuilder, Member, MeshProxy, Metrics, Origin, Proxy, ProxyBuilder,
    Request,
};

/// Bound on the mesh converging after a start or an apply.
const CONVERGE: Duration = Duration::from_secs(30);
/// Bound on the summaries reaching control (proxies send one every 5 s).
const SUMMARIES: Duration = Duration::from_secs(30);

const POLICY: &str = r#"kind: Service
name: web
---
kind: Service
name: api
---
kind: Service
name: db
---
kind: Service
name: cache
protocol: tcp
---
kind: Route
name: api-split
service: api
rules:
  - backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
"#;

struct Mesh {
    control: Control,
    /// api-v1, api-v2.
    apps: Vec<Origin>,
    _db_app: Origin,
    /// api-v1 (with an outbound listener, to call db), api-v2.
    apis: Vec<Proxy>,
    db: Proxy,
    _cache: Proxy,
    web: Proxy,
    _members: Vec<Member>,
}

impl Mesh {
    fn start() -> Mesh {
        let control = ControlBuilder::new().start();
        let mut members = Vec::new();
        let db_app = Origin::start("db");
        let m = control.member("db", "db-1");
        let db = ProxyBuilder::new("db")
            .inbound(db_app.addr())
            .control(&control.section(&m))
            .start();
        members.push(m);
        let mut apps = Vec::new();
        let mut apis = Vec::new();
        for v in ["v1", "v2"] {
            let app = Origin::start(&format!("api-{v}"));
            let m = control.member("api", &format!("api-{v}"));
            let mut b = ProxyBuilder::new("api")
                .inbound(app.addr())
                .labels(&[("version", v)])
                .control(&control.section(&m).calls(&["db"]));
            if v == "v1" {
                b = b.outbound();
            }
            apis.push(b.start());
            apps.push(app);
            members.push(m);
        }
        let m = control.member("cache", "cache-1");
        let cache = ProxyBuilder::new("cache")
            .inbound(echo_server())
            .inbound_key("protocol", "\"tcp\"")
            .control(&control.section(&m))
            .start();
        members.push(m);
        let m = control.member("web", "web-1");
        let web = ProxyBuilder::new("web")
            .cores(2)
            .outbound()
            .extra("[[outbound.tcp]]\nservice = \"cache\"\nlisten = \"127.0.0.1:0\"\n")
            .control(&control.section(&m).calls(&["api", "cache"]))
            .start();
        members.push(m);
        let version = control.apply(POLICY);
        // Control sends a snapshot only to proxies whose view changed; the
        // Route changes web's.
        control.wait_applied(5, 4, version, &["web"], CONVERGE);
        Mesh {
            control,
            apps,
            _db_app: db_app,
            apis,
            db,
            _cache: cache,
            web,
            _members: members,
        }
    }
}

/// Sends `n` `GET`s for `service` through `proxy`'s outbound listener on
/// one keep-alive connection; every one must be answered 200.
fn send(proxy: &Proxy, service: &str, n: usize) {
    let mut c = Client::connect(proxy.outbound());
    c.set_read_timeout(Duration::from_secs(10));
    for i in 0..n {
        let r = c.request(&Request::get(&format!("/fleet/{i}")).host(service));
        assert_eq!(r.status, 200, "request {i} to {service}: {}", r.body_str());
        if r.header_has_token("connection", "close") {
            c = Client::connect(proxy.outbound());
            c.set_read_timeout(Duration::from_secs(10));
        }
    }
}

/// A TCP echo server that closes after the client half-closes.
fn echo_server() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s.try_clone().expect("clone"), &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// `n` connections through web's `[[outbound.tcp]]` listener for cache,
/// each a round trip of a few bytes; every one must come back whole.
fn tcp_round_trips(web: &Proxy, n: usize) {
    use std::io::{Read, Write};
    let config = web.admin_get("/config").json();
    let addr: std::net::SocketAddr = config["bound"]["tcp"]["cache"]
        .as_str()
        .unwrap_or_else(|| panic!("no tcp listener for cache: {config}"))
        .parse()
        .expect("address");
    for i in 0..n {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let msg = format!("ping {i}");
        s.write_all(msg.as_bytes()).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        assert_eq!(got, msg, "connection {i} through the cache TCP service");
    }
}

/// `meshctl top -o json` with `extra` arguments.
fn top(control: &Control, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["top", "-o", "json"];
    args.extend_from_slice(extra);
    control.meshctl(&args).ok().json()
}

fn requests(v: &serde_json::Value, source: &str, destination: &str, subset: Option<&str>) -> u64 {
    v["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| {
            e["source"] == source
                && e["destination"] == destination
                && subset.is_none_or(|s| e["subset"] == s)
        })
        .map(|e| e["requests"].as_u64().expect("requests"))
        .sum()
}

fn within(got: u64, want: u64, pct: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * pct / 100.0
}

/// `GET PATH` on control's API over HTTPS with the operator credential
/// (curl, pinning control's API CA).
fn control_get(control: &Control, path: &str) -> String {
    let dir = control.data_dir();
    let cred = std::fs::read_to_string(dir.join("operator.credential")).expect("credential");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(dir.join("api-ca.pem"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", cred.trim()))
        .arg(format!("{}{path}", control.api_url()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn meshctl_top_shows_the_edges_with_the_requests_sent_and_the_split() {
    let mesh = Mesh::start();
    const WEB_TO_API: u64 = 200;
    const API_TO_DB: u64 = 60;
    const WEB_TO_CACHE: u64 = 20;
    send(&mesh.web, "api", WEB_TO_API as usize);
    send(&mesh.apis[0], "db", API_TO_DB as usize);
    tcp_round_trips(&mesh.web, WEB_TO_CACHE as usize);
    let reached: Vec<u64> = mesh.apps.iter().map(|a| a.requests() as u64).collect();
    assert_eq!(reached.iter().sum::<u64>(), WEB_TO_API);

    // The 1 m window holds every request sent above once the proxies'
    // summaries have arrived (each proxy sends one every 5 s).
    let mut last = serde_json::Value::Null;
    let seen = wait_for(SUMMARIES, || {
        let v = top(&mesh.control, &["--window", "1m"]);
        let split = requests(&v, "web", "api", Some("version=v1"))
            + requests(&v, "web", "api", Some("version=v2"));
        let done = split >= WEB_TO_API
            && requests(&v, "api", "db", None) >= API_TO_DB
            && requests(&v, "web", "cache", None) >= WEB_TO_CACHE;
        last = v.clone();
        if done {
            Some(v)
        } else {
            std::thread::sleep(Duration::from_millis(500));
            None
        }
    });
    let v = seen.unwrap_or_else(|| {
        panic!(
            "the edges did not reach control within {SUMMARIES:?}; last `meshctl top -o json --window 1m`:\n{last:#}\ncontrol log:\n{}",
            mesh.control.log_tail(40)
        )
    });
    eprintln!("meshctl top -o json --window 1m:\n{v:#}");
    assert_eq!(v["window"], "1m");

    // Counted once (the caller's proxy), not once more by the callee's.
    let web_api = requests(&v, "web", "api", None);
    let api_db = requests(&v, "api", "db", None);
    assert!(
        within(web_api, WEB_TO_API, 5.0),
        "web -> api: {web_api} of {WEB_TO_API} sent:\n{v:#}"
    );
    assert!(
        within(api_db, API_TO_DB, 5.0),
        "api -> db: {api_db} of {API_TO_DB} sent:\n{v:#}"
    );

    // The split edges: what each subset's app received, and about 90/10.
    let v1 = requests(&v, "web", "api", Some("version=v1"));
    let v2 = requests(&v, "web", "api", Some("version=v2"));
    assert!(
        within(v1, reached[0], 5.0),
        "v1 edge {v1}, api-v1 received {}",
        reached[0]
    );
    assert!(
        within(v2, reached[1], 5.0) || v2.abs_diff(reached[1]) <= 1,
        "v2 edge {v2}, api-v2 received {}",
        reached[1]
    );
    let share = v2 as f64 * 100.0 / (v1 + v2) as f64;
    assert!(
        (3.0..=18.0).contains(&share),
        "v2's share {share:.1}% of {} (90/10 split)",
        v1 + v2
    );

    // The TCP service edge: connections, none failed.
    let tcp = requests(&v, "web", "cache", None);
    assert!(
        within(tcp, WEB_TO_CACHE, 5.0),
        "web -> cache: {tcp} of {WEB_TO_CACHE}:\n{v:#}"
    );
    for e in v["edges"].as_array().expect("edges") {
        if e["destination"] == "cache" {
            assert_eq!(e["protocol"], "tcp", "{e}");
            assert_eq!(e["failures"], 0, "{e}");
            continue;
        }
        if e["source"] == "web" || e["source"] == "api" {
            assert_eq!(e["protocol"], "http", "{e}");
            assert_eq!(e["failures"], 0, "{e}");
            assert_eq!(e["successRate"], 1.0, "{e}");
            let p50 = e["p50Ms"].as_f64().expect("p50Ms");
            let p99 = e["p99Ms"].as_f64().expect("p99Ms");
            assert!(p50 > 0.0 && p50 <= p99, "{e}");
            assert!(e["rps"].as_f64().expect("rps") > 0.0, "{e}");
        }
    }

    // --service keeps the edges from or to it.
    let db_only = top(&mesh.control, &["--window", "1m", "--service", "db"]);
    let edges = db_only["edges"].as_array().expect("edges");
    assert!(
        !edges.is_empty()
            && edges
                .iter()
                .all(|e| e["destination"] == "db" || e["source"] == "db"),
        "{db_only:#}"
    );

    // The series: the last hour at 10 s steps, summed over subsets.
    let series: serde_json::Value = serde_json::from_str(&control_get(
        &mesh.control,
        "/v1/edges/series?source=web&destination=api",
    ))
    .expect("series JSON");
    let points = series["points"].as_array().expect("points");
    assert!(!points.is_empty(), "{series:#}");
    let summed: f64 = points
        .iter()
        .map(|p| p["rps"].as_f64().expect("rps") * 10.0)
        .sum();
    assert!(
        within(summed.round() as u64, WEB_TO_API, 5.0),
        "series sums to {summed}: {series:#}"
    );

    // Control's /metrics: the fleet view as Prometheus counters, in a
    // format promtool accepts.
    let text = control_get(&mesh.control, "/metrics");
    promtool_check(&text);
    let m = Metrics::parse(&text);
    let total = m.sum(
        "coremesh_fleet_edge_requests_total",
        &[("source", "web"), ("destination", "api")],
    );
    assert!(
        within(total as u64, WEB_TO_API, 5.0),
        "control /metrics: {total}\n{}",
        m.text
    );

    // The live table: the screen cleared and redrawn every second, with
    // the header and the edges.
    let frames = live_top(&mesh.control, Duration::from_millis(2500));
    assert!(
        frames.matches("\x1b[2J").count() >= 2,
        "redrawn every second:\n{frames}"
    );
    assert!(
        frames.contains("SOURCE  DESTINATION  SUBSET") && frames.contains("SUCCESS"),
        "{frames}"
    );
    let row = frames
        .lines()
        .find(|l| l.starts_with("web") && l.contains("version=v1"))
        .unwrap_or_else(|| panic!("no web -> api v1 row:\n{frames}"));
    assert!(
        row.contains("http") && row.contains('%') && row.contains("ms"),
        "{row}"
    );
    let _ = &mesh.db;
}

/// `promtool check metrics` on `text` (skipped without promtool, except
/// under CI).
fn promtool_check(text: &str) {
    if coremesh_e2e::metrics::have_promtool() {
        coremesh_e2e::metrics::assert_promtool_accepts("control", text);
    }
}

/// What `meshctl top --window 1m` prints in `run`, then it is stopped.
fn live_top(control: &Control, run: Duration) -> String {
    let mut child = Command::new(coremesh_e2e::control::meshctl_bin())
        .arg("--api")
        .arg(control.api_url())
        .arg("--data-dir")
        .arg(control.data_dir())
        .args(["top", "--window", "1m"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run meshctl top");
    std::thread::sleep(run);
    child.kill().expect("stop meshctl top");
    let out = child.wait_with_output().expect("meshctl top output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Grafana dashboard's queries only name metrics a proxy exports: each
/// name (a histogram's `_bucket` by its family) appears in the `/metrics`
/// of the mesh's proxies after traffic, as a sample or a declared family.
#[test]
fn every_metric_the_grafana_dashboard_queries_appears_in_a_scraped_proxy() {
    let mesh = Mesh::start();
    send(&mesh.web, "api", 20);
    send(&mesh.apis[0], "db", 5);
    tcp_round_trips(&mesh.web, 3);
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana/coremesh-proxy.json"
    ))
    .expect("docs/grafana/coremesh-proxy.json");
    let doc: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&doc, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard's queries: {exprs:?}");
    let mut names: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");

    let scrapes: Vec<Metrics> = [&mesh.web, &mesh.apis[0], &mesh.db]
        .iter()
        .map(|p| p.metrics())
        .collect();
    for name in &names {
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        let declared = format!("# TYPE {family} ");
        assert!(
            scrapes
                .iter()
                .any(|m| m.has(name) || m.text.contains(&declared)),
            "the dashboard queries {name}, which no proxy's /metrics has"
        );
    }
    // And the edge metrics carry the traffic just sent.
    let web = &scrapes[0];
    let sent = web.sum(
        "coremesh_edge_requests_total",
        &[
            ("direction", "outbound"),
            ("source", "web"),
            ("destination", "api"),
            ("status", "2xx"),
        ],
    );
    assert_eq!(sent, 20.0, "{}", web.text);
    // A TCP connection is counted when the proxy's relay ends, which may
    // be a moment after the client saw its end.
    let tcp_ok = || {
        mesh.web.metrics().sum(
            "coremesh_edge_tcp_connections_total",
            &[
                ("source", "web"),
                ("destination", "cache"),
                ("result", "ok"),
            ],
        )
    };
    let counted = wait_for(Duration::from_secs(10), || (tcp_ok() >= 3.0).then_some(()));
    assert!(counted.is_some(), "{}", mesh.web.metrics().text);
    assert_eq!(tcp_ok(), 3.0);
    let inbound = scrapes[2].sum(
        "coremesh_edge_requests_total",
        &[
            ("direction", "inbound"),
            ("source", "api"),
            ("destination", "db"),
        ],
    );
    assert_eq!(inbound, 5.0, "{}", scrapes[2].text);
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// The `coremesh_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("coremesh_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}
