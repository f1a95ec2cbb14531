//! Codec tests that drive the public API: request rules and attacks,
//! forwarding plans, response framing, chunked bodies, and a deterministic
//! randomized test that splits valid messages at every offset.

mod attacks;
mod chunked;
mod requests;
mod responses;
mod split;
mod trace;

use super::*;

const L: Limits = Limits {
    max_head_bytes: 8192,
    max_request_line: 1024,
    max_headers: 64,
};

fn req(s: &[u8]) -> RequestHead {
    match parse_request(s, &L) {
        Ok(Some(h)) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
    }
}

fn req_err(s: &[u8]) -> ParseError {
    match parse_request(s, &L) {
        Err(e) => e,
        other => panic!("{:?} should fail: {other:?}", String::from_utf8_lossy(s)),
    }
}

fn assert_rejected(s: &[u8], status: u16) {
    let e = req_err(s);
    assert_eq!(e.status, status, "{:?}: {e}", String::from_utf8_lossy(s));
}

fn fwd(s: &[u8], extra: &[u8]) -> String {
    let h = req(s);
    let mut p = HeadPlan::default();
    h.plan_forward(s, extra, &mut p);
    assert_eq!(p.total_len(), p.to_vec(s).len());
    String::from_utf8(p.to_vec(s)).unwrap()
}

fn res(s: &[u8], m: Method) -> ResponseHead {
    match parse_response(s, m, &L) {
        Ok(Some(h)) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
    }
}

fn res_err(s: &[u8]) -> ParseError {
    match parse_response(s, Method::Get, &L) {
        Err(e) => e,
        other => panic!("{:?} should fail: {other:?}", String::from_utf8_lossy(s)),
    }
}

fn res_fwd(s: &[u8], m: Method, close: bool, ka10: bool) -> String {
    let h = res(s, m);
    let mut p = HeadPlan::default();
    h.plan_forward(s, close, ka10, &mut p);
    String::from_utf8(p.to_vec(s)).unwrap()
}

fn span(s: &[u8], r: &Span) -> String {
    String::from_utf8_lossy(&s[r.clone()]).into_owned()
}

fn feed_all(body: &[u8]) -> (Result<usize, ParseError>, bool) {
    let mut d = ChunkedDecoder::new();
    let r = d.feed(body);
    (r, d.is_done())
}

fn feed_bytewise(body: &[u8]) -> (Result<usize, ParseError>, bool) {
    let mut d = ChunkedDecoder::new();
    let mut total = 0;
    for i in 0..body.len() {
        match d.feed(&body[i..i + 1]) {
            Ok(n) => total += n,
            Err(e) => return (Err(e), d.is_done()),
        }
        if d.is_done() {
            break;
        }
    }
    (Ok(total), d.is_done())
}
