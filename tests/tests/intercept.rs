//! Transparent interception with nftables, on hosts built as network
//! namespaces (`coremesh_testnet`): unmodified clients (curl, redis-cli)
//! call another host's address and app port directly, with no http_proxy
//! and no Host trick, and the call goes through both sidecars with mutual
//! TLS and the callee's AccessPolicy. Each proxy's ruleset is installed
//! with `coremesh-proxy --intercept apply` run inside its host (so `nft`
//! only ever touches the test's namespaces), and removing it restores
//! direct traffic.
//!
//! Namespaces and nftables need root and the `nft` program. Under CI
//! (`CI=true`) a machine without them fails these tests; elsewhere they are
//! skipped with a message.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use coremesh_e2e::control::{Member, MeshProxy};
use coremesh_e2e::proxy::proxy_bin;
use coremesh_e2e::util::{have_program, under_ci, wait_for};
use coremesh_e2e::{Control, ControlBuilder, Origin, Proxy, ProxyBuilder};
use coremesh_testnet::{Host, Net};

/// The app port every service's app listens on (each host is its own
/// namespace, so they never collide).
const APP_PORT: u16 = 8080;
/// Fixed listener ports: nftables redirects to a port, not to port 0.
const OUTBOUND: &str = "127.0.0.1:15001";
const INBOUND_PORT: u16 = 15006;
const IDENTITY_HEADER: &str = "x-coremesh-caller";

/// The test hosts, or `None` (skipped) where namespaces or nft are
/// unavailable outside CI.
fn net(hosts: &[&str]) -> Option<Net> {
    let missing = match coremesh_testnet::available() {
        Err(e) => Some(e.to_string()),
        Ok(()) if !have_program("nft") => Some(
            "nft is not installed (Debian package nftables; scripts/install-deps.sh installs it)"
                .to_string(),
        ),
        Ok(()) => None,
    };
    match missing {
        None => Some(Net::new(hosts).expect("build the test hosts")),
        Some(e) if under_ci() => panic!("{e}; CI must run the interception tests"),
        Some(e) => {
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// `program` run inside `host` with no proxy settings from the test's
/// environment (the clients must reach the mesh by interception alone).
fn on(host: &Host, program: &str, args: &[&str]) -> Output {
    let mut c = host.command(program);
    c.args(args).stdin(Stdio::null());
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
    c.output()
        .unwrap_or_else(|e| panic!("run {program} on {}: {e}", host.name()))
}

/// `coremesh-proxy --config FILE --intercept ACTION` inside `host`.
fn intercept(host: &Host, config: &Path, action: &str) -> String {
    let out = host
        .command(proxy_bin())
        .arg("--config")
        .arg(config)
        .args(["--intercept", action])
        .output()
        .expect("run coremesh-proxy --intercept");
    assert!(
        out.status.success(),
        "--intercept {action} on {} failed: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `curl` saw: the status (0 when no HTTP answer came) and the body.
struct Curl {
    status: u16,
    body: String,
    stderr: String,
}

impl Curl {
    /// The echoing origin's JSON body.
    fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {:?}", self.body))
    }

    /// A request header the app received, from the echo.
    fn app_saw_header(&self, name: &str) -> Option<String> {
        self.echo()["headers"]
            .as_array()?
            .iter()
            .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|h| h[1].as_str().map(str::to_string))
    }
}

/// A plain GET with curl from `host` to `url`.
fn curl(host: &Host, url: &str) -> Curl {
    let out = on(
        host,
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether table `inet coremesh` exists inside `host`.
fn has_table(host: &Host) -> bool {
    let out = on(host, "nft", &["list", "tables"]);
    String::from_utf8_lossy(&out.stdout).contains("inet coremesh")
}

fn inbound_requests(p: &Proxy, service: &str) -> f64 {
    p.metrics().sum(
        "coremesh_requests_total",
        &[("direction", "inbound"), ("service", service)],
    )
}

/// A proxy for `service` on `host` with `[intercept]`, joined to control.
fn start_proxy(control: &Control, host: &Host, service: &str, b: ProxyBuilder) -> (Proxy, Member) {
    let member = control.member(service, host.name());
    let proxy = b
        .on_host(host)
        .control(&control.section(&member))
        .extra("[intercept]\n")
        .start();
    (proxy, member)
}

/// A caller's proxy: `[outbound]` on a fixed loopback port, nothing inbound.
fn caller(control: &Control, host: &Host, service: &str, calls: &[&str]) -> (Proxy, Member) {
    caller_with(control, host, service, calls, "[intercept]\n")
}

/// [`caller`] with this `[intercept]` section.
fn caller_with(
    control: &Control,
    host: &Host,
    service: &str,
    calls: &[&str],
    intercept: &str,
) -> (Proxy, Member) {
    let member = control.member(service, host.name());
    let proxy = ProxyBuilder::new(service)
        .on_host(host)
        .outbound_at(OUTBOUND)
        .control(&control.section(&member).calls(calls))
        .extra(intercept)
        .start();
    (proxy, member)
}

const HTTP_MESH: &str = r#"kind: Service
name: web
---
kind: Service
name: batch
---
kind: Service
name: api
port: 8080
---
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
"#;

#[test]
fn curl_to_an_address_goes_through_both_sidecars() {
    let Some(net) = net(&["control", "web", "api", "batch", "outside"]) else {
        return;
    };
    let (web_host, api_host) = (net.host("web"), net.host("api"));
    let (batch_host, outside) = (net.host("batch"), net.host("outside"));
    let control = ControlBuilder::new().on_host(net.host("control")).start();
    let version = control.apply(HTTP_MESH);

    let api_app = SocketAddr::new(api_host.addr(), APP_PORT);
    let app = Origin::start_at(api_host, api_app, "api");
    // Not a mesh service: the web host's calls to it pass through.
    let site = Origin::start_at(outside, SocketAddr::new(outside.addr(), APP_PORT), "site");
    let (api, _m1) = start_proxy(
        &control,
        api_host,
        "api",
        ProxyBuilder::new("api")
            .inbound_on(SocketAddr::new(api_host.addr(), INBOUND_PORT), api_app)
            .inbound_key("identity_header", &format!("{IDENTITY_HEADER:?}")),
    );
    let (web, _m2) = caller(&control, web_host, "web", &["api"]);
    let (batch, _m3) = caller(&control, batch_host, "batch", &["api"]);
    control.wait_converged(3, 1, version, Duration::from_secs(30));

    let printed = intercept(web_host, web.config_path(), "print");
    assert!(printed.contains("redirect to :15001"), "{printed}");
    for (host, proxy) in [(web_host, &web), (batch_host, &batch), (api_host, &api)] {
        intercept(host, proxy.config_path(), "apply");
        assert!(has_table(host), "no table inet coremesh on {}", host.name());
    }
    let url = format!("http://{api_app}/hello");

    // web calls the api host's address and app port; both sidecars carry
    // it: the app sees web's identity, set by its sidecar from web's
    // client certificate, and the sidecar counts the request.
    let before = inbound_requests(&api, "api");
    let r = curl(web_host, &url);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let caller_id = r.app_saw_header(IDENTITY_HEADER).expect("identity header");
    assert!(
        caller_id.starts_with("spiffe://") && caller_id.ends_with("/service/web"),
        "{caller_id}"
    );
    assert_eq!(r.echo()["target"], "/hello");
    assert_eq!(inbound_requests(&api, "api"), before + 1.0);
    assert!(
        web.metrics().sum(
            "coremesh_requests_total",
            &[("direction", "outbound"), ("service", "api")]
        ) >= 1.0
    );

    // batch is a mesh member the AccessPolicy does not allow.
    let r = curl(batch_host, &url);
    assert_eq!(r.status, 403, "{} {}", r.body, r.stderr);
    assert!(r.body.contains("forbidden"), "{}", r.body);

    // No one reaches the app around its sidecar: a host without a proxy
    // is redirected to the inbound listener, which speaks mutual TLS only.
    let requests = app.requests();
    let r = curl(outside, &url);
    assert_eq!(r.status, 0, "a direct call got an answer: {}", r.body);
    assert_eq!(app.requests(), requests);

    // A destination that is no mesh service passes through untouched.
    let r = curl(web_host, &format!("http://{}:{APP_PORT}/x", outside.addr()));
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    assert_eq!(r.echo()["origin"], "site");
    assert_eq!(r.app_saw_header(IDENTITY_HEADER), None);
    assert_eq!(site.requests(), 1);
    // ... through web's proxy, which counts it when the relay ends.
    let passed = wait_for(Duration::from_secs(5), || {
        let n = web.metrics().sum(
            "coremesh_tcp_connections_total",
            &[("direction", "outbound"), ("service", "passthrough")],
        );
        (n >= 1.0).then_some(n)
    });
    assert!(
        passed.is_some(),
        "web's proxy did not relay the pass-through"
    );

    // Removing the rules restores direct traffic, around the sidecars.
    for (host, proxy) in [(web_host, &web), (batch_host, &batch), (api_host, &api)] {
        intercept(host, proxy.config_path(), "remove");
        assert!(!has_table(host), "table left on {}", host.name());
    }
    let before = inbound_requests(&api, "api");
    for host in [web_host, batch_host, outside] {
        let r = curl(host, &url);
        assert_eq!(r.status, 200, "{}: {} {}", host.name(), r.body, r.stderr);
        assert_eq!(r.app_saw_header(IDENTITY_HEADER), None);
    }
    assert_eq!(inbound_requests(&api, "api"), before);
}

const TCP_MESH: &str = r#"kind: Service
name: web
---
kind: Service
name: db
protocol: tcp
port: 6379
---
kind: AccessPolicy
name: db-access
service: db
default: deny
rules:
  - from: [web]
---
kind: MeshConfig
name: mesh
outboundPolicy: deny
"#;

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn redis_cli_reaches_a_tcp_service_and_outbound_policy_deny_refuses_the_rest() {
    for (program, package) in [
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ] {
        if !have_program(program) {
            assert!(
                !under_ci(),
                "{program} is not installed (Debian package {package})"
            );
            eprintln!("SKIPPED: {program} is not installed (Debian package {package})");
            return;
        }
    }
    let Some(net) = net(&["control", "web", "db", "outside"]) else {
        return;
    };
    let (web_host, db_host, outside) = (net.host("web"), net.host("db"), net.host("outside"));
    let control = ControlBuilder::new().on_host(net.host("control")).start();
    let version = control.apply(TCP_MESH);

    let db_addr: IpAddr = db_host.addr();
    let dir = coremesh_e2e::util::TempDir::new("redis");
    let _redis = Child(
        db_host
            .command("redis-server")
            .args(["--bind", &db_addr.to_string(), "--port", "6379"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    let site = Origin::start_at(outside, SocketAddr::new(outside.addr(), APP_PORT), "site");
    // On a port web's [intercept] excludes: reached directly, policy or not.
    let excluded = Origin::start_at(outside, SocketAddr::new(outside.addr(), 9090), "excluded");
    let (db, _m1) = start_proxy(
        &control,
        db_host,
        "db",
        ProxyBuilder::new("db")
            .inbound_on(
                SocketAddr::new(db_addr, INBOUND_PORT),
                SocketAddr::new(db_addr, 6379),
            )
            .inbound_key("protocol", "\"tcp\""),
    );
    let (web, _m2) = caller_with(
        &control,
        web_host,
        "web",
        &["db"],
        "[intercept]\nexclude_outbound_ports = [9090]\n",
    );
    control.wait_converged(2, 1, version, Duration::from_secs(30));
    intercept(web_host, web.config_path(), "apply");
    intercept(db_host, db.config_path(), "apply");

    let db_ip = db_addr.to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["-h", db_ip.as_str(), "-p", "6379"];
        all.extend_from_slice(args);
        let out = on(web_host, "redis-cli", &all);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ready = wait_for(Duration::from_secs(10), || {
        (cli(&["PING"]) == "PONG").then_some(())
    });
    assert!(ready.is_some(), "redis-cli never got PONG through the mesh");
    assert_eq!(cli(&["SET", "k", "through-the-mesh"]), "OK");
    assert_eq!(cli(&["GET", "k"]), "through-the-mesh");
    // A relay is counted when it ends (both directions closed).
    let relayed = || {
        db.metrics().sum(
            "coremesh_tcp_connections_total",
            &[("direction", "inbound"), ("service", "db")],
        )
    };
    let carried = wait_for(Duration::from_secs(5), || {
        let n = relayed();
        (n >= 3.0).then_some(n)
    })
    .unwrap_or_else(|| panic!("db's sidecar carried {} connections", relayed()));

    // outboundPolicy: deny: a destination that is no mesh service is
    // refused, and nothing reaches it.
    let r = curl(web_host, &format!("http://{}:{APP_PORT}/", outside.addr()));
    assert_eq!(r.status, 0, "{}", r.body);
    assert_eq!(site.requests(), 0);
    let r = curl(web_host, &format!("http://{}:9090/", outside.addr()));
    assert_eq!(r.status, 200, "an excluded port: {} {}", r.body, r.stderr);
    assert_eq!(excluded.requests(), 1);
    let passed = web.metrics().sum(
        "coremesh_tcp_connections_total",
        &[("direction", "outbound"), ("service", "passthrough")],
    );
    assert_eq!(passed, 0.0, "the excluded port went through the proxy");

    // Without the rules, web reaches both directly.
    intercept(web_host, web.config_path(), "remove");
    intercept(db_host, db.config_path(), "remove");
    assert_eq!(cli(&["GET", "k"]), "through-the-mesh");
    let r = curl(web_host, &format!("http://{}:{APP_PORT}/", outside.addr()));
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        relayed(),
        carried,
        "a direct call went through db's sidecar"
    );
}

/// A proxy that could not mark its own connections would have them
/// redirected back to itself: without CAP_NET_ADMIN it refuses to start,
/// saying why. (As root, the test drops to user nobody with setpriv.)
#[test]
fn without_cap_net_admin_a_proxy_with_intercept_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && !have_program("setpriv") {
        eprintln!("SKIPPED: setpriv is not installed (Debian package util-linux)");
        return;
    }
    let dir = coremesh_e2e::util::TempDir::new("intercept-nocap");
    let config = dir.write(
        "proxy.toml",
        "[proxy]\nservice = \"web\"\nadmin = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[intercept]\noutbound = false\n",
    );
    for p in [dir.path(), config.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(proxy_bin());
        c
    } else {
        std::process::Command::new(proxy_bin())
    };
    let out = cmd
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run coremesh-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot set SO_MARK") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
}
