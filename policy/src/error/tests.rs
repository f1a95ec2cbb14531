use super::*;

fn reason(a: Answer<'_>) -> String {
    a.reason().into_owned()
}

#[test]
fn answers_carry_their_status_and_reason() {
    assert_eq!(Answer::Error(ErrorKind::NoRoute).status(), 404);
    assert_eq!(reason(Answer::Error(ErrorKind::NoRoute)), "no route");
    let denied = Answer::Denied {
        policy: "default/web",
    };
    assert_eq!(
        (denied.status(), reason(denied).as_str()),
        (403, "forbidden by policy default/web")
    );
    assert_eq!(Answer::Probe { healthy: None }.status(), 200);
    assert_eq!(
        Answer::Probe {
            healthy: Some(false)
        }
        .status(),
        503
    );
    assert_eq!(Answer::TotalTimeout.status(), 504);
    assert_eq!(reason(Answer::Fault { status: 418 }), "fault injected");
}

#[test]
fn only_upstream_failures_have_a_retry_class() {
    assert_eq!(
        ErrorKind::ConnectTimeout.retry_class(),
        RetryClass::ConnectFailure
    );
    assert_eq!(
        ErrorKind::PeerIdentityMismatch.retry_class(),
        RetryClass::ConnectFailure
    );
    assert_eq!(ErrorKind::UpstreamReset.retry_class(), RetryClass::Reset);
    for never in [
        ErrorKind::ClientGone,
        ErrorKind::NoRoute,
        ErrorKind::RateLimited,
        ErrorKind::BufferBudget,
        ErrorKind::BadResponse,
    ] {
        assert_eq!(never.retry_class(), RetryClass::Never);
    }
}
