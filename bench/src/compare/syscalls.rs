//! System calls of a target's proxy processes during one measurement
//! (`compare --count-syscalls`): `perf stat -e raw_syscalls:sys_enter`
//! attached to every process of the target's trees, stopped with SIGINT
//! when the load ends.
//!
//! Counting a tracepoint costs a little on every system call, and more for
//! a proxy that makes more of them, so a run that counts them is not the
//! run to read CPU ratios from: the report says so.
//!
//! io_uring: what a coremesh shard submits in one `io_uring_enter` is one
//! system call here, however many socket operations it carries. That is
//! the point of the ring, and what the kernel is entered for.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sys;

/// The tracepoint every system call entry fires.
const EVENT: &str = "raw_syscalls:sys_enter";

/// Why the system calls of one measurement are unknown.
#[derive(Debug, thiserror::Error)]
pub enum SyscallError {
    #[error("cannot start {}", perf.display())]
    Spawn {
        perf: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read perf's output {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// perf ran but printed no count (not allowed to attach, tracepoint
    /// missing): its output says why.
    #[error("no {EVENT} count in {}: {text:?}", path.display())]
    NoCount { path: PathBuf, text: String },
}

/// A running `perf stat` on some processes.
pub struct Counter {
    child: Child,
    out: PathBuf,
}

/// Starts counting the system calls of `pids` and all their descendants,
/// writing perf's CSV to `out`. perf attaches before this returns (it is
/// given a moment to), so the load that follows is counted whole.
pub fn start(perf: &Path, pids: &[u32], out: &Path) -> Result<Counter, SyscallError> {
    let mut all: Vec<u32> = pids.iter().flat_map(|p| sys::process_tree(*p)).collect();
    all.sort_unstable();
    all.dedup();
    let list = all.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let child = Command::new(perf)
        .args(["stat", "-x", ",", "-e", EVENT, "-p", &list, "-o"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| SyscallError::Spawn {
            perf: perf.to_path_buf(),
            source,
        })?;
    // perf opens one counter per thread before it counts; 100 ms is ample
    // for a handful of processes and short against a measured run.
    std::thread::sleep(Duration::from_millis(100));
    Ok(Counter {
        child,
        out: out.to_path_buf(),
    })
}

impl Counter {
    /// Stops perf (SIGINT makes it print its counts) and reads the count.
    pub fn finish(mut self) -> Result<u64, SyscallError> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out).map_err(|source| SyscallError::Read {
            path: self.out.clone(),
            source,
        })?;
        parse(&text).ok_or_else(|| SyscallError::NoCount {
            path: self.out.clone(),
            text: text.trim().chars().take(200).collect(),
        })
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The count of [`EVENT`] in `perf stat -x ,` output: the first field of
/// its line (`12345,,raw_syscalls:sys_enter,...`); None when perf says
/// `<not counted>` or `<not supported>`, or has no such line.
pub fn parse(csv: &str) -> Option<u64> {
    csv.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split(',').nth(2).is_some_and(|e| e.trim() == EVENT))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count_from_perf_csv() {
        let out = "# started on Sun Dec  6 05:50:00 2026\n\n123456,,raw_syscalls:sys_enter,4000123456,100.00,,\n";
        assert_eq!(parse(out), Some(123456));
        let not = "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n";
        assert_eq!(parse(not), None);
        assert_eq!(parse("1,,cycles,1,100.00,,\n"), None);
        assert_eq!(parse(""), None);
    }
}
