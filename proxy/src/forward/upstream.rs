//! The upstream side of a try: which endpoint ([`Endpoints`], skipping the
//! ones this request already [`Tried`]), and a connection to it
//! ([`upstream_conn`]): pooled, or new within the circuit breaker's and the
//! pool's limits, with mutual TLS to a peer proxy ([`connect_tls`]). Used
//! by the exchange, the tunnel and the mirror; it uses none of them.

use super::*;
use crate::routing::CompiledRule;

/// The endpoints a request may go to.
pub(super) enum Endpoints<'c> {
    One(SocketAddr),
    /// A service's endpoints, balanced per shard by the service's
    /// `loadBalancer`; `true`: they are peer proxies, reached over mutual
    /// TLS.
    Service(&'c str, &'c [SocketAddr], bool),
    /// A Route rule's weighted backends (at least one has an endpoint), and
    /// all the service's endpoints (what its balancer knows); for a
    /// `failover: strict` rule, the backend drawn for the request (it has
    /// endpoints).
    Rule(&'c str, &'c CompiledRule, &'c [SocketAddr], Option<usize>),
}

/// The endpoints a request already tried (a retry prefers another), and
/// the Route backend of the last try (a retry stays in it while it can).
#[derive(Default)]
pub(super) struct Tried {
    addrs: [Option<SocketAddr>; 4],
    n: usize,
    /// The endpoint of the last try (a replay goes back to it).
    last: Option<SocketAddr>,
    backend: Option<usize>,
}

impl Tried {
    fn contains(&self, a: SocketAddr) -> bool {
        self.addrs.iter().flatten().any(|&x| x == a)
    }

    /// The endpoint of the last try.
    pub(super) fn last(&self) -> Option<SocketAddr> {
        self.last
    }

    /// The Route backend of the last try.
    pub(super) fn backend(&self) -> Option<usize> {
        self.backend
    }

    /// Notes the endpoint (and Route backend) a try goes to.
    pub(super) fn note(&mut self, a: SocketAddr, backend: Option<usize>) {
        self.add(a);
        self.backend = backend;
    }

    fn add(&mut self, a: SocketAddr) {
        self.last = Some(a);
        if !self.contains(a) {
            self.addrs[self.n % self.addrs.len()] = Some(a);
            self.n += 1;
        }
    }
}

impl Endpoints<'_> {
    /// The endpoint for the next attempt, and the Route backend it is in:
    /// the service's balancer over the endpoints that are not ejected, not
    /// unhealthy, not down on this shard and not tried yet. For a Route
    /// rule, within a backend the policy draws by weight among those with
    /// such an endpoint (a backend with none gives its share to the others;
    /// a retry stays in its backend while it has one). With none left
    /// anywhere, any endpoint of a backend drawn by weight: failing open
    /// beats refusing.
    pub(super) fn pick(
        &self,
        shard: &Shard,
        tried: &Tried,
        key: Option<u64>,
        now: Instant,
    ) -> (SocketAddr, Option<usize>) {
        let usable = |a: SocketAddr| !tried.contains(a) && !shard.is_excluded(a, now);
        let (name, all, subset, backend) = match self {
            Endpoints::One(a) => return (*a, None),
            Endpoints::Service(name, eps, _) => (*name, *eps, None, None),
            Endpoints::Rule(name, rule, all, strict) => {
                let draw = shard.random();
                // `failover: strict`: a request never leaves its backend.
                let b = strict
                    .or_else(|| crate::route::pick_backend(rule, tried.backend, draw, usable))
                    .or_else(|| crate::route::fail_open_backend(rule, draw))
                    .expect("a backend with endpoints (checked when routing)");
                (*name, *all, Some(&rule.backends[b].endpoints[..]), Some(b))
            }
        };
        let pool = subset.unwrap_or(all);
        let in_pool = |a: SocketAddr| subset.is_none_or(|s| s.contains(&a));
        let key_bytes = key.map(u64::to_le_bytes);
        let picked = shard
            .traffic
            .with(name, |s| {
                s.balancer.pick(
                    all,
                    |a| in_pool(a) && usable(a),
                    key_bytes.as_ref().map(|k| &k[..]),
                    now,
                    &mut || shard.random(),
                )
            })
            .flatten()
            .filter(|&a| in_pool(a) && !tried.contains(a));
        let addr = picked.unwrap_or_else(|| {
            // Everything eligible was tried (or the balancer does not know
            // the service): round-robin over the untried, else over all.
            let base = shard.next_rr(name);
            (0..pool.len())
                .map(|i| pool[(base + i) % pool.len()])
                .find(|&a| !tried.contains(a))
                .unwrap_or(pool[base % pool.len()])
        });
        (addr, backend)
    }

    /// The service whose balancer and counters this request uses.
    pub(super) fn service(&self) -> Option<&str> {
        match self {
            Endpoints::One(_) => None,
            Endpoints::Service(name, _, _) | Endpoints::Rule(name, _, _, _) => Some(name),
        }
    }

    /// The service whose peer proxies are called over mutual TLS (and whose
    /// SPIFFE ID they must present); `None`: plaintext.
    pub(super) fn mtls(&self) -> Option<&str> {
        match self {
            Endpoints::One(_) | Endpoints::Service(_, _, false) => None,
            Endpoints::Service(name, _, true) | Endpoints::Rule(name, _, _, _) => Some(name),
        }
    }

    /// Whether outcomes are tracked for outlier detection (a service's
    /// endpoints, not the local app or a passthrough host).
    pub(super) fn tracked(&self) -> bool {
        !matches!(self, Endpoints::One(_))
    }

    pub(super) fn count(&self) -> usize {
        match self {
            Endpoints::One(_) => 1,
            Endpoints::Service(_, eps, _) => eps.len(),
            Endpoints::Rule(_, rule, _, Some(b)) => rule.backends[*b].endpoints.len(),
            Endpoints::Rule(_, rule, _, None) => {
                rule.backends.iter().map(|b| b.endpoints.len()).sum()
            }
        }
    }
}

/// How a try wants its upstream connection.
pub(super) struct ConnectPlan {
    /// Only a new connection (after a pooled one the upstream had closed).
    pub(super) fresh_only: bool,
    /// The request must not be sent twice: a pooled connection is checked
    /// for staleness first.
    pub(super) non_idempotent: bool,
    /// The ring-hash key.
    pub(super) key: Option<u64>,
    /// The caller's clock reading, used by the first connect attempt (a
    /// later one, after a failed connect, reads the clock again).
    pub(super) now: Instant,
    /// The try's deadline (a route's `perTryTimeout`): connecting is bounded
    /// by it as well as by `timeouts.connect`.
    pub(super) deadline: Instant,
}

/// Opens a connection to the request's upstream: a pooled one if there is
/// one, else a new one (trying the next endpoint when connecting fails, and
/// keeping a failed endpoint out of this shard's picks for a backoff).
pub(super) async fn upstream_conn(
    shard: &Shard,
    cfg: &Config,
    endpoints: &Endpoints<'_>,
    tried: &mut Tried,
    plan: ConnectPlan,
) -> Result<(Conn, SocketAddr, bool, Option<Permit>), ProxyError> {
    let ConnectPlan {
        fresh_only,
        non_idempotent,
        key,
        now,
        deadline,
    } = plan;
    let attempts = endpoints.count().min(CONNECT_ATTEMPTS);
    let mut last = ProxyError::new(ErrorKind::ConnectFailed, "no attempt");
    let mut first = Some(now);
    let mut pinned = fresh_only;
    for _ in 0..attempts {
        let now = first.take().unwrap_or_else(Instant::now);
        // A retry (or the next connect attempt) prefers another endpoint.
        // A fresh connection after a stale pooled one keeps the endpoint
        // for its first attempt; if that endpoint refuses too, the next
        // attempt picks another.
        let (addr, backend) = match tried.last {
            Some(a) if pinned => (a, tried.backend),
            _ => endpoints.pick(shard, tried, key, now),
        };
        pinned = false;
        tried.add(addr);
        tried.backend = backend;
        let connect_start = now;
        let mtls = endpoints.mtls();
        if !fresh_only {
            if let Some((c, idle_for, permit)) =
                shard.pool.take(addr, now, cfg.upstream.pool_idle_timeout)
            {
                // A request that must not be replayed checks first that the
                // upstream has not closed the connection while it sat idle
                // (one peek; idempotent requests are retried instead).
                let _ = idle_for;
                if !(non_idempotent && runtime::stale(c.raw_fd())) && verified_as(shard, &c, mtls) {
                    return Ok((c, addr, true, permit));
                }
            }
        }
        // A new connection needs a slot under maxConnections; without one
        // the request waits (as one of maxPending) for a pooled connection
        // or a slot, at most the connect timeout.
        let permit = match endpoints.service() {
            Some(name) => {
                match Box::pin(connection_slot(
                    shard,
                    cfg,
                    endpoints,
                    name,
                    addr,
                    non_idempotent,
                ))
                .await
                {
                    Slot::New(p) => p,
                    Slot::Pooled(c, p) => return Ok((c, addr, true, p)),
                    Slot::Overloaded => {
                        return Err(ProxyError::new(ErrorKind::Overloaded, "maxConnections"))
                    }
                }
            }
            None => None,
        };
        // The try's deadline bounds connecting too; once it has passed there
        // is nothing to try, and nothing learnt about the endpoint.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProxyError::new(
                ErrorKind::UpstreamTimeout,
                "the try's deadline passed before connecting",
            ));
        }
        let limit = cfg.timeouts.connect.min(left);
        let conn = connect_to(cfg, addr, limit).await;
        if conn.is_err() && endpoints.tracked() {
            shard.outcomes.record(addr, false);
            balancer_end(shard, endpoints, addr, connect_start, false);
        }
        if let (Ok(c), Some(_)) = (&conn, mtls) {
            // Peer proxies run on other hosts: notice a dead one.
            runtime::watch_peer(c.raw_fd());
        }
        match conn {
            Ok(c) => match mtls {
                None => return Ok((Conn::Plain(c), addr, false, permit)),
                Some(service) => match Box::pin(connect_tls(
                    shard,
                    cfg,
                    c,
                    service,
                    addr,
                    &[crate::tls::identity::ALPN_HTTP1],
                ))
                .await
                {
                    Ok(c) => return Ok((c, addr, false, permit)),
                    Err(e) => {
                        shard.outcomes.record(addr, false);
                        balancer_end(shard, endpoints, addr, connect_start, false);
                        last = e
                    }
                },
            },
            // Cut short by the try's deadline: the endpoint had less than
            // `timeouts.connect`. Long enough for a handshake many times
            // over (a peer on another host answers a SYN within
            // milliseconds), it is the endpoint's connect timeout; a sliver
            // of a try says nothing about it.
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    && limit < cfg.timeouts.connect
                    && limit < CONNECT_EVIDENCE =>
            {
                last = ProxyError::io(
                    ErrorKind::UpstreamTimeout,
                    "connect, at the try's deadline",
                    e,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && limit < cfg.timeouts.connect => {
                last = ProxyError::io(
                    ErrorKind::ConnectTimeout,
                    "connect, cut short by the try's deadline",
                    e,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = ProxyError::io(ErrorKind::ConnectTimeout, "connect", e)
            }
            Err(e) => last = ProxyError::io(ErrorKind::ConnectFailed, "connect", e),
        }
        if endpoints.tracked() && says_endpoint_down(&last) {
            shard.endpoint_outcome(addr, Some(last.kind), Instant::now());
        }
        // Every failure at debug level; an operator sees a warning at most
        // once per interval per shard, with the count of the others.
        tracing::debug!(%addr, "upstream connect failed: {last}");
        crate::lograte::log_limited!(
            tracing::Level::WARN,
            %addr,
            service = %endpoints.service().unwrap_or("-"),
            "upstream connect failed: {last}"
        );
        // The try has no time left for another endpoint: its caller
        // decides (move on with a fresh try, retry or answer).
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last)
}

/// A new connection to `addr`: the local app's socket file when `addr` is
/// [`UNIX_APP`](crate::config::UNIX_APP) and `[inbound] app` is one, else
/// TCP. Every connect that may go to the local app comes through here.
pub(in crate::forward) async fn connect_to(
    cfg: &Config,
    addr: SocketAddr,
    limit: Duration,
) -> std::io::Result<TcpStream> {
    if addr == crate::config::UNIX_APP {
        if let Some(crate::config::AppAddr::Unix(path)) = cfg.inbound.as_ref().map(|i| &i.app) {
            return TcpStream::connect_unix(path, limit).await;
        }
    }
    TcpStream::connect(addr, limit).await
}

/// How long a connect must have had before its timeout counts against the
/// endpoint when a try's deadline (`perTryTimeout`) cut it short of
/// `timeouts.connect`: a quarter of a second is hundreds of round trips on
/// a LAN and more than a first SYN's loss-free answer anywhere near.
const CONNECT_EVIDENCE: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether a failed connect tells about the endpoint (refused, reset,
/// unreachable, a full connect timeout, a failed handshake with it) rather
/// than about this proxy (no certificate yet, out of descriptors, no local
/// port): only the former keeps it out of the shard's picks.
fn says_endpoint_down(e: &ProxyError) -> bool {
    match e.kind {
        ErrorKind::PeerIdentityMismatch | ErrorKind::ConnectTimeout => true,
        ErrorKind::ConnectFailed => e.cause.as_ref().is_some_and(|io| {
            !matches!(
                io.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::EADDRNOTAVAIL
                        | libc::ENOBUFS
                        | libc::ENOMEM
                )
            )
        }),
        _ => false,
    }
}

use crate::resilience::Limit;
use crate::shard::pool::Permit;

/// How a request gets a connection under its service's `maxConnections`.
enum Slot {
    /// Open a new one, holding this slot.
    New(Option<Permit>),
    /// A connection to the endpoint came back to the pool while waiting.
    Pooled(Conn, Option<Permit>),
    /// No slot, and `maxPending` requests are waiting already (or the wait
    /// outlasted the connect timeout).
    Overloaded,
}

async fn connection_slot(
    shard: &Shard,
    cfg: &Config,
    endpoints: &Endpoints<'_>,
    service: &str,
    addr: SocketAddr,
    non_idempotent: bool,
) -> Slot {
    let take = |which| shard.traffic.with(service, |s| s.breaker.permit(which));
    match take(Limit::Connections) {
        None => return Slot::New(None),
        Some(Some(p)) => return Slot::New(Some(p)),
        Some(None) => {}
    }
    // Every slot is held: an idle pooled connection of this service to
    // another endpoint gives its slot up first (as Envoy does), so idle
    // connections never starve an endpoint.
    if let Some(breaker) = shard.traffic.with(service, |s| s.breaker.clone()) {
        if shard.pool.evict_one(|p| p.is_of(&breaker)) {
            if let Some(Some(p)) = take(Limit::Connections) {
                return Slot::New(Some(p));
            }
        }
    }
    let Some(Some(_pending)) = take(Limit::Pending) else {
        return Slot::Overloaded;
    };
    let until = Instant::now() + cfg.timeouts.connect;
    while Instant::now() < until {
        runtime::sleep(Duration::from_millis(1)).await;
        if let Some((c, _, p)) =
            shard
                .pool
                .take(addr, Instant::now(), cfg.upstream.pool_idle_timeout)
        {
            // The same checks as any pooled connection (dropping one that
            // fails them frees its slot for the next turn).
            if !(non_idempotent && runtime::stale(c.raw_fd()))
                && verified_as(shard, &c, endpoints.mtls())
            {
                return Slot::Pooled(c, p);
            }
        }
        if let Some(Some(p)) = take(Limit::Connections) {
            return Slot::New(Some(p));
        }
    }
    Slot::Overloaded
}

/// Tells the service's balancer how an attempt ended (latency, success).
fn balancer_end(
    shard: &Shard,
    endpoints: &Endpoints<'_>,
    addr: SocketAddr,
    since: Instant,
    ok: bool,
) {
    if let Some(name) = endpoints.service() {
        shard.traffic.with(name, |s| {
            s.balancer.start(addr);
            s.balancer.end(addr, since.elapsed(), ok, Instant::now())
        });
    }
}

/// An attempt in flight for the balancer (least-request and P2C count
/// them); ends as a failure if the attempt is dropped unfinished.
pub(super) struct InFlight<'a> {
    shard: &'a Shard,
    service: Option<&'a str>,
    addr: SocketAddr,
    since: Instant,
    done: bool,
}

impl<'a> InFlight<'a> {
    pub(super) fn start(
        shard: &'a Shard,
        service: Option<&'a str>,
        addr: SocketAddr,
        now: Instant,
    ) -> Self {
        if let Some(name) = service {
            shard.traffic.with(name, |s| s.balancer.start(addr));
        }
        InFlight {
            shard,
            service,
            addr,
            since: now,
            done: false,
        }
    }

    /// Ends the attempt at `at` (`None`: now).
    pub(super) fn end(mut self, ok: bool, at: Option<Instant>) {
        self.finish(ok, at);
    }

    fn finish(&mut self, ok: bool, at: Option<Instant>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(name) = self.service {
            let at = at.unwrap_or_else(Instant::now);
            let (addr, latency) = (self.addr, at.saturating_duration_since(self.since));
            self.shard
                .traffic
                .with(name, |s| s.balancer.end(addr, latency, ok, at));
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.finish(false, None);
    }
}

/// Whether a pooled connection suits a request: plaintext for plaintext,
/// and for mutual TLS, verified as the service the request is for (an
/// address serving one service must not carry another's requests).
fn verified_as(shard: &Shard, c: &Conn, mtls: Option<&str>) -> bool {
    match (mtls, c.peer_id()) {
        (None, _) => !c.is_tls(),
        (Some(service), Some(id)) => shard.tls().is_some_and(|t| {
            crate::tls::identity::service_of(id, &t.identity.trust_domain) == Some(service)
        }),
        (Some(_), None) => false,
    }
}

/// The client side of mutual TLS to a peer proxy of `service` at `addr`,
/// offering `alpn` (what the connection will carry): the handshake is
/// bounded by `timeouts.connect`, and the peer must present `service`'s
/// SPIFFE ID.
pub(super) async fn connect_tls(
    shard: &Shard,
    cfg: &Config,
    tcp: TcpStream,
    service: &str,
    addr: SocketAddr,
    alpns: &[&[u8]],
) -> Result<Conn, ProxyError> {
    let Some(tls) = shard.tls() else {
        return Err(ProxyError::new(
            ErrorKind::ConnectFailed,
            "mutual TLS: this proxy has no certificate yet",
        ));
    };
    let Some(name) = crate::tls::identity::server_name(service, addr) else {
        return Err(ProxyError::new(
            ErrorKind::ConnectFailed,
            "mutual TLS: the service name is not usable as a TLS name",
        ));
    };
    let session = crate::tls::Session::client_with_alpns(tls.client.clone(), name, alpns)
        .map_err(|e| ProxyError::io(ErrorKind::ConnectFailed, "mutual TLS", e.into()))?;
    match crate::tls::TlsStream::handshake(tcp, session, cfg.timeouts.connect, &shard.peers).await {
        Ok(t) => {
            shard
                .stats
                .borrow_mut()
                .mesh
                .handshake(Direction::Outbound, t.resumed());
            Ok(Conn::Tls(t))
        }
        Err(e) => {
            let mismatch = e
                .get_ref()
                .and_then(|x| x.downcast_ref::<crate::tls::TlsError>())
                .is_some_and(|t| t.identity_mismatch);
            shard
                .stats
                .borrow_mut()
                .mesh
                .failure(Direction::Outbound, mismatch);
            let kind = if mismatch {
                ErrorKind::PeerIdentityMismatch
            } else if e.kind() == std::io::ErrorKind::TimedOut {
                ErrorKind::ConnectTimeout
            } else {
                ErrorKind::ConnectFailed
            };
            crate::lograte::log_limited!(tracing::Level::WARN, %addr, %service, "mutual TLS with the peer failed: {e}");
            Err(ProxyError::io(kind, "mutual TLS", e))
        }
    }
}
