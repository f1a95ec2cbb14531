//! An HTTP/1.1 request to an upstream that speaks only h2c (`[inbound]
//! app_protocol = "h2c"`, or a static service's `protocol = "h2c"`): the
//! request goes out as an h2 stream on the shard's pooled h2 connections,
//! and the answer comes back as HTTP/1.1.
//!
//! Translation: `Host` becomes `:authority`; a Content-Length or chunked
//! body becomes DATA (the chunked framing is removed; its trailer section
//! becomes a trailing HEADERS frame, without the fields RFC 9110 6.5.1
//! keeps out of trailers); fields that belong to one connection are
//! dropped both ways. The answer keeps its Content-Length when it has
//! one, else it goes chunked (with the upstream's trailers) to an HTTP/1.1
//! client and delimited by the close to an HTTP/1.0 one.
//!
//! One try: a failed connect moves to the next endpoint, nothing else is
//! retried.

use std::cell::Cell;

use bytes::Bytes;

use super::h2::{send_all, upstream::connection};
use super::*;
use crate::attempt::{after, TryPolicy};
use crate::error::Answer;
use crate::shard::h2pool::StreamSlot;

/// Request fields that belong to the HTTP/1.1 connection (or are carried
/// by h2 pseudo-headers).
const REQUEST_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "trailer",
    "expect",
];

/// How the answer's body is framed towards the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length,
    Chunked,
    UntilClose,
}

impl RequestCtx<'_, '_> {
    /// Serves the request through an h2c upstream.
    pub(super) async fn via_h2(
        &mut self,
        mut cbuf: Buf,
        endpoints: Endpoints<'_>,
        policy: TryPolicy,
        key: Option<u64>,
    ) -> (Next, Buf) {
        let deadline = after(self.ex.start, policy.total);
        let Some((req, hop)) = self.h2_request(&cbuf) else {
            let answer = Answer::Refused {
                status: 400,
                reason: "request fields cannot be carried over HTTP/2",
            };
            return self.answer_and_close(answer, cbuf).await;
        };
        let up = match self.h2_connect(&endpoints, key, deadline).await {
            Ok(up) => up,
            Err(kind) => return self.answer(Answer::Error(kind), cbuf).await,
        };
        let slot = StreamSlot::new(up);
        let eos = self.head.framing == Framing::None;
        let ready = runtime::timeout_at(deadline, slot.conn().send.clone().ready()).await;
        let Ok(Ok(mut send)) = ready else {
            return self
                .answer(Answer::Error(ErrorKind::UpstreamReset), cbuf)
                .await;
        };
        let Ok((resp_fut, mut up_send)) = send.send_request(req, eos) else {
            return self
                .answer(Answer::Error(ErrorKind::UpstreamReset), cbuf)
                .await;
        };
        // The head is carried; what follows it in the buffer is the body
        // (and maybe the next request).
        consume(&mut cbuf, self.head.head_len);
        let mut body_whole = true;
        if !eos {
            if self.head.expect_continue && self.head.version == Version::Http11 {
                let cont = super::answer::CONTINUE.to_vec();
                if write_bounded(self.client, cont, self.ex.idle)
                    .await
                    .is_err()
                {
                    return (Next::Close, cbuf);
                }
            }
            let (b, whole) = self.h2_body(cbuf, &mut up_send, &hop).await;
            cbuf = b;
            body_whole = whole;
        }
        let resp = match runtime::timeout_at(deadline, resp_fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!("h2c upstream failed the request: {e}");
                return self
                    .answer_and_close(Answer::Error(ErrorKind::UpstreamReset), cbuf)
                    .await;
            }
            Err(_) => {
                return self
                    .answer_and_close(Answer::Error(ErrorKind::UpstreamTimeout), cbuf)
                    .await
            }
        };
        self.h2_response(resp, cbuf, body_whole).await
    }

    /// The request head as an h2 request, and the field names its
    /// Connection header makes this hop's (left out of trailers too).
    fn h2_request(&self, cbuf: &Buf) -> Option<(http::Request<()>, Vec<String>)> {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut fields);
        parsed.parse(&cbuf[..self.head.head_len]).ok()?;
        let authority = self
            .head
            .authority
            .clone()
            .map(|s| &cbuf[s])
            .and_then(|a| std::str::from_utf8(a).ok())
            .unwrap_or("localhost");
        let path = std::str::from_utf8(&cbuf[self.head.path.clone()]).ok()?;
        let path = if path.starts_with('/') { path } else { "/" };
        let uri: http::Uri = format!("http://{authority}{path}").parse().ok()?;
        let method = http::Method::from_bytes(self.head.method_bytes(cbuf)).ok()?;
        let mut req = http::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        // Fields the Connection header names are this hop's too.
        let named: Vec<String> = parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
            .collect();
        let identity = self.identity_field();
        let h = req.headers_mut();
        for f in parsed.headers.iter() {
            let name = f.name.to_ascii_lowercase();
            if REQUEST_HOP.contains(&name.as_str())
                || named.contains(&name)
                || identity == Some(name.as_str())
                || (name == "te" && !f.value.eq_ignore_ascii_case(b"trailers"))
            {
                continue;
            }
            let name = http::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = http::header::HeaderValue::from_bytes(f.value).ok()?;
            h.append(name, value);
        }
        if let (Some(name), Some(id)) = (identity, self.client.peer_id()) {
            let name = http::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
            h.insert(name, http::header::HeaderValue::from_str(id).ok()?);
        }
        Some((req, named))
    }

    /// The field that carries the caller's identity to the app (inbound):
    /// the proxy sets it, so the client's own is dropped.
    fn identity_field(&self) -> Option<&str> {
        (self.dir == Direction::Inbound)
            .then(|| self.cfg.inbound.as_ref()?.identity_header.as_deref())
            .flatten()
    }

    /// The trailer section of a finished chunked body as h2 trailers,
    /// without the fields that may not be trailers (RFC 9110 6.5.1), the
    /// ones the request's Connection header names, and the identity
    /// field. `None` when nothing is left: the body ends with DATA.
    fn h2_trailers(&self, dec: &ChunkedDecoder, hop: &[String]) -> Option<http::HeaderMap> {
        let identity = self.identity_field();
        let mut out = http::HeaderMap::new();
        for (name, value) in dec.trailers() {
            let dropped = http1::is_prohibited_trailer(name)
                || hop.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
                || identity.is_some_and(|i| name.eq_ignore_ascii_case(i.as_bytes()));
            if dropped {
                continue;
            }
            // The codec accepted both (a token, visible bytes and
            // whitespace); `http` lowercases the name as h2 wants.
            let (Ok(name), Ok(value)) = (
                http::header::HeaderName::from_bytes(name),
                http::header::HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            out.append(name, value);
        }
        (!out.is_empty()).then_some(out)
    }

    /// A connection to one of the endpoints (the next one when connecting
    /// fails).
    async fn h2_connect(
        &mut self,
        endpoints: &Endpoints<'_>,
        key: Option<u64>,
        deadline: Instant,
    ) -> Result<std::rc::Rc<crate::shard::h2pool::H2Up>, ErrorKind> {
        let shard = self.shard;
        let mut tried = upstream::Tried::default();
        let mut last = ErrorKind::ConnectFailed;
        for _ in 0..endpoints.count().min(CONNECT_ATTEMPTS) {
            let now = Instant::now();
            let (addr, backend) = endpoints.pick(shard, &tried, key, now);
            tried.note(addr, backend);
            self.ex.upstream = Some(addr);
            match connection(shard, self.cfg, addr, endpoints.mtls(), deadline).await {
                Ok(up) => return Ok(up),
                Err(e) => {
                    if endpoints.tracked() {
                        shard.outcomes.record(addr, false);
                        shard.endpoint_outcome(addr, Some(e.kind), Instant::now());
                    }
                    last = e.kind;
                }
            }
        }
        Err(last)
    }

    /// Sends the request body as DATA: what `cbuf` holds, then what the
    /// client still sends, then a chunked body's trailers. Returns the
    /// buffer (with any bytes after the body: the next request) and
    /// whether the whole body was read; when the upstream stops taking it
    /// (an early answer), the rest is not read.
    async fn h2_body(
        &mut self,
        mut cbuf: Buf,
        to: &mut ::h2::SendStream<Bytes>,
        hop: &[String],
    ) -> (Buf, bool) {
        let last = Cell::new(Instant::now());
        let mut left = match self.head.framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut dec = ChunkedDecoder::keeping_trailers();
        let chunked = self.head.framing == Framing::Chunked;
        loop {
            let (data, used) = if chunked {
                let mut spans = Vec::new();
                let used = match dec.feed_with(&cbuf, |r| spans.push(r)) {
                    Ok(u) => u,
                    Err(_) => return (cbuf, false),
                };
                let mut data = Vec::new();
                for r in spans {
                    data.extend_from_slice(&cbuf[r]);
                }
                (data, used)
            } else {
                let take = (cbuf.len() as u64).min(left) as usize;
                left -= take as u64;
                (cbuf[..take].to_vec(), take)
            };
            consume(&mut cbuf, used);
            self.ex.bytes_in += used as u64;
            let done = if chunked { dec.is_done() } else { left == 0 };
            let trailers = done.then(|| self.h2_trailers(&dec, hop)).flatten();
            let end = done && trailers.is_none();
            if (done || !data.is_empty())
                && send_all(to, Bytes::from(data), &last, end).await.is_err()
            {
                return (cbuf, false);
            }
            if let Some(t) = trailers {
                if let Err(e) = to.send_trailers(t) {
                    tracing::debug!("h2c upstream did not take the request trailers: {e}");
                    return (cbuf, false);
                }
            }
            if done {
                return (cbuf, true);
            }
            if cbuf.capacity() - cbuf.len() < 4096 {
                cbuf.reserve(16 * 1024);
            }
            let read = runtime::timeout(self.ex.idle, self.client.read(cbuf)).await;
            let (res, back) = match read {
                Ok(r) => r,
                Err(_) => return (Vec::new(), false),
            };
            cbuf = back;
            match res {
                Ok(0) | Err(_) => return (cbuf, false),
                Ok(_) => {}
            }
        }
    }

    /// Relays the h2 answer as HTTP/1.1.
    async fn h2_response(
        &mut self,
        resp: http::Response<::h2::RecvStream>,
        cbuf: Buf,
        body_whole: bool,
    ) -> (Next, Buf) {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        self.ex.status = status;
        let no_body = self.head.method == Method::Head || status == 204 || status == 304;
        let length = parts.headers.get(http::header::CONTENT_LENGTH).is_some();
        let out = if no_body {
            Out::None
        } else if length {
            Out::Length
        } else if self.head.version == Version::Http11 {
            Out::Chunked
        } else {
            Out::UntilClose
        };
        let close = !self.head.keep_alive || !body_whole || out == Out::UntilClose;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(
            format!("HTTP/1.1 {status} {}\r\n", http1::reason_phrase(status)).as_bytes(),
        );
        for (name, value) in &parts.headers {
            if matches!(
                name.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "trailer"
            ) || (self.dir == Direction::Inbound && name.as_str() == "coremesh-error")
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if out == Out::Chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");
        self.ex.bytes_out += head.len() as u64;
        if write_bounded(self.client, head, self.ex.idle)
            .await
            .is_err()
        {
            return (Next::Close, cbuf);
        }
        let relayed = if out == Out::None {
            Ok(())
        } else {
            self.h2_body_out(&mut body, out).await
        };
        self.ex.end = Some(Instant::now());
        match relayed {
            Ok(()) if !close => (Next::KeepAlive, cbuf),
            _ => (Next::Close, cbuf),
        }
    }

    /// Relays the answer's DATA (and trailers, when chunked).
    async fn h2_body_out(&mut self, body: &mut ::h2::RecvStream, out: Out) -> Result<(), ()> {
        loop {
            let next = runtime::timeout(self.ex.idle, body.data()).await;
            let chunk = match next {
                Err(_) | Ok(Some(Err(_))) => return Err(()),
                Ok(None) => break,
                Ok(Some(Ok(c))) => c,
            };
            let n = chunk.len();
            let mut w = Vec::with_capacity(n + 16);
            if out == Out::Chunked {
                if n == 0 {
                    continue;
                }
                w.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                w.extend_from_slice(&chunk);
                w.extend_from_slice(b"\r\n");
            } else {
                w.extend_from_slice(&chunk);
            }
            self.ex.bytes_out += w.len() as u64;
            write_bounded(self.client, w, self.ex.idle)
                .await
                .map_err(|_| ())?;
            let _ = body.flow_control().release_capacity(n);
        }
        if out != Out::Chunked {
            return Ok(());
        }
        let trailers = body.trailers().await.ok().flatten();
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.ex.bytes_out += end.len() as u64;
        write_bounded(self.client, end, self.ex.idle)
            .await
            .map_err(|_| ())
    }
}
