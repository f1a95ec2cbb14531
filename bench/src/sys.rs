//! Thin wrappers over the Linux facilities the harness measures with: the
//! monotonic clock, timerfd, getrusage, `/proc` (CPU time and RSS of a
//! process tree), RLIMIT_NOFILE and CPU affinity.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// CLOCK_MONOTONIC in nanoseconds (the clock timerfd and `Instant` use).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A non-blocking timerfd armed at absolute CLOCK_MONOTONIC times. epoll's
/// own timeout has millisecond resolution, which would add up to 1 ms to a
/// request sent on schedule; a timerfd fires at the nanosecond asked for
/// (plus the thread's timer slack, which [`set_min_timer_slack`] reduces).
pub struct Timer {
    fd: OwnedFd,
    armed: u64,
    interval: u64,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Timer {
            // SAFETY: `fd` >= 0 was just returned by timerfd_create: an open
            // descriptor that nothing else owns, so the OwnedFd is its only
            // owner.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: 0,
            interval: 0,
        })
    }

    /// Fire at `at_ns` (absolute) and then every `interval_ns` (0: once).
    pub fn arm(&mut self, at_ns: u64, interval_ns: u64) -> io::Result<()> {
        if self.armed == at_ns && interval_ns == 0 {
            return Ok(());
        }
        // 0 would disarm; the clock is far past 1 ns anyway.
        let at = at_ns.max(1);
        let ts = |ns: u64| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts(interval_ns),
            it_value: ts(at),
        };
        // SAFETY: valid fd and itimerspec; the old value is not requested.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = at_ns;
        self.interval = interval_ns;
        Ok(())
    }

    /// Consume the expiries so the next one wakes epoll again (an unread
    /// edge-triggered timerfd reports no further expiries: measured here).
    pub fn clear(&mut self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer; EAGAIN is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
        if self.interval == 0 {
            self.armed = 0;
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Timer slack is 50 us by default for normal threads; a generator thread
/// wants its wake-ups on time.
pub fn set_min_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; failure is harmless.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// User and system CPU seconds of this process (all threads) so far.
pub fn self_cpu_seconds() -> (f64, f64) {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of a /proc/PID/stat line this crate reads (proc(5)).
#[derive(Debug, PartialEq)]
struct ProcStat {
    ppid: u32,
    /// utime + cutime (fields 14, 16), in clock ticks: user time of this
    /// process's threads, live and dead, and of the children it reaped.
    user_ticks: u64,
    /// stime + cstime (fields 15, 17): the same in the kernel.
    sys_ticks: u64,
}

/// Parses one /proc/PID/stat line. The command name (field 2) may hold
/// spaces and parentheses, so the numbered fields start after the last ')'.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = line.get(line.rfind(')')? + 2..)?;
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: num(4)? as u32,
        user_ticks: num(14)? + num(16)?,
        sys_ticks: num(15)? + num(17)?,
    })
}

fn stat_of(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid` and every live descendant of it.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = stat_of(p) {
                children.entry(st.ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds used by a process tree, split by where they were spent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub sys: f64,
}

impl CpuTimes {
    pub fn total(self) -> f64 {
        self.user + self.sys
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - o.user,
            sys: self.sys - o.sys,
        }
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + o.user,
            sys: self.sys + o.sys,
        }
    }
}

/// User and system CPU seconds used by `pid`, all its threads, its live
/// descendants and their threads, and the children they have reaped.
///
/// /proc/PID/stat's utime and stime already sum every thread of the process
/// (dead ones included); cutime and cstime add reaped children. Summing over
/// the live tree catches workers that are still running (nginx's worker).
/// The kernel keeps the sum exact (the scheduler's run time) and splits it
/// between user and system by tick samples, so the split is the less
/// precise part.
pub fn tree_cpu_times(pid: u32) -> CpuTimes {
    let (u, s) = process_tree(pid)
        .into_iter()
        .filter_map(stat_of)
        .fold((0u64, 0u64), |(u, s), st| {
            (u + st.user_ticks, s + st.sys_ticks)
        });
    CpuTimes {
        user: u as f64 / clock_ticks(),
        sys: s as f64 / clock_ticks(),
    }
}

/// User + system CPU seconds of `pid`'s tree (see [`tree_cpu_times`]).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    tree_cpu_times(pid).total()
}

/// Context switches (voluntary and involuntary) of every live thread of
/// `pid`'s tree: how often the proxy went to sleep waiting for work, or was
/// preempted. Per request, it shows how many wake-ups a request cost.
pub fn tree_context_switches(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|dir| dir.flatten())
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .map(|status| parse_context_switches(&status))
        .sum()
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of one
/// /proc/PID/task/TID/status text.
fn parse_context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            let v = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))?;
            v.trim().parse::<u64>().ok()
        })
        .sum()
}

/// TCP segments this machine has sent since boot (`Tcp: OutSegs` of
/// /proc/net/snmp, every socket of the network namespace). A delta over a
/// run on loopback counts both directions of every hop: the generator's,
/// the proxy's and the origin's.
pub fn tcp_out_segments() -> Option<u64> {
    parse_snmp_tcp(&fs::read_to_string("/proc/net/snmp").ok()?, "OutSegs")
}

/// The `field` column of the two `Tcp:` lines (names, then values).
fn parse_snmp_tcp(snmp: &str, field: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let at = names.split_ascii_whitespace().position(|n| n == field)?;
    values.split_ascii_whitespace().nth(at)?.parse().ok()
}

/// Resident set size in bytes of `pid` and its live descendants.
pub fn tree_rss_bytes(pid: u32) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    process_tree(pid)
        .into_iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/statm")).ok())
        .filter_map(|s| s.split(' ').nth(1).and_then(|r| r.parse::<u64>().ok()))
        .map(|pages| pages * page)
        .sum()
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (or `want`, if the
/// hard limit may be raised, as root). Returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: an all-zero rlimit is valid to be overwritten.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rl.rlim_cur >= want as libc::rlim_t {
        return rl.rlim_cur as u64;
    }
    let raised = libc::rlimit {
        rlim_cur: want as _,
        rlim_max: rl.rlim_max.max(want as _),
    };
    // SAFETY: valid pointer; raising the hard limit needs CAP_SYS_RESOURCE and
    // falls back below when refused.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return want;
    }
    rl.rlim_cur = rl.rlim_max;
    // SAFETY: valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    rl.rlim_cur as u64
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if rc != 0 {
        return (0..n).collect();
    }
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Why [`parse_cpu_list`] refused its input (`--proxy-cores`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// A CPU or a range end is not a number.
    #[error("--proxy-cores: {part:?} is not a CPU number or range (\"3\", \"0,2\", \"1-3\")")]
    NotANumber {
        part: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// A range whose first CPU is above its last.
    #[error("--proxy-cores: {part:?} is not a CPU number or range (\"3\", \"0,2\", \"1-3\"): it runs backwards")]
    Backwards { part: String },
    /// No CPU at all.
    #[error("--proxy-cores: empty CPU list")]
    Empty,
}

/// Parses a CPU list as taskset takes it: "3", "0,2", "1-3".
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuListError> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |n: &str| -> Result<usize, CpuListError> {
            n.parse().map_err(|source| CpuListError::NotANumber {
                part: part.to_string(),
                source,
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(CpuListError::Backwards {
                        part: part.to_string(),
                    });
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    if out.is_empty() {
        return Err(CpuListError::Empty);
    }
    Ok(out.into_iter().collect())
}

/// Formats CPUs back into taskset's list syntax.
pub fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One line describing the machine, for the report.
pub fn machine_description() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{n} CPUs ({model}), {mem_gib:.0} GiB RAM, Linux {kernel}")
}

#[cfg(test)]
mod tests;
