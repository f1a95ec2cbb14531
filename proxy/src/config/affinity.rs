//! The CPUs this process may run on, as set from outside (`taskset`, a cgroup
//! cpuset). `[proxy] cpus` must stay inside it: pinning a shard elsewhere fails
//! at start, and the operator should hear it from the config check instead.

use std::io;

/// The CPUs in this process's affinity mask, ascending.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    use nix::sched::{sched_getaffinity, CpuSet};
    // pid 0: the calling thread, whose mask the process started with.
    let set = sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// `0-3,6,8-9`: the form `taskset -c` and `/sys` use, so it can be compared.
pub(crate) fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        out.push(if cpus[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cpus[i])
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests;
