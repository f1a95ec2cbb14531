use super::*;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![
        (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
        kind,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_settings_flood_is_cut_after_the_limit_and_acks_do_not_count() {
    let mut scan = FrameScan::new(24);
    scan.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    for _ in 0..MAX_SETTINGS_PER_SEC {
        scan.feed(&frame(4, 0, &[0, 3, 0, 0, 0, 100])).unwrap();
        scan.feed(&frame(4, 1, &[])).unwrap();
    }
    let err = scan.feed(&frame(4, 0, &[])).unwrap_err();
    assert_eq!(err.0, "SETTINGS_FLOOD");
}

#[test]
fn frames_split_anywhere_are_followed_and_payloads_skipped() {
    let mut scan = FrameScan::new(0);
    let mut bytes = Vec::new();
    for i in 0..MAX_PINGS_PER_SEC {
        // DATA and HEADERS frames whose payloads look like frame headers.
        bytes.extend(frame(0, 0, &frame(6, 0, &[0; 8])));
        bytes.extend(frame(6, u8::from(i % 2 == 1), &[0; 8]));
    }
    for chunk in bytes.chunks(7) {
        scan.feed(chunk).unwrap();
    }
    // Half the pings were ACKs: 50 counted, 50 more allowed.
    for _ in 0..MAX_PINGS_PER_SEC / 2 {
        scan.feed(&frame(6, 0, &[0; 8])).unwrap();
    }
    assert_eq!(
        scan.feed(&frame(6, 0, &[0; 8])).unwrap_err().0,
        "PING_FLOOD"
    );
}
