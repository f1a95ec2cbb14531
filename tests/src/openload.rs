//! Open-loop load for the failover tests: GETs sent at a fixed rate from
//! their intended send times, whatever the answers take, by a pool of
//! workers with keep-alive connections; every outcome is kept, with the
//! time it was meant to be sent, so a test can look at what happened after
//! a fault.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{Client, Request};

/// What one request got.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seq: usize,
    /// When the schedule meant it to be sent.
    pub intended: Instant,
    /// From `intended` until the answer was read (or the failure).
    pub latency: Duration,
    /// `Ok((status, x-origin))`, or what went wrong (status, coremesh-error,
    /// body; or the transport error).
    pub result: Result<(u16, String), String>,
    /// Sent again on a new connection because the keep-alive connection it
    /// was sent on had been closed by the server (see [`LoadSpec::retry_stale`]).
    pub stale_retry: bool,
}

impl Outcome {
    /// A 200 answer.
    pub fn ok(&self) -> bool {
        matches!(self.result, Ok((200, _)))
    }
    /// The origin that answered, for a 200.
    pub fn origin(&self) -> Option<&str> {
        match &self.result {
            Ok((200, o)) => Some(o),
            _ => None,
        }
    }
}

/// A running load; [`OpenLoad::stop`] returns every outcome. Dropped
/// without `stop` (a test that panicked), it stops sending.
pub struct OpenLoad {
    stop: Arc<AtomicBool>,
    scheduler: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Drop for OpenLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Where and how fast.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The host's namespace the client runs in (`None`: the test's own).
    pub netns: Option<String>,
    pub target: SocketAddr,
    /// The Host header.
    pub authority: String,
    pub path: String,
    pub per_second: f64,
    /// Requests in flight at most (one worker, one connection each).
    pub workers: usize,
    /// Do what HTTP client libraries do (RFC 9112 section 9.3.1): a GET
    /// whose reused keep-alive connection fails before any answer is sent
    /// once more on a new connection. A server may close an idle connection
    /// at any moment, and a request can cross that close on the wire.
    pub retry_stale: bool,
}

type Jobs = Arc<Mutex<Receiver<(usize, Instant)>>>;

impl OpenLoad {
    pub fn start(spec: LoadSpec) -> OpenLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(usize, Instant)>();
        let jobs: Jobs = Arc::new(Mutex::new(rx));
        let workers = (0..spec.workers)
            .map(|_| {
                let (jobs, spec) = (jobs.clone(), spec.clone());
                std::thread::spawn(move || match spec.netns.clone() {
                    Some(ns) => coremesh_testnet::enter_netns(&ns, || work(&spec, &jobs)),
                    None => work(&spec, &jobs),
                })
            })
            .collect();
        let st = stop.clone();
        let gap = Duration::from_secs_f64(1.0 / spec.per_second);
        let scheduler = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0;
            while !st.load(Ordering::SeqCst) {
                let at = start + gap * seq as u32;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if tx.send((seq, at)).is_err() {
                    break;
                }
                seq += 1;
            }
        });
        OpenLoad {
            stop,
            scheduler: Some(scheduler),
            workers,
        }
    }

    /// Stops sending, waits for the requests in flight, and returns every
    /// outcome in send order.
    pub fn stop(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.scheduler.take() {
            s.join().expect("load scheduler");
        }
        let mut all: Vec<Outcome> = std::mem::take(&mut self.workers)
            .into_iter()
            .flat_map(|w| w.join().expect("load worker"))
            .collect();
        all.sort_by_key(|o| o.seq);
        all
    }
}

fn work(spec: &LoadSpec, jobs: &Jobs) -> Vec<Outcome> {
    let mut done = Vec::new();
    let mut conn: Option<Client> = None;
    loop {
        let job = jobs.lock().expect("jobs").recv();
        let Ok((seq, intended)) = job else {
            return done;
        };
        let reused = conn.is_some();
        let mut result = one(spec, &mut conn);
        let stale_retry =
            spec.retry_stale && reused && result.as_ref().is_err_and(|e| e.starts_with("io:"));
        if stale_retry {
            result = one(spec, &mut conn);
        }
        done.push(Outcome {
            seq,
            intended,
            latency: intended.elapsed(),
            result,
            stale_retry,
        });
    }
}

fn one(spec: &LoadSpec, conn: &mut Option<Client>) -> Result<(u16, String), String> {
    let c = match conn {
        Some(c) => c,
        None => {
            let mut c = Client::try_connect(spec.target).map_err(|e| format!("connect: {e}"))?;
            c.set_read_timeout(Duration::from_secs(30));
            conn.insert(c)
        }
    };
    let req = Request::get(&spec.path).host(&spec.authority);
    let r = c
        .try_send(&req.to_bytes())
        .and_then(|()| c.try_read_response());
    match r {
        Ok(r) => {
            if r.header_has_token("connection", "close") {
                *conn = None;
            }
            if r.status == 200 {
                Ok((200, r.header("x-origin").unwrap_or("?").to_string()))
            } else {
                *conn = None;
                Err(format!(
                    "{} {:?} {:?}",
                    r.status,
                    r.header("coremesh-error"),
                    r.body_str()
                ))
            }
        }
        Err(e) => {
            *conn = None;
            Err(format!("io: {e}"))
        }
    }
}
