//! HTTP/2, gRPC and WebSocket through the mesh (issue 14), with real
//! clients: curl `--http2-prior-knowledge`, h2load (Debian
//! `nghttp2-client`), Python grpcio and websockets (PyPI), and the raw h2
//! client of the harness where a test needs headers no real client lets it
//! set (`grpc-timeout` without a client-side deadline).
//!
//! ```text
//!  curl / h2load / H2Client ──▶ web proxy [outbound] ─────────────────────────────▶ H2Origin (h2c)
//!                                    ╚═══ mTLS (h2) ══▶ api proxy [inbound] ──h2c──▶ H2Origin
//!  grpc_client.py ──▶ web proxy [outbound] ══ mTLS ══▶ api proxy (version=v1) ──▶ grpc_app.py api-v1
//!   (one channel)      Route, AccessPolicy    ╚══════▶ api proxy (version=v2) ──▶ grpc_app.py api-v2
//!                          ▲                                 ▲
//!                          └── QUIC ── coremesh-control ─────┘ ◀── meshctl apply
//!  ws_client.py ──▶ web proxy [outbound] ══ mTLS ══▶ api proxy [inbound] ──▶ ws_echo.py
//! ```
//!
//! The gRPC app names itself in every reply (`api-v1`, `api-v2`), so a run
//! of calls on one channel (one HTTP/2 connection) says which endpoint
//! served each stream. Tests that need grpcio, websockets or h2load fail
//! with what to install under CI (`CI=true`) and are skipped elsewhere.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use coremesh_e2e::grpc::{require_program, require_python, ws_client};
use coremesh_e2e::pki::Pki;
use coremesh_e2e::util::{unused_port, wait_for, TempDir};
use coremesh_e2e::{
    Client, Control, ControlBuilder, GrpcClient, GrpcRun, H2Client, H2Origin, H2Request, Member,
    MeshProxy, Origin, Proxy, ProxyBuilder, PyApp, Request,
};

/// Bound on the mesh converging after a start or an apply.
const CONVERGE: Duration = Duration::from_secs(30);
/// Bound on one raw h2 exchange.
const H2_TIMEOUT: Duration = Duration::from_secs(30);
const TD: &str = "spiffe://coremesh.local/service";
const SERVICES: &str = "kind: Service\nname: api\n---\nkind: Service\nname: web\n";

fn have_grpcio() -> bool {
    require_python(&[("grpc", "grpcio")])
}

// ---- curl and h2load ----

/// What `curl --http2-prior-knowledge` printed: status, the HTTP version it
/// used (`%{http_version}`) and the body.
#[derive(Debug)]
struct CurlH2 {
    code: i32,
    status: u16,
    version: String,
    /// Body bytes curl received (`%{size_download}`).
    size: u64,
    body: String,
    stderr: String,
}

impl CurlH2 {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "curl got no JSON ({e}): {self:?}; curl said {}",
                self.stderr
            )
        })
    }
}

/// `curl --http2-prior-knowledge http://AUTHORITY/PATH`, connected to
/// `addr` (`--connect-to`), so `:authority` is `authority` as a client
/// calling the service by name would send it.
fn curl_h2(addr: SocketAddr, authority: &str, path: &str, extra: &[&str]) -> CurlH2 {
    let mut cmd = Command::new("curl");
    for var in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    cmd.args(["-sS", "--max-time", "30", "--http2-prior-knowledge"])
        .arg("--connect-to")
        .arg(format!("{authority}:80:{}:{}", addr.ip(), addr.port()))
        .args(["-w", "\n%{http_version} %{response_code} %{size_download}"])
        .args(extra)
        .arg(format!("http://{authority}{path}"));
    let out = cmd.output().expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut w = last.split_whitespace();
    CurlH2 {
        code: out.status.code().unwrap_or(-1),
        version: w.next().unwrap_or("").to_string(),
        status: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        size: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs h2load; returns (exit code, its whole output).
fn h2load(url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("h2load")
        .args(args)
        .arg(url)
        .output()
        .expect("run h2load");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// h2load's `requests:` and `status codes:` lines as numbers:
/// (total, succeeded, failed, errored, 2xx, 3xx, 4xx, 5xx).
fn h2load_counts(text: &str) -> Option<[u64; 8]> {
    let nums = |line: &str, keys: &[&str]| -> Option<Vec<u64>> {
        keys.iter()
            .map(|k| {
                let words: Vec<&str> = line.split([',', ' ']).filter(|w| !w.is_empty()).collect();
                let i = words.iter().position(|w| w == k)?;
                words.get(i.checked_sub(1)?)?.parse().ok()
            })
            .collect()
    };
    let req = text.lines().find(|l| l.starts_with("requests:"))?;
    let st = text.lines().find(|l| l.starts_with("status codes:"))?;
    let r = nums(req, &["total", "succeeded", "failed", "errored"])?;
    let s = nums(st, &["2xx", "3xx", "4xx", "5xx"])?;
    Some([r[0], r[1], r[2], r[3], s[0], s[1], s[2], s[3]])
}

#[test]
fn fixtures_curl_and_h2load_reach_the_h2c_origin_directly() {
    // The baseline for the tests below: the clients and the origin agree
    // without a proxy.
    let origin = H2Origin::start("h2o");
    let r = curl_h2(origin.addr(), "api", "/direct?x=1", &[]);
    assert_eq!(
        (r.code, r.status, r.version.as_str()),
        (0, 200, "2"),
        "{r:?}"
    );
    assert_eq!(r.json()["path"], "/direct?x=1");
    assert_eq!(r.json()["authority"], "api");
    let r = curl_h2(origin.addr(), "api", "/bytes/5000000", &["-o", "/dev/null"]);
    assert_eq!((r.code, r.status, r.size), (0, 200, 5_000_000), "{r:?}");
    if !require_program("h2load", "nghttp2-client") {
        return;
    }
    let url = format!("http://{}/load", origin.addr());
    let (code, text) = h2load(&url, &["-n", "200", "-c", "2", "-m", "10"]);
    let counts = h2load_counts(&text).unwrap_or_else(|| panic!("h2load said:\n{text}"));
    assert_eq!(code, 0, "{text}");
    assert_eq!(counts, [200, 200, 0, 0, 200, 0, 0, 0], "{text}");
}

// ---- h2 through one outbound proxy (endpoints outside the mesh) ----

#[test]
fn curl_http2_prior_knowledge_through_the_outbound_proxy_reaches_the_h2c_origin_as_h2() {
    let origin = H2Origin::start("h2api");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("h2api", &[origin.addr()])
        .start();
    let r = curl_h2(
        web.outbound(),
        "h2api",
        "/hello/h2?q=1",
        &["-H", "x-test: yes"],
    );
    assert_eq!(r.code, 0, "curl failed: {r:?}");
    assert_eq!(
        (r.status, r.version.as_str()),
        (200, "2"),
        "curl speaks h2 to the proxy and gets 200 over h2: {r:?}; origin saw non-h2 \
         connections: {:?}",
        origin.not_h2()
    );
    let echo = r.json();
    assert_eq!(echo["origin"], "h2api");
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["path"], "/hello/h2?q=1");
    let got = origin.last();
    assert_eq!(got.method, "GET");
    assert_eq!(got.path, "/hello/h2?q=1");
    assert_eq!(got.header("x-test"), Some("yes"));
    assert!(
        got.authority
            .as_deref()
            .is_some_and(|a| a.starts_with("h2api")),
        "the origin sees the service as :authority, as an HTTP/1.1 app sees Host: {got:?}"
    );
    assert!(
        origin.not_h2().is_empty(),
        "the proxy spoke something else than h2 to the origin: {:?}",
        origin.not_h2()
    );
    // Unknown authority: the proxy's own 404, over h2.
    let r = curl_h2(web.outbound(), "billing", "/", &["-i"]);
    assert_eq!((r.status, r.version.as_str()), (404, "2"), "{r:?}");
    assert!(
        r.body.to_ascii_lowercase().contains("coremesh-error:"),
        "a local error carries coremesh-error: {r:?}"
    );
}

#[test]
fn h2_bodies_larger_than_a_flow_control_window_stream_through_one_proxy() {
    let origin = H2Origin::start("h2api");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("h2api", &[origin.addr()])
        .start();
    // curl: one 5 MB download.
    let r = curl_h2(
        web.outbound(),
        "h2api",
        "/bytes/5000000",
        &["-o", "/dev/null"],
    );
    assert_eq!(
        (r.code, r.status, r.size),
        (0, 200, 5_000_000),
        "a 5 MB h2 response through the proxy: {r:?}; origin got {} requests, wrote {} \
         responses whole",
        origin.requests(),
        origin.answered()
    );
    // One connection, many streams in turn, each with a body of several
    // DATA frames, both ways.
    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let mut failed = Vec::new();
    for i in 0..30 {
        let down = c.request(
            H2Request::get("h2api", &format!("/bytes/{}", 60_000 + i)),
            H2_TIMEOUT,
        );
        if !down
            .as_ref()
            .is_ok_and(|r| r.status == 200 && r.body.len() == 60_000 + i)
        {
            failed.push(format!(
                "GET #{i}: {:?}",
                down.map(|r| (r.status, r.body.len()))
            ));
            break;
        }
        let up = c.request(
            H2Request::new("POST", "h2api", &format!("/up/{i}")).body(vec![b'u'; 60_000]),
            H2_TIMEOUT,
        );
        if !up.as_ref().is_ok_and(|r| r.status == 200) {
            failed.push(format!("POST #{i}: {:?}", up.map(|r| r.status)));
            break;
        }
    }
    assert!(
        failed.is_empty(),
        "streams in turn on one connection: {failed:?}; origin got {} requests, wrote {} \
         responses whole",
        origin.requests(),
        origin.answered()
    );
}

#[test]
fn http1_and_h2_clients_share_the_outbound_port_at_once() {
    let h1 = Origin::start("api");
    let h2o = H2Origin::start("h2api");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[h1.addr()])
        .service("h2api", &[h2o.addr()])
        .start();
    let out = web.outbound();
    let rounds = 50;
    std::thread::scope(|s| {
        let h1_threads: Vec<_> = (0..3)
            .map(|t| {
                s.spawn(move || {
                    let mut c = Client::connect(out);
                    c.set_read_timeout(Duration::from_secs(30));
                    (0..rounds)
                        .map(|i| {
                            let r = c.request(&Request::get(&format!("/h1/{t}/{i}")).host("api"));
                            (r.status, r.header("x-origin").map(str::to_string))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let h2_threads: Vec<_> = (0..3)
            .map(|t| {
                s.spawn(move || {
                    let c = H2Client::connect(out).unwrap_or_else(|e| panic!("{e}"));
                    let mut got = Vec::new();
                    for i in 0..(rounds / 10) {
                        let batch = (0..10)
                            .map(|k| H2Request::get("h2api", &format!("/h2/{t}/{i}/{k}")))
                            .collect();
                        for r in c.concurrent(batch, H2_TIMEOUT) {
                            got.push(
                                r.map(|r| (r.status, r.header("x-origin").map(str::to_string))),
                            );
                        }
                    }
                    got
                })
            })
            .collect();
        let curl = s.spawn(move || {
            (0..10)
                .map(|i| curl_h2(out, "h2api", &format!("/curl/{i}"), &[]))
                .collect::<Vec<_>>()
        });
        for t in h1_threads {
            let got = t.join().expect("h1 thread");
            assert!(
                got.iter()
                    .all(|(st, o)| *st == 200 && o.as_deref() == Some("api")),
                "every HTTP/1.1 request is answered by the HTTP/1.1 app: {got:?}"
            );
        }
        for t in h2_threads {
            let got = t.join().expect("h2 thread");
            assert_eq!(got.len(), rounds);
            assert!(
                got.iter()
                    .all(|r| matches!(r, Ok((200, Some(o))) if o == "h2api")),
                "every h2 stream is answered by the h2c app: {got:?}; origin saw non-h2: {:?}",
                h2o.not_h2()
            );
        }
        for r in curl.join().expect("curl thread") {
            assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
        }
    });
    assert_eq!(h1.requests(), 3 * rounds);
    assert_eq!(h2o.requests(), 3 * rounds + 10);
    assert!(h2o.not_h2().is_empty(), "{:?}", h2o.not_h2());
}

#[test]
fn h2load_through_the_outbound_proxy_gets_all_2xx() {
    if !require_program("h2load", "nghttp2-client") {
        return;
    }
    let origin = H2Origin::start("h2api");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("h2api", &[origin.addr()])
        .start();
    let url = format!("http://{}/load", web.outbound());
    let (code, text) = h2load(
        &url,
        &[
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "10",
            "-H",
            ":authority: h2api",
        ],
    );
    let counts = h2load_counts(&text).unwrap_or_else(|| panic!("h2load said:\n{text}"));
    assert_eq!(
        counts,
        [2000, 2000, 0, 0, 2000, 0, 0, 0],
        "(total, succeeded, failed, errored, 2xx, 3xx, 4xx, 5xx); h2load said:\n{text}\n\
         origin saw non-h2: {:?}",
        origin.not_h2()
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(origin.requests(), 2000);
    assert!(origin.connections() >= 1);
}

// ---- h2 over the mutual-TLS mesh hop (static mode) ----

/// web [outbound] ══mTLS══▶ api [inbound] ──▶ `app`, certificates from `pki`.
fn static_pair(pki: &Pki, dir: &TempDir, app: SocketAddr) -> (Proxy, Proxy) {
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app)
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.inbound()])
        .extra(&files.toml())
        .start();
    (api, web)
}

#[test]
fn h2_crosses_the_mtls_hop_and_reaches_the_h2c_app_with_bodies_and_trailers() {
    let dir = TempDir::new("h2-mtls");
    let pki = Pki::new("mesh");
    let app = H2Origin::start("api");
    let (_api, web) = static_pair(&pki, &dir, app.addr());

    let r = curl_h2(web.outbound(), "api", "/over/mtls", &[]);
    assert_eq!(
        (r.code, r.status, r.version.as_str()),
        (0, 200, "2"),
        "{r:?}; app saw non-h2 connections: {:?}",
        app.not_h2()
    );
    assert_eq!(
        r.json()["version"],
        "HTTP/2.0",
        "the inbound proxy speaks h2c to the app"
    );
    assert_eq!(r.json()["path"], "/over/mtls");

    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    // A request body with trailers, in both directions.
    let len = 3 << 20;
    let r = c
        .request(
            H2Request::new("POST", "api", "/upload")
                .header("content-type", "application/octet-stream")
                .body(vec![0x5a; len])
                .trailer("x-request-checksum", "7"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.status,
        200,
        "{:?} {}",
        r.header("coremesh-error"),
        r.body_str()
    );
    let echo = r.json();
    assert_eq!(echo["body_len"], len as u64);
    assert_eq!(
        echo["trailers"],
        serde_json::json!([["x-request-checksum", "7"]]),
        "request trailers reach the app"
    );
    let r = c
        .request(H2Request::get("api", "/trailers"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.body_str(), "hello trailers");
    assert_eq!(
        r.trailer("x-checksum"),
        Some("42"),
        "response trailers reach the client: {r:?}"
    );
    let r = c
        .request(H2Request::get("api", "/bytes/5000000"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.status, r.body.len()),
        (200, 5_000_000),
        "a 5 MB response: {:?} {:?}",
        r.headers,
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    );
    let mut h = coremesh_e2e::Fnv64::new();
    h.update(&r.body);
    assert_eq!(h.value(), coremesh_e2e::pattern_checksum(5_000_000));

    // Many streams of one client connection at once.
    let reqs = (0..100)
        .map(|i| H2Request::get("api", &format!("/delay/20/{i}")))
        .collect();
    let rs = c.concurrent(reqs, H2_TIMEOUT);
    let bad: Vec<_> = rs
        .iter()
        .filter(|r| !r.as_ref().is_ok_and(|r| r.status == 200))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of 100 streams failed: {:?}",
        bad.len(),
        bad.first()
    );
    assert!(app.not_h2().is_empty(), "{:?}", app.not_h2());
}

#[test]
fn websocket_echo_through_the_mtls_mesh() {
    if !require_python(&[("websockets", "websockets")]) {
        return;
    }
    let dir = TempDir::new("ws-mtls");
    let pki = Pki::new("mesh");
    let app = PyApp::websocket("ws-api");
    let (api, web) = static_pair(&pki, &dir, app.addr());
    let r = ws_client(web.outbound(), "ws://api/chat?room=1", &["--count", "100"]);
    assert!(
        r["error"].is_null(),
        "websocket through the mesh failed: {r}"
    );
    assert_eq!(r["greeting"]["instance"], "ws-api", "{r}");
    assert_eq!(r["greeting"]["path"], "/chat?room=1", "{r}");
    assert_eq!(r["sent"], 103, "{r}");
    assert_eq!(r["echoed"], 103, "every message comes back unchanged: {r}");
    assert_eq!(r["pong"], true, "{r}");
    assert_eq!(r["close_code"], 1000, "a clean close handshake: {r}");
    // The api proxy carried it (over mutual TLS: its only listener).
    let m = api.metrics();
    assert!(
        m.sum("coremesh_requests_total", &[("direction", "inbound")]) >= 1.0
            || m.sum("coremesh_connections_total", &[("direction", "inbound")]) >= 1.0,
        "{}",
        m.text
    );
}

// ---- gRPC errors made by the proxy ----

/// The gRPC view of a proxy's own answer: HTTP 200, `grpc-status`,
/// `grpc-message`, `coremesh-error`.
fn assert_grpc_error(r: &coremesh_e2e::H2Response, code: u32, what: &str) {
    assert_eq!(
        r.status, 200,
        "{what}: a gRPC error is HTTP 200 with grpc-status, got {r:?}"
    );
    assert_eq!(r.grpc_status(), Some(code), "{what}: {r:?}");
    assert!(
        r.header_or_trailer("grpc-message").is_some(),
        "{what}: grpc-message says why: {r:?}"
    );
    assert!(
        r.header_or_trailer("coremesh-error").is_some(),
        "{what}: coremesh-error names the proxy's reason: {r:?}"
    );
}

#[test]
fn errors_the_proxy_makes_for_grpc_calls_are_grpc_errors() {
    let h2o = H2Origin::start("h2api");
    let dir = TempDir::new("grpc-errors");
    let log = dir.path().join("access.log");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service_raw("empty", &[])
        .service("dead", &[unused_port()])
        .service("h2api", &[h2o.addr()])
        .proxy_key("access_log", &format!("{:?}", log.display().to_string()))
        .start();
    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let call = |authority: &str| {
        c.request(
            H2Request::grpc(authority, "/test.Echo/Unary", b"{}"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{authority}: {e}"))
    };
    assert_grpc_error(&call("nosuchservice"), 14, "no route");
    assert_grpc_error(&call("empty"), 14, "no healthy endpoint");
    assert_grpc_error(&call("dead"), 14, "connect failure");
    // The same failures for a plain h2 request stay HTTP errors.
    let r = c
        .request(H2Request::get("nosuchservice", "/"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.header("coremesh-error").is_some(), "{r:?}");
    assert_eq!(r.grpc_status(), None, "{r:?}");
    // A gRPC call that works still reaches the app.
    let r = call("h2api");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-origin"), Some("h2api"));
    assert_eq!(h2o.last().header("content-type"), Some("application/grpc"));

    // The access log says HTTP/2, and the gRPC status of the calls.
    let lines = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 5).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "5 access log lines: {:?}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(
        lines.iter().all(|l| l["protocol"] == "HTTP/2"),
        "every line says HTTP/2: {lines:?}"
    );
    let unavailable = lines
        .iter()
        .filter(|l| l["path"] == "/test.Echo/Unary" && l["grpc_status"] == 14)
        .count();
    assert_eq!(
        unavailable, 3,
        "the three failed calls, grpc_status 14: {lines:?}"
    );

    // What grpcio makes of it: UNAVAILABLE with the proxy's reason, not an
    // HTTP status mapped by the client library.
    if have_grpcio() {
        let r = GrpcClient::new(web.outbound())
            .authority("dead")
            .run(&["unary"]);
        let call = r.call();
        assert_eq!(call["code"], "UNAVAILABLE", "{}", r.json);
        assert!(
            call["trailing"]["coremesh-error"].is_string()
                || call["initial"]["coremesh-error"].is_string(),
            "the client sees coremesh-error in the metadata: {}",
            r.json
        );
        assert!(
            !call["details"]
                .as_str()
                .unwrap_or("")
                .contains("Received http2 header with status"),
            "grpcio mapped an HTTP status, the proxy sent no grpc-status: {}",
            r.json
        );
    }
}

// ---- gRPC through the mesh (control) ----

/// Control, one api proxy (label `version`) in front of a Python app per
/// version, and a web proxy that calls api.
struct Mesh {
    control: Control,
    apps: Vec<PyApp>,
    apis: Vec<Proxy>,
    web: Proxy,
    _members: Vec<Member>,
}

impl Mesh {
    /// gRPC apps named `api-VERSION`. The api proxies check their app over
    /// TCP only once a minute, so control does not withdraw an endpoint
    /// whose app a test kills (retries are what the test is about).
    fn grpc(versions: &[&str]) -> Mesh {
        Mesh::grpc_checked(versions, &[("interval", "\"60s\""), ("timeout", "\"1s\"")])
    }

    /// gRPC apps whose proxies check them with `health` (`[control.health]`
    /// keys, values as TOML).
    fn grpc_checked(versions: &[&str], health: &[(&str, &str)]) -> Mesh {
        let control = ControlBuilder::new().start();
        // The services first, so every proxy's first snapshot carries them.
        control.apply(SERVICES);
        let mut members = Vec::new();
        let mut apps = Vec::new();
        let mut apis = Vec::new();
        for v in versions {
            let app = PyApp::grpc(&format!("api-{v}"));
            let m = control.member("api", &format!("api-{v}"));
            let section = health
                .iter()
                .fold(control.section(&m), |sec, (k, v)| sec.health(k, v));
            apis.push(
                ProxyBuilder::new("api")
                    .inbound(app.addr())
                    .inbound_key("identity_header", "\"x-coremesh-caller\"")
                    .labels(&[("version", v)])
                    .control(&section)
                    .start(),
            );
            apps.push(app);
            members.push(m);
        }
        let wm = control.member("web", "web-1");
        let web = ProxyBuilder::new("web")
            .outbound()
            .control(&control.section(&wm).calls(&["api"]))
            .start();
        members.push(wm);
        Mesh {
            control,
            apps,
            apis,
            web,
            _members: members,
        }
    }

    /// Services api and web and `policy`; waits until the proxies of the
    /// services in `must` run it (the others' views may not change: see
    /// [`Control::wait_applied`]) and every endpoint is registered.
    fn apply(&self, policy: &str, must: &[&str]) {
        let mut yaml = String::from(SERVICES);
        if !policy.trim().is_empty() {
            yaml += "---\n";
            yaml += policy;
        }
        let version = self.control.apply(&yaml);
        self.control.wait_applied(
            self.apis.len() + 1,
            self.apis.len(),
            version,
            must,
            CONVERGE,
        );
    }

    /// A gRPC client calling api through the web proxy, with a 30 s
    /// deadline on every call (so a stuck call fails the test in bounded
    /// time).
    fn client(&self) -> GrpcClient {
        self.client_without_deadline()
            .timeout(Duration::from_secs(30))
    }

    /// The same without a client deadline (no `grpc-timeout`).
    fn client_without_deadline(&self) -> GrpcClient {
        GrpcClient::new(self.web.outbound()).authority("api")
    }

    fn app(&mut self, name: &str) -> &mut PyApp {
        self.apps
            .iter_mut()
            .find(|a| a.name() == name)
            .unwrap_or_else(|| panic!("no app {name}"))
    }
}

fn assert_all_ok(r: &GrpcRun, n: usize, what: &str) {
    assert_eq!(r.count("OK"), n, "{what}: {}", r.summary());
}

#[test]
fn grpc_all_four_call_shapes_through_the_mtls_mesh() {
    if !have_grpcio() {
        return;
    }
    let m = Mesh::grpc(&["v1"]);
    m.apply("", &[]);
    let c = m.client();

    let r = c.run(&[
        "unary",
        "--count",
        "5",
        "--size",
        "1000",
        "--reply-size",
        "2000",
    ]);
    assert_all_ok(&r, 5, "unary");
    for call in r.calls() {
        assert_eq!(call["instance"], "api-v1");
        assert_eq!(call["reply"]["got_size"], 1000);
        assert_eq!(call["reply_size"], 2000);
        assert_eq!(
            call["reply"]["metadata"]["x-coremesh-caller"],
            format!("{TD}/web"),
            "the call crossed the mesh as web (mutual TLS): {call}"
        );
    }

    let r = c.run(&["server-stream", "--count", "20", "--reply-size", "1000"]);
    let call = r.call();
    assert_eq!(call["code"], "OK", "server stream: {}", r.json);
    let replies = call["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 20, "{}", r.json);
    assert!(replies
        .iter()
        .enumerate()
        .all(|(i, rep)| rep["index"] == i && rep["size"] == 1000));

    let r = c.run(&["client-stream", "--count", "20", "--size", "1000"]);
    let call = r.call();
    assert_eq!(call["code"], "OK", "client stream: {}", r.json);
    assert_eq!(call["reply"]["count"], 20);
    assert_eq!(call["reply"]["got_size"], 20_000);

    let r = c.run(&[
        "bidi",
        "--count",
        "20",
        "--size",
        "500",
        "--reply-size",
        "300",
    ]);
    let call = r.call();
    assert_eq!(call["code"], "OK", "bidi: {}", r.json);
    let replies = call["replies"].as_array().expect("replies");
    assert_eq!(
        replies.len(),
        20,
        "ping-pong: every message answered in turn: {}",
        r.json
    );
    assert!(replies
        .iter()
        .all(|rep| rep["got_size"] == 500 && rep["size"] == 300));

    let r = c.run(&["health"]);
    assert_eq!(r.call()["code"], "OK", "{}", r.json);
    assert_eq!(r.call()["serving"], true);

    // /metrics counts them as h2 streams and gRPC calls with their status.
    let ok_calls = 9.0;
    let counted = wait_for(Duration::from_secs(5), || {
        let mt = m.web.metrics();
        let ok = mt.sum(
            "coremesh_grpc_calls_total",
            &[("direction", "outbound"), ("grpc_status", "0")],
        );
        (ok >= ok_calls).then_some(mt)
    });
    let mt = counted.unwrap_or_else(|| m.web.metrics());
    assert!(
        mt.sum(
            "coremesh_grpc_calls_total",
            &[("direction", "outbound"), ("grpc_status", "0")]
        ) >= ok_calls,
        "{ok_calls} OK calls in coremesh_grpc_calls_total:\n{}",
        mt.text
    );
    assert!(
        mt.sum("coremesh_h2_streams_total", &[("direction", "outbound")]) >= ok_calls,
        "{}",
        mt.text
    );
}

#[test]
fn grpc_large_messages_cross_the_mesh_whole() {
    if !have_grpcio() {
        return;
    }
    let m = Mesh::grpc(&["v1"]);
    m.apply("", &[]);
    let c = m.client();
    let mib8 = (8 << 20).to_string();
    let mib4 = (4 << 20).to_string();

    let r = c.run(&[
        "unary",
        "--count",
        "2",
        "--size",
        &mib8,
        "--reply-size",
        &mib8,
    ]);
    assert_all_ok(&r, 2, "8 MiB unary");
    let sha = r.calls()[0]["reply"]["got_sha256"].clone();
    for call in r.calls() {
        assert_eq!(call["reply"]["got_size"], 8 << 20, "{call}");
        assert_eq!(call["reply_size"], 8 << 20, "{call}");
        assert_eq!(call["reply"]["got_sha256"], sha, "same bytes both times");
    }
    // The app received exactly what a direct call delivers.
    let direct = GrpcClient::new(m.apps[0].addr()).run(&["unary", "--size", &mib8]);
    assert_eq!(direct.call()["reply"]["got_sha256"], sha);

    let r = c.run(&["server-stream", "--count", "3", "--reply-size", &mib4]);
    assert_eq!(r.call()["code"], "OK", "{}", r.summary());
    assert_eq!(r.call()["reply_size"], 3 * (4 << 20));
    let r = c.run(&["client-stream", "--count", "3", "--size", &mib4]);
    assert_eq!(r.call()["code"], "OK", "{}", r.summary());
    assert_eq!(r.call()["reply"]["got_size"], 3 * (4 << 20));
    let r = c.run(&[
        "bidi",
        "--count",
        "2",
        "--size",
        &mib8,
        "--reply-size",
        &mib8,
    ]);
    assert_eq!(r.call()["code"], "OK", "{}", r.summary());
    assert_eq!(r.call()["reply_size"], 2 * (8 << 20));
}

#[test]
fn grpc_a_dead_server_is_unavailable() {
    if !have_grpcio() {
        return;
    }
    let mut m = Mesh::grpc(&["v1"]);
    // Routes match gRPC services (`match.grpc`); a call no rule matches
    // (the health service here) has no route: UNAVAILABLE too.
    m.apply(
        r#"kind: Route
name: api-echo-only
service: api
rules:
  - match: { grpc: { service: test.Echo } }
    backends: [ {} ]
"#,
        &["web"],
    );
    let c = m.client();
    assert_all_ok(&c.run(&["unary"]), 1, "before the server dies");
    let r = c.run(&["health"]);
    assert_eq!(r.call()["code"], "UNAVAILABLE", "no route: {}", r.json);
    assert!(
        r.call()["trailing"]["coremesh-error"].is_string()
            || r.call()["initial"]["coremesh-error"].is_string(),
        "no route: {}",
        r.json
    );
    m.app("api-v1").kill();
    let r = c.run(&["unary", "--count", "3"]);
    assert_eq!(r.count("UNAVAILABLE"), 3, "{}", r.json);
    let call = &r.calls()[0];
    assert!(
        call["trailing"]["coremesh-error"].is_string()
            || call["initial"]["coremesh-error"].is_string(),
        "the proxy says why (coremesh-error): {call}"
    );
    assert!(
        !call["details"]
            .as_str()
            .unwrap_or("")
            .contains("Received http2 header with status"),
        "a gRPC status, not an HTTP status the client mapped: {call}"
    );
    // Streams too.
    let r = c.run(&["server-stream", "--count", "3"]);
    assert_eq!(r.call()["code"], "UNAVAILABLE", "{}", r.json);
}

#[test]
fn grpc_an_access_policy_denial_is_permission_denied() {
    if !have_grpcio() {
        return;
    }
    let m = Mesh::grpc(&["v1"]);
    m.apply(
        r#"kind: AccessPolicy
name: api-grpc
service: api
default: deny
rules:
  - from: [web]
    methods: [POST]
    path: /test.Echo/Unary
"#,
        &["api"],
    );
    let c = m.client();
    // The policy reaches the api proxy a moment after convergence.
    let mut last = None;
    let denied = wait_for(Duration::from_secs(15), || {
        let r = c.run(&["server-stream", "--count", "1"]);
        let done = r.call()["code"] == "PERMISSION_DENIED";
        last = Some(r);
        done.then_some(())
    });
    let r = last.expect("ran");
    assert!(
        denied.is_some(),
        "a method the policy does not allow: PERMISSION_DENIED, got {}",
        r.json
    );
    let call = r.call();
    let why = call["trailing"]["coremesh-error"]
        .as_str()
        .or(call["initial"]["coremesh-error"].as_str())
        .unwrap_or_default();
    assert!(
        why.contains("forbidden by policy api-grpc"),
        "coremesh-error names the policy: {call}"
    );
    assert_all_ok(&c.run(&["unary", "--count", "3"]), 3, "the allowed method");
    let stats = GrpcClient::new(m.apps[0].addr()).run(&["stats"]);
    assert_eq!(
        stats.call()["reply"]["calls"].get("ServerStream"),
        None,
        "a denied call never reaches the app: {}",
        stats.json
    );
}

#[test]
fn grpc_deadlines_end_calls_with_deadline_exceeded() {
    if !have_grpcio() {
        return;
    }
    let m = Mesh::grpc(&["v1"]);
    m.apply("", &[]);
    let app = m.apps[0].addr();

    // The client's own deadline, shorter than the method: DEADLINE_EXCEEDED,
    // and the cancellation reaches the app, which stops working on it.
    let r = m
        .client()
        .timeout(Duration::from_millis(800))
        .run(&["sleep", "--ms", "10000"]);
    assert_eq!(r.call()["code"], "DEADLINE_EXCEEDED", "{}", r.json);
    let cancelled = wait_for(Duration::from_secs(8), || {
        let s = GrpcClient::new(app).run(&["stats"]);
        (s.call()["reply"]["cancelled"].as_u64() >= Some(1)).then_some(())
    });
    assert!(
        cancelled.is_some(),
        "the app never saw the expired call cancelled (the reset did not cross the mesh)"
    );

    // The deadline is forwarded: the app sees at most what the client gave.
    let r = m.client().timeout(Duration::from_secs(20)).run(&["unary"]);
    assert_all_ok(&r, 1, "unary with a 20 s deadline");
    let left = r.call()["reply"]["deadline_s"].as_f64();
    assert!(
        left.is_some_and(|s| s > 0.0 && s <= 20.0),
        "the app sees the call's deadline (grpc-timeout forwarded): {}",
        r.call()
    );

    // grpc-timeout alone (a client that does not enforce its own deadline):
    // the proxy ends the call with DEADLINE_EXCEEDED long before the
    // method's 5 s.
    let c = H2Client::connect(m.web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let r = c
        .request(
            H2Request::grpc("api", "/test.Echo/Sleep", br#"{"ms":5000}"#)
                .header("grpc-timeout", "500m"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The proxy forwards the deadline reduced, so the app's gRPC server may
    // end the call itself a moment before the proxy does (a busy machine):
    // either way DEADLINE_EXCEEDED, with or without `coremesh-error`.
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.grpc_status(),
        Some(4),
        "grpc-timeout 500m on a 5 s method: {r:?}"
    );
    assert!(
        r.took < Duration::from_millis(4000),
        "the proxy's deadline answered, not the end of the method: {r:?}"
    );

    // The route's timeout, with no deadline from the client.
    m.apply(
        r#"kind: Route
name: api-timeout
service: api
rules:
  - timeout: 700ms
    backends: [ {} ]
"#,
        &["web"],
    );
    let r = m.client_without_deadline().run(&["sleep", "--ms", "5000"]);
    let call = r.call();
    assert_eq!(call["code"], "DEADLINE_EXCEEDED", "{}", r.json);
    assert!(
        call["trailing"]["coremesh-error"].is_string()
            || call["initial"]["coremesh-error"].is_string(),
        "the proxy ended it (coremesh-error): {call}"
    );
}

#[test]
fn grpc_retries_on_unavailable_reach_the_healthy_endpoint() {
    if !have_grpcio() {
        return;
    }
    let mut m = Mesh::grpc(&["v1", "v2"]);
    m.apply(
        r#"kind: Route
name: api-retries
service: api
rules:
  - retries: { attempts: 2, on: [unavailable, connect-failure, gateway-error], backoff: { base: 1ms, max: 5ms } }
    backends: [ {} ]
---
kind: Resilience
service: api
loadBalancer: round-robin
retryBudget: { ratio: 1.0, minPerSecond: 100 }
"#,
        &["web"],
    );
    let c = m.client();
    let r = c.run(&["unary", "--count", "20"]);
    assert_all_ok(&r, 20, "both endpoints up");
    assert!(
        r.instances().len() == 2,
        "round-robin uses both endpoints: {}",
        r.summary()
    );
    let before = m.apis[0]
        .metrics()
        .sum("coremesh_requests_total", &[("direction", "inbound")]);
    m.app("api-v1").kill();
    let n = 40;
    let r = c.run(&["unary", "--count", &n.to_string()]);
    assert_all_ok(&r, n, "one endpoint's server is dead; retries hide it");
    assert_eq!(
        r.instances().get("api-v2"),
        Some(&n),
        "every call ends on the healthy endpoint: {}",
        r.summary()
    );
    let tried = wait_for(Duration::from_secs(5), || {
        let after = m.apis[0]
            .metrics()
            .sum("coremesh_requests_total", &[("direction", "inbound")]);
        (after > before).then_some(after - before)
    });
    assert!(
        tried.is_some(),
        "no call was tried on the dead endpoint: round-robin should send first tries there, \
         so the retries were not exercised"
    );
}

#[test]
fn grpc_streams_of_one_connection_are_balanced_by_weight() {
    if !have_grpcio() {
        return;
    }
    let m = Mesh::grpc(&["v1", "v2"]);
    m.apply(
        r#"kind: Route
name: api-split
service: api
rules:
  - backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
"#,
        &["web"],
    );
    let n = 400;
    // One channel: one HTTP/2 connection from the client to the proxy.
    let r = m
        .client()
        .run(&["unary", "--count", &n.to_string(), "--concurrency", "4"]);
    assert_all_ok(&r, n, "split");
    let v1 = r.instances().get("api-v1").copied().unwrap_or(0);
    let v2 = r.instances().get("api-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "{}", r.summary());
    let share = v2 as f64 * 100.0 / n as f64;
    // Binomial(400, 0.1): sd 1.5 points; 5 points is over 3 sd.
    assert!(
        (5.0..=15.0).contains(&share),
        "v2 served {v2} of {n} streams of one connection ({share:.1}%), 10% +- 5 expected; \
         all on one endpoint means balancing per connection: {}",
        r.summary()
    );
}

#[test]
fn grpc_a_rate_limited_call_is_resource_exhausted() {
    if !have_grpcio() {
        return;
    }
    let m = Mesh::grpc(&["v1"]);
    m.apply(
        "kind: Resilience\nservice: api\nrateLimit: { requestsPerSecond: 2, burst: 2 }\n",
        &["api"],
    );
    let r = m.client().run(&["unary", "--count", "30"]);
    let limited = r.count("RESOURCE_EXHAUSTED");
    assert!(
        limited >= 1 && r.count("OK") >= 1 && limited + r.count("OK") == 30,
        "30 calls at once against 2/s: some pass, the rest RESOURCE_EXHAUSTED, nothing else: {}",
        r.summary()
    );
    let call = r
        .calls()
        .iter()
        .find(|c| c["code"] == "RESOURCE_EXHAUSTED")
        .expect("a limited call");
    assert!(
        call["trailing"]["coremesh-error"].is_string()
            || call["initial"]["coremesh-error"].is_string(),
        "{call}"
    );
}

#[test]
fn grpc_a_server_that_dies_mid_stream_is_unavailable() {
    if !have_grpcio() {
        return;
    }
    // Without a mesh, grpcio reports a server that dies during a stream
    // as UNAVAILABLE; through the mesh the client sees the same.
    let mut m = Mesh::grpc(&["v1"]);
    m.apply("", &[]);
    let c = m.client();
    assert_all_ok(&c.run(&["unary"]), 1, "before the server dies");
    let run = std::thread::scope(|s| {
        // 100 replies 100 ms apart: a 10 s stream. The kill comes 4 s in,
        // leaving the Python client up to 4 s to start on a loaded machine
        // (1.5 s was once too little) and 6 s of stream still to cut.
        let t = s.spawn(|| c.run(&["server-stream", "--count", "100", "--interval-ms", "100"]));
        std::thread::sleep(Duration::from_secs(4));
        m.app("api-v1").kill();
        t.join().expect("client thread")
    });
    let call = run.call();
    let got = call["replies"].as_array().map_or(0, Vec::len);
    assert!(
        got > 0 && got < 100,
        "replies came until the server died: {got}; {}",
        run.json
    );
    assert_eq!(
        call["code"], "UNAVAILABLE",
        "a server dying mid-stream: {}",
        run.json
    );
}

#[test]
fn grpc_streams_moving_data_outlive_the_idle_timeout() {
    if !have_grpcio() {
        return;
    }
    // idle = 1s on both proxies; streams whose messages are 300 ms apart
    // run for about 4 s and are never cut.
    let dir = TempDir::new("grpc-idle");
    let pki = Pki::new("mesh");
    let app = PyApp::grpc("api-1");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .timeout("idle", "1s")
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.inbound()])
        .timeout("idle", "1s")
        .extra(&files.toml())
        .start();
    let c = GrpcClient::new(web.outbound())
        .authority("api")
        .timeout(Duration::from_secs(30));
    let r = c.run(&["server-stream", "--count", "14", "--interval-ms", "300"]);
    assert_eq!(r.call()["code"], "OK", "server stream: {}", r.json);
    assert_eq!(r.call()["replies"].as_array().map(Vec::len), Some(14));
    let r = c.run(&["bidi", "--count", "14", "--interval-ms", "300"]);
    assert_eq!(r.call()["code"], "OK", "bidi: {}", r.json);
    assert_eq!(r.call()["replies"].as_array().map(Vec::len), Some(14));
}

#[test]
fn sigterm_lets_open_grpc_calls_finish() {
    if !have_grpcio() {
        return;
    }
    let dir = TempDir::new("grpc-drain");
    let pki = Pki::new("mesh");
    let app = PyApp::grpc("api-1");
    let (_api, mut web) = static_pair(&pki, &dir, app.addr());
    let c = GrpcClient::new(web.outbound())
        .authority("api")
        .timeout(Duration::from_secs(30));
    assert_all_ok(&c.run(&["unary"]), 1, "before the drain");
    let run = std::thread::scope(|s| {
        let t = s.spawn(|| c.run(&["sleep", "--ms", "2500"]));
        // The call is in flight at the app.
        let started = wait_for(Duration::from_secs(10), || {
            let st = GrpcClient::new(app.addr()).run(&["stats"]);
            st.call()["reply"]["calls"]["Sleep"].as_u64().map(|_| ())
        });
        assert!(started.is_some(), "the call never reached the app");
        web.signal(libc::SIGTERM);
        t.join().expect("client thread")
    });
    assert_eq!(
        run.call()["code"],
        "OK",
        "a call open when the proxy got SIGTERM finishes: {}",
        run.json
    );
    let exited = web.wait_exit(Duration::from_secs(15));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the proxy exits 0 once its streams are done: {exited:?}"
    );
}

#[test]
fn curl_http2_over_tls_to_the_inbound_listener_negotiates_h2_by_alpn() {
    // A mesh peer's view of the inbound port: mutual TLS, ALPN h2.
    let dir = TempDir::new("h2-alpn");
    let pki = Pki::new("mesh");
    let app = H2Origin::start("api");
    let (api, _web) = static_pair(&pki, &dir, app.addr());
    let peer = pki.files(dir.path(), "peer", "web");
    let inbound = api.inbound();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-k", "--tlsv1.3", "--http2"])
        .arg("--cert")
        .arg(&peer.cert)
        .arg("--key")
        .arg(&peer.key)
        .arg("--connect-to")
        .arg(format!("api:443:{}:{}", inbound.ip(), inbound.port()))
        .args(["-w", "\n%{http_version} %{response_code}"])
        .arg("https://api/over/tls")
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    assert_eq!(
        last,
        "2 200",
        "curl --http2 over TLS: ALPN h2 and 200; curl said {stderr}; body {body:?}; app saw \
         non-h2: {:?}",
        app.not_h2()
    );
    let echo: serde_json::Value = serde_json::from_str(body).expect("echo JSON");
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["path"], "/over/tls");
}

#[test]
fn grpc_an_endpoint_whose_grpc_health_check_fails_stops_receiving_calls() {
    if !have_grpcio() {
        return;
    }
    // The api proxies ask their app grpc.health.v1 Check every 200 ms.
    let m = Mesh::grpc_checked(
        &["v1", "v2"],
        &[
            ("kind", "\"grpc\""),
            ("interval", "\"200ms\""),
            ("timeout", "\"1s\""),
        ],
    );
    m.apply(
        r#"kind: Resilience
service: api
loadBalancer: round-robin
healthCheck: { interval: 500ms, timeout: 250ms, unhealthyThreshold: 2, healthyThreshold: 2 }
"#,
        &["web"],
    );
    let c = m.client();
    let r = c.run(&["unary", "--count", "10"]);
    assert_all_ok(&r, 10, "both serving");
    assert_eq!(r.instances().len(), 2, "{}", r.summary());
    let v2 = GrpcClient::new(m.apps[1].addr());
    let checks = v2.run(&["stats"]).call()["reply"]["health_checks"].clone();
    assert!(
        checks.as_u64() >= Some(1),
        "the api proxy checks its app with grpc.health.v1: {checks}"
    );

    // v2's app still answers calls but reports NOT_SERVING: it leaves the
    // rotation (a TCP check would keep it).
    v2.run(&["set-health", "--serving", "false"]);
    let mut last = None;
    let out = wait_for(Duration::from_secs(20), || {
        let r = c.run(&["unary", "--count", "10"]);
        let gone = r.count("OK") == 10 && r.instances().get("api-v1") == Some(&10);
        last = Some(r);
        gone.then_some(())
    });
    assert!(
        out.is_some(),
        "v2 reports NOT_SERVING and still gets calls: {}",
        last.map(|r| r.summary()).unwrap_or_default()
    );

    // SERVING again: it comes back.
    v2.run(&["set-health", "--serving", "true"]);
    let back = wait_for(Duration::from_secs(30), || {
        let r = c.run(&["unary", "--count", "10"]);
        r.instances().contains_key("api-v2").then_some(())
    });
    assert!(back.is_some(), "v2 never came back after SERVING again");
}

#[test]
fn an_http1_only_app_gets_h2_requests_translated() {
    // [inbound] app_protocol = "http1": h2 from the mesh, HTTP/1.1 to the app.
    let dir = TempDir::new("h2-to-h1");
    let pki = Pki::new("mesh");
    let app = Origin::start("api");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .inbound_key("app_protocol", "\"http1\"")
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.inbound()])
        .extra(&files.toml())
        .start();

    let r = curl_h2(
        web.outbound(),
        "api",
        "/h2/to/h1?q=1",
        &["-H", "x-test: yes"],
    );
    assert_eq!(
        (r.code, r.status, r.version.as_str()),
        (0, 200, "2"),
        "{r:?}"
    );
    let echo = r.json();
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    assert_eq!(
        echo["target"], "/h2/to/h1?q=1",
        "origin-form target: {echo}"
    );
    let got = app.last();
    assert!(
        got.header("host").is_some_and(|h| h.starts_with("api")),
        ":authority becomes Host: {got:?}"
    );
    assert_eq!(got.header("x-test"), Some("yes"));

    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let r = c
        .request(H2Request::get("api", "/chunked"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.body_str(), "hello chunked world");
    assert_eq!(
        r.trailer("x-checksum"),
        Some("42"),
        "the app's chunked trailers reach the h2 client: {r:?}"
    );
    assert!(
        r.header("transfer-encoding").is_none() && r.header("connection").is_none(),
        "no connection-specific fields over h2: {r:?}"
    );
    // HTTP/1.1 clients on the same port are unaffected.
    let mut h1 = web.outbound_client();
    assert_eq!(h1.get("api", "/h1").status, 200);
    let r = c
        .request(
            // HTTP/1.1 carries request trailers the request announces
            // (RFC 9110, 6.6.2); hyper's client sends only those.
            H2Request::new("POST", "api", "/upload")
                .header("trailer", "x-request-checksum")
                .body(vec![b'b'; 100_000])
                .trailer("x-request-checksum", "7"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    let got = app.last();
    assert_eq!(got.body_len, 100_000, "{:?}", got.headers);
    assert_eq!(
        got.trailers,
        vec![("x-request-checksum".to_string(), "7".to_string())],
        "announced request trailers reach the HTTP/1.1 app (chunked); it got headers {:?}",
        got.headers
    );
}

#[test]
fn extended_connect_is_not_offered_and_connect_over_h2_is_405() {
    let origin = H2Origin::start("h2api");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("h2api", &[origin.addr()])
        .start();
    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let r = c
        .request(H2Request::get("h2api", "/first"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    assert!(
        !c.extended_connect_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL is not offered (RFC 8441 unsupported)"
    );
    let r = c
        .request(H2Request::new("CONNECT", "h2api:443", ""), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 405, "{r:?}");
    // The connection is still good.
    let r = c
        .request(H2Request::get("h2api", "/after"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
    assert_eq!(origin.requests(), 2, "the CONNECT never reached the origin");
}

#[test]
fn an_h2c_only_app_gets_http1_requests_translated() {
    // [inbound] app_protocol = "h2c": HTTP/1.1 from the mesh, h2c to the app.
    let dir = TempDir::new("h1-to-h2");
    let pki = Pki::new("mesh");
    let app = H2Origin::start("api");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .inbound_key("app_protocol", "\"h2c\"")
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.inbound()])
        .extra(&files.toml())
        .start();
    let mut c = web.outbound_client();
    c.set_read_timeout(Duration::from_secs(30));
    let r = c.request(
        &Request::get("/h1/to/h2?q=1")
            .host("api")
            .header("x-test", "yes"),
    );
    assert_eq!(
        r.status,
        200,
        "{:?} {:?}; app saw non-h2: {:?}",
        r.header("coremesh-error"),
        r.body_str(),
        app.not_h2()
    );
    let echo = r.json();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    assert_eq!(echo["path"], "/h1/to/h2?q=1");
    assert!(
        echo["authority"]
            .as_str()
            .is_some_and(|a| a.starts_with("api")),
        "Host becomes :authority: {echo}"
    );
    let got = app.last();
    assert_eq!(got.header("x-test"), Some("yes"));
    assert!(
        got.header("host").is_none() && got.header("connection").is_none(),
        "no Host or connection-specific fields over h2: {:?}",
        got.headers
    );

    // Bodies both ways, Content-Length and chunked.
    let r = c.request(
        &Request::post("/upload")
            .host("api")
            .body(vec![b'c'; 100_000]),
    );
    assert_eq!(r.status, 200);
    assert_eq!(app.last().body_len, 100_000);
    let r = c.request(
        &Request::post("/upload-chunked")
            .host("api")
            .header("Transfer-Encoding", "chunked")
            .body("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(app.last().body_len, 11);
    let r = c.request(&Request::get("/bytes/300000").host("api"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("300000"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.body.len(), 300_000);
    let r = c.request(
        &Request::get("/trailers")
            .host("api")
            .header("TE", "trailers"),
    );
    assert_eq!(r.body_str(), "hello trailers");
    assert_eq!(
        r.trailer("x-checksum"),
        Some("42"),
        "the app's trailers reach the HTTP/1.1 client in a chunked body: {r:?}"
    );
    assert!(app.not_h2().is_empty(), "{:?}", app.not_h2());
}

/// A web proxy calling an api proxy over mutual TLS, whose inbound speaks
/// `app_protocol` to `app` and names the caller in `x-coremesh-caller`.
fn translating_pair(dir: &TempDir, app: SocketAddr, app_protocol: &str) -> (Proxy, Proxy) {
    let pki = Pki::new("mesh");
    let files = pki.files(dir.path(), "api", "api");
    let api = ProxyBuilder::new("api")
        .inbound(app)
        .inbound_key("app_protocol", &format!("{app_protocol:?}"))
        .inbound_key("identity_header", "\"x-coremesh-caller\"")
        .extra(&files.toml())
        .start();
    let files = pki.files(dir.path(), "web", "web");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.inbound()])
        .extra(&files.toml())
        .start();
    (web, api)
}

#[test]
fn an_h2c_only_app_gets_the_trailers_of_a_chunked_http1_request() {
    // HTTP/1.1 chunked request -> h2c app: the trailer section becomes a
    // trailing HEADERS frame, less what RFC 9110 6.5.1 keeps out of
    // trailers and the caller's identity field (the proxy's word).
    let dir = TempDir::new("h1-trailers-to-h2");
    let app = H2Origin::start("api");
    let (web, _api) = translating_pair(&dir, app.addr(), "h2c");
    let mut c = web.outbound_client();
    c.set_read_timeout(Duration::from_secs(30));
    // The trailer section arrives in a later read than the head and data.
    c.send(
        b"POST /upload-trailers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\
          TE: trailers\r\n\r\n5\r\nhello\r\n6\r\n world\r\n",
    );
    std::thread::sleep(Duration::from_millis(200));
    c.send(
        b"0\r\nX-Checksum: 7\r\nx-multi: a\r\nX-Multi:  b \r\nContent-Type: text/evil\r\n\
          Host: evil\r\nContent-Length: 99\r\nTrailer: x-checksum\r\n\
          x-coremesh-caller: spiffe://forged/caller\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(
        r.status,
        200,
        "{:?} {:?}; app saw non-h2: {:?}",
        r.header("coremesh-error"),
        r.body_str(),
        app.not_h2()
    );
    let got = app.last();
    assert_eq!((got.body_len, got.path.as_str()), (11, "/upload-trailers"));
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        got.trailers,
        pairs(&[("x-checksum", "7"), ("x-multi", "a"), ("x-multi", "b")]),
        "the request's trailers reach the h2c app, prohibited ones dropped"
    );
    assert!(
        got.header("x-coremesh-caller")
            .is_some_and(|id| id.starts_with("spiffe://") && !id.contains("forged")),
        "the identity the app reads is the proxy's: {:?}",
        got.headers
    );

    // Only prohibited fields: the stream ends with DATA, the app sees no
    // trailers; and the connection goes on after the trailer section.
    let r = c.request(
        &Request::post("/only-prohibited")
            .host("api")
            .header("Transfer-Encoding", "chunked")
            .body("3\r\nabc\r\n0\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{:?}", r.body_str());
    let got = app.last();
    assert_eq!((got.path.as_str(), got.body_len), ("/only-prohibited", 3));
    assert!(got.trailers.is_empty(), "{:?}", got.trailers);
    let r = c.request(&Request::get("/after").host("api"));
    assert_eq!(r.status, 200);
    assert_eq!(app.last().path, "/after");
    assert!(app.not_h2().is_empty(), "{:?}", app.not_h2());
}

#[test]
fn an_http1_only_app_gets_h2_request_trailers_the_request_announces() {
    // h2 request -> HTTP/1.1 app: hyper's client writes only the trailer
    // fields the request names in `trailer`, in a chunked body (README,
    // "HTTP/2 and gRPC"). This pins down what is carried and what is not.
    let dir = TempDir::new("h2-trailers-to-h1");
    let app = Origin::start("api");
    let (web, _api) = translating_pair(&dir, app.addr(), "http1");
    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let post = |path: &str| H2Request::new("POST", "api", path).body(vec![b'b'; 20_000]);

    // Announced, no content-length: chunked, the announced trailers (not
    // the identity field, which the proxy sets in the head).
    let r = c
        .request(
            post("/announced")
                .header("trailer", "x-request-checksum, x-coremesh-caller")
                .trailer("x-request-checksum", "7")
                .trailer("x-coremesh-caller", "spiffe://forged/caller"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    let got = app.last();
    assert_eq!((got.target.as_str(), got.body_len), ("/announced", 20_000));
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        got.trailers,
        vec![("x-request-checksum".to_string(), "7".to_string())],
        "announced trailers reach the app, the forged identity does not"
    );
    assert!(
        got.header("x-coremesh-caller")
            .is_some_and(|id| id.starts_with("spiffe://") && !id.contains("forged")),
        "{:?}",
        got.headers
    );

    // Not announced (a gRPC-like request: `te: trailers`, no length): the
    // body arrives whole and chunked, its trailers do not.
    let r = c
        .request(
            post("/unannounced")
                .header("te", "trailers")
                .trailer("x-request-checksum", "7"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    let got = app.last();
    assert_eq!(
        (got.target.as_str(), got.body_len),
        ("/unannounced", 20_000)
    );
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert!(got.trailers.is_empty(), "{:?}", got.trailers);

    // Announced with a content-length: the body keeps its length, so there
    // is no trailer section to carry them in.
    let r = c
        .request(
            post("/with-length")
                .header("content-length", "20000")
                .header("trailer", "x-request-checksum")
                .trailer("x-request-checksum", "7"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    let got = app.last();
    assert_eq!(
        (got.target.as_str(), got.body_len),
        ("/with-length", 20_000)
    );
    assert_eq!(got.header("content-length"), Some("20000"));
    assert!(got.trailers.is_empty(), "{:?}", got.trailers);
}

#[test]
fn static_services_say_what_their_endpoints_speak() {
    // [[services]] protocol = "h2c" / "http1": the proxy translates.
    let h2o = H2Origin::start("h2only");
    let h1o = Origin::start("h1only");
    let web = ProxyBuilder::new("web")
        .outbound()
        .extra(&format!(
            "[[services]]\nname = \"h2only\"\nendpoints = [\"{}\"]\nprotocol = \"h2c\"\n\n\
             [[services]]\nname = \"h1only\"\nendpoints = [\"{}\"]\nprotocol = \"http1\"\n",
            h2o.addr(),
            h1o.addr()
        ))
        .start();
    let mut c = web.outbound_client();
    c.set_read_timeout(Duration::from_secs(30));
    let r = c.get("h2only", "/from/h1");
    assert_eq!(
        r.status,
        200,
        "{:?} {:?}; origin saw non-h2: {:?}",
        r.header("coremesh-error"),
        r.body_str(),
        h2o.not_h2()
    );
    assert_eq!(r.json()["version"], "HTTP/2.0");
    let h2 = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let r = h2
        .request(H2Request::get("h1only", "/from/h2"), H2_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(h1o.last().target, "/from/h2");
}

#[test]
fn an_h2_request_trailer_cannot_forge_the_callers_identity() {
    // h2 client -> h2c app, no translation: the request's trailers pass,
    // but one named like `identity_header` is dropped (the caller's
    // identity is the proxy's word, in the head).
    let dir = TempDir::new("h2-trailers-identity");
    let app = H2Origin::start("api");
    let (web, _api) = translating_pair(&dir, app.addr(), "h2c");
    let c = H2Client::connect(web.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let r = c
        .request(
            H2Request::new("POST", "api", "/upload-trailers")
                .body(vec![b'b'; 1000])
                .trailer("x-request-checksum", "7")
                .trailer("x-coremesh-caller", "spiffe://forged/caller"),
            H2_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    let got = app.last();
    assert_eq!(
        got.trailers,
        vec![("x-request-checksum".to_string(), "7".to_string())],
        "the client's trailers pass, the forged identity does not"
    );
    assert!(
        got.header("x-coremesh-caller")
            .is_some_and(|id| id.starts_with("spiffe://") && !id.contains("forged")),
        "{:?}",
        got.headers
    );
}
