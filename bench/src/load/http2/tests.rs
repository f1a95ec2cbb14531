use super::*;

fn cfg(mode: Mode) -> H2Config {
    H2Config {
        url: String::new(),
        addr: "127.0.0.1:1".parse().unwrap(),
        authority: "api".into(),
        path: "/size/128".into(),
        headers: vec![("x-bench".into(), "1".into())],
        mode,
        rate: 0.0,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        connections: 1,
        streams: 1,
        threads: 1,
        drain: Duration::ZERO,
    }
}

#[test]
fn get_and_grpc_requests() {
    let (get, body) = build(&cfg(Mode::Get)).unwrap();
    assert_eq!(get.method(), "GET");
    assert_eq!(get.uri().to_string(), "http://api/size/128");
    assert_eq!(get.headers()["x-bench"], "1");
    assert!(body.is_none());
    let (call, body) = build(&cfg(Mode::Grpc { reply_size: 128 })).unwrap();
    assert_eq!(call.method(), "POST");
    assert_eq!(call.uri().path(), grpc::METHOD);
    assert_eq!(call.headers()["content-type"], "application/grpc");
    assert_eq!(call.headers()["te"], "trailers");
    let body = body.unwrap();
    assert_eq!(grpc::parse_request(grpc::unframe(&body).unwrap()), Ok(128));
}
