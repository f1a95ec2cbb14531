use super::*;

const LIMITS: FrameLimits = FrameLimits {
    settings: 100,
    pings: 100,
    empty_data: 10,
};

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
    let mut scan = ReadScan::new(24, LIMITS);
    scan.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    for _ in 0..LIMITS.settings {
        scan.feed(&frame(4, 0, &[0, 3, 0, 0, 0, 100])).unwrap();
        scan.feed(&frame(4, 1, &[])).unwrap();
    }
    let err = scan.feed(&frame(4, 0, &[])).unwrap_err();
    assert_eq!(err.0, "SETTINGS_FLOOD");
}

#[test]
fn frames_split_anywhere_are_followed_and_payloads_skipped() {
    let mut scan = ReadScan::new(0, LIMITS);
    let mut bytes = Vec::new();
    for i in 0..LIMITS.pings {
        // DATA and HEADERS frames whose payloads look like frame headers.
        bytes.extend(frame(0, 0, &frame(6, 0, &[0; 8])));
        bytes.extend(frame(6, u8::from(i % 2 == 1), &[0; 8]));
    }
    for chunk in bytes.chunks(7) {
        scan.feed(chunk).unwrap();
    }
    // Half the pings were ACKs: 50 counted, 50 more allowed.
    for _ in 0..LIMITS.pings / 2 {
        scan.feed(&frame(6, 0, &[0; 8])).unwrap();
    }
    assert_eq!(
        scan.feed(&frame(6, 0, &[0; 8])).unwrap_err().0,
        "PING_FLOOD"
    );
}

#[test]
fn empty_data_without_end_stream_is_limited_and_end_stream_is_not() {
    let mut scan = ReadScan::new(0, LIMITS);
    for _ in 0..LIMITS.empty_data {
        scan.feed(&frame(0, 0, &[])).unwrap();
    }
    // END_STREAM on an empty DATA frame ends a request: not counted, nor
    // are DATA frames that carry bytes.
    for _ in 0..50 {
        scan.feed(&frame(0, 1, &[])).unwrap();
        scan.feed(&frame(0, 0, b"x")).unwrap();
    }
    assert_eq!(
        scan.feed(&frame(0, 0, &[])).unwrap_err().0,
        "EMPTY_FRAME_FLOOD"
    );
}

#[test]
fn refused_streams_are_counted_from_the_written_frames() {
    let mut scan = WriteScan::new();
    let mut bytes = Vec::new();
    bytes.extend(frame(3, 0, &7u32.to_be_bytes())); // REFUSED_STREAM
    bytes.extend(frame(3, 0, &8u32.to_be_bytes())); // CANCEL
    bytes.extend(frame(0, 0, &frame(3, 0, &7u32.to_be_bytes()))); // in a payload
    bytes.extend(frame(3, 0, &7u32.to_be_bytes()));
    for chunk in bytes.chunks(3) {
        scan.feed(chunk);
    }
    assert_eq!(scan.counts.refused.get(), 2);
}

#[test]
fn the_debug_data_of_a_goaway_is_kept() {
    let mut scan = WriteScan::new();
    let mut payload = vec![0, 0, 0, 9, 0, 0, 0, 11];
    payload.extend_from_slice(b"too_many_resets");
    let bytes = frame(7, 0, &payload);
    for chunk in bytes.chunks(5) {
        scan.feed(chunk);
    }
    assert_eq!(&*scan.counts.goaway_debug.borrow(), b"too_many_resets");
}
