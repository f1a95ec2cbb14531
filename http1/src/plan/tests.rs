use super::*;

#[test]
fn merges_contiguous_segments() {
    let mut p = HeadPlan::default();
    p.push_src(0..3);
    p.push_src(3..5);
    p.push_src(5..5);
    p.push_own(b"ab");
    p.push_own(b"cd");
    p.push_own(b"");
    p.push_src(7..9);
    assert_eq!(p.segs, vec![Seg::Src(0..5), Seg::Own(0..4), Seg::Src(7..9)]);
    assert_eq!(p.total_len(), 11);
    assert_eq!(p.to_vec(b"0123456789"), b"01234abcd78".to_vec());
    p.clear();
    assert!(p.segs.is_empty() && p.own.is_empty());
}

#[test]
fn a_dropped_header_is_left_out_and_the_proxys_own_is_added() {
    let src = b"GET /x HTTP/1.1\r\nHost: api\r\nX-Caller: forged\r\naccept: */*\r\nx-caller: again\r\n\r\n";
    let limits = crate::Limits {
        max_head_bytes: 8192,
        max_request_line: 8192,
        max_headers: 100,
    };
    let mut head = crate::parse_request(src, &limits).unwrap().unwrap();
    assert_eq!(head.drop_header(src, "x-caller"), 2);
    let mut plan = HeadPlan::default();
    head.plan_forward(src, b"x-caller: spiffe://td/service/web\r\n", &mut plan);
    assert_eq!(
        String::from_utf8(plan.to_vec(src)).unwrap(),
        "GET /x HTTP/1.1\r\nHost: api\r\naccept: */*\r\nx-caller: spiffe://td/service/web\r\n\r\n"
    );
}
