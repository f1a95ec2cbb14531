use super::*;

#[test]
fn a_steady_load_never_releases() {
    let mut h = HeapRelease::default();
    for i in 0..1000 {
        // Connections come and go by tens; a buffer or two freed now and
        // then, far below FREED in total.
        let open = 500 + (i % 20);
        let freed = if i % 100 == 0 { 16 * 1024 } else { 0 };
        assert!(!h.tick(open, freed), "tick {i}");
    }
}

#[test]
fn a_burst_that_ends_releases_once_then_again_as_buffers_go() {
    let mut h = HeapRelease::default();
    assert!(!h.tick(10, 0));
    // 2,000 connections open during the burst; they stay.
    assert!(!h.tick(2010, 0));
    // The pool frees half its 1,000 spare buffers: release.
    assert!(h.tick(2010, 500 * 16 * 1024));
    // A quarter next: release again; then too little for a while.
    assert!(h.tick(2010, 250 * 16 * 1024));
    assert!(!h.tick(2010, 32 * 16 * 1024));
    assert!(h.tick(2010, 32 * 16 * 1024));
    // The clients leave: release.
    assert!(h.tick(10, 0));
    assert!(!h.tick(10, 0));
}

#[test]
fn connections_closing_release_once_they_fell_by_enough() {
    let mut h = HeapRelease::default();
    assert!(!h.tick(1000, 0));
    assert!(!h.tick(1000 - CLOSED + 1, 0));
    assert!(h.tick(1000 - CLOSED, 0));
    // The mark restarts from there.
    assert!(!h.tick(1000 - CLOSED - 10, 0));
}
