//! Circuit breaker (`circuitBreaker: { maxConnections, maxPending,
//! maxRequests }`), Envoy-style: not a tripping state machine but hard
//! concurrency limits per service. A request over a limit gets a fast 503
//! with `coremesh-error: overloaded` instead of queueing behind an upstream
//! that is already saturated.
//!
//! The three limits, as the shard's forward path meets them:
//! * [`Limit::Connections`]: open upstream connections to the service;
//! * [`Limit::Pending`]: requests waiting for a connection (pool empty and
//!   the connection limit reached);
//! * [`Limit::Requests`]: requests in flight to the service.
//!
//! Per shard: each shard counts against its own share of each limit (at
//! least 1), and the agent moves the shares with
//! [`super::shares::ConcurrencySplit`], which keeps the proxy-wide count at or
//! below max(limit, N) ≤ limit + N at every instant.

use std::cell::Cell;
use std::rc::Rc;

use super::shares::ConcurrencyReport;

/// Which of the three limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Connections = 0,
    Pending = 1,
    Requests = 2,
}

impl Limit {
    /// All three, in report order.
    pub const ALL: [Limit; 3] = [Limit::Connections, Limit::Pending, Limit::Requests];
}

/// One value per limit: the configured maxima, or one shard's shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u64,
    pub max_pending: u64,
    pub max_requests: u64,
}

impl Limits {
    fn get(&self, which: Limit) -> u64 {
        match which {
            Limit::Connections => self.max_connections,
            Limit::Pending => self.max_pending,
            Limit::Requests => self.max_requests,
        }
    }
}

#[derive(Debug, Default)]
struct Counter {
    share: Cell<u64>,
    seq: Cell<u64>,
    in_use: Cell<u64>,
    demand: Cell<u64>,
    refused: Cell<u64>,
}

/// One service's circuit breaker on one shard.
///
/// Counters are `Cell`s so the breaker can sit behind an `Rc` in the shard's
/// state and hand out [`Permit`]s that release on drop (a request future
/// dropped mid-flight must give its slot back). Single-threaded by
/// construction (`Rc`, `Cell`: not `Send`). Keep one breaker per service
/// across snapshots and change its shares with [`Self::set_share`]: a new
/// breaker would forget the permits the old one handed out.
#[derive(Debug, Default)]
pub struct CircuitBreaker {
    counters: [Counter; 3],
}

impl CircuitBreaker {
    /// A breaker with this shard's shares (from the agent's
    /// `ConcurrencySplit::shares`, sequence 0). Shard, when a service first
    /// has a `circuitBreaker`.
    pub fn new(shares: Limits) -> Self {
        let b = CircuitBreaker::default();
        for which in Limit::ALL {
            b.set_share(which, shares.get(which), 0);
        }
        b
    }

    /// Applies a share the agent sent (with its sequence number, echoed in
    /// [`Self::report`]). Shard, when the message arrives. A cut below what is
    /// in use refuses new acquisitions until enough are released; nothing in
    /// flight is cancelled. Shares are at least 1.
    pub fn set_share(&self, which: Limit, share: u64, seq: u64) {
        let c = &self.counters[which as usize];
        c.share.set(share.max(1));
        c.seq.set(seq);
    }

    /// Takes one unit of `which` if this shard's share has room. Shard, per
    /// request (`Requests`; `Pending` when it must wait for a connection) and
    /// per new upstream connection (`Connections`). `false`: answer 503
    /// `coremesh-error: overloaded` (or, for `Connections`, wait as pending).
    /// Every `true` must be matched by one [`Self::release`]; prefer
    /// [`Self::permit`], which does that on drop.
    pub fn try_acquire(&self, which: Limit) -> bool {
        let c = &self.counters[which as usize];
        c.demand.set(c.demand.get() + 1);
        if c.in_use.get() >= c.share.get() {
            c.refused.set(c.refused.get() + 1);
            return false;
        }
        c.in_use.set(c.in_use.get() + 1);
        true
    }

    /// Gives back one unit of `which`. Shard, when the request finishes, stops
    /// waiting, or the connection closes.
    pub fn release(&self, which: Limit) {
        let c = &self.counters[which as usize];
        c.in_use.set(c.in_use.get().saturating_sub(1));
    }

    /// [`Self::try_acquire`] as a guard that releases when dropped. Cloning
    /// the `Rc` is the only cost; no allocation.
    pub fn permit(self: &Rc<Self>, which: Limit) -> Option<Permit> {
        self.try_acquire(which).then(|| Permit {
            breaker: self.clone(),
            which,
        })
    }

    /// Units of `which` in use on this shard.
    #[cfg(test)]
    pub fn in_use(&self, which: Limit) -> u64 {
        self.counters[which as usize].in_use.get()
    }

    /// This shard's share of `which`.
    #[cfg(test)]
    pub fn share(&self, which: Limit) -> u64 {
        self.counters[which as usize].share.get()
    }

    /// Refusals of `which` since the breaker was created (for `/metrics`).
    #[cfg(test)]
    pub fn refused(&self, which: Limit) -> u64 {
        self.counters[which as usize].refused.get()
    }

    /// The shard's report on `which` for the agent's `ConcurrencySplit`: the
    /// share sequence applied, units in use now, acquisition attempts since
    /// the last report (which this resets). Shard, once per period.
    pub fn report(&self, which: Limit) -> ConcurrencyReport {
        let c = &self.counters[which as usize];
        ConcurrencyReport {
            seq: c.seq.get(),
            in_use: c.in_use.get(),
            demand: c.demand.replace(0),
        }
    }
}

/// One unit of a limit, released when dropped.
#[derive(Debug)]
pub struct Permit {
    breaker: Rc<CircuitBreaker>,
    which: Limit,
}

impl Permit {
    /// Whether this permit is one of `breaker`'s.
    pub fn is_of(&self, breaker: &Rc<CircuitBreaker>) -> bool {
        Rc::ptr_eq(&self.breaker, breaker)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.release(self.which);
    }
}

#[cfg(test)]
mod tests;
