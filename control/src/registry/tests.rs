use super::*;

const FORGET: Duration = Duration::from_secs(600);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_disconnected_proxy_is_shown_with_when_it_left_then_forgotten() {
    let t0 = Instant::now();
    let w = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let mut r = Registry::new(Duration::from_secs(15), t0, FORGET);
    let a = r.hello("api", "n1", 0);
    let b = r.hello("api", "n2", 0);
    r.disconnected(a, t0 + Duration::from_secs(10), w);
    // Disconnecting twice does not restart the clock.
    r.disconnected(a, t0 + Duration::from_secs(20), w + Duration::from_secs(10));
    let s = r.proxy_statuses();
    assert_eq!((s[0].connected, s[0].last_seen), (false, Some(1_000_000)));
    assert_eq!((s[1].connected, s[1].last_seen), (true, None));

    assert_eq!(
        r.forget(t0 + Duration::from_secs(609)),
        0,
        "kept for 10 minutes"
    );
    assert_eq!(r.proxy_statuses().len(), 2);
    assert_eq!(r.forget(t0 + Duration::from_secs(610)), 1);
    let s = r.proxy_statuses();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].node, "n2");
    // Coming back after being forgotten is a new row.
    let again = r.hello("api", "n1", 0);
    assert!(again != a && again != b);
    assert_eq!(r.proxy_statuses().len(), 2);
}

#[test]
fn a_proxy_that_reconnects_in_time_keeps_its_row_and_is_not_forgotten() {
    let t0 = Instant::now();
    let w = SystemTime::now();
    let mut r = Registry::new(Duration::from_secs(15), t0, FORGET);
    let a = r.hello("api", "n1", 0);
    r.disconnected(a, t0, w);
    assert_eq!(r.hello("api", "n1", 0), a);
    let s = &r.proxy_statuses()[0];
    assert_eq!((s.connected, s.last_seen), (true, None));
    assert_eq!(r.forget(t0 + FORGET * 2), 0, "connected rows stay");
    // Its next disconnection starts a new clock.
    r.disconnected(a, t0 + FORGET * 2, w);
    assert_eq!(r.forget(t0 + FORGET * 2 + Duration::from_secs(1)), 0);
    assert_eq!(r.forget(t0 + FORGET * 3), 1);
    assert!(r.proxy_statuses().is_empty());
}

#[test]
fn reconnects_find_rows_by_service_and_node_lowest_id_first() {
    let t0 = Instant::now();
    let w = SystemTime::now();
    let mut r = Registry::new(Duration::from_secs(15), t0, FORGET);
    // Two instances of api on n1, one of web on n1.
    let a1 = r.hello("api", "n1", 0);
    let a2 = r.hello("api", "n1", 0);
    let web = r.hello("web", "n1", 0);
    assert_ne!(a1, a2);
    r.disconnected(a2, t0, w);
    r.disconnected(a1, t0, w);
    r.disconnected(web, t0, w);
    assert_eq!(r.hello("api", "n1", 0), a1);
    assert_eq!(r.hello("api", "n1", 0), a2);
    let fresh = r.hello("api", "n1", 0);
    assert!(fresh > web, "no disconnected row left: a new one");
    assert_eq!(r.hello("web", "n1", 0), web);
    assert_eq!(r.hello("web", "n2", 0), fresh + 1);
}

#[test]
fn fail_open_when_no_endpoint_is_healthy() {
    let t0 = Instant::now();
    let w = SystemTime::now();
    let mut r = Registry::new(Duration::from_secs(15), t0, FORGET);
    let a = r.hello("api", "n1", 0);
    let b = r.hello("api", "n2", 0);
    assert!(r.register(a, addr(1), BTreeMap::new(), t0, w));
    assert!(r.register(b, addr(2), BTreeMap::new(), t0, w));
    assert_eq!(r.endpoints_of("api").len(), 2);
    assert!(r.health(a, false, t0, w));
    let eps = r.endpoints_of("api");
    assert_eq!(eps.iter().map(|e| e.address).collect::<Vec<_>>(), [addr(2)]);
    assert!(r.health(b, false, t0, w));
    let eps = r.endpoints_of("api");
    assert_eq!(eps.len(), 2, "fail open: all kept");
    assert!(eps.iter().all(|e| !e.healthy));
    assert!(!r.health(b, false, t0, w), "no flip, no change");
    assert!(r.endpoints_of("db").is_empty());
}

#[test]
fn expiry_waits_for_grace_and_reconnect_reuses_entry() {
    let t0 = Instant::now();
    let w = SystemTime::now();
    let mut r = Registry::new(
        Duration::from_secs(15),
        t0 + Duration::from_secs(30),
        FORGET,
    );
    let a = r.hello("api", "n1", 0);
    r.register(a, addr(1), BTreeMap::new(), t0, w);
    r.disconnected(a, t0, w);
    // A closed connection does not withdraw the endpoint.
    assert_eq!(r.endpoints_of("api").len(), 1);
    assert!(!r.expire(t0 + Duration::from_secs(20)), "in grace");
    assert_eq!(r.hello("api", "n1", 0), a, "reconnect gets its entry back");
    assert!(r.expire(t0 + Duration::from_secs(31)));
    assert!(r.endpoints_of("api").is_empty());
    // Its next heartbeat brings it back.
    assert!(r.health(a, true, t0 + Duration::from_secs(32), w));
    assert_eq!(r.endpoints_of("api").len(), 1);
    assert!(r.deregister(a));
    assert!(r.endpoints_of("api").is_empty());
    assert_eq!(r.proxy_statuses().len(), 1);
}

#[test]
fn ack_and_nack_are_recorded() {
    let mut r = Registry::new(Duration::from_secs(15), Instant::now(), FORGET);
    let a = r.hello("api", "n1", 0);
    r.sent(a, 10, 3);
    r.nack(a, 10, "bad route");
    let s = &r.proxy_statuses()[0];
    assert_eq!(s.nack.as_deref(), Some("version 10: bad route"));
    assert_eq!(s.applied_version, None);
    r.sent(a, 11, 4);
    r.ack(a, 11);
    let s = &r.proxy_statuses()[0];
    assert_eq!(
        (s.applied_version, s.applied_config_version),
        (Some(11), Some(4))
    );
    assert_eq!(s.nack, None);
}

#[test]
fn a_loopback_registration_from_another_host_is_refused() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    let why = registration_problem(a("127.0.0.1:4143"), a("10.0.0.7:50000")).unwrap();
    assert!(
        why.contains("127.0.0.1:4143") && why.contains("10.0.0.7") && why.contains("advertise"),
        "{why}"
    );
    assert!(registration_problem(a("[::1]:4143"), a("[fd00::7]:50000")).is_some());
    // Same host (also as a dual-stack socket reports it), or a routable
    // address: fine.
    assert_eq!(
        registration_problem(a("127.0.0.1:4143"), a("[::ffff:127.0.0.1]:50000")),
        None
    );
    assert_eq!(
        registration_problem(a("127.0.0.1:4143"), a("127.0.0.1:50000")),
        None
    );
    assert_eq!(
        registration_problem(a("10.0.0.7:4143"), a("10.0.0.7:50000")),
        None
    );
}

#[test]
fn a_held_session_shows_what_the_proxy_said_it_runs_until_control_sends_one() {
    let t0 = Instant::now();
    let mut r = Registry::new(Duration::from_secs(15), t0, FORGET);
    let a = r.hello("api", "n1", 0);
    r.held(a, 41);
    let s = r.proxy_statuses();
    assert_eq!((s[0].held_running, s[0].applied_version), (Some(41), None));
    r.sent(a, 42, 7);
    assert_eq!(r.proxy_statuses()[0].held_running, None);
}

#[test]
fn an_evicted_node_loses_its_endpoints_and_lists_its_sessions() {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut r = Registry::new(Duration::from_secs(15), now, Duration::from_secs(600));
    let evil = r.hello("api", "evil", 0);
    let good = r.hello("api", "good", 0);
    r.register(
        evil,
        "10.0.0.9:4143".parse().unwrap(),
        BTreeMap::new(),
        now,
        wall,
    );
    r.register(
        good,
        "10.0.0.2:4143".parse().unwrap(),
        BTreeMap::new(),
        now,
        wall,
    );
    assert_eq!(r.connected_on("evil"), vec![evil]);
    assert_eq!(r.withdraw_node("evil"), 1);
    let left: Vec<String> = r
        .endpoints_of("api")
        .iter()
        .map(|e| e.node.clone())
        .collect();
    assert_eq!(left, ["good"]);
    assert_eq!(r.withdraw_node("evil"), 0);
    r.disconnected(evil, now, wall);
    assert!(r.connected_on("evil").is_empty());
}
