use std::fmt::Debug;

use super::*;
use crate::resource::{parse_documents, Protocol, Resource};
use crate::snapshot::{Endpoint, ServiceEndpoints};

fn proxy_msgs() -> Vec<ProxyMsg> {
    let addr: SocketAddr = "10.0.0.7:4143".parse().unwrap();
    vec![
        ProxyMsg::Join {
            protocol: PROTOCOL_VERSION,
            token: "cmjt1.id.secret.00".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n...".into(),
            node: "host-a".into(),
        },
        ProxyMsg::Hello {
            protocol: PROTOCOL_VERSION,
            service: "web".into(),
            node: "host-a".into(),
            version: Some(7),
            calls: Some(vec!["api".into()]),
            compression: vec![ZSTD.into()],
        },
        ProxyMsg::Hello {
            protocol: PROTOCOL_VERSION,
            service: "web".into(),
            node: "host-a".into(),
            version: None,
            calls: None,
            compression: Vec::new(),
        },
        ProxyMsg::Ack { version: 8 },
        ProxyMsg::Nack {
            version: 9,
            reason: "route api: no such subset".into(),
        },
        ProxyMsg::Register {
            address: addr,
            labels: [("version".to_string(), "v2".to_string())].into(),
        },
        ProxyMsg::Health {
            healthy: false,
            detail: "connect refused".into(),
        },
        ProxyMsg::Deregister,
        ProxyMsg::Renew {
            csr_pem: "csr".into(),
        },
        ProxyMsg::Features {
            features: vec![FEATURE_TAP.into()],
        },
        ProxyMsg::Clock {
            unix_ms: 1_796_474_442_289,
        },
        ProxyMsg::TapRecords {
            tap: 3,
            records: vec![TapRecord {
                at_ms: 1_796_474_442_289,
                direction: "inbound".into(),
                caller: Some("spiffe://mesh.local/service/web".into()),
                service: "api".into(),
                method: "GET".into(),
                authority: "api".into(),
                path: "/users/7".into(),
                status: 200,
                latency_us: 1234,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            }],
            dropped: 2,
        },
    ]
}

fn control_msgs() -> Vec<ControlMsg> {
    let routes = parse_documents(crate::resource::EXAMPLE)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Resource::Route(r) => Some(r),
            _ => None,
        })
        .collect();
    let access_policy = parse_documents(crate::resource::ACCESS_EXAMPLE)
        .unwrap()
        .into_iter()
        .find_map(|r| match r {
            Resource::AccessPolicy(p) => Some(p),
            _ => None,
        });
    let resilience = parse_documents(crate::resource::RESILIENCE_EXAMPLE)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Resource::Resilience(r) => Some(r),
            _ => None,
        })
        .chain([crate::resource::Resilience {
            load_balancer: crate::resource::LoadBalancer::RingHash(
                crate::resource::HashKey::Cookie("session".into()),
            ),
            ..crate::resource::Resilience::new("db")
        }])
        .collect();
    vec![
        ControlMsg::Joined {
            cert_pem: "cert".into(),
            ca_pem: "ca".into(),
            spiffe_id: "spiffe://mesh.local/service/web".into(),
        },
        ControlMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_interval_ms: 5000,
            compression: None,
            features: Vec::new(),
        },
        ControlMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            heartbeat_interval_ms: 5000,
            compression: Some(ZSTD.into()),
            features: FEATURES.map(String::from).to_vec(),
        },
        ControlMsg::Snapshot(Snapshot {
            version: 12,
            config_version: 3,
            store_id: "5f0c2a9e1d7b4c38a6e2f1d0b9c8a7e6".into(),
            config_digest: "9a1f".into(),
            services: vec![ServiceEndpoints {
                name: "api".into(),
                port: Some(8080),
                addresses: vec!["10.96.0.10".parse().unwrap()],
                protocol: Protocol::Http,
                endpoints: vec![Endpoint {
                    address: "10.0.0.8:4143".parse().unwrap(),
                    labels: [("version".to_string(), "v1".to_string())].into(),
                    node: "host-b".into(),
                    healthy: true,
                }],
            }],
            routes,
            access_policy,
            default_access: crate::resource::Access::Deny,
            outbound_policy: crate::resource::Access::Deny,
            trust_bundle: vec!["root 1".into(), "root 2".into()],
            revoked: vec![crate::snapshot::RevokedCert {
                serial: "7f3a".into(),
                node: "host-c".into(),
                not_after: 1_900_000_000,
            }],
            resilience,
        }),
        ControlMsg::Renewed {
            cert_pem: "cert2".into(),
        },
        ControlMsg::Deregistered,
        ControlMsg::Error {
            code: ErrorCode::TokenRefused,
            message: "token expired".into(),
        },
        ControlMsg::TapStart {
            tap: 3,
            path_prefix: Some("/users".into()),
            max_rps: 100,
            ttl_ms: 15_000,
        },
        ControlMsg::TapStart {
            tap: 4,
            path_prefix: None,
            max_rps: 1,
            ttl_ms: 15_000,
        },
        ControlMsg::TapStop { tap: 3 },
    ]
}

/// A Welcome from a control that predates features still parses (no
/// features: the proxy sends none of the optional messages), and one with
/// features parses the same for a proxy that ignores them.
#[test]
fn welcome_features_are_optional_both_ways() {
    let old = r#"{"type":"welcome","protocol":1,"heartbeat_interval_ms":5000}"#;
    let m: ControlMsg = serde_json::from_str(old).unwrap();
    assert!(matches!(m, ControlMsg::Welcome { ref features, .. } if features.is_empty()));
    let new = serde_json::to_string(&ControlMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        heartbeat_interval_ms: 5000,
        compression: None,
        features: vec!["tap".into(), "a-feature-from-the-future".into()],
    })
    .unwrap();
    assert!(new.contains(r#""features":["tap","#), "{new}");
    // The fields an older proxy knows are all there, and nothing else is
    // required of it.
    let v: serde_json::Value = serde_json::from_str(&new).unwrap();
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["heartbeat_interval_ms"], 5000);
}

/// Encodes all, then decodes from pushes of `chunk` bytes.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msgs: &[T], chunk: usize) {
    let mut bytes = Vec::new();
    for m in msgs {
        encode(m, &mut bytes).unwrap();
    }
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut got = Vec::new();
    for piece in bytes.chunks(chunk) {
        dec.push(piece);
        while let Some(m) = dec.next::<T>().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, msgs);
    assert_eq!(dec.buffered(), 0);
}

/// A snapshot of `n` endpoints, as control sends it.
fn snapshot_frame(n: usize) -> Vec<u8> {
    let endpoints = (0..n)
        .map(|i| Endpoint {
            address: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 4143)),
            labels: [("version".to_string(), format!("v{}", i % 2))].into(),
            node: format!("host-{i:05}"),
            healthy: true,
        })
        .collect();
    let msg = ControlMsg::Snapshot(Snapshot {
        version: 12,
        config_version: 3,
        services: vec![ServiceEndpoints {
            name: "api".into(),
            port: None,
            addresses: Vec::new(),
            protocol: Protocol::Http,
            endpoints,
        }],
        ..Snapshot::default()
    });
    let mut frame = Vec::new();
    encode(&msg, &mut frame).unwrap();
    frame
}

fn decode_all(bytes: &[u8], chunk: usize) -> (Vec<ControlMsg>, u64) {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut got = Vec::new();
    for piece in bytes.chunks(chunk) {
        dec.push(piece);
        while let Some(m) = dec.next::<ControlMsg>().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(dec.buffered(), 0);
    (got, dec.compressed_frames())
}

#[test]
fn compressed_frames_decode_to_the_same_messages() {
    let plain = snapshot_frame(50);
    let small = {
        let mut f = Vec::new();
        encode(&ControlMsg::Deregistered, &mut f).unwrap();
        f
    };
    let packed = compress(&plain).unwrap().expect("worth compressing");
    // 50 endpoints: well under a third, so 1-2 datagrams instead of 5-6.
    assert!(
        packed.len() * 3 < plain.len(),
        "{} of {}",
        packed.len(),
        plain.len()
    );
    assert_ne!(packed[0] & 0x80, 0, "header flag");
    // Small frames stay as they are.
    assert_eq!(compress(&small).unwrap(), None);

    let (want, _) = decode_all(&plain, usize::MAX);
    let mut mixed = packed.clone();
    mixed.extend_from_slice(&small);
    mixed.extend_from_slice(&plain);
    mixed.extend_from_slice(&packed);
    for chunk in [usize::MAX, 1, 5, 700] {
        let (got, compressed) = decode_all(&mixed, chunk);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], want[0]);
        assert_eq!(got[1], ControlMsg::Deregistered);
        assert_eq!(got[2], want[0]);
        assert_eq!(got[3], want[0]);
        assert_eq!(compressed, 2);
    }
}

#[test]
fn bad_compressed_frames_are_refused() {
    let header = |len: usize| (len as u32 | COMPRESSED).to_be_bytes();
    let next = |bytes: &[u8], max: usize| {
        let mut dec = FrameDecoder::new(max);
        dec.push(bytes);
        dec.next::<ControlMsg>()
    };
    // Not zstd.
    let mut bytes = header(5).to_vec();
    bytes.extend_from_slice(b"hello");
    let e = next(&bytes, MAX_FRAME).unwrap_err();
    assert_eq!(e, FrameError::BadCompression("not a zstd frame".into()));

    // Expands past the limit: refused from the zstd header, before
    // anything is decompressed (a 1 MiB run of zeros is ~60 bytes).
    let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
    let mut bytes = header(bomb.len()).to_vec();
    bytes.extend_from_slice(&bomb);
    let e = next(&bytes, 4096).unwrap_err();
    assert!(
        e.to_string()
            .contains("expands to 1048576 bytes, over the limit of 4096"),
        "{e}"
    );

    // A compressed length over the limit is refused like a plain one.
    let e = next(&header(5000), 4096).unwrap_err();
    assert_eq!(
        e,
        FrameError::TooLarge {
            len: 5000,
            max: 4096
        }
    );

    // Truncated zstd data (content size present, blocks cut short).
    let packed = compress(&snapshot_frame(50)).unwrap().unwrap();
    let body = &packed[4..packed.len() - 10];
    let mut bytes = header(body.len()).to_vec();
    bytes.extend_from_slice(body);
    let e = next(&bytes, MAX_FRAME).unwrap_err();
    assert!(matches!(e, FrameError::BadCompression(_)), "{e}");

    // Valid zstd, not JSON.
    let junk = zstd::bulk::compress(b"not json at all", 3).unwrap();
    let mut bytes = header(junk.len()).to_vec();
    bytes.extend_from_slice(&junk);
    assert!(matches!(
        next(&bytes, MAX_FRAME),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn every_message_round_trips() {
    round_trip(&proxy_msgs(), usize::MAX);
    round_trip(&control_msgs(), usize::MAX);
}

#[test]
fn byte_at_a_time() {
    round_trip(&proxy_msgs(), 1);
    round_trip(&control_msgs(), 1);
    round_trip(&control_msgs(), 7);
}

#[test]
fn oversize_is_refused_from_the_header() {
    let mut dec = FrameDecoder::new(16);
    dec.push(&17u32.to_be_bytes());
    assert_eq!(
        dec.next::<ProxyMsg>(),
        Err(FrameError::TooLarge { len: 17, max: 16 })
    );
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(&u32::MAX.to_be_bytes());
    let e = dec.next::<ProxyMsg>().unwrap_err();
    assert!(matches!(e, FrameError::TooLarge { .. }));
    assert!(e.to_string().contains("over the limit"), "{e}");
}

#[test]
fn encode_refuses_oversize() {
    let mut out = vec![1, 2, 3];
    let big = ProxyMsg::Renew {
        csr_pem: "x".repeat(MAX_FRAME),
    };
    assert!(matches!(
        encode(&big, &mut out),
        Err(FrameError::TooLarge { max: MAX_FRAME, .. })
    ));
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn garbage_is_malformed() {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(&[0, 0, 0, 3, b'x', b'y', b'z']);
    let e = dec.next::<ProxyMsg>().unwrap_err();
    assert!(matches!(e, FrameError::Malformed(_)), "{e}");
    assert!(e.to_string().starts_with("malformed message: "), "{e}");

    // Valid JSON, unknown message type.
    let mut bytes = Vec::new();
    encode(&serde_json::json!({"type": "launch"}), &mut bytes).unwrap();
    dec.push(&bytes);
    let e = dec.next::<ProxyMsg>().unwrap_err();
    assert!(e.to_string().contains("unknown variant `launch`"), "{e}");

    // Empty frame.
    dec.push(&[0, 0, 0, 0]);
    assert!(matches!(
        dec.next::<ControlMsg>(),
        Err(FrameError::Malformed(_))
    ));
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn partial_frames_wait() {
    let mut bytes = Vec::new();
    encode(&ProxyMsg::Ack { version: 1 }, &mut bytes).unwrap();
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(&bytes[..2]);
    assert_eq!(dec.next::<ProxyMsg>(), Ok(None));
    dec.push(&bytes[2..bytes.len() - 1]);
    assert_eq!(dec.next::<ProxyMsg>(), Ok(None));
    assert_eq!(dec.buffered(), bytes.len() - 1);
    dec.push(&bytes[bytes.len() - 1..]);
    assert_eq!(
        dec.next::<ProxyMsg>(),
        Ok(Some(ProxyMsg::Ack { version: 1 }))
    );
}

#[test]
fn additive_fields_are_optional() {
    // An older proxy's Hello, without the defaulted fields.
    let mut bytes = Vec::new();
    encode(
        &serde_json::json!({"type": "hello", "protocol": 1, "service": "web", "node": "a"}),
        &mut bytes,
    )
    .unwrap();
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(&bytes);
    let Some(ProxyMsg::Hello {
        version,
        calls,
        compression,
        ..
    }) = dec.next().unwrap()
    else {
        panic!("not a hello")
    };
    assert_eq!((version, calls), (None, None));
    assert!(compression.is_empty());
    // And a Hello without compression is written as before.
    let hello = ProxyMsg::Hello {
        protocol: 1,
        service: "web".into(),
        node: "a".into(),
        version: None,
        calls: None,
        compression: Vec::new(),
    };
    assert_eq!(
        serde_json::to_string(&hello).unwrap(),
        r#"{"type":"hello","protocol":1,"service":"web","node":"a","version":null,"calls":null}"#
    );

    // An older control's snapshot, without policy or trust bundle.
    let mut bytes = Vec::new();
    encode(
        &serde_json::json!({"type": "snapshot", "version": 2, "config_version": 1, "services": []}),
        &mut bytes,
    )
    .unwrap();
    dec.push(&bytes);
    let Some(ControlMsg::Snapshot(s)) = dec.next().unwrap() else {
        panic!("not a snapshot")
    };
    assert_eq!(s.access_policy, None);
    assert_eq!(s.default_access, crate::resource::Access::Allow);
    assert!(s.trust_bundle.is_empty() && s.routes.is_empty());
    assert!(s.resilience.is_empty());
}

/// A proxy built before the traffic-management fields refuses unknown
/// fields in a Route; a Route that does not use them must serialize
/// exactly as before, so that such a proxy still applies it.
#[test]
fn routes_without_new_features_serialize_as_before() {
    let route = parse_documents(crate::resource::EXAMPLE)
        .unwrap()
        .into_iter()
        .find_map(|r| match r {
            Resource::Route(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let json = serde_json::to_string(&route).unwrap();
    assert_eq!(
        json,
        r#"{"name":"api-canary","service":"api","rules":[{"match":{"headers":{"x-canary":"true"}},"backends":[{"subset":{"version":"v2"},"weight":1}]},{"match":{"pathPrefix":"/"},"timeout":"2s","retries":{"attempts":2,"perTryTimeout":"500ms","on":["connect-failure","reset","5xx"]},"backends":[{"subset":{"version":"v1"},"weight":90},{"subset":{"version":"v2"},"weight":10}]}]}"#
    );
    // And the snapshot of a proxy no Resilience concerns has no new key.
    let snap = serde_json::to_value(Snapshot::default()).unwrap();
    assert!(snap.get("resilience").is_none(), "{snap}");
}

/// A snapshot that uses no interception field serializes without them, so
/// a proxy older than them reads exactly what it read before; and what an
/// older control sent reads with their defaults.
#[test]
fn interception_fields_are_absent_unless_used() {
    let snap = Snapshot {
        services: vec![ServiceEndpoints {
            name: "api".into(),
            port: None,
            addresses: Vec::new(),
            protocol: Protocol::Http,
            endpoints: vec![],
        }],
        ..Snapshot::default()
    };
    let json = serde_json::to_string(&snap).unwrap();
    for field in ["port", "addresses", "outbound_policy"] {
        assert!(!json.contains(field), "{field} in {json}");
    }
    let old = r#"{"version":1,"config_version":1,"services":[{"name":"api","endpoints":[]}]}"#;
    let read: Snapshot = serde_json::from_str(old).unwrap();
    assert_eq!(read.services[0].port, None);
    assert_eq!(read.outbound_policy, crate::resource::Access::Allow);
}
