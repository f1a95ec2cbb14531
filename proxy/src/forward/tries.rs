//! The tries of one request, whatever its protocol: written once for
//! HTTP/1.1 (forward/exchange.rs) and HTTP/2 streams (h2/stream.rs).
//!
//! Each try takes a connection from the protocol ([`Protocol::connect`]:
//! it picks the endpoint, pooled or new), runs the exchange on it
//! ([`Protocol::exchange`]), and on failure asks [`Attempts`] (the policy
//! crate) what comes next: replay on a fresh connection, move to another
//! endpoint, retry after a backoff, or give up ([`Protocol::give_up`]).
//! What every protocol shares is here: the service's retry budget, the
//! in-flight count and latency per endpoint (balancing), and the outcomes
//! that feed outlier detection and the circuit breakers.

use std::net::SocketAddr;
use std::time::Instant;

use super::ctx::Exchange;
use super::upstream::{Endpoints, InFlight, Tried};
use crate::attempt::{Attempts, TryFailure, Verdict};
use crate::error::{Blame, ErrorKind, ProxyError};
use crate::runtime;
use crate::shard::Shard;

/// What one try is allowed.
pub(super) struct Plan<'a> {
    /// When the try starts (the request's own clock reading for the first).
    pub(super) now: Instant,
    /// Only a new connection will do (a replay after a stale pooled one).
    pub(super) fresh_only: bool,
    /// The response head must arrive by then.
    pub(super) deadline: Instant,
    /// The request's hash for ring-hash balancing.
    pub(super) key: Option<u64>,
    pub(super) attempts: &'a Attempts,
    /// Withdraws a retry from the service's budget; `false`: over budget.
    pub(super) budget: &'a dyn Fn() -> bool,
}

/// A connection for one try.
pub(super) struct Connected<C> {
    pub(super) conn: C,
    pub(super) addr: SocketAddr,
    /// Taken from the pool (it may have been closed under the request).
    pub(super) reused: bool,
}

/// How a try that reached an endpoint failed.
pub(super) trait Failure {
    fn error(&self) -> &ProxyError;
    /// What the attempt decision needs to know.
    fn as_try(&self) -> TryFailure;
    /// Whether the failure tells about the endpoint (outlier detection).
    fn says_endpoint_down(&self, reused: bool) -> bool;
}

/// Why the tries stopped without an answer from upstream.
pub(super) enum GiveUp {
    /// Nothing more can be said to the client: close (or reset) it.
    Close,
    /// Answer the client with the proxy's own error; `close`: and close
    /// the connection (HTTP/1.1).
    Answer { kind: ErrorKind, close: bool },
}

/// One protocol's side of the tries.
pub(super) trait Protocol {
    type Conn;
    type Fail: Failure;
    /// What the request's handling ends with.
    type Done;

    /// The request's record (status, times, upstream).
    fn exchange_record(&self) -> &Exchange;

    /// The request's span recording, when it is sampled.
    fn trace_rec(&mut self) -> Option<&mut crate::trace::Recording>;

    /// A connection to an endpoint `endpoints` picks (not one in `tried`
    /// when another is left), for the try `plan` allows.
    async fn connect(
        &mut self,
        endpoints: &Endpoints<'_>,
        tried: &mut Tried,
        plan: &Plan<'_>,
    ) -> Result<Connected<Self::Conn>, ProxyError>;

    /// One try over `conn`: the request out, the response back.
    async fn exchange(
        &mut self,
        conn: Connected<Self::Conn>,
        endpoints: &Endpoints<'_>,
        plan: &Plan<'_>,
    ) -> Result<Self::Done, Self::Fail>;

    /// The tries are over without an answer: say so to the client.
    async fn give_up(
        &mut self,
        how: GiveUp,
        last: Last<Self::Fail>,
        addr: Option<SocketAddr>,
    ) -> Self::Done;
}

/// How the last try failed.
pub(super) enum Last<F> {
    /// No connection.
    Connect(ProxyError),
    /// On a connection to an endpoint.
    Tried(F),
}

impl<F: Failure> Last<F> {
    pub(super) fn error(&self) -> &ProxyError {
        match self {
            Last::Connect(e) => e,
            Last::Tried(f) => f.error(),
        }
    }

    fn as_try(&self) -> TryFailure {
        match self {
            Last::Connect(e) => TryFailure::connect(e.kind),
            Last::Tried(f) => f.as_try(),
        }
    }
}

/// Runs the tries of a request, as `attempts` decides after each failure.
pub(super) async fn run<P: Protocol>(
    p: &mut P,
    shard: &Shard,
    endpoints: &Endpoints<'_>,
    mut attempts: Attempts,
    key: Option<u64>,
    start: Instant,
) -> P::Done {
    let service = endpoints.service();
    // A retry spends the service's retry budget; an exhausted budget ends
    // the tries (an outage is not amplified).
    let budget_allows = || {
        service.is_none_or(|name| {
            shard
                .traffic
                .with(name, |s| s.budget.try_withdraw(Instant::now()))
                .unwrap_or(true)
        })
    };
    let mut tried = Tried::default();
    // The first try uses the request's clock reading; each later one (after
    // a failure, a backoff) reads the clock again.
    let mut first = Some(start);
    loop {
        let now = first.take().unwrap_or_else(Instant::now);
        let (fresh_only, deadline) = attempts.begin(now);
        let plan = Plan {
            now,
            fresh_only,
            deadline,
            key,
            attempts: &attempts,
            budget: &budget_allows,
        };
        let (last, addr, reused) = match p.connect(endpoints, &mut tried, &plan).await {
            Ok(conn) => {
                if let Some(rec) = p.trace_rec() {
                    rec.connected(Instant::now());
                }
                let (addr, reused) = (conn.addr, conn.reused);
                let flight = InFlight::start(shard, service, addr, now);
                let res = p.exchange(conn, endpoints, &plan).await;
                let ex = p.exchange_record();
                let ok = match &res {
                    Ok(_) => ex.status < 500,
                    Err(f) => f.error().kind.blame() != Blame::Upstream,
                };
                flight.end(ok, ex.end);
                if endpoints.tracked() {
                    shard.outcomes.record(addr, ok);
                    match &res {
                        Ok(_) => shard.endpoint_outcome(addr, None, now),
                        Err(f) if f.says_endpoint_down(reused) => {
                            shard.endpoint_outcome(addr, Some(f.error().kind), Instant::now())
                        }
                        Err(_) => {}
                    }
                }
                match res {
                    Ok(done) => return done,
                    Err(f) => (Last::Tried(f), Some(addr), reused),
                }
            }
            Err(e) => (Last::Connect(e), None, false),
        };
        let verdict = attempts.after_failure(
            &last.as_try(),
            reused,
            Instant::now(),
            budget_allows,
            shard.random(),
        );
        let err = last.error();
        match verdict {
            Verdict::Replay => {
                tracing::debug!(?addr, "replaying on a new connection: {err}");
            }
            Verdict::Move => {
                tracing::debug!(?addr, "moving to another endpoint: {err}");
            }
            Verdict::Retry {
                try_number,
                backoff,
            } => {
                tracing::debug!(?addr, try = try_number, "retrying: {err}");
                if !backoff.is_zero() {
                    runtime::sleep(backoff).await;
                }
            }
            Verdict::Close => return p.give_up(GiveUp::Close, last, addr).await,
            Verdict::Answer { kind, close } => {
                return p.give_up(GiveUp::Answer { kind, close }, last, addr).await
            }
        }
    }
}

/// How one try over an h2 stream failed (HTTP/1.1 over a connection:
/// forward/exchange.rs `Failed`).
pub(super) struct TryFail {
    pub(super) err: ProxyError,
    /// Nothing reached the upstream app (a refused stream, a connection
    /// that went away before taking it): the try can be sent again.
    pub(super) replayable: bool,
    /// The whole request is at hand to send again.
    pub(super) request_intact: bool,
    /// The client already has the answer (a response started, or a reset
    /// was passed on): nothing more is sent to it.
    pub(super) response_started: bool,
}

impl TryFail {
    pub(super) fn new(kind: ErrorKind, context: &'static str, request_intact: bool) -> TryFail {
        TryFail {
            err: ProxyError::new(kind, context),
            replayable: false,
            request_intact,
            response_started: false,
        }
    }

    pub(super) fn started(kind: ErrorKind, context: &'static str) -> TryFail {
        TryFail {
            response_started: true,
            ..TryFail::new(kind, context, false)
        }
    }
}

impl Failure for TryFail {
    fn error(&self) -> &ProxyError {
        &self.err
    }

    fn as_try(&self) -> TryFailure {
        TryFailure {
            kind: self.err.kind,
            sent: true,
            replayable: self.replayable,
            request_intact: self.request_intact,
            response_started: self.response_started,
        }
    }

    fn says_endpoint_down(&self, _reused: bool) -> bool {
        match self.err.kind {
            ErrorKind::UpstreamTimeout => self.request_intact,
            ErrorKind::ClientGone | ErrorKind::RetryableStatus => false,
            _ => !self.replayable,
        }
    }
}
