use super::*;

#[test]
fn configs_name_the_origin_and_port() {
    let origin: SocketAddr = "127.0.0.1:9999".parse().unwrap();
    for kind in [
        Kind::Coremesh,
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Envoy,
        Kind::Caddy,
    ] {
        let c = config(kind, 1234, origin, Path::new("/tmp/x"), 20_000);
        assert!(c.contains("9999"), "{kind:?}");
        if kind != Kind::Coremesh {
            assert!(c.contains("1234"), "{kind:?}");
        }
    }
    assert!(config(Kind::Nginx, 1, origin, Path::new("/d"), 20_000).contains("access_log off"));
    assert!(config(Kind::Haproxy, 1, origin, Path::new("/d"), 20_000).contains("maxconn 9900"));
    assert_eq!(max_conns(1 << 20), 100_000);
    assert!(config(Kind::Coremesh, 0, origin, Path::new("/d"), 20_000).contains("cores = 1"));
}

#[test]
fn labels_as_file_names() {
    assert_eq!(file_label("coremesh#2"), "coremesh-2");
}
