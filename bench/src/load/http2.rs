//! The open-loop HTTP/2 load generator (`coremesh-bench load --h2`, and
//! `--grpc` for unary gRPC calls): h2c with prior knowledge, N connections
//! x M concurrent streams, the same schedule and latency accounting as the
//! HTTP/1.1 generator ([`crate::schedule`]): latency counts from each
//! request's intended send time, so a stall cannot hide.
//!
//! Per `--threads` thread: one current-thread tokio runtime (the `h2` crate
//! needs one), N connections, and N x M *senders*: small tasks, each bound
//! to one connection, that take the next due request from the shared
//! schedule, send it as one stream, read the whole response (and, for
//! gRPC, the trailers), record its latency, and take the next. So a
//! connection never carries more than M streams at once.
//!
//! - Closed loop (`--rate 0`): every sender always has a request: N x M
//!   streams in flight, which measures throughput.
//! - Open loop: a periodic timerfd (tokio's own timer has millisecond
//!   resolution, which would add up to 1 ms to a request sent on schedule)
//!   fires at every intended send time; the timer task wakes one idle
//!   sender per due request, the longest idle first, so the streams spread
//!   over the connections. A request due while every sender is busy waits,
//!   and its wait counts in its latency.
//!
//! A sender whose connection failed (a refused connect, a GOAWAY, a reset)
//! reconnects it on its next request; a failed connect keeps its senders
//! off that connection for 10 ms, as the HTTP/1.1 generator does.
//!
//! gRPC mode sends `POST /coremesh.bench.Bench/Unary` with `content-type:
//! application/grpc`, `te: trailers` and one length-prefixed `Request`
//! ([`crate::grpc`]); a call counts as answered when the status is 200, the
//! body is one well-formed `Reply`, and `grpc-status` is 0 (in the
//! trailers, or in the headers of a trailers-only answer, which counts
//! as an error when it is not 0).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{Errors, Failure, GeneratorCpu, LoadReport};
use crate::grpc;
use crate::schedule::{Latency, Schedule};
use crate::sys;

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `GET path`, no body.
    Get,
    /// A unary gRPC call asking for a `reply_size`-byte payload.
    Grpc { reply_size: u32 },
}

/// What an HTTP/2 load run does.
#[derive(Debug, Clone)]
pub struct H2Config {
    /// Shown in the report.
    pub url: String,
    pub addr: SocketAddr,
    /// `:authority` of every request.
    pub authority: String,
    /// The path of GET requests (gRPC calls use [`grpc::METHOD`]).
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    pub mode: Mode,
    /// Requests per second over all threads; 0 = closed loop.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// Concurrent streams per connection (at most).
    pub streams: usize,
    pub threads: usize,
    pub drain: Duration,
}

/// Why the request could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request {what}: {source}")]
    Http {
        what: &'static str,
        #[source]
        source: http::Error,
    },
}

/// The request every stream sends (cloned), and its body.
fn build(cfg: &H2Config) -> Result<(http::Request<()>, Option<Bytes>), RequestError> {
    let (method, path, body) = match cfg.mode {
        Mode::Get => ("GET", cfg.path.as_str(), None),
        Mode::Grpc { reply_size } => (
            "POST",
            grpc::METHOD,
            Some(Bytes::from(grpc::frame(&grpc::request(reply_size)))),
        ),
    };
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", cfg.authority));
    if matches!(cfg.mode, Mode::Grpc { .. }) {
        b = b
            .header("content-type", grpc::CONTENT_TYPE)
            .header("te", "trailers");
    }
    for (n, v) in &cfg.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    let req = b.body(()).map_err(|source| RequestError::Http {
        what: "headers",
        source,
    })?;
    Ok((req, body))
}

/// One finished stream of a run with a timeline: when it was intended to
/// go out and when it ended (CLOCK_MONOTONIC nanoseconds, [`sys::now_ns`]),
/// and its (status, grpc-status) or how it failed. Streams still in flight
/// when the drain ran out are counted in [`Errors::timeout`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOutcome {
    pub intended: u64,
    pub done: u64,
    pub result: Result<(u16, Option<u32>), Failure>,
}

/// Runs the load and reports. Blocks for about warm-up + duration.
pub fn run(cfg: &H2Config) -> io::Result<LoadReport> {
    run_with_timeline(cfg, false).map(|(report, _)| report)
}

/// [`run`], with every finished stream's [`StreamOutcome`] (warm-up
/// included), ordered by intended time, when `timeline` is set (else none).
pub fn run_with_timeline(
    cfg: &H2Config,
    timeline: bool,
) -> io::Result<(LoadReport, Vec<StreamOutcome>)> {
    let (request, body) = build(cfg).map_err(io::Error::other)?;
    let threads = cfg.threads.max(1);
    let conns = cfg.connections.max(threads);
    let streams = cfg.streams.max(1);
    let (cpu_u0, cpu_s0) = sys::self_cpu_seconds();
    let wall0 = sys::now_ns();
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let spec = ThreadSpec {
                index: t,
                threads,
                addr: cfg.addr,
                request: request.clone(),
                body: body.clone(),
                grpc: matches!(cfg.mode, Mode::Grpc { .. }),
                rate: cfg.rate / threads as f64,
                connections: conns / threads + usize::from(t < conns % threads),
                streams,
                warmup: cfg.warmup.as_nanos() as u64,
                duration: cfg.duration.as_nanos() as u64,
                drain: cfg.drain.as_nanos() as u64,
                barrier: barrier.clone(),
                timeline,
            };
            std::thread::Builder::new()
                .name(format!("load-h2-{t}"))
                .spawn(move || run_thread(spec))
        })
        .collect::<io::Result<_>>()?;
    let mut latency = Latency::new(0);
    let mut errors = Errors::default();
    let (mut total, mut unsent) = (0, 0);
    let mut outcomes = Vec::new();
    for h in handles {
        let out = h
            .join()
            .map_err(|_| io::Error::other("load thread panicked"))??;
        outcomes.extend(out.timeline);
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
    outcomes.sort_by_key(|o| o.intended);
    let report = LoadReport {
        url: cfg.url.clone(),
        protocol: match cfg.mode {
            Mode::Get => "h2c".into(),
            Mode::Grpc { .. } => "grpc".into(),
        },
        target_rate: cfg.rate.max(0.0),
        threads,
        connections: conns,
        streams,
        new_conn: false,
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
    Ok((report, outcomes))
}

struct ThreadSpec {
    index: usize,
    threads: usize,
    addr: SocketAddr,
    request: http::Request<()>,
    body: Option<Bytes>,
    grpc: bool,
    rate: f64,
    connections: usize,
    streams: usize,
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
    timeline: Vec<StreamOutcome>,
}

/// After a failed connect, a connection's senders wait this long.
const RETRY_NS: u64 = 10_000_000;
/// A connect plus the HTTP/2 handshake must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn run_thread(spec: ThreadSpec) -> io::Result<ThreadOutcome> {
    sys::set_min_timer_slack();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, thread_main(spec))
}

/// One connection's state, shared by its senders.
#[derive(Default)]
struct Conn {
    send: Option<SendRequest<Bytes>>,
    /// Bumped at every (re)connect, so a stale failure does not drop a
    /// newer connection.
    generation: u64,
    connecting: bool,
    /// No connect before this (after a failed one).
    retry_at: u64,
}

/// What a thread's senders and timer share (one thread: no locks).
struct State {
    sched: Schedule,
    latency: Latency,
    errors: Errors,
    responses_total: u64,
    /// Senders waiting for a due request.
    idle: usize,
    /// Streams in flight.
    busy: u64,
    /// `Some` when the run keeps a timeline.
    timeline: Option<Vec<StreamOutcome>>,
}

struct Ctx {
    addr: SocketAddr,
    request: http::Request<()>,
    body: Option<Bytes>,
    grpc: bool,
    end: u64,
    state: RefCell<State>,
    conns: RefCell<Vec<Conn>>,
    wake: Notify,
}

async fn thread_main(spec: ThreadSpec) -> io::Result<ThreadOutcome> {
    let mut conns: Vec<Conn> = Vec::with_capacity(spec.connections);
    // Connections open before the clock starts, so the handshakes are not
    // part of the first requests' latency; one that fails is retried by
    // its first request.
    for _ in 0..spec.connections {
        let mut c = Conn::default();
        if let Ok(s) = connect(spec.addr).await {
            c.send = Some(s);
        }
        conns.push(c);
    }
    // Let the connection tasks exchange SETTINGS before the barrier.
    tokio::task::yield_now().await;
    spec.barrier.wait();
    let start = sys::now_ns();
    let phase = if spec.rate > 0.0 {
        start + (1e9 / spec.rate * spec.index as f64 / spec.threads as f64) as u64
    } else {
        start
    };
    let end = start + spec.warmup + spec.duration;
    let drain_end = end + spec.drain;
    let sched = Schedule::new(spec.rate, phase, end);
    let interval = sched.interval();
    let ctx = Rc::new(Ctx {
        addr: spec.addr,
        request: spec.request,
        body: spec.body,
        grpc: spec.grpc,
        end,
        state: RefCell::new(State {
            sched,
            latency: Latency::new(start + spec.warmup),
            errors: Errors::default(),
            responses_total: 0,
            idle: 0,
            busy: 0,
            timeline: spec.timeline.then(Vec::new),
        }),
        conns: RefCell::new(conns),
        wake: Notify::new(),
    });
    // Senders interleaved over the connections: the first idle one woken
    // is on connection 0, the next on 1, ...
    let senders: Vec<_> = (0..spec.connections * spec.streams)
        .map(|k| tokio::task::spawn_local(sender(ctx.clone(), k % spec.connections)))
        .collect();
    if let Some(interval) = interval {
        let mut timer = sys::Timer::new()?;
        timer.arm(phase, interval)?;
        // SAFETY: the timerfd is owned by the `Timer` inside, open until
        // the `AsyncFd` (and with it the `Timer`) is dropped, and
        // `as_raw_fd` always returns that one fd.
        let fd = unsafe {
            AsyncFd::register_with_interest(TimerFd(timer), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        tokio::task::spawn_local(ticker(ctx.clone(), fd));
    }
    let until = tokio::time::Instant::now() + Duration::from_nanos(drain_end.saturating_sub(start));
    let _ = tokio::time::timeout_at(until, async {
        for s in senders {
            let _ = s.await;
        }
    })
    .await;
    let mut st = ctx.state.borrow_mut();
    st.errors.timeout += st.busy;
    Ok(ThreadOutcome {
        latency: st.latency.clone(),
        errors: st.errors,
        responses_total: st.responses_total,
        unsent: st.sched.unsent(),
        timeline: st.timeline.take().unwrap_or_default(),
    })
}

struct TimerFd(sys::Timer);

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.raw_fd()
    }
}

/// Open loop: at every expiry of the periodic timer, wakes one idle sender
/// per due request; after the end, wakes them all so they finish.
async fn ticker(ctx: Rc<Ctx>, mut fd: AsyncFd<TimerFd>) {
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            break;
        };
        guard.get_inner_mut().0.clear();
        guard.clear_ready();
        let now = sys::now_ns();
        if now >= ctx.end {
            break;
        }
        let n = {
            let mut st = ctx.state.borrow_mut();
            let n = (st.sched.due(now) as usize).min(st.idle);
            st.idle -= n;
            n
        };
        for _ in 0..n {
            ctx.wake.notify_one();
        }
    }
    ctx.wake.notify_waiters();
}

/// One sender: take a due request, send it on connection `conn`, record,
/// repeat until the end.
async fn sender(ctx: Rc<Ctx>, conn: usize) {
    loop {
        let now = sys::now_ns();
        let due = ctx.state.borrow_mut().sched.take_due(now);
        let Some(intended) = due else {
            if now >= ctx.end {
                return;
            }
            ctx.state.borrow_mut().idle += 1;
            ctx.wake.notified().await;
            continue;
        };
        ctx.state.borrow_mut().busy += 1;
        let result = exchange(&ctx, conn).await;
        let done = sys::now_ns();
        if record(&ctx, intended, done, result) {
            // A failed connect: this connection's senders wait it out.
            let wait = ctx.conns.borrow()[conn].retry_at.saturating_sub(done);
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
    }
}

/// Counts one finished stream; true when it failed to connect.
fn record(
    ctx: &Ctx,
    intended: u64,
    done: u64,
    result: Result<(u16, Option<u32>), Failure>,
) -> bool {
    let mut st = ctx.state.borrow_mut();
    st.busy -= 1;
    if let Some(t) = st.timeline.as_mut() {
        t.push(StreamOutcome {
            intended,
            done,
            result,
        });
    }
    match result {
        Ok((status, grpc_status)) => {
            st.responses_total += 1;
            if st.latency.record(intended, done) {
                match status {
                    400..=499 => st.errors.status_4xx += 1,
                    500..=599 => st.errors.status_5xx += 1,
                    _ if grpc_status.is_some_and(|g| g != grpc::OK) => st.errors.grpc += 1,
                    _ => {}
                }
            }
            false
        }
        Err(kind) => {
            let e = &mut st.errors;
            match kind {
                Failure::Connect => e.connect += 1,
                Failure::Write => e.write += 1,
                Failure::Read => e.read += 1,
                Failure::Parse => e.parse += 1,
                Failure::Closed => e.closed += 1,
                Failure::Timeout => e.timeout += 1,
            }
            kind == Failure::Connect
        }
    }
}

/// An open h2c connection (prior knowledge) to `addr`, its connection
/// task spawned on this thread.
async fn connect(addr: SocketAddr) -> io::Result<SendRequest<Bytes>> {
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        h2::client::Builder::new()
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(io::Error::other)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect and handshake"))??;
    let (send, conn) = opened;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// The sender of connection `i`, (re)connecting it if it is down.
async fn sender_of(ctx: &Ctx, i: usize) -> Result<(SendRequest<Bytes>, u64), Failure> {
    loop {
        {
            let mut conns = ctx.conns.borrow_mut();
            let c = &mut conns[i];
            if let Some(s) = &c.send {
                return Ok((s.clone(), c.generation));
            }
            if !c.connecting {
                if sys::now_ns() < c.retry_at {
                    return Err(Failure::Connect);
                }
                c.connecting = true;
                break;
            }
        }
        // Another sender of this connection is connecting it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = connect(ctx.addr).await;
    let mut conns = ctx.conns.borrow_mut();
    let c = &mut conns[i];
    c.connecting = false;
    match r {
        Ok(s) => {
            c.generation += 1;
            c.send = Some(s.clone());
            Ok((s, c.generation))
        }
        Err(_) => {
            c.retry_at = sys::now_ns() + RETRY_NS;
            Err(Failure::Connect)
        }
    }
}

/// Forgets connection `i` if it is still the one of `generation`.
fn drop_conn(ctx: &Ctx, i: usize, generation: u64) {
    let mut conns = ctx.conns.borrow_mut();
    if conns[i].generation == generation {
        conns[i].send = None;
    }
}

/// One stream: the request, the whole response; (status, grpc-status).
async fn exchange(ctx: &Ctx, conn: usize) -> Result<(u16, Option<u32>), Failure> {
    let (send, generation) = sender_of(ctx, conn).await?;
    let mut send = match send.ready().await {
        Ok(s) => s,
        Err(_) => {
            drop_conn(ctx, conn, generation);
            return Err(Failure::Closed);
        }
    };
    let (resp, mut stream) = match send.send_request(ctx.request.clone(), ctx.body.is_none()) {
        Ok(r) => r,
        Err(_) => {
            drop_conn(ctx, conn, generation);
            return Err(Failure::Write);
        }
    };
    if let Some(b) = &ctx.body {
        stream
            .send_data(b.clone(), true)
            .map_err(|_| Failure::Write)?;
    }
    read_response(resp, ctx.grpc).await
}

/// Reads a whole response: (status, grpc-status when `grpc`).
pub(crate) async fn read_response(
    resp: h2::client::ResponseFuture,
    grpc: bool,
) -> Result<(u16, Option<u32>), Failure> {
    let resp = resp.await.map_err(|_| Failure::Read)?;
    let status = resp.status().as_u16();
    let (parts, mut body) = resp.into_parts();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| Failure::Read)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if grpc {
            message.extend_from_slice(&chunk);
        }
    }
    if !grpc {
        return Ok((status, None));
    }
    let trailers = body.trailers().await.map_err(|_| Failure::Read)?;
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    let Some(code) = grpc_status else {
        // No grpc-status anywhere: not a gRPC answer (a proxy's own error
        // page, say); the HTTP status tells which, or it is malformed.
        return if status == 200 {
            Err(Failure::Parse)
        } else {
            Ok((status, None))
        };
    };
    if code == grpc::OK && status == 200 {
        grpc::unframe(&message)
            .and_then(grpc::parse_reply)
            .map_err(|_| Failure::Parse)?;
    }
    Ok((status, Some(code)))
}

/// Why a check request through a target got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot start a runtime")]
    Runtime(#[source] io::Error),
    #[error("request")]
    Request(#[source] RequestError),
    #[error("connect and HTTP/2 handshake with {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("stream: {0:?}")]
    Stream(Failure),
}

/// One request over a fresh h2c connection: (HTTP status, grpc-status).
pub fn probe(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    mode: Mode,
) -> Result<(u16, Option<u32>), ProbeError> {
    let cfg = H2Config {
        url: String::new(),
        addr,
        authority: authority.into(),
        path: path.into(),
        headers: Vec::new(),
        mode,
        rate: 0.0,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        connections: 1,
        streams: 1,
        threads: 1,
        drain: Duration::ZERO,
    };
    let (req, body) = build(&cfg).map_err(ProbeError::Request)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let send = connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let mut send = send
            .ready()
            .await
            .map_err(|_| ProbeError::Stream(Failure::Closed))?;
        let (resp, mut stream) = send
            .send_request(req, body.is_none())
            .map_err(|_| ProbeError::Stream(Failure::Write))?;
        if let Some(b) = body {
            stream
                .send_data(b, true)
                .map_err(|_| ProbeError::Stream(Failure::Write))?;
        }
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            read_response(resp, mode != Mode::Get),
        )
        .await
        .map_err(|_| ProbeError::Stream(Failure::Timeout))?;
        r.map_err(ProbeError::Stream)
    })
}

/// Idle h2c connections held open (for RSS per idle connection); closed
/// when dropped.
pub struct IdleConns {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    sends: Vec<SendRequest<Bytes>>,
}

impl IdleConns {
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Lets the connection tasks run for `d` (answering PINGs, SETTINGS).
    pub fn idle_for(&mut self, d: Duration) {
        // The sleep is made inside the runtime (its timer is the runtime's).
        self.local
            .block_on(&self.rt, async move { tokio::time::sleep(d).await });
    }
}

/// Why an idle connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("connection {index}: status {status}")]
    Status { index: usize, status: u16 },
    #[error("connection {index}")]
    Connection {
        index: usize,
        #[source]
        source: ProbeError,
    },
}

/// Opens `n` h2c connections to `addr`, one GET each, in sequence, and
/// keeps them open. Each socket closes with RST when dropped (no TIME_WAIT
/// on the harness's side).
pub fn open_idle(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    n: usize,
) -> Result<IdleConns, IdleError> {
    let cfg = H2Config {
        url: String::new(),
        addr,
        authority: authority.into(),
        path: path.into(),
        headers: Vec::new(),
        mode: Mode::Get,
        rate: 0.0,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        connections: 1,
        streams: 1,
        threads: 1,
        drain: Duration::ZERO,
    };
    let (req, _) = build(&cfg).map_err(ProbeError::Request)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    let sends = local.block_on(&rt, async move {
        let mut sends = Vec::with_capacity(n);
        for index in 0..n {
            let one = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                let (send, conn) = h2::client::Builder::new()
                    .handshake::<_, Bytes>(tcp)
                    .await
                    .map_err(io::Error::other)?;
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                });
                Ok::<_, io::Error>(send)
            };
            let send = tokio::time::timeout(CONNECT_TIMEOUT, one)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect and handshake"))
                .and_then(|r| r)
                .map_err(|source| IdleError::Connection {
                    index,
                    source: ProbeError::Connect { addr, source },
                })?;
            let mut ready = send
                .clone()
                .ready()
                .await
                .map_err(|_| IdleError::Connection {
                    index,
                    source: ProbeError::Stream(Failure::Closed),
                })?;
            let (resp, _) =
                ready
                    .send_request(req.clone(), true)
                    .map_err(|_| IdleError::Connection {
                        index,
                        source: ProbeError::Stream(Failure::Write),
                    })?;
            let (status, _) =
                tokio::time::timeout(Duration::from_secs(5), read_response(resp, false))
                    .await
                    .map_err(|_| Failure::Timeout)
                    .and_then(|r| r)
                    .map_err(|f| IdleError::Connection {
                        index,
                        source: ProbeError::Stream(f),
                    })?;
            if status != 200 {
                return Err(IdleError::Status { index, status });
            }
            sends.push(send);
        }
        Ok(sends)
    })?;
    Ok(IdleConns { rt, local, sends })
}

#[cfg(test)]
mod tests;
