//! A vectored write that owns what it points into.
//!
//! The forwarded head goes out as slices of the buffer it was read into plus
//! the few bytes the proxy adds (`HeadPlan::own`), and the first body bytes
//! that arrived with the head ride in the same write. The kernel needs an
//! `iovec` array that stays valid while the write is in flight, and io_uring
//! needs the memory owned by the operation, so this type owns both buffers and
//! the array.
//!
//! The one invariant every `unsafe` use of it rests on: each pending
//! `iovec` (`iov[pos..]`) points at `iov_len` initialised bytes inside
//! `src` or `own`. [`IoVecs::new`] makes them from bounds-checked slices of
//! the two buffers; [`IoVecs::advance`] only moves a base forward inside
//! its slice and shortens it; the buffers are private and never touched
//! again until [`IoVecs::into_parts`] gives them back (consuming `self`),
//! so no push reallocates them under the pointers. Moving an `IoVecs` moves
//! the `Vec` headers, not the heap memory the pointers point into.

use crate::http1::{HeadPlan, Seg, Span};

/// Buffers plus the `iovec`s that point into them.
pub struct IoVecs {
    /// The buffer the head (and body bytes) were read into.
    src: Vec<u8>,
    /// Bytes the proxy added (rewritten request line, extra header lines).
    own: Vec<u8>,
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

    /// The pending `iovec`s, for `sendmsg(2)` and io_uring: each points at
    /// `iov_len` bytes inside this value's buffers, valid while `self` is
    /// borrowed (see the module's doc).
    pub fn pending(&self) -> &[libc::iovec] {
        &self.iov[self.pos..]
    }

    /// The pending bytes, one slice per `iovec` (none empty).
    pub fn pending_slices(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.pending().iter().map(|v| {
            // SAFETY: by the module's invariant `v` points at `iov_len`
            // initialised bytes inside `self.src` or `self.own`; the slice
            // borrows `self`, so neither buffer can be dropped, moved out or
            // written while it lives.
            unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
        })
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
                // SAFETY: `n < iov_len`, so `base + n` stays inside the slice
                // of `src` or `own` this iovec points into (module invariant),
                // not even one past its end; `add` needs no more.
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

#[cfg(test)]
mod tests;
