use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use crate::stats::ShardStats;

/// How a fake shard treats stats requests.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers at once, like the real shard loop.
    Answers,
    /// Takes requests and never answers (a shard stuck in a request).
    Stuck,
}

/// A shard thread for the agent side to ask; ends when the handle's sender
/// is dropped.
fn fake_shard(index: usize, how: Behaviour) -> (ShardHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = async_channel::unbounded::<ShardMsg>();
    let thread = std::thread::spawn(move || {
        let st = ShardStats::new(index);
        let mut held = Vec::new();
        while let Ok(msg) = rx.recv_blocking() {
            if let ShardMsg::Snapshot(reply) = msg {
                match how {
                    Behaviour::Answers => {
                        let _ = reply.send(st.snapshot());
                    }
                    Behaviour::Stuck => held.push(reply),
                }
            }
        }
    });
    let handle = ShardHandle {
        index,
        tx,
        open_conns: Arc::new(AtomicUsize::new(0)),
        ready: Arc::new(AtomicBool::new(true)),
    };
    (handle, thread)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn every_shard_answering_is_healthy() {
    let (a, ta) = fake_shard(0, Behaviour::Answers);
    let (b, tb) = fake_shard(1, Behaviour::Answers);
    let shards = vec![a, b];
    assert!(block_on(shards_answer(&shards, Duration::from_secs(2))));
    drop(shards);
    ta.join().expect("shard 0");
    tb.join().expect("shard 1");
}

#[test]
fn one_stuck_shard_withholds_the_ping_within_the_deadline() {
    let (a, ta) = fake_shard(0, Behaviour::Answers);
    let (b, tb) = fake_shard(1, Behaviour::Stuck);
    let shards = vec![a, b];
    let started = std::time::Instant::now();
    assert!(!block_on(shards_answer(
        &shards,
        Duration::from_millis(200)
    )));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "the answer waits out the deadline, not longer: {took:?}"
    );
    drop(shards);
    ta.join().expect("shard 0");
    tb.join().expect("shard 1");
}

#[test]
fn a_shard_that_is_gone_withholds_the_ping() {
    let (a, ta) = fake_shard(0, Behaviour::Answers);
    let (tx, rx) = async_channel::unbounded::<ShardMsg>();
    drop(rx);
    let gone = ShardHandle {
        index: 1,
        tx,
        open_conns: Arc::new(AtomicUsize::new(0)),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let shards = vec![a, gone];
    assert!(!block_on(shards_answer(&shards, Duration::from_secs(1))));
    drop(shards);
    ta.join().expect("shard 0");
}

#[test]
fn pings_every_half_period_and_wants_answers_within_a_quarter() {
    let (every, within) = watchdog_timing(Duration::from_secs(30));
    assert_eq!(every, Duration::from_secs(15));
    assert_eq!(within, Duration::from_millis(7500));
    // The latest a ping can land after the previous one stays inside the period.
    assert!(every + within < Duration::from_secs(30));
}
