//! The `IoVecs` invariant (each pending iovec points at bytes of its own
//! buffers) through every way a write can end: whole, split inside an
//! iovec, split on a boundary. Run under AddressSanitizer by
//! scripts/sanitize.sh, where a pointer moved past its buffer is a report.

use super::*;
use crate::http1::{HeadPlan, Seg};

/// `GET /x HTTP/1.1\r\n` from `src`, `host: up\r\n\r\n` added, then the body
/// bytes that arrived with the head.
fn head_and_body() -> IoVecs {
    let src = b"GET /x HTTP/1.1\r\nhost: old\r\n\r\nbody".to_vec();
    let own = b"host: up\r\n\r\n".to_vec();
    let plan = HeadPlan {
        // An empty segment is left out of the array.
        segs: vec![Seg::Src(0..17), Seg::Own(0..0), Seg::Own(0..own.len())],
        ..HeadPlan::default()
    };
    IoVecs::new(src, &plan, own, 30..34, Vec::new())
}

const WHOLE: &[u8] = b"GET /x HTTP/1.1\r\nhost: up\r\n\r\nbody";

fn pending_bytes(v: &IoVecs) -> Vec<u8> {
    v.pending_slices().flatten().copied().collect()
}

#[test]
fn pending_slices_are_the_plan_then_the_body() {
    let v = head_and_body();
    assert_eq!(v.remaining(), WHOLE.len());
    assert_eq!(v.pending().len(), 3, "the empty segment is skipped");
    let slices: Vec<&[u8]> = v.pending_slices().collect();
    assert_eq!(
        slices,
        [&b"GET /x HTTP/1.1\r\n"[..], b"host: up\r\n\r\n", b"body"]
    );
}

#[test]
fn advancing_by_any_amount_leaves_exactly_the_rest() {
    for n in 0..=WHOLE.len() {
        let mut v = head_and_body();
        v.advance(n);
        assert_eq!(v.remaining(), WHOLE.len() - n, "after {n}");
        assert_eq!(pending_bytes(&v), &WHOLE[n..], "after {n}");
        assert!(v.pending_slices().all(|s| !s.is_empty()), "after {n}");
        let lens: usize = v.pending().iter().map(|i| i.iov_len).sum();
        assert_eq!(lens, v.remaining(), "after {n}");
    }
}

#[test]
fn advancing_in_small_steps_walks_across_every_boundary() {
    for step in 1..=7 {
        let mut v = head_and_body();
        let mut sent = 0;
        while v.remaining() > 0 {
            let n = step.min(v.remaining());
            v.advance(n);
            sent += n;
            assert_eq!(
                pending_bytes(&v),
                &WHOLE[sent..],
                "step {step}, sent {sent}"
            );
        }
        assert!(v.pending().is_empty());
    }
}

#[test]
fn the_buffers_come_back_whole_and_the_array_is_reused() {
    let mut v = head_and_body();
    v.advance(20);
    let (src, own, iov) = v.into_parts();
    assert_eq!(src, b"GET /x HTTP/1.1\r\nhost: old\r\n\r\nbody");
    assert_eq!(own, b"host: up\r\n\r\n");
    let cap = iov.capacity();
    let plan = HeadPlan {
        segs: vec![Seg::Src(0..3)],
        ..HeadPlan::default()
    };
    // A reused array is cleared before it is filled again.
    let v = IoVecs::new(src, &plan, own, 0..0, iov);
    assert_eq!(pending_bytes(&v), b"GET");
    assert_eq!(v.pending().len(), 1);
    let (_, _, iov) = v.into_parts();
    assert_eq!(iov.capacity(), cap);
}

#[test]
fn moving_the_value_keeps_the_pointers_valid() {
    // The iovecs point into the Vecs' heap memory, which a move of the
    // IoVecs (into a Box, through a function) does not move.
    let mut v = Box::new(head_and_body());
    v.advance(5);
    let moved = *v;
    let again = std::convert::identity(moved);
    assert_eq!(pending_bytes(&again), &WHOLE[5..]);
}

#[test]
fn nothing_to_write_is_an_empty_array() {
    let plan = HeadPlan::default();
    let mut v = IoVecs::new(b"abc".to_vec(), &plan, Vec::new(), 3..3, Vec::new());
    assert_eq!(v.remaining(), 0);
    assert!(v.pending().is_empty());
    assert_eq!(v.pending_slices().count(), 0);
    v.advance(0);
    assert_eq!(v.remaining(), 0);
}
