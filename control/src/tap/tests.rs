use super::*;

fn record(path: &str) -> TapRecord {
    TapRecord {
        at_ms: 1,
        direction: "inbound".into(),
        caller: Some("spiffe://mesh.local/service/web".into()),
        service: "api".into(),
        method: "GET".into(),
        authority: "api".into(),
        path: path.into(),
        status: 200,
        latency_us: 10,
        trace_id: None,
    }
}

fn taps() -> Arc<Taps> {
    Arc::new(Taps::new("spiffe://mesh.local/service/".into()))
}

fn drain(rx: &mut mpsc::UnboundedReceiver<ControlMsg>) -> Vec<ControlMsg> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[test]
fn only_tap_capable_sessions_of_the_service_are_told() {
    let t = taps();
    let mut old_api = t.attach(1, "api", "n1");
    let mut new_api = t.attach(2, "api", "n2");
    let mut web = t.attach(3, "web", "n3");
    t.features(2, &["tap".into()]);
    t.features(3, &["tap".into()]);
    let (guard, _rx) = t.start("api", Some("/users".into()), 5).unwrap();
    assert!(
        drain(&mut old_api).is_empty(),
        "an older proxy never sees a tap message"
    );
    assert!(
        drain(&mut web).is_empty(),
        "another service's proxy is not tapped"
    );
    assert_eq!(
        drain(&mut new_api),
        vec![ControlMsg::TapStart {
            tap: guard.id(),
            path_prefix: Some("/users".into()),
            max_rps: 5,
            ttl_ms: TTL.as_millis() as u64,
        }]
    );
    let status = t.status(guard.id(), true).unwrap();
    assert_eq!(
        (status.proxies, status.untapped),
        (1, vec!["n1".to_string()])
    );
    assert_eq!(drain(&mut new_api).len(), 1, "renewed");
    // A proxy that connects while the tap runs joins it.
    let mut late = t.attach(4, "api", "n4");
    t.features(4, &["clock".into(), "tap".into()]);
    assert_eq!(drain(&mut late).len(), 1);
    let id = guard.id();
    drop(guard);
    assert_eq!(drain(&mut new_api), vec![ControlMsg::TapStop { tap: id }]);
    assert_eq!(drain(&mut late), vec![ControlMsg::TapStop { tap: id }]);
    assert!(t.status(id, false).is_none());
}

#[test]
fn records_are_rate_limited_and_outbound_callers_named() {
    let t = taps();
    let _api = t.attach(1, "api", "n1");
    let _web = t.attach(2, "web", "n2");
    t.features(1, &["tap".into()]);
    let (guard, mut rx) = t.start("api", None, 3).unwrap();
    let mut out = record("/out");
    out.direction = "outbound".into();
    out.caller = None;
    out.service = "db".into();
    t.records(
        1,
        guard.id(),
        vec![out, record("/a"), record("/b"), record("/c")],
        2,
    );
    // A session of another service cannot feed this tap.
    t.records(2, guard.id(), vec![record("/web")], 0);
    let got: Vec<TapEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    let TapEvent::Request(first) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        first.caller.as_deref(),
        Some("spiffe://mesh.local/service/api")
    );
    assert_eq!((first.node.as_str(), first.service.as_str()), ("n1", "db"));
    // 2 dropped by the proxy, 1 over the rate here.
    assert_eq!(t.status(guard.id(), false).unwrap().dropped, 3);
}

#[test]
fn bad_requests_are_refused() {
    let t = taps();
    assert_eq!(t.start("api", None, 0).err(), Some(TapError::MaxRps(0)));
    assert_eq!(
        t.start("api", Some("users".into()), 1).err(),
        Some(TapError::Path("users".into()))
    );
    let running: Vec<_> = (0..MAX_TAPS)
        .map(|_| t.start("api", None, 1).unwrap())
        .collect();
    assert_eq!(t.start("api", None, 1).err(), Some(TapError::TooMany));
    drop(running);
    assert!(t.start("api", None, 1).is_ok(), "room again once they stop");
}
