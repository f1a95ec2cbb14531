//! A vectored write that owns what it points into.
//!
//! The forwarded head goes out as slices of the buffer it was read into plus
//! the few bytes the proxy adds (`HeadPlan::own`), and the first body bytes
//! that arrived with the head ride in the same write. The kernel needs an
//! `iovec` array that stays valid while the write is in flight, and io_uring
//! needs the memory owned by the operation, so this type owns both buffers and
//! the array.

use crate::http1::{HeadPlan, Seg, Span};

/// Buffers plus the `iovec`s that point into them.
pub struct IoVecs {
    /// The buffer the head (and body bytes) were read into.
    pub src: Vec<u8>,
    /// Bytes the proxy added (rewritten request line, extra header lines).
    pub own: Vec<u8>,
    iov: Vec<libc::iovec>,
    /// First `iovec` not yet fully written.
    pos: usize,
    remaining: usize,
}

impl IoVecs {
    /// Builds the write of `plan` followed by `src[body]`. `own` must be the
    /// plan's `own` bytes (moved in, returned by [`IoVecs::into_parts`]).
    pub fn new(
        src: Vec<u8>,
        plan: &HeadPlan,
        own: Vec<u8>,
        body: Span,
        mut iov: Vec<libc::iovec>,
    ) -> Self {
        iov.clear();
        let mut remaining = 0;
        let mut push = |base: *const u8, len: usize| {
            if len > 0 {
                iov.push(libc::iovec {
                    iov_base: base as *mut libc::c_void,
                    iov_len: len,
                });
                remaining += len;
            }
        };
        for seg in &plan.segs {
            match seg {
                Seg::Src(r) => push(src[r.clone()].as_ptr(), r.len()),
                Seg::Own(r) => push(own[r.clone()].as_ptr(), r.len()),
            }
        }
        push(src[body.clone()].as_ptr(), body.len());
        IoVecs {
            src,
            own,
            iov,
            pos: 0,
            remaining,
        }
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The pending `iovec`s (for backends that take `IoSlice`s).
    pub fn pending(&self) -> &[libc::iovec] {
        &self.iov[self.pos..]
    }

    /// Marks `n` bytes as written.
    pub fn advance(&mut self, mut n: usize) {
        self.remaining -= n;
        while n > 0 {
            let v = &mut self.iov[self.pos];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.pos += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    /// Gives the buffers back (and the `iovec` array, for reuse).
    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>, Vec<libc::iovec>) {
        (self.src, self.own, self.iov)
    }
}
