//! The CA shared through etcd, sealed with the operator's key
//! (`--ca-in-store --ca-store-key FILE`), end to end on a real etcd
//! cluster (`/usr/bin/etcd`, loopback):
//!
//! - two controls given the same key file issue from one CA: the first
//!   stores a new CA in etcd, the second takes it (neither writes its key
//!   to disk); a proxy joined through one with the other's token, and
//!   moved to the other when its control is killed, is accepted there;
//! - etcd's value holds the CA certificate and a sealed key, never the
//!   PEM private key;
//! - a control with another key file, with a key file others can read, or
//!   with its own files' CA differing from etcd's, refuses to start with a
//!   message that says what to do;
//! - a root rotation (`meshctl ca rotate begin|switch|finish`) without a
//!   restart: the next root is issued once (by the leader of election
//!   ca-rotation), both controls' proxies trust both roots, after the
//!   switch a new join gets a certificate from the new root, and after
//!   finish the bundle holds the new root alone.
//!
//! Skipped, with the reason printed, where /usr/bin/etcd is missing, except
//! under CI (`CI=true`), where that fails them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coremesh_e2e::control::control_bin;
use coremesh_e2e::etcd::{skip_etcd_test, EtcdCluster};
use coremesh_e2e::util::wait_for;
use coremesh_e2e::{Control, ControlBuilder, Member, MeshProxy, Origin, ProxyBuilder, TempDir};

const SOON: Duration = Duration::from_secs(15);
const ETCDCTL: &str = "/usr/bin/etcdctl";

fn skip() -> bool {
    skip_etcd_test()
}

/// `coremesh-control ca-store-key FILE` in `dir`: the new key file.
fn new_key(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(name);
    let out = Command::new(control_bin())
        .arg("ca-store-key")
        .arg(&path)
        .output()
        .expect("run coremesh-control ca-store-key");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(kid "), "{stdout}");
    path
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A control on `etcd` with `--ca-in-store --ca-store-key key`.
fn sealed_control(etcd: &EtcdCluster, key: &Path) -> Control {
    ControlBuilder::new()
        .arg("--store", &etcd.url())
        .flag("--ca-in-store")
        .arg("--ca-store-key", utf8(key))
        .grace("0s")
        .start()
}

/// Starts `coremesh-control ARGS` on a new data directory and `etcd` to
/// the end (it must fail): (exit code, stderr).
fn start_failing(via: &Control, etcd: &EtcdCluster, extra: &[&str]) -> (i32, String) {
    let dir = TempDir::new("refused");
    let data = dir.path().join("data");
    let mut args = vec![
        "--data-dir",
        utf8(&data),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
    ];
    let url = etcd.url();
    args.extend_from_slice(&["--store", &url]);
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = via.command(&args);
    assert_ne!(code, 0, "it started:\n{stdout}{stderr}");
    (code, stderr)
}

/// `etcdctl get KEY --print-value-only` on `etcd`'s first member.
fn etcd_value(etcd: &EtcdCluster, key: &str) -> Option<String> {
    if !Path::new(ETCDCTL).is_file() {
        eprintln!("{ETCDCTL} is missing (Debian's etcd-client): etcd's value not read");
        return None;
    }
    let out = Command::new(ETCDCTL)
        .args(["--endpoints", &etcd.client_addr(0).to_string()])
        .args(["get", key, "--print-value-only"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn two_controls_with_one_key_file_issue_from_the_sealed_ca_in_etcd() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let keys = TempDir::new("ca-store-key");
    let key = new_key(&keys, "ca-store.key");
    let a = sealed_control(&etcd, &key);
    let mut b = sealed_control(&etcd, &key);
    assert!(
        a.log_text()
            .contains("CA: stored a new CA in etcd at /coremesh/ca/current"),
        "{}",
        a.log_tail(20)
    );
    assert!(
        b.log_text()
            .contains("CA: from etcd at /coremesh/ca/current"),
        "{}",
        b.log_tail(20)
    );
    // The CA key never reached either data directory.
    for c in [&a, &b] {
        for f in ["ca.key", "ca.pem"] {
            assert!(
                !c.data_dir().join(f).exists(),
                "{f} in {}",
                c.data_dir().display()
            );
        }
    }
    // One CA: the API certificates chain to the same root.
    let root =
        |c: &Control| std::fs::read_to_string(c.data_dir().join("api-ca.pem")).expect("api-ca.pem");
    assert_eq!(root(&a), root(&b));

    // etcd holds the certificate and a sealed key, not the private key.
    if let Some(value) = etcd_value(&etcd, "/coremesh/ca/current") {
        assert!(value.contains("BEGIN CERTIFICATE"), "{value}");
        assert!(value.contains("\"sealed_key\""), "{value}");
        assert!(!value.contains("PRIVATE KEY"), "{value}");
    }

    // A token made through a, used to join through b: the proxy pins b's
    // QUIC certificate by the token's CA fingerprint, so this joins only if
    // b issues from a's CA. Its certificate, issued by b, is then accepted
    // by a when b dies and the proxy moves there.
    let app = Origin::start("api");
    let m = Member::new("api", "via-b");
    m.write_token(&a.token("api", &[]));
    let p = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&b.section(&m).also(a.quic()))
        .start();
    let on_b = wait_for(SOON, || {
        b.proxies()
            .iter()
            .any(|p| p["connected"] == true)
            .then_some(())
    });
    assert!(on_b.is_some(), "joined through b:\n{}", p.log_tail(20));
    b.kill9();
    let on_a = wait_for(Duration::from_secs(40), || {
        a.proxies()
            .iter()
            .any(|p| p["connected"] == true && p["applied_version"] == p["sent_version"])
            .then_some(())
    });
    assert!(
        on_a.is_some(),
        "the proxy joined through b is accepted by a:\n{}",
        p.log_tail(20)
    );
    // Restarted, b takes the CA from etcd again.
    b.restart();
    assert!(b.log_text().matches("CA: from etcd at").count() >= 2);
}

#[test]
fn a_control_with_another_key_or_another_ca_refuses_to_start() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let keys = TempDir::new("ca-store-keys");
    let key = new_key(&keys, "ca-store.key");
    let other = new_key(&keys, "other.key");
    let a = sealed_control(&etcd, &key);

    let (code, stderr) = start_failing(
        &a,
        &etcd,
        &["--ca-in-store", "--ca-store-key", utf8(&other)],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the CA in etcd at /coremesh/ca/current was sealed with another key (kid ")
            && stderr.contains("pass the key file used by the other controls"),
        "{stderr}"
    );

    // A key file others may read is refused before anything is done.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let (code, stderr) = start_failing(&a, &etcd, &["--ca-in-store", "--ca-store-key", utf8(&key)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("readable by group or others") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");

    // Its own files' CA differs from etcd's: refused, and etcd keeps its CA.
    let own = Control::start();
    let (cert, ca_key) = (own.data_dir().join("ca.pem"), own.data_dir().join("ca.key"));
    let (code, stderr) = start_failing(
        &a,
        &etcd,
        &[
            "--ca-in-store",
            "--ca-store-key",
            utf8(&key),
            "--ca-cert",
            utf8(&cert),
            "--ca-key",
            utf8(&ca_key),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is not the CA in etcd at /coremesh/ca/current")
            && stderr.contains("Start without --ca-cert/--ca-key"),
        "{stderr}"
    );

    // A control with its CA in files has no rotation through the API.
    let no = own.meshctl(&["ca", "rotate", "begin"]);
    assert_eq!(no.code, 1, "{}{}", no.stdout, no.stderr);
    assert!(
        no.stderr.contains("does not keep its CA in etcd"),
        "{}",
        no.stderr
    );

    // --ca-in-store on the redb store is refused.
    let dir = TempDir::new("redb");
    let (code, _, stderr) = a.command(&[
        "--data-dir",
        utf8(&dir.path().join("data")),
        "--ca-in-store",
        "--ca-store-key",
        utf8(&key),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--ca-in-store needs an etcd store"),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing created");
}

#[test]
fn the_first_control_uploads_the_ca_of_its_files() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let keys = TempDir::new("ca-store-key");
    let key = new_key(&keys, "ca-store.key");
    // An operator CA in files, given to the first control.
    let own = Control::start();
    let (cert, ca_key) = (own.data_dir().join("ca.pem"), own.data_dir().join("ca.key"));
    let a = ControlBuilder::new()
        .arg("--store", &etcd.url())
        .flag("--ca-in-store")
        .arg("--ca-store-key", utf8(&key))
        .arg("--ca-cert", utf8(&cert))
        .arg("--ca-key", utf8(&ca_key))
        .start();
    assert!(
        a.log_text()
            .contains(&format!("CA: stored {} in etcd", cert.display())),
        "{}",
        a.log_tail(20)
    );
    // The second control, without files, issues from that CA.
    let b = sealed_control(&etcd, &key);
    let root =
        |c: &Control| std::fs::read_to_string(c.data_dir().join("api-ca.pem")).expect("api-ca.pem");
    assert_eq!(root(&b), root(&own));
    assert_eq!(root(&a), root(&own));
}

/// `meshctl ca status` (or a `ca rotate` step) through `c`: its `phase:`.
fn phase(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("phase:"))
        .map(|p| p.trim().to_string())
        .unwrap_or_default()
}

/// The trust bundle (PEM roots) of the proxy's last good snapshot.
fn bundle(m: &Member) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(m.snapshot_path()) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["trust_bundle"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until both members' snapshots trust `n` roots.
fn wait_bundles(members: &[&Member], n: usize) -> Vec<String> {
    let got = wait_for(Duration::from_secs(40), || {
        let bundles: Vec<Vec<String>> = members.iter().map(|m| bundle(m)).collect();
        bundles
            .iter()
            .all(|b| b.len() == n)
            .then(|| bundles[0].clone())
    });
    got.unwrap_or_else(|| {
        panic!(
            "proxies' trust bundles: {:?} roots, expected {n}",
            members.iter().map(|m| bundle(m).len()).collect::<Vec<_>>()
        )
    })
}

/// Whether `openssl verify` accepts the leaf of `cert` under `root` (PEM).
fn verifies(cert: &Path, root: &str, dir: &TempDir) -> bool {
    let root_file = dir.write("root.pem", root);
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_file)
        .arg(cert)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn a_root_rotation_through_etcd_issues_the_next_root_once_and_moves_every_control() {
    if skip() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let keys = TempDir::new("ca-store-key");
    let key = new_key(&keys, "ca-store.key");
    let a = sealed_control(&etcd, &key);
    let mut b = sealed_control(&etcd, &key);
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
    let old = wait_bundles(&[&ma, &mb], 1);
    assert_eq!(phase(&a.meshctl(&["ca", "status"]).ok().stdout), "none");

    // begin, through a: one of the two (the leader of ca-rotation) issues
    // the next root, once.
    let out = a.meshctl(&["ca", "rotate", "begin"]).ok().stdout;
    assert!(
        ["requested", "next-issued"].contains(&phase(&out).as_str()),
        "{out}"
    );
    let issued = wait_for(SOON, || {
        let out = b.meshctl(&["ca", "status"]).ok().stdout;
        (phase(&out) == "next-issued").then_some(out)
    })
    .expect("the next root is issued");
    eprintln!("after begin:\n{issued}");
    let issuers = [&a, &b]
        .iter()
        .map(|c| c.log_text().matches("issued the next root").count())
        .sum::<usize>();
    assert_eq!(issuers, 1, "issued once");
    // A second begin is refused: a rotation is under way.
    let again = a.meshctl(&["ca", "rotate", "begin"]);
    assert_ne!(again.code, 0, "{}", again.stdout);

    // Without a restart, every control now trusts both roots, and so do
    // their proxies.
    let both = wait_bundles(&[&ma, &mb], 2);
    assert!(both.contains(&old[0]));

    // switch: the next root issues on both controls; the old one stays
    // trusted.
    let out = b.meshctl(&["ca", "rotate", "switch"]).ok().stdout;
    assert_eq!(phase(&out), "switched", "{out}");
    for c in [&a, &b] {
        let moved = wait_for(SOON, || {
            let out = c.meshctl(&["ca", "status"]).ok().stdout;
            let current = out
                .lines()
                .find_map(|l| l.strip_prefix("current:"))
                .map(|f| f.trim().to_string())?;
            out.contains(&format!("issues from {current} and trusts 2"))
                .then_some(())
        });
        assert!(moved.is_some(), "{}", c.log_tail(20));
    }
    let after = wait_bundles(&[&ma, &mb], 2);
    let new_root = after
        .iter()
        .find(|r| **r != old[0])
        .expect("the new root")
        .clone();
    // A proxy joining now gets a certificate from the new root.
    let mn = a.member("api", "new");
    let _pn = ProxyBuilder::new("api")
        .inbound(app.addr())
        .control(&a.section(&mn))
        .start();
    wait_for(SOON, || mn.cert_path().exists().then_some(())).expect("joined");
    let check = TempDir::new("verify");
    assert!(
        verifies(&mn.cert_path(), &new_root, &check),
        "issued by the new root"
    );
    assert!(
        !verifies(&mn.cert_path(), &old[0], &check),
        "not by the old root"
    );

    // finish: the old root is dropped. (The proxies joined under the old
    // root would renew first in real use; the new one shows the bundle.)
    let out = a.meshctl(&["ca", "rotate", "finish"]).ok().stdout;
    assert_eq!(phase(&out), "none", "{out}");
    let status = b.meshctl(&["ca", "status"]).ok().stdout;
    assert!(status.contains("previous: -"), "{status}");
    let last = wait_bundles(&[&mn], 1);
    assert_eq!(last, vec![new_root]);
    // A restarted control starts on the new root alone.
    b.restart();
    let status = b.meshctl(&["ca", "status"]).ok().stdout;
    assert!(status.contains("trusts 1 root(s)"), "{status}");
}
