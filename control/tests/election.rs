//! Elections on a real etcd (a one-member cluster from /usr/bin/etcd on
//! loopback): two replicas campaign, exactly one leads; when the leader's
//! process ends (its store dropped: no more keep-alives) the other leads
//! within the lease TTL; a transaction fenced by the old leader's fence is
//! refused ([`Fenced::NotLeader`]). Skipped, saying so, without etcd.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coremesh_control::store::election::{Election, Fenced};
use coremesh_control::store::{EtcdArgs, EtcdStore};

const ETCD: &str = "/usr/bin/etcd";

struct Etcd {
    child: Child,
    client: String,
    dir: std::path::PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn etcd() -> Etcd {
    let ports: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let (client, peer) = (
        ports[0].local_addr().expect("addr"),
        ports[1].local_addr().expect("addr"),
    );
    drop(ports);
    let dir = std::env::temp_dir().join(format!("coremesh-election-{}", std::process::id()));
    let child = Command::new(ETCD)
        .args(["--name", "m0", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("m0=http://{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    Etcd {
        child,
        client: client.to_string(),
        dir,
    }
}

fn args(url: &str) -> EtcdArgs {
    EtcdArgs {
        store: url.to_string(),
        etcd_prefix: "/election-test/".into(),
        etcd_ca: None,
        etcd_cert: None,
        etcd_key: None,
        etcd_timeout: Duration::from_secs(5),
        replica_name: None,
    }
}

/// A replica's store with its session (lease TTL `ttl`).
fn replica(etcd: &Etcd, name: &str, ttl: Duration) -> EtcdStore {
    let url = format!("etcd://{}", etcd.client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = EtcdStore::connect(std::slice::from_ref(&etcd.client), &args(&url))
            .and_then(|mut s| s.start_session(name, ttl).map(|()| s));
        match attempt {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("etcd not ready yet: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("etcd never answered: {e}"),
        }
    }
}

fn wait<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn one_of_two_campaigners_leads_the_other_takes_over_and_a_stale_fence_is_refused() {
    if !std::path::Path::new(ETCD).exists() {
        eprintln!("skipped: {ETCD} is missing (scripts/install-deps.sh installs etcd-server)");
        return;
    }
    let etcd = etcd();
    let ttl = Duration::from_secs(2);
    let a = replica(&etcd, "a", ttl);
    let b = replica(&etcd, "b", ttl);
    let ea = Election::start(&a, "withdraw", "a");
    let eb = Election::start(&b, "withdraw", "b");
    let first = wait(Duration::from_secs(10), || {
        match (ea.leading(), eb.leading()) {
            (Some(f), None) => Some(("a", f)),
            (None, Some(f)) => Some(("b", f)),
            _ => None,
        }
    })
    .expect("one of the two leads");
    // And stays the only one.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        ea.leading().is_some() != eb.leading().is_some(),
        "exactly one leads"
    );
    let (leader, follower, e_follower, fence, survivor_name) = if first.0 == "a" {
        (a, b, eb, first.1, "b")
    } else {
        (b, a, ea, first.1, "a")
    };
    let key = format!("/election-test/fenced-{}", std::process::id());
    let put = || vec![etcd_client::TxnOp::put(key.clone(), "x", None)];
    assert_eq!(
        leader
            .txn_fenced(&fence, "a test write", vec![], put())
            .unwrap(),
        Fenced::Done
    );
    // The caller's own compare failing is Raced, not NotLeader.
    let never = etcd_client::Compare::version(key.clone(), etcd_client::CompareOp::Equal, 99);
    assert_eq!(
        leader
            .txn_fenced(&fence, "a test write", vec![never], put())
            .unwrap(),
        Fenced::Raced
    );

    // The leader's process ends: no more keep-alives, its lease ends after
    // the TTL, and the other replica leads.
    let died = Instant::now();
    drop(leader);
    let took = wait(Duration::from_secs(10), || {
        e_follower.leading().map(|_| died.elapsed())
    })
    .expect("the survivor takes over");
    eprintln!("{survivor_name} leads {took:?} after the leader's process ended (TTL {ttl:?})");
    assert!(took <= ttl + Duration::from_secs(3), "{took:?}");
    // The deposed leader's fence no longer holds, whoever presents it.
    assert_eq!(
        follower
            .txn_fenced(&fence, "a deposed leader's write", vec![], put())
            .unwrap(),
        Fenced::NotLeader
    );
}
