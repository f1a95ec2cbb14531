//! The optional access log: one line per request, JSON or text, written by
//! a thread of its own from what each core hands it (about once a second
//! and on shutdown); the `x-request-id` every forwarded request carries;
//! the reopen on SIGUSR1; sampling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coremesh_e2e::pki::Pki;
use coremesh_e2e::util::{wait_for, TempDir};
use coremesh_e2e::{H2Client, H2Origin, H2Request, Origin, Proxy, ProxyBuilder, Request};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The file's lines once there are at least `n` (5 s at most).
fn lines_of(path: &Path, n: usize, proxy: &Proxy) -> Vec<String> {
    wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= n).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "{n} access log lines in {} within 5 s; have {:?}; log: {}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default(),
            proxy.log_tail(20)
        )
    })
}

fn json_lines(path: &Path, n: usize, proxy: &Proxy) -> Vec<serde_json::Value> {
    lines_of(path, n, proxy)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// A UUID v4 in text, as the proxy generates them.
fn is_uuid_v4(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
}

/// The request id the echo origin says it received.
fn echoed_request_id(body: &serde_json::Value) -> Option<String> {
    body["headers"].as_array()?.iter().find_map(|p| {
        (p[0].as_str()?.eq_ignore_ascii_case("x-request-id"))
            .then(|| p[1].as_str().map(str::to_owned))?
    })
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let api = Origin::start("api");
    let dir = TempDir::new("accesslog-json");
    let path = dir.path().join("access.log");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .proxy_key("access_log", &toml_path(&path))
        .start();

    let mut c = proxy.outbound_client();
    assert_eq!(c.get("api", "/a?x=1").status, 200);
    assert_eq!(c.get("api", "/status/503").status, 503);
    assert_eq!(c.get("nope", "/b").status, 404);

    let lines = json_lines(&path, 3, &proxy);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["direction"], "outbound");
    assert_eq!(lines[0]["service"], "api");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/a?x=1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["upstream"], api.addr().to_string());
    assert_eq!(lines[1]["status"], 503);
    assert_eq!(lines[2]["status"], 404);
    assert_eq!(lines[2]["service"], "unknown");
    // Every request has an id, a locally answered one too; without a
    // traceparent there is no trace id, and without mutual TLS no caller.
    for l in &lines {
        assert!(is_uuid_v4(l["request_id"].as_str().unwrap()), "{l}");
        assert_eq!(l["trace_id"], serde_json::Value::Null);
        assert_eq!(l["caller"], serde_json::Value::Null);
    }
    let m = proxy.metrics();
    assert_eq!(m.sum("coremesh_access_log_lines_written_total", &[]), 3.0);
    assert_eq!(m.sum("coremesh_access_log_dropped_lines_total", &[]), 0.0);
}

/// `x-request-id`: generated when absent and sent to the app, kept when
/// the client sends one; the log line carries the same id. HTTP/1.1 and h2.
#[test]
fn request_ids_are_generated_when_absent_kept_when_given_and_logged() {
    let api = Origin::start("api");
    let h2o = H2Origin::start("h2api");
    let dir = TempDir::new("accesslog-rid");
    let path = dir.path().join("access.log");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .service("h2api", &[h2o.addr()])
        .proxy_key("access_log", &toml_path(&path))
        .start();

    let mut c = proxy.outbound_client();
    let r = c.request(&Request::get("/new").host("api"));
    assert_eq!(r.status, 200);
    let generated = echoed_request_id(&r.json()).expect("the app got an x-request-id");
    assert!(is_uuid_v4(&generated), "{generated}");
    let r = c.request(
        &Request::get("/kept")
            .host("api")
            .header("X-Request-Id", "my-id-42"),
    );
    let kept = echoed_request_id(&r.json());
    assert_eq!(kept.as_deref(), Some("my-id-42"));
    let r = c.request(&Request::get("/again").host("api"));
    let second = echoed_request_id(&r.json()).unwrap();
    assert_ne!(second, generated, "each request gets its own id");
    assert_eq!(
        api.received()
            .iter()
            .map(|r| r
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                .count())
            .collect::<Vec<_>>(),
        [1, 1, 1],
        "exactly one x-request-id each"
    );

    let h2 = H2Client::connect(proxy.outbound()).unwrap_or_else(|e| panic!("{e}"));
    let r = h2
        .request(H2Request::get("h2api", "/h2new"), Duration::from_secs(5))
        .unwrap();
    assert_eq!(r.status, 200);
    let h2_generated = h2o
        .last()
        .header("x-request-id")
        .map(str::to_owned)
        .unwrap();
    assert!(is_uuid_v4(&h2_generated), "{h2_generated}");
    let r = h2
        .request(
            H2Request::get("h2api", "/h2kept").header("x-request-id", "h2-id-7"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(h2o.last().header("x-request-id"), Some("h2-id-7"));

    let lines = json_lines(&path, 5, &proxy);
    let id_of = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:?}"))["request_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id_of("/new"), generated);
    assert_eq!(id_of("/kept"), "my-id-42");
    assert_eq!(id_of("/again"), second);
    assert_eq!(id_of("/h2new"), h2_generated);
    assert_eq!(id_of("/h2kept"), "h2-id-7");
}

/// `format = "text"`: the combined log format's first fields, then
/// key=value pairs with the request id and the trace id.
#[test]
fn text_lines_look_like_the_combined_format() {
    let api = Origin::start("api");
    let dir = TempDir::new("accesslog-text");
    let path = dir.path().join("access.log");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .extra(&format!(
            "[access_log]\npath = {}\nformat = \"text\"\n",
            toml_path(&path)
        ))
        .start();

    let mut c = proxy.outbound_client();
    let r = c.request(
        &Request::get("/a?x=1")
            .host("api")
            .header("traceparent", TRACEPARENT)
            .header("x-request-id", "rid-\"quoted\""),
    );
    assert_eq!(r.status, 200);
    assert_eq!(c.get("nope", "/b").status, 404);

    let lines = lines_of(&path, 2, &proxy);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let l = &lines[0];
    // `%h %l %u [%t] "%r" %>s %b`: no caller without mutual TLS.
    assert!(l.starts_with("- - - ["), "{l}");
    let (time, rest) = l["- - - [".len()..].split_once("] ").unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert!(rest.starts_with("\"GET /a?x=1 HTTP/1.1\" 200 "), "{rest}");
    for want in [
        " request_id=\"rid-\\\"quoted\\\"\" ",
        " trace_id=4bf92f3577b34da6a3ce929d0e0e4736 ",
        " direction=outbound service=api authority=\"api\" ",
        &format!(" upstream={} ", api.addr()),
        " duration_us=",
        " core=0",
    ] {
        assert!(l.contains(want), "{want:?} not in {l}");
    }
    let l = &lines[1];
    assert!(l.contains("\"GET /b HTTP/1.1\" 404 "), "{l}");
    assert!(
        l.contains(" trace_id=- ") && l.contains(" upstream=- "),
        "{l}"
    );
    assert!(l.contains(" service=unknown "), "{l}");
}

/// Over mutual TLS both proxies log the caller's SPIFFE ID (web's own on
/// its outbound side, the peer's on api's inbound side) and the same
/// request id, which the app received: one HTTP/1.1 connection per request
/// between the proxies, and the multiplexed h2 hop.
#[test]
fn json_lines_carry_the_callers_identity_and_one_request_id_across_the_hop() {
    for multiplex in [false, true] {
        let dir = TempDir::new("accesslog-mtls");
        let pki = Pki::new("mesh");
        let app = Origin::start("api");
        let api_log = dir.path().join("api.log");
        let web_log = dir.path().join("web.log");
        let api_files = pki.files(dir.path(), "api", "api");
        let api = ProxyBuilder::new("api")
            .inbound(app.addr())
            .proxy_key("access_log", &toml_path(&api_log))
            .extra(&api_files.toml())
            .start();
        let web_files = pki.files(dir.path(), "web", "web");
        let web = ProxyBuilder::new("web")
            .outbound()
            .service("api", &[api.inbound()])
            .upstream("multiplex", &multiplex.to_string())
            .proxy_key("access_log", &toml_path(&web_log))
            .extra(&web_files.toml())
            .start();

        let mut c = web.outbound_client();
        let r = c.request(
            &Request::get("/hello")
                .host("api")
                .header("traceparent", TRACEPARENT),
        );
        assert_eq!(r.status, 200, "{:?}", r.header("coremesh-error"));
        let id = echoed_request_id(&r.json()).unwrap();
        assert!(is_uuid_v4(&id), "{id}");
        let got = app.last();
        assert_eq!(
            got.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                .count(),
            1,
            "multiplex {multiplex}: {:?}",
            got.headers
        );

        let out = &json_lines(&web_log, 1, &web)[0];
        let inb = &json_lines(&api_log, 1, &api)[0];
        let web_id = "spiffe://mesh.test/service/web";
        assert_eq!(out["direction"], "outbound");
        assert_eq!(out["caller"], web_id, "{out}");
        assert_eq!(inb["direction"], "inbound");
        assert_eq!(inb["caller"], web_id, "{inb}");
        assert_eq!(out["request_id"], id.as_str(), "multiplex {multiplex}");
        assert_eq!(inb["request_id"], id.as_str(), "multiplex {multiplex}");
        assert_eq!(out["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(inb["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

/// logrotate's way: move the file, send SIGUSR1; lines after that go to a
/// new file at the path, and the proxy serves on.
#[test]
fn sigusr1_reopens_the_file() {
    let api = Origin::start("api");
    let dir = TempDir::new("accesslog-usr1");
    let path = dir.path().join("access.log");
    let rotated: PathBuf = dir.path().join("access.log.1");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .cores(2)
        .service("api", &[api.addr()])
        .proxy_key("access_log", &toml_path(&path))
        .start();

    let mut c = proxy.outbound_client();
    assert_eq!(c.get("api", "/before").status, 200);
    lines_of(&path, 1, &proxy);
    std::fs::rename(&path, &rotated).unwrap();
    proxy.signal(libc::SIGUSR1);
    proxy
        .wait_for_log(0, Duration::from_secs(5), |l| l.contains("reopened"))
        .unwrap_or_else(|| panic!("no reopen: {}", proxy.log_tail(20)));
    // New connections, so both shards serve some.
    for i in 0..6 {
        let mut c = proxy.outbound_client();
        assert_eq!(c.get("api", &format!("/after/{i}")).status, 200);
    }
    let new = lines_of(&path, 6, &proxy);
    assert!(new.iter().all(|l| l.contains("/after/")), "{new:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    assert!(old.contains("/before"), "{old}");
}

/// Writes `toml` and reloads it (SIGHUP), waiting for the proxy to say so.
fn reload(proxy: &Proxy, toml: &str) {
    let skip = proxy.log_lines().len();
    proxy.write_config(toml);
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_for_log(skip, Duration::from_secs(5), |l| {
            l.contains("configuration reloaded")
        })
        .unwrap_or_else(|| panic!("no reload: {}", proxy.log_tail(20)));
}

/// `sample = 0`: no line, except for a 5xx (always logged); `sample = 1`:
/// every request. `enabled = false` turns the log off on SIGHUP.
#[test]
fn sampling_zero_logs_nothing_but_errors_and_one_logs_everything() {
    let api = Origin::start("api");
    let dir = TempDir::new("accesslog-sample");
    let path = dir.path().join("access.log");
    let section = |sample: &str, enabled: bool| {
        format!(
            "[access_log]\npath = {}\nsample = {sample}\nenabled = {enabled}\n",
            toml_path(&path)
        )
    };
    let builder = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .extra(&section("0", true));
    let base = builder.render().replace(&section("0", true), "");
    let proxy = builder.start();

    let mut c = proxy.outbound_client();
    for i in 0..20 {
        assert_eq!(c.get("api", &format!("/quiet/{i}")).status, 200);
    }
    // A 5xx is logged whatever the sample; it marks the end.
    assert_eq!(c.get("api", "/status/503").status, 503);
    let lines = json_lines(&path, 1, &proxy);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 503);

    reload(&proxy, &format!("{base}{}", section("1.0", true)));
    let mut c = proxy.outbound_client();
    for i in 0..20 {
        assert_eq!(c.get("api", &format!("/all/{i}")).status, 200);
    }
    let lines = json_lines(&path, 21, &proxy);
    assert_eq!(lines.len(), 21);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["path"].as_str().unwrap().starts_with("/all/"))
            .count(),
        20
    );

    reload(&proxy, &format!("{base}{}", section("1.0", false)));
    let mut c = proxy.outbound_client();
    assert_eq!(c.get("api", "/off").status, 200);
    assert_eq!(c.get("api", "/status/500").status, 500);
    // Off: not even the 500. Wait past the shards' once-a-second hand-over.
    std::thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 21, "{text}");
}
