//! The HTTP/1 request head parser. Properties:
//! - split invariance: a prefix parses to "need more" or to the same head;
//! - every span lies inside the head;
//! - framing agrees with a model of RFC 9112 6.1-6.3 written here, from the
//!   raw field lines (the request-smuggling rules);
//! - round trip: the head the proxy forwards parses again to the same
//!   method, path, authority and framing.
#![no_main]

use coremesh_http1::{self as http1, Framing, HeadPlan, Limits, Version};
use libfuzzer_sys::fuzz_target;

/// What RFC 9112 says the framing of a request with these fields is, or
/// `None` when the request must be rejected.
fn model(fields: &[(String, String)], version: Version) -> Option<Framing> {
    let te: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.as_str())
        .collect();
    let cl: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if !te.is_empty() {
        // 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; 6.3 (3):
        // with Content-Length too, reject; 6.3 (4): chunked must be last.
        if version == Version::Http10 || !cl.is_empty() {
            return None;
        }
        let last = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .last()?;
        return last
            .eq_ignore_ascii_case("chunked")
            .then_some(Framing::Chunked);
    }
    if cl.is_empty() {
        return Some(Framing::None);
    }
    // 6.3 (5): all values must be the same decimal number.
    let mut n = None;
    for v in cl {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let x: u64 = v.parse().ok()?;
        if n.is_some_and(|m| m != x) {
            return None;
        }
        n = Some(x);
    }
    n.map(Framing::Length)
}

/// The field lines of a head that httparse accepted: name, trimmed value.
fn fields(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .skip_while(|l| l.is_empty())
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.to_string(), v.trim_matches([' ', '\t']).to_string()))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let full = http1::parse_request(data, &limits);
    let cut = data.first().map_or(0, |&b| b as usize * data.len() / 256);
    match (http1::parse_request(&data[..cut], &limits), &full) {
        (Ok(None), _) => {}
        (Ok(Some(p)), Ok(Some(f))) => assert_eq!(&p, f, "a prefix parsed differently"),
        (Err(pe), Err(fe)) => assert_eq!(pe.status, fe.status),
        (Err(pe), Ok(Some(f))) => assert!(
            f.head_len > cut,
            "a prefix holding the whole head was refused ({pe:?})"
        ),
        (p, f) => {
            // A refused prefix may be complete only where the full buffer is.
            if let (Ok(Some(p)), _) = (&p, f) {
                panic!("prefix parsed ({p:?}) but the whole did not ({f:?})");
            }
        }
    }
    let Ok(Some(head)) = full else {
        return;
    };
    for span in [&head.target, &head.path]
        .into_iter()
        .chain(head.authority.as_ref())
    {
        assert!(
            span.start <= span.end && span.end <= head.head_len,
            "{span:?}"
        );
    }
    let f = fields(&data[..head.head_len]);
    match model(&f, head.version) {
        Some(want) => assert_eq!(head.framing, want, "fields {f:?}"),
        None => panic!("accepted a request RFC 9112 rejects: fields {f:?}"),
    }

    let mut plan = HeadPlan::default();
    head.plan_forward(data, b"", &mut plan);
    let out = plan.to_vec(data);
    let again = match http1::parse_request(&out, &limits) {
        Ok(Some(h)) => h,
        other => panic!(
            "the forwarded head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.method, head.method);
    assert_eq!(again.framing, head.framing);
    assert_eq!(again.version, head.version);
    let auth = |h: &http1::RequestHead, src: &[u8]| {
        h.authority
            .as_ref()
            .map(|a| src[a.clone()].to_ascii_lowercase())
    };
    assert_eq!(auth(&again, &out), auth(&head, data));
});
