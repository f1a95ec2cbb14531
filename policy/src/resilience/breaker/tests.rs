use super::*;
use crate::resilience::shares::ConcurrencySplit;
use crate::resilience::test_rng;

fn limits(r: u64) -> Limits {
    Limits {
        max_connections: r,
        max_pending: r,
        max_requests: r,
    }
}

#[test]
fn permits_release_on_drop() {
    let b = Rc::new(CircuitBreaker::new(limits(2)));
    let p1 = b.permit(Limit::Requests).unwrap();
    let p2 = b.permit(Limit::Requests).unwrap();
    assert!(b.permit(Limit::Requests).is_none());
    assert!(b.permit(Limit::Pending).is_some(), "limits are independent");
    drop(p1);
    let p3 = b.permit(Limit::Requests).unwrap();
    assert_eq!(b.in_use(Limit::Requests), 2);
    drop((p2, p3));
    assert_eq!(b.in_use(Limit::Requests), 0);
    assert_eq!(b.refused(Limit::Requests), 1);
    let r = b.report(Limit::Requests);
    assert_eq!((r.in_use, r.demand), (0, 4));
    assert_eq!(b.report(Limit::Requests).demand, 0);
}

#[test]
fn share_cut_refuses_until_drained() {
    let b = CircuitBreaker::new(limits(3));
    assert!((0..3).all(|_| b.try_acquire(Limit::Requests)));
    b.set_share(Limit::Requests, 1, 7);
    assert!(!b.try_acquire(Limit::Requests));
    b.release(Limit::Requests);
    b.release(Limit::Requests);
    assert!(!b.try_acquire(Limit::Requests));
    b.release(Limit::Requests);
    assert!(b.try_acquire(Limit::Requests));
    assert_eq!(b.report(Limit::Requests).seq, 7);
    b.set_share(Limit::Requests, 0, 8);
    assert_eq!(b.share(Limit::Requests), 1, "at least one per shard");
}

/// The protection test, in miniature: 2 shards with uneven,
/// shifting load, shares rebalanced each period; the requests in flight
/// across both never exceed the limit + 2 (in fact the limit).
#[test]
fn two_shards_never_exceed_limit_plus_two() {
    let limit = 50;
    let shards = 2;
    let mut rng = test_rng(9);
    let mut split = ConcurrencySplit::new(limit, shards);
    let breakers: Vec<Rc<CircuitBreaker>> = split
        .shares()
        .iter()
        .map(|&s| Rc::new(CircuitBreaker::new(limits(s))))
        .collect();
    let mut held: Vec<Vec<Permit>> = vec![Vec::new(), Vec::new()];
    let mut peak = 0;
    let mut admitted = 0;
    for period in 0..200 {
        let hot = (period / 40) % shards;
        for _ in 0..500 {
            let i = if rng() % 10 < 8 { hot } else { 1 - hot };
            if let Some(p) = breakers[i].permit(Limit::Requests) {
                held[i].push(p);
                admitted += 1;
            }
            // Finish some requests.
            for h in held.iter_mut() {
                if !h.is_empty() && rng() % 2 == 0 {
                    let k = (rng() % h.len() as u64) as usize;
                    h.swap_remove(k);
                }
            }
            let total: u64 = breakers.iter().map(|b| b.in_use(Limit::Requests)).sum();
            peak = peak.max(total);
            assert!(total <= limit + shards as u64, "{total}");
        }
        let reports: Vec<_> = breakers.iter().map(|b| b.report(Limit::Requests)).collect();
        if split.update(&reports) {
            for (b, &s) in breakers.iter().zip(split.shares()) {
                b.set_share(Limit::Requests, s, split.seq());
            }
        }
    }
    assert!(peak <= limit, "{peak}");
    assert!(peak >= limit * 8 / 10, "the limit is usable: peak {peak}");
    assert!(admitted > 10_000);
}
