//! Deterministic randomized test: valid messages split at every offset give the
//! same result as whole ones.

use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn word(&mut self, max: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.";
        (0..1 + self.below(max))
            .map(|_| A[self.below(A.len())] as char)
            .collect()
    }
}

/// A random valid request: head, then body bytes, then how the body is framed.
fn random_request(r: &mut Rng) -> (Vec<u8>, Framing) {
    let method = r.pick(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "X-CUSTOM"]);
    let mut s = String::new();
    if r.below(8) == 0 {
        s.push_str("\r\n");
    }
    let abs = r.below(4) == 0;
    let path = format!("/{}?{}={}", r.word(12), r.word(4), r.word(4));
    let host = format!("{}.svc:{}", r.word(8), 1 + r.below(65535));
    if abs {
        s.push_str(&format!("{method} http://{host}{path} HTTP/1.1\r\n"));
    } else {
        s.push_str(&format!("{method} {path} HTTP/1.1\r\n"));
    }
    let mut fields = vec![format!("Host: {host}")];
    for _ in 0..r.below(8) {
        fields.push(format!("X-{}: {} {}", r.word(10), r.word(20), r.word(5)));
    }
    if r.below(3) == 0 {
        fields.push("Connection: keep-alive, x-hop".into());
        fields.push("X-Hop: 1".into());
    }
    let framing = match r.below(3) {
        0 => Framing::None,
        1 => Framing::Length(r.below(40) as u64),
        _ => Framing::Chunked,
    };
    let mut body = Vec::new();
    match framing {
        Framing::Length(n) => {
            fields.push(format!("Content-Length: {n}"));
            body.extend((0..n).map(|i| b'a' + (i % 26) as u8));
        }
        Framing::Chunked => {
            fields.push("Transfer-Encoding: chunked".into());
            body = random_chunked(r);
        }
        _ => {}
    }
    let n = fields.len();
    for i in 0..n {
        fields.swap(i, r.below(n));
    }
    for f in fields {
        s.push_str(&f);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(&body);
    (out, framing)
}

fn random_chunked(r: &mut Rng) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..r.below(4) {
        let n = 1 + r.below(20);
        if r.below(2) == 0 {
            b.extend_from_slice(format!("{n:x}").as_bytes());
        } else {
            b.extend_from_slice(format!("{n:04X};ext={}", r.word(5)).as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b.extend((0..n).map(|_| b"\r\n0x"[r.below(4)]));
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"0\r\n");
    for _ in 0..r.below(3) {
        b.extend_from_slice(format!("T-{}: {}\r\n", r.word(6), r.word(10)).as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    b
}

#[test]
fn randomized_messages_split_at_every_offset() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let (a, fa) = random_request(&mut r);
        let (b, _) = random_request(&mut r);
        let mut s = a.clone();
        s.extend_from_slice(&b);

        let whole = req(&s);
        let mut plan = HeadPlan::default();
        whole.plan_forward(&s, b"", &mut plan);
        let forwarded = plan.to_vec(&s);
        // Every prefix of the head is incomplete, never a different head.
        for n in 0..whole.head_len {
            assert_eq!(parse_request(&s[..n], &L), Ok(None), "prefix {n}");
        }
        // Exactly the head, or the head plus any amount after it: same answer.
        for n in whole.head_len..=s.len() {
            let h = parse_request(&s[..n], &L).unwrap().unwrap();
            assert_eq!(h, whole);
        }
        assert!(!String::from_utf8_lossy(&forwarded).contains("X-Hop"));

        let body = &s[whole.head_len..];
        let body_len = match fa {
            Framing::None => 0,
            Framing::Length(n) => n as usize,
            Framing::Chunked => {
                let want = a.len() - whole.head_len;
                // Every split point into two feeds gives the same answer.
                for k in 0..=body.len() {
                    let mut d = ChunkedDecoder::new();
                    let first = d.feed(&body[..k]).unwrap();
                    let second = if d.is_done() {
                        0
                    } else {
                        d.feed(&body[k..]).unwrap()
                    };
                    assert_eq!(first + second, want, "split {k}");
                    assert!(d.is_done());
                }
                assert_eq!(feed_bytewise(body), (Ok(want), true));
                want
            }
            Framing::UntilClose => unreachable!(),
        };
        // The pipelined second request starts right after the first body.
        assert_eq!(whole.head_len + body_len, a.len());
        assert_eq!(req(&s[a.len()..]), req(&b));
    }
}

#[test]
fn randomized_responses_split_at_every_offset() {
    let mut r = Rng(7);
    for _ in 0..200 {
        let status = r.pick(&[
            "200 OK",
            "201 Created",
            "404 Not Found",
            "500 Oops",
            "204 No Content",
        ]);
        let mut s = format!("HTTP/1.1 {status}\r\n");
        for _ in 0..r.below(6) {
            s.push_str(&format!("X-{}: {}\r\n", r.word(8), r.word(16)));
        }
        if r.below(2) == 0 {
            s.push_str("Transfer-Encoding: chunked\r\n");
        } else {
            s.push_str(&format!("Content-Length: {}\r\n", r.below(1000)));
        }
        s.push_str("\r\n");
        let s = s.as_bytes();
        let whole = res(s, Method::Get);
        assert_eq!(whole.head_len, s.len());
        for n in 0..s.len() {
            assert_eq!(parse_response(&s[..n], Method::Get, &L), Ok(None));
        }
    }
}

#[test]
fn rejects_invalid_octets_in_long_values_and_targets() {
    // Long enough for httparse's vectorized paths.
    for c in [0x7fu8, 0x00, 0x01, 0x1b] {
        let mut s = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        s.extend(std::iter::repeat_n(b'a', 40));
        s.push(c);
        s.extend(std::iter::repeat_n(b'a', 40));
        s.extend_from_slice(b"\r\n\r\n");
        assert_rejected(&s, 400);

        let mut t = b"GET /".to_vec();
        t.extend(std::iter::repeat_n(b'a', 40));
        t.push(c);
        t.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_rejected(&t, 400);
    }
}
