//! What `/metrics` and `/stats/cores` say matches what was sent, the format
//! passes `promtool check metrics`, and with `cores = 2` a few busy client
//! connections are spread evenly over the shards.

use std::time::Duration;

use coremesh_e2e::metrics::{assert_promtool_accepts, have_promtool};
use coremesh_e2e::util::wait_for;
use coremesh_e2e::{Client, Metrics, Origin, Proxy, ProxyBuilder};

const REQUESTS: &str = "coremesh_requests_total";

/// Scrapes until `f` holds (stats are snapshots; give them a few seconds).
fn metrics_when(proxy: &Proxy, f: impl Fn(&Metrics) -> bool) -> Metrics {
    wait_for(Duration::from_secs(5), || {
        let m = proxy.metrics();
        f(&m).then_some(m)
    })
    .unwrap_or_else(|| proxy.metrics())
}

#[test]
fn request_counts_match_what_was_sent() {
    let api = Origin::start("api");
    let app = Origin::start("app");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .inbound(app.addr())
        .service("api", &[api.addr()])
        .start();

    let mut c = proxy.outbound_client();
    for i in 0..7 {
        assert_eq!(c.get("api", &format!("/m/{i}")).status, 200);
    }
    assert_eq!(c.get("api", "/status/503").status, 503);
    let mut inb = proxy.inbound_client();
    for _ in 0..3 {
        assert_eq!(inb.get("web", "/in").status, 200);
    }

    let out = [("direction", "outbound"), ("service", "api")];
    let m = metrics_when(&proxy, |m| {
        m.sum(REQUESTS, &out) >= 8.0 && m.sum(REQUESTS, &[("direction", "inbound")]) >= 3.0
    });
    assert_eq!(
        m.sum(REQUESTS, &out),
        8.0,
        "outbound api requests:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("service", "api"),
                ("class", "2xx")
            ]
        ),
        7.0,
        "2xx:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            REQUESTS,
            &[
                ("direction", "outbound"),
                ("service", "api"),
                ("class", "5xx")
            ]
        ),
        1.0,
        "5xx:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(REQUESTS, &[("direction", "inbound")]),
        3.0,
        "inbound:\n{}",
        m.text
    );

    // The latency histogram counted the same requests.
    let count = m.sum("coremesh_request_duration_seconds_count", &out);
    assert_eq!(count, 8.0, "histogram _count:\n{}", m.text);
    let inf = m.sum(
        "coremesh_request_duration_seconds_bucket",
        &[
            ("direction", "outbound"),
            ("service", "api"),
            ("le", "+Inf"),
        ],
    );
    assert_eq!(inf, 8.0, "+Inf bucket:\n{}", m.text);

    // Connections and bytes.
    assert!(
        m.sum("coremesh_connections_total", &[("direction", "outbound")]) >= 1.0,
        "{}",
        m.text
    );
    assert!(
        m.sum("coremesh_connections_open", &[("direction", "outbound")]) >= 1.0,
        "our client is still connected:\n{}",
        m.text
    );
    assert!(
        m.sum(
            "coremesh_response_bytes_total",
            &[("direction", "outbound")]
        ) > 0.0,
        "{}",
        m.text
    );
    assert!(m.has("coremesh_request_bytes_total"), "{}", m.text);
    assert!(
        m.sum("coremesh_shard_requests_total", &[]) >= 11.0,
        "{}",
        m.text
    );

    drop(c);
    drop(inb);
    let m = metrics_when(&proxy, |m| m.sum("coremesh_connections_open", &[]) == 0.0);
    assert_eq!(
        m.sum("coremesh_connections_open", &[]),
        0.0,
        "closed connections are no longer open:\n{}",
        m.text
    );
}

#[test]
fn local_errors_are_counted_too() {
    let proxy = ProxyBuilder::new("web").outbound().start();
    for _ in 0..4 {
        assert_eq!(proxy.outbound_client().get("nosuch", "/").status, 404);
    }
    let m = metrics_when(&proxy, |m| m.sum(REQUESTS, &[("class", "4xx")]) >= 4.0);
    assert_eq!(
        m.sum(REQUESTS, &[("direction", "outbound"), ("class", "4xx")]),
        4.0,
        "{}",
        m.text
    );
}

#[test]
fn metrics_pass_promtool() {
    if !have_promtool() {
        return;
    }
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .cores(2)
        .service("api", &[api.addr()])
        .start();
    let mut c = proxy.outbound_client();
    for _ in 0..5 {
        assert_eq!(c.get("api", "/").status, 200);
    }
    assert_eq!(c.get("nosuch", "/").status, 404);
    let text = metrics_when(&proxy, |m| m.sum(REQUESTS, &[]) >= 6.0).text;

    assert_promtool_accepts("the proxy", &text);
}

#[test]
fn two_cores_share_four_busy_connections_evenly() {
    let api = Origin::start("api");
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .cores(2)
        .service("api", &[api.addr()])
        .start();
    let addr = proxy.outbound();
    // Open all four connections first, then load them concurrently.
    let clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(t, mut c)| {
            std::thread::spawn(move || {
                for i in 0..500 {
                    let r = c.get("api", &format!("/load/{t}/{i}"));
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
    assert_eq!(api.requests(), 2000);

    let per_core = wait_for(Duration::from_secs(5), || {
        let counts = per_core_requests(&proxy);
        (counts.iter().sum::<f64>() >= 2000.0).then_some(counts)
    })
    .unwrap_or_else(|| per_core_requests(&proxy));
    assert_eq!(per_core.len(), 2, "two shards expected, got {per_core:?}");
    let total: f64 = per_core.iter().sum();
    assert!(
        total >= 2000.0,
        "per-core counts {per_core:?} miss requests"
    );
    for (core, n) in per_core.iter().enumerate() {
        let share = n / total;
        assert!(
            (0.35..=0.65).contains(&share),
            "core {core} carried {:.0}% of the requests ({per_core:?})",
            share * 100.0
        );
    }
}

/// Requests per core, from `/stats/cores` or else the `core` label of
/// `coremesh_shard_requests_total`.
fn per_core_requests(proxy: &Proxy) -> Vec<f64> {
    let r = proxy.admin_get("/stats/cores");
    if r.status == 200 {
        let v = r.json();
        let cores = v["cores"]
            .as_array()
            .unwrap_or_else(|| panic!("/stats/cores: {v}"));
        let mut out = vec![0.0; cores.len()];
        for c in cores {
            let idx = c["core"]
                .as_u64()
                .unwrap_or_else(|| panic!("/stats/cores entry {c}")) as usize;
            let n = c["requests"]
                .as_f64()
                .unwrap_or_else(|| panic!("/stats/cores entry {c}"));
            if idx >= out.len() {
                out.resize(idx + 1, 0.0);
            }
            out[idx] = n;
        }
        return out;
    }
    let m = proxy.metrics();
    let mut out = Vec::new();
    for s in m.select("coremesh_shard_requests_total", &[]) {
        let idx: usize = s
            .labels
            .get("core")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if idx >= out.len() {
            out.resize(idx + 1, 0.0);
        }
        out[idx] += s.value;
    }
    out
}
