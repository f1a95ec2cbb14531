//! Unix stream sockets (issue 16, item 4): the app reached on a socket file
//! (`[inbound] app = "unix:/PATH"`) and the app calling out through one
//! (`[outbound] listen = "unix:/PATH"`).
//!
//! ```text
//!  curl --unix-socket out.sock ──▶ web proxy [outbound unix:] ──▶ origin
//!  curl ──▶ web proxy [outbound] ══mTLS══▶ api proxy [inbound] ──unix:app.sock──▶ UnixFront ──▶ origin
//! ```
//!
//! Apps "listen on a socket file" through [`UnixFront`], which relays each
//! connection to an origin, so the tests still read what the app received.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use coremesh_e2e::proxy::check_config_text;
use coremesh_e2e::util::{wait_for, TempDir};
use coremesh_e2e::{ControlBuilder, Curl, H2Origin, MeshProxy, Origin, ProxyBuilder, UnixFront};

/// `curl --unix-socket PATH http://HOST/PATH` with `extra` arguments.
fn curl_unix(socket: &Path, url: &str, extra: &[&str]) -> coremesh_e2e::curl::CurlOutput {
    Curl::new(url)
        .args(&["--unix-socket", socket.to_str().expect("UTF-8 path")])
        .args(extra)
        .run()
}

/// `curl --http2-prior-knowledge URL` (over `socket` when given): the HTTP
/// version curl used and the status.
fn curl_h2(socket: Option<&Path>, url: &str) -> (String, u16) {
    let mut cmd = std::process::Command::new("curl");
    for var in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    cmd.args(["-sS", "--max-time", "30", "--http2-prior-knowledge"]);
    if let Some(s) = socket {
        cmd.arg("--unix-socket").arg(s);
    }
    cmd.args(["-o", "/dev/null", "-w", "%{http_version} %{response_code}"])
        .arg(url);
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, status) = text.split_once(' ').unwrap_or((&text, ""));
    (version.to_string(), status.trim().parse().unwrap_or(0))
}

/// A static proxy for web whose outbound listener is `socket`, calling
/// `api` at `endpoint`.
fn web_on_socket(socket: &Path, endpoint: SocketAddr) -> ProxyBuilder {
    ProxyBuilder::new("web")
        .outbound_at(&format!("unix:{}", socket.display()))
        .service("api", &[endpoint])
}

#[test]
fn curl_reaches_a_service_through_the_unix_outbound_listener_with_its_mode() {
    let dir = TempDir::new("unix-out");
    let socket = dir.path().join("out.sock");
    let api = Origin::start("api");
    let web = web_on_socket(&socket, api.addr())
        .outbound_key("listen_mode", "\"0660\"")
        .start();

    let out = curl_unix(&socket, "http://api/hello", &[]);
    assert_eq!(out.response.status, 200, "{out:?}");
    assert_eq!(api.last().target, "/hello");
    assert_eq!(out.response.header("x-origin"), Some("api"));

    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);

    // /config and the `bound` line name the socket file.
    let config = web.admin_get("/config").json();
    let want = format!("unix:{}", socket.display());
    assert_eq!(config["bound"]["outbound"], want.as_str(), "{config}");
    assert_eq!(config["outbound"]["listen"], want.as_str(), "{config}");
    assert_eq!(config["outbound"]["listen_mode"], "0660", "{config}");
    assert!(web.log_text().contains(&format!("outbound={want}")));
    // The connection is counted as any outbound one.
    let m = web.metrics();
    assert!(
        m.sum("coremesh_connections_total", &[("direction", "outbound")]) >= 1.0,
        "{m:?}"
    );
}

#[test]
fn h2c_with_prior_knowledge_over_the_unix_outbound_listener_on_two_shards() {
    let dir = TempDir::new("unix-h2");
    let socket = dir.path().join("out.sock");
    let api = H2Origin::start("api");
    let _web = web_on_socket(&socket, api.addr()).cores(2).start();
    for i in 0..4 {
        let got = curl_h2(Some(&socket), &format!("http://api/h2/{i}"));
        assert_eq!(got, ("2".to_string(), 200));
    }
    assert_eq!(api.last().path, "/h2/3");
}

#[test]
fn an_inbound_proxy_reaches_a_unix_app_over_http1_and_h2c() {
    let dir = TempDir::new("unix-app");
    let origin = Origin::start("app");
    let h2 = H2Origin::start("app-h2");
    let app = UnixFront::start(&dir.path().join("app.sock"), origin.addr());
    let app_h2 = UnixFront::start(&dir.path().join("app-h2.sock"), h2.addr());
    let log = dir.path().join("access.log");
    let api = ProxyBuilder::new("api")
        .inbound_app(&app.address())
        .proxy_key("access_log", &format!("{:?}", log.to_str().unwrap()))
        .start();
    let url = format!("http://{}/one", api.inbound());
    let out = Curl::new(&url).run();
    assert_eq!(out.response.status, 200, "{out:?}");
    assert_eq!(origin.last().target, "/one");
    assert_eq!(app.connections(), 1);

    // The access log names the upstream "unix" (once flushed, about a second).
    let line = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().next().map(str::to_string)
    })
    .expect("an access log line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["upstream"], "unix", "{line}");

    // h2c to the app, as the client spoke it (app_protocol auto).
    let api_h2 = ProxyBuilder::new("api")
        .inbound_app(&app_h2.address())
        .start();
    let url = format!("http://{}/two", api_h2.inbound());
    assert_eq!(curl_h2(None, &url), ("2".to_string(), 200));
    assert_eq!(h2.last().path, "/two");

    // No app on the socket path: 502, as for a refused TCP connect.
    let none = ProxyBuilder::new("api")
        .inbound_app(&format!(
            "unix:{}",
            dir.path().join("nobody.sock").display()
        ))
        .start();
    let out = Curl::new(&format!("http://{}/gone", none.inbound())).run();
    assert_eq!(out.response.status, 502, "{out:?}");
    assert_eq!(
        out.response.header("coremesh-error"),
        Some("upstream connection refused"),
        "{out:?}"
    );
}

#[test]
fn a_mesh_reaches_a_unix_app_over_mutual_tls_and_checks_its_health() {
    let control = ControlBuilder::new().start();
    let dir = TempDir::new("unix-mesh");
    let origin = Origin::start("api");
    let app = UnixFront::start(&dir.path().join("app.sock"), origin.addr());
    let (ma, mw) = (
        control.member("api", "api-1"),
        control.member("web", "web-1"),
    );
    let section = control
        .section(&ma)
        .health("kind", "\"http\"")
        .health("path", "\"/healthz\"")
        .health("interval", "\"200ms\"")
        .health("timeout", "\"1s\"");
    let api = ProxyBuilder::new("api")
        .inbound_app(&app.address())
        .control(&section)
        .start();
    let web = ProxyBuilder::new("web")
        .outbound()
        .control(&control.section(&mw).calls(&["api"]))
        .start();
    let version = control.apply("kind: Service\nname: api\n---\nkind: Service\nname: web\n");
    // Control sends a snapshot only to proxies whose view changed: web's
    // may rightly stay at config 0 (see `Control::wait_applied`).
    control.wait_applied(2, 1, version, &["api"], Duration::from_secs(20));

    let url = format!("http://{}/through-the-mesh", web.outbound());
    let ok = wait_for(Duration::from_secs(10), || {
        let out = Curl::new(&url).args(&["-H", "Host: api"]).run();
        (out.response.status == 200).then_some(out)
    });
    assert!(ok.is_some(), "web never reached api's unix app");
    assert_eq!(origin.last().target, "/through-the-mesh");
    // The app saw the health checks too, on its socket.
    assert!(origin.received().iter().any(|r| r.target == "/healthz"));

    let healthy = |want: bool| {
        control
            .endpoints()
            .into_iter()
            .find(|e| e["service"] == "api" && e["address"] == api.inbound().to_string())
            .is_some_and(|e| e["healthy"] == want)
    };
    assert!(
        wait_for(Duration::from_secs(15), || healthy(true).then_some(())).is_some(),
        "{:?}",
        control.endpoints()
    );
    // The app goes away: its socket refuses, the check fails.
    drop(app);
    assert!(
        wait_for(Duration::from_secs(15), || healthy(false).then_some(())).is_some(),
        "{:?}",
        control.endpoints()
    );
    assert!(
        api.log_text().contains("app is unhealthy"),
        "{}",
        api.log_tail(20)
    );
}

/// A TCP echo server: bytes come back as they arrive, then `<eof>` after
/// the client's half-close.
fn echo_server() -> SocketAddr {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = w.write_all(b"<eof>");
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn a_tcp_service_reaches_its_unix_app() {
    use std::io::{Read, Write};
    let control = ControlBuilder::new().start();
    let dir = TempDir::new("unix-tcp");
    let app = UnixFront::start(&dir.path().join("db.sock"), echo_server());
    let (md, mw) = (control.member("db", "db-1"), control.member("web", "web-1"));
    let _db = ProxyBuilder::new("db")
        .inbound_app(&app.address())
        .inbound_key("protocol", "\"tcp\"")
        .control(&control.section(&md))
        .start();
    let web = ProxyBuilder::new("web")
        .outbound()
        .extra("[[outbound.tcp]]\nservice = \"db\"\nlisten = \"127.0.0.1:0\"\n")
        .control(&control.section(&mw).calls(&["db"]))
        .start();
    control.apply("kind: Service\nname: db\nprotocol: tcp\n---\nkind: Service\nname: web\n");
    let config = web.admin_get("/config").json();
    let listen: SocketAddr = config["bound"]["tcp"]["db"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let got = wait_for(Duration::from_secs(15), || {
        let mut s = TcpStream::connect(listen).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"ping").ok()?;
        s.shutdown(Shutdown::Write).ok()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).ok()?;
        (got == b"ping<eof>").then_some(got)
    });
    assert!(got.is_some(), "web never reached db's unix app");
    assert!(app.connections() >= 1);
}

#[test]
fn a_stale_socket_file_is_replaced_a_live_one_is_not_taken_and_other_files_stay() {
    let dir = TempDir::new("unix-stale");
    let socket = dir.path().join("out.sock");
    let api = Origin::start("api");

    // Stale: a socket file whose listener is gone (a killed proxy's).
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let web = web_on_socket(&socket, api.addr()).start();
    assert!(
        web.log_text().contains("replacing a stale socket file"),
        "{}",
        web.log_tail(10)
    );
    assert_eq!(curl_unix(&socket, "http://api/", &[]).response.status, 200);

    // Live: a second proxy on the same path refuses to start, and the
    // first serves on.
    let (status, out) =
        web_on_socket(&socket, api.addr()).start_expecting_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        out.contains("in use, another process is listening on it"),
        "{out}"
    );
    assert!(out.contains(&format!("unix:{}", socket.display())), "{out}");
    assert_eq!(curl_unix(&socket, "http://api/", &[]).response.status, 200);
    drop(web);

    // Not a socket: never deleted.
    let file = dir.write("notes.txt", "keep me");
    let (status, out) =
        web_on_socket(&file, api.addr()).start_expecting_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        out.contains("exists and is not a socket (a regular file)"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn an_upgrade_in_place_hands_the_unix_listener_over() {
    let dir = TempDir::new("unix-upgrade");
    let socket = dir.path().join("out.sock");
    let upgrade = dir.path().join("upgrade.sock");
    let api = Origin::start("api");
    let mut old = web_on_socket(&socket, api.addr())
        .outbound_key("listen_mode", "\"0600\"")
        .proxy_key(
            "upgrade_socket",
            &format!("{:?}", upgrade.to_str().unwrap()),
        )
        .proxy_key("drain_timeout", "\"2s\"")
        .start();
    assert_eq!(
        curl_unix(&socket, "http://api/before", &[]).response.status,
        200
    );
    let new = old.upgrade(&upgrade);
    assert!(
        new.log_text()
            .contains("took over the outbound listener on unix:"),
        "{}",
        new.log_tail(20)
    );
    let status = old
        .wait_exit(Duration::from_secs(15))
        .expect("old proxy exits");
    assert!(status.success(), "{}", old.log_tail(20));
    // The same socket file, now served by the new process only.
    assert_eq!(
        curl_unix(&socket, "http://api/after", &[]).response.status,
        200
    );
    assert_eq!(api.last().target, "/after");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn check_explains_unix_addresses_it_cannot_take() {
    let base = "[proxy]\nservice = \"api\"\n";
    let cases = [
        (
            "[inbound]\napp = \"unix:/run/app.sock\"\n[intercept]\n",
            "[intercept] inbound_ports: is needed: [inbound] app \"unix:/run/app.sock\" is a Unix socket",
        ),
        (
            "[outbound]\nlisten = \"unix:/run/out.sock\"\n[intercept]\n",
            "[intercept] outbound: [outbound] listen \"unix:/run/out.sock\" is a Unix socket",
        ),
        (
            "[outbound]\nlisten = \"unix:/run/out.sock\"\nlisten_mode = \"0x1\"\n",
            "[outbound] listen_mode: \"0x1\" is not an octal mode such as \"0660\"",
        ),
        (
            "[outbound]\nlisten = \"127.0.0.1:4140\"\nlisten_mode = \"0660\"\n",
            "[outbound] listen_mode: applies to a socket file only",
        ),
        (
            "[outbound]\nlisten = \"unix:/run/out.sock\"\nlisten_group = \"no-such-group-here\"\n",
            "[outbound] listen_group: no group is called \"no-such-group-here\" on this host",
        ),
        (
            "[inbound]\napp = \"unix:run/app.sock\"\n",
            "[inbound] app: \"unix:run/app.sock\" is not an absolute path",
        ),
    ];
    for (section, want) in cases {
        let (status, out) = check_config_text(&format!("{base}{section}"));
        assert!(!status.success(), "{section}: {out}");
        assert!(out.contains(want), "{section}: want {want:?} in {out}");
    }
    let ok = "[inbound]\napp = \"unix:/run/app.sock\"\n[outbound]\nlisten = \"unix:/run/out.sock\"\nlisten_mode = \"0660\"\nlisten_owner = 0\nlisten_group = \"0\"\n";
    let (status, out) = check_config_text(&format!("{base}{ok}"));
    assert!(status.success(), "{out}");
}
