use super::*;

/// A global budget of the test's own (a `static` each, not a leaked box:
/// the tests also run under LeakSanitizer, scripts/sanitize.sh).
macro_rules! global {
    () => {{
        static G: Global = Global::new();
        &G
    }};
}

const MIB: usize = 1024 * 1024;

#[test]
fn charges_lease_in_steps_and_come_back_when_dropped() {
    let g: &'static Global = global!();
    let b = Budget::new(g);
    let c = Charge::new(&b, None, 16 * 1024, (MIB, MIB)).expect("fits");
    assert_eq!(b.used(), 16 * 1024);
    assert_eq!(
        g.leased(),
        LEASE,
        "one lease step, not one atomic per charge"
    );
    let d = Charge::new(&b, None, 16 * 1024, (MIB, MIB)).expect("fits");
    assert_eq!(g.leased(), LEASE, "served from the lease");
    drop((c, d));
    assert_eq!(b.used(), 0);
    assert!(g.leased() <= 2 * LEASE, "slack kept: {}", g.leased());
    drop(b);
    assert_eq!(g.leased(), 0, "a shard gives its lease back when it ends");
}

#[test]
fn the_global_limit_refuses_across_shards_and_frees_on_drop() {
    let g: &'static Global = global!();
    let (a, b) = (Budget::new(g), Budget::new(g));
    let limit = (MIB, MIB);
    let big = Charge::new(&a, None, 700 * 1024, limit).expect("fits");
    let other = Charge::new(&b, None, 200 * 1024, limit).expect("the last bytes fit");
    assert!(
        Charge::new(&b, None, 200 * 1024, limit).is_none(),
        "over the global budget"
    );
    assert!(!other.grow(200 * 1024), "growing is refused too");
    assert_eq!(other.bytes(), 200 * 1024, "a refused grow charges nothing");
    drop(big);
    assert!(
        Charge::new(&b, None, 200 * 1024, limit).is_some(),
        "what one shard gave back, another may take"
    );
}

#[test]
fn a_connection_is_bounded_by_its_own_budget() {
    let g: &'static Global = global!();
    let b = Budget::new(g);
    let conn = Rc::new(ConnAccount::default());
    let limit = (16 * MIB, 100 * 1024);
    let s1 = Charge::new(&b, Some(conn.clone()), 60 * 1024, limit).expect("fits");
    assert!(
        Charge::new(&b, Some(conn.clone()), 60 * 1024, limit).is_none(),
        "the connection's streams together exceed it"
    );
    assert!(
        Charge::new(&b, None, 60 * 1024, limit).is_some(),
        "another connection is not affected"
    );
    assert!(!s1.grow(50 * 1024));
    s1.shrink(30 * 1024);
    assert!(Charge::new(&b, Some(conn.clone()), 60 * 1024, limit).is_some());
}

#[test]
fn refusals_and_the_budget_render_as_prometheus_lines() {
    let r = Refusals {
        request: AtomicU64::new(0),
        connection: AtomicU64::new(0),
        extra: AtomicU64::new(0),
    };
    r.count(Refused::Request);
    r.count(Refused::Request);
    r.count(Refused::Extra);
    let mut out = String::new();
    r.render(&mut out, 1234);
    assert!(
        out.contains("coremesh_buffer_budget_refused_total{what=\"request\"} 2\n"),
        "{out}"
    );
    assert!(out.contains("coremesh_buffer_budget_refused_total{what=\"extra\"} 1\n"));
    assert!(out.contains("coremesh_buffer_budget_bytes{state=\"limit\"} 1234\n"));
}

#[test]
fn config_knows_the_pooled_buffer_size() {
    assert_eq!(crate::config::POOLED_BUF, crate::shard::buf::BUF_SIZE);
}
