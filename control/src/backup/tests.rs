use std::path::PathBuf;

use super::*;
use crate::config::Config;
use crate::store::startup::open_store;
use crate::store::TokenRecord;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn temp(name: &str) -> TempDir {
    let t = TempDir(std::env::temp_dir().join(format!(
        "coremesh-backup-{name}-{}-{}",
        std::process::id(),
        crate::unix_millis(std::time::SystemTime::now())
    )));
    fs::create_dir_all(&t.0).unwrap();
    t
}

/// An initialized data directory (under `t/dir`) with two versions and a
/// token.
fn data_dir(t: &TempDir) -> (PathBuf, StoreDump) {
    let path = t.0.join("dir");
    let mut dir = datadir::open(&path, "coremesh.local", true).unwrap();
    let store = open_store(&mut dir, false, 1).unwrap();
    store.commit(0, &Config::default(), "first", 2).unwrap();
    store.commit(1, &Config::default(), "second", 3).unwrap();
    store
        .put_token(&TokenRecord {
            id: "t1".into(),
            service: "api".into(),
            secret_sha256: "ab".into(),
            created_at: 1,
            expires_at: 99,
            uses_left: 1,
            revoked: false,
        })
        .unwrap();
    let dump = store.dump().unwrap();
    (path, dump)
}

fn no_online(_: &str) -> Result<StoreDump, Error> {
    panic!("the store was not locked: no need to ask control")
}

#[test]
fn a_backup_restores_into_an_empty_directory_with_everything() {
    let t = temp("round");
    let (dir, dump) = data_dir(&t);
    let backup = take(&dir, true, 10, no_online).unwrap();
    assert_eq!(backup.store, dump);
    assert!(backup.ca_key_pem.is_some());
    let file = t.0.join("backup.json");
    write(&backup, &file).unwrap();
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never overwritten.
    assert!(write(&backup, &file).is_err());

    let target = t.0.join("restored");
    let done = restore(&read(&file).unwrap(), &target, false).unwrap();
    assert_eq!((done.version, done.tokens), (2, 1));
    assert!(!done.needs_ca_key);
    let mut restored = datadir::open(&target, "coremesh.local", true).unwrap();
    assert!(restored.initialized);
    assert_eq!(restored.credential, backup.operator_credential);
    let store = open_store(&mut restored, false, 11).unwrap();
    assert_eq!(store.dump().unwrap(), dump);
    for f in [CA_KEY, CA_CERT, CREDENTIAL, STORE_ID, QUIC_RESET_KEY, STORE] {
        assert_eq!(
            fs::metadata(target.join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
}

#[test]
fn the_ca_key_is_left_out_unless_asked_for() {
    let t = temp("nokey");
    let (dir, _) = data_dir(&t);
    let backup = take(&dir, false, 10, no_online).unwrap();
    assert_eq!(backup.ca_key_pem, None);
    let text = serde_json::to_string(&backup).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
    let done = restore(&backup, &t.0.join("restored"), false).unwrap();
    assert!(done.needs_ca_key);
}

#[test]
fn restore_refuses_a_non_empty_directory_without_force() {
    let t = temp("force");
    let (dir, dump) = data_dir(&t);
    let backup = take(&dir, true, 10, no_online).unwrap();
    // Lose the store, then restore over the directory.
    fs::remove_file(dir.join(STORE)).unwrap();
    let err = restore(&backup, &dir, false).unwrap_err();
    assert!(err.message.contains("--force"), "{}", err.message);
    restore(&backup, &dir, true).unwrap();
    let mut d = datadir::open(&dir, "coremesh.local", true).unwrap();
    assert_eq!(open_store(&mut d, false, 12).unwrap().dump().unwrap(), dump);
}

#[test]
fn a_locked_store_is_read_through_control_and_restore_refuses_it() {
    let t = temp("locked");
    let (dir, dump) = data_dir(&t);
    let held = RedbStore::open(&dir.join(STORE)).unwrap();
    let backup = take(&dir, false, 10, |credential| {
        assert!(!credential.is_empty());
        Ok(held.dump().unwrap())
    })
    .unwrap();
    assert_eq!(backup.store, dump);
    let err = restore(&backup, &dir, true).unwrap_err();
    assert!(err.message.contains("stop it first"), "{}", err.message);
}

#[test]
fn damaged_backup_files_are_refused_with_the_reason() {
    let t = temp("bad");
    let (dir, _) = data_dir(&t);
    let mut backup = take(&dir, false, 10, no_online).unwrap();
    let file = t.0.join("b1.json");
    fs::write(&file, b"{\"format\": 1}").unwrap();
    assert!(read(&file)
        .unwrap_err()
        .message
        .contains("not a coremesh-control backup"));
    backup.store.versions.remove(0);
    let file = t.0.join("b2.json");
    write(&backup, &file).unwrap();
    let msg = read(&file).unwrap_err().message;
    assert!(msg.contains("not whole"), "{msg}");
}
