use super::*;

use crate::routing::{PathMatch, ValueMatcher};

/// A request written as HTTP/1.1 text (the tests read best that way),
/// split the simple way: enough for well-formed heads.
struct Text(&'static [u8]);

impl Text {
    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.0
            .split(|&b| b == b'\n')
            .map(|l| l.trim_ascii())
            .skip_while(|l| l.is_empty())
    }
    fn target(&self) -> &[u8] {
        let line = self.lines().next().unwrap();
        line.split(|&b| b == b' ').nth(1).unwrap()
    }
}

impl RequestView for Text {
    fn method(&self) -> &[u8] {
        self.lines()
            .next()
            .unwrap()
            .split(|&b| b == b' ')
            .next()
            .unwrap()
    }
    fn authority(&self) -> Option<&[u8]> {
        self.header("host")
    }
    fn path_and_query(&self) -> &[u8] {
        let t = self.target();
        match t.strip_prefix(b"http://") {
            Some(rest) => {
                &rest[rest
                    .iter()
                    .position(|&b| b == b'/' || b == b'?')
                    .unwrap_or(rest.len())..]
            }
            None => t,
        }
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let colon = l.iter().position(|&b| b == b':')?;
                l[..colon]
                    .eq_ignore_ascii_case(name.as_bytes())
                    .then(|| l[colon + 1..].trim_ascii())
            })
    }
}

fn rule(path_prefix: Option<&str>, headers: &[(&str, &str)], methods: &[&str]) -> CompiledRule {
    CompiledRule {
        name: "r#0".into(),
        path: path_prefix.map(|p| PathMatch::Prefix(p.to_string())),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), ValueMatcher::Exact(v.to_string())))
            .collect(),
        query: Vec::new(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        timeout: None,
        retries: None,
        strict: false,
        backends: Vec::new(),
    }
}

#[test]
fn first_matching_rule_wins() {
    let rules = vec![
        rule(None, &[("x-canary", "true")], &[]),
        rule(Some("/v1/"), &[], &["GET"]),
        rule(Some("/"), &[], &[]),
    ];
    let at = |raw: &'static [u8]| {
        match_rule(&rules, &Text(raw))
            .map(|r| rules.iter().position(|x| std::ptr::eq(x, r)).unwrap())
    };
    assert_eq!(
        at(b"GET /v1/x HTTP/1.1\r\nHost: api\r\nX-Canary: true\r\n\r\n"),
        Some(0)
    );
    assert_eq!(at(b"GET /v1/x?q=1 HTTP/1.1\r\nHost: api\r\n\r\n"), Some(1));
    assert_eq!(
        at(b"POST /v1/x HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n"),
        Some(2)
    );
    assert_eq!(
        at(b"\r\nGET http://api HTTP/1.1\r\nHost: api\r\n\r\n"),
        Some(2)
    );
    let only_v1 = vec![rule(Some("/v1/"), &[], &[])];
    assert!(match_rule(&only_v1, &Text(b"GET /v2 HTTP/1.1\r\nHost: api\r\n\r\n")).is_none());
}

#[test]
fn regex_paths_header_conditions_and_query_parameters() {
    let re = |p: &str| coremesh_api::resource::compile_regex(p).unwrap();
    let mut r = rule(None, &[], &[]);
    r.path = Some(PathMatch::Regex(re("/v[0-9]+/users/[^/]+")));
    r.headers = vec![
        ("x-user".into(), ValueMatcher::Regex(re("u-[0-9]+"))),
        ("x-debug".into(), ValueMatcher::Present(false)),
    ];
    r.query = vec![
        ("env".into(), ValueMatcher::Exact("prod".into())),
        ("trace".into(), ValueMatcher::Present(true)),
    ];
    let rules = vec![r];
    let hit = |raw: &'static [u8]| match_rule(&rules, &Text(raw)).is_some();
    assert!(hit(
        b"GET /v2/users/7?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-12\r\n\r\n"
    ));
    assert!(hit(
        b"GET /v2/users/7?trace=1&env=prod&env=dev HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\n\r\n"
    ));
    // The regex is anchored: no extra segment, no partial header value.
    assert!(!hit(
        b"GET /v2/users/7/x?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-12\r\n\r\n"
    ));
    assert!(!hit(
        b"GET /v2/users/7?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: xu-12\r\n\r\n"
    ));
    // An absent header required absent, a missing or different parameter.
    assert!(!hit(
        b"GET /v2/users/7?env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\nX-Debug: 1\r\n\r\n"
    ));
    assert!(!hit(
        b"GET /v2/users/7?env=prod HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\n\r\n"
    ));
    assert!(!hit(
        b"GET /v2/users/7?env=dev&env=prod&trace HTTP/1.1\r\nHost: a\r\nX-User: u-1\r\n\r\n"
    ));
    assert_eq!(query_param(b"a=1&b&c=", b"b"), Some(&b""[..]));
    assert_eq!(query_param(b"a=1&b&c=", b"c"), Some(&b""[..]));
    assert_eq!(query_param(b"a=1&b&c=", b"d"), None);
}

#[test]
fn mesh_suffix_is_optional() {
    assert_eq!(mesh_name(b"api"), b"api");
    assert_eq!(mesh_name(b"api.mesh"), b"api");
    assert_eq!(mesh_name(b"api.MESH."), b"api");
    assert_eq!(mesh_name(b".mesh"), b".mesh");
    assert_eq!(mesh_name(b"example.com"), b"example.com");
}

#[test]
fn authorities_split_into_host_and_port() {
    assert_eq!(split_authority(b"api"), Some((&b"api"[..], None)));
    assert_eq!(
        split_authority(b"api:8080"),
        Some((&b"api"[..], Some(8080)))
    );
    assert_eq!(
        split_authority(b"[::1]:443"),
        Some((&b"::1"[..], Some(443)))
    );
    assert_eq!(split_authority(b"[::1]"), Some((&b"::1"[..], None)));
    assert_eq!(split_authority(b"api:"), Some((&b"api"[..], None)));
    assert_eq!(split_authority(b"api:99999"), None);
    assert_eq!(split_authority(b"[::1"), None);
}

struct Static(&'static str);

#[test]
fn the_table_then_static_services_then_passthrough() {
    let table = RoutingTable::compile(&coremesh_api::snapshot::Snapshot::default()).unwrap();
    let services = [Static("db")];
    let mut statics = Statics {
        services: &services,
        name: |s: &Static| s.0,
        passthrough: false,
    };
    let go = |statics: &Statics<'_, Static>, raw: &'static [u8]| match outbound(
        statics,
        Some(&table),
        &Text(raw),
    ) {
        Ok(Target::Service(s)) => Ok(s.0.to_string()),
        Ok(Target::Passthrough { host, port }) => Ok(format!("{host}:{port}")),
        Ok(Target::Routed(r)) => Ok(format!("routed {}", r.name)),
        Err(e) => Err(e),
    };
    assert_eq!(
        go(&statics, b"GET / HTTP/1.1\r\nHost: DB.mesh.:81\r\n\r\n"),
        Ok("db".into())
    );
    assert_eq!(
        go(&statics, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        Err(ErrorKind::UnknownService)
    );
    assert_eq!(
        go(&statics, b"CONNECT db:443 HTTP/1.1\r\nHost: db:443\r\n\r\n"),
        Err(ErrorKind::ConnectNotAllowed)
    );
    assert_eq!(
        go(&statics, b"GET / HTTP/1.0\r\n\r\n"),
        Err(ErrorKind::NoAuthority)
    );
    statics.passthrough = true;
    assert_eq!(
        go(&statics, b"GET / HTTP/1.1\r\nHost: Example.com\r\n\r\n"),
        Ok("example.com:80".into())
    );
    assert_eq!(
        go(
            &statics,
            b"CONNECT db:8443 HTTP/1.1\r\nHost: db:8443\r\n\r\n"
        ),
        Ok("db:8443".into())
    );
}

fn backends(sets: &[(u32, &[u8])]) -> CompiledRule {
    let mut r = rule(None, &[], &[]);
    r.backends = sets
        .iter()
        .map(|(weight, last)| crate::routing::WeightedBackend {
            weight: *weight,
            endpoints: last
                .iter()
                .map(|&n| SocketAddr::from(([10, 0, 0, n], 80)))
                .collect(),
            subset: String::new(),
        })
        .collect();
    r
}

fn a(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 80))
}

#[test]
fn a_backend_with_nothing_usable_gives_its_share_to_the_others() {
    // v1 (90%) has one endpoint, v2 (10%) two.
    let r = backends(&[(90, &[1]), (10, &[2, 3])]);
    let all_up = |_: SocketAddr| true;
    let shares = |usable: &dyn Fn(SocketAddr) -> bool| {
        let mut n = [0u32; 2];
        for draw in 0..100 {
            n[pick_backend(&r, None, draw, usable).unwrap()] += 1;
        }
        n
    };
    assert_eq!(shares(&all_up), [90, 10]);
    // v1's only endpoint is down: all of it goes to v2.
    assert_eq!(shares(&|x| x != a(1)), [0, 100]);
    // Everything down: nothing usable; failing open keeps the weights.
    assert_eq!(pick_backend(&r, None, 5, |_| false), None);
    assert_eq!(fail_open_backend(&r, 5), Some(0));
    assert_eq!(fail_open_backend(&r, 95), Some(1));
}

#[test]
fn a_retry_stays_in_its_subset_while_it_has_an_untried_endpoint() {
    let r = backends(&[(50, &[1]), (50, &[2, 3])]);
    // The first try went to v2's 10.0.0.2: the retry prefers v2's other one.
    let untried = |x: SocketAddr| x != a(2);
    for draw in 0..100 {
        assert_eq!(pick_backend(&r, Some(1), draw, untried), Some(1));
    }
    // The first try went to v1's only endpoint: the retry moves to v2.
    let untried = |x: SocketAddr| x != a(1);
    for draw in 0..100 {
        assert_eq!(pick_backend(&r, Some(0), draw, untried), Some(1));
    }
    // A zero weight is never chosen, even when preferred.
    let r = backends(&[(0, &[1]), (10, &[2])]);
    assert_eq!(pick_backend(&r, Some(0), 0, |_| true), Some(1));
}

#[test]
fn failover_strict_compiles_from_the_route() {
    let snap: coremesh_api::snapshot::Snapshot = serde_json::from_value(serde_json::json!({
        "version": 1, "config_version": 1,
        "services": [{"name": "api", "endpoints": []}],
        "routes": [{"name": "api", "service": "api", "rules": [
            {"failover": "strict", "backends": [{"weight": 1}]},
            {"backends": [{"weight": 1}]},
        ]}],
    }))
    .unwrap();
    let t = RoutingTable::compile(&snap).unwrap();
    let rules = t.service(b"api").unwrap().rules.as_ref().unwrap();
    assert!(rules[0].strict && !rules[1].strict);
}

#[test]
fn a_strict_draw_may_land_on_a_backend_without_endpoints() {
    let r = backends(&[(50, &[]), (50, &[2]), (0, &[3])]);
    let mut n = [0u32; 3];
    for draw in 0..100 {
        n[strict_backend(&r, draw).unwrap()] += 1;
    }
    assert_eq!(n, [50, 50, 0]);
}
