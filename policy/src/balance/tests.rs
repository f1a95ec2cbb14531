use super::*;
use crate::resilience::test_rng;
use std::collections::BinaryHeap;

fn addrs(n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080)))
        .collect()
}

/// Closed-loop simulation: `clients` clients each send a request, wait for
/// its response, send the next. `latency[i]` is endpoint i's fixed
/// latency. Returns requests per endpoint.
fn simulate(
    b: &mut Balancer,
    eps: &[SocketAddr],
    latency: &[Duration],
    clients: usize,
    requests: usize,
) -> Vec<usize> {
    simulate_with(b, eps, |i, _| latency[i], clients, requests, Instant::now())
}

/// As `simulate`, with endpoint i's latency `latency(i, elapsed)`, from
/// `t0`.
fn simulate_with(
    b: &mut Balancer,
    eps: &[SocketAddr],
    latency: impl Fn(usize, Duration) -> Duration,
    clients: usize,
    requests: usize,
    t0: Instant,
) -> Vec<usize> {
    let mut rng = test_rng(7);
    b.update(eps, t0);
    // (Reverse(finish time), endpoint index, sent at)
    let mut heap = BinaryHeap::new();
    let mut counts = vec![0; eps.len()];
    let mut send = |b: &mut Balancer, heap: &mut BinaryHeap<_>, now: Instant| {
        let a = b.pick(eps, |_| true, None, now, &mut rng).unwrap();
        let i = eps.iter().position(|e| *e == a).unwrap();
        b.start(a);
        counts[i] += 1;
        heap.push((std::cmp::Reverse(now + latency(i, now - t0)), i, now));
    };
    for _ in 0..clients {
        send(b, &mut heap, t0);
    }
    for _ in clients..requests {
        let (std::cmp::Reverse(done), i, sent) = heap.pop().unwrap();
        b.end(eps[i], done - sent, true, done);
        send(b, &mut heap, done);
    }
    // Let the last requests finish.
    while let Some((std::cmp::Reverse(done), i, sent)) = heap.pop() {
        b.end(eps[i], done - sent, true, done);
    }
    counts
}

#[test]
fn p2c_ewma_avoids_the_slow_endpoint() {
    let eps = addrs(2);
    let latency = [Duration::from_millis(50), Duration::from_millis(1)];
    for clients in [1, 4, 8] {
        let mut b = Balancer::new(Algorithm::P2cEwma);
        let counts = simulate(&mut b, &eps, &latency, clients, 20_000);
        let slow = counts[0] as f64 / 20_000.0;
        assert!(slow < 0.10, "{clients} clients: slow share {slow}");
        assert_eq!(
            b.in_flight(eps[0]) + b.in_flight(eps[1]),
            0,
            "every start ended"
        );
    }
}

#[test]
fn p2c_ewma_spreads_over_equal_endpoints() {
    let eps = addrs(4);
    let latency = [Duration::from_millis(5); 4];
    let mut b = Balancer::new(Algorithm::P2cEwma);
    let counts = simulate(&mut b, &eps, &latency, 8, 40_000);
    for c in counts {
        assert!((7_000..13_000).contains(&c), "{c}");
    }
}

/// An endpoint avoided while it was slow gets traffic again after it
/// recovers, once its estimate has decayed (τ = 10 s: 50 ms falls below
/// 1 ms × in-flight in about 30-40 s).
#[test]
fn p2c_ewma_comes_back_to_a_recovered_endpoint() {
    let eps = addrs(2);
    let mut b = Balancer::new(Algorithm::P2cEwma);
    // Endpoint 0: 50 ms for the first 5 s, then 1 ms like endpoint 1.
    let latency = |i: usize, t: Duration| {
        if i == 0 && t < Duration::from_secs(5) {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(1)
        }
    };
    // 4 clients at ~1 ms: ~4000 requests/s; 120 s of them.
    let t0 = Instant::now();
    let counts = simulate_with(&mut b, &eps, latency, 4, 480_000, t0);
    let share = counts[0] as f64 / 480_000.0;
    assert!(share > 0.25, "recovered endpoint's share {share}");
}

/// An endpoint added to a running service gets its share at once: it
/// starts at the mean estimate of the others, not at 30 ms.
#[test]
fn p2c_ewma_new_endpoint_gets_traffic() {
    let eps = addrs(3);
    let t0 = Instant::now();
    let mut b = Balancer::new(Algorithm::P2cEwma);
    let latency = [Duration::from_millis(1); 3];
    simulate_with(&mut b, &eps[..2], |i, _| latency[i], 4, 10_000, t0);
    let t1 = t0 + Duration::from_secs(3);
    let counts = simulate_with(&mut b, &eps, |i, _| latency[i], 4, 30_000, t1);
    assert!(counts[2] > 30_000 / 5, "{counts:?}");
}

#[test]
fn ewma_peaks_at_once_and_decays() {
    let eps = addrs(1);
    let t0 = Instant::now();
    let mut b = P2cEwma::default();
    b.update(&eps, t0);
    let est = |b: &P2cEwma, t| b.estimate(eps[0], t).unwrap().as_secs_f64() * 1e3;
    assert!((est(&b, t0) - 30.0).abs() < 0.01, "default rtt");
    // First response replaces the default, even when lower.
    b.members
        .get_mut(eps[0])
        .unwrap()
        .observe(2e6, true, t0, b.decay_ns);
    assert!((est(&b, t0) - 2.0).abs() < 0.01);
    // A peak replaces it at once.
    b.members
        .get_mut(eps[0])
        .unwrap()
        .observe(80e6, true, t0, b.decay_ns);
    assert!((est(&b, t0) - 80.0).abs() < 0.01);
    // Without responses it decays with τ = 10 s: e^-1 after 10 s.
    let t10 = t0 + Duration::from_secs(10);
    assert!((est(&b, t10) - 80.0 / std::f64::consts::E).abs() < 0.1);
    // A fast failure does not lower it.
    b.members
        .get_mut(eps[0])
        .unwrap()
        .observe(1e6, false, t10, b.decay_ns);
    assert!(est(&b, t10) >= 80.0 - 0.01);
}

#[test]
fn least_request_prefers_idle_endpoints() {
    let eps = addrs(3);
    let t = Instant::now();
    let mut rng = test_rng(1);
    let mut b = Balancer::new(Algorithm::LeastRequest);
    b.update(&eps, t);
    for _ in 0..5 {
        b.start(eps[0]);
        b.start(eps[1]);
    }
    for _ in 0..100 {
        let a = b.pick(&eps, |_| true, None, t, &mut rng).unwrap();
        // eps[2] is idle: any pair that contains it picks it.
        if a != eps[2] {
            assert!(b.in_flight(a) == 5);
        }
    }
    let mut hits = 0;
    for _ in 0..3000 {
        hits += usize::from(b.pick(&eps, |_| true, None, t, &mut rng) == Some(eps[2]));
    }
    // eps[2] is in 2 of the 3 pairs.
    assert!((1800..2200).contains(&hits), "{hits}");
}

#[test]
fn round_robin_cycles_and_skips_ineligible() {
    let eps = addrs(4);
    let t = Instant::now();
    let mut rng = test_rng(2);
    let mut b = Balancer::new(Algorithm::RoundRobin);
    let seq: Vec<_> = (0..8)
        .map(|_| b.pick(&eps, |_| true, None, t, &mut rng).unwrap())
        .collect();
    assert_eq!(seq[..4], seq[4..]);
    let mut sorted = seq[..4].to_vec();
    sorted.sort();
    assert_eq!(sorted, eps);
    let seq: Vec<_> = (0..6)
        .map(|_| b.pick(&eps, |a| a != eps[1], None, t, &mut rng).unwrap())
        .collect();
    assert!(!seq.contains(&eps[1]));
}

#[test]
fn eligibility_and_panic_mode() {
    let eps = addrs(5);
    let t = Instant::now();
    let mut rng = test_rng(3);
    for alg in [
        Algorithm::P2cEwma,
        Algorithm::RoundRobin,
        Algorithm::LeastRequest,
        Algorithm::RingHash,
    ] {
        let mut b = Balancer::new(alg);
        b.update(&eps, t);
        for k in 0..200u32 {
            let key = k.to_le_bytes();
            let only = eps[3];
            let a = b.pick(&eps, |a| a == only, Some(&key), t, &mut rng);
            assert_eq!(a, Some(only), "{alg:?}");
            let two = |a: SocketAddr| a == eps[1] || a == eps[4];
            let a = b.pick(&eps, two, Some(&key), t, &mut rng).unwrap();
            assert!(two(a), "{alg:?}");
            // None eligible: still an endpoint of the set.
            let a = b.pick(&eps, |_| false, Some(&key), t, &mut rng).unwrap();
            assert!(eps.contains(&a), "{alg:?}");
        }
        assert_eq!(b.pick(&[], |_| true, None, t, &mut rng), None);
    }
}

#[test]
fn state_survives_endpoint_changes() {
    let eps = addrs(3);
    let t = Instant::now();
    let mut b = Balancer::new(Algorithm::P2cEwma);
    b.update(&eps, t);
    b.start(eps[1]);
    b.start(eps[1]);
    b.end(eps[1], Duration::from_millis(90), true, t);
    let new = [eps[2], eps[1], addrs(4)[3]];
    b.update(&new, t);
    assert_eq!(b.in_flight(eps[1]), 1);
    assert_eq!(b.in_flight(eps[0]), 0);
    let Balancer::P2cEwma(p) = &b else {
        unreachable!()
    };
    assert_eq!(p.estimate(eps[1], t), Some(Duration::from_millis(90)));
    assert_eq!(p.estimate(eps[0], t), None);
    // A set swapped without `update` (same length) is noticed by pick.
    let mut rng = test_rng(4);
    let other = addrs(9)[6..].to_vec();
    for _ in 0..20 {
        let a = b.pick(&other, |_| true, None, t, &mut rng).unwrap();
        assert!(other.contains(&a));
    }
}

#[test]
fn ring_hash_is_sticky_and_consistent() {
    let eps = addrs(10);
    let t = Instant::now();
    let mut rng = test_rng(5);
    let mut b = Balancer::new(Algorithm::RingHash);
    b.update(&eps, t);
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("user-{i}").into_bytes())
        .collect();
    let before: Vec<_> = keys
        .iter()
        .map(|k| b.pick(&eps, |_| true, Some(k), t, &mut rng).unwrap())
        .collect();
    for (k, a) in keys.iter().zip(&before).take(100) {
        assert_eq!(b.pick(&eps, |_| true, Some(k), t, &mut rng), Some(*a));
    }
    // Each endpoint owns about a tenth of the keys.
    for e in &eps {
        let n = before.iter().filter(|a| *a == e).count();
        assert!((700..1300).contains(&n), "{e}: {n}");
    }
    // Same ring whatever the order of the endpoints (another shard, another proxy).
    let mut reversed = eps.clone();
    reversed.reverse();
    let mut other = Balancer::new(Algorithm::RingHash);
    other.update(&reversed, t);
    for (k, a) in keys.iter().zip(&before).take(1000) {
        assert_eq!(
            other.pick(&reversed, |_| true, Some(k), t, &mut rng),
            Some(*a)
        );
    }
    // Removing one endpoint moves only its own keys.
    let removed = eps[4];
    let fewer: Vec<_> = eps.iter().copied().filter(|a| *a != removed).collect();
    b.update(&fewer, t);
    let mut moved = 0;
    for (k, a) in keys.iter().zip(&before) {
        let now_at = b.pick(&fewer, |_| true, Some(k), t, &mut rng).unwrap();
        if now_at != *a {
            assert_eq!(*a, removed);
            moved += 1;
        }
    }
    assert!((700..1300).contains(&moved), "moved {moved}");
    // An ineligible endpoint's keys go where removal would send them.
    b.update(&eps, t);
    let mut c = Balancer::new(Algorithm::RingHash);
    c.update(&fewer, t);
    for k in keys.iter().take(2000) {
        let skip = b.pick(&eps, |a| a != removed, Some(k), t, &mut rng);
        assert_eq!(skip, c.pick(&fewer, |_| true, Some(k), t, &mut rng));
    }
}

#[test]
fn stable_hash_is_pinned() {
    // Changing these values remaps every ring-hash key in the fleet.
    assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(stable_hash(b"user-1"), 0x41a2_fca5_c684_01c5);
}
