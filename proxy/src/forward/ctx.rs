//! The request context: one request and what serving it needs, carried
//! through its phases (request.rs, exchange.rs, answer.rs), and the
//! HTTP/1.1 request as the policy reads it. Below the phases: they all
//! import it, it imports none of them.

use super::*;
use crate::route::RequestView;

/// A request being served: everything `handle` needs to record it at the end.
///
/// `start` and `end` are the request's two clock readings: the deadlines,
/// the balancer's and the pool's timestamps, the latency and the keep-alive
/// linger all derive from them (about 15 `Instant::now()` calls per request
/// before, 1.8% of the proxy's CPU in the profile).
pub(super) struct Exchange {
    /// When the request head's first bytes arrived.
    pub(super) start: Instant,
    /// When the response was complete (set on success by the try that
    /// answered; otherwise read when the request is recorded).
    pub(super) end: Option<Instant>,
    /// `timeouts.idle`: the bound on every write to the client.
    pub(super) idle: Duration,
    pub(super) status: u16,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) upstream: Option<SocketAddr>,
    /// The request's place in its trace, and its span's recording when
    /// sampled (crate::trace).
    pub(super) trace: crate::trace::Hop,
    /// The Route backend of the last try (its subset labels the edge).
    pub(super) backend: Option<usize>,
}

/// One request and what serving it needs, through all its phases. `'p`:
/// the shard, the configuration and the routing table in force (and the
/// service names borrowed from them); `'c`: the client connection and its
/// scratch space.
pub(super) struct RequestCtx<'p, 'c> {
    pub(super) shard: &'p Shard,
    pub(super) cfg: &'p Config,
    pub(super) table: Option<&'p RoutingTable>,
    pub(super) dir: Direction,
    pub(super) head: RequestHead,
    pub(super) client: &'c mut Conn,
    pub(super) scratch: &'c mut Scratch,
    pub(super) ex: Exchange,
    /// The service the request was routed to (its stats label), known once
    /// routed: a total timeout drops the phases' future, not this.
    pub(super) service: &'p str,
    /// The Route rule that routed the request, if one did.
    pub(super) rule: Option<&'p crate::routing::CompiledRule>,
    /// The service an intercepted connection was addressed to: it routes
    /// every request on the connection, not the authority (which names
    /// the address the app called).
    pub(super) dest: Option<&'c str>,
    /// The buffers this request holds, against `[limits] buffer_budget`
    /// (shard/budget.rs); `None`: refused at admission (answered 503).
    pub(super) charge: Option<crate::shard::budget::Charge<'p>>,
}

/// A tunnel to run once the request's phases are over: after `CONNECT`, or
/// a 101 to an upgrade. The connection loop owns the client connection, so
/// the tunnel runs there ([`handle`]).
pub(super) struct Tunnel {
    pub(super) up: Conn,
    /// Bytes from the client that follow the request head.
    pub(super) client_pending: Buf,
    /// Bytes from the upstream that follow the response head.
    pub(super) up_pending: Buf,
}

/// The HTTP/1.1 request as the policy reads it.
pub(super) struct H1<'a> {
    pub(super) head: &'a RequestHead,
    pub(super) buf: &'a [u8],
    /// Routing's authority when set: the service of an intercepted
    /// connection ([`RequestCtx::dest`]).
    pub(super) service: Option<&'a [u8]>,
}

impl RequestView for H1<'_> {
    fn method(&self) -> &[u8] {
        self.head.method_bytes(self.buf)
    }

    fn authority(&self) -> Option<&[u8]> {
        if self.service.is_some() {
            return self.service;
        }
        self.head.authority.clone().map(|s| &self.buf[s])
    }

    fn path_and_query(&self) -> &[u8] {
        &self.buf[self.head.path.clone()]
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.buf, name)
    }

    fn is_connect(&self) -> bool {
        self.head.method == Method::Connect
    }
}
