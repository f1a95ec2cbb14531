//! Authorization (issue 5): AccessPolicy enforced by the inbound proxy on
//! the caller's certificate identity, method and path; the no-policy and
//! mesh-wide defaults; the caller's identity passed to the app.
//!
//! ```text
//!  web proxy ──┐  mTLS
//!              ├══════▶ api proxy [inbound, AccessPolicy api-access] ──▶ origin api
//!  batch proxy ┘                 (x-coremesh-caller: spiffe://coremesh.local/service/<caller>)
//! ```

use std::time::Duration;

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Client, Control, ControlBuilder, Member, MeshProxy, Origin, Proxy, ProxyBuilder, Request,
};

const TD: &str = "spiffe://coremesh.local/service";

const SERVICES: &str =
    "kind: Service\nname: api\n---\nkind: Service\nname: web\n---\nkind: Service\nname: batch\n";

const POLICY: &str = r#"
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
    methods: [GET, POST]
    pathPrefix: /v1/
  - from: [spiffe://coremesh.local/service/batch]
    methods: [GET]
    path: /v1/report
"#;

struct Mesh {
    control: Control,
    /// Their state dirs live as long as the proxies.
    _members: Vec<Member>,
    app: Origin,
    api: Proxy,
    web: Proxy,
    batch: Proxy,
}

fn mesh() -> Mesh {
    let control = ControlBuilder::new().start();
    let app = Origin::start("api");
    let api_m = control.member("api", "api-1");
    let web_m = control.member("web", "web-1");
    let batch_m = control.member("batch", "batch-1");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .inbound_key("identity_header", "\"x-coremesh-caller\"")
        .control(&control.section(&api_m))
        .start();
    let caller = |name: &str, m| {
        ProxyBuilder::new(name)
            .outbound()
            .control(&control.section(m).calls(&["api"]))
            .start()
    };
    let web = caller("web", &web_m);
    let batch = caller("batch", &batch_m);
    Mesh {
        control,
        _members: vec![api_m, web_m, batch_m],
        app,
        api,
        web,
        batch,
    }
}

fn send(from: &Proxy, method: &str, path: &str) -> (u16, Option<String>) {
    let mut c = Client::connect(from.outbound());
    c.set_read_timeout(Duration::from_secs(10));
    let r = c.request(&Request::new(method, path).host("api"));
    (r.status, r.header("coremesh-error").map(str::to_string))
}

/// Waits until `from` gets `status` for `method path` (policies take a
/// moment to reach the api proxy).
fn expect(from: &Proxy, method: &str, path: &str, status: u16) -> Option<String> {
    let mut last = (0, None);
    let ok = wait_for(Duration::from_secs(10), || {
        last = send(from, method, path);
        (last.0 == status).then_some(())
    });
    assert!(
        ok.is_some(),
        "{method} {path}: wanted {status}, got {last:?}"
    );
    last.1
}

#[test]
fn access_policy_allows_and_denies_by_caller_method_and_path_and_the_defaults_apply() {
    let m = mesh();
    m.control.apply(SERVICES);
    // No AccessPolicy: any authenticated mesh identity gets through.
    expect(&m.web, "DELETE", "/anything", 200);
    expect(&m.batch, "GET", "/admin", 200);

    m.control.apply(POLICY);
    let forbidden = Some("forbidden by policy api-access".to_string());
    // The last rule to take effect decides when the policy is in force.
    assert_eq!(expect(&m.web, "DELETE", "/v1/x", 403), forbidden);
    let matrix: [(&Proxy, &str, &str, u16); 9] = [
        (&m.web, "GET", "/v1/users", 200),
        (&m.web, "POST", "/v1/users", 200),
        (&m.web, "DELETE", "/v1/users", 403),
        (&m.web, "GET", "/admin", 403),
        (&m.web, "GET", "/v1", 403),
        (&m.batch, "GET", "/v1/report", 200),
        (&m.batch, "GET", "/v1/users", 403),
        (&m.batch, "POST", "/v1/report", 403),
        (&m.batch, "GET", "/v1/report/../users", 403),
    ];
    let before = m.app.requests();
    for (from, method, path, want) in matrix {
        let (status, err) = send(from, method, path);
        assert_eq!(
            status,
            want,
            "{method} {path} from {}",
            from.builder().render()
        );
        if want == 403 {
            assert_eq!(err, forbidden, "{method} {path}");
        }
    }
    assert_eq!(
        m.app.requests() - before,
        3,
        "a denied request reached the app"
    );

    let metrics = m.api.metrics();
    let denied = |caller: &str| {
        metrics.sum(
            "coremesh_authz_denied_total",
            &[
                ("policy", "api-access"),
                ("caller", &format!("{TD}/{caller}")),
            ],
        )
    };
    assert!(denied("web") >= 3.0, "web denials: {}", denied("web"));
    assert!(denied("batch") >= 3.0, "batch denials: {}", denied("batch"));

    // Mesh-wide deny without a policy for the service...
    m.control
        .meshctl(&["delete", "accesspolicy", "api-access"])
        .ok();
    expect(&m.web, "DELETE", "/v1/users", 200);
    m.control
        .apply("kind: MeshConfig\nname: mesh\ndefaultAccess: deny\n");
    let err = expect(&m.web, "GET", "/v1/users", 403);
    assert_eq!(err.as_deref(), Some("forbidden by policy mesh default"));
    // ...and a policy still overrides it for its own service.
    m.control.apply(POLICY);
    expect(&m.web, "GET", "/v1/users", 200);
    assert_eq!(send(&m.batch, "GET", "/v1/users").0, 403);

    // Probes of the api proxy are answered by the proxy itself, from its
    // own check of its app: no AccessPolicy applies and the app never sees
    // them.
    let before = m.app.requests();
    let mut c = Client::connect(m.batch.outbound());
    let r = c.request(&Request::get("/.well-known/coremesh/health").host("api"));
    assert_eq!(r.status, 200, "{:?}", r.header("coremesh-error"));
    assert_eq!(r.body_str(), "{\"app\":\"healthy\"}\n");
    assert_eq!(m.app.requests(), before);
}

#[test]
fn the_app_learns_the_callers_identity_and_a_forged_header_never_gets_through() {
    let m = mesh();
    m.control.apply(SERVICES);
    expect(&m.web, "GET", "/", 200);
    let mut c = Client::connect(m.web.outbound());
    let r = c.request(
        &Request::get("/who")
            .host("api")
            .header("X-Coremesh-Caller", "spiffe://coremesh.local/service/admin"),
    );
    assert_eq!(r.status, 200);
    let got = m.app.last();
    assert_eq!(
        got.header("x-coremesh-caller"),
        Some(format!("{TD}/web").as_str())
    );
    let all: Vec<_> = got
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-coremesh-caller"))
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
}
