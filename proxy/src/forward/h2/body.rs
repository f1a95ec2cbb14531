//! Moving DATA and trailers between two streams with flow control at both
//! ends: a chunk is released to its sender's window only once the other
//! side's window took it, so a slow reader anywhere holds at most a
//! window's worth per stream in the proxy.
//!
//! The request body is also kept ([`ReqBody`]) while it fits the route's
//! retry limit, so that a retry (before any response byte went to the
//! client) sends it again and then goes on with what the client still
//! sends.

use std::cell::Cell;
use std::time::Instant;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;

use super::{race, Either};

/// Why moving a body stopped.
#[derive(Debug)]
pub(in crate::forward) enum Stop {
    /// The sending side reset its stream (or its connection failed).
    From(h2::Error),
    /// The receiving side reset its stream (or its connection failed).
    To,
}

/// Sends all of `chunk`, as the receiver's window allows; with `end`, its
/// last frame ends the stream (an empty `chunk` then sends an empty final
/// frame). `Err`: the receiving stream is gone.
pub(in crate::forward) async fn send_all(
    to: &mut SendStream<Bytes>,
    mut chunk: Bytes,
    last: &Cell<Instant>,
    end: bool,
) -> Result<(), Stop> {
    if chunk.is_empty() {
        if end {
            to.send_data(chunk, true).map_err(|_| Stop::To)?;
        }
        return Ok(());
    }
    while !chunk.is_empty() {
        to.reserve_capacity(chunk.len());
        let cap = match std::future::poll_fn(|cx| to.poll_capacity(cx)).await {
            Some(Ok(c)) => c,
            Some(Err(_)) => return Err(Stop::To),
            None => return Err(Stop::To),
        };
        if cap == 0 {
            continue;
        }
        let part = chunk.split_to(cap.min(chunk.len()));
        to.send_data(part, end && chunk.is_empty())
            .map_err(|_| Stop::To)?;
        last.set(Instant::now());
    }
    Ok(())
}

/// Ends the receiving stream: with `trailers`, or an empty final DATA.
fn finish(to: &mut SendStream<Bytes>, trailers: Option<HeaderMap>) -> Result<(), Stop> {
    match trailers {
        Some(t) => to.send_trailers(t),
        None => to.send_data(Bytes::new(), true),
    }
    .map_err(|_| Stop::To)
}

/// Waits for the next DATA chunk from `from` while watching `to` for a
/// reset. `Ok(None)`: the body ended.
async fn next_chunk(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
) -> Result<Option<Bytes>, Stop> {
    let data = std::pin::pin!(from.data());
    let reset = std::pin::pin!(std::future::poll_fn(|cx| to.poll_reset(cx)));
    match race(data, reset).await {
        Either::Left(None) => Ok(None),
        Either::Left(Some(Ok(b))) => Ok(Some(b)),
        Either::Left(Some(Err(e))) => Err(Stop::From(e)),
        Either::Right(_) => Err(Stop::To),
    }
}

/// Relays a response body (and its trailers) from `from` to `to`.
/// Returns the DATA bytes moved.
pub(super) async fn relay(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    last: &Cell<Instant>,
    moved: &Cell<u64>,
) -> Result<Option<HeaderMap>, Stop> {
    while let Some(chunk) = next_chunk(from, to).await? {
        let n = chunk.len();
        // The sender's END_STREAM came with this chunk (no trailers
        // follow): the last frame ends the client's stream too, rather
        // than an empty frame after it.
        let end = from.is_end_stream();
        send_all(to, chunk, last, end).await?;
        moved.set(moved.get() + n as u64);
        let _ = from.flow_control().release_capacity(n);
        if end {
            return Ok(None);
        }
    }
    let trailers = std::future::poll_fn(|cx| from.poll_trailers(cx))
        .await
        .map_err(Stop::From)?;
    finish(to, trailers.clone())?;
    last.set(Instant::now());
    Ok(trailers)
}

/// A request body as a retry needs it: what arrived so far, kept while it
/// fits `limit`, and the stream for the rest.
pub(super) struct ReqBody {
    recv: RecvStream,
    /// The client ended its body (trailers, if any, in `trailers`).
    done: bool,
    trailers: Option<HeaderMap>,
    kept: Vec<Bytes>,
    kept_len: u64,
    limit: u64,
    stat: std::rc::Rc<BodyStat>,
    /// The field that carries the caller's identity to the app: a client's
    /// trailer of that name is dropped, as its header is.
    identity: Option<http::HeaderName>,
}

/// What a try's other phases read of a body a pump is sending.
#[derive(Default)]
pub(super) struct BodyStat {
    /// Part of the body is gone: no retry can send it again.
    overflow: Cell<bool>,
    /// DATA bytes received from the client.
    received: Cell<u64>,
}

impl BodyStat {
    /// Whether a new try can send the whole body again.
    pub(super) fn replayable(&self) -> bool {
        !self.overflow.get()
    }

    pub(super) fn received(&self) -> u64 {
        self.received.get()
    }
}

impl ReqBody {
    pub(super) fn new(recv: RecvStream, limit: u64, identity: Option<http::HeaderName>) -> ReqBody {
        let done = recv.is_end_stream();
        ReqBody {
            recv,
            done,
            trailers: None,
            kept: Vec::new(),
            kept_len: 0,
            limit,
            stat: Default::default(),
            identity,
        }
    }

    /// The body's state, readable while a pump sends it.
    pub(super) fn stat(&self) -> std::rc::Rc<BodyStat> {
        self.stat.clone()
    }

    /// Nothing to send after the request head.
    pub(super) fn is_empty(&self) -> bool {
        self.done && self.kept_len == 0 && self.trailers.is_none() && self.stat.replayable()
    }

    /// Whether a new try can send the whole body again.
    pub(super) fn replayable(&self) -> bool {
        self.stat.replayable()
    }

    /// Sends the body to one try's stream: what was kept, then the rest as
    /// the client sends it. Ends the stream with the client's trailers.
    pub(super) async fn pump(
        &mut self,
        to: &mut SendStream<Bytes>,
        last: &Cell<Instant>,
    ) -> Result<(), Stop> {
        let kept = self.kept.clone();
        let n = kept.len();
        for (i, chunk) in kept.into_iter().enumerate() {
            // The whole body is kept: its last chunk ends the stream.
            let end = self.done && self.trailers.is_none() && i + 1 == n;
            send_all(to, chunk, last, end).await?;
            if end {
                return Ok(());
            }
        }
        while !self.done {
            match next_chunk(&mut self.recv, to).await? {
                Some(chunk) => {
                    let n = chunk.len();
                    let stat = &self.stat;
                    stat.received.set(stat.received.get() + n as u64);
                    if stat.replayable() && self.kept_len + n as u64 <= self.limit {
                        self.kept_len += n as u64;
                        self.kept.push(chunk.clone());
                    } else {
                        stat.overflow.set(true);
                        self.kept = Vec::new();
                    }
                    let end = self.recv.is_end_stream();
                    send_all(to, chunk, last, end).await?;
                    let _ = self.recv.flow_control().release_capacity(n);
                    if end {
                        self.done = true;
                        return Ok(());
                    }
                }
                None => {
                    let mut trailers = std::future::poll_fn(|cx| self.recv.poll_trailers(cx))
                        .await
                        .map_err(Stop::From)?;
                    if let (Some(t), Some(name)) = (&mut trailers, &self.identity) {
                        t.remove(name);
                    }
                    self.trailers = trailers;
                    self.done = true;
                }
            }
        }
        finish(to, self.trailers.clone())
    }
}
