use super::*;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 80))
}

#[test]
fn a_failure_keeps_the_endpoint_out_for_a_doubling_backoff_until_it_answers() {
    let t0 = Instant::now();
    let mut d = LocalDown::default();
    assert!(!d.is_down(addr(1), t0));
    assert_eq!(d.fail(addr(1), t0), t0 + Duration::from_secs(1));
    assert!(d.is_down(addr(1), t0 + Duration::from_millis(999)));
    assert!(!d.is_down(addr(2), t0));
    // The probe after the backoff fails: twice as long, then four times.
    let t1 = t0 + Duration::from_secs(1);
    assert!(!d.is_down(addr(1), t1));
    assert_eq!(d.fail(addr(1), t1), t1 + Duration::from_secs(2));
    let t2 = t1 + Duration::from_secs(2);
    assert_eq!(d.fail(addr(1), t2), t2 + Duration::from_secs(4));
    // An answer clears it; the next failure starts at 1 s again.
    d.succeed(addr(1));
    assert!(!d.is_down(addr(1), t2));
    assert_eq!(d.fail(addr(1), t2), t2 + Duration::from_secs(1));
}

#[test]
fn the_backoff_is_capped() {
    let t0 = Instant::now();
    let mut d = LocalDown::default();
    let mut until = t0;
    for _ in 0..40 {
        until = d.fail(addr(1), t0);
    }
    assert_eq!(until, t0 + MAX_DOWN);
}

#[test]
fn only_failures_of_the_endpoint_itself_mark_it() {
    for k in [
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::UpstreamReset,
        ErrorKind::UpstreamTimeout,
        ErrorKind::PeerIdentityMismatch,
    ] {
        assert!(LocalDown::marks(k), "{k:?}");
    }
    for k in [
        ErrorKind::BadResponse,
        ErrorKind::ClientGone,
        ErrorKind::Overloaded,
        ErrorKind::RateLimited,
        ErrorKind::RetryableStatus,
        ErrorKind::Idle,
    ] {
        assert!(!LocalDown::marks(k), "{k:?}");
    }
}
