//! `coremesh-bench load`: the open-loop HTTP/1.1 load generator.
//!
//! Each `--threads` thread runs its own single-threaded mio event loop and
//! owns its share of the connections and of the rate; threads share nothing
//! until they report at the end. Per thread:
//!
//! ```text
//!   loop:
//!     now = clock
//!     while a connection is free and the schedule has a request due at now:
//!         send the pre-built request on it, remembering the intended time
//!     arm the timerfd for the next due request (or the end of the run)
//!     epoll wait; on each event: finish a connect, continue a write, or read
//!         and frame the response; when one completes, record
//!         (now - intended) and free the connection
//! ```
//!
//! Why mio and not tokio: the loop above is the whole program, and with mio
//! it is written out plainly: no task per connection, no waker, no future
//! state machines, and nothing allocated per request (the request bytes are
//! built once, each connection reads into its own buffer for the whole run).
//! That keeps the generator's CPU per request a small fraction of the
//! proxy's, which is what lets a 2-core machine measure a proxy at all.
//!
//! Connections are keep-alive and carry one request at a time (no
//! pipelining). With `--new-conn`, each request opens a connection, sends
//! `Connection: close`, and the connect time counts in its latency.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};

use crate::http::{ResponseReader, Step, Tag};
use crate::schedule::{Latency, LatencySummary, Schedule};
use crate::sys;

pub mod http2;

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Shown in the report.
    pub url: String,
    pub addr: SocketAddr,
    /// The exact bytes of the request, sent unchanged every time.
    pub request: Vec<u8>,
    /// Requests per second over all threads; 0 = closed loop.
    pub rate: f64,
    pub duration: Duration,
    /// Run this long first without recording latency.
    pub warmup: Duration,
    pub connections: usize,
    pub threads: usize,
    /// A new connection (and `Connection: close`) for every request.
    pub new_conn: bool,
    /// After the run, how long in-flight requests may take before they are
    /// counted as timeouts.
    pub drain: Duration,
    /// Keep an [`Outcome`] per request ([`run_with_timeline`]).
    pub timeline: bool,
}

/// How a request without a response failed (see [`Errors`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    Connect,
    Write,
    Read,
    Parse,
    Closed,
    Timeout,
}

/// One request of a run with a timeline: when it was intended to go out
/// and when it ended (CLOCK_MONOTONIC nanoseconds, [`sys::now_ns`]), its
/// status or failure, and the origin instance that answered, if one did
/// ([`crate::http::INSTANCE_HEADER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub intended: u64,
    pub done: u64,
    pub result: Result<u16, Failure>,
    pub instance: Option<Tag>,
}

/// Errors by kind. A failed request is counted once, under its first error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// The TCP connect failed (refused, reset, unreachable).
    pub connect: u64,
    /// Writing the request failed.
    pub write: u64,
    /// Reading the response failed (reset).
    pub read: u64,
    /// The response could not be framed, or bytes came that no request asked for.
    pub parse: u64,
    /// The server closed the connection before the response was complete.
    pub closed: u64,
    /// Still in flight when the run's drain period ran out.
    pub timeout: u64,
    /// Complete responses with a 4xx status.
    pub status_4xx: u64,
    /// Complete responses with a 5xx status.
    pub status_5xx: u64,
    /// gRPC calls answered with a grpc-status other than 0 (HTTP 200).
    #[serde(default)]
    pub grpc: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect
            + self.write
            + self.read
            + self.parse
            + self.closed
            + self.timeout
            + self.status_4xx
            + self.status_5xx
            + self.grpc
    }

    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.write += o.write;
        self.read += o.read;
        self.parse += o.parse;
        self.closed += o.closed;
        self.timeout += o.timeout;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.grpc += o.grpc;
    }

    /// "connect 3, read 1" or "none".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("connect", self.connect),
            ("write", self.write),
            ("read", self.read),
            ("parse", self.parse),
            ("closed", self.closed),
            ("timeout", self.timeout),
            ("4xx", self.status_4xx),
            ("5xx", self.status_5xx),
            ("grpc-status", self.grpc),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The generator's own CPU use, so a reader can tell it was not the bottleneck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorCpu {
    pub user_s: f64,
    pub sys_s: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cores_used: f64,
    pub us_per_request: f64,
}

/// The result of a load run (printed, or as JSON with `--json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub url: String,
    /// "http/1.1" (or empty, in reports written before HTTP/2), "h2c" or
    /// "grpc" ([`http2`]).
    #[serde(default)]
    pub protocol: String,
    /// Requests per second asked for; 0 = closed loop.
    pub target_rate: f64,
    pub threads: usize,
    pub connections: usize,
    /// HTTP/2: concurrent streams per connection (at most); 0 for HTTP/1.1.
    #[serde(default)]
    pub streams: usize,
    pub new_conn: bool,
    /// Measured period (excluding warm-up), seconds.
    pub duration_s: f64,
    /// Responses whose latency was recorded (intended after the warm-up).
    pub responses: u64,
    /// All complete responses, warm-up included (for CPU per request).
    pub responses_total: u64,
    /// Recorded responses per second of the measured period.
    pub achieved_rate: f64,
    /// Open loop: requests due before the end that no connection was free to
    /// send. Non-zero means the target could not keep up with the rate.
    pub unsent: u64,
    /// From each request's intended send time to its last response byte.
    pub latency_us: LatencySummary,
    pub errors: Errors,
    /// Wall time of the whole run (connect, warm-up, measure, drain), seconds.
    pub wall_s: f64,
    pub generator: GeneratorCpu,
}

impl LoadReport {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mode = if self.target_rate > 0.0 {
            format!("open loop at {:.0} req/s", self.target_rate)
        } else {
            "closed loop (max throughput)".into()
        };
        let l = &self.latency_us;
        let mut s = String::new();
        s += &format!("target     {}\n", self.url);
        let conns = if self.streams > 0 {
            format!(
                "{} {} connections x {} streams",
                self.connections, self.protocol, self.streams
            )
        } else if self.new_conn {
            format!("{} connections (new per request)", self.connections)
        } else {
            format!("{} connections (keep-alive)", self.connections)
        };
        s += &format!("mode       {mode}, {conns}, {} thread(s)\n", self.threads);
        s += &format!(
            "achieved   {:.1} req/s over {:.2} s ({} responses{})\n",
            self.achieved_rate,
            self.duration_s,
            self.responses,
            if self.unsent > 0 {
                format!(", {} due but never sent", self.unsent)
            } else {
                String::new()
            }
        );
        s += &format!(
            "latency    p50 {} p90 {} p99 {} p99.9 {} max {} (from intended send time)\n",
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
        s += &format!("errors     {}\n", self.errors.describe());
        s += &format!(
            "generator  {:.2} s user + {:.2} s sys = {:.0}% of a core, {:.2} us/request\n",
            self.generator.user_s,
            self.generator.sys_s,
            self.generator.cores_used * 100.0,
            self.generator.us_per_request
        );
        s
    }
}

/// "85 us", "1.25 ms", "2.10 s".
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} us")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Why [`parse_url`] refused a `--url`.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("--url {url:?}: only http:// URLs are supported")]
    NotHttp { url: String },
    #[error("--url {url:?}: no host")]
    NoHost { url: String },
    #[error("--url {url:?}: cannot resolve {authority}")]
    Resolve {
        url: String,
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("--url {url:?}: {authority} resolves to no address")]
    NoAddress { url: String, authority: String },
}

/// Splits an `http://host[:port][/path]` URL into (host header, address, path).
pub fn parse_url(url: &str) -> Result<(String, SocketAddr, String), UrlError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| UrlError::NotHttp {
            url: url.to_string(),
        })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(UrlError::NoHost {
            url: url.to_string(),
        });
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|source| UrlError::Resolve {
            url: url.to_string(),
            authority: with_port.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| UrlError::NoAddress {
            url: url.to_string(),
            authority: with_port.clone(),
        })?;
    Ok((authority.to_string(), addr, path.to_string()))
}

/// Runs the load and reports. Blocks for about warm-up + duration.
pub fn run(cfg: &LoadConfig) -> io::Result<LoadReport> {
    run_with_timeline(cfg).map(|(report, _)| report)
}

/// [`run`], with every request's [`Outcome`] (warm-up included), ordered
/// by intended time, when `cfg.timeline` is set (else none).
pub fn run_with_timeline(cfg: &LoadConfig) -> io::Result<(LoadReport, Vec<Outcome>)> {
    let threads = cfg.threads.max(1);
    let conns = cfg.connections.max(threads);
    let (cpu_u0, cpu_s0) = sys::self_cpu_seconds();
    let wall0 = sys::now_ns();
    let barrier = Arc::new(Barrier::new(threads));
    let request: Arc<[u8]> = cfg.request.clone().into();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let share = conns / threads + usize::from(t < conns % threads);
            let spec = ThreadSpec {
                index: t,
                threads,
                addr: cfg.addr,
                request: request.clone(),
                rate: cfg.rate / threads as f64,
                connections: share,
                new_conn: cfg.new_conn,
                warmup: cfg.warmup.as_nanos() as u64,
                duration: cfg.duration.as_nanos() as u64,
                drain: cfg.drain.as_nanos() as u64,
                barrier: barrier.clone(),
                timeline: cfg.timeline,
            };
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || run_thread(spec))
        })
        .collect::<io::Result<_>>()?;
    let mut latency = Latency::new(0);
    let mut errors = Errors::default();
    let mut total = 0;
    let mut unsent = 0;
    let mut timeline = Vec::new();
    for h in handles {
        let out = h
            .join()
            .map_err(|_| io::Error::other("load thread panicked"))??;
        timeline.extend(out.timeline);
        latency.merge(&out.latency);
        errors.add(&out.errors);
        total += out.responses_total;
        unsent += out.unsent;
    }
    let wall_s = (sys::now_ns() - wall0) as f64 / 1e9;
    let (cpu_u1, cpu_s1) = sys::self_cpu_seconds();
    let (user_s, sys_s) = (cpu_u1 - cpu_u0, cpu_s1 - cpu_s0);
    let duration_s = cfg.duration.as_secs_f64();
    let responses = latency.count();
    timeline.sort_by_key(|o| o.intended);
    let report = LoadReport {
        url: cfg.url.clone(),
        protocol: "http/1.1".into(),
        streams: 0,
        target_rate: cfg.rate.max(0.0),
        threads,
        connections: conns,
        new_conn: cfg.new_conn,
        duration_s,
        responses,
        responses_total: total,
        achieved_rate: if duration_s > 0.0 {
            responses as f64 / duration_s
        } else {
            0.0
        },
        unsent,
        latency_us: latency.summary(),
        errors,
        wall_s,
        generator: GeneratorCpu {
            user_s,
            sys_s,
            cores_used: (user_s + sys_s) / wall_s.max(1e-9),
            us_per_request: if total > 0 {
                (user_s + sys_s) * 1e6 / total as f64
            } else {
                0.0
            },
        },
    };
    Ok((report, timeline))
}

struct ThreadSpec {
    index: usize,
    threads: usize,
    addr: SocketAddr,
    request: Arc<[u8]>,
    rate: f64,
    connections: usize,
    new_conn: bool,
    warmup: u64,
    duration: u64,
    drain: u64,
    barrier: Arc<Barrier>,
    timeline: bool,
}

struct ThreadOutcome {
    latency: Latency,
    errors: Errors,
    responses_total: u64,
    unsent: u64,
    timeline: Vec<Outcome>,
}

const TIMER: Token = Token(usize::MAX - 1);
/// Per-connection read buffer; a response head must fit in it.
const BUF: usize = 64 * 1024;
/// After a failed connect, a connection waits this long before it is used
/// again, so a dead target does not turn the loop into a busy spin.
const RETRY_NS: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No socket; the next request opens one.
    Down,
    /// Connect in progress.
    Connecting,
    /// Connected; a request is in flight iff `busy`.
    Open,
}

struct Conn {
    stream: Option<TcpStream>,
    phase: Phase,
    busy: bool,
    /// Intended send time of the request in flight.
    intended: u64,
    written: usize,
    filled: usize,
    reader: ResponseReader,
    buf: Box<[u8]>,
}

/// One thread's event loop and its state.
struct Worker {
    poll: Poll,
    conns: Vec<Conn>,
    /// Connections ready to take a request (open and idle, or down).
    free: Vec<usize>,
    /// Connections cooling off after a failed connect: (usable at, index).
    cooling: std::collections::VecDeque<(u64, usize)>,
    addr: SocketAddr,
    request: Arc<[u8]>,
    new_conn: bool,
    latency: Latency,
    errors: Errors,
    responses_total: u64,
    busy: usize,
    /// `Some` when the run keeps a timeline.
    timeline: Option<Vec<Outcome>>,
}

fn run_thread(spec: ThreadSpec) -> io::Result<ThreadOutcome> {
    sys::set_min_timer_slack();
    let poll = Poll::new()?;
    let mut timer = sys::Timer::new()?;
    poll.registry()
        .register(&mut SourceFd(&timer.raw_fd()), TIMER, Interest::READABLE)?;
    let conns = (0..spec.connections)
        .map(|_| Conn {
            stream: None,
            phase: Phase::Down,
            busy: false,
            intended: 0,
            written: 0,
            filled: 0,
            reader: ResponseReader::new(),
            buf: vec![0u8; BUF].into_boxed_slice(),
        })
        .collect();
    let mut w = Worker {
        poll,
        conns,
        free: Vec::with_capacity(spec.connections),
        cooling: Default::default(),
        addr: spec.addr,
        request: spec.request,
        new_conn: spec.new_conn,
        latency: Latency::new(u64::MAX),
        errors: Errors::default(),
        responses_total: 0,
        busy: 0,
        timeline: spec.timeline.then(Vec::new),
    };
    let mut events = Events::with_capacity(1024);

    // Keep-alive runs open every connection before the clock starts, so the
    // handshakes are not part of the first requests' latency.
    if !w.new_conn {
        for i in 0..w.conns.len() {
            w.connect(i);
        }
        let give_up = sys::now_ns() + 5_000_000_000;
        while w.conns.iter().any(|c| c.phase == Phase::Connecting) && sys::now_ns() < give_up {
            w.poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            for ev in events.iter() {
                w.on_event(
                    ev.token().0,
                    ev.is_readable(),
                    ev.is_writable() || ev.is_error(),
                );
            }
        }
    }
    w.free = (0..w.conns.len())
        .filter(|&i| w.conns[i].phase != Phase::Connecting)
        .rev()
        .collect();
    // A connection whose connect failed above is already Down (so in
    // `free`): it retries on its first request.
    w.cooling.clear();
    w.errors = Errors::default();

    spec.barrier.wait();
    let start = sys::now_ns();
    // Threads interleave their schedules: together they send evenly spaced.
    let phase = if spec.rate > 0.0 {
        start + (1e9 / spec.rate * spec.index as f64 / spec.threads as f64) as u64
    } else {
        start
    };
    let end = start + spec.warmup + spec.duration;
    let drain_end = end + spec.drain;
    let mut sched = Schedule::new(spec.rate, phase, end);
    w.latency = Latency::new(start + spec.warmup);
    // Open loop: one periodic timer, firing at every intended send time, costs
    // no syscall per request (a one-shot timer would need re-arming each time).
    if let Some(interval) = sched.interval() {
        timer.arm(phase, interval)?;
    }

    loop {
        let now = sys::now_ns();
        while w.cooling.front().is_some_and(|&(at, _)| at <= now) {
            if let Some((_, i)) = w.cooling.pop_front() {
                w.free.push(i);
            }
        }
        while let Some(&i) = w.free.last() {
            let Some(intended) = sched.take_due(now) else {
                break;
            };
            w.free.pop();
            w.start_request(i, intended);
        }
        if now >= end && (w.busy == 0 || now >= drain_end) {
            break;
        }
        // The periodic timer wakes us for each due request; the rest
        // (the end, connect retries) needs only millisecond precision.
        let mut wake = if now < end { end } else { drain_end };
        if let Some(&(at, _)) = w.cooling.front() {
            wake = wake.min(at);
        }
        let timeout = Duration::from_nanos(wake.saturating_sub(now)).max(Duration::from_micros(1));
        match w.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                // Edge-triggered: unread expiries would silence later ones.
                timer.clear();
            } else {
                w.on_event(
                    ev.token().0,
                    ev.is_readable(),
                    ev.is_writable() || ev.is_error(),
                );
            }
        }
    }
    w.errors.timeout += w.busy as u64;
    if let Some(t) = w.timeline.as_mut() {
        let now = sys::now_ns();
        t.extend(w.conns.iter().filter(|c| c.busy).map(|c| Outcome {
            intended: c.intended,
            done: now,
            result: Err(Failure::Timeout),
            instance: None,
        }));
    }
    Ok(ThreadOutcome {
        latency: w.latency,
        errors: w.errors,
        responses_total: w.responses_total,
        unsent: sched.unsent(),
        timeline: w.timeline.unwrap_or_default(),
    })
}

impl Worker {
    /// Starts a non-blocking connect on connection `i`.
    fn connect(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        match TcpStream::connect(self.addr) {
            Ok(mut s) => {
                // Small requests must not wait for Nagle.
                let _ = s.set_nodelay(true);
                if self
                    .poll
                    .registry()
                    .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                    .is_err()
                {
                    return false;
                }
                c.stream = Some(s);
                c.phase = Phase::Connecting;
                c.filled = 0;
                c.reader.reset();
                true
            }
            Err(_) => false,
        }
    }

    /// Sends the request intended at `intended` on connection `i`.
    fn start_request(&mut self, i: usize, intended: u64) {
        let c = &mut self.conns[i];
        c.busy = true;
        c.intended = intended;
        c.written = 0;
        self.busy += 1;
        if c.phase == Phase::Down {
            if !self.connect(i) {
                self.fail(i, Failure::Connect);
            }
            // The write happens when the connect completes.
            return;
        }
        self.write(i);
    }

    fn on_event(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Connecting {
            let Some(s) = c.stream.as_ref() else { return };
            match s.take_error() {
                Ok(None) => {}
                _ => return self.fail(i, Failure::Connect),
            }
            match s.peer_addr() {
                Ok(_) => c.phase = Phase::Open,
                // Spurious wake-up; the connect is still in progress.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return self.fail(i, Failure::Connect),
            }
            if !c.busy {
                // Opened before the run: nothing to send yet.
                return;
            }
        }
        if c.phase != Phase::Open {
            return;
        }
        if writable && c.busy && c.written < self.request.len() {
            self.write(i);
        }
        if readable {
            self.read(i);
        }
    }

    fn write(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_mut() else { return };
        while c.written < self.request.len() {
            match s.write(&self.request[c.written..]) {
                Ok(0) => return self.fail(i, Failure::Write),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(i, Failure::Write),
            }
        }
    }

    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let Some(s) = c.stream.as_mut() else { return };
            if c.filled == c.buf.len() {
                // A head larger than the buffer.
                return self.fail(i, Failure::Parse);
            }
            let n = match s.read(&mut c.buf[c.filled..]) {
                Ok(0) => return self.on_eof(i),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.fail(i, Failure::Read),
            };
            c.filled += n;
            if !c.busy {
                // Bytes nobody asked for.
                return self.fail(i, Failure::Parse);
            }
            let (used, step) = match c.reader.feed(&c.buf[..c.filled]) {
                Ok(r) => r,
                Err(_) => return self.fail(i, Failure::Parse),
            };
            if used > 0 {
                c.buf.copy_within(used..c.filled, 0);
                c.filled -= used;
            }
            if let Step::Done(resp) = step {
                let leftover = c.filled > 0;
                self.complete(i, resp.status);
                if leftover {
                    return self.fail(i, Failure::Parse);
                }
                if !resp.keep_alive || self.new_conn {
                    self.close(i);
                    self.free.push(i);
                } else {
                    self.free.push(i);
                    // Edge-triggered: whatever else arrives wakes us again.
                    return;
                }
                return;
            }
        }
    }

    fn on_eof(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.busy {
            // The server closed an idle keep-alive connection: reopen it on
            // its next request. Not an error.
            self.close(i);
            return;
        }
        match c.reader.feed_eof() {
            Ok(resp) => {
                self.complete(i, resp.status);
                self.close(i);
                self.free.push(i);
            }
            Err(_) => self.fail(i, Failure::Closed),
        }
    }

    fn complete(&mut self, i: usize, status: u16) {
        let now = sys::now_ns();
        let c = &mut self.conns[i];
        c.busy = false;
        self.busy -= 1;
        self.responses_total += 1;
        if let Some(t) = self.timeline.as_mut() {
            t.push(Outcome {
                intended: c.intended,
                done: now,
                result: Ok(status),
                instance: c.reader.instance(),
            });
        }
        if self.latency.record(c.intended, now) {
            match status {
                400..=499 => self.errors.status_4xx += 1,
                500..=599 => self.errors.status_5xx += 1,
                _ => {}
            }
        }
    }

    /// Counts the failure of connection `i`'s request (if any), drops the
    /// socket and makes the connection available again.
    fn fail(&mut self, i: usize, kind: Failure) {
        let was_busy = self.conns[i].busy;
        let was_free = !was_busy && self.free.contains(&i);
        if was_busy {
            let e = &mut self.errors;
            match kind {
                Failure::Connect => e.connect += 1,
                Failure::Write => e.write += 1,
                Failure::Read => e.read += 1,
                Failure::Parse => e.parse += 1,
                Failure::Closed => e.closed += 1,
                Failure::Timeout => e.timeout += 1,
            }
            if let Some(t) = self.timeline.as_mut() {
                t.push(Outcome {
                    intended: self.conns[i].intended,
                    done: sys::now_ns(),
                    result: Err(kind),
                    instance: None,
                });
            }
            self.conns[i].busy = false;
            self.busy -= 1;
        } else if matches!(kind, Failure::Parse) {
            self.errors.parse += 1;
        }
        self.close(i);
        if was_free {
            return;
        }
        if matches!(kind, Failure::Connect) {
            self.cooling.push_back((sys::now_ns() + RETRY_NS, i));
        } else {
            self.free.push(i);
        }
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.phase = Phase::Down;
        c.filled = 0;
        c.reader.reset();
    }
}

#[cfg(test)]
mod tests;
