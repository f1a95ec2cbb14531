use super::*;

fn pki() -> PkiFiles {
    PkiFiles::in_dir(Path::new("/b/configs/mtls"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn coremesh_pair_is_static_mutual_tls() {
    let out = coremesh_outbound(&pki(), addr("127.0.0.1:4143"), false);
    let inb = coremesh_inbound(&pki(), App::Tcp(addr("127.0.0.1:9999")));
    let mux = coremesh_outbound(&pki(), addr("127.0.0.1:4143"), true);
    let table: toml::Table = mux.parse().unwrap_or_else(|e| panic!("{e}\n{mux}"));
    assert_eq!(table["upstream"]["multiplex"].as_bool(), Some(true));
    let table: toml::Table = out.parse().unwrap();
    assert!(
        table.get("upstream").is_none(),
        "HTTP/1.1 by default: {out}"
    );
    for t in [&out, &inb] {
        let table: toml::Table = t.parse().unwrap_or_else(|e| panic!("{e}\n{t}"));
        assert_eq!(table["proxy"]["cores"].as_integer(), Some(1));
        assert_eq!(
            table["tls"]["ca"].as_str(),
            Some("/b/configs/mtls/ca.pem"),
            "{t}"
        );
    }
    assert!(out.contains("cert = \"/b/configs/mtls/web.crt\""), "{out}");
    assert!(
        out.contains("name = \"api\"\nendpoints = [\"127.0.0.1:4143\"]"),
        "{out}"
    );
    assert!(inb.contains("cert = \"/b/configs/mtls/api.crt\""), "{inb}");
    assert!(inb.contains("app = \"127.0.0.1:9999\""), "{inb}");
}

#[test]
fn nginx_pair_verifies_both_ways_over_tls13_with_pools() {
    let out = nginx_outbound(
        &pki(),
        8000,
        addr("127.0.0.1:8001"),
        Path::new("/d"),
        20_000,
    );
    for want in [
        "proxy_pass https://api_mesh;",
        "server 127.0.0.1:8001;",
        "keepalive 256;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection \"\";",
        "proxy_ssl_protocols TLSv1.3;",
        "proxy_ssl_certificate /b/configs/mtls/web.crt;",
        "proxy_ssl_certificate_key /b/configs/mtls/web.key;",
        "proxy_ssl_trusted_certificate /b/configs/mtls/ca.pem;",
        "proxy_ssl_verify on;",
        "proxy_ssl_name api;",
        "proxy_ssl_session_reuse on;",
        "listen 127.0.0.1:8000 ",
        "worker_processes 1;",
        "access_log off;",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let inb = nginx_inbound(
        &pki(),
        8001,
        App::Tcp(addr("127.0.0.1:9999")),
        Path::new("/d"),
        20_000,
    );
    for want in [
        "listen 127.0.0.1:8001 ssl",
        "ssl_protocols TLSv1.3;",
        "ssl_certificate /b/configs/mtls/api.crt;",
        "ssl_verify_client on;",
        "ssl_client_certificate /b/configs/mtls/ca.pem;",
        "server 127.0.0.1:9999;",
        "keepalive 256;",
        "worker_processes 1;",
        "access_log off;",
    ] {
        assert!(inb.contains(want), "{want}: {inb}");
    }
    assert!(!inb.contains("proxy_pass https"));
}

#[test]
fn haproxy_pair_verifies_both_ways_over_tls13_with_reuse() {
    let out = haproxy_outbound(
        &pki(),
        8000,
        addr("127.0.0.1:8001"),
        Path::new("/d"),
        20_000,
    );
    for want in [
        "nbthread 1",
        "bind 127.0.0.1:8000\n",
        "http-reuse always",
        "server api 127.0.0.1:8001 ssl crt /b/configs/mtls/web.pem ca-file /b/configs/mtls/ca.pem verify required verifyhost api sni str(api) ssl-min-ver TLSv1.3",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let inb = haproxy_inbound(
        &pki(),
        8001,
        App::Tcp(addr("127.0.0.1:9999")),
        Path::new("/d"),
        20_000,
    );
    for want in [
        "nbthread 1",
        "bind 127.0.0.1:8001 ssl crt /b/configs/mtls/api.pem ca-file /b/configs/mtls/ca.pem verify required ssl-min-ver TLSv1.3",
        "http-reuse always",
        "server origin 127.0.0.1:9999",
    ] {
        assert!(inb.contains(want), "{want}: {inb}");
    }
    assert!(!out.contains("\n    log ") && !inb.contains("\n    log "));
}

/// The app-unix pairs' inbound proxies name the origin's socket file in
/// each proxy's own syntax; the outbound side is unchanged.
#[test]
fn app_unix_inbound_proxies_reach_the_origin_over_its_socket() {
    let sock = App::Unix(Path::new("/b/run/origin.sock"));
    let cm = coremesh_inbound(&pki(), sock);
    let table: toml::Table = cm.parse().unwrap_or_else(|e| panic!("{e}\n{cm}"));
    assert_eq!(
        table["inbound"]["app"].as_str(),
        Some("unix:/b/run/origin.sock")
    );
    let ng = nginx_inbound(&pki(), 8001, sock, Path::new("/d"), 20_000);
    assert!(ng.contains("server unix:/b/run/origin.sock;"), "{ng}");
    assert!(ng.contains("keepalive 256;"), "{ng}");
    let ha = haproxy_inbound(&pki(), 8001, sock, Path::new("/d"), 20_000);
    assert!(
        ha.contains("server origin unix@/b/run/origin.sock maxconn"),
        "{ha}"
    );
    assert!(ha.contains("http-reuse always"), "{ha}");
}

/// Which pairs start: one per target, coremesh's multiplexed hop, and
/// with the origin's socket one unix pair per kind (not for the A/A twin,
/// the glommio build or the multiplexed hop).
#[test]
fn runs_add_one_unix_pair_per_kind() {
    let bin = PathBuf::from("/bin/x");
    let resolved = vec![
        ("coremesh".to_string(), Kind::Coremesh, bin.clone()),
        ("coremesh#2".to_string(), Kind::Coremesh, bin.clone()),
        ("coremesh-glommio".to_string(), Kind::Coremesh, bin.clone()),
        ("nginx".to_string(), Kind::Nginx, bin.clone()),
        ("haproxy".to_string(), Kind::Haproxy, bin.clone()),
    ];
    let origin = addr("127.0.0.1:9999");
    let labels = |r: &[Run<'_>]| r.iter().map(|r| r.label.clone()).collect::<Vec<_>>();
    let tcp_only = runs(&resolved, origin, None);
    assert_eq!(
        labels(&tcp_only),
        [
            "coremesh",
            "coremesh-mux",
            "coremesh#2",
            "coremesh-glommio",
            "nginx",
            "haproxy"
        ]
    );
    assert!(tcp_only
        .iter()
        .all(|r| matches!(r.app, App::Tcp(a) if a == origin)));
    let sock = Path::new("/b/run/origin.sock");
    let both = runs(&resolved, origin, Some(sock));
    assert_eq!(
        labels(&both),
        [
            "coremesh",
            "coremesh-mux",
            "coremesh-unix",
            "coremesh#2",
            "coremesh-glommio",
            "nginx",
            "nginx-unix",
            "haproxy",
            "haproxy-unix"
        ]
    );
    for r in &both {
        assert_eq!(
            is_app_unix(&r.label),
            matches!(r.app, App::Unix(p) if p == sock)
        );
        assert!(!(r.multiplex && is_app_unix(&r.label)));
    }
}

/// The generated leaves carry the SPIFFE ID (coremesh's check) and the
/// DNS name (nginx's and HAProxy's), chain to the CA, and the combined
/// PEM holds certificate and key.
#[test]
fn pki_leaves_name_the_service_both_ways() {
    let dir = std::env::temp_dir().join(format!("coremesh-bench-pki-{}", std::process::id()));
    let f = write_pki(&dir).unwrap();
    let api = fs::read(&f.api_cert).unwrap();
    let der = CertificateDer::pem_slice_iter(&api)
        .next()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(der.as_ref()).to_string();
    assert!(text.contains("spiffe://bench.coremesh/service/api"));
    let ca = fs::read(&f.ca).unwrap();
    let ca_der = CertificateDer::pem_slice_iter(&ca).next().unwrap().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            &der,
            &[],
            &ServerName::try_from("api").unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .expect("api's leaf verifies as `api` against the CA");
    let web = fs::read(&f.web_cert).unwrap();
    let web_der = CertificateDer::pem_slice_iter(&web)
        .next()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(web_der.as_ref()).contains("/service/web"));
    let pem = fs::read_to_string(&f.web_pem).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn handshake_counters() {
    let m = "# TYPE coremesh_tls_handshakes_total counter\n\
             coremesh_tls_handshakes_total{direction=\"inbound\",resumed=\"false\"} 2\n\
             coremesh_tls_handshakes_total{direction=\"inbound\",resumed=\"true\"} 30\n\
             coremesh_tls_handshake_failures_total{direction=\"inbound\"} 1\n";
    assert_eq!(handshake_counts(m), (2.0, 30.0));
}
