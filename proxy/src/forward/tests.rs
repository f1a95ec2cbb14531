use super::*;

/// The size of the future an `async fn` of three arguments returns,
/// without calling it.
fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// The same for four arguments.
fn future_size4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// An idle keep-alive connection's task is the `serve_http` future (which
/// `serve` spawns), allocated whole for the connection's life: whatever
/// a rare phase (a TLS handshake, a TCP relay, a request) keeps inline is
/// paid by every idle connection. The budget is 1 KiB of RSS per idle
/// connection (issue 3).
#[test]
fn an_idle_connection_task_stays_small() {
    let serve_size = future_size4(serve_http);
    let tcp_size = future_size(tcp_service::outbound);
    eprintln!("serve_http future: {serve_size} B, tcp_service::outbound: {tcp_size} B");
    // 8192 B in a debug build with the TLS handshake inline.
    assert!(
        serve_size <= 1024,
        "serve_http future is {serve_size} bytes"
    );
}

/// The access log reads a field the proxy adds to the forwarded head
/// (the traceparent it sends) from its own lines.
#[test]
fn added_fields_are_found_by_name() {
    let extra =
        b"x-coremesh-caller: spiffe://a/b\r\nTraceparent: 00-ab-cd-01\r\nx-request-id: 1\r\n";
    assert_eq!(
        phases::added_field(extra, b"traceparent"),
        Some(&b"00-ab-cd-01"[..])
    );
    assert_eq!(phases::added_field(extra, b"x-request-id"), Some(&b"1"[..]));
    assert_eq!(phases::added_field(extra, b"x-other"), None);
    assert_eq!(phases::added_field(b"", b"traceparent"), None);
}
