//! Control on etcd, end to end: a three-member etcd cluster started from
//! Debian's `/usr/bin/etcd` on loopback, and two `coremesh-control`
//! processes with `--store etcd://...` on it (the second with the first's
//! CA, through `--ca-cert`/`--ca-key`).
//!
//! - what is applied (or rolled back) through one control is in the
//!   other's history and config, and reaches the proxies of both; a backup
//!   of either's data directory reads the store through it;
//! - two meshctl processes applying at once from the same base version
//!   (`--if-version`): exactly one wins, the other exits 1 with "changed by
//!   someone else at version N; re-read and apply again", and re-applied
//!   nothing is lost; racing applies without a base lose nothing either;
//! - a one-time join token presented through both controls at once joins
//!   one proxy;
//! - one etcd member killed: applies go on; two killed: apply fails with an
//!   error that says etcd lost its majority, nothing is half-applied, and
//!   once they are back applies work;
//! - a proxy that lists both controls moves to the other within seconds
//!   when its own is killed (kill -9), and meshctl given both APIs, the
//!   dead one first, uses the live one;
//! - control speaks TLS to etcd with a client certificate; a control with
//!   another CA than the store's is refused.
//!
//! Skipped, with the reason printed, where /usr/bin/etcd is missing, except
//! under CI (`CI=true`), where that fails them: scripts/install-deps.sh
//! installs Debian's etcd-server.

use std::time::{Duration, Instant};

use coremesh_e2e::etcd::{skip_etcd_test, EtcdCluster};
use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Control, ControlBuilder, Member, MeshProxy, Meshctl, Origin, ProxyBuilder, TempDir,
};

const SOON: Duration = Duration::from_secs(15);

const CHANGED: &str = "re-read and apply again";

fn skip() -> bool {
    skip_etcd_test()
}

/// A control on `etcd`; `ca_of`: share that control's CA (as every replica
/// must).
fn control_on(etcd: &EtcdCluster, ca_of: Option<&Control>) -> Control {
    ControlBuilder::new()
        .arg("--store", &etcd.url())
        .grace("0s")
        .ca_of(ca_of)
        .start()
}

fn service(name: &str) -> String {
    format!("kind: Service\nname: {name}\n")
}

/// `meshctl apply -f FILE EXTRA...` through `control`.
fn apply_with(control: &Control, yaml: &str, extra: &[&str]) -> Meshctl {
    let dir = TempDir::new("apply");
    let file = dir.write("mesh.yaml", yaml);
    let mut args = vec!["apply", "-f", file.to_str().expect("UTF-8")];
    args.extend_from_slice(extra);
    control.meshctl(&args)
}

/// (version, summary) of every row of `meshctl history`.
fn history(control: &Control) -> Vec<(u64, String)> {
    let out = control.meshctl(&["history"]).ok().stdout;
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut parts = l.splitn(2, "  ");
            let v = parts.next()?.trim().parse().ok()?;
            let rest = parts.next()?.trim();
            // "2026-01-01 00:00:00  apply service/x"
            let summary = rest.split_once("  ").map_or(rest, |(_, s)| s.trim());
            Some((v, summary.to_string()))
        })
        .collect()
}

/// Names of the services `control` serves (`meshctl get services`).
fn services(control: &Control) -> Vec<String> {
    let v = control.get_json("services");
    let mut names: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn two_controls_share_history_and_only_one_of_two_racing_applies_wins() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let a = control_on(&etcd, None);
    let b = control_on(&etcd, Some(&a));

    // Applied through one, in the other's history and config.
    assert_eq!(a.apply(&service("api")), 1);
    assert_eq!(history(&b), vec![(1, "apply service/api".to_string())]);
    assert_eq!(b.apply(&service("db")), 2, "b plans on version 1");
    assert_eq!(
        history(&a),
        vec![
            (1, "apply service/api".to_string()),
            (2, "apply service/db".to_string())
        ]
    );
    let seen = wait_for(SOON, || {
        (services(&a) == sorted(&["api", "db"])).then_some(())
    });
    assert!(
        seen.is_some(),
        "a never served b's change: {:?}",
        services(&a)
    );

    // Two operators, both at version 2, apply at once through the two
    // controls: one wins, the other is told to re-read.
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| apply_with(&a, &service("web"), &["--if-version", "2"]));
        let tb = s.spawn(|| apply_with(&b, &service("cache"), &["--if-version", "2"]));
        (
            ta.join().expect("meshctl thread"),
            tb.join().expect("meshctl thread"),
        )
    });
    let (won, lost, lost_via, lost_yaml) = match (ra.code, rb.code) {
        (0, 1) => (ra, rb, &b, service("cache")),
        (1, 0) => (rb, ra, &a, service("web")),
        _ => panic!("exactly one apply must win:\na: {ra:?}\nb: {rb:?}"),
    };
    assert!(won.stdout.starts_with("version 3: "), "{won:?}");
    assert!(
        lost.stderr
            .contains("changed by someone else at version 3; re-read and apply again"),
        "the loser is told who moved the version, and what to do: {lost:?}"
    );
    assert_eq!(history(&a).len(), 3, "one version for one winner");
    // Re-read, apply again: both changes are in.
    let again = apply_with(lost_via, &lost_yaml, &["--if-version", "3"]).ok();
    assert!(again.stdout.starts_with("version 4: "), "{again:?}");
    let all = sorted(&["api", "cache", "db", "web"]);
    assert_eq!(services(lost_via), all);
    let both = wait_for(SOON, || {
        (services(&a) == all && services(&b) == all).then_some(())
    });
    assert!(
        both.is_some(),
        "a: {:?}, b: {:?}",
        services(&a),
        services(&b)
    );

    // Racing applies without a base: each one is either committed or
    // refused with the message; none is lost.
    let mut committed = vec!["api", "cache", "db", "web"];
    let names = [
        ("r1a", "r1b"),
        ("r2a", "r2b"),
        ("r3a", "r3b"),
        ("r4a", "r4b"),
    ];
    for (na, nb) in names {
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| apply_with(&a, &service(na), &[]));
            let tb = s.spawn(|| apply_with(&b, &service(nb), &[]));
            (ta.join().expect("thread"), tb.join().expect("thread"))
        });
        for (r, name) in [(ra, na), (rb, nb)] {
            match r.code {
                0 => committed.push(name),
                1 => assert!(r.stderr.contains(CHANGED), "{r:?}"),
                _ => panic!("{r:?}"),
            }
        }
    }
    let h = history(&b);
    let versions: Vec<u64> = h.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=committed.len() as u64).collect::<Vec<_>>(),
        "one version per committed apply, no gaps: {h:?}"
    );
    // Each control serves the latest version once its watch has seen it.
    let committed = sorted(&committed);
    let seen = wait_for(SOON, || {
        (services(&a) == committed && services(&b) == committed).then_some(())
    });
    assert!(
        seen.is_some(),
        "no committed apply lost: committed {committed:?}; a serves {:?}, b {:?}",
        services(&a),
        services(&b)
    );

    // A backup of a replica's data directory reads the store through it.
    let out = TempDir::new("backup");
    let to = out.path().join("b.json");
    let (code, stdout, stderr) = b.command(&[
        "backup",
        "--data-dir",
        b.data_dir().to_str().expect("UTF-8"),
        "--to",
        to.to_str().expect("UTF-8"),
        "--api",
        &b.api_url(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let n = committed.len();
    assert!(
        stdout.contains(&format!("(version {n}, {n} versions")),
        "{stdout}"
    );

    // Rollback through one, seen through the other.
    let r = a.meshctl(&["rollback", "--to", "1"]).ok();
    assert!(
        r.stdout.starts_with(&format!("version {}: ", n + 1)),
        "{r:?}"
    );
    let back = wait_for(SOON, || (services(&b) == ["api"]).then_some(()));
    assert!(back.is_some(), "b serves {:?}", services(&b));
    let last = history(&b).pop().expect("history");
    assert_eq!(last.0, n as u64 + 1);
    assert!(last.1.contains("rollback"), "{last:?}");
}

#[test]
fn a_one_time_token_presented_through_two_controls_joins_once() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let a = control_on(&etcd, None);
    let b = control_on(&etcd, Some(&a));
    let app = Origin::start("api");
    let token = a.token("api", &["--uses", "1"]);
    let via_a = Member::new("api", "via-a");
    let via_b = Member::new("api", "via-b");
    via_a.write_token(&token);
    via_b.write_token(&token);
    let (pa, pb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            ProxyBuilder::new("api")
                .inbound(app.addr())
                .control(&a.section(&via_a))
                .start()
        });
        let tb = s.spawn(|| {
            ProxyBuilder::new("api")
                .inbound(app.addr())
                .control(&b.section(&via_b))
                .start()
        });
        (ta.join().expect("thread"), tb.join().expect("thread"))
    });
    let settled = wait_for(SOON, || {
        let joined = [&via_a, &via_b].map(|m| m.cert_path().exists());
        let refused = [&pa, &pb].map(|p| p.log_text().contains("used up"));
        (joined[0] != joined[1] && refused[0] != refused[1] && joined[0] != refused[0])
            .then_some(joined)
    });
    assert!(
        settled.is_some(),
        "exactly one proxy must join and the other be told the token is used up\nvia a:\n{}\nvia b:\n{}",
        pa.log_tail(15),
        pb.log_tail(15)
    );
    // Both controls' token lists say so.
    for c in [&a, &b] {
        let list = c.meshctl(&["token", "list"]).ok().stdout;
        assert!(list.contains("used up"), "{list}");
    }
}

#[test]
fn a_change_through_one_control_reaches_the_proxies_of_the_other() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let a = control_on(&etcd, None);
    let b = control_on(&etcd, Some(&a));
    let app = Origin::start("api");
    let (ma, mb) = (a.member("api", "on-a"), b.member("api", "on-b"));
    let _pa = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&a.section(&ma))
        .start();
    let _pb = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&b.section(&mb))
        .start();
    // Each control has its proxy (a Service alone changes no view: no
    // snapshot needs to follow it), and lists both endpoints
    // (registrations are shared).
    let v1 = b.apply(&service("api"));
    a.wait_applied(1, 2, v1, &[], SOON);
    b.wait_applied(1, 2, v1, &[], SOON);
    // A Resilience of api changes the view of api's own proxies: the one
    // on a gets it although b took the change.
    let started = Instant::now();
    let v2 = b.apply("kind: Resilience\nservice: api\nloadBalancer: round-robin\n");
    a.wait_applied(1, 2, v2, &["api"], SOON);
    eprintln!(
        "a change applied through b was ACKed by a's proxy {} ms after meshctl started",
        started.elapsed().as_millis()
    );
    b.wait_applied(1, 2, v2, &["api"], SOON);
}

#[test]
fn apply_survives_one_etcd_member_lost_and_fails_cleanly_without_a_majority() {
    if skip() {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let a = control_on(&etcd, None);
    let b = control_on(&etcd, Some(&a));
    assert_eq!(a.apply(&service("api")), 1);

    // One member gone: no visible effect.
    etcd.kill9(0);
    assert_eq!(a.apply(&service("db")), 2);
    assert_eq!(b.apply(&service("web")), 3);

    // Two gone: the last one has no leader; apply fails and says why.
    etcd.kill9(1);
    let lost = wait_for(SOON, || (!etcd.healthy(2)).then_some(()));
    assert!(lost.is_some(), "the last member should lose its leader");
    // (At once: each waits out --etcd-timeout, 5 s, for a majority.)
    let failed = std::thread::scope(|s| {
        let ta = s.spawn(|| apply_with(&a, &service("cache"), &[]));
        let tb = s.spawn(|| apply_with(&b, &service("queue"), &[]));
        [ta.join().expect("thread"), tb.join().expect("thread")]
    });
    for r in failed {
        eprintln!("apply without an etcd majority: {}", r.stderr.trim());
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stderr.contains("etcd at ") && r.stderr.contains("majority of the etcd members"),
            "the error names etcd and what to check: {r:?}"
        );
    }

    // Back: the failed applies left nothing, and applies work again.
    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy(&[0, 1, 2], Duration::from_secs(30));
    let ok = wait_for(SOON, || {
        let r = apply_with(&b, &service("cache"), &[]);
        (r.code == 0).then_some(r)
    })
    .expect("apply works once etcd has its majority back");
    assert!(ok.stdout.starts_with("version 4: service/cache"), "{ok:?}");
    let h = history(&a);
    assert_eq!(
        h.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "{h:?}"
    );
    assert!(
        !h.iter().any(|(_, s)| s.contains("queue")),
        "a failed apply is not in the history: {h:?}"
    );
    let all = sorted(&["api", "cache", "db", "web"]);
    let seen = wait_for(SOON, || {
        (services(&a) == all && services(&b) == all).then_some(())
    });
    assert!(
        seen.is_some(),
        "a: {:?}, b: {:?}",
        services(&a),
        services(&b)
    );
}

#[test]
fn a_proxy_listing_both_controls_moves_to_the_other_when_its_control_is_killed() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let mut a = control_on(&etcd, None);
    let b = control_on(&etcd, Some(&a));
    let app = Origin::start("api");
    let m = a.member("api", "mover");
    let _p = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&a.section(&m).also(b.quic()))
        .start();
    let v1 = a.apply(&service("api"));
    a.wait_applied(1, 1, v1, &[], SOON);
    assert!(b.proxies().is_empty(), "the proxy uses the first address");

    let killed = Instant::now();
    a.kill9();
    // The proxy notices by its QUIC keep-alives going unanswered (idle
    // timeout 3 s), then tries the next address of its list first.
    let on_b = wait_for(Duration::from_secs(40), || {
        b.proxies()
            .iter()
            .any(|p| p["connected"] == true && p["applied_version"] == p["sent_version"])
            .then(Instant::now)
    })
    .expect("the proxy moves to b");
    let moved = on_b - killed;
    eprintln!(
        "the proxy was on b, its snapshot ACKed, {} ms after a was killed",
        moved.as_millis()
    );
    // Issue 19's target is 5 s (3-4 s to notice, then the next address at
    // once); the extra second is for a debug build on a loaded machine and
    // for polling b's API.
    assert!(
        moved < Duration::from_secs(6),
        "the proxy took {moved:?} to move to b"
    );
    b.wait_applied(1, 1, v1, &[], SOON);
    let v2 = b.apply("kind: Resilience\nservice: api\nloadBalancer: round-robin\n");
    b.wait_applied(1, 1, v2, &["api"], SOON);

    // meshctl given both replicas' APIs, the dead one first: it uses the
    // one that answers. Comma-separated, and the flag repeated.
    let both = format!("{},{}", a.api_url(), b.api_url());
    let data = b.data_dir().to_str().expect("UTF-8");
    for api in [
        vec!["--api", both.as_str()],
        vec!["--api", &a.api_url(), "--api", &b.api_url()],
    ]
    .iter()
    {
        let out = std::process::Command::new(coremesh_e2e::control::meshctl_bin())
            .args(api.iter().copied())
            .args(["--data-dir", data, "history"])
            .env_remove("COREMESH_API")
            .env_remove("COREMESH_CREDENTIAL")
            .env_remove("COREMESH_CA")
            .output()
            .expect("run meshctl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{api:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("apply service/api"), "{stdout}");
    }
    // Both dead: exit 2, naming both.
    let out = std::process::Command::new(coremesh_e2e::control::meshctl_bin())
        .args(["--api", &format!("{},{}", a.api_url(), a.api_url())])
        .args(["--data-dir", data, "history"])
        .env_remove("COREMESH_API")
        .output()
        .expect("run meshctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach control at any of"),
        "{stderr}"
    );
}

#[test]
fn control_speaks_tls_to_etcd_with_a_client_certificate() {
    if skip() {
        return;
    }
    let pki = coremesh_e2e::pki::Pki::new("etcd");
    let etcd = EtcdCluster::start_tls(1, &pki);
    let tls = etcd.tls().expect("a TLS cluster").clone();
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8").to_string();
    let c = ControlBuilder::new()
        .arg("--store", &etcd.url())
        .arg("--etcd-ca", &path(&tls.ca))
        .arg("--etcd-cert", &path(&tls.client_cert))
        .arg("--etcd-key", &path(&tls.client_key))
        .start();
    assert_eq!(c.apply(&service("api")), 1);
    assert_eq!(history(&c), vec![(1, "apply service/api".to_string())]);

    // Without a client certificate etcd refuses it, and control says
    // where it failed instead of starting.
    let dir = TempDir::new("no-client-cert");
    let (code, stdout, stderr) = c.command(&[
        "--data-dir",
        &path(&dir.path().join("data")),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--store",
        &etcd.url(),
        "--etcd-ca",
        &path(&tls.ca),
        "--etcd-timeout",
        "2s",
    ]);
    eprintln!("without a client certificate: {stderr}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    let addr = etcd.client_addr(0).to_string();
    assert!(
        stderr.contains(&format!("etcd at {addr}")) && stderr.contains("failed"),
        "{stderr}"
    );
}

#[test]
fn a_control_with_another_ca_is_refused() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let a = control_on(&etcd, None);
    assert_eq!(a.apply(&service("api")), 1);
    // A new data directory without a.'s CA files: control makes its own CA,
    // which the store's proxies would not trust.
    let dir = TempDir::new("own-ca");
    let data = dir.path().join("data");
    let (code, stdout, stderr) = a.command(&[
        "--data-dir",
        data.to_str().expect("UTF-8"),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--store",
        &etcd.url(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("is not the CA of the other controls on this store")
            && stderr.contains("Copy ca.pem and ca.key"),
        "{stderr}"
    );
    // Nothing of it reached the store.
    assert_eq!(history(&a), vec![(1, "apply service/api".to_string())]);
}

/// One GET for service api through `web`'s outbound: its status (0 when the
/// connection failed).
fn call_api(web: &coremesh_e2e::Proxy) -> u16 {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        web.outbound_client().get("api", "/").status
    }));
    r.unwrap_or(0)
}

fn api_endpoints(control: &Control) -> Vec<serde_json::Value> {
    control
        .endpoints()
        .into_iter()
        .filter(|e| e["service"] == "api")
        .collect()
}

#[test]
fn registrations_are_shared_a_moving_proxy_keeps_its_endpoint_and_a_dead_one_is_withdrawn() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    // The lease TTL is the heartbeat timeout: longer than a proxy takes to
    // move (about 4 s), short enough for the test.
    let start = |name: &str, ca_of: Option<&Control>| {
        ControlBuilder::new()
            .arg("--store", &etcd.url())
            .arg("--replica-name", name)
            .grace("0s")
            .heartbeat_timeout("8s")
            .ca_of(ca_of)
            .start()
    };
    let mut a = start("replica-a", None);
    let b = start("replica-b", Some(&a));
    b.apply(&format!("{}---\n{}", service("api"), service("web")));
    let app = Origin::start("api");
    let (ma, mw) = (a.member("api", "api-1"), b.member("web", "web-1"));
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&a.section(&ma).also(b.quic()))
        .start();
    let web = ProxyBuilder::new("web")
        .outbound()
        .control(&b.section(&mw).calls(&["api"]))
        .start();

    // The caller on b reaches the service registered through a.
    let reached = wait_for(SOON, || (call_api(&web) == 200).then_some(()));
    assert!(
        reached.is_some(),
        "web (on b) never reached api (registered through a); b's endpoints: {:?}",
        b.endpoints()
    );
    let eps = api_endpoints(&b);
    assert_eq!(eps.len(), 1, "{eps:?}");
    let replica_a = "replica-a".to_string();
    assert_eq!(eps[0]["replica"], "replica-a", "{eps:?}");
    let out = b.meshctl(&["get", "endpoints"]).ok().stdout;
    assert!(out.contains("REPLICA") && out.contains(&replica_a), "{out}");

    // Replica a dies with the service's proxy alive: the proxy moves to b
    // and registers there before a's lease ends; the caller never loses the
    // endpoint.
    a.kill9();
    let killed = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut moved = None;
    while killed.elapsed() < Duration::from_secs(14) {
        if call_api(&web) == 200 {
            ok += 1;
        } else {
            failed += 1;
        }
        if moved.is_none() {
            let eps = api_endpoints(&b);
            if eps.len() == 1 && eps[0]["replica"] == "replica-b" {
                moved = Some(killed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "replica a killed: {ok} requests ok, {failed} failed; the endpoint moved to b's lease after {moved:?}"
    );
    assert_eq!(failed, 0, "requests failed while the proxy moved");
    assert!(
        moved.is_some(),
        "the endpoint never moved to b: {:?}",
        api_endpoints(&b)
    );
    assert_eq!(api_endpoints(&b).len(), 1, "a's lease ended: still listed");

    // The service's proxy dies: b (now the leader of election withdraw)
    // withdraws its endpoint once its heartbeat is older than the timeout.
    api.signal(libc::SIGKILL);
    let died = Instant::now();
    let gone = wait_for(Duration::from_secs(20), || {
        api_endpoints(&b).is_empty().then(Instant::now)
    });
    let took = gone.map(|g| g - died);
    eprintln!("the dead proxy's endpoint was withdrawn after {took:?}");
    let took = took.expect("the endpoint is withdrawn");
    assert!(
        took < Duration::from_secs(8 + 5),
        "withdrawn after {took:?} (heartbeat timeout 8 s)"
    );
    assert!(
        b.log_text()
            .contains("withdrawn by this replica, the leader of election withdraw"),
        "{}",
        b.log_tail(30)
    );
}

/// The pid of the etcd member serving clients at `client` (found by its
/// command line: the cluster fixture does not hand out its children).
fn etcd_member_pid(client: std::net::SocketAddr) -> libc::pid_t {
    let needle = format!("http://{client}");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("etcd"))
            && args
                .windows(2)
                .any(|w| w[0] == "--listen-client-urls" && w[1] == needle)
        {
            return pid;
        }
    }
    panic!("no etcd process listens for clients at {needle}");
}

fn status_line(control: &Control) -> String {
    let out = control.meshctl(&["status"]).ok().stdout;
    out.lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_replica_cut_off_from_etcd_says_so_stops_pushing_and_resumes() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let member3 = etcd.client_addr(2);
    let y = ControlBuilder::new()
        .arg("--store", &etcd.url())
        .arg("--replica-name", "replica-y")
        .grace("0s")
        .heartbeat_timeout("6s")
        .start();
    // X knows member 3 only.
    let x = ControlBuilder::new()
        .arg("--store", &format!("etcd://{member3}"))
        .arg("--replica-name", "replica-x")
        .ca_of(Some(&y))
        .arg("--etcd-timeout", "2s")
        .grace("0s")
        .heartbeat_timeout("6s")
        .start();
    // Two proxies of api on x: one lists x only, the other x then y.
    let app = Origin::start("api");
    let m = x.member("api", "on-x");
    let p_x = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&x.section(&m))
        .start();
    let app2 = Origin::start("api");
    let m2 = x.member("api", "movable");
    let p_m = ProxyBuilder::new("api")
        .inbound(app2.addr())
        .control(&x.section(&m2).also(y.quic()))
        .start();
    let v1 = y.apply(&service("api"));
    x.wait_applied(2, 2, v1, &[], SOON);
    assert!(
        y.proxies().is_empty(),
        "both proxies use x, their first address"
    );
    let line = status_line(&x);
    assert!(line.starts_with("control replica-x: ok"), "{line}");
    let on_x_only = |c: &Control| -> serde_json::Value {
        c.proxies()
            .into_iter()
            .find(|p| p["node"] == "on-x")
            .map_or(serde_json::Value::Null, |p| {
                p["applied_config_version"].clone()
            })
    };
    let movable = p_m.inbound();
    let y_lists_movable = || y.endpoint_addrs("api").contains(&movable);

    let pid = etcd_member_pid(member3);
    // SAFETY: kill(2) on a pid of our own child process; no memory involved.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped = Instant::now();
    let cut = wait_for(Duration::from_secs(15), || {
        let line = status_line(&x);
        line.contains("cut off from etcd").then_some(line)
    });
    let Some(line) = cut else {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        panic!("x never said it is cut off: {}", status_line(&x));
    };
    eprintln!("{:?} after SIGSTOP: {line}", stopped.elapsed());
    assert!(
        line.starts_with("control replica-x: cut off from etcd (etcd://")
            && line.contains("not pushing changes"),
        "{line}"
    );
    // y asks the other members (if member 3 led etcd, after their
    // election, a second or two).
    let y_ok = wait_for(SOON, || {
        status_line(&y)
            .starts_with("control replica-y: ok")
            .then_some(())
    });
    assert!(y_ok.is_some(), "{}", status_line(&y));

    // x hands its sessions over: the proxy that lists y moves there and
    // registers, and its endpoint never leaves y's list, though x's lease
    // (6 s) runs out.
    let moved = wait_for(SOON, || {
        y.proxies()
            .iter()
            .any(|p| p["node"] == "movable" && p["connected"] == true)
            .then_some(())
    });
    assert!(
        moved.is_some(),
        "the proxy never moved to y: {:?}",
        y.proxies()
    );
    eprintln!("the proxy moved to y {:?} after SIGSTOP", stopped.elapsed());
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        assert!(
            y_lists_movable(),
            "y lost the moved proxy's endpoint: {:?}",
            y.endpoints()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A change through y reaches the moved proxy, and not the proxy that
    // stays with x while x is cut off.
    let v2 = y.apply("kind: Resilience\nservice: api\nloadBalancer: round-robin\n");
    // (y lists one endpoint: x's lease ran out, and with it the endpoint of
    // the proxy that stayed with x, until x reaches etcd again.)
    y.wait_applied(1, 1, v2, &["api"], SOON);
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(
        on_x_only(&x),
        serde_json::json!(v2),
        "x pushed while cut off"
    );

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let resumed = Instant::now();
    x.wait_applied(1, 2, v2, &["api"], Duration::from_secs(30));
    eprintln!(
        "x's proxy applied the change {} ms after SIGCONT",
        resumed.elapsed().as_millis()
    );
    let ok = wait_for(SOON, || {
        status_line(&x)
            .starts_with("control replica-x: ok")
            .then_some(())
    });
    assert!(ok.is_some(), "{}", status_line(&x));
    // x put nothing back over y's record: the moved proxy's endpoint is
    // still there, with y as its owner, after x's heartbeat timeout.
    std::thread::sleep(Duration::from_secs(7));
    let owner = |c: &Control| {
        c.endpoints()
            .into_iter()
            .find(|e| e["address"] == movable.to_string())
            .map(|e| e["replica"].clone())
    };
    let y_owns = Some(serde_json::json!("replica-y"));
    assert_eq!(owner(&y), y_owns, "{:?}", y.endpoints());
    assert_eq!(owner(&x), y_owns, "{:?}", x.endpoints());
    drop((p_x, p_m));
}
