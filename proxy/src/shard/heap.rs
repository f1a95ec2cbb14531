//! Handing a burst's memory back to the kernel.
//!
//! glibc's malloc gives back, on its own, the free memory at the top of a
//! thread's heap once more than `M_TRIM_THRESHOLD` (1 MiB, set in main.rs)
//! is free there, but never the free chunks below a live allocation. After
//! a burst the request states and buffers it freed lie between the state
//! of the connections that stay open, so they stay resident: measured with
//! `coremesh-bench compare --scenarios burst` (perf/README.md, "Memory
//! after a burst"). `malloc_trim(0)` returns the whole free pages among
//! them too ([`crate::runtime::release_free_heap`]).
//!
//! It walks the heap and holds the arena's lock meanwhile, so a shard asks
//! for it only when a burst has passed: when its buffer pool has freed at
//! least [`FREED`] bytes since the last release, or its open connections
//! fell by at least [`CLOSED`] from their high-water mark since then; and
//! at most once a housekeeping tick (a second). A steady load does neither.

/// Buffer bytes freed since the last release that call for another: 64
/// pooled buffers.
pub const FREED: usize = 1 << 20;

/// Connections closed (below their high-water mark since the last release)
/// that call for a release: a connection's state is ~1 KiB, so 256 of them
/// free 256 KiB or more of scattered chunks.
pub const CLOSED: usize = 256;

/// When to release the free heap (sans-I/O: the shard feeds it once a
/// second).
#[derive(Debug, Default)]
pub struct HeapRelease {
    /// Open connections' high-water mark since the last release.
    high: usize,
    /// Buffer bytes freed since the last release.
    freed: usize,
}

impl HeapRelease {
    /// One housekeeping tick: `open` connections now, `freed` buffer bytes
    /// freed by this tick's trim. Whether to release the free heap now.
    pub fn tick(&mut self, open: usize, freed: usize) -> bool {
        self.high = self.high.max(open);
        self.freed += freed;
        if self.freed >= FREED || self.high - open >= CLOSED {
            self.high = open;
            self.freed = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
