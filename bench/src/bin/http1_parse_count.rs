//! Instruction count of the proxy's HTTP/1 request-head parser, for
//! callgrind (perf/callgrind.sh).
//!
//! Hypothesis: parsing a typical request head costs a few hundred
//! instructions, a small share of the proxy's per-request budget (the rest
//! is the kernel's socket work). Instruction counts under callgrind stay
//! repeatable on noisy shared machines where wall-clock benchmarks do not;
//! perf/callgrind.sh runs this binary with two iteration counts and divides
//! the difference, which cancels start-up costs.

use std::hint::black_box;

use coremesh_http1::{parse_request, Limits};

/// What an app typically sends through its sidecar: origin-form target with
/// a query, a handful of common headers (~230 bytes).
const HEAD: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&cursor=eyJpZCI6MTJ9 HTTP/1.1\r\n\
Host: api\r\n\
User-Agent: python-requests/2.31.0\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
X-Request-Id: 5b0c2f9e-3d4a-4f1e-9a77-0c8d2e6b1a43\r\n\
\r\n";

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let limits = Limits {
        max_head_bytes: 65536,
        max_request_line: 8192,
        max_headers: 100,
    };
    let mut complete = 0u64;
    for _ in 0..n {
        if let Ok(Some(head)) = parse_request(black_box(HEAD), black_box(&limits)) {
            black_box(&head);
            complete += 1;
        }
    }
    println!(
        "{n} parses of a {}-byte head, {complete} complete",
        HEAD.len()
    );
}
