//! Answers the proxy makes itself on an HTTP/2 stream: the same
//! [`Answer`]s as HTTP/1.1 (forward/answer.rs), with the same status and
//! `coremesh-error`; for a gRPC call, a gRPC error instead (HTTP 200, a
//! trailers-only response with `grpc-status` and `grpc-message`), since
//! gRPC clients read the call's status there, not in the HTTP status.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use crate::error::Answer;
use crate::grpc;

pub(super) const COREMESH_ERROR: HeaderName = HeaderName::from_static("coremesh-error");
pub(super) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(super) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A header value from text the proxy wrote (visible ASCII; anything else
/// is replaced, so building the value cannot fail).
fn text_value(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("error"))
}

/// The response head for `answer`, and its body (`None`: the head ends
/// the stream, as a gRPC error's does).
pub(super) fn local_response(
    answer: &Answer<'_>,
    is_grpc: bool,
) -> (http::Response<()>, Option<Bytes>) {
    let reason = answer.reason();
    if is_grpc {
        let code = grpc::answer_code(answer);
        let mut r = http::Response::new(());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(GRPC_STATUS, HeaderValue::from(u16::from(code.as_u8())));
        if !reason.is_empty() {
            h.insert(GRPC_MESSAGE, text_value(&grpc::encode_message(&reason)));
            h.insert(COREMESH_ERROR, text_value(&reason));
        }
        return (r, None);
    }
    let status = http::StatusCode::from_u16(answer.status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    let body = match *answer {
        Answer::Probe { healthy } => {
            let body = match healthy {
                Some(true) => "{\"app\":\"healthy\"}\n",
                Some(false) => "{\"app\":\"unhealthy\"}\n",
                None => "{\"app\":\"unchecked\"}\n",
            };
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Bytes::from_static(body.as_bytes())
        }
        _ => {
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(COREMESH_ERROR, text_value(&reason));
            Bytes::from(format!("coremesh: {reason}\n"))
        }
    };
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    (r, Some(body))
}

/// Sends `answer` on the stream (what could not be sent is dropped: the
/// client reset the stream or went away).
pub(super) fn send_local(
    respond: &mut h2::server::SendResponse<Bytes>,
    answer: &Answer<'_>,
    is_grpc: bool,
) -> u64 {
    let (head, body) = local_response(answer, is_grpc);
    match body {
        None => {
            let _ = respond.send_response(head, true);
            0
        }
        Some(body) => {
            let len = body.len() as u64;
            if let Ok(mut s) = respond.send_response(head, false) {
                let _ = s.send_data(body, true);
            }
            len
        }
    }
}
