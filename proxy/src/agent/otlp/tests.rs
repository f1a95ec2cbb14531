//! The OTLP message of a span: ids, kinds, attributes, events, status,
//! through a prost encode and decode.

use super::*;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;

fn record(dir: Direction) -> SpanRecord {
    SpanRecord {
        trace_id: [7; 16],
        span_id: [2; 8],
        parent: [1; 8],
        tracestate: "k=v".into(),
        dir,
        start_unix_nanos: 1_000,
        end_unix_nanos: 5_000,
        method: "POST".into(),
        path: "/v1/items?page=2".into(),
        protocol: "HTTP/2",
        route: Some("api-route".into()),
        service: "api".into(),
        status: 200,
        grpc_status: Some(5),
        source_id: Some("spiffe://mesh.local/service/web".into()),
        destination_id: Some("spiffe://mesh.local/service/api".into()),
        resends: 1,
        upstream: Some("10.0.0.8:4143".parse().unwrap()),
        events: vec![("upstream_connected", 2_000), ("first_byte", 3_000)],
    }
}

fn attr<'a>(s: &'a OtlpSpan, key: &str) -> Option<&'a any_value::Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

#[test]
fn a_client_span_encodes_with_its_attributes() {
    let body = request("web", vec![record(Direction::Outbound)]).encode_to_vec();
    let back = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    let rs = &back.resource_spans[0];
    let service = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(service.key, "service.name");
    let s = &rs.scope_spans[0].spans[0];
    assert_eq!(s.trace_id, vec![7; 16]);
    assert_eq!(
        (s.span_id.clone(), s.parent_span_id.clone()),
        (vec![2; 8], vec![1; 8])
    );
    assert_eq!(s.kind, span::SpanKind::Client as i32);
    assert_eq!(s.name, "POST api-route");
    assert_eq!(s.trace_state, "k=v");
    assert_eq!(
        (s.start_time_unix_nano, s.end_time_unix_nano),
        (1_000, 5_000)
    );
    assert_eq!(attr(s, "url.path"), Some(&s_("/v1/items")));
    assert_eq!(attr(s, "http.response.status_code"), Some(&i(200)));
    assert_eq!(attr(s, "rpc.grpc.status_code"), Some(&i(5)));
    assert_eq!(attr(s, "http.request.resend_count"), Some(&i(1)));
    assert_eq!(attr(s, "peer.service"), Some(&s_("api")));
    assert_eq!(attr(s, "server.port"), Some(&i(4143)));
    assert_eq!(attr(s, "network.protocol.version"), Some(&s_("2")));
    let events: Vec<&str> = s.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["upstream_connected", "first_byte"]);
    // gRPC NOT_FOUND: an error.
    assert_eq!(
        s.status.as_ref().unwrap().code,
        status::StatusCode::Error as i32
    );
}

#[test]
fn a_root_server_span_names_its_caller() {
    let mut r = record(Direction::Inbound);
    r.parent = [0; 8];
    r.grpc_status = None;
    r.route = None;
    r.status = 404;
    let s = to_otlp(r);
    assert!(s.parent_span_id.is_empty());
    assert_eq!(s.kind, span::SpanKind::Server as i32);
    assert_eq!(s.name, "POST");
    assert_eq!(attr(&s, "peer.service"), Some(&s_("web")));
    assert_eq!(attr(&s, "server.address"), None);
    // A 404 is no server error.
    assert_eq!(s.status.unwrap().code, status::StatusCode::Unset as i32);
}

fn s_(v: &str) -> any_value::Value {
    s(v)
}
