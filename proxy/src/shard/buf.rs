//! Per-shard buffer pool.
//!
//! Buffers are owned: the kernel reads straight into one, the HTTP head is
//! parsed in place, and body bytes are written out from the buffer they were
//! read into. A connection takes a buffer when bytes are about to arrive and
//! gives it back when it goes idle, so idle keep-alive connections cost no
//! buffer memory. The pool belongs to one shard (no locks, no atomics).
//!
//! A burst fills the free lists with buffers that steady traffic does not
//! need; [`BufPool::trim`] (once a second) frees half of those that sat
//! unused for the whole second, so the surplus decays within seconds while
//! the buffers a steady load cycles through stay pooled.

use std::cell::{Cell, RefCell};

/// Size of a pooled buffer. Holds a typical request head and the first body
/// bytes; larger heads (up to `limits.max_head_bytes`) get a one-off buffer.
pub const BUF_SIZE: usize = 16 * 1024;

/// Size of a body buffer: a body larger than a pooled buffer moves to one of
/// these after its first full read, so a large transfer costs a quarter of
/// the reads and writes (measured: 1 MiB bodies cost 1.8x nginx's CPU with
/// 16 KiB reads).
pub const LARGE_BUF_SIZE: usize = 64 * 1024;

/// Buffers kept for reuse per shard, per size (beyond this, returned
/// buffers are freed).
const MAX_POOLED: usize = 1024;
const MAX_POOLED_LARGE: usize = 128;

/// A shard's free lists of `BUF_SIZE` and `LARGE_BUF_SIZE` buffers.
#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    large: RefCell<Vec<Vec<u8>>>,
    /// The fewest buffers each free list held since the last trim: that
    /// many were not needed during the interval.
    low: Cell<usize>,
    low_large: Cell<usize>,
}

impl BufPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with `BUF_SIZE` capacity.
    pub fn get(&self) -> Vec<u8> {
        take(&self.free, &self.low).unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// An empty buffer with `LARGE_BUF_SIZE` capacity, for a large body.
    pub fn get_large(&self) -> Vec<u8> {
        take(&self.large, &self.low_large).unwrap_or_else(|| Vec::with_capacity(LARGE_BUF_SIZE))
    }

    /// Returns a buffer; odd-sized ones (grown heads) are freed.
    pub fn put(&self, mut b: Vec<u8>) {
        let (list, max) = match b.capacity() {
            BUF_SIZE => (&self.free, MAX_POOLED),
            LARGE_BUF_SIZE => (&self.large, MAX_POOLED_LARGE),
            _ => return,
        };
        let mut list = list.borrow_mut();
        if list.len() < max {
            b.clear();
            list.push(b);
        }
    }

    /// Swaps `b` (empty) for a large buffer once a read filled it whole.
    pub fn grow_for_body(&self, b: &mut Vec<u8>, filled: usize) {
        if filled == b.capacity() && b.capacity() < LARGE_BUF_SIZE {
            let big = self.get_large();
            self.put(std::mem::replace(b, big));
        }
    }

    /// Frees half (rounded up) of the buffers each free list did not need
    /// since the last trim, the least recently used first, and starts the
    /// next interval; returns the bytes freed. Called once a second: a
    /// burst's surplus halves every second (1,000 buffers are gone in ten),
    /// and a list that a steady load empties now and then keeps everything.
    pub fn trim(&self) -> usize {
        trim_list(&self.free, &self.low) * BUF_SIZE
            + trim_list(&self.large, &self.low_large) * LARGE_BUF_SIZE
    }

    /// Buffers pooled now (small, large).
    #[cfg(test)]
    pub fn pooled(&self) -> (usize, usize) {
        (self.free.borrow().len(), self.large.borrow().len())
    }
}

/// The most recently returned buffer of `list`, noting how low it ran.
fn take(list: &RefCell<Vec<Vec<u8>>>, low: &Cell<usize>) -> Option<Vec<u8>> {
    let mut list = list.borrow_mut();
    let b = list.pop();
    low.set(low.get().min(list.len()));
    b
}

/// Frees half of what `list` did not need since the last trim (the oldest
/// entries, at its front); returns how many.
fn trim_list(list: &RefCell<Vec<Vec<u8>>>, low: &Cell<usize>) -> usize {
    let mut list = list.borrow_mut();
    let unused = low.get().min(list.len());
    let n = unused.div_ceil(2);
    list.drain(..n);
    // The list's own array: after a burst it was sized for the whole pool.
    let len = list.len();
    if list.capacity() > 64 && list.capacity() > 4 * len {
        list.shrink_to(2 * len);
    }
    low.set(list.len());
    n
}

#[cfg(test)]
mod tests;
