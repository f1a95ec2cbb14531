//! The access log's writer thread: the only one that touches the file.
//!
//! Shards hand it whole buffers of lines through a bounded channel
//! ([`super::QUEUE`] buffers) without ever waiting (`try_send`); a buffer that
//! does not fit is dropped and its lines counted. The thread writes each
//! buffer with one `write(2)` (`O_APPEND`), gives the emptied buffer back
//! through a short bounded channel of spares (taken with `try_recv`, so a
//! shard never waits on it either; no lock), and reopens the path when asked ([`Sink::reopen`], on
//! SIGUSR1).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{FLUSH_AT, QUEUE};

/// Emptied buffers kept for reuse; beyond this they are freed.
const SPARES: usize = 8;

/// What became of the lines, for `/metrics`.
#[derive(Debug)]
pub struct Counters {
    written: AtomicU64,
    queue_full: AtomicU64,
    write_error: AtomicU64,
}

/// The process's counters (tests use statics of their own).
pub static COUNTERS: Counters = Counters::new();

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            written: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            write_error: AtomicU64::new(0),
        }
    }

    /// Lines written to the file.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Lines dropped because the writer's queue was full.
    pub fn dropped_queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Lines dropped because writing them failed.
    pub fn dropped_write_error(&self) -> u64 {
        self.write_error.load(Ordering::Relaxed)
    }

    /// The Prometheus lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP coremesh_access_log_lines_written_total Access log lines written to the file.\n");
        out.push_str("# TYPE coremesh_access_log_lines_written_total counter\n");
        let _ = writeln!(
            out,
            "coremesh_access_log_lines_written_total {}",
            self.written()
        );
        out.push_str("# HELP coremesh_access_log_dropped_lines_total Access log lines lost, by reason (queue_full: the writer thread fell behind and the shard did not wait; write_error: the write failed, e.g. a full disk).\n");
        out.push_str("# TYPE coremesh_access_log_dropped_lines_total counter\n");
        for (reason, n) in [
            ("queue_full", self.dropped_queue_full()),
            ("write_error", self.dropped_write_error()),
        ] {
            let _ = writeln!(
                out,
                "coremesh_access_log_dropped_lines_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

pub(super) enum Msg {
    /// A buffer of whole lines, and how many.
    Lines(Vec<u8>, u64),
    /// Look at the reopen flag.
    Wake,
    Stop,
}

/// The shards' (and the agent's) handle on the writer.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Msg>,
    counters: &'static Counters,
    /// Emptied buffers from the writer.
    spares: async_channel::Receiver<Vec<u8>>,
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// An empty buffer: a spare one if one is free right now, else a new one.
    pub(super) fn spare(&self) -> Vec<u8> {
        if let Ok(b) = self.spares.try_recv() {
            return b;
        }
        // Room for a full buffer plus the line that tips it over.
        Vec::with_capacity(FLUSH_AT + 4096)
    }

    /// Queues `buf` (`lines` lines) without waiting. `Err`: the queue was
    /// full (or the writer is gone): the lines are counted as dropped and
    /// the buffer comes back.
    pub(super) fn try_send(&self, buf: Vec<u8>, lines: u64) -> Result<(), Vec<u8>> {
        match self.tx.try_send(Msg::Lines(buf, lines)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Msg::Lines(b, _))) => {
                self.counters.queue_full.fetch_add(lines, Ordering::Relaxed);
                Err(b)
            }
            Err(TrySendError::Disconnected(Msg::Lines(b, _))) => {
                self.counters
                    .write_error
                    .fetch_add(lines, Ordering::Relaxed);
                Err(b)
            }
            Err(_) => Err(Vec::new()),
        }
    }

    /// Queues `buf`, waiting for room (the drain only).
    pub(super) fn send(&self, buf: Vec<u8>, lines: u64) {
        if self.tx.send(Msg::Lines(buf, lines)).is_err() {
            self.counters
                .write_error
                .fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// A sink on a channel of the test's own (no thread behind it).
    #[cfg(test)]
    pub(super) fn for_test(tx: SyncSender<Msg>, counters: &'static Counters) -> Sink {
        Sink {
            tx,
            counters,
            spares: async_channel::bounded(1).1,
            reopen: Arc::default(),
        }
    }

    /// Asks the writer to reopen the file (SIGUSR1). Never waits: with the
    /// queue full the writer sees the request after the buffer in hand.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let _ = self.tx.try_send(Msg::Wake);
    }
}

/// The writer thread; dropping it writes what is queued and ends it.
pub struct Writer {
    sink: Sink,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Opens (creating if needed) `path` for appending and starts the
    /// thread.
    pub fn start(path: &Path, counters: &'static Counters) -> io::Result<Writer> {
        let file = open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let (spares_tx, spares) = async_channel::bounded(SPARES);
        let sink = Sink {
            tx,
            counters,
            spares,
            reopen: Arc::default(),
        };
        let state = Thread {
            path: path.to_owned(),
            file,
            rx,
            counters,
            spares: spares_tx,
            reopen: sink.reopen.clone(),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || state.run())?;
        Ok(Writer {
            sink,
            thread: Some(thread),
        })
    }

    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Behind every buffer already queued.
        let _ = self.sink.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Thread {
    path: PathBuf,
    file: File,
    rx: Receiver<Msg>,
    counters: &'static Counters,
    spares: async_channel::Sender<Vec<u8>>,
    reopen: Arc<AtomicBool>,
    /// Set after a failed write so a full disk logs one warning, not one
    /// per buffer; cleared by the next successful write.
    failing: bool,
}

impl Thread {
    fn run(mut self) {
        while let Ok(msg) = self.rx.recv() {
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            match msg {
                Msg::Lines(buf, lines) => self.write(buf, lines),
                Msg::Wake => {}
                Msg::Stop => return,
            }
        }
    }

    fn reopen_file(&mut self) {
        match open(&self.path) {
            Ok(f) => {
                self.file = f;
                tracing::info!("access log {} reopened", self.path.display());
            }
            Err(e) => tracing::warn!(
                "access log {}: cannot reopen ({e}); writing on to the file open before",
                self.path.display()
            ),
        }
    }

    fn write(&mut self, mut buf: Vec<u8>, lines: u64) {
        match self.file.write_all(&buf) {
            Ok(()) => {
                self.counters.written.fetch_add(lines, Ordering::Relaxed);
                if self.failing {
                    tracing::warn!(
                        "access log writes work again; see coremesh_access_log_dropped_lines_total for the lines lost"
                    );
                }
                self.failing = false;
            }
            Err(err) => {
                self.counters
                    .write_error
                    .fetch_add(lines, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(%err, lines, "access log write failed; dropping lines");
                    self.failing = true;
                }
            }
        }
        buf.clear();
        // A buffer grown far past the usual size (one huge line) is
        // freed, as is one that finds the spares full.
        if buf.capacity() <= 2 * (FLUSH_AT + 4096) {
            let _ = self.spares.try_send(buf);
        }
    }
}
