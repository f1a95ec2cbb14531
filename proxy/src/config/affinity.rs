//! The CPUs this process may run on, as set from outside (`taskset`, a cgroup
//! cpuset). `[proxy] cpus` must stay inside it: pinning a shard elsewhere fails
//! at start, and the operator should hear it from the config check instead.

use std::io;

/// The CPUs in this process's affinity mask, ascending.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a live, writable `cpu_set_t` of exactly `size` bytes; pid 0
    // is the calling thread, whose mask the process started with.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..size * 8)
        // SAFETY: `cpu` < the number of bits in `set`, so the read is in bounds.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
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
