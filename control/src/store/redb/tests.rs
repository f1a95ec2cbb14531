use super::*;
use crate::store::TokenRefusal;
use coremesh_api::resource::{Protocol, Service};

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-store-{name}-{}-{}",
        std::process::id(),
        crate::unix_millis(std::time::SystemTime::now())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("store.redb")
}

fn config(names: &[&str]) -> Config {
    Config {
        services: names
            .iter()
            .map(|n| Service {
                name: n.to_string(),
                protocol: Protocol::Http,
                port: None,
                addresses: Vec::new(),
            })
            .collect(),
        routes: vec![],
        ..Config::default()
    }
}

#[test]
fn versions_history_and_durability_across_reopen() {
    let path = temp_path("versions");
    {
        let s = RedbStore::create(&path, "s1").unwrap();
        assert_eq!(s.current().unwrap(), (0, Config::default()));
        assert_eq!(
            s.commit(0, &config(&["a"]), "apply service/a", 10).unwrap(),
            1
        );
        assert_eq!(
            s.commit(1, &config(&["a", "b"]), "apply service/b", 11)
                .unwrap(),
            2
        );
        // A stale writer loses.
        let stale = s.commit(1, &config(&["c"]), "x", 12);
        assert!(
            matches!(
                stale,
                Err(StoreError::Conflict {
                    expected: 1,
                    found: 2
                })
            ),
            "{stale:?}"
        );
        // Rollback = N's config written as a new version.
        let one = s.config_at(1).unwrap().unwrap();
        assert_eq!(s.commit(2, &one, "rollback to 1", 13).unwrap(), 3);
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.current().unwrap(), (3, config(&["a"])));
    let h = s.history().unwrap();
    assert_eq!(h.iter().map(|r| r.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(h[2].summary, "rollback to 1");
    assert_eq!(h[1].config, config(&["a", "b"]));
    assert_eq!(s.config_at(9).unwrap(), None);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn tokens_are_used_up_expire_and_revoke_durably() {
    let path = temp_path("tokens");
    let tok = |id: &str, uses| TokenRecord {
        id: id.into(),
        service: "api".into(),
        secret_sha256: "h".into(),
        created_at: 0,
        expires_at: 100,
        uses_left: uses,
        revoked: false,
    };
    {
        let s = RedbStore::create(&path, "s1").unwrap();
        s.put_token(&tok("one", 1)).unwrap();
        s.put_token(&tok("two", 2)).unwrap();
        s.put_token(&tok("rev", 5)).unwrap();
        assert!(
            matches!(s.consume_token("one", "h", 50).unwrap(), Consumed::Ok(t) if t.uses_left == 0)
        );
        assert_eq!(
            s.consume_token("one", "h", 50).unwrap(),
            Consumed::Refused(TokenRefusal::UsedUp)
        );
        assert_eq!(
            s.consume_token("two", "wrong", 50).unwrap(),
            Consumed::Refused(TokenRefusal::Unknown)
        );
        assert_eq!(
            s.consume_token("nope", "h", 50).unwrap(),
            Consumed::Refused(TokenRefusal::Unknown)
        );
        assert_eq!(
            s.consume_token("two", "h", 100).unwrap(),
            Consumed::Refused(TokenRefusal::Expired)
        );
        assert!(s.revoke_token("rev").unwrap());
        assert!(!s.revoke_token("nope").unwrap());
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(
        s.consume_token("one", "h", 50).unwrap(),
        Consumed::Refused(TokenRefusal::UsedUp)
    );
    assert_eq!(
        s.consume_token("rev", "h", 50).unwrap(),
        Consumed::Refused(TokenRefusal::Revoked)
    );
    assert!(
        matches!(s.consume_token("two", "h", 50).unwrap(), Consumed::Ok(t) if t.uses_left == 1)
    );
    assert_eq!(s.tokens().unwrap().len(), 3);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn in_use_sees_an_open_store_and_only_while_it_is_open() {
    let path = temp_path("in-use");
    assert!(!in_use(&path), "no file: nobody uses it");
    let s = RedbStore::create(&path, "s1").unwrap();
    assert!(in_use(&path), "redb holds its lock while the store is open");
    // Asking did not take the lock away (the probe's descriptor is closed).
    assert!(in_use(&path));
    drop(s);
    assert!(!in_use(&path), "closed: the lock went with it");
    let s = RedbStore::open(&path).unwrap();
    assert!(in_use(&path));
    drop(s);
}
