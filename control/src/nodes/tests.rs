use super::*;
use crate::store::IssuedCert;

fn cert(serial: &str, not_after: u64) -> IssuedCert {
    IssuedCert {
        serial: serial.into(),
        service: "api".into(),
        not_after,
    }
}

fn evicted(node: &str, revoked: Vec<IssuedCert>) -> NodeRecord {
    NodeRecord {
        node: node.into(),
        evicted_at: Some(10),
        issued: vec![],
        revoked,
    }
}

#[test]
fn revoked_certificates_of_evicted_nodes_are_listed_until_they_expire() {
    let member = NodeRecord {
        issued: vec![cert("aa", 500)],
        ..NodeRecord::new("web")
    };
    let mut nodes = Nodes::new(
        vec![
            member,
            evicted("evil", vec![cert("bb", 200), cert("cc", 100)]),
        ],
        50,
    );
    assert_eq!(nodes.evicted_at("evil"), Some(10));
    assert_eq!(nodes.evicted_at("web"), None);
    assert!(nodes.is_revoked("bb") && nodes.is_revoked("cc"));
    assert!(!nodes.is_revoked("aa"));
    let serials: Vec<&str> = nodes.revoked().iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials, ["bb", "cc"]);
    assert_eq!(nodes.revoked()[0].node, "evil");

    assert!(!nodes.expire(99));
    assert!(nodes.expire(100));
    assert!(!nodes.is_revoked("cc"));
    assert_eq!(nodes.revoked().len(), 1);
    // Still evicted once every certificate expired.
    assert!(nodes.expire(300));
    assert!(nodes.revoked().is_empty());
    assert_eq!(nodes.evicted_at("evil"), Some(10));
    let status = nodes.status(300);
    assert_eq!(status.len(), 2, "{status:?}");
    assert_eq!((status[0].node.as_str(), status[0].revoked), ("evil", 0));
    assert_eq!(
        (status[1].node.as_str(), status[1].certificates),
        ("web", 1)
    );
}

#[test]
fn a_readmitted_node_keeps_its_old_certificates_revoked() {
    let mut nodes = Nodes::new(vec![evicted("evil", vec![cert("bb", 200)])], 50);
    let mut readmitted = evicted("evil", vec![cert("bb", 200)]);
    readmitted.evicted_at = None;
    nodes.update(readmitted, 60);
    assert_eq!(nodes.evicted_at("evil"), None);
    assert!(nodes.is_revoked("bb"));
    nodes.update(NodeRecord::new("evil"), 60);
    assert!(nodes.status(60).is_empty());
}
