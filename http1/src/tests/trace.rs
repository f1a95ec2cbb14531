//! Trace-context fields: found in the parse, dropped from the forwarded
//! head on request.

use super::*;

#[test]
fn trace_fields_are_found_without_a_scan() {
    let s = b"GET / HTTP/1.1\r\nHost: a\r\nTraceParent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 \r\ntracestate: k=v\r\nX-B3-TraceId: 80f198ee56343ba864fe8b2a57d3eff7\r\nb3: 0\r\n\r\n";
    let h = req(s);
    assert!(h.has_trace_fields());
    assert_eq!(
        h.trace_field(s, TraceField::Traceparent),
        Some(&b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..])
    );
    assert_eq!(h.trace_field(s, TraceField::Tracestate), Some(&b"k=v"[..]));
    assert_eq!(
        h.trace_field(s, TraceField::B3TraceId),
        Some(&b"80f198ee56343ba864fe8b2a57d3eff7"[..])
    );
    assert_eq!(h.trace_field(s, TraceField::B3), Some(&b"0"[..]));
    assert_eq!(h.trace_field(s, TraceField::B3SpanId), None);
    assert!(!req(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").has_trace_fields());
}

#[test]
fn dropped_trace_fields_are_not_forwarded_but_tracestate_may_be() {
    let s = b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: x\r\ntracestate: k=v\r\nb3: 1\r\ntraceparent: y\r\nx-b3-sampled: 1\r\nkeep: me\r\n\r\n";
    let mut h = req(s);
    h.drop_trace_fields(s, true);
    let mut p = HeadPlan::default();
    h.plan_forward(s, b"traceparent: new\r\n", &mut p);
    let out = String::from_utf8(p.to_vec(s)).unwrap();
    assert!(out.contains("tracestate: k=v\r\n"), "{out}");
    assert!(out.contains("keep: me\r\n"), "{out}");
    assert!(out.contains("traceparent: new\r\n"), "{out}");
    assert!(
        !out.contains("traceparent: x") && !out.contains("traceparent: y"),
        "{out}"
    );
    assert!(
        !out.contains("b3:") && !out.contains("x-b3-sampled"),
        "{out}"
    );

    let mut h = req(s);
    h.drop_trace_fields(s, false);
    let mut p = HeadPlan::default();
    h.plan_forward(s, b"", &mut p);
    let out = String::from_utf8(p.to_vec(s)).unwrap();
    assert!(!out.contains("tracestate"), "{out}");
}
