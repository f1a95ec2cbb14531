//! Distributed tracing (issue 17, items 1 and 6): spans of a three-service
//! mesh reach a real OTLP/HTTP receiver (tests/py/otlp_receiver.py, which
//! decodes them with PyPI's opentelemetry-proto) as one trace whose parent
//! ids form the tree across the hops; a B3 request continues its trace; a
//! request its caller did not sample produces no span.
//!
//! ```text
//!  client ─▶ web proxy [out] ══mTLS══▶ api proxy [in] ─▶ "api" (the test,
//!   CLIENT span (root)       SERVER span        forwarding traceparent)
//!                                                 │
//!            api proxy [out] ══mTLS══▶ db proxy [in] ─▶ origin db
//!            CLIENT span                SERVER span
//!  every proxy ──OTLP/HTTP protobuf──▶ receiver (MeshConfig tracing, sampling 1.0)
//! ```
//!
//! The api app is played by the test: it reads the `traceparent` its
//! proxy forwarded and sends it on with its own call to db, as an
//! instrumented app does.

use std::collections::BTreeMap;
use std::time::Duration;

use coremesh_e2e::grpc::require_python;
use coremesh_e2e::util::wait_for;
use coremesh_e2e::{
    Control, ControlBuilder, Member, MeshProxy, Origin, Proxy, ProxyBuilder, PyApp, Request,
};

const CONVERGE: Duration = Duration::from_secs(30);
const SPANS_ARRIVE: Duration = Duration::from_secs(20);

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// One span as the receiver printed it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i64,
    attrs: BTreeMap<String, serde_json::Value>,
    events: Vec<String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&serde_json::Value> {
        self.attrs.get(key)
    }

    fn attr_str(&self, key: &str) -> &str {
        self.attr(key).and_then(|v| v.as_str()).unwrap_or("")
    }
}

struct Mesh {
    control: Control,
    receiver: PyApp,
    db_app: Origin,
    api_app: Origin,
    web: Proxy,
    api: Proxy,
    _db: Proxy,
    _members: Vec<Member>,
}

impl Mesh {
    /// Control, the receiver, db and api (proxy and app each) and web's
    /// proxy; the MeshConfig traces everything to the receiver.
    fn start(multiplex: bool) -> Mesh {
        let receiver = PyApp::start("otlp_receiver.py", "otlp");
        let control = ControlBuilder::new().start();
        let db_app = Origin::start("db");
        let api_app = Origin::start("api");
        let dbm = control.member("db", "db-1");
        let db = ProxyBuilder::new("db")
            .inbound(db_app.addr())
            .control(&control.section(&dbm))
            .start();
        let apim = control.member("api", "api-1");
        let api = ProxyBuilder::new("api")
            .inbound(api_app.addr())
            .outbound()
            .control(&control.section(&apim).calls(&["db"]))
            .start();
        let webm = control.member("web", "web-1");
        let web = ProxyBuilder::new("web")
            .upstream("multiplex", &multiplex.to_string())
            .outbound()
            .control(&control.section(&webm).calls(&["api"]))
            .start();
        let yaml = format!(
            "kind: Service\nname: web\n---\nkind: Service\nname: api\n---\nkind: Service\nname: db\n\
             ---\nkind: Route\nname: api-route\nservice: api\nrules:\n  - match: {{ pathPrefix: / }}\n    backends: [ {{ weight: 1 }} ]\n\
             ---\nkind: Route\nname: db-route\nservice: db\nrules:\n  - retries: {{ attempts: 2, on: [5xx] }}\n    backends: [ {{ weight: 1 }} ]\n\
             ---\nkind: MeshConfig\nname: mesh\ntracing: {{sampling: 1.0, collector: \"http://{}\"}}\n",
            receiver.addr()
        );
        let version = control.apply(&yaml);
        control.wait_converged(3, 2, version, CONVERGE);
        Mesh {
            control,
            receiver,
            db_app,
            api_app,
            web,
            api,
            _db: db,
            _members: vec![dbm, apim, webm],
        }
    }

    /// Every span the receiver got so far.
    fn spans(&self) -> Vec<Span> {
        self.receiver
            .log_text()
            .lines()
            .filter_map(|l| l.strip_prefix("SPAN "))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("span JSON");
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                Span {
                    service: s("service"),
                    trace_id: s("trace_id"),
                    span_id: s("span_id"),
                    parent: s("parent_span_id"),
                    name: s("name"),
                    kind: v["kind"].as_i64().unwrap_or(0),
                    attrs: v["attributes"]
                        .as_object()
                        .map(|o| o.clone().into_iter().collect())
                        .unwrap_or_default(),
                    events: v["events"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Waits until the receiver has `n` spans of `trace_id`.
    fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        wait_for(SPANS_ARRIVE, || {
            let spans: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            (spans.len() >= n).then_some(spans)
        })
        .unwrap_or_else(|| {
            panic!(
                "{n} spans of trace {trace_id} did not arrive; receiver got:\n{}\nweb: {}\napi: {}\ncontrol: {}",
                self.receiver.log_text(),
                self.web.log_tail(20),
                self.api.log_tail(20),
                self.control.log_tail(10)
            )
        })
    }

    /// web → api (the request `req` from the client), then, as the api
    /// app, api → db with the `traceparent` api's proxy forwarded. Returns
    /// the `traceparent`s the api and db apps received.
    fn call_chain(&self, req: Request) -> (String, String) {
        let before = self.api_app.requests();
        let r = self.web.outbound_client().request(&req.host("api"));
        assert_eq!(r.status, 200, "{r:?}");
        wait_for(Duration::from_secs(5), || {
            (self.api_app.requests() > before).then_some(())
        })
        .expect("api app got the request");
        let at_api = self.api_app.last();
        let tp = at_api
            .header("traceparent")
            .unwrap_or_else(|| panic!("api got no traceparent: {at_api:?}"))
            .to_string();
        let r = self
            .api
            .outbound_client()
            .request(&Request::get("/rows").host("db").header("traceparent", &tp));
        assert_eq!(r.status, 200, "{r:?}");
        let at_db = self.db_app.last();
        let tp_db = at_db
            .header("traceparent")
            .unwrap_or_else(|| panic!("db got no traceparent: {at_db:?}"))
            .to_string();
        (tp, tp_db)
    }
}

/// `00-{trace}-{span}-{flags}` → (trace, span, flags).
fn split_traceparent(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {tp:?}");
    assert_eq!(p[0], "00", "{tp}");
    assert_eq!((p[1].len(), p[2].len(), p[3].len()), (32, 16, 2), "{tp}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

fn one<'a>(spans: &'a [Span], service: &str, kind: i64) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "{service} kind {kind} in {spans:#?}");
    found[0]
}

fn check_tree(mesh: &Mesh, multiplex: bool) {
    let (at_api, at_db) = mesh.call_chain(Request::get("/hello?q=1"));
    let (trace, api_parent, flags) = split_traceparent(&at_api);
    assert_eq!(flags, "01", "sampling 1.0 samples new traces");
    let (db_trace, db_parent, _) = split_traceparent(&at_db);
    assert_eq!(db_trace, trace, "one trace id across the hops");

    let spans = mesh.wait_trace(&trace, 4);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let web_out = one(&spans, "web", CLIENT);
    let api_in = one(&spans, "api", SERVER);
    let api_out = one(&spans, "api", CLIENT);
    let db_in = one(&spans, "db", SERVER);
    // The tree: web's span is the root; each hop's span is the parent of
    // the next; each proxy's span is the parent of what it forwarded.
    assert_eq!(web_out.parent, "", "web's span is the root");
    assert_eq!(api_in.parent, web_out.span_id);
    assert_eq!(
        api_parent, api_in.span_id,
        "api's app got api's span as parent"
    );
    assert_eq!(api_out.parent, api_in.span_id);
    assert_eq!(db_in.parent, api_out.span_id);
    assert_eq!(db_parent, db_in.span_id);

    for s in [web_out, api_in, api_out, db_in] {
        assert_eq!(s.attr_str("http.request.method"), "GET", "{s:#?}");
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&200.into()),
            "{s:#?}"
        );
        assert_eq!(
            s.attr("http.request.resend_count"),
            Some(&0.into()),
            "{s:#?}"
        );
    }
    assert_eq!(web_out.attr_str("http.route"), "api-route");
    assert_eq!(web_out.name, "GET api-route");
    assert_eq!(web_out.attr_str("url.path"), "/hello");
    assert_eq!(web_out.attr_str("peer.service"), "api");
    assert_eq!(api_in.attr_str("peer.service"), "web");
    assert_eq!(db_in.attr_str("peer.service"), "api");
    assert_eq!(
        api_in.attr_str("network.protocol.version"),
        if multiplex { "2" } else { "1.1" }
    );
    // SPIFFE IDs of caller and callee on both sides of each hop.
    let id = |svc: &str| {
        let td = web_out
            .attr_str("coremesh.source.spiffe_id")
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or("")
            .to_string();
        format!("spiffe://{td}/service/{svc}")
    };
    assert_eq!(web_out.attr_str("coremesh.source.spiffe_id"), id("web"));
    assert_eq!(
        web_out.attr_str("coremesh.destination.spiffe_id"),
        id("api")
    );
    assert_eq!(api_in.attr_str("coremesh.source.spiffe_id"), id("web"));
    assert_eq!(api_in.attr_str("coremesh.destination.spiffe_id"), id("api"));
    assert_eq!(api_out.attr_str("coremesh.source.spiffe_id"), id("api"));
    assert_eq!(db_in.attr_str("coremesh.source.spiffe_id"), id("api"));
    assert_eq!(db_in.attr_str("coremesh.destination.spiffe_id"), id("db"));
    assert!(id("web").starts_with("spiffe://") && id("web").len() > "spiffe:///service/web".len());
    for s in [web_out, api_out] {
        assert!(
            s.events.iter().any(|e| e == "upstream_connected")
                && s.events.iter().any(|e| e == "first_byte"),
            "{s:#?}"
        );
    }
}

fn b3_continues_and_unsampled_is_not_recorded(mesh: &Mesh) {
    // Multi-header B3 from the client: its trace id and span go on.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let (at_api, _) = mesh.call_chain(
        Request::get("/b3")
            .header("X-B3-TraceId", b3_trace)
            .header("X-B3-SpanId", "a2fb4a1d1a96d312")
            .header("X-B3-Sampled", "1"),
    );
    assert_eq!(
        split_traceparent(&at_api).0,
        b3_trace,
        "the B3 trace goes on"
    );
    let spans = mesh.wait_trace(b3_trace, 4);
    let web_out = one(&spans, "web", CLIENT);
    assert_eq!(
        web_out.parent, "a2fb4a1d1a96d312",
        "the B3 span is the parent"
    );
    assert!(mesh.api_app.last().header("x-b3-traceid").is_none());

    // The single-header form too.
    let single = "80f198ee56343ba864fe8b2a57d3eff7";
    let (at_api, _) = mesh.call_chain(
        Request::get("/b3-single").header("b3", &format!("{single}-e457b5a2e4d86bd1-1")),
    );
    assert_eq!(split_traceparent(&at_api).0, single);
    mesh.wait_trace(single, 4);

    // A caller that did not sample: propagated as unsampled, no spans.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let (at_api, at_db) = mesh.call_chain(Request::get("/quiet").header(
        "traceparent",
        &format!("00-{unsampled}-b7ad6b7169203331-00"),
    ));
    let (t, _, flags) = split_traceparent(&at_api);
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));
    assert_eq!(split_traceparent(&at_db).2, "00");
    // A sampled request after it: once its spans are in, the unsampled
    // one's would have been too (each proxy exports in order).
    let (after, _) = mesh.call_chain(Request::get("/after"));
    mesh.wait_trace(&split_traceparent(&after).0, 4);
    let quiet: Vec<Span> = mesh
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == unsampled)
        .collect();
    assert!(quiet.is_empty(), "unsampled request recorded: {quiet:#?}");

    // A request the api proxy retried (db's next answer is a 503; db's
    // Route retries 5xx): its span counts the resend.
    mesh.db_app.fail_every(mesh.db_app.requests() as u64 + 1);
    let (retried, _) = mesh.call_chain(Request::get("/retried"));
    mesh.db_app.fail_every(0);
    // Five spans: db's proxy served two tries, both children of api's
    // client span.
    let spans = mesh.wait_trace(&split_traceparent(&retried).0, 5);
    let api_out = one(&spans, "api", CLIENT);
    let tries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "db" && s.kind == SERVER)
        .collect();
    assert_eq!(tries.len(), 2, "{spans:#?}");
    assert!(
        tries.iter().all(|t| t.parent == api_out.span_id),
        "{spans:#?}"
    );
    let mut statuses: Vec<i64> = tries
        .iter()
        .filter_map(|t| t.attr("http.response.status_code")?.as_i64())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
    assert_eq!(
        api_out.attr("http.request.resend_count"),
        Some(&1.into()),
        "{api_out:#?}"
    );
    assert_eq!(api_out.attr_str("http.route"), "db-route");
    let connected = api_out
        .events
        .iter()
        .filter(|e| *e == "upstream_connected")
        .count();
    assert_eq!(connected, 2, "one per try: {api_out:#?}");

    // The exporter's counters.
    let m = mesh.web.metrics();
    assert!(m.sum("coremesh_trace_spans_exported_total", &[]) >= 4.0);
    assert_eq!(
        m.sum(
            "coremesh_trace_spans_dropped_total",
            &[("reason", "export_failed")]
        ),
        0.0
    );
}

#[test]
fn spans_of_web_api_db_form_one_tree_at_a_real_otlp_receiver() {
    if !require_python(&[(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "opentelemetry-proto",
    )]) {
        return;
    }
    let mesh = Mesh::start(false);
    check_tree(&mesh, false);
    b3_continues_and_unsampled_is_not_recorded(&mesh);
}

/// The same over the multiplexed mesh hop: web's HTTP/1.1 requests go to
/// api's proxy as h2 streams (the h1→h2 and h2→h1 paths).
#[test]
fn spans_form_the_tree_over_the_multiplexed_hop() {
    if !require_python(&[(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "opentelemetry-proto",
    )]) {
        return;
    }
    let mesh = Mesh::start(true);
    check_tree(&mesh, true);

    // The MeshConfig changed alone reaches every proxy in a snapshot: at
    // sampling 0.0 a new trace goes out unsampled and records nothing.
    let version = mesh.control.apply(&format!(
        "kind: MeshConfig\nname: mesh\ntracing: {{sampling: 0.0, collector: \"http://{}\"}}\n",
        mesh.receiver.addr()
    ));
    mesh.control.wait_converged(3, 2, version, CONVERGE);
    let (at_api, at_db) = mesh.call_chain(Request::get("/unsampled-now"));
    let (trace, _, flags) = split_traceparent(&at_api);
    assert_eq!(flags, "00", "{at_api}");
    assert_eq!(split_traceparent(&at_db).2, "00");
    // A caller's sampled trace is still recorded (parent-based), and once
    // its spans are in, the unsampled trace's would be too.
    let sampled = "11111111111111111111111111111111";
    mesh.call_chain(
        Request::get("/sampled-by-caller")
            .header("traceparent", &format!("00-{sampled}-2222222222222222-01")),
    );
    mesh.wait_trace(sampled, 4);
    assert!(
        mesh.spans().iter().all(|s| s.trace_id != trace),
        "an unsampled trace was recorded"
    );
}

/// A proxy without control, traced by its own `[tracing]`: at sampling
/// 0.0 it records only what its caller sampled (parent-based), here a
/// gRPC call whose status the span carries.
#[test]
fn proxy_toml_tracing_records_a_sampled_grpc_call() {
    if !require_python(&[
        (
            "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
            "opentelemetry-proto",
        ),
        ("grpc", "grpcio"),
    ]) {
        return;
    }
    let receiver = PyApp::start("otlp_receiver.py", "otlp");
    let app = PyApp::grpc("api-1");
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[app.addr()])
        .extra(&format!(
            "[tracing]\nsampling = 0.0\ncollector = \"http://{}\"\n",
            receiver.addr()
        ))
        .start();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let run = coremesh_e2e::GrpcClient::new(web.outbound())
        .authority("api")
        .metadata("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))
        .run(&["status", "--code", "5"]);
    assert_eq!(run.calls()[0]["code_num"], 5, "{:?}", run.json);
    // Not sampled by its caller, at ratio 0.0: not recorded.
    let quiet = "5bf92f3577b34da6a3ce929d0e0e4736";
    coremesh_e2e::GrpcClient::new(web.outbound())
        .authority("api")
        .metadata("traceparent", &format!("00-{quiet}-00f067aa0ba902b7-00"))
        .run(&["unary"]);
    let spans = wait_for(SPANS_ARRIVE, || {
        let log = receiver.log_text();
        log.lines()
            .filter_map(|l| l.strip_prefix("SPAN "))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["trace_id"] == trace)
    })
    .unwrap_or_else(|| {
        panic!(
            "no span; receiver: {}\nweb: {}",
            receiver.log_text(),
            web.log_tail(20)
        )
    });
    assert_eq!(spans["service"], "web");
    assert_eq!(spans["kind"], CLIENT);
    assert_eq!(spans["parent_span_id"], "00f067aa0ba902b7");
    let a = &spans["attributes"];
    assert_eq!(a["rpc.system"], "grpc");
    assert_eq!(a["rpc.grpc.status_code"], 5);
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["network.protocol.version"], "2");
    assert_eq!(a["peer.service"], "api");
    // Give the unsampled call's span (if any) the same second to arrive.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !receiver.log_text().contains(quiet),
        "an unsampled call was recorded: {}",
        receiver.log_text()
    );
}

/// A collector that cannot be reached costs the requests nothing; the
/// spans are dropped and counted.
#[test]
fn an_unreachable_collector_drops_and_counts_spans() {
    let app = Origin::start("api");
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let web = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[app.addr()])
        .extra(&format!(
            "[tracing]\nsampling = 1.0\ncollector = \"http://{closed}\"\n"
        ))
        .start();
    let mut c = web.outbound_client();
    for _ in 0..20 {
        let r = c.request(&Request::get("/x").host("api"));
        assert_eq!(r.status, 200);
        assert!(app
            .last()
            .header("traceparent")
            .is_some_and(|t| t.ends_with("-01")));
    }
    let m = wait_for(Duration::from_secs(15), || {
        let m = web.metrics();
        (m.sum(
            "coremesh_trace_spans_dropped_total",
            &[("reason", "export_failed")],
        ) >= 20.0)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("{}", web.admin_get("/metrics").body_str()));
    assert!(m.sum("coremesh_trace_export_errors_total", &[]) >= 1.0);
    assert_eq!(m.sum("coremesh_trace_spans_exported_total", &[]), 0.0);
}
