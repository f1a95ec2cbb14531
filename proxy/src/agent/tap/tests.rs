use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// Fake shards: the handles, and what each was sent.
fn shards(n: usize) -> (Vec<ShardHandle>, Vec<async_channel::Receiver<ShardMsg>>) {
    (0..n)
        .map(|index| {
            let (tx, rx) = async_channel::unbounded();
            let h = ShardHandle {
                index,
                tx,
                open_conns: Arc::new(AtomicUsize::new(0)),
                ready: Arc::new(AtomicBool::new(true)),
            };
            (h, rx)
        })
        .unzip()
}

/// The tap lists a shard was sent, as (id, path prefix, per-shard rps).
fn lists(rx: &async_channel::Receiver<ShardMsg>) -> Vec<Vec<(u64, Option<String>, u32)>> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|m| match m {
            ShardMsg::Tap(list) => Some(
                list.iter()
                    .map(|s| {
                        (
                            s.id,
                            s.path_prefix
                                .as_deref()
                                .map(|p| String::from_utf8_lossy(p).into_owned()),
                            s.per_shard_rps,
                        )
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn record(path: &str) -> TapRecord {
    TapRecord {
        at_ms: 1,
        direction: "inbound".into(),
        caller: None,
        service: "api".into(),
        method: "GET".into(),
        authority: "api".into(),
        path: path.into(),
        status: 200,
        latency_us: 1,
        trace_id: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn taps_reach_every_shard_and_renewals_only_move_the_deadline() {
    let _rt = rt().enter();
    let (handles, rxs) = shards(2);
    let mut t = Tapper::new(handles);
    t.start(1, Some("/users".into()), 5, Duration::from_secs(15));
    for rx in &rxs {
        // 5 a second split over 2 cores: 3 each (rounded up).
        assert_eq!(lists(rx), vec![vec![(1, Some("/users".to_string()), 3)]]);
    }
    let first = t.next_expiry().unwrap();
    t.start(1, Some("/users".into()), 5, Duration::from_secs(30));
    assert!(
        lists(&rxs[0]).is_empty(),
        "a renewal changes nothing on the shards"
    );
    assert!(t.next_expiry().unwrap() > first);
    // Another tap beside it, then a changed filter.
    t.start(2, None, 1, Duration::from_secs(15));
    let mut got = lists(&rxs[1]).pop().unwrap();
    got.sort();
    assert_eq!(got, vec![(1, Some("/users".into()), 3), (2, None, 1)]);
    t.stop(1);
    assert_eq!(lists(&rxs[0]).pop().unwrap(), vec![(2, None, 1)]);
    // Not renewed: it ends by itself.
    t.expire(tokio::time::Instant::now() + Duration::from_secs(16));
    assert_eq!(lists(&rxs[0]), vec![vec![]]);
    assert_eq!(t.next_expiry(), None);
    // A TTL over the limit is cut to it.
    t.start(3, None, 1, Duration::from_secs(3600));
    assert!(t.next_expiry().unwrap() <= tokio::time::Instant::now() + MAX_TTL);
    // The session ends: its taps end.
    let _ = lists(&rxs[0]);
    drop(t);
    assert_eq!(lists(&rxs[0]), vec![vec![]]);
}

#[test]
fn records_are_batched_per_tap_with_the_drop_counts() {
    let rt = rt();
    let _guard = rt.enter();
    let (handles, _rxs) = shards(1);
    let mut t = Tapper::new(handles);
    t.start(1, None, 10, Duration::from_secs(15));
    t.start(2, None, 10, Duration::from_secs(15));
    t.taps[&1].spec.dropped.store(4, Ordering::Relaxed);
    for (tap, path) in [(1, "/a"), (2, "/b"), (1, "/c"), (9, "/stopped")] {
        t.tx.try_send((tap, record(path))).unwrap();
    }
    let mut batch = rt.block_on(t.batch());
    batch.sort_by_key(|m| match m {
        ProxyMsg::TapRecords { tap, .. } => *tap,
        _ => 0,
    });
    let summary: Vec<(u64, Vec<String>, u64)> = batch
        .into_iter()
        .map(|m| match m {
            ProxyMsg::TapRecords {
                tap,
                records,
                dropped,
            } => (tap, records.into_iter().map(|r| r.path).collect(), dropped),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, vec!["/a".to_string(), "/c".to_string()], 4),
            (2, vec!["/b".to_string()], 0)
        ],
        "a stopped tap's records are left out"
    );
    // Drops in a quiet stretch are reported on their own.
    t.taps[&2].spec.dropped.store(7, Ordering::Relaxed);
    let reports = t.dropped_reports();
    assert_eq!(
        reports,
        vec![ProxyMsg::TapRecords {
            tap: 2,
            records: vec![],
            dropped: 7
        }]
    );
    assert!(t.dropped_reports().is_empty(), "each drop is reported once");
}
