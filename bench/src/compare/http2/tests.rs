use super::*;

fn pki() -> PkiFiles {
    mtls::write_pki_paths(Path::new("/b/configs/grpc"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn has_all(text: &str, want: &[&str]) {
    for w in want {
        assert!(text.contains(w), "{w}: {text}");
    }
}

#[test]
fn nginx_h2_is_prior_knowledge_in_and_grpc_pass_out() {
    let c = nginx_h2(8000, addr("127.0.0.1:9000"), Path::new("/d"), 20_000);
    has_all(
        &c,
        &[
            "listen 127.0.0.1:8000 http2 backlog=4096;",
            "grpc_pass grpc://origin_h2;",
            "server 127.0.0.1:9000;",
            "keepalive 256;",
            "worker_processes 1;",
            "access_log off;",
            "compare h2:",
        ],
    );
    assert!(!c.contains(" ssl"), "{c}");
}

#[test]
fn haproxy_h2_speaks_h2_on_both_sides() {
    let c = haproxy_h2(8000, addr("127.0.0.1:9000"), Path::new("/d"), 20_000);
    has_all(
        &c,
        &[
            "bind 127.0.0.1:8000 proto h2",
            "server origin 127.0.0.1:9000 proto h2 maxconn",
            "http-reuse always",
            "nbthread 1",
        ],
    );
}

#[test]
fn nginx_grpc_pair_is_mutual_tls_13_with_h2() {
    let out = nginx_grpc_outbound(
        &pki(),
        8000,
        addr("127.0.0.1:8001"),
        Path::new("/d"),
        20_000,
    );
    has_all(
        &out,
        &[
            "listen 127.0.0.1:8000 http2 backlog=4096;",
            "grpc_pass grpcs://api_mesh;",
            "server 127.0.0.1:8001;",
            "grpc_ssl_protocols TLSv1.3;",
            "grpc_ssl_certificate /b/configs/grpc/web.crt;",
            "grpc_ssl_certificate_key /b/configs/grpc/web.key;",
            "grpc_ssl_trusted_certificate /b/configs/grpc/ca.pem;",
            "grpc_ssl_verify on;",
            "grpc_ssl_name api;",
            "grpc_ssl_session_reuse on;",
        ],
    );
    let inb = nginx_grpc_inbound(
        &pki(),
        8001,
        addr("127.0.0.1:9000"),
        Path::new("/d"),
        20_000,
    );
    has_all(
        &inb,
        &[
            "listen 127.0.0.1:8001 ssl http2 backlog=4096;",
            "ssl_protocols TLSv1.3;",
            "ssl_verify_client on;",
            "ssl_client_certificate /b/configs/grpc/ca.pem;",
            "grpc_pass grpc://origin_h2;",
            "server 127.0.0.1:9000;",
        ],
    );
}

#[test]
fn haproxy_grpc_pair_is_mutual_tls_13_with_h2() {
    let out = haproxy_grpc_outbound(
        &pki(),
        8000,
        addr("127.0.0.1:8001"),
        Path::new("/d"),
        20_000,
    );
    has_all(
        &out,
        &[
            "bind 127.0.0.1:8000 proto h2",
            "server api 127.0.0.1:8001 ssl crt /b/configs/grpc/web.pem ca-file /b/configs/grpc/ca.pem verify required verifyhost api sni str(api) alpn h2 ssl-min-ver TLSv1.3",
            "ssl-server-verify required",
        ],
    );
    let inb = haproxy_grpc_inbound(
        &pki(),
        8001,
        addr("127.0.0.1:9000"),
        Path::new("/d"),
        20_000,
    );
    has_all(
        &inb,
        &[
            "bind 127.0.0.1:8001 ssl crt /b/configs/grpc/api.pem ca-file /b/configs/grpc/ca.pem verify required alpn h2,http/1.1 ssl-min-ver TLSv1.3",
            "server origin 127.0.0.1:9000 proto h2",
        ],
    );
}

/// The checks a target must pass, against the bench origin itself: an
/// h2c GET and a gRPC call answer, on the origin's one port.
#[test]
fn checks_pass_against_the_origin() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let l = crate::origin::bind(addr("127.0.0.1:0")).unwrap();
    let a = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let cfg = crate::origin::OriginConfig {
        body_size: 10,
        delay: Duration::ZERO,
        instance: None,
    };
    let h = std::thread::spawn(move || crate::origin::serve(l, cfg, st).unwrap());
    check_get(a, ORIGIN_HOST).unwrap();
    check_grpc(a, SERVICE).unwrap();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

#[test]
fn grpc_timeouts_in_milliseconds() {
    assert_eq!(grpc_timeout(Duration::from_secs(5)), "5000m");
    assert_eq!(grpc_timeout(Duration::ZERO), "1m");
    assert_eq!(grpc_timeout(Duration::from_secs(1 << 40)), "99999999m");
}
