//! Load balancing: which endpoint of a service gets the next request.
//!
//! Per shard, per service: each shard keeps one [`Balancer`] per upstream
//! service in its own state (no sharing, no atomics; docs/design.md "One shard per
//! core"). Everything here is sans-I/O: the caller passes `now` and a random
//! number source, so tests drive it deterministically.
//!
//! How the shard uses it (per request, in the "balance" and "record" phases):
//!
//! ```text
//! snapshot applied ──▶ balancer.update(&endpoints, now)        (allocates; once per change)
//! request          ──▶ balancer.pick(&endpoints, eligible, key, now, rng) -> addr
//!                  ──▶ balancer.start(addr)                     (request sent)
//! response / error ──▶ balancer.end(addr, latency, ok, now)     (exactly once per start)
//! ```
//!
//! `eligible` is the shard's filter for this attempt: not ejected by the
//! outlier detector, not marked unhealthy, not already tried by this request.
//! If no endpoint is eligible, every algorithm ignores the filter and picks as
//! if all endpoints were eligible (Envoy's "panic mode"): sending to an
//! endpoint that may be bad beats failing the request locally, and the only
//! ways to get there are that every endpoint is down or that this request has
//! already tried them all. The outlier detector never ejects the last endpoint
//! of a service on its own. A caller that would rather fail checks
//! `eligible(addr)` on the result.
//!
//! The algorithms ([`Algorithm`]):
//! * [`P2cEwma`] (default): power of two choices over peak-EWMA latency, as in
//!   Linkerd (tower's `PeakEwma`) and Finagle.
//! * [`RoundRobin`].
//! * [`LeastRequest`]: power of two choices over in-flight requests (Envoy's
//!   `LEAST_REQUEST`).
//! * [`RingHash`]: consistent hashing of a request key (a header or cookie
//!   value the router extracts) onto a ring of virtual nodes.
//!
//! Nothing on the request path allocates: `pick`, `start` and `end` index
//! vectors built by `update`. Endpoint state is kept by address across
//! updates, so an endpoint that stays in the set keeps its latency estimate and
//! in-flight count.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The load-balancing algorithm of a service (`loadBalancer:` in a Resilience
/// block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Power of two choices over peak-EWMA latency × (in flight + 1).
    #[default]
    P2cEwma,
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Consistent hashing of the request key.
    RingHash,
}

/// One service's balancer on one shard.
///
/// Created by the shard when it first routes to a service (or when the
/// service's `loadBalancer` changes: compare [`Balancer::algorithm`]), kept
/// across snapshots so that per-endpoint state survives. Single-threaded: it
/// lives in the shard's state and is used only from that shard's executor.
#[derive(Debug)]
pub enum Balancer {
    P2cEwma(P2cEwma),
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    RingHash(RingHash),
}

impl Balancer {
    /// A balancer with the algorithm's default parameters and no endpoints
    /// yet. Shard, when the service first appears or its algorithm changes.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::P2cEwma => Balancer::P2cEwma(P2cEwma::default()),
            Algorithm::RoundRobin => Balancer::RoundRobin(RoundRobin::default()),
            Algorithm::LeastRequest => Balancer::LeastRequest(LeastRequest::default()),
            Algorithm::RingHash => Balancer::RingHash(RingHash::default()),
        }
    }

    /// Which algorithm this is, so the shard can tell whether a new snapshot
    /// asks for a different one (then it builds a new balancer).
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Balancer::P2cEwma(_) => Algorithm::P2cEwma,
            Balancer::RoundRobin(_) => Algorithm::RoundRobin,
            Balancer::LeastRequest(_) => Algorithm::LeastRequest,
            Balancer::RingHash(_) => Algorithm::RingHash,
        }
    }

    /// Takes a new endpoint set. Shard, when it applies a snapshot that
    /// changes the service's endpoints (or for every snapshot: an unchanged
    /// set costs one comparison). Allocates; keeps the state of endpoints that
    /// stay, starts new ones fresh, rebuilds the hash ring. `pick` also
    /// notices a changed set on its own (and then does this itself), but
    /// doing it here keeps the allocation off the request path.
    pub fn update(&mut self, endpoints: &[SocketAddr], now: Instant) {
        match self {
            Balancer::P2cEwma(b) => b.update(endpoints, now),
            Balancer::RoundRobin(_) => {}
            Balancer::LeastRequest(b) => {
                b.members.sync(endpoints, || 0);
            }
            Balancer::RingHash(b) => b.update(endpoints),
        }
    }

    /// Chooses the endpoint for one attempt. Shard, per attempt (the first
    /// try and each retry), on the request path; does not allocate unless the
    /// endpoint set changed without an `update`.
    ///
    /// * `endpoints`: the service's current endpoints (the snapshot's slice),
    ///   distinct addresses.
    /// * `eligible`: whether an endpoint may take this attempt; see the module
    ///   docs for what happens when none may.
    /// * `key`: the ring-hash key (ignored by the other algorithms; with none,
    ///   ring hash picks a random point of the ring).
    /// * `rng`: the shard's random numbers (uniform u64).
    ///
    /// `None` only when `endpoints` is empty.
    pub fn pick(
        &mut self,
        endpoints: &[SocketAddr],
        eligible: impl Fn(SocketAddr) -> bool,
        key: Option<&[u8]>,
        now: Instant,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<SocketAddr> {
        if endpoints.is_empty() {
            return None;
        }
        match self {
            Balancer::P2cEwma(b) => b.pick(endpoints, eligible, now, rng),
            Balancer::RoundRobin(b) => b.pick(endpoints, eligible, rng),
            Balancer::LeastRequest(b) => b.pick(endpoints, eligible, rng),
            Balancer::RingHash(b) => b.pick(endpoints, eligible, key, rng),
        }
    }

    /// The request was sent to `addr`. Shard, once per attempt, right after
    /// `pick` (before the upstream exchange starts).
    pub fn start(&mut self, addr: SocketAddr) {
        match self {
            Balancer::P2cEwma(b) => {
                if let Some(s) = b.members.get_mut(addr) {
                    s.in_flight += 1;
                }
            }
            Balancer::LeastRequest(b) => {
                if let Some(n) = b.members.get_mut(addr) {
                    *n += 1;
                }
            }
            Balancer::RoundRobin(_) | Balancer::RingHash(_) => {}
        }
    }

    /// The attempt on `addr` finished: response head received (`ok` = not a
    /// gateway error or 5xx), or it failed (connect error, reset, timeout:
    /// `ok = false`). `latency` is from send to response head (or to the
    /// failure). Shard, exactly once per `start`, also when the attempt is
    /// abandoned (its future dropped): an unmatched `start` leaves the
    /// endpoint looking busy.
    pub fn end(&mut self, addr: SocketAddr, latency: Duration, ok: bool, now: Instant) {
        match self {
            Balancer::P2cEwma(b) => {
                let decay = b.decay_ns;
                if let Some(s) = b.members.get_mut(addr) {
                    s.in_flight = s.in_flight.saturating_sub(1);
                    s.observe(nanos(latency), ok, now, decay);
                }
            }
            Balancer::LeastRequest(b) => {
                if let Some(n) = b.members.get_mut(addr) {
                    *n = n.saturating_sub(1);
                }
            }
            Balancer::RoundRobin(_) | Balancer::RingHash(_) => {}
        }
    }

    /// Requests in flight to `addr` as this balancer counts them (P2C-EWMA and
    /// least-request; 0 for the others). For stats and tests.
    #[cfg(test)]
    pub fn in_flight(&self, addr: SocketAddr) -> u32 {
        match self {
            Balancer::P2cEwma(b) => b.members.get(addr).map_or(0, |s| s.in_flight),
            Balancer::LeastRequest(b) => b.members.get(addr).copied().unwrap_or(0),
            Balancer::RoundRobin(_) | Balancer::RingHash(_) => 0,
        }
    }
}

// ---------------------------------------------------------------------------
// P2C over peak EWMA

/// Power of two choices over peak-EWMA latency (Linkerd's default balancer).
///
/// Per endpoint: an estimate of its latency and its in-flight count. The cost
/// of an endpoint is `estimate × (in_flight + 1)`; `pick` draws two distinct
/// eligible endpoints at random and takes the cheaper.
///
/// The estimate:
/// * a response slower than the estimate replaces it at once (the "peak"),
///   so a slowing endpoint loses traffic immediately;
/// * a faster one is blended in with weight `1 - e^(-dt/τ)`, `dt` the time
///   since the previous response: a time-based EWMA with time constant τ;
/// * while no response arrives, the estimate as `pick` reads it decays toward
///   zero with the same τ, so an endpoint that was avoided after a slow spell
///   is tried again (tower and Finagle do the same);
/// * a failed attempt never lowers the estimate (its sample is
///   `max(latency, estimate)`): a fast 503 must not make a broken endpoint the
///   cheapest one ("failure black hole"); ejecting it is the outlier
///   detector's job.
///
/// Parameters (Linkerd's values, `linkerd2-proxy` `EWMA_DEFAULT_RTT` and
/// `EWMA_DECAY`): τ = 10 s, which remembers a latency peak for tens of
/// seconds, long enough not to flap between endpoints on every GC pause.
///
/// A new endpoint starts with a guess that neither floods it (an estimate of
/// 0 would win every comparison) nor hides it: the mean estimate of the
/// endpoints already measured, so an endpoint added to a running service gets
/// its fair share at once (Linkerd's fixed 30 ms would keep it idle beside
/// 1 ms endpoints until the guess decays below theirs, about 34 s); when
/// nothing has been measured yet, 30 ms (Linkerd's `EWMA_DEFAULT_RTT`). Its
/// first response replaces the guess.
#[derive(Debug)]
pub struct P2cEwma {
    members: Members<Ewma>,
    default_rtt_ns: f64,
    decay_ns: f64,
}

impl Default for P2cEwma {
    fn default() -> Self {
        P2cEwma::with_params(Duration::from_millis(30), Duration::from_secs(10))
    }
}

impl P2cEwma {
    /// A P2C-EWMA balancer with a given starting estimate for new endpoints
    /// and decay time constant τ (for tests and tuning; `Balancer::new` uses
    /// 30 ms and 10 s).
    pub fn with_params(default_rtt: Duration, decay: Duration) -> Self {
        P2cEwma {
            members: Members::default(),
            default_rtt_ns: nanos(default_rtt),
            decay_ns: nanos(decay).max(1.0),
        }
    }

    /// The latency estimate of `addr` as `pick` would read it at `now`
    /// (decayed). For the admin endpoint and tests.
    #[cfg(test)]
    pub fn estimate(&self, addr: SocketAddr, now: Instant) -> Option<Duration> {
        self.members
            .get(addr)
            .map(|s| Duration::from_nanos(s.value(now, self.decay_ns) as u64))
    }

    fn update(&mut self, endpoints: &[SocketAddr], now: Instant) {
        if self.members.addrs == endpoints {
            return;
        }
        let (sum, n) = self
            .members
            .state
            .iter()
            .filter(|s| s.measured)
            .fold((0.0, 0u32), |(sum, n), s| {
                (sum + s.value(now, self.decay_ns), n + 1)
            });
        let guess = if n > 0 {
            sum / f64::from(n)
        } else {
            self.default_rtt_ns
        };
        let fresh = Ewma::new(guess, now);
        self.members.sync(endpoints, || fresh);
    }

    fn pick(
        &mut self,
        endpoints: &[SocketAddr],
        eligible: impl Fn(SocketAddr) -> bool,
        now: Instant,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<SocketAddr> {
        let (a, b) = two_choices(endpoints, &eligible, rng);
        if !self.members.aligned(endpoints, a, b) {
            self.update(endpoints, now);
        }
        let Some(b) = b else {
            return Some(endpoints[a]);
        };
        let cost = |i: usize| self.members.state[i].cost(now, self.decay_ns);
        Some(endpoints[if cost(b) < cost(a) { b } else { a }])
    }
}

#[derive(Clone, Copy, Debug)]
struct Ewma {
    /// Latency estimate in nanoseconds, as of `stamp`.
    est_ns: f64,
    /// Time of the last response (or of creation).
    stamp: Instant,
    /// False until the first response replaces the default estimate.
    measured: bool,
    in_flight: u32,
}

impl Ewma {
    fn new(default_rtt_ns: f64, now: Instant) -> Self {
        Ewma {
            est_ns: default_rtt_ns,
            stamp: now,
            measured: false,
            in_flight: 0,
        }
    }

    /// The estimate decayed toward zero for the time without a response.
    fn value(&self, now: Instant, decay_ns: f64) -> f64 {
        let idle = nanos(now.saturating_duration_since(self.stamp));
        if idle == 0.0 {
            self.est_ns
        } else {
            self.est_ns * (-idle / decay_ns).exp()
        }
    }

    fn cost(&self, now: Instant, decay_ns: f64) -> f64 {
        self.value(now, decay_ns) * f64::from(self.in_flight + 1)
    }

    fn observe(&mut self, rtt_ns: f64, ok: bool, now: Instant, decay_ns: f64) {
        let sample = if ok { rtt_ns } else { rtt_ns.max(self.est_ns) };
        if !self.measured || sample > self.est_ns {
            self.est_ns = sample;
        } else {
            let dt = nanos(now.saturating_duration_since(self.stamp));
            let w = (-dt / decay_ns).exp();
            self.est_ns = self.est_ns * w + sample * (1.0 - w);
        }
        self.measured = true;
        self.stamp = self.stamp.max(now);
    }
}

// ---------------------------------------------------------------------------
// Round robin, least request

/// Each eligible endpoint in turn. The starting position is random per
/// shard, so that shards do not move in lockstep onto the same endpoint.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: Option<usize>,
}

impl RoundRobin {
    fn pick(
        &mut self,
        endpoints: &[SocketAddr],
        eligible: impl Fn(SocketAddr) -> bool,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<SocketAddr> {
        let n = endpoints.len();
        let start = match self.next {
            Some(i) => i % n,
            None => uniform(rng(), n),
        };
        let i = probe(n, start, |i| eligible(endpoints[i])).unwrap_or(start);
        self.next = Some(i + 1);
        Some(endpoints[i])
    }
}

/// Power of two choices over in-flight requests: of two random eligible
/// endpoints, the one with fewer requests in flight on this shard (ties go to
/// the first draw, itself random).
#[derive(Debug, Default)]
pub struct LeastRequest {
    members: Members<u32>,
}

impl LeastRequest {
    fn pick(
        &mut self,
        endpoints: &[SocketAddr],
        eligible: impl Fn(SocketAddr) -> bool,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<SocketAddr> {
        let (a, b) = two_choices(endpoints, &eligible, rng);
        if !self.members.aligned(endpoints, a, b) {
            self.members.sync(endpoints, || 0);
        }
        let Some(b) = b else {
            return Some(endpoints[a]);
        };
        let s = &self.members.state;
        Some(endpoints[if s[b] < s[a] { b } else { a }])
    }
}

/// Draws two distinct indices of eligible endpoints (`b` is `None` when only
/// one is eligible, or there is one endpoint). A drawn index whose endpoint is
/// not eligible moves forward to the next eligible one, which costs one
/// `eligible` call per skipped endpoint and slightly favours the endpoint
/// after an ineligible one; exclusions are few, so neither matters. With no
/// eligible endpoint it draws from all of them (panic mode, module docs).
fn two_choices(
    endpoints: &[SocketAddr],
    eligible: &impl Fn(SocketAddr) -> bool,
    rng: &mut impl FnMut() -> u64,
) -> (usize, Option<usize>) {
    let n = endpoints.len();
    if n == 1 {
        return (0, None);
    }
    let r = rng();
    let a0 = uniform(r & 0xffff_ffff, n);
    let mut b0 = uniform(r >> 32, n - 1);
    if b0 >= a0 {
        b0 += 1;
    }
    let Some(a) = probe(n, a0, |i| eligible(endpoints[i])) else {
        return (a0, Some(b0));
    };
    let b = probe(n, b0, |i| i != a && eligible(endpoints[i]));
    (a, b)
}

/// The first index at or after `start` (wrapping) that passes `ok`.
fn probe(n: usize, start: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

/// `r` (uniform over its bits, at most 32 of them used) mapped to `0..n`
/// by multiply-shift (Lemire): no division on the request path.
fn uniform(r: u64, n: usize) -> usize {
    (((r & 0xffff_ffff) * n as u64) >> 32) as usize
}

// ---------------------------------------------------------------------------
// Ring hash

/// Virtual nodes per endpoint. 160 is ketama's choice: each endpoint's share
/// of the ring varies by about 1/√160 ≈ 8% around 1/n. The ring takes
/// 16 bytes per point, 2.5 KiB per endpoint per shard.
pub const RING_VNODES: u32 = 160;

/// Consistent hashing: the request key is hashed onto a ring of
/// [`RING_VNODES`] points per endpoint and goes to the endpoint owning the
/// first point at or after it, clockwise.
///
/// * The ring depends only on the set of addresses (not their order), and the
///   hash is fixed ([`stable_hash`]), so every shard of every proxy sends a key
///   to the same endpoint.
/// * Removing an endpoint moves only its own keys (to the next point
///   clockwise); adding one takes about 1/n of the keys, from all the others.
/// * An endpoint that is not eligible is skipped the same way, clockwise, so
///   an ejected endpoint's keys spread over the others and come back to it
///   when it returns.
/// * Without a key (the header or cookie is absent) the point is random.
#[derive(Debug, Default)]
pub struct RingHash {
    members: Members<()>,
    /// (point hash, index into `members.addrs`), sorted.
    ring: Vec<(u64, u32)>,
}

impl RingHash {
    fn update(&mut self, endpoints: &[SocketAddr]) {
        if self.members.sync(endpoints, || ()) || self.ring.is_empty() {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let addrs = &self.members.addrs;
        let mut ring = Vec::with_capacity(addrs.len() * RING_VNODES as usize);
        let mut buf = [0u8; 22];
        for (i, a) in addrs.iter().enumerate() {
            let len = addr_bytes(*a, &mut buf);
            for v in 0..RING_VNODES {
                buf[len..len + 4].copy_from_slice(&v.to_le_bytes());
                ring.push((stable_hash(&buf[..len + 4]), i as u32));
            }
        }
        // Ties (two points with one hash) are broken by address, not by
        // position, so the ring is the same whatever the endpoint order.
        ring.sort_unstable_by(|x, y| {
            x.0.cmp(&y.0)
                .then(addrs[x.1 as usize].cmp(&addrs[y.1 as usize]))
        });
        self.ring = ring;
    }

    fn pick(
        &mut self,
        endpoints: &[SocketAddr],
        eligible: impl Fn(SocketAddr) -> bool,
        key: Option<&[u8]>,
        rng: &mut impl FnMut() -> u64,
    ) -> Option<SocketAddr> {
        if self.members.addrs.len() != endpoints.len() || self.ring.is_empty() {
            self.update(endpoints);
        }
        let h = match key {
            Some(k) => stable_hash(k),
            None => rng(),
        };
        let start = self.ring.partition_point(|p| p.0 < h) % self.ring.len();
        let first = self.ring[start].1 as usize;
        if self.members.addrs[first] != endpoints[first] {
            // The set changed without an update and kept its length.
            self.update(endpoints);
            return self.pick(endpoints, eligible, key, rng);
        }
        let mut last = usize::MAX;
        for k in 0..self.ring.len() {
            let i = self.ring[(start + k) % self.ring.len()].1 as usize;
            if i != last {
                last = i;
                if eligible(endpoints[i]) {
                    return Some(endpoints[i]);
                }
            }
        }
        Some(endpoints[first])
    }
}

/// The fixed hash of ring keys and ring points: 64-bit FNV-1a followed by
/// murmur3's `fmix64` finalizer (FNV alone spreads short, similar inputs such
/// as consecutive virtual-node numbers poorly). Stable across processes,
/// platforms and versions: changing it would remap every ring-hash key
/// (a test pins its values).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    h.write(bytes);
    h.finish()
}

/// An address as bytes: IP octets then port, big-endian. Returns the length.
fn addr_bytes(a: SocketAddr, buf: &mut [u8; 22]) -> usize {
    let ip_len = match a {
        SocketAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.ip().octets());
            4
        }
        SocketAddr::V6(v6) => {
            buf[..16].copy_from_slice(&v6.ip().octets());
            16
        }
    };
    buf[ip_len..ip_len + 2].copy_from_slice(&a.port().to_be_bytes());
    ip_len + 2
}

/// FNV-1a, finished with `fmix64`. Also the hasher of the address index
/// (SipHash's DoS resistance buys nothing for addresses from our own
/// snapshots, and costs on every `start` and `end`).
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

// ---------------------------------------------------------------------------
// Endpoint state kept by address

/// Per-endpoint state aligned with the endpoint slice (`state[i]` belongs to
/// `addrs[i]`), plus an address index for `start` and `end`.
#[derive(Debug)]
struct Members<S> {
    addrs: Vec<SocketAddr>,
    state: Vec<S>,
    index: HashMap<SocketAddr, u32, BuildHasherDefault<Fnv1a>>,
}

impl<S> Default for Members<S> {
    fn default() -> Self {
        Members {
            addrs: Vec::new(),
            state: Vec::new(),
            index: HashMap::default(),
        }
    }
}

impl<S: Copy> Members<S> {
    /// Realigns with `endpoints`, keeping the state of addresses that stay.
    /// Returns whether the set (or its order) changed.
    fn sync(&mut self, endpoints: &[SocketAddr], mut fresh: impl FnMut() -> S) -> bool {
        if self.addrs == endpoints {
            return false;
        }
        let mut index =
            HashMap::with_capacity_and_hasher(endpoints.len(), BuildHasherDefault::default());
        let mut state = Vec::with_capacity(endpoints.len());
        for (i, a) in endpoints.iter().enumerate() {
            let s = match self.index.get(a) {
                Some(&j) => self.state[j as usize],
                None => fresh(),
            };
            state.push(s);
            index.entry(*a).or_insert(i as u32);
        }
        self.addrs = endpoints.to_vec();
        self.state = state;
        self.index = index;
        true
    }

    /// Whether the state at positions `a` and `b` belongs to `endpoints[a]`
    /// and `endpoints[b]`: O(1), and true unless the set changed without an
    /// `update` (then the caller syncs). Whatever else changed, an endpoint
    /// returned by `pick` is always one of `endpoints`.
    fn aligned(&self, endpoints: &[SocketAddr], a: usize, b: Option<usize>) -> bool {
        let ok = |i: usize| self.addrs.get(i) == Some(&endpoints[i]);
        self.addrs.len() == endpoints.len() && ok(a) && b.is_none_or(ok)
    }

    #[cfg(test)]
    fn get(&self, addr: SocketAddr) -> Option<&S> {
        self.index.get(&addr).map(|&i| &self.state[i as usize])
    }

    fn get_mut(&mut self, addr: SocketAddr) -> Option<&mut S> {
        self.index.get(&addr).map(|&i| &mut self.state[i as usize])
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

#[cfg(test)]
mod tests;
