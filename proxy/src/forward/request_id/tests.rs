use super::*;
use crate::http1::{parse_request, Limits};

fn is_uuid_v4(id: &[u8]) -> bool {
    id.len() == 36
        && id.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
        && id[14] == b'4'
        && matches!(id[19], b'8' | b'9' | b'a' | b'b')
}

#[test]
fn generated_ids_are_uuid_v4_text_and_do_not_repeat() {
    let (a, b) = (RequestIds::default(), RequestIds::default());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        for id in [a.next(), b.next()] {
            assert!(is_uuid_v4(&id), "{}", String::from_utf8_lossy(&id));
            assert!(seen.insert(id), "repeated {}", String::from_utf8_lossy(&id));
        }
    }
}

fn head(raw: &[u8]) -> RequestHead {
    parse_request(raw, &Limits::default()).unwrap().unwrap()
}

#[test]
fn http1_keeps_an_id_and_adds_one_when_absent_or_empty() {
    let ids = RequestIds::default();
    let raw = b"GET / HTTP/1.1\r\nhost: a\r\nX-Request-Id: abc-123\r\n\r\n";
    let mut h = head(raw);
    let mut extra = Vec::new();
    assert_eq!(http1(&mut h, raw, &ids, &mut extra), None);
    assert!(extra.is_empty());
    assert_eq!(of_http1(&h, raw, None), b"abc-123");

    for raw in [
        &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a\r\nx-request-id:\r\n\r\n",
    ] {
        let mut h = head(raw);
        let mut extra = b"x-caller: y\r\n".to_vec();
        let id = http1(&mut h, raw, &ids, &mut extra).unwrap();
        assert!(is_uuid_v4(&id));
        let mut want = b"x-caller: y\r\nx-request-id: ".to_vec();
        want.extend_from_slice(&id);
        want.extend_from_slice(b"\r\n");
        assert_eq!(extra, want);
        assert_eq!(of_http1(&h, raw, Some(&id)), &id[..]);
        // The forwarded head has exactly one x-request-id: the new one.
        let mut plan = crate::http1::HeadPlan::default();
        h.plan_forward(raw, &extra, &mut plan);
        let out = plan.to_vec(raw);
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert_eq!(text.matches("x-request-id").count(), 1, "{text}");
    }
}

#[test]
fn h2_keeps_an_id_and_sets_one_when_absent_or_empty() {
    let ids = RequestIds::default();
    let mut h = HeaderMap::new();
    h.insert("x-request-id", HeaderValue::from_static("given"));
    super::h2(&mut h, &ids);
    assert_eq!(of_h2(&h), b"given");
    for given in [None, Some("")] {
        let mut h = HeaderMap::new();
        if let Some(v) = given {
            h.insert("x-request-id", HeaderValue::from_static(v));
        }
        super::h2(&mut h, &ids);
        assert!(is_uuid_v4(of_h2(&h)));
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    }
}
