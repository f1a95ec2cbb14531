//! What went wrong while serving one request: who is to blame, whether a
//! retry may help, and the status and `coremesh-error` text a client sees.

use std::borrow::Cow;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something wrong or went away.
    Downstream,
    /// The upstream refused, reset, timed out or answered wrongly.
    Upstream,
    /// This proxy's configuration or state.
    Internal,
}

/// What went wrong while serving one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The outbound authority names no mesh service (and passthrough is off).
    UnknownService,
    /// The request carries no authority to route by.
    NoAuthority,
    /// The service has no endpoints.
    NoEndpoints,
    /// No rule of the service's Route matches the request.
    NoRoute,
    /// No backend of the matched rule has an endpoint.
    NoHealthyEndpoints,
    /// The upstream answered with a status the retry policy retries, and
    /// the retry was granted (internal: that response is dropped and the
    /// next try answers; without a retry the response itself is relayed).
    RetryableStatus,
    /// `CONNECT` without `[outbound] passthrough`, or on the inbound side.
    ConnectNotAllowed,
    /// A passthrough host name did not resolve.
    ResolveFailed,
    /// A passthrough target is this proxy itself.
    LoopDetected,
    /// The upstream refused the connection (or it failed otherwise).
    ConnectFailed,
    /// Connecting took longer than `timeouts.connect`.
    ConnectTimeout,
    /// The peer proxy's certificate names another service than the one
    /// called (an address answering for a service that is not its own).
    PeerIdentityMismatch,
    /// The upstream closed or reset the connection before a full response.
    UpstreamReset,
    /// No response head within `timeouts.request`.
    UpstreamTimeout,
    /// The upstream's response could not be parsed.
    BadResponse,
    /// Nothing moved for `timeouts.idle` during a body.
    Idle,
    /// The client went away or broke framing mid-body.
    ClientGone,
    /// The service's circuit breaker is full (`circuitBreaker`).
    Overloaded,
    /// The service's rate limit refused the request (`rateLimit`).
    RateLimited,
    /// The proxy's buffers are at `[limits] buffer_budget` (or the
    /// connection's at `connection_buffer_budget`): shed before memory runs out.
    BufferBudget,
    /// The peer proxy answered that it could not reach its app (its own
    /// `upstream connection refused` or `upstream connect timeout`): the
    /// app never saw the request.
    PeerAppUnreachable,
}

impl ErrorKind {
    /// The status a client gets when no response has started yet.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::UnknownService => 404,
            ErrorKind::NoAuthority => 400,
            ErrorKind::NoEndpoints | ErrorKind::NoHealthyEndpoints => 503,
            ErrorKind::NoRoute => 404,
            ErrorKind::RetryableStatus => 502,
            ErrorKind::ConnectNotAllowed => 405,
            ErrorKind::ResolveFailed => 502,
            ErrorKind::LoopDetected => 508,
            ErrorKind::ConnectFailed
            | ErrorKind::UpstreamReset
            | ErrorKind::BadResponse
            | ErrorKind::PeerIdentityMismatch
            | ErrorKind::PeerAppUnreachable => 502,
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout | ErrorKind::Idle => 504,
            ErrorKind::ClientGone => 400,
            ErrorKind::Overloaded => 503,
            ErrorKind::RateLimited => 429,
            ErrorKind::BufferBudget => 503,
        }
    }

    /// The `coremesh-error` header value.
    pub fn text(self) -> &'static str {
        match self {
            ErrorKind::UnknownService => "unknown service",
            ErrorKind::NoAuthority => "no host to route by",
            ErrorKind::NoEndpoints => "no endpoints",
            ErrorKind::NoRoute => "no route",
            ErrorKind::NoHealthyEndpoints => "no healthy endpoints",
            ErrorKind::RetryableStatus => "upstream error status",
            ErrorKind::ConnectNotAllowed => {
                "CONNECT is not allowed here (needs [outbound] passthrough = true)"
            }
            ErrorKind::ResolveFailed => "host name did not resolve",
            ErrorKind::LoopDetected => "passthrough target is this proxy",
            ErrorKind::ConnectFailed => "upstream connection refused",
            ErrorKind::ConnectTimeout => "upstream connect timeout",
            ErrorKind::PeerIdentityMismatch => "peer identity mismatch",
            ErrorKind::UpstreamReset => "upstream connection reset",
            ErrorKind::UpstreamTimeout => "upstream timeout",
            ErrorKind::BadResponse => "invalid upstream response",
            ErrorKind::Idle => "idle timeout",
            ErrorKind::ClientGone => "client closed the connection",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::BufferBudget => "buffer budget exhausted",
            ErrorKind::PeerAppUnreachable => "upstream app unreachable",
        }
    }

    pub fn blame(self) -> Blame {
        match self {
            ErrorKind::UnknownService
            | ErrorKind::NoAuthority
            | ErrorKind::ConnectNotAllowed
            | ErrorKind::ClientGone => Blame::Downstream,
            ErrorKind::NoEndpoints
            | ErrorKind::NoHealthyEndpoints
            | ErrorKind::NoRoute
            | ErrorKind::Overloaded
            | ErrorKind::RateLimited
            | ErrorKind::BufferBudget => Blame::Internal,
            _ => Blame::Upstream,
        }
    }

    /// Which of a Route's retry conditions covers a failed try of this
    /// kind. Decided here, once, from the error; the rule's `retries.on`
    /// then says whether that condition is retried
    /// ([`crate::attempt::TryPolicy::retries`]).
    pub fn retry_class(self) -> RetryClass {
        match self {
            // Another endpoint may be the genuine one, so a mismatch moves
            // on like a refused connection (and is counted and logged).
            ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::PeerIdentityMismatch => RetryClass::ConnectFailure,
            ErrorKind::UpstreamReset => RetryClass::Reset,
            ErrorKind::UpstreamTimeout => RetryClass::Timeout,
            ErrorKind::RetryableStatus => RetryClass::Status,
            ErrorKind::PeerAppUnreachable => RetryClass::Unseen,
            _ => RetryClass::Never,
        }
    }
}

/// The retry condition a failed try falls under ([`ErrorKind::retry_class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Nothing reached an app: connecting failed, timed out, or reached
    /// the wrong identity (`connect-failure`).
    ConnectFailure,
    /// The upstream closed or reset before a full response (`reset`).
    Reset,
    /// No response within the per-try timeout (`5xx` or `gateway-error`,
    /// as in Envoy).
    Timeout,
    /// A response status the rule retries, already granted a retry.
    Status,
    /// The upstream app never saw the request (its proxy could not reach
    /// it): moved to another endpoint like a refused connection, whatever
    /// the rule's retries ([`crate::attempt::Attempts::after_failure`]).
    Unseen,
    /// Not retried: the request itself, the client, or local policy.
    Never,
}

/// A response the proxy makes itself rather than relaying one: every local
/// error, denial, injected fault and probe answer is one of these, and the
/// codec of the connection writes it (HTTP/1.1: `forward/answer.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The request could not be served: status and `coremesh-error` text
    /// from the kind.
    Error(ErrorKind),
    /// Denied by the AccessPolicy named (403).
    Denied { policy: &'a str },
    /// A fault injection's abort, with its status.
    Fault { status: u16 },
    /// The app health probe: 503 once the app failed its check, else 200.
    Probe { healthy: Option<bool> },
    /// A request head refused before routing (a parse error's status and
    /// reason, or 408 when it did not arrive in time).
    Refused { status: u16, reason: &'static str },
    /// The request's total timeout (`timeouts.total`) passed before any
    /// response byte went out (504).
    TotalTimeout,
}

impl Answer<'_> {
    /// The response status.
    pub fn status(&self) -> u16 {
        match *self {
            Answer::Error(kind) => kind.status(),
            Answer::Denied { .. } => 403,
            Answer::Fault { status } | Answer::Refused { status, .. } => status,
            Answer::Probe { healthy } => {
                if healthy == Some(false) {
                    503
                } else {
                    200
                }
            }
            Answer::TotalTimeout => 504,
        }
    }

    /// The `coremesh-error` text (the reason a client and the logs see);
    /// empty for a probe answer, which has a body of its own.
    pub fn reason(&self) -> Cow<'_, str> {
        match *self {
            Answer::Error(kind) => Cow::Borrowed(kind.text()),
            Answer::Denied { policy } => Cow::Owned(format!("forbidden by policy {policy}")),
            Answer::Fault { .. } => Cow::Borrowed("fault injected"),
            Answer::Probe { .. } => Cow::Borrowed(""),
            Answer::Refused { reason, .. } => Cow::Borrowed(reason),
            Answer::TotalTimeout => Cow::Borrowed("request total timeout"),
        }
    }
}

/// A cause from another crate's validation (a regex, a resource check),
/// kept as the source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a snapshot cannot become a routing table: the NACK reason a proxy
/// sends back to control, naming the resource and the field.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("route {route}: service {service} is not in the snapshot")]
    UnknownService { route: String, service: String },
    #[error("route {route}: rules[{rule}]: path {path:?} must start with /")]
    RelativePath {
        route: String,
        rule: usize,
        path: String,
    },
    #[error("route {route}: rules[{rule}]: at most one of path, pathPrefix and pathRegex")]
    PathConflict { route: String, rule: usize },
    #[error("route {route}: rules[{rule}]: {field}: {cause}")]
    BadRegex {
        route: String,
        rule: usize,
        field: String,
        #[source]
        cause: Cause,
    },
    #[error("authorization: trust domain: {0}")]
    TrustDomain(#[source] Cause),
    #[error("authorization: {0}")]
    AccessPolicy(#[source] Cause),
}

/// A service defined both statically (proxy.toml's `[[services]]`) and by
/// control: refused, whichever came second.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticConflict {
    /// A snapshot defines services of the static configuration (NACKed).
    #[error("{} {} {} defined both in {file} [[services]] and by control; remove one of them", if names.len() == 1 { "service" } else { "services" }, quoted(names), if names.len() == 1 { "is" } else { "are" })]
    InSnapshot { names: Vec<String>, file: String },
    /// A reload defines statically a service of the table in force (the
    /// reload is refused).
    #[error("{file}: [[services]] {name:?}: control defines this service too (snapshot version {version}); remove one of them")]
    InReload {
        name: String,
        file: String,
        version: u64,
    },
}

fn quoted(names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    list.join(", ")
}

#[cfg(test)]
mod tests;
