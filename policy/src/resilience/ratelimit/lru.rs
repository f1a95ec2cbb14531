//! Per-caller token buckets in a fixed-size LRU.

use std::time::Instant;

use super::{Level, TOKEN};
use crate::balance::stable_hash;

pub(super) const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub(super) key: u64,
    pub(super) level: Level,
    /// Towards the most recently used.
    pub(super) prev: u32,
    /// Towards the least recently used.
    pub(super) next: u32,
}

/// Per-caller rate limits on one shard: one bucket per caller identity, at
/// most `max_keys` of them.
///
/// All memory is allocated by [`Self::new`]: a slot array of `max_keys`
/// entries and an open-addressing index (linear probing, twice the slots, so
/// probes stay short). A new caller beyond `max_keys` takes the slot of the
/// least recently seen one (LRU). That caller, if it comes back, starts with a
/// full bucket; a bucket idle for `burst / rate` is full anyway, so with a cap
/// well above the number of callers active in that time, eviction changes
/// nothing.
///
/// Keys are identities (e.g. the caller's SPIFFE ID) reduced to a 64-bit
/// [`stable_hash`]: two identities share a bucket only on a hash collision
/// (odds about k² / 2⁶⁵ for k keys).
///
/// Each key's rate is split across shards like the service's rate: the shard
/// applies its fraction of the per-caller rate and burst. That assumes a
/// caller's requests spread over the shards like everyone's (they arrive on
/// pooled connections that the acceptor spreads).
#[derive(Clone, Debug)]
pub struct KeyedTokenBuckets {
    pub(super) rate_milli: u64,
    pub(super) capacity: u128,
    pub(super) entries: Vec<Entry>,
    /// Slot indices, `NIL` for empty; length a power of two.
    pub(super) index: Vec<u32>,
    pub(super) max_keys: usize,
    /// Most and least recently used.
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) demand: u64,
}

impl KeyedTokenBuckets {
    /// Buckets of `rate_milli` and `burst` each, for at most `max_keys`
    /// callers (at least 1). Shard, when a service first has a per-caller
    /// `rateLimit`.
    pub fn new(rate_milli: u64, burst: u64, max_keys: usize) -> Self {
        let max_keys = max_keys.clamp(1, (NIL - 1) as usize);
        KeyedTokenBuckets {
            rate_milli,
            capacity: u128::from(burst.max(1)) * TOKEN,
            entries: Vec::with_capacity(max_keys),
            index: vec![NIL; (max_keys * 2).next_power_of_two()],
            max_keys,
            head: NIL,
            tail: NIL,
            demand: 0,
        }
    }

    /// New per-key shares or policy (the number of keys is fixed at `new`).
    /// Shard, when it applies them. Buckets keep their tokens, up to the new
    /// burst.
    pub fn set(&mut self, rate_milli: u64, burst: u64) {
        self.rate_milli = rate_milli;
        self.capacity = u128::from(burst.max(1)) * TOKEN;
        for e in &mut self.entries {
            e.level.tokens = e.level.tokens.min(self.capacity);
        }
    }

    /// Takes a token from `key`'s bucket (creating it full, evicting the
    /// least recently used caller if all slots are taken). Shard, per request,
    /// with the caller's identity; `false`: answer 429. No allocation.
    pub fn try_take(&mut self, key: &[u8], now: Instant) -> bool {
        self.demand += 1;
        let hash = stable_hash(key);
        let slot = match self.find(hash) {
            Ok(slot) => {
                self.unlink(slot);
                slot
            }
            Err(pos) => self.insert(hash, pos, now),
        };
        self.push_front(slot);
        let (rate, cap) = (self.rate_milli, self.capacity);
        self.entries[slot as usize].level.try_take(rate, cap, now)
    }

    /// Callers currently tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Attempts since the last call (the shard's demand for the split).
    pub fn take_demand(&mut self) -> u64 {
        std::mem::take(&mut self.demand)
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The slot holding `hash`, or the empty index position where it would go.
    pub(super) fn find(&self, hash: u64) -> Result<u32, usize> {
        let mut pos = hash as usize & self.mask();
        loop {
            match self.index[pos] {
                NIL => return Err(pos),
                slot if self.entries[slot as usize].key == hash => return Ok(slot),
                _ => pos = (pos + 1) & self.mask(),
            }
        }
    }

    fn insert(&mut self, hash: u64, pos: usize, now: Instant) -> u32 {
        let entry = Entry {
            key: hash,
            level: Level::full(self.capacity, now),
            prev: NIL,
            next: NIL,
        };
        if self.entries.len() < self.max_keys {
            // Within the capacity reserved by `new`: no reallocation.
            self.entries.push(entry);
            let slot = (self.entries.len() - 1) as u32;
            self.index[pos] = slot;
            return slot;
        }
        let slot = self.tail;
        self.unlink(slot);
        self.remove_key(self.entries[slot as usize].key);
        self.entries[slot as usize] = entry;
        // Removal may have shifted entries: look the position up again.
        let pos = match self.find(hash) {
            Err(pos) => pos,
            Ok(_) => unreachable!("a key being inserted is not in the index"),
        };
        self.index[pos] = slot;
        slot
    }

    /// Removes `key` from the index, shifting later entries of its probe run
    /// back (no tombstones, so probes never lengthen over time).
    fn remove_key(&mut self, key: u64) {
        let mask = self.mask();
        let mut hole = match self.find_pos(key) {
            Some(p) => p,
            None => return,
        };
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let slot = self.index[j];
            if slot == NIL {
                break;
            }
            let home = self.entries[slot as usize].key as usize & mask;
            // The entry at j may move into the hole unless its home lies
            // cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.index[hole] = slot;
                hole = j;
            }
        }
        self.index[hole] = NIL;
    }

    fn find_pos(&self, key: u64) -> Option<usize> {
        let mut pos = key as usize & self.mask();
        loop {
            match self.index[pos] {
                NIL => return None,
                slot if self.entries[slot as usize].key == key => return Some(pos),
                _ => pos = (pos + 1) & self.mask(),
            }
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Entry { prev, next, .. } = self.entries[slot as usize];
        match prev {
            NIL => self.head = next,
            p => self.entries[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.entries[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let e = &mut self.entries[slot as usize];
        e.prev = NIL;
        e.next = self.head;
        if self.head != NIL {
            self.entries[self.head as usize].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}
