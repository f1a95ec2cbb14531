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

#[test]
fn trim_frees_half_of_what_sat_unused_and_keeps_what_a_steady_load_uses() {
    let pool = BufPool::new();
    // A burst: 100 buffers out at once, then all back.
    let burst: Vec<_> = (0..100).map(|_| pool.get()).collect();
    burst.into_iter().for_each(|b| pool.put(b));
    assert_eq!(pool.pooled(), (100, 0));
    // The interval of the burst itself ran the list empty: nothing freed.
    assert_eq!(pool.trim(), 0);
    // Then a steady load of 4 buffers at a time for a second: 96 unused.
    for _ in 0..10 {
        let steady: Vec<_> = (0..4).map(|_| pool.get()).collect();
        steady.into_iter().for_each(|b| pool.put(b));
    }
    assert_eq!(pool.trim(), 48 * BUF_SIZE);
    assert_eq!(pool.pooled(), (52, 0));
    // Every later second halves the surplus; the 4 in use stay.
    let mut seconds = 0;
    while pool.pooled().0 > 4 {
        for _ in 0..10 {
            let steady: Vec<_> = (0..4).map(|_| pool.get()).collect();
            steady.into_iter().for_each(|b| pool.put(b));
        }
        pool.trim();
        seconds += 1;
    }
    assert_eq!(pool.pooled(), (4, 0));
    assert!(seconds <= 7, "{seconds}");
    // Idle: the rest goes too.
    while pool.trim() > 0 {}
    assert_eq!(pool.pooled(), (0, 0));
    assert!(pool.free.borrow().capacity() <= 64);
}

#[test]
fn trim_frees_large_buffers_too() {
    let pool = BufPool::new();
    let big: Vec<_> = (0..10).map(|_| pool.get_large()).collect();
    big.into_iter().for_each(|b| pool.put(b));
    assert_eq!(pool.trim(), 0);
    assert_eq!(pool.trim(), 5 * LARGE_BUF_SIZE);
    assert_eq!(pool.pooled(), (0, 5));
}
