use std::cell::RefCell;

use super::*;

fn list(serials: &[&str]) -> Arc<Revocations> {
    Arc::new(Revocations::from_list(
        &serials
            .iter()
            .map(|s| RevokedCert {
                serial: s.to_string(),
                node: "evil".into(),
                not_after: u64::MAX,
            })
            .collect::<Vec<_>>(),
    ))
}

#[test]
fn the_list_reads_hex_serials_and_skips_bad_ones() {
    let r = list(&["7f01", "00ab", "xyz", ""]);
    assert_eq!(r.len(), 2);
    assert!(r.contains(&[0x7f, 0x01]));
    assert!(r.contains(&[0xab]));
    assert!(!r.contains(&[0x7f]));
    assert_eq!(strip(&[0, 0, 0xab]), &[0xab]);
}

#[test]
fn a_new_list_shuts_the_connections_it_revokes_and_refuses_new_ones() {
    let conns = Rc::new(PeerConns::default());
    let evil = conns.register(Box::new([0x7f, 0x01]), 10).unwrap();
    let also = evil.also(11).unwrap();
    let _good = conns.register(Box::new([0x22]), 12).unwrap();
    assert_eq!(conns.open(), 3);
    let shut = RefCell::new(Vec::new());
    let closed = conns.set_revoked(list(&["7f01"]), |fd| shut.borrow_mut().push(fd));
    assert_eq!(closed, 2);
    shut.borrow_mut().sort();
    assert_eq!(*shut.borrow(), [10, 11]);
    // A resumed session (or a handshake that began before) is refused
    // when it registers.
    let e = conns.register(Box::new([0x7f, 0x01]), 13).err().unwrap();
    assert_eq!(e.serial, "7f01");
    assert!(e.to_string().contains("revoked"), "{e}");
    drop(evil);
    drop(also);
    assert_eq!(conns.open(), 1);
    // An empty list revokes nothing.
    assert_eq!(
        conns.set_revoked(Arc::default(), |_| panic!("nothing to shut")),
        0
    );
    assert!(conns.register(Box::new([0x7f, 0x01]), 14).is_ok());
}
