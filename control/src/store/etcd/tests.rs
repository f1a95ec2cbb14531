use super::*;
use crate::store::{IssuedCert, NodeRecord, TokenRecord, VersionRecord};

#[test]
fn urls_list_the_endpoints_with_the_default_port() {
    assert_eq!(
        parse_url("etcd://h1:2379,h2:2380,h3").unwrap(),
        vec!["h1:2379", "h2:2380", "h3:2379"]
    );
    assert_eq!(
        parse_url("etcd://127.0.0.1:12379/").unwrap(),
        vec!["127.0.0.1:12379"]
    );
    assert_eq!(
        parse_url("etcd://[::1]:2379,[::1]").unwrap(),
        vec!["[::1]:2379", "[::1]:2379"]
    );
}

#[test]
fn bad_urls_say_what_is_wrong() {
    for (url, says) in [
        ("http://h1:2379", "expected `redb` or etcd://"),
        ("etcd://", "an empty host"),
        ("etcd://h1,,h2", "an empty host"),
        ("etcd://h1:0", "the port is not 1 to 65535"),
        ("etcd://h1:99999", "the port is not 1 to 65535"),
        ("etcd://user@h1", "not HOST or HOST:PORT"),
        ("etcd://h1/path", "not HOST or HOST:PORT"),
    ] {
        let e = parse_url(url).unwrap_err().to_string();
        assert!(e.starts_with(&format!("--store {url}: ")), "{e}");
        assert!(e.contains(says), "{url}: {e}");
    }
}

#[test]
fn redb_is_no_etcd() {
    let args = EtcdArgs {
        store: "redb".into(),
        etcd_prefix: "/coremesh/".into(),
        etcd_ca: None,
        etcd_cert: None,
        etcd_key: None,
        etcd_timeout: Duration::from_secs(5),
        replica_name: None,
    };
    assert_eq!(args.etcd_endpoints().unwrap(), None);
}

#[test]
fn keys_sit_under_the_prefix() {
    let k = Keys::new("/coremesh/").unwrap();
    assert_eq!(k.store_id(), "/coremesh/store-id");
    assert_eq!(k.current(), "/coremesh/current");
    assert_eq!(k.version(7), "/coremesh/versions/00000000000000000007");
    assert_eq!(k.token("ab12"), "/coremesh/tokens/ab12");
    assert_eq!(k.node("web-1"), "/coremesh/nodes/web-1");
    assert_eq!(k.ca_fingerprint(), "/coremesh/ca-fingerprint");
    assert_eq!(k.parse(k.ca_fingerprint().as_bytes()), Some(Key::Other));
    // A prefix without its slash gets one: no key of /a runs into /ab.
    assert_eq!(Keys::new("/mesh-a").unwrap().current(), "/mesh-a/current");
    assert!(Keys::new("").is_err());
    assert!(Keys::new("/").is_err());
}

#[test]
fn version_keys_sort_as_versions_do() {
    let k = Keys::new("/p/").unwrap();
    let mut keys: Vec<String> = [10, 9, 100, 1, u64::MAX].map(|v| k.version(v)).to_vec();
    keys.sort();
    let back: Vec<Option<Key>> = keys.iter().map(|key| k.parse(key.as_bytes())).collect();
    assert_eq!(
        back,
        [1, 9, 10, 100, u64::MAX]
            .map(|v| Some(Key::Version(v)))
            .to_vec()
    );
}

#[test]
fn keys_parse_back() {
    let k = Keys::new("/coremesh/").unwrap();
    assert_eq!(k.parse(k.store_id().as_bytes()), Some(Key::StoreId));
    assert_eq!(k.parse(k.current().as_bytes()), Some(Key::Current));
    assert_eq!(
        k.parse(k.token("ab").as_bytes()),
        Some(Key::Token("ab".into()))
    );
    assert_eq!(
        k.parse(k.node("db 1").as_bytes()),
        Some(Key::Node("db 1".into()))
    );
    assert_eq!(
        k.parse(k.election("withdraw").as_bytes()),
        Some(Key::Election("withdraw".into()))
    );
    // Another mesh's keys, and keys a later control may add.
    assert_eq!(k.parse(b"/other/current"), None);
    assert_eq!(k.parse(b"/coremesh/versions/7"), Some(Key::Other));
    assert_eq!(k.parse(b"/coremesh/leader"), Some(Key::Other));
}

#[test]
fn current_is_a_decimal_number() {
    assert_eq!(parse_current("/p/current", b"42").unwrap(), 42);
    let e = parse_current("/p/current", b"forty-two").unwrap_err();
    assert_eq!(
        e.to_string(),
        "store data is corrupt: etcd key /p/current: holds \"forty-two\", not a version number"
    );
}

fn version(v: u64) -> VersionRecord {
    VersionRecord {
        version: v,
        at: 1000 + v,
        summary: format!("apply {v}"),
        config: Config::default(),
        digest: crate::config::digest(&Config::default()),
    }
}

#[test]
fn a_dump_reads_every_record_and_skips_what_is_not_ours() {
    let k = Keys::new("/coremesh/").unwrap();
    let token = TokenRecord {
        id: "t1".into(),
        service: "web".into(),
        secret_sha256: "00".into(),
        created_at: 1,
        expires_at: 2,
        uses_left: 1,
        revoked: false,
    };
    let mut node = NodeRecord::new("h1");
    node.issued.push(IssuedCert {
        serial: "01".into(),
        service: "web".into(),
        not_after: 9,
    });
    let json = |v: &dyn erased::Json| v.json();
    let kvs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (k.current().into_bytes(), b"2".to_vec()),
        (k.store_id().into_bytes(), b"abcd".to_vec()),
        (k.version(2).into_bytes(), json(&version(2))),
        (k.version(1).into_bytes(), json(&version(1))),
        (k.token("t1").into_bytes(), json(&token)),
        (k.node("h1").into_bytes(), json(&node)),
        (b"/coremesh/leader".to_vec(), b"whatever".to_vec()),
    ];
    let dump = dump_from(
        &k,
        "abcd",
        kvs.iter().map(|(a, b)| (a.as_slice(), b.as_slice())),
    )
    .unwrap();
    assert_eq!(dump.store_id, "abcd");
    assert_eq!(dump.current, 2);
    assert_eq!(dump.versions, vec![version(1), version(2)]);
    assert_eq!(dump.tokens, vec![token]);
    assert_eq!(dump.nodes, vec![node]);
    dump.check().unwrap();
}

#[test]
fn a_damaged_record_is_named() {
    let k = Keys::new("/coremesh/").unwrap();
    let kvs = [(k.token("t1").into_bytes(), b"{not json".to_vec())];
    let e = dump_from(
        &k,
        "",
        kvs.iter().map(|(a, b)| (a.as_slice(), b.as_slice())),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("store data is corrupt: token: "), "{e}");
}

/// JSON of any record, for the tables above.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap()
        }
    }
}

#[test]
fn errors_say_where_and_what_to_check() {
    let e = EtcdError::Request {
        endpoints: "h1:2379,h2:2379".into(),
        what: "committing a version",
        source: etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader")),
    };
    let text = e.to_string();
    assert!(
        text.starts_with("etcd at h1:2379,h2:2379: committing a version failed: "),
        "{text}"
    );
    assert!(
        text.contains("is a majority of the etcd members up?")
            && text.contains("nothing was applied"),
        "{text}"
    );
}

#[test]
fn only_requests_that_never_reached_the_log_are_sent_twice_unless_safe() {
    let status = |m: &str| etcd_client::Error::GRpcStatus(tonic::Status::unavailable(m));
    // Refused before proposing: any request may go to another member.
    for retry in [Retry::Unsent, Retry::Any] {
        assert!(retryable(&status("etcdserver: no leader"), retry));
        assert!(retryable(&status("tcp connect error"), retry));
    }
    // Outcome unknown: only what is safe to repeat.
    for m in [
        "etcdserver: leader changed",
        "etcdserver: request timed out",
    ] {
        assert!(!retryable(&status(m), Retry::Unsent), "{m}");
        assert!(retryable(&status(m), Retry::Any), "{m}");
    }
    // etcd said no: never.
    let denied = etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no"));
    assert!(!retryable(&denied, Retry::Any));
}

#[test]
fn a_request_that_timed_out_may_have_landed_and_the_error_says_so() {
    let e = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("Timeout expired"));
    assert!(!retryable(&e, Retry::Unsent));
    assert!(retryable(&e, Retry::Any));
    let text = EtcdError::Request {
        endpoints: "h1:2379".into(),
        what: "committing a version",
        source: e,
    }
    .to_string();
    assert!(
        text.contains("is a majority of the etcd members up?")
            && text.contains("check `meshctl history`"),
        "{text}"
    );
}

#[test]
fn the_default_replica_name_is_host_and_api_port() {
    assert_eq!(default_replica("h1", 7080, 99), "h1:7080");
    // Port 0 is chosen at bind: the pid keeps two such replicas apart.
    assert_eq!(default_replica("h1", 0, 99), "h1:pid99");
}
