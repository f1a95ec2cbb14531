//! `meshctl tap` end to end: the real control, real sidecars, meshctl
//! streaming what the proxies see.
//!
//! ```text
//!  Client ──▶ web proxy [outbound] ──mTLS──▶ api proxy [inbound] ──▶ origin api
//!                  ▲                              ▲ TapStart / TapRecords
//!                  └──── QUIC ── coremesh-control ┘ ◀── GET /v1/tap/api ── meshctl tap api
//! ```

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use coremesh_e2e::{
    Control, ControlBuilder, Member, MeshProxy, Origin, Proxy, ProxyBuilder, Request,
};

/// Bound on anything that should happen "within a second or so".
const SOON: Duration = Duration::from_secs(15);

struct Mesh {
    control: Control,
    _api_app: Origin,
    _members: Vec<Member>,
    api: Proxy,
    web: Proxy,
}

impl Mesh {
    fn start() -> Mesh {
        let control = ControlBuilder::new().grace("0s").start();
        let version = control.apply("kind: Service\nname: api\n");
        let api_app = Origin::start("api");
        let members = vec![
            control.member("api", "api-node"),
            control.member("web", "web-node"),
        ];
        let api = ProxyBuilder::new("api")
            .inbound(api_app.addr())
            .control(&control.section(&members[0]))
            .start();
        let web = ProxyBuilder::new("web")
            .outbound()
            .control(&control.section(&members[1]).calls(&["api"]))
            .start();
        control.wait_converged(2, 1, version, SOON);
        Mesh {
            control,
            _api_app: api_app,
            _members: members,
            api,
            web,
        }
    }

    /// One request from web's app to api, through both proxies.
    fn call(&self, req: Request) -> u16 {
        self.web.outbound_client().request(&req.host("api")).status
    }
}

/// A running `meshctl tap`: its stdout lines and its stderr lines as they
/// come. Killed when dropped.
struct Tap {
    child: Child,
    lines: Receiver<String>,
    errs: Receiver<String>,
    seen: Vec<serde_json::Value>,
}

impl Tap {
    fn start(control: &Control, args: &[&str]) -> Tap {
        let mut all = vec!["tap"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let mut child = control.meshctl_spawn(&all);
        let pipe = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let lines = pipe(Box::new(child.stdout.take().expect("stdout")));
        let errs = pipe(Box::new(child.stderr.take().expect("stderr")));
        let tap = Tap {
            child,
            lines,
            errs,
            seen: Vec::new(),
        };
        tap.wait_err(|l| l.starts_with("tapping 1 proxies of"));
        tap
    }

    /// Waits for a stderr line (the tap's status) that `want` accepts.
    fn wait_err(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SOON;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.errs.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(l) => got.push(l),
                Err(_) => break,
            }
        }
        panic!("meshctl tap did not say it on stderr; it said: {got:?}");
    }

    /// Waits for the request line `want` accepts; every line read is kept
    /// in `seen`.
    fn wait_line(
        &mut self,
        what: &str,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| want(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + SOON;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("meshctl tap -o json printed a line that is not JSON ({e}): {line}")
            });
            self.seen.push(v.clone());
            if want(&v) {
                return v;
            }
        }
        panic!(
            "no tapped request {what} within {SOON:?}; saw {:#?}",
            self.seen
        );
    }

    /// Lines that arrived so far, without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str(&line) {
                self.seen.push(v);
            }
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_is(p: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["path"] == p
}

#[test]
fn tap_streams_requests_as_they_happen_without_bodies() {
    let mesh = Mesh::start();
    let mut tap = Tap::start(&mesh.control, &["api"]);
    // The tap reaches the proxy's cores just after control says it runs:
    // call until the first request shows.
    let deadline = Instant::now() + SOON;
    loop {
        assert_eq!(mesh.call(Request::get("/warmup")), 200);
        tap.drain();
        if tap.seen.iter().any(path_is("/warmup")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request tapped within {SOON:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // One request, with a body, a query and a trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::post("/users/42?token=query-secret")
        .header("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("authorization", "Bearer header-secret")
        .body("body-secret-0123456789");
    assert_eq!(mesh.call(req), 200);
    let v = tap.wait_line("POST /users/42", path_is("/users/42"));
    assert_eq!(v["direction"], "inbound", "{v}");
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["node"], "api-node", "{v}");
    assert_eq!(v["service"], "api", "{v}");
    assert_eq!(
        v["caller"], "spiffe://coremesh.local/service/web",
        "the caller's identity, from its certificate: {v}"
    );
    assert_eq!(v["trace_id"], trace, "{v}");
    assert!(v["latency_us"].as_u64().is_some(), "{v}");
    let text = v.to_string();
    for secret in ["body-secret", "query-secret", "header-secret"] {
        assert!(
            !text.contains(secret),
            "a tapped request carries no body, query or other header value: {text}"
        );
    }

    // As they happen: the next request shows while meshctl keeps running.
    assert_eq!(mesh.call(Request::get("/status/503")), 503);
    let v = tap.wait_line("GET /status/503", path_is("/status/503"));
    assert_eq!(
        (&v["method"], &v["status"]),
        (&"GET".into(), &503.into()),
        "{v}"
    );
    assert!(
        tap.child.try_wait().expect("meshctl's state").is_none(),
        "meshctl tap keeps running"
    );

    // meshctl goes away: control stops the tap on the proxy.
    let skip = mesh.api.log_lines().len();
    drop(tap);
    assert!(
        mesh.api
            .wait_for_log(skip, SOON, |l| l.contains("tap stopped by control"))
            .is_some(),
        "the api proxy stops tapping once meshctl exits:\n{}",
        mesh.api.log_tail(20)
    );
}

#[test]
fn tap_outbound_names_the_caller_and_filters_by_path() {
    let mesh = Mesh::start();
    // web's proxy: the requests its app makes (outbound).
    let mut tap = Tap::start(&mesh.control, &["web", "--path", "/only"]);
    let deadline = Instant::now() + SOON;
    loop {
        assert_eq!(mesh.call(Request::get("/other/1")), 200);
        assert_eq!(mesh.call(Request::get("/only/warmup")), 200);
        tap.drain();
        if tap.seen.iter().any(path_is("/only/warmup")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request tapped within {SOON:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mesh.call(Request::get("/other/2")), 200);
    assert_eq!(mesh.call(Request::get("/only/last")), 200);
    let v = tap.wait_line("GET /only/last", path_is("/only/last"));
    assert_eq!(v["direction"], "outbound", "{v}");
    assert_eq!(v["service"], "api", "where web's request went: {v}");
    assert_eq!(v["node"], "web-node", "{v}");
    assert_eq!(
        v["caller"], "spiffe://coremesh.local/service/web",
        "an outbound request's caller is the proxy's own service: {v}"
    );
    tap.drain();
    let others: Vec<_> = tap
        .seen
        .iter()
        .filter(|v| !v["path"].as_str().unwrap_or_default().starts_with("/only"))
        .collect();
    assert!(
        others.is_empty(),
        "--path /only lets only /only... through: {others:#?}"
    );
}

#[test]
fn tap_keeps_to_max_rps() {
    let mesh = Mesh::start();
    let max_rps = 2;
    let mut tap = Tap::start(&mesh.control, &["api", "--max-rps", "2"]);
    // Wait until the tap is in force on the proxy.
    let deadline = Instant::now() + SOON;
    while !tap.seen.iter().any(path_is("/warmup")) {
        assert!(
            Instant::now() < deadline,
            "no request tapped within {SOON:?}"
        );
        assert_eq!(mesh.call(Request::get("/warmup")), 200);
        std::thread::sleep(Duration::from_millis(600));
        tap.drain();
    }
    // A second for the warm-up's window to pass, then a burst.
    std::thread::sleep(Duration::from_millis(1100));
    tap.drain();
    let before = tap.seen.len();
    let sent = 60;
    let started = Instant::now();
    let mut c = mesh.web.outbound_client();
    for i in 0..sent {
        let r = c.request(&Request::get(&format!("/burst/{i}")).host("api"));
        assert_eq!(r.status, 200);
    }
    let took = started.elapsed();
    // Whatever is coming has arrived after a couple of status rounds.
    tap.wait_err(|l| l.contains("requests left out so far"));
    std::thread::sleep(Duration::from_secs(3));
    tap.drain();
    let burst = tap.seen.len() - before;
    // Each one-second window passes at most max_rps; the burst spans at
    // most ceil(took) + 1 of them, plus one for records still in flight
    // when a window turned.
    let windows = took.as_secs() + 3;
    assert!(
        (1..=(max_rps * windows) as usize).contains(&burst),
        "{burst} of {sent} requests tapped in {took:?} with --max-rps {max_rps}"
    );
    assert!(burst < sent, "most of the burst is left out");
}
