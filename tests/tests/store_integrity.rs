//! Control-state integrity (issue 21): a lost, emptied, truncated or
//! corrupted store keeps control down with a message naming the file, and
//! never reaches a proxy as an empty policy; `--reinitialize-store` is
//! refused by the proxies (NACK, visible in `meshctl status`); backups
//! restore everything; a real rollback still reaches every proxy.
//!
//! ```text
//!  web proxy ───┐  mTLS
//!               ├══════▶ api proxy [AccessPolicy api-access: only web] ──▶ origin api
//!  rogue proxy ─┘   (rogue: a token for a service no resource defines)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Client, Control, ControlBuilder, Member, MeshProxy, Origin, Proxy, ProxyBuilder, Request,
};

const SOON: Duration = Duration::from_secs(20);

const SERVICES: &str = "kind: Service\nname: api\n---\nkind: Service\nname: web\n";

const POLICY: &str = r#"
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
"#;

const OPEN_TO_ROGUE: &str = r#"
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web, rogue]
"#;

/// In every proxy's view (the callers' and api's own), so a change to it
/// reaches all three; a change to api's AccessPolicy alone reaches api only.
const RESILIENCE: &str = "kind: Resilience\nservice: api\nloadBalancer: round-robin\n";

struct Mesh {
    control: Control,
    _members: Vec<Member>,
    _app: Origin,
    api: Proxy,
    web: Proxy,
    rogue: Proxy,
}

/// The mesh of the issue's report, with the policy in force: config
/// version 2 (1: the Services, 2: the AccessPolicy).
fn mesh() -> Mesh {
    // A short grace period: after a restart, reconnected proxies get their
    // snapshot when it ends.
    let control = ControlBuilder::new().grace("1s").start();
    // Applied first, so every proxy's first snapshot is of version 2.
    assert_eq!(control.apply(SERVICES), 1);
    assert_eq!(control.apply(POLICY), 2);
    let app = Origin::start("api");
    let api_m = control.member("api", "api-1");
    let web_m = control.member("web", "web-1");
    let rogue_m = control.member("rogue", "rogue-1");
    let api = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&control.section(&api_m))
        .start();
    let caller = |name: &str, m| {
        ProxyBuilder::new(name)
            .outbound()
            .control(&control.section(m).calls(&["api"]))
            .start()
    };
    let web = caller("web", &web_m);
    let rogue = caller("rogue", &rogue_m);
    control.wait_converged(3, 1, 2, SOON);
    let m = Mesh {
        control,
        _members: vec![api_m, web_m, rogue_m],
        _app: app,
        api,
        web,
        rogue,
    };
    eventually(&m.web, 200);
    eventually(&m.rogue, 403);
    m
}

fn status_of(from: &Proxy) -> u16 {
    let mut c = Client::connect(from.outbound());
    c.set_read_timeout(Duration::from_secs(10));
    c.request(&Request::new("GET", "/v1/data").host("api"))
        .status
}

/// Waits until a call from `from` to api gets `want`.
fn eventually(from: &Proxy, want: u16) {
    let mut last = 0;
    let ok = wait_for(SOON, || {
        last = status_of(from);
        (last == want).then_some(())
    });
    assert!(ok.is_some(), "wanted {want}, the last call got {last}");
}

/// The policy of version 2 is in force: web gets through, rogue does not.
fn policy_holds(m: &Mesh) {
    for _ in 0..3 {
        assert_eq!(status_of(&m.web), 200, "web must reach api");
        assert_eq!(status_of(&m.rogue), 403, "rogue must be refused by api");
    }
}

/// The api proxy's `/config` control status: (config version, store id).
fn running(p: &Proxy) -> (u64, String) {
    let c: serde_json::Value =
        serde_json::from_slice(&p.admin_get("/config").body).expect("/config is JSON");
    (
        c["control"]["config_version"].as_u64().unwrap_or(0),
        c["control"]["store_id"].as_str().unwrap_or("").to_string(),
    )
}

fn store_path(control: &Control) -> PathBuf {
    control.data_dir().join("store.redb")
}

/// A start that must fail: exit 1, a message naming the store file and
/// what is wrong, no panic.
fn refused_start(control: &mut Control, what: &str) -> String {
    let store = store_path(control).display().to_string();
    let (status, output) = match control.try_restart(&[]) {
        Ok(()) => panic!(
            "control started on a store that {what}:\n{}",
            control.log_tail(20)
        ),
        Err(e) => e,
    };
    assert_eq!(status.code(), Some(1), "exit status; output:\n{output}");
    assert!(
        output.contains(&store) && output.contains(what),
        "the message should name {store} and say it {what}:\n{output}"
    );
    assert!(
        !output.contains("panicked") && !output.contains("stack backtrace"),
        "no panic:\n{output}"
    );
    output
}

#[test]
fn an_emptied_or_deleted_store_keeps_control_down_and_the_policy_in_force() {
    let mut m = mesh();
    let store = store_path(&m.control);
    let before = running(&m.api);
    assert_eq!(before.0, 2);
    assert_eq!(before.1.len(), 32, "snapshots carry the store id");

    m.control.kill9();
    std::fs::write(&store, b"").unwrap();
    let out = refused_start(&mut m.control, "is empty");
    assert!(
        out.contains("coremesh-control restore") && out.contains("--reinitialize-store"),
        "the message says how to recover:\n{out}"
    );
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 0);

    std::fs::remove_file(&store).unwrap();
    refused_start(&mut m.control, "is missing");
    assert!(!store.exists(), "a refused start creates no store");

    // Control is down; every proxy still runs version 2 of the same store.
    policy_holds(&m);
    assert_eq!(running(&m.api), before);
}

#[test]
fn a_truncated_or_corrupted_store_is_a_clean_exit_naming_the_file() {
    let mut control = ControlBuilder::new().start();
    control.apply(SERVICES);
    control.apply(POLICY);
    let store = store_path(&control);
    control.kill9();
    let whole = std::fs::read(&store).unwrap();

    std::fs::write(&store, &whole[..whole.len() / 2]).unwrap();
    refused_start(&mut control, "is damaged");

    let mut damaged = whole.clone();
    for b in damaged.iter_mut().skip(512).step_by(7) {
        *b ^= 0x5a;
    }
    std::fs::write(&store, &damaged).unwrap();
    refused_start(&mut control, "store");

    // The whole file back: control starts with everything.
    std::fs::write(&store, &whole).unwrap();
    control
        .try_restart(&[])
        .unwrap_or_else(|(s, out)| panic!("{s}: {out}"));
    assert_eq!(control.config_version(), 2);
}

#[test]
fn a_reinitialized_store_is_refused_by_every_proxy_until_it_passes_their_version() {
    let mut m = mesh();
    let (_, store_id) = running(&m.api);
    m.control.kill9();
    std::fs::remove_file(store_path(&m.control)).unwrap();
    m.control
        .try_restart(&["--reinitialize-store"])
        .unwrap_or_else(|(s, out)| panic!("--reinitialize-store: {s}: {out}"));
    assert!(
        m.control
            .wait_for_log(0, SOON, |l| l.contains("WARN")
                && l.contains("reinitialized"))
            .is_some(),
        "control warns about the reinitialization:\n{}",
        m.control.log_tail(20)
    );
    let history = m.control.meshctl(&["history"]).ok().stdout;
    assert!(
        history.contains("--reinitialize-store") && history.contains("is missing"),
        "the history records it:\n{history}"
    );
    assert_eq!(m.control.config_version(), 1);

    // Every proxy refuses version 1 and says why in `meshctl status`.
    let nacks = |needle: &str| {
        wait_for(SOON, || {
            let ps = m.control.proxies();
            (ps.len() == 3
                && ps.iter().all(|p| {
                    p["connected"] == true && p["nack"].as_str().is_some_and(|n| n.contains(needle))
                }))
            .then_some(())
        })
    };
    assert!(
        nacks("older than the running config version 2").is_some(),
        "every proxy should NACK version 1:\n{}",
        m.control.meshctl(&["status"]).stdout
    );
    let status = m.control.meshctl(&["status"]).ok().stdout;
    assert!(
        status.contains("NACK: version") && status.contains("refusing to go back"),
        "{status}"
    );
    policy_holds(&m);
    assert_eq!(running(&m.api), (2, store_id.clone()));

    // The operator re-applies: version 2 of the new history is another
    // config than the version 2 the proxies run (no policy yet): refused by
    // api (the one proxy whose view it changes).
    assert_eq!(m.control.apply(SERVICES), 2);
    let api_nack = wait_for(SOON, || {
        m.control.proxies().into_iter().find(|p| {
            p["service"] == "api"
                && p["nack"]
                    .as_str()
                    .is_some_and(|n| n.contains("is not the config version 2 this proxy runs"))
        })
    });
    assert!(
        api_nack.is_some(),
        "an equal version with another config should be refused:\n{}",
        m.control.meshctl(&["status"]).stdout
    );
    policy_holds(&m);

    // Version 3 passes theirs: taken everywhere, with the policy.
    assert_eq!(m.control.apply(&format!("{POLICY}---\n{RESILIENCE}")), 3);
    m.control.wait_converged(3, 1, 3, SOON);
    policy_holds(&m);
    assert_eq!(running(&m.api), (3, store_id));
}

#[test]
fn a_backup_restores_everything() {
    let mut m = mesh();
    let dir = m.control.data_dir().to_path_buf();
    let backup = dir.parent().unwrap().join("control.backup");
    let backup_s = backup.display().to_string();
    let dir_s = dir.display().to_string();

    // Online: control runs and holds the store.
    let api_url = m.control.api_url();
    let (code, out, err) = m.control.command(&[
        "backup",
        "--data-dir",
        &dir_s,
        "--to",
        &backup_s,
        "--api",
        &api_url,
        "--include-ca-key",
    ]);
    assert_eq!(code, 0, "backup: {out}{err}");
    assert!(out.contains("version 2"), "{out}");
    assert_eq!(mode(&backup), 0o600);
    let history = m.control.meshctl(&["history"]).ok().stdout;
    let tokens = token_ids(&m.control);
    assert_eq!(tokens.len(), 3);

    // The whole data directory is lost.
    m.control.kill9();
    std::fs::remove_dir_all(&dir).unwrap();
    let (code, out, err) =
        m.control
            .command(&["restore", "--from", &backup_s, "--data-dir", &dir_s]);
    assert_eq!(code, 0, "restore: {out}{err}");
    assert!(out.contains("at version 2"), "{out}");
    // Never over a directory with state, unless forced.
    let (code, _, err) = m
        .control
        .command(&["restore", "--from", &backup_s, "--data-dir", &dir_s]);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
    let (code, out, err) = m.control.command(&[
        "restore",
        "--from",
        &backup_s,
        "--data-dir",
        &dir_s,
        "--force",
    ]);
    assert_eq!(code, 0, "restore --force: {out}{err}");

    m.control
        .try_restart(&[])
        .unwrap_or_else(|(s, out)| panic!("start on the restored directory: {s}: {out}"));
    assert_eq!(m.control.meshctl(&["history"]).ok().stdout, history);
    assert_eq!(token_ids(&m.control), tokens);
    // The same store, the same version, the same CA: every proxy takes
    // the snapshots of the restored control.
    m.control.wait_converged(3, 1, 2, SOON);
    policy_holds(&m);
    // And the restored control keeps working: a change reaches everyone.
    assert_eq!(m.control.apply(OPEN_TO_ROGUE), 3);
    eventually(&m.rogue, 200);
}

#[test]
fn a_rollback_is_a_new_version_and_reaches_every_proxy() {
    let m = mesh();
    assert_eq!(
        m.control
            .apply(&format!("{OPEN_TO_ROGUE}---\n{RESILIENCE}")),
        3
    );
    m.control.wait_converged(3, 1, 3, SOON);
    eventually(&m.rogue, 200);
    m.control.meshctl(&["rollback", "--to", "2"]).ok();
    assert_eq!(m.control.config_version(), 4);
    m.control.wait_converged(3, 1, 4, SOON);
    policy_holds(&m);
    assert_eq!(running(&m.api).0, 4);
}

fn token_ids(control: &Control) -> Vec<String> {
    let list = control.meshctl(&["token", "list"]).ok().stdout;
    let mut ids: Vec<String> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn another_stores_snapshots_are_refused_unless_the_proxy_allows_the_change() {
    let mut m = mesh();
    // A proxy whose operator allows a store change.
    let open_m = m.control.member("web", "web-open");
    let open = ProxyBuilder::new("web")
        .outbound()
        .control(
            &m.control
                .section(&open_m)
                .calls(&["api"])
                .key("allow_store_change", "true"),
        )
        .start();
    m.control.wait_converged(4, 1, 2, SOON);
    eventually(&open, 200);
    let (_, old_id) = running(&m.api);

    // The store and its identity are both gone: a new store, a new id.
    m.control.kill9();
    std::fs::remove_file(store_path(&m.control)).unwrap();
    std::fs::remove_file(m.control.data_dir().join("store.id")).unwrap();
    m.control
        .try_restart(&["--reinitialize-store"])
        .unwrap_or_else(|(s, out)| panic!("--reinitialize-store: {s}: {out}"));
    let refused = wait_for(SOON, || {
        let ps = m.control.proxies();
        let nacked: Vec<String> = ps
            .iter()
            .filter(|p| {
                p["nack"]
                    .as_str()
                    .is_some_and(|n| n.contains("refusing another store's policy"))
            })
            .map(|p| p["node"].as_str().unwrap_or("").to_string())
            .collect();
        (nacked.len() == 3).then_some(nacked)
    });
    assert!(
        refused
            .as_ref()
            .is_some_and(|n| !n.contains(&"web-open".to_string())),
        "api, web and rogue refuse the other store; web-open takes it:\n{}",
        m.control.meshctl(&["status"]).stdout
    );
    // The three keep version 2 of the old store: rogue is still refused.
    policy_holds(&m);
    assert_eq!(running(&m.api).1, old_id);
    // The one that allowed it runs the new store's version 1.
    let took = wait_for(SOON, || {
        let c: serde_json::Value = serde_json::from_slice(&open.admin_get("/config").body).ok()?;
        let id = c["control"]["store_id"].as_str()?.to_string();
        (id != old_id && c["control"]["config_version"] == 1).then_some(())
    });
    assert!(
        took.is_some(),
        "web-open should run the new store's version 1"
    );
}
