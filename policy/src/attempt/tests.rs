use super::*;
use crate::routing::RetryPolicy;

fn rule(on: &[RetryOn], attempts: u32) -> CompiledRule {
    CompiledRule {
        name: "r#0".into(),
        path: None,
        headers: Vec::new(),
        query: Vec::new(),
        methods: Vec::new(),
        timeout: Some(Duration::from_secs(2)),
        retries: Some(RetryPolicy {
            attempts,
            per_try_timeout: Some(Duration::from_millis(300)),
            on: on.to_vec(),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            idempotent_only: true,
            max_body: 1024,
        }),
        strict: false,
        backends: Vec::new(),
    }
}

fn failure(kind: ErrorKind) -> TryFailure {
    TryFailure {
        kind,
        sent: true,
        replayable: false,
        request_intact: true,
        response_started: false,
    }
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_request_without_retries_is_tried_once_and_answered() {
    let t0 = Instant::now();
    let mut a = Attempts::new(TryPolicy::single(Duration::from_secs(5)), t0, true);
    assert!(!a.may_retry_at_all());
    assert_eq!(a.begin(t0), (false, t0 + Duration::from_secs(5)));
    // Before anything was sent the client keeps its connection.
    let v = a.after_failure(
        &TryFailure::connect(ErrorKind::ConnectFailed),
        false,
        t0,
        || true,
        0,
    );
    assert_eq!(
        v,
        Verdict::Answer {
            kind: ErrorKind::ConnectFailed,
            close: false
        }
    );
    a.begin(t0);
    let v = a.after_failure(&failure(ErrorKind::UpstreamReset), false, t0, || true, 0);
    assert_eq!(
        v,
        Verdict::Answer {
            kind: ErrorKind::UpstreamReset,
            close: true
        }
    );
}

#[test]
fn retries_follow_the_rule_the_budget_and_the_clock() {
    let t0 = Instant::now();
    let policy = TryPolicy::for_rule(Duration::from_secs(5), &rule(&[RetryOn::ConnectFailure], 2));
    let mut a = Attempts::new(policy, t0, true);
    assert!(a.may_retry_at_all());
    // The per-try timeout bounds each try, within the rule's 2 s total.
    assert_eq!(a.begin(t0), (false, t0 + 300 * MS));
    let v = a.after_failure(
        &TryFailure::connect(ErrorKind::ConnectTimeout),
        false,
        t0 + 300 * MS,
        || true,
        u64::MAX,
    );
    assert!(
        matches!(v, Verdict::Retry { try_number: 1, backoff } if backoff <= 10 * MS),
        "{v:?}"
    );
    // A reset is not a connect failure: this rule does not retry it.
    a.begin(t0 + 400 * MS);
    let v = a.after_failure(
        &failure(ErrorKind::UpstreamReset),
        false,
        t0 + 400 * MS,
        || true,
        7,
    );
    assert_eq!(
        v,
        Verdict::Answer {
            kind: ErrorKind::UpstreamReset,
            close: true
        }
    );
    // An exhausted budget ends the tries.
    a.begin(t0 + 500 * MS);
    let v = a.after_failure(
        &TryFailure::connect(ErrorKind::ConnectFailed),
        false,
        t0 + 500 * MS,
        || false,
        7,
    );
    assert_eq!(
        v,
        Verdict::Answer {
            kind: ErrorKind::ConnectFailed,
            close: false
        }
    );
    // The second retry is the last one; then the failure is answered.
    a.begin(t0 + 600 * MS);
    assert!(matches!(
        a.after_failure(
            &TryFailure::connect(ErrorKind::ConnectFailed),
            false,
            t0 + 600 * MS,
            || true,
            7
        ),
        Verdict::Retry { try_number: 2, .. }
    ));
    a.begin(t0 + 700 * MS);
    let mut asked = false;
    let v = a.after_failure(
        &TryFailure::connect(ErrorKind::ConnectFailed),
        false,
        t0 + 700 * MS,
        || {
            asked = true;
            true
        },
        7,
    );
    assert_eq!(
        v,
        Verdict::Answer {
            kind: ErrorKind::ConnectFailed,
            close: false
        }
    );
    assert!(!asked, "no retry left: the budget is not charged");
}

#[test]
fn no_retry_past_the_deadline_and_the_backoff_stops_at_it() {
    let t0 = Instant::now();
    let policy = TryPolicy::for_rule(Duration::from_secs(5), &rule(&[RetryOn::Reset], 3));
    let mut a = Attempts::new(policy, t0, true);
    // 5 ms before the deadline: the backoff (up to 10 ms) is cut to 5 ms.
    let late = t0 + Duration::from_secs(2) - 5 * MS;
    a.begin(late);
    let v = a.after_failure(
        &failure(ErrorKind::UpstreamReset),
        false,
        late,
        || true,
        u64::MAX,
    );
    assert!(
        matches!(v, Verdict::Retry { backoff, .. } if backoff <= 5 * MS),
        "{v:?}"
    );
    let past = t0 + Duration::from_secs(2);
    a.begin(past);
    let v = a.after_failure(&failure(ErrorKind::UpstreamReset), false, past, || true, 0);
    assert_eq!(
        v,
        Verdict::Answer {
            kind: ErrorKind::UpstreamReset,
            close: true
        }
    );
}

#[test]
fn only_an_intact_idempotent_request_is_sent_twice() {
    let t0 = Instant::now();
    let r = rule(&[RetryOn::Reset, RetryOn::Status5xx], 3);
    // A POST under an idempotent-only rule is tried once.
    let mut post = Attempts::new(TryPolicy::for_rule(Duration::from_secs(5), &r), t0, false);
    assert!(!post.may_retry_at_all());
    post.begin(t0);
    assert!(!post.retries_status(503));
    assert!(matches!(
        post.after_failure(&failure(ErrorKind::UpstreamReset), false, t0, || true, 0),
        Verdict::Answer { .. }
    ));
    // A body that streamed past the buffer cannot be sent again.
    let mut get = Attempts::new(TryPolicy::for_rule(Duration::from_secs(5), &r), t0, true);
    get.begin(t0);
    assert!(get.retries_status(503) && !get.retries_status(404));
    let streamed = TryFailure {
        request_intact: false,
        ..failure(ErrorKind::UpstreamReset)
    };
    assert!(matches!(
        get.after_failure(&streamed, false, t0, || true, 0),
        Verdict::Answer { .. }
    ));
    // Once the response started, the connection just closes.
    get.begin(t0);
    let started = TryFailure {
        response_started: true,
        ..failure(ErrorKind::UpstreamReset)
    };
    assert_eq!(
        get.after_failure(&started, false, t0, || true, 0),
        Verdict::Close
    );
}

#[test]
fn a_pooled_connection_closed_while_idle_is_replayed_once_without_a_retry() {
    let t0 = Instant::now();
    // Even without any retry policy, and for a POST.
    let mut a = Attempts::new(TryPolicy::single(Duration::from_secs(5)), t0, false);
    a.begin(t0);
    let closed = TryFailure {
        replayable: true,
        ..failure(ErrorKind::UpstreamReset)
    };
    let mut charged = false;
    assert_eq!(
        a.after_failure(
            &closed,
            true,
            t0,
            || {
                charged = true;
                true
            },
            0
        ),
        Verdict::Replay
    );
    assert!(!charged);
    // The replay uses a fresh connection; a second such failure is answered.
    assert!(a.begin(t0).0);
    assert!(matches!(
        a.after_failure(&closed, false, t0, || true, 0),
        Verdict::Answer { close: true, .. }
    ));
    assert!(!a.begin(t0).0);
}

#[test]
fn a_granted_status_retry_does_not_charge_the_budget_twice() {
    let t0 = Instant::now();
    let policy = TryPolicy::for_rule(Duration::from_secs(5), &rule(&[RetryOn::GatewayError], 1));
    let mut a = Attempts::new(policy, t0, true);
    a.begin(t0);
    assert!(a.retries_some_status() && a.retries_status(502) && !a.retries_status(500));
    let mut charged = false;
    let v = a.after_failure(
        &failure(ErrorKind::RetryableStatus),
        false,
        t0,
        || {
            charged = true;
            true
        },
        0,
    );
    assert!(matches!(v, Verdict::Retry { try_number: 1, .. }));
    assert!(!charged);
    // A per-try timeout is a gateway error.
    assert!(a.policy().retries(ErrorKind::UpstreamTimeout.retry_class()));
}

#[test]
fn a_request_the_app_never_saw_moves_to_another_endpoint_without_a_retry_policy() {
    let t0 = Instant::now();
    let unseen = failure(ErrorKind::PeerAppUnreachable);
    let mut a = Attempts::new(TryPolicy::single(Duration::from_secs(5)), t0, true);
    for _ in 0..MAX_MOVES {
        a.begin(t0);
        assert_eq!(
            a.after_failure(&unseen, false, t0, || panic!("no budget"), 0),
            Verdict::Move
        );
    }
    a.begin(t0);
    assert_eq!(
        a.after_failure(&unseen, false, t0, || true, 0),
        Verdict::Answer {
            kind: ErrorKind::PeerAppUnreachable,
            close: true
        }
    );
    // Not a POST (the header could come from the app itself), and not a
    // request whose body streamed.
    let mut post = Attempts::new(TryPolicy::single(Duration::from_secs(5)), t0, false);
    post.begin(t0);
    assert!(matches!(
        post.after_failure(&unseen, false, t0, || true, 0),
        Verdict::Answer { .. }
    ));
    let mut get = Attempts::new(TryPolicy::single(Duration::from_secs(5)), t0, true);
    get.begin(t0);
    let streamed = TryFailure {
        request_intact: false,
        ..unseen
    };
    assert!(matches!(
        get.after_failure(&streamed, false, t0, || true, 0),
        Verdict::Answer { .. }
    ));
}

#[test]
fn after_a_replay_that_cannot_connect_the_next_try_picks_anew() {
    let t0 = Instant::now();
    let policy = TryPolicy::for_rule(
        Duration::from_secs(5),
        &rule(&[RetryOn::ConnectFailure, RetryOn::Reset], 2),
    );
    let mut a = Attempts::new(policy, t0, true);
    a.begin(t0);
    let closed = TryFailure {
        replayable: true,
        ..failure(ErrorKind::UpstreamReset)
    };
    assert_eq!(
        a.after_failure(&closed, true, t0, || true, 0),
        Verdict::Replay
    );
    assert!(a.begin(t0).0, "the replay uses a fresh connection");
    // The endpoint refuses the fresh connection: the retry is not pinned.
    let refused = TryFailure::connect(ErrorKind::ConnectFailed);
    assert!(matches!(
        a.after_failure(&refused, false, t0, || true, 0),
        Verdict::Retry { .. }
    ));
    assert!(!a.begin(t0).0);
}

#[test]
fn grpc_conditions_retry_their_statuses_only() {
    let policy = TryPolicy::for_rule(
        Duration::from_secs(5),
        &rule(&[RetryOn::Unavailable, RetryOn::DeadlineExceeded], 2),
    );
    assert!(policy.retries_grpc(b"14"));
    assert!(policy.retries_grpc(b"4"));
    assert!(!policy.retries_grpc(b"13"));
    assert!(!policy.retries_grpc(b"0"));
    assert!(!policy.retries_grpc(b"x"));
    assert!(!policy.retries_grpc(b"140"));
    assert!(policy.retries_some_status());
    // gRPC conditions do not retry HTTP statuses.
    assert!(!policy.retries_status(503));
}
