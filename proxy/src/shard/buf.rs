//! Per-shard buffer pool.
//!
//! Buffers are owned: the kernel reads straight into one, the HTTP head is
//! parsed in place, and body bytes are written out from the buffer they were
//! read into. A connection takes a buffer when bytes are about to arrive and
//! gives it back when it goes idle, so idle keep-alive connections cost no
//! buffer memory. The pool belongs to one shard (no locks, no atomics).

use std::cell::RefCell;

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

/// A shard's free list of `BUF_SIZE` buffers.
#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    large: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with `BUF_SIZE` capacity.
    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// An empty buffer with `LARGE_BUF_SIZE` capacity, for a large body.
    pub fn get_large(&self) -> Vec<u8> {
        self.large
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LARGE_BUF_SIZE))
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
}

#[cfg(test)]
mod tests;
