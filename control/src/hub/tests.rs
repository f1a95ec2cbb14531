//! Views as the hub hands them out: who gets which Resilience, and which
//! sessions share a view (and so are not sent a change that is not theirs).

use std::path::PathBuf;

use coremesh_api::resource::parse_documents;

use super::*;
use crate::store::RedbStore;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hub(name: &str) -> (Arc<Hub>, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-hub-{name}-{}-{}",
        std::process::id(),
        unix_millis(SystemTime::now())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = crate::ca::create_ca("coremesh.local", SystemTime::now()).unwrap();
    let ca = Ca::load(&cert, &key, "coremesh.local").unwrap();
    let store = Arc::new(RedbStore::create(&dir.join("store.redb"), "0123456789abcdef").unwrap());
    let opts = Options {
        grace: Duration::ZERO,
        ..Options::default()
    };
    (
        Hub::new(store, ca, opts, Instant::now()).unwrap(),
        TempDir(dir),
    )
}

fn apply(hub: &Hub, yaml: &str) {
    hub.apply_blocking(parse_documents(yaml).unwrap(), None)
        .unwrap();
}

const MESH: &str = "
kind: Service
name: api
---
kind: Service
name: api-shadow
---
kind: Service
name: db
---
kind: Service
name: web
---
kind: Resilience
service: api
mirror: { service: api-shadow, percent: 10 }
---
kind: Resilience
service: db
rateLimit: { requestsPerSecond: 100 }
";

struct Session {
    id: ProxyId,
    first: Snapshot,
    rx: SnapshotRx,
}

fn open(hub: &Hub, service: &str, calls: &[&str]) -> Session {
    let calls = Some(calls.iter().map(|c| c.to_string()).collect());
    let (id, first, rx) = hub.open_session(service, "n", calls, None, 0);
    Session {
        id,
        first: first.expect("not held").snapshot.clone(),
        rx,
    }
}

fn last_view(hub: &Hub, s: &Session) -> Arc<View> {
    lock(&hub.state).sessions[&s.id].last.clone().unwrap()
}

fn publish_now(hub: &Hub) {
    let out = publish(&mut lock(&hub.state), &hub.trust_bundle(), &hub.store_id);
    deliver(out);
}

/// The snapshot the session was sent since it last looked, if any.
fn sent(s: &mut Session) -> Option<Snapshot> {
    if !s.rx.has_changed().unwrap() {
        return None;
    }
    s.rx.borrow_and_update()
        .as_ref()
        .map(|p| p.snapshot.clone())
}

fn services(s: &Snapshot) -> Vec<&str> {
    s.services.iter().map(|s| s.name.as_str()).collect()
}

fn resilience(s: &Snapshot) -> Vec<&str> {
    s.resilience.iter().map(|r| r.service.as_str()).collect()
}

#[test]
fn resilience_reaches_callers_and_its_own_service_only() {
    let (hub, _dir) = hub("resilience");
    apply(&hub, MESH);

    // web and a service with nothing of its own, both calling api, share
    // one view: api's Resilience and its mirror's service.
    let mut web = open(&hub, "web", &["api"]);
    let mut cache = open(&hub, "cache", &["api"]);
    assert_eq!(services(&web.first), ["api", "api-shadow"]);
    assert_eq!(resilience(&web.first), ["api"]);
    assert_eq!(
        web.first.resilience[0].mirror.as_ref().unwrap().percent,
        10.0
    );
    assert!(Arc::ptr_eq(
        &last_view(&hub, &web),
        &last_view(&hub, &cache)
    ));

    // db calls api too, but db has a Resilience: its own view, with it.
    let mut db = open(&hub, "db", &["api"]);
    assert_eq!(services(&db.first), ["api", "api-shadow"]);
    assert_eq!(resilience(&db.first), ["api", "db"]);
    assert!(!Arc::ptr_eq(&last_view(&hub, &web), &last_view(&hub, &db)));

    // A change to db's Resilience goes to db's proxies alone.
    apply(
        &hub,
        &MESH.replace("requestsPerSecond: 100", "requestsPerSecond: 50"),
    );
    publish_now(&hub);
    let s = sent(&mut db).expect("db gets its new rate limit");
    assert_eq!(
        s.resilience[1]
            .rate_limit
            .as_ref()
            .unwrap()
            .requests_per_second,
        50
    );
    assert!(sent(&mut web).is_none() && sent(&mut cache).is_none());
    assert!(Arc::ptr_eq(
        &last_view(&hub, &web),
        &last_view(&hub, &cache)
    ));

    // A change to api's reaches every caller of api.
    apply(&hub, &MESH.replace("percent: 10", "percent: 20"));
    publish_now(&hub);
    for s in [&mut web, &mut cache, &mut db] {
        let snap = sent(s).expect("callers of api get the change");
        assert_eq!(snap.resilience[0].mirror.as_ref().unwrap().percent, 20.0);
    }

    // Deleting db's Resilience: db shares web's view again.
    hub.delete_blocking("resilience", "db", None).unwrap();
    publish_now(&hub);
    let s = sent(&mut db).unwrap();
    assert_eq!(resilience(&s), ["api"]);
    assert!(sent(&mut web).is_none());
    assert!(Arc::ptr_eq(&last_view(&hub, &web), &last_view(&hub, &db)));
}

#[test]
fn mirror_endpoints_follow_the_registry() {
    let (hub, _dir) = hub("mirror");
    apply(&hub, MESH);
    let mut web = open(&hub, "web", &["api"]);
    assert!(web.first.services.iter().all(|s| s.endpoints.is_empty()));

    // An api-shadow instance registers: web, which never calls api-shadow
    // itself, learns its endpoint.
    let shadow = open(&hub, "api-shadow", &[]);
    let addr: SocketAddr = "127.0.0.1:4143".parse().unwrap();
    hub.register(shadow.id, addr, BTreeMap::new());
    publish_now(&hub);
    let s = sent(&mut web).expect("the mirror's endpoint");
    let mirror = s.services.iter().find(|s| s.name == "api-shadow").unwrap();
    assert_eq!(mirror.endpoints[0].address, addr);

    // Without the mirror, api-shadow leaves web's view.
    apply(
        &hub,
        "kind: Resilience\nservice: api\ncircuitBreaker: { maxRequests: 10 }\n",
    );
    publish_now(&hub);
    let s = sent(&mut web).unwrap();
    assert_eq!(services(&s), ["api"]);
}

/// Two publishes may deliver in either order once the lock is released:
/// the older snapshot must not replace the newer one.
#[test]
fn a_late_delivery_never_replaces_a_newer_snapshot() {
    let published = |version| {
        Arc::new(Published::new(Snapshot {
            version,
            ..Snapshot::default()
        }))
    };
    let (tx, mut rx) = watch::channel(None);
    deliver(vec![(tx.clone(), published(7))]);
    deliver(vec![(tx.clone(), published(5))]);
    assert!(rx.has_changed().unwrap());
    let got = rx.borrow_and_update().as_ref().map(|p| p.snapshot.version);
    assert_eq!(got, Some(7));
    deliver(vec![(tx.clone(), published(7))]);
    assert!(
        !rx.has_changed().unwrap(),
        "the same version is not sent twice"
    );
    deliver(vec![(tx, published(8))]);
    let got = rx.borrow_and_update().as_ref().map(|p| p.snapshot.version);
    assert_eq!(got, Some(8));
}

/// Two hubs on one store, as two controls on one etcd.
fn two_hubs(name: &str) -> (Arc<Hub>, Arc<Hub>, TempDir) {
    let (a, dir) = hub(name);
    let (cert, key) = crate::ca::create_ca("coremesh.local", SystemTime::now()).unwrap();
    let ca = Ca::load(&cert, &key, "coremesh.local").unwrap();
    let opts = Options {
        grace: Duration::ZERO,
        ..Options::default()
    };
    let b = Hub::new(a.store.clone(), ca, opts, Instant::now()).unwrap();
    (a, b, dir)
}

fn docs(yaml: &str) -> Vec<Resource> {
    parse_documents(yaml).unwrap()
}

#[test]
fn a_change_based_on_an_older_version_is_refused_and_says_what_to_do() {
    let (hub, _dir) = hub("if-version");
    let r = hub.apply_blocking(docs("kind: Service\nname: api\n"), Some(0));
    assert_eq!(r.unwrap().version, 1);
    let e = hub
        .apply_blocking(docs("kind: Service\nname: db\n"), Some(0))
        .unwrap_err();
    assert_eq!(e.kind, crate::ErrorKind::Conflict);
    assert_eq!(
        e.message,
        "changed by someone else at version 1; re-read and apply again"
    );
    let e = hub.delete_blocking("service", "api", Some(5)).unwrap_err();
    assert_eq!(e.kind, crate::ErrorKind::Rejected);
    assert!(e.message.contains("there is no version 5 yet"), "{e}");
    assert_eq!(hub.config().0, 1, "nothing applied");
    let r = hub.apply_blocking(docs("kind: Service\nname: db\n"), Some(1));
    assert_eq!(r.unwrap().version, 2);
}

#[test]
fn a_hub_plans_on_what_another_committed_and_adopts_it_when_told() {
    let (a, b, _dir) = two_hubs("shared");
    a.apply_blocking(docs("kind: Service\nname: api\n"), None)
        .unwrap();
    // b still holds version 0; its next change is planned on version 1.
    assert_eq!(b.config().0, 0);
    let r = b
        .apply_blocking(docs("kind: Service\nname: db\n"), None)
        .unwrap();
    assert_eq!(r.version, 2);
    let config = b.config().1;
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "db"], "a's change is kept");
    // a learns of b's version when its store says something changed.
    assert_eq!(a.config().0, 1);
    assert_eq!(a.refresh_blocking().unwrap(), 2);
    assert_eq!(a.config().1.services.len(), 2);
    // Based on what it last read, a's operator is told to re-read.
    let e = b
        .apply_blocking(docs("kind: Service\nname: web\n"), Some(1))
        .unwrap_err();
    assert_eq!(e.kind, crate::ErrorKind::Conflict);
}
