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

/// Buffers kept for reuse per shard (beyond this, returned buffers are freed).
const MAX_POOLED: usize = 1024;

/// A shard's free list of `BUF_SIZE` buffers.
#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
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

    /// Returns a buffer; odd-sized ones (grown heads) are freed.
    pub fn put(&self, mut b: Vec<u8>) {
        if b.capacity() != BUF_SIZE {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_POOLED {
            b.clear();
            free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_and_drops_odd_sizes() {
        let pool = BufPool::new();
        let mut a = pool.get();
        a.extend_from_slice(b"hello");
        let p = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert_eq!(b.as_ptr(), p);
        assert!(b.is_empty());
        pool.put(Vec::with_capacity(3));
        assert_eq!(pool.free.borrow().len(), 0);
    }
}
