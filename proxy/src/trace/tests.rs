//! Trace-context parsing, conversion and the sampling decision.

use super::*;

const TP: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn counter() -> impl FnMut() -> u64 {
    let mut n = 0x1234_5678_9abc_def0u64;
    move || {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        n
    }
}

#[test]
fn traceparent_parses_and_rejects_bad_values() {
    let i = parse_traceparent(TP).unwrap();
    assert_eq!(hex(&i.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&i.parent), "b7ad6b7169203331");
    assert_eq!(i.sampled, Some(true));
    let unsampled = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(parse_traceparent(unsampled).unwrap().sampled, Some(false));
    for bad in [
        &b"00-00000000000000000000000000000000-b7ad6b7169203331-01"[..],
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        b"00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        b"garbage",
    ] {
        assert_eq!(
            parse_traceparent(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // A later version's known fields are read.
    let v1 = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what";
    assert!(parse_traceparent(v1).is_some());
}

#[test]
fn b3_converts_to_a_w3c_context() {
    let i =
        parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
            .unwrap();
    assert_eq!(hex(&i.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&i.parent), "e457b5a2e4d86bd1");
    assert_eq!((i.sampled, i.b3), (Some(true), true));
    // 64-bit trace ids are padded.
    let i = parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7").unwrap();
    assert_eq!(hex(&i.trace_id), "0000000000000000a3ce929d0e0e4736");
    assert_eq!(i.sampled, None);
    let i = parse_b3_multi(
        b"463ac35c9f6413ad48485a3953bb6124",
        b"a2fb4a1d1a96d312",
        Some(b"0"),
        None,
    )
    .unwrap();
    assert_eq!(i.sampled, Some(false));
    let i = parse_b3_multi(
        b"463ac35c9f6413ad48485a3953bb6124",
        b"a2fb4a1d1a96d312",
        None,
        Some(b"1"),
    )
    .unwrap();
    assert_eq!(i.sampled, Some(true));
    assert_eq!(parse_b3_single(b"0"), None);
    assert_eq!(b3_decision(b"0"), Some(false));
}

#[test]
fn a_hop_continues_the_trace_with_its_own_span() {
    let mut r = counter();
    let i = parse_traceparent(TP).unwrap();
    let hop = Hop::begin(Some(i), None, Some(0.0), &mut r);
    assert_eq!(hop.trace_id, i.trace_id);
    assert_eq!(hop.parent, i.parent);
    assert_ne!(hop.span_id, i.parent);
    // Parent-based: sampled upstream, recorded here even at ratio 0.
    assert!(hop.sampled && hop.rec.is_some());
    let mut out = Vec::new();
    hop.write_fields(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        format!(
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-{}-01\r\n",
            hex(&hop.span_id)
        )
    );
    // Without a collector nothing is recorded, but the flag goes on.
    let hop = Hop::begin(Some(i), None, None, &mut r);
    assert!(hop.sampled && hop.rec.is_none());
}

#[test]
fn sampling_of_new_traces_follows_the_ratio() {
    let mut r = counter();
    let n = 10_000;
    let sampled = (0..n)
        .filter(|_| Hop::begin(None, None, Some(0.25), &mut r).sampled)
        .count();
    assert!((2_000..3_000).contains(&sampled), "{sampled}");
    assert!(Hop::begin(None, None, Some(1.0), &mut r).rec.is_some());
    assert!(!Hop::begin(None, None, Some(0.0), &mut r).sampled);
    assert!(!Hop::begin(None, Some(false), Some(1.0), &mut r).sampled);
    let unsampled = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
    assert!(Hop::begin(unsampled, None, Some(1.0), &mut r).rec.is_none());
}

#[test]
fn a_b3_caller_gets_b3_back_and_h2_fields_are_replaced() {
    let mut r = counter();
    let i = parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1").unwrap();
    let hop = Hop::begin(Some(i), None, Some(1.0), &mut r);
    let mut h = http::HeaderMap::new();
    h.insert("b3", http::HeaderValue::from_static("x"));
    h.insert("x-b3-sampled", http::HeaderValue::from_static("1"));
    h.insert("traceparent", http::HeaderValue::from_static("old"));
    h.insert("tracestate", http::HeaderValue::from_static("k=v"));
    hop.set_h2_fields(&mut h);
    let span = hex(&hop.span_id);
    assert_eq!(
        h["traceparent"],
        format!("00-80f198ee56343ba864fe8b2a57d3eff7-{span}-01").as_str()
    );
    assert_eq!(
        h["b3"],
        format!("80f198ee56343ba864fe8b2a57d3eff7-{span}-1").as_str()
    );
    assert_eq!(h["tracestate"], "k=v");
    assert!(h.get("x-b3-sampled").is_none());
    assert_eq!(incoming_h2(&h).unwrap().parent, hop.span_id);
}
