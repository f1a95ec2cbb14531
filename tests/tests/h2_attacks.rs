//! HTTP/2 attacks (issue 14, item 5), each played with raw frames by
//! tests/py/h2_attack.py (Python `hyperframe` and `hpack`) against the
//! outbound listener, which speaks h2c to an h2c origin (the same script's
//! `origin`). The proxy runs on one core, so the attack and everyone else
//! share the shard.
//!
//! For each attack the test checks the proxy's answer, and that while the
//! attack runs:
//!
//! * other clients keep being served: an HTTP/1.1 client (to an HTTP/1.1
//!   origin) and a well-behaved h2 client (to the h2c origin) each send a
//!   request every 50 ms; every one must succeed, none may take longer
//!   than [`LATENCY_BOUND`];
//! * the proxy's memory stays bounded: VmRSS sampled every 50 ms stays
//!   within [`RSS_BOUND_KIB`] of what it was before the attack.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremesh_e2e::{Client, Origin, Proxy, ProxyBuilder, Request};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/h2_attack.py");
/// How long each attack runs (new connections as the proxy closes them).
const ATTACK_SECS: &str = "3";
/// The slowest answer a bystander may see while an attack runs.
const LATENCY_BOUND: Duration = Duration::from_secs(1);
/// How much the proxy's RSS may grow during an attack.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// The h2c origin (`h2_attack.py origin`), killed on drop.
struct H2Origin {
    child: Child,
    addr: SocketAddr,
}

impl H2Origin {
    fn start() -> H2Origin {
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg("origin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 {SCRIPT}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the origin's first line");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "the h2c origin said {line:?} (are the PyPI packages h2 and hyperframe \
                     installed? scripts/install-deps.sh)"
                )
            });
        H2Origin { child, addr }
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `h2_attack.py MODE --addr OUTBOUND ...` as a running process.
fn python(mode: &str, proxy: &Proxy, args: &[&str]) -> Child {
    Command::new("python3")
        .arg(SCRIPT)
        .arg(mode)
        .arg("--addr")
        .arg(proxy.outbound().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn python3 {SCRIPT} {mode}: {e}"))
}

/// Waits for a script run and parses the JSON line it ends with.
fn report(child: Child, what: &str) -> Value {
    let out = child.wait_with_output().expect("wait for the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what} printed {stdout:?}: {e}"))
}

/// One proxy on one core: `api` is the h2c origin, `plain` an HTTP/1.1
/// origin for the HTTP/1.1 bystander.
fn proxy_for(
    api: &H2Origin,
    plain: &Origin,
    tune: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
) -> Proxy {
    tune(
        ProxyBuilder::new("web")
            .cores(1)
            .outbound()
            .service("api", &[api.addr])
            .service("plain", &[plain.addr()]),
    )
    .start()
}

/// What the HTTP/1.1 bystander saw.
#[derive(Default)]
struct Http1Seen {
    ok: usize,
    failed: Vec<String>,
    slowest: Duration,
}

/// GETs to `plain` every 50 ms over a keep-alive connection (a new one if
/// it breaks) until `stop`.
fn http1_bystander(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Http1Seen> {
    std::thread::spawn(move || {
        let mut seen = Http1Seen::default();
        let mut conn: Option<Client> = None;
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let path = format!("/meanwhile/{i}");
            let t = Instant::now();
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Client::try_connect(addr) {
                    Ok(mut c) => {
                        c.set_read_timeout(Duration::from_secs(10));
                        conn.insert(c)
                    }
                    Err(e) => {
                        seen.failed.push(format!("{path}: connect: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let res = c
                .try_send(&Request::get(&path).host("plain").to_bytes())
                .and_then(|_| c.try_read_response());
            let took = t.elapsed();
            seen.slowest = seen.slowest.max(took);
            match res {
                Ok(r) if r.status == 200 => seen.ok += 1,
                Ok(r) => {
                    seen.failed.push(format!(
                        "{path}: {} {:?} after {took:?}",
                        r.status, r.headers
                    ));
                    conn = None;
                }
                Err(e) => {
                    seen.failed.push(format!("{path}: {e} after {took:?}"));
                    conn = None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

/// Runs attack `mode` (with `args`) while the bystanders run and RSS is
/// sampled; asserts the bystanders' experience and the memory bound, and
/// returns the attacker's report.
fn under_attack(proxy: &Proxy, mode: &str, args: &[&str]) -> Value {
    // Warm up both paths, so the baseline has the pools and buffers a
    // served proxy has.
    let mut c = proxy.outbound_client();
    assert_eq!(c.get("plain", "/warm").status, 200);
    let warm = report(
        python("good", proxy, &["--duration", "0.3"]),
        "the warm-up h2 client",
    );
    assert!(
        warm["failed"].as_array().is_some_and(Vec::is_empty) && warm["ok"].as_u64() > Some(0),
        "the h2 client fails even before the attack: {warm}"
    );
    let rss_before = proxy.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let http1 = http1_bystander(proxy.outbound(), stop.clone());
    let good_secs = format!("{}", ATTACK_SECS.parse::<f64>().unwrap() + 0.5);
    let good = python("good", proxy, &["--duration", &good_secs]);
    let mut attack_args = vec!["--duration", ATTACK_SECS];
    attack_args.extend_from_slice(args);
    let mut attacker = python(mode, proxy, &attack_args);

    let mut rss_peak = rss_before;
    let started = Instant::now();
    loop {
        rss_peak = rss_peak.max(proxy.rss_kib());
        if attacker.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the {mode} attacker still runs after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let attack = report(attacker, mode);
    let h2 = report(good, "the well-behaved h2 client");
    stop.store(true, Ordering::Relaxed);
    let h1 = http1.join().expect("http1 bystander");
    rss_peak = rss_peak.max(proxy.rss_kib());
    eprintln!(
        "{mode}: {attack}\n  rss {rss_before} KiB -> peak {rss_peak} KiB; http1 {} ok, slowest {:?}; h2 {h2}",
        h1.ok, h1.slowest
    );

    assert!(
        h1.failed.is_empty() && h1.ok >= 10,
        "during {mode}, HTTP/1.1 requests failed ({} ok): {:?}",
        h1.ok,
        h1.failed
    );
    assert!(
        h1.slowest <= LATENCY_BOUND,
        "during {mode}, an HTTP/1.1 request took {:?}",
        h1.slowest
    );
    assert!(
        h2["failed"].as_array().is_some_and(Vec::is_empty) && h2["ok"].as_u64() >= Some(10),
        "during {mode}, h2 requests failed: {h2}"
    );
    let h2_slowest = h2["max_latency"].as_f64().unwrap_or(f64::MAX);
    assert!(
        h2_slowest <= LATENCY_BOUND.as_secs_f64(),
        "during {mode}, an h2 request took {h2_slowest} s"
    );
    assert!(
        rss_peak <= rss_before + RSS_BOUND_KIB,
        "during {mode}, the proxy's RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );
    attack
}

fn count(v: &Value, key: &str, sub: &str) -> u64 {
    v[key][sub].as_u64().unwrap_or(0)
}

fn conn_errors(proxy: &Proxy, reason: &str) -> f64 {
    proxy
        .metrics()
        .sum("coremesh_h2_connection_errors_total", &[("reason", reason)])
}

/// Every connection of the attack ended by the proxy (the last one may
/// have been cut short by the attack's own end).
fn assert_connections_ended(mode: &str, attack: &Value) {
    let conns = attack["connections"].as_u64().unwrap_or(0);
    let closed = attack["closed"].as_u64().unwrap_or(0);
    assert!(conns >= 1, "{mode}: no connection was made: {attack}");
    assert!(
        closed + 1 >= conns,
        "{mode}: the proxy left connections open: {attack}"
    );
}

#[test]
fn rapid_reset_gets_goaway_enhance_your_calm() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b);
    let before = proxy.metrics().sum(
        "coremesh_h2_connection_errors_total",
        &[("reason", "ENHANCE_YOUR_CALM"), ("cause", "rapid_reset")],
    );
    let attack = under_attack(&proxy, "rapid-reset", &[]);
    let calm = count(&attack, "goaway", "ENHANCE_YOUR_CALM");
    assert!(
        calm >= 1 && attack["goaway"].as_object().is_some_and(|g| g.len() == 1),
        "rapid reset: the proxy must answer GOAWAY ENHANCE_YOUR_CALM: {attack}"
    );
    assert_connections_ended("rapid reset", &attack);
    // A connection is cut after 32 streams reset before they were
    // accepted; the attacker sends 50 a burst, so it never gets far.
    let per_conn =
        attack["streams"].as_u64().unwrap_or(0) / attack["connections"].as_u64().unwrap_or(1);
    assert!(
        per_conn <= 5_000,
        "rapid reset: {per_conn} streams per connection before the proxy reacted: {attack}"
    );
    let after = proxy.metrics().sum(
        "coremesh_h2_connection_errors_total",
        &[("reason", "ENHANCE_YOUR_CALM"), ("cause", "rapid_reset")],
    );
    assert!(
        after - before >= calm as f64,
        "coremesh_h2_connection_errors_total{{reason=\"ENHANCE_YOUR_CALM\"}} went {before} -> {after}, \
         the attacker saw {calm} GOAWAYs"
    );
}

#[test]
fn continuation_flood_closes_the_connection() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b);
    let calm = |p: &Proxy| {
        p.metrics().sum(
            "coremesh_h2_connection_errors_total",
            &[
                ("reason", "ENHANCE_YOUR_CALM"),
                ("cause", "continuation_flood"),
            ],
        )
    };
    let before = calm(&proxy);
    let attack = under_attack(&proxy, "continuation", &[]);
    assert_connections_ended("CONTINUATION flood", &attack);
    assert!(
        count(&attack, "goaway", "ENHANCE_YOUR_CALM") >= 1,
        "CONTINUATION flood: expected GOAWAY ENHANCE_YOUR_CALM: {attack}"
    );
    assert!(
        attack["statuses"].as_array().is_some_and(Vec::is_empty),
        "CONTINUATION flood: a flooded stream got an answer: {attack}"
    );
    // The attacker gives up on a connection after 64 MiB; the proxy must
    // have ended each one well before (what it counts includes what the
    // kernel buffered).
    let most = attack["max_bytes_per_connection"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        most < 32 * 1024 * 1024,
        "CONTINUATION flood: {most} bytes on one connection before it closed"
    );
    let after = calm(&proxy);
    assert!(
        after > before,
        "the metric did not count the floods ({before} -> {after})"
    );
}

/// The answers the header-size attacks may get: the stream refused (431
/// or RST_STREAM), or for a block far beyond the limit the connection
/// (GOAWAY).
fn assert_refused(mode: &str, attack: &Value, allow_goaway: bool) {
    let answers = attack["answers"].as_object().expect("answers");
    assert!(!answers.is_empty(), "{mode}: no request was made: {attack}");
    for (answer, n) in answers {
        let refused = answer == "status 431"
            || answer.starts_with("reset ")
            || (allow_goaway
                && (answer == "goaway ENHANCE_YOUR_CALM" || answer == "goaway COMPRESSION_ERROR"));
        assert!(refused, "{mode}: {n} requests got `{answer}`: {attack}");
    }
}

#[test]
fn oversized_header_list_is_refused_with_431() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b.limit("max_head_bytes", 16384));
    // One 20000-byte header: over max_head_bytes, below the h2 crate's
    // abuse limit (where it would close the connection instead).
    let attack = under_attack(&proxy, "big-headers", &["--size", "20000"]);
    assert_refused("oversized header list", &attack, false);
    assert!(
        attack["answers"]["status 431"].as_u64() >= Some(1),
        "oversized header list: expected 431: {attack}"
    );
    // Within the limit still passes (HTTP/1.1 here: the h2 limit is the
    // same setting).
    let r = proxy.outbound_client().request(
        &Request::get("/fits")
            .host("plain")
            .header("x-big", &"b".repeat(8000)),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn hpack_bomb_is_refused() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b);
    // A 14 KiB header block that decodes to about 40 MiB.
    let attack = under_attack(&proxy, "hpack-bomb", &[]);
    assert_refused("HPACK bomb", &attack, true);
}

/// A flood from a client that never reads: the proxy must stop reading
/// (its answers are not buffered without bound) or close the connection.
fn assert_flood_contained(mode: &str, attack: &Value) {
    assert!(
        attack["frames"].as_u64() > Some(0),
        "{mode}: nothing was sent: {attack}"
    );
    let pushed_back = attack["stalled_writes"].as_u64() > Some(0);
    let ended = attack["closed"].as_u64() > Some(0)
        || attack["goaway"].as_object().is_some_and(|g| !g.is_empty());
    assert!(
        pushed_back || ended,
        "{mode}: the proxy took every frame and kept the connection: {attack}"
    );
}

/// More than 100 SETTINGS frames in a second close the connection
/// (counted as SETTINGS_FLOOD); the other clients are served meanwhile.
#[test]
fn settings_flood_from_a_client_that_never_reads() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b);
    let attack = under_attack(&proxy, "settings-flood", &[]);
    assert_flood_contained("SETTINGS flood", &attack);
    assert_flood_counted(&proxy, "SETTINGS_FLOOD");
}

/// The flood was cut and counted in /metrics.
fn assert_flood_counted(proxy: &Proxy, reason: &str) {
    let n = proxy
        .metrics()
        .sum("coremesh_h2_connection_errors_total", &[("reason", reason)]);
    assert!(
        n >= 1.0,
        "coremesh_h2_connection_errors_total{{reason=\"{reason}\"}} = {n}"
    );
}

#[test]
fn ping_flood_from_a_client_that_never_reads() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b);
    let attack = under_attack(&proxy, "ping-flood", &[]);
    assert_flood_contained("PING flood", &attack);
    assert_flood_counted(&proxy, "PING_FLOOD");
}

#[test]
fn empty_data_frame_flood_closes_the_connection() {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b);
    let before = conn_errors(&proxy, "EMPTY_FRAME_FLOOD");
    let attack = under_attack(&proxy, "empty-data", &[]);
    assert!(
        attack["frames"].as_u64() > Some(0),
        "empty DATA flood: nothing was sent: {attack}"
    );
    // More than [limits.h2] max_empty_frames_per_second (100) empty DATA
    // frames in a second close the connection.
    assert_connections_ended("empty DATA flood", &attack);
    let after = conn_errors(&proxy, "EMPTY_FRAME_FLOOD");
    assert!(
        after > before,
        "the metric did not count the floods ({before} -> {after})"
    );
}

/// A client with a zero window asks for 4 MiB on each of `streams`
/// streams per connection: every stream gets its head, no DATA, and
/// RST_STREAM CANCEL after `timeouts.idle` (1 s here).
fn zero_window_stalls(streams: u64) {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| b.timeout("idle", "1s"));
    let resets = |p: &Proxy| {
        p.metrics().sum(
            "coremesh_h2_stream_resets_total",
            &[("direction", "outbound"), ("by", "proxy")],
        )
    };
    let before = resets(&proxy);
    let n = streams.to_string();
    let attack = under_attack(
        &proxy,
        "zero-window",
        &["--streams", &n, "--size", "4194304"],
    );
    let rounds = attack["rounds"].as_array().expect("rounds");
    assert!(!rounds.is_empty(), "zero window: no round ran: {attack}");
    for r in rounds {
        assert_eq!(
            r["statuses"],
            serde_json::json!([200]),
            "the heads go out: {r}"
        );
        assert_eq!(
            r["reset_streams"], streams,
            "every stalled stream is reset: {r}"
        );
        assert_eq!(r["resets"], serde_json::json!(["CANCEL"]), "{r}");
        assert_eq!(r["data_bytes"], 0, "no window, no DATA: {r}");
        let after = r["reset_after"].as_f64().unwrap_or(0.0);
        assert!(
            (0.8..6.0).contains(&after),
            "with idle = 1s the stalled streams should be reset after about a second: {r}"
        );
    }
    let after = resets(&proxy);
    assert!(
        after - before >= (streams * rounds.len() as u64) as f64,
        "coremesh_h2_stream_resets_total{{by=\"proxy\"}} went {before} -> {after}"
    );
}

/// Three stalled streams at a time hold at most 3 x 256 KiB of the
/// upstream connection's 1 MiB window: the other clients are not touched.
#[test]
fn zero_window_stall_is_reset_after_idle() {
    zero_window_stalls(3);
}

/// Twenty stalled streams at a time. Each holds up to its 256 KiB stream
/// window of the shared upstream h2 connection: with a connection window
/// of 1 MiB, four of them left no window for anyone else's responses on
/// it, and the well-behaved h2 client's streams were reset (CANCEL) after
/// `timeouts.idle` too (fixed by 27e2aba: a 16 MiB upstream connection
/// window).
#[test]
fn zero_window_stalls_on_many_streams_do_not_starve_other_clients() {
    zero_window_stalls(20);
}

/// 300 slow requests in one burst on one connection, against a proxy
/// whose `max_concurrent_streams` is `limit`: the first `limit` are served,
/// the rest refused and counted.
fn streams_beyond_the_limit(limit: u64) {
    let api = H2Origin::start();
    let plain = Origin::start("plain");
    let proxy = proxy_for(&api, &plain, |b| {
        b.extra(&format!("[limits.h2]\nmax_concurrent_streams = {limit}"))
    });
    let refused = |p: &Proxy| {
        p.metrics().sum(
            "coremesh_h2_streams_refused_total",
            &[("direction", "outbound")],
        )
    };
    let before = refused(&proxy);
    let attack = under_attack(
        &proxy,
        "many-streams",
        &["--streams", "300", "--delay-ms", "1500"],
    );
    let rounds = attack["rounds"].as_array().expect("rounds");
    assert!(!rounds.is_empty(), "many streams: no round ran: {attack}");
    for r in rounds {
        assert_eq!(
            r["max_concurrent_streams"], limit,
            "the advertised limit: {r}"
        );
        assert_eq!(r["ok"], limit, "the first {limit} are served: {r}");
        assert_eq!(
            r["refused"],
            300 - limit,
            "the rest get REFUSED_STREAM: {r}"
        );
        assert_eq!(r["first_refused_index"], limit, "{r}");
        assert_eq!(r["other_resets"], serde_json::json!([]), "{r}");
    }
    let want = ((300 - limit) * rounds.len() as u64) as f64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(&proxy) - before < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        refused(&proxy) - before,
        want,
        "coremesh_h2_streams_refused_total counts every refused stream"
    );
}

#[test]
fn streams_beyond_256_at_once_are_refused() {
    streams_beyond_the_limit(256);
}

#[test]
fn max_concurrent_streams_is_configurable() {
    streams_beyond_the_limit(100);
}
