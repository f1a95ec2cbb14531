//! The HTTP/1 response head parser, for every request method. Properties:
//! split invariance, spans inside the head, and the forwarded head parses
//! again to the same status and framing.
#![no_main]

use coremesh_http1::{self as http1, HeadPlan, Limits, Method};
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 4] = [Method::Get, Method::Head, Method::Connect, Method::Post];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let method = METHODS[sel as usize % METHODS.len()];
    let limits = Limits::default();
    let full = http1::parse_response(data, method, &limits);
    let cut = (sel as usize / 4) * data.len() / 64;
    let cut = cut.min(data.len());
    if let Ok(Some(p)) = http1::parse_response(&data[..cut], method, &limits) {
        assert_eq!(Ok(Some(p)), full, "a prefix parsed differently");
    }
    let Ok(Some(head)) = full else {
        return;
    };
    assert!(head.head_len <= data.len());
    let mut plan = HeadPlan::default();
    head.plan_forward(data, false, false, &mut plan);
    let out = plan.to_vec(data);
    match http1::parse_response(&out, method, &limits) {
        Ok(Some(again)) => {
            assert_eq!(again.status, head.status);
            assert_eq!(again.framing, head.framing);
            assert_eq!(again.head_len, out.len());
        }
        other => panic!(
            "the forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
});
