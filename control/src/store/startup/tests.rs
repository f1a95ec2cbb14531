use std::path::{Path, PathBuf};

use super::*;
use crate::datadir;
use crate::store::{Damage, Store};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(name: &str) -> TempDir {
    TempDir(std::env::temp_dir().join(format!(
        "coremesh-startup-{name}-{}-{}",
        std::process::id(),
        crate::unix_millis(std::time::SystemTime::now())
    )))
}

fn open_dir(path: &Path) -> DataDir {
    datadir::open(path, "coremesh.local", true).unwrap()
}

/// A data directory after its first start, with one committed version.
fn initialized(name: &str) -> (TempDir, String) {
    let t = temp(name);
    let mut dir = open_dir(&t.0);
    assert!(!dir.initialized);
    let store = open_store(&mut dir, false, 1).unwrap();
    store
        .commit(0, &Config::default(), "apply service/api", 2)
        .unwrap();
    let id = store.id().to_string();
    assert_eq!(dir.store_id.as_deref(), Some(id.as_str()));
    (t, id)
}

fn refused(path: &Path, reinitialize: bool) -> String {
    let mut dir = open_dir(path);
    assert!(dir.initialized);
    match open_store(&mut dir, reinitialize, 3) {
        Ok(_) => panic!("the store should have been refused"),
        Err(e) => e.message,
    }
}

#[test]
fn a_new_directory_gets_a_store_and_an_identity_that_later_starts_keep() {
    let (t, id) = initialized("new");
    assert_eq!(id.len(), 32);
    let recorded = std::fs::read_to_string(t.0.join(STORE_ID)).unwrap();
    assert_eq!(recorded.trim(), id);
    let mut dir = open_dir(&t.0);
    let store = open_store(&mut dir, false, 3).unwrap();
    assert_eq!(store.id(), id);
    assert_eq!(store.current().unwrap().0, 1);
}

#[test]
fn a_missing_or_empty_store_in_an_initialized_directory_is_refused() {
    let (t, id) = initialized("missing");
    let store = t.0.join(datadir::STORE);
    std::fs::remove_file(&store).unwrap();
    let msg = refused(&t.0, false);
    assert!(msg.contains(&store.display().to_string()), "{msg}");
    assert!(msg.contains("is missing"), "{msg}");
    assert!(msg.contains(&id), "{msg}");
    assert!(msg.contains("coremesh-control restore"), "{msg}");
    assert!(!store.exists(), "a refused start must not create the store");

    std::fs::write(&store, b"").unwrap();
    let msg = refused(&t.0, false);
    assert!(msg.contains("is empty (0 bytes)"), "{msg}");
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 0);
}

#[test]
fn a_truncated_or_overwritten_store_is_refused_without_a_panic() {
    let (t, _) = initialized("damaged");
    let store = t.0.join(datadir::STORE);
    let whole = std::fs::read(&store).unwrap();
    std::fs::write(&store, &whole[..whole.len() / 2]).unwrap();
    let msg = refused(&t.0, false);
    assert!(msg.contains(&store.display().to_string()), "{msg}");
    assert!(msg.contains("damaged"), "{msg}");

    let mut garbage = whole.clone();
    for b in garbage.iter_mut().skip(512).step_by(7) {
        *b ^= 0x5a;
    }
    std::fs::write(&store, &garbage).unwrap();
    let msg = refused(&t.0, false);
    assert!(msg.contains(&store.display().to_string()), "{msg}");
    assert!(msg.contains("restore"), "{msg}");

    std::fs::write(&store, b"not a database at all, just some text\n").unwrap();
    let msg = refused(&t.0, false);
    assert!(msg.contains("damaged"), "{msg}");
}

#[test]
fn another_directorys_store_is_refused() {
    let (a, _) = initialized("mine");
    let (b, other) = initialized("theirs");
    std::fs::copy(b.0.join(datadir::STORE), a.0.join(datadir::STORE)).unwrap();
    let msg = refused(&a.0, false);
    assert!(msg.contains(&format!("is store {other}")), "{msg}");
}

#[test]
fn reinitialize_keeps_the_identity_records_why_and_keeps_the_old_file() {
    let (t, id) = initialized("reinit");
    let store_path = t.0.join(datadir::STORE);
    std::fs::write(&store_path, b"").unwrap();
    let mut dir = open_dir(&t.0);
    let store = open_store(&mut dir, true, 77).unwrap();
    assert_eq!(store.id(), id);
    let history = store.history().unwrap();
    assert_eq!(history.len(), 1);
    assert!(
        history[0].summary.contains("--reinitialize-store")
            && history[0].summary.contains("is empty"),
        "{}",
        history[0].summary
    );
    assert_eq!(store.current().unwrap(), (1, Config::default()));
    assert!(t.0.join("store.redb.replaced-77").exists());
    drop(store);
    // Later starts open it normally; the flag on an intact store changes
    // nothing.
    let mut dir = open_dir(&t.0);
    let store = open_store(&mut dir, true, 78).unwrap();
    assert_eq!(store.current().unwrap().0, 1);
}

#[test]
fn a_store_from_before_identities_is_adopted() {
    let t = temp("legacy");
    let mut dir = open_dir(&t.0);
    {
        // What an older control wrote: the tables, no identity.
        let db = redb::Database::create(dir.store_path()).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap();
        tx.open_table(redb::TableDefinition::<u64, &[u8]>::new("versions"))
            .unwrap();
        tx.open_table(redb::TableDefinition::<&str, &[u8]>::new("tokens"))
            .unwrap();
        tx.commit().unwrap();
    }
    dir.initialized = true;
    let store = open_store(&mut dir, false, 5).unwrap();
    assert_eq!(store.id().len(), 32);
    assert_eq!(dir.store_id.as_deref(), Some(store.id()));
    let id = store.id().to_string();
    drop(store);
    let mut dir = open_dir(&t.0);
    assert_eq!(open_store(&mut dir, false, 6).unwrap().id(), id);
}

#[test]
fn a_lost_store_id_file_is_written_again_from_the_store() {
    let (t, id) = initialized("lost-id");
    std::fs::remove_file(t.0.join(STORE_ID)).unwrap();
    let mut dir = open_dir(&t.0);
    assert_eq!(open_store(&mut dir, false, 3).unwrap().id(), id);
    assert_eq!(
        std::fs::read_to_string(t.0.join(STORE_ID)).unwrap().trim(),
        id
    );
}

#[test]
fn a_refusal_keeps_its_cause() {
    use std::error::Error as _;

    let (a, _) = initialized("cause-mine");
    let (b, other) = initialized("cause-theirs");
    std::fs::copy(b.0.join(datadir::STORE), a.0.join(datadir::STORE)).unwrap();
    let mut dir = open_dir(&a.0);
    let e = open_store(&mut dir, false, 3).err().expect("refused");
    let problem = e.source().expect("the problem");
    match problem.downcast_ref::<StoreProblem>() {
        Some(StoreProblem::NotOurs(IdentityMismatch::Another { found, .. })) => {
            assert_eq!(found, &other)
        }
        p => panic!("{p:?}"),
    }
    assert!(e.message.contains(&problem.to_string()), "{e}");

    let store = a.0.join(datadir::STORE);
    std::fs::write(&store, b"not a database at all, just some text\n").unwrap();
    let mut dir = open_dir(&a.0);
    let e = open_store(&mut dir, false, 3).err().expect("refused");
    let problem = e.source().expect("the problem");
    assert!(
        matches!(
            problem.downcast_ref::<StoreProblem>(),
            Some(StoreProblem::Unusable(StoreError::Damaged(_)))
        ),
        "{problem:?}"
    );
    // Below the problem, the store's own error, and below that redb's.
    let store_error = problem.source().expect("the store error");
    assert!(store_error.is::<StoreError>(), "{store_error:?}");
    let damage = store_error.source().expect("the damage");
    assert!(
        matches!(damage.downcast_ref::<Damage>(), Some(Damage::Open(_))),
        "{damage:?}"
    );
    let redb = damage.source().expect("redb's error");
    assert!(redb.is::<::redb::DatabaseError>(), "{redb:?}");
}

#[test]
fn a_store_error_turned_into_an_error_keeps_it() {
    use std::error::Error as _;

    let e = crate::Error::from(StoreError::Conflict {
        expected: 1,
        found: 2,
    });
    assert_eq!(
        e.message,
        "changed by someone else at version 2; re-read and apply again"
    );
    assert_eq!(e.kind, crate::ErrorKind::Conflict);
    assert!(matches!(
        e.source().and_then(|s| s.downcast_ref::<StoreError>()),
        Some(StoreError::Conflict {
            expected: 1,
            found: 2
        })
    ));
}
