//! Span export over OTLP/HTTP with protobuf, on the agent thread.
//!
//! The shards hand their finished spans over in batches on a bounded
//! channel (crate::trace::Tracer); this task queues them (at most
//! [`MAX_QUEUE`], beyond which they are dropped and counted as
//! `queue_full`) and POSTs them to `<collector>/v1/traces` as an
//! `ExportTraceServiceRequest` (the `opentelemetry-proto` crate's
//! generated messages, encoded by prost), [`MAX_BATCH`] at a time or
//! every [`EVERY`]. A failed export drops its spans (`export_failed`):
//! spans are telemetry, and retrying them would grow the queue while the
//! collector is down. Nothing here is on the request path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

use crate::stats::Direction;
use crate::trace::{Dropped, SpanBatch, SpanRecord, TRACE_STATS};

/// Spans per export request.
pub const MAX_BATCH: usize = 512;
/// Spans waiting for export; more are dropped (`queue_full`).
pub const MAX_QUEUE: usize = 4096;
/// A partial batch goes out after this long.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long one export may take (connect, send, answer).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("collector {0:?} is not an http:// URL")]
    Url(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("HTTP exchange with {0} failed: {1}")]
    Http(String, hyper::Error),
    #[error("the collector at {0} answered {1}")]
    Status(String, http::StatusCode),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
}

/// Runs the exporter until the shards' channel closes.
pub async fn export(rx: async_channel::Receiver<SpanBatch>) {
    let mut queue: Vec<SpanRecord> = Vec::new();
    // Where the queued spans go, and whose they are.
    let mut dest: Option<(Arc<str>, Arc<str>)> = None;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Ok(batch) = batch else { break };
                let same = dest
                    .as_ref()
                    .is_some_and(|(c, s)| *c == batch.collector && *s == batch.service);
                if !same {
                    if let Some((c, s)) = &dest {
                        send_all(c, s, &mut queue).await;
                    }
                    dest = Some((batch.collector.clone(), batch.service.clone()));
                }
                let mut spans = batch.spans;
                let room = MAX_QUEUE.saturating_sub(queue.len());
                if spans.len() > room {
                    TRACE_STATS.dropped(Dropped::QueueFull, (spans.len() - room) as u64);
                    spans.truncate(room);
                }
                queue.extend(spans);
                if queue.len() >= MAX_BATCH {
                    if let Some((c, s)) = &dest {
                        send_all(c, s, &mut queue).await;
                    }
                }
            }
            _ = tick.tick() => {
                if let Some((c, s)) = &dest {
                    send_all(c, s, &mut queue).await;
                }
            }
        }
    }
}

/// Exports every queued span, [`MAX_BATCH`] per request.
async fn send_all(collector: &str, service: &str, queue: &mut Vec<SpanRecord>) {
    while !queue.is_empty() {
        let n = queue.len().min(MAX_BATCH);
        let spans: Vec<SpanRecord> = queue.drain(..n).collect();
        let body = request(service, spans).encode_to_vec();
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(collector, body)).await;
        let res = sent
            .unwrap_or_else(|_| Err(ExportError::Timeout(collector.to_string(), EXPORT_TIMEOUT)));
        match res {
            Ok(()) => TRACE_STATS.exported(n as u64),
            Err(e) => {
                TRACE_STATS.export_error();
                TRACE_STATS.dropped(Dropped::ExportFailed, n as u64);
                crate::lograte::log_limited!(
                    tracing::Level::WARN,
                    "span export failed, {n} spans dropped: {e}"
                );
            }
        }
    }
}

/// One POST of an encoded `ExportTraceServiceRequest` on a connection of
/// its own (at most one a second, or one per full batch).
async fn post(collector: &str, body: Vec<u8>) -> Result<(), ExportError> {
    let url = format!("{collector}/v1/traces");
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ExportError::Url(collector.to_string()))?;
    let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
        return Err(ExportError::Url(collector.to_string()));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| ExportError::Connect(authority.to_string(), e))?;
    let _ = tcp.set_nodelay(true);
    let http_err = |e| ExportError::Http(authority.to_string(), e);
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(http_err)?;
    let driver = tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/v1/traces", |p| p.as_str());
    let req = http::Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ExportError::Url(collector.to_string()))?;
    let res = async {
        let resp = send.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        // The answer's body (an ExportTraceServiceResponse) is read and
        // dropped: partial success is not reported per span.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(ExportError::Status(authority.to_string(), status))
        }
    }
    .await;
    drop(send);
    driver.abort();
    res
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

/// The service a SPIFFE ID names (`spiffe://td/service/NAME`).
fn service_of(id: &str) -> Option<&str> {
    id.rsplit_once("/service/").map(|(_, s)| s)
}

/// The OTLP span of a record, with the OpenTelemetry HTTP and RPC
/// semantic-convention attributes and coremesh's own.
pub fn to_otlp(r: SpanRecord) -> Span {
    let server = r.dir == Direction::Inbound;
    let mut a = Vec::with_capacity(16);
    a.push(kv("http.request.method", s(&r.method)));
    let path = r.path.split('?').next().unwrap_or("");
    a.push(kv("url.path", s(path)));
    if let Some(route) = &r.route {
        a.push(kv("http.route", s(route)));
    }
    if r.status != 0 {
        a.push(kv("http.response.status_code", i(i64::from(r.status))));
    }
    if let Some(g) = r.grpc_status {
        a.push(kv("rpc.system", s("grpc")));
        a.push(kv("rpc.grpc.status_code", i(i64::from(g))));
    }
    let (version, name) = match r.protocol {
        "HTTP/2" => ("2", "http"),
        "HTTP/1.0" => ("1.0", "http"),
        _ => ("1.1", "http"),
    };
    a.push(kv("network.protocol.name", s(name)));
    a.push(kv("network.protocol.version", s(version)));
    // The peer: the caller inbound (by its identity), the service called
    // outbound.
    let peer = if server {
        r.source_id.as_deref().and_then(service_of)
    } else {
        Some(r.service.as_str())
    };
    if let Some(p) = peer {
        a.push(kv("peer.service", s(p)));
    }
    if !server {
        a.push(kv("server.address", s(&r.service)));
    }
    if let Some(u) = r.upstream {
        a.push(kv("network.peer.address", s(&u.ip().to_string())));
        a.push(kv("network.peer.port", i(i64::from(u.port()))));
        if !server {
            a.push(kv("server.port", i(i64::from(u.port()))));
        }
    }
    if let Some(id) = &r.source_id {
        a.push(kv("coremesh.source.spiffe_id", s(id)));
    }
    if let Some(id) = &r.destination_id {
        a.push(kv("coremesh.destination.spiffe_id", s(id)));
    }
    a.push(kv("coremesh.direction", s(r.dir.as_str())));
    a.push(kv("coremesh.service", s(&r.service)));
    a.push(kv("http.request.resend_count", i(i64::from(r.resends))));
    // Semantic conventions: 5xx is an error for both kinds, 4xx only for
    // the client; any gRPC status but OK is one.
    let failed = r.status == 0
        || r.status >= 500
        || (!server && r.status >= 400)
        || r.grpc_status.is_some_and(|g| g != 0);
    let status = Status {
        code: if failed {
            status::StatusCode::Error as i32
        } else {
            status::StatusCode::Unset as i32
        },
        message: String::new(),
    };
    let name = match &r.route {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.clone(),
    };
    Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        trace_state: r.tracestate,
        parent_span_id: if r.parent == [0; 8] {
            Vec::new()
        } else {
            r.parent.to_vec()
        },
        flags: 1,
        name,
        kind: if server {
            span::SpanKind::Server as i32
        } else {
            span::SpanKind::Client as i32
        },
        start_time_unix_nano: r.start_unix_nanos,
        end_time_unix_nano: r.end_unix_nanos,
        attributes: a,
        events: r
            .events
            .iter()
            .map(|(name, t)| span::Event {
                time_unix_nano: *t,
                name: name.to_string(),
                ..Default::default()
            })
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

/// The export request of one service's spans.
pub fn request(service: &str, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(service)),
                    kv("telemetry.sdk.name", s("coremesh-proxy")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "coremesh-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.into_iter().map(to_otlp).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests;
