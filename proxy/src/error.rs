//! The proxy's error type: what went wrong, who is to blame, whether a retry
//! may help, and the status and `coremesh-error` text a client sees.

use std::fmt;
use std::io;

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
            | ErrorKind::PeerIdentityMismatch => 502,
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout | ErrorKind::Idle => 504,
            ErrorKind::ClientGone => 400,
            ErrorKind::Overloaded => 503,
            ErrorKind::RateLimited => 429,
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
            | ErrorKind::RateLimited => Blame::Internal,
            _ => Blame::Upstream,
        }
    }

    /// Whether trying another endpoint (or a fresh connection) may help.
    pub fn retryable(self) -> bool {
        // Another endpoint may be the genuine one, so a mismatch moves on
        // like a refused connection (and is counted and logged).
        matches!(
            self,
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::PeerIdentityMismatch
        )
    }
}

/// An error with its kind and, where there is one, the I/O cause.
#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub cause: Option<io::Error>,
    pub context: &'static str,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, context: &'static str) -> Self {
        ProxyError {
            kind,
            cause: None,
            context,
        }
    }

    pub fn io(kind: ErrorKind, context: &'static str, cause: io::Error) -> Self {
        ProxyError {
            kind,
            cause: Some(cause),
            context,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind.text(), self.context)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|e| e as _)
    }
}
