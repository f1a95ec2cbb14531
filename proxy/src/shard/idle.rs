//! Idle keep-alive connections and their deadlines, kept per shard.
//!
//! An idle client connection waits for readability holding no buffer. Giving
//! each one its own timer would cost more memory than the rest of its state
//! (a monoio `Sleep` is 640 bytes), so the shard keeps one table of
//! `(fd, deadline)` instead and a sweeper shuts down the sockets whose
//! deadline passed: the pending readiness wait then completes, the read sees
//! end of file, and the connection closes as if the client had left. The
//! table entry is removed when the connection wakes (its guard drops), so a
//! reused descriptor number is never touched.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::time::Instant;

struct Entry {
    fd: RawFd,
    deadline: Instant,
}

/// One shard's idle connections.
#[derive(Default)]
pub struct IdleConns {
    slots: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
}

/// Removes its connection from the table when dropped.
pub struct IdleGuard<'a> {
    set: &'a IdleConns,
    slot: usize,
}

impl IdleConns {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an idle connection until the guard drops.
    pub fn enter(&self, fd: RawFd, deadline: Instant) -> IdleGuard<'_> {
        let e = Some(Entry { fd, deadline });
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = e;
                i
            }
            None => {
                slots.push(e);
                slots.len() - 1
            }
        };
        IdleGuard { set: self, slot }
    }

    /// Shuts down the connections idle past their deadline; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        self.shut(|e| e.deadline <= now)
    }

    /// Shuts down every idle connection (drain).
    pub fn close_all(&self) -> usize {
        self.shut(|_| true)
    }

    /// Idle connections registered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.borrow().iter().filter(|e| e.is_some()).count()
    }

    fn shut(&self, due: impl Fn(&Entry) -> bool) -> usize {
        let mut n = 0;
        let mut slots = self.slots.borrow_mut();
        let mut free = self.free.borrow_mut();
        for (i, s) in slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(&due) {
                let e = s.take().expect("checked above");
                // The entry exists only while its connection is alive and
                // waiting (the guard removes it first), so `fd` is that
                // connection's open socket; shutdown(2) does not close it.
                let _ = nix::sys::socket::shutdown(e.fd, nix::sys::socket::Shutdown::Both);
                free.push(i);
                n += 1;
            }
        }
        n
    }
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        let mut slots = self.set.slots.borrow_mut();
        if slots[self.slot].take().is_some() {
            self.set.free.borrow_mut().push(self.slot);
        }
    }
}

#[cfg(test)]
mod tests;
