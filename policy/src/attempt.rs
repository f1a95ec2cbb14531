//! The attempt decision: after a try of a request fails, whether to try
//! again, on what, after how long, or how to answer.
//!
//! One request gets [`Attempts`], built from its Route rule's retry policy
//! ([`TryPolicy`]). The proxy asks it before each try ([`Attempts::begin`])
//! and after each failure ([`Attempts::after_failure`]), telling it what the
//! failure was ([`TryFailure`]); the decision is made here, once, from the
//! error's [`RetryClass`] and what of the request is still at hand, never
//! re-derived at the call sites. Following Pingora's idea of a retry type on
//! the error: a request is sent again only if the upstream cannot have acted
//! on it (a pooled connection it had closed) or the rule retries that class
//! of failure and the whole request is still buffered.

use std::time::{Duration, Instant};

use coremesh_api::resource::RetryOn;

use crate::error::{ErrorKind, RetryClass};
use crate::routing::CompiledRule;

/// How many times a request the upstream app never saw is moved to another
/// endpoint, with or without a retry policy (as a refused connection moves
/// to the next endpoint).
pub const MAX_MOVES: u32 = 2;

/// Default of [`TryPolicy::max_body`].
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// How many tries a request gets and when (a Route rule's `timeout` and
/// `retries`; without one, a single try bounded by `timeouts.request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryPolicy {
    /// From the request head sent until a response head, all tries together.
    pub total: Duration,
    pub per_try: Option<Duration>,
    /// Tries after the first.
    pub retries: u32,
    on_connect: bool,
    on_reset: bool,
    on_5xx: bool,
    on_gateway: bool,
    /// gRPC statuses retried (bit n: `grpc-status` n).
    on_grpc: u32,
    /// Backoff before retry n: uniformly random up to
    /// `min(backoff_max, backoff_base × 2^(n-1))` (full jitter).
    backoff_base: Duration,
    backoff_max: Duration,
    /// Retry requests whose method is not idempotent too.
    pub non_idempotent: bool,
    /// A request body up to this size is read completely before the first
    /// try, so that a retry can send it again; a larger one is not retried.
    pub max_body: u64,
}

impl TryPolicy {
    /// One try within `request_timeout` (`timeouts.request`).
    pub fn single(request_timeout: Duration) -> Self {
        TryPolicy {
            total: request_timeout,
            per_try: None,
            retries: 0,
            on_connect: false,
            on_reset: false,
            on_5xx: false,
            on_gateway: false,
            on_grpc: 0,
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            non_idempotent: false,
            max_body: RETRY_BODY_LIMIT,
        }
    }

    /// A Route rule's `timeout` and `retries`; `request_timeout` where the
    /// rule sets no timeout.
    pub fn for_rule(request_timeout: Duration, rule: &CompiledRule) -> Self {
        let mut p = TryPolicy::single(request_timeout);
        if let Some(t) = rule.timeout {
            p.total = t;
        }
        if let Some(r) = &rule.retries {
            p.retries = r.attempts;
            p.per_try = r.per_try_timeout;
            p.backoff_base = r.backoff_base;
            p.backoff_max = r.backoff_max;
            p.non_idempotent = !r.idempotent_only;
            p.max_body = r.max_body;
            for on in &r.on {
                match on {
                    RetryOn::ConnectFailure => p.on_connect = true,
                    RetryOn::Reset => p.on_reset = true,
                    RetryOn::Status5xx => p.on_5xx = true,
                    RetryOn::GatewayError => p.on_gateway = true,
                    RetryOn::Unavailable => p.on_grpc |= 1 << 14,
                    RetryOn::Cancelled => p.on_grpc |= 1 << 1,
                    RetryOn::DeadlineExceeded => p.on_grpc |= 1 << 4,
                    RetryOn::ResourceExhausted => p.on_grpc |= 1 << 8,
                    RetryOn::Internal => p.on_grpc |= 1 << 13,
                }
            }
        }
        p
    }

    /// Whether the rule retries failures of `class` (when tries remain).
    pub fn retries(&self, class: RetryClass) -> bool {
        match class {
            RetryClass::ConnectFailure => self.on_connect,
            RetryClass::Reset => self.on_reset,
            // A per-try timeout counts as a gateway error (as in Envoy).
            RetryClass::Timeout => self.on_5xx || self.on_gateway,
            // Only ever raised once the retry was granted.
            RetryClass::Status => true,
            // Moved without a retry (see `Attempts::after_failure`).
            RetryClass::Unseen => false,
            RetryClass::Never => false,
        }
    }

    /// Whether a final response with `status` is retried (when tries remain).
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway && matches!(status, 502..=504))
    }

    /// Whether any response status is retried at all.
    pub fn retries_some_status(&self) -> bool {
        self.on_5xx || self.on_gateway || self.on_grpc != 0
    }

    /// Whether a gRPC call that ended with `grpc_status` (its decimal
    /// value) is retried (when tries remain).
    pub fn retries_grpc(&self, grpc_status: &[u8]) -> bool {
        let code = match grpc_status {
            [d] if d.is_ascii_digit() => u32::from(d - b'0'),
            [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                u32::from(a - b'0') * 10 + u32::from(b - b'0')
            }
            _ => return false,
        };
        code < 32 && self.on_grpc & (1 << code) != 0
    }

    /// The wait before retry `n` (1-based), full jitter from `draw`.
    pub fn backoff(&self, n: u32, draw: u64) -> Duration {
        crate::resilience::backoff::delay(
            n.saturating_sub(1),
            self.backoff_base,
            self.backoff_max,
            &mut || draw,
        )
    }
}

/// What went wrong with one try, as far as trying again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryFailure {
    pub kind: ErrorKind,
    /// Whether the request reached the connection at all: `false` when no
    /// connection could be had (connect failures), so the client's request
    /// is still unread past its head and the client may keep its connection.
    pub sent: bool,
    /// The try used a pooled connection and nothing of the response came
    /// back: the upstream had closed it while idle, so the request may be
    /// sent again on a fresh connection (RFC 9112 9.3.1).
    pub replayable: bool,
    /// The whole request went out in the first write and is still at hand
    /// to send again.
    pub request_intact: bool,
    /// Part of the response already reached the client.
    pub response_started: bool,
}

impl TryFailure {
    /// No connection could be had for the try.
    pub fn connect(kind: ErrorKind) -> TryFailure {
        TryFailure {
            kind,
            sent: false,
            replayable: false,
            request_intact: true,
            response_started: false,
        }
    }
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the request again on a fresh connection to the same endpoint
    /// set, at once: the upstream cannot have acted on it. Not a retry (no
    /// budget, no backoff).
    Replay,
    /// Send the request to another endpoint at once: its app never saw it
    /// (its proxy could not reach it). Not a retry either.
    Move,
    /// Retry after `backoff`, on another endpoint where there is one.
    Retry { try_number: u32, backoff: Duration },
    /// Answer the client with this error; `close`: the connection cannot
    /// carry another request (part of the request went upstream unread).
    Answer { kind: ErrorKind, close: bool },
    /// Part of the response went out: nothing can be answered any more;
    /// close the client connection.
    Close,
}

/// The tries of one request.
#[derive(Debug)]
pub struct Attempts {
    policy: TryPolicy,
    /// All tries end by then.
    deadline: Instant,
    /// The method may be sent twice (or the rule retries any method).
    idempotent: bool,
    /// Retries taken so far.
    retries: u32,
    /// Moves taken so far ([`Verdict::Move`]).
    moves: u32,
    /// The next try must use a fresh connection (after a replay).
    fresh_only: bool,
    /// Whether the try under way may still be retried.
    can_retry: bool,
}

impl Attempts {
    /// The tries of a request that started at `start`.
    pub fn new(policy: TryPolicy, start: Instant, idempotent_method: bool) -> Attempts {
        let deadline = after(start, policy.total);
        Attempts {
            idempotent: idempotent_method || policy.non_idempotent,
            policy,
            deadline,
            retries: 0,
            moves: 0,
            fresh_only: false,
            can_retry: false,
        }
    }

    pub fn policy(&self) -> &TryPolicy {
        &self.policy
    }

    /// When all tries end.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the request may be sent twice at all: then its body (up to
    /// [`TryPolicy::max_body`]) is buffered before the first try.
    pub fn may_retry_at_all(&self) -> bool {
        self.policy.retries > 0 && self.idempotent
    }

    /// Whether this request may go to a connection that has served others
    /// with a non-idempotent method: a non-idempotent request gets a fresh
    /// connection only after a replay.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// Starts a try at `now`: whether it must use a fresh connection, and
    /// its deadline (the per-try timeout, within the total).
    pub fn begin(&mut self, now: Instant) -> (bool, Instant) {
        self.can_retry =
            self.retries < self.policy.retries && self.idempotent && now < self.deadline;
        let try_deadline = match self.policy.per_try {
            Some(p) => self.deadline.min(after(now, p)),
            None => self.deadline,
        };
        (self.fresh_only, try_deadline)
    }

    /// Whether a request its upstream app never saw could still move to
    /// another endpoint at `now` ([`Verdict::Move`]), its body permitting.
    pub fn may_move(&self, now: Instant) -> bool {
        self.moves < MAX_MOVES && self.idempotent && now < self.deadline
    }

    /// Whether the try under way may drop a response with `status` to
    /// retry (the budget must still grant it).
    pub fn retries_status(&self, status: u16) -> bool {
        self.can_retry && self.policy.retries_status(status)
    }

    /// Whether the try under way may drop a gRPC call ending with
    /// `grpc_status` (the retry still needs its budget).
    pub fn retries_grpc(&self, grpc_status: &[u8]) -> bool {
        self.can_retry && self.policy.retries_grpc(grpc_status)
    }

    /// Whether the try under way may drop any response status at all.
    pub fn retries_some_status(&self) -> bool {
        self.can_retry && self.policy.retries_some_status()
    }

    /// Decides after the try under way failed with `f`, at `now`. `budget`
    /// withdraws a retry from the service's retry budget (`false`: over
    /// budget; not called unless a retry would otherwise be taken); `draw`
    /// is a random number for the backoff's jitter.
    pub fn after_failure(
        &mut self,
        f: &TryFailure,
        reused: bool,
        now: Instant,
        budget: impl FnOnce() -> bool,
        draw: u64,
    ) -> Verdict {
        if f.sent && reused && f.replayable && !self.fresh_only {
            self.fresh_only = true;
            return Verdict::Replay;
        }
        // A replay gets one fresh connection; whatever happens to it, the
        // next try picks its endpoint (and connection) anew.
        self.fresh_only = false;
        let class = f.kind.retry_class();
        if class == RetryClass::Unseen
            && self.may_move(now)
            && f.request_intact
            && !f.response_started
        {
            self.moves += 1;
            return Verdict::Move;
        }
        let retry = self.can_retry
            && f.request_intact
            && !f.response_started
            && self.policy.retries(class)
            // A retryable status was only dropped once the budget granted
            // (and counted) its retry.
            && (class == RetryClass::Status || budget());
        if retry {
            self.retries += 1;
            let backoff = self
                .policy
                .backoff(self.retries, draw)
                .min(self.deadline.saturating_duration_since(now));
            return Verdict::Retry {
                try_number: self.retries,
                backoff,
            };
        }
        if f.response_started {
            Verdict::Close
        } else {
            Verdict::Answer {
                kind: f.kind,
                close: f.sent,
            }
        }
    }
}

/// `t + d`, or a time that never comes when a configured duration is too
/// large to add (no panic on a huge timeout).
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests;
