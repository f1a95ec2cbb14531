//! The buffer budget (`[limits] buffer_budget`, `connection_buffer_budget`):
//! how many bytes of buffers in-flight requests may hold, so that the proxy
//! sheds load with a 503 before the kernel's OOM killer ends it.
//!
//! What is charged is what grows with the load: a request's head buffer and
//! the buffer its response head is read into (charged when the head is
//! parsed; refused: 503 `coremesh-error: buffer budget exhausted`), the
//! 64 KiB buffers a large body moves to (refused: the body moves through the
//! 16 KiB one), a request body kept for retries (refused: it is not kept,
//! so the request is not retried), a mirrored copy (refused: not mirrored),
//! an HTTP/2 stream (refused: 503 on that stream) and a TCP service's relay
//! buffers (refused: the connection is closed). An idle keep-alive
//! connection holds no buffer, so it costs nothing here.
//!
//! Accounting is per shard, with no lock: a shard leases bytes from the
//! process-wide total ([`GLOBAL`], one atomic) in [`LEASE`] steps and
//! charges requests against its lease with plain `Cell`s, so the atomic is
//! touched about once per 256 KiB charged, not per request. A shard gives
//! back what it holds beyond two leases of slack, so another shard can use
//! it; the total leased can therefore exceed what is charged by at most two
//! leases per shard.

use std::cell::Cell;
use std::rc::Rc;

use crate::shard::buf::{BufPool, LARGE_BUF_SIZE};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A shard leases from the global budget in steps of this many bytes.
pub const LEASE: usize = 256 * 1024;

/// The process-wide side: bytes leased by all shards together.
pub struct Global {
    leased: AtomicUsize,
}

impl Global {
    pub const fn new() -> Global {
        Global {
            leased: AtomicUsize::new(0),
        }
    }

    /// Bytes the shards hold leased now.
    pub fn leased(&self) -> usize {
        self.leased.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if the total stays within `limit`.
    fn take(&self, n: usize, limit: usize) -> bool {
        self.leased
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                l.checked_add(n).filter(|&t| t <= limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.leased.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Default for Global {
    fn default() -> Self {
        Self::new()
    }
}

/// Every shard of the process leases from this one.
pub static GLOBAL: Global = Global::new();

/// What a refused charge gave up, for `coremesh_buffer_budget_refused_total{what}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// An HTTP/1.1 request or HTTP/2 stream, answered 503.
    Request,
    /// A TCP service connection, closed.
    Connection,
    /// A 64 KiB body buffer, a request body kept for retries or a mirrored
    /// copy: the request is served without it.
    Extra,
}

/// Refusals, process-wide (the error path only, so plain atomics).
pub struct Refusals {
    request: AtomicU64,
    connection: AtomicU64,
    extra: AtomicU64,
}

pub static REFUSALS: Refusals = Refusals {
    request: AtomicU64::new(0),
    connection: AtomicU64::new(0),
    extra: AtomicU64::new(0),
};

impl Refusals {
    pub fn count(&self, what: Refused) {
        let c = match what {
            Refused::Request => &self.request,
            Refused::Connection => &self.connection,
            Refused::Extra => &self.extra,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus lines of the refusals and of the budget in use
    /// (`limit`: `[limits] buffer_budget`).
    pub fn render(&self, out: &mut String, limit: usize) {
        use std::fmt::Write;
        out.push_str("# HELP coremesh_buffer_budget_refused_total Buffers refused by [limits] buffer_budget or connection_buffer_budget, by what was given up (request: answered 503; connection: a TCP service connection closed; extra: a large body buffer, a retry copy or a mirror skipped).\n");
        out.push_str("# TYPE coremesh_buffer_budget_refused_total counter\n");
        for (what, c) in [
            ("request", &self.request),
            ("connection", &self.connection),
            ("extra", &self.extra),
        ] {
            let _ = writeln!(
                out,
                "coremesh_buffer_budget_refused_total{{what=\"{what}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP coremesh_buffer_budget_bytes The buffer budget: its limit, and the bytes the shards hold leased from it.\n");
        out.push_str("# TYPE coremesh_buffer_budget_bytes gauge\n");
        let _ = writeln!(
            out,
            "coremesh_buffer_budget_bytes{{state=\"limit\"}} {limit}"
        );
        let _ = writeln!(
            out,
            "coremesh_buffer_budget_bytes{{state=\"leased\"}} {}",
            GLOBAL.leased()
        );
    }
}

/// One shard's side of the budget.
pub struct Budget {
    global: &'static Global,
    /// Bytes leased from `global`.
    leased: Cell<usize>,
    /// Bytes charged to this shard's requests, at most `leased`.
    used: Cell<usize>,
}

impl Budget {
    pub fn new(global: &'static Global) -> Budget {
        Budget {
            global,
            leased: Cell::new(0),
            used: Cell::new(0),
        }
    }

    /// Bytes charged on this shard now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Charges `n` bytes, leasing more from the global budget (`limit`
    /// bytes in all) when this shard's lease is spent.
    fn take(&self, n: usize, limit: usize) -> bool {
        let used = self.used.get() + n;
        let leased = self.leased.get();
        if used > leased {
            let more = (used - leased).div_ceil(LEASE) * LEASE;
            // Near the limit a whole step may not fit while the bytes do.
            let got = if self.global.take(more, limit) {
                more
            } else if self.global.take(used - leased, limit) {
                used - leased
            } else {
                return false;
            };
            self.leased.set(leased + got);
        }
        self.used.set(used);
        true
    }

    /// Charges a relayed connection's two buffers (a TCP service, a
    /// passed-through connection) for as long as it is open. `None`:
    /// refused (counted and logged); the caller closes the connection.
    pub fn charge_relay(&self, limits: (usize, usize), what: &str) -> Option<Charge<'_>> {
        let c = Charge::new(self, None, 2 * crate::shard::buf::BUF_SIZE, limits);
        if c.is_none() {
            REFUSALS.count(Refused::Connection);
            crate::lograte::log_limited!(
                tracing::Level::WARN,
                "{what}: connection closed: buffer budget exhausted ({} bytes in use on this shard)",
                self.used()
            );
        }
        c
    }

    fn give(&self, n: usize) {
        let used = self.used.get() - n;
        self.used.set(used);
        let leased = self.leased.get();
        if leased - used > 2 * LEASE {
            let back = leased - used - LEASE;
            self.global.give(back);
            self.leased.set(leased - back);
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.global.give(self.leased.get());
    }
}

/// The bytes one connection holds (an HTTP/2 connection's streams share
/// it; an HTTP/1.1 connection carries one request at a time, so its
/// request's [`Charge`] is its account).
#[derive(Default)]
pub struct ConnAccount {
    used: Cell<usize>,
}

/// Bytes charged to one request, stream or connection; given back when
/// dropped, so no path (an error, a cancelled future) can leak them.
pub struct Charge<'a> {
    budget: &'a Budget,
    conn: Option<Rc<ConnAccount>>,
    bytes: Cell<usize>,
    /// `[limits] buffer_budget`.
    limit: usize,
    /// `[limits] connection_buffer_budget`.
    per_conn: usize,
    /// A grow was refused already (counted once per charge, not per read).
    refused: Cell<bool>,
}

impl<'a> Charge<'a> {
    /// Charges `n` bytes against the shard's budget and, beside it, `conn`
    /// (or this charge alone) against `per_conn`. `None`: refused.
    pub fn new(
        budget: &'a Budget,
        conn: Option<Rc<ConnAccount>>,
        n: usize,
        (limit, per_conn): (usize, usize),
    ) -> Option<Charge<'a>> {
        let c = Charge {
            budget,
            conn,
            bytes: Cell::new(0),
            limit,
            per_conn,
            refused: Cell::new(false),
        };
        c.grow(n).then_some(c)
    }

    /// Charges `n` more bytes; `false` (nothing charged) when either budget
    /// would be exceeded.
    pub fn grow(&self, n: usize) -> bool {
        let conn_used = self
            .conn
            .as_ref()
            .map_or(self.bytes.get(), |c| c.used.get());
        if conn_used + n > self.per_conn || !self.budget.take(n, self.limit) {
            return false;
        }
        self.bytes.set(self.bytes.get() + n);
        if let Some(c) = &self.conn {
            c.used.set(c.used.get() + n);
        }
        true
    }

    /// [`Charge::grow`] for something the request can do without (a large
    /// body buffer, a retry copy, a mirror): a refusal is counted once per
    /// charge as [`Refused::Extra`].
    pub fn grow_extra(&self, n: usize) -> bool {
        let ok = self.grow(n);
        if !ok && !self.refused.replace(true) {
            REFUSALS.count(Refused::Extra);
        }
        ok
    }

    /// Gives back `n` of the bytes charged (a buffer returned early).
    pub fn shrink(&self, n: usize) {
        let n = n.min(self.bytes.get());
        self.bytes.set(self.bytes.get() - n);
        if let Some(c) = &self.conn {
            c.used.set(c.used.get() - n);
        }
        self.budget.give(n);
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.shrink(self.bytes.get());
    }
}

/// [`BufPool::grow_for_body`] within `charge`: the large buffer is taken
/// only if the charge has room for it; otherwise the body keeps moving
/// through the buffer it has.
pub fn grow_for_body(bufs: &BufPool, charge: Option<&Charge<'_>>, b: &mut Vec<u8>, filled: usize) {
    if filled != b.capacity() || b.capacity() >= LARGE_BUF_SIZE {
        return;
    }
    if let Some(c) = charge {
        if !c.grow_extra(LARGE_BUF_SIZE - b.capacity()) {
            return;
        }
    }
    bufs.grow_for_body(b, filled);
}

#[cfg(test)]
mod tests;
