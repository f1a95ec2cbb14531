use super::*;

fn running(store_id: &str, config_version: u64) -> Applied {
    Applied {
        version: 1_700_000_000_000,
        config_version,
        store_id: store_id.into(),
        config_digest: "d4".into(),
    }
}

fn snap(store_id: &str, config_version: u64) -> Snapshot {
    Snapshot {
        version: 1_700_000_000_500,
        config_version,
        store_id: store_id.into(),
        config_digest: format!("d{config_version}"),
        ..Snapshot::default()
    }
}

#[test]
fn a_first_snapshot_is_taken_whatever_it_says() {
    assert_eq!(check_lineage(None, &snap("a1", 0), false), Ok(()));
    assert_eq!(check_lineage(None, &snap("", 3), false), Ok(()));
}

#[test]
fn the_same_store_may_only_move_forward_or_stay() {
    let r = running("a1", 4);
    assert_eq!(check_lineage(Some(&r), &snap("a1", 4), false), Ok(()));
    assert_eq!(check_lineage(Some(&r), &snap("a1", 5), false), Ok(()));
    for older in [0, 1, 3] {
        let why = check_lineage(Some(&r), &snap("a1", older), false)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains(&format!(
                "config version {older} is older than the running config version 4 of store a1"
            )),
            "{why}"
        );
    }
    // allow_store_change is about other stores, never about going back.
    assert!(check_lineage(Some(&r), &snap("a1", 1), true).is_err());
}

#[test]
fn another_store_is_refused_unless_allowed() {
    let r = running("a1", 4);
    let why = check_lineage(Some(&r), &snap("b2", 9), false)
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("snapshot from control store b2")
            && why.contains("config version 4 of store a1")
            && why.contains("allow_store_change"),
        "{why}"
    );
    // A control that lost its identity (or an older one) is another store.
    assert!(check_lineage(Some(&r), &snap("", 9), false).is_err());
    assert_eq!(check_lineage(Some(&r), &snap("b2", 1), true), Ok(()));
}

#[test]
fn a_policy_from_before_store_identities_continues_in_the_store_that_got_one() {
    let r = running("", 4);
    assert_eq!(check_lineage(Some(&r), &snap("a1", 4), false), Ok(()));
    assert!(check_lineage(Some(&r), &snap("a1", 2), false).is_err());
    assert!(check_lineage(Some(&r), &snap("", 2), false).is_err());
}

#[test]
fn an_equal_version_with_another_digest_is_another_config() {
    let r = running("a1", 4);
    let mut s = snap("a1", 4);
    assert_eq!(check_lineage(Some(&r), &s, false), Ok(()));
    s.config_digest = "other".into();
    let why = check_lineage(Some(&r), &s, false).unwrap_err().to_string();
    assert!(
        why.contains("is not the config version 4 this proxy runs"),
        "{why}"
    );
    // From a control without digests: not compared.
    s.config_digest.clear();
    assert_eq!(check_lineage(Some(&r), &s, false), Ok(()));
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_held_lineage_refuses_what_the_unapplied_snapshot_would_have() {
    // A restart whose persisted snapshot (config version 4 of a1) could not
    // be applied: nothing runs, yet an older version of a1 stays refused.
    let applier = Applier::new(Vec::new(), None, None);
    applier.hold_lineage(&snap("a1", 4));
    assert!(applier.applied().is_none());
    let why = block_on(applier.apply(&snap("a1", 1), false))
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("config version 1 is older than the running config version 4"),
        "{why}"
    );
    assert!(block_on(applier.apply(&snap("b2", 9), false)).is_err());
    // The next version is taken, and becomes the floor.
    block_on(applier.apply(&snap("a1", 5), false)).unwrap();
    assert_eq!(applier.applied().map(|a| a.config_version), Some(5));
    applier.hold_lineage(&snap("a1", 2));
    assert!(block_on(applier.apply(&snap("a1", 4), false)).is_err());
}
