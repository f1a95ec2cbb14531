use super::*;

#[test]
fn messages_round_trip_through_the_framing() {
    let req = frame(&request(128));
    assert_eq!(req, [0, 0, 0, 0, 3, 0x08, 0x80, 0x01]);
    assert_eq!(parse_request(unframe(&req).unwrap()), Ok(128));
    let rep = frame(&reply(300));
    assert_eq!(&rep[..8], &[0, 0, 0, 1, 0x2f, 0x0a, 0xac, 0x02]);
    assert_eq!(parse_reply(unframe(&rep).unwrap()), Ok(300));
    assert_eq!(parse_request(unframe(&frame(&[])).unwrap()), Ok(0));
}

#[test]
fn bad_bodies_are_named() {
    assert_eq!(unframe(&[0, 0, 0]), Err(GrpcFrameError::Short));
    assert_eq!(unframe(&[1, 0, 0, 0, 0]), Err(GrpcFrameError::Compressed));
    assert_eq!(
        unframe(&[0, 0, 0, 0, 2, 1]),
        Err(GrpcFrameError::Length {
            declared: 2,
            got: 1
        })
    );
    assert_eq!(parse_reply(&[0x0a, 5, b'x']), Err(GrpcFrameError::Protobuf));
    assert_eq!(parse_request(&[0x10, 1]), Err(GrpcFrameError::Protobuf));
}

#[test]
fn grpc_content_types() {
    assert!(is_grpc(b"application/grpc"));
    assert!(is_grpc(b"application/grpc+proto"));
    assert!(!is_grpc(b"application/grpc-web"));
    assert!(!is_grpc(b"application/json"));
}
