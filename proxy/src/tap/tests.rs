use super::*;

struct Req<'a> {
    method: &'a [u8],
    path: &'a [u8],
    traceparent: Option<&'a [u8]>,
}

impl RequestView for Req<'_> {
    fn method(&self) -> &[u8] {
        self.method
    }
    fn authority(&self) -> Option<&[u8]> {
        Some(b"api:8080")
    }
    fn path_and_query(&self) -> &[u8] {
        self.path
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        (name == "traceparent")
            .then_some(self.traceparent)
            .flatten()
    }
}

fn get(path: &[u8]) -> Req<'_> {
    Req {
        method: b"GET",
        path,
        traceparent: None,
    }
}

fn spec(
    id: u64,
    prefix: Option<&str>,
    rps: u32,
) -> (Arc<TapSpec>, async_channel::Receiver<(u64, TapRecord)>) {
    let (tx, rx) = async_channel::bounded(4);
    let spec = TapSpec {
        id,
        path_prefix: prefix.map(|p| p.as_bytes().into()),
        per_shard_rps: rps,
        tx,
        dropped: AtomicU64::new(0),
    };
    (Arc::new(spec), rx)
}

#[test]
fn nothing_is_copied_without_a_tap() {
    let tap = ShardTap::default();
    assert!(tap
        .begin(Direction::Inbound, &get(b"/x"), None, Instant::now())
        .is_none());
}

#[test]
fn a_record_has_the_request_line_the_caller_and_how_it_ended() {
    let tap = ShardTap::default();
    let (s, rx) = spec(7, Some("/users"), 10);
    tap.set(Arc::new(vec![s]));
    let now = Instant::now();
    let req = Req {
        method: b"POST",
        path: b"/users/7?token=secret",
        traceparent: Some(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
    };
    let t = tap.begin(
        Direction::Inbound,
        &req,
        Some("spiffe://m/service/web"),
        now,
    );
    assert!(t.is_some());
    // Another path is not wanted.
    assert!(tap
        .begin(Direction::Inbound, &get(b"/orders"), None, now)
        .is_none());
    tap.finish(t, "api", 201, Duration::from_micros(1500));
    let (id, r) = rx.try_recv().expect("a record");
    assert_eq!(id, 7);
    assert_eq!(
        (
            r.direction.as_str(),
            r.caller.as_deref(),
            r.method.as_str(),
            r.authority.as_str(),
            r.path.as_str(),
            r.service.as_str(),
            r.status,
            r.latency_us
        ),
        (
            "inbound",
            Some("spiffe://m/service/web"),
            "POST",
            "api:8080",
            "/users/7",
            "api",
            201,
            1500
        ),
        "the query is left out"
    );
    assert_eq!(
        r.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[test]
fn each_shard_keeps_to_its_share_of_the_rate_and_a_full_channel_drops() {
    let tap = ShardTap::default();
    let (s, rx) = spec(1, None, 2);
    tap.set(Arc::new(vec![s.clone()]));
    let now = Instant::now();
    let taken: Vec<_> = (0..5)
        .filter_map(|_| tap.begin(Direction::Outbound, &get(b"/"), None, now))
        .collect();
    assert_eq!(taken.len(), 2);
    assert_eq!(s.dropped.load(Ordering::Relaxed), 3);
    // The next second has room again.
    let later = now + Duration::from_secs(1);
    for _ in 0..6 {
        let mut more = Vec::new();
        for _ in 0..2 {
            more.push(tap.begin(Direction::Outbound, &get(b"/"), None, later));
        }
        for t in more {
            tap.finish(t, "db", 200, Duration::ZERO);
        }
    }
    // 2 taken in that second; the channel holds 4, so nothing more fits.
    assert_eq!(rx.len(), 2);
    for t in taken {
        tap.finish(Some(t), "db", 200, Duration::ZERO);
    }
    assert_eq!(rx.len(), 4);
}

#[test]
fn trace_ids() {
    assert_eq!(
        trace_id(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    assert_eq!(
        trace_id(b"00-00000000000000000000000000000000-b7ad6b7169203331-01"),
        None
    );
    assert_eq!(
        trace_id(b"00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01"),
        None
    );
    assert_eq!(trace_id(b"garbage"), None);
    assert_eq!(trace_id(b""), None);
}
