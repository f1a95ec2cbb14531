//! Local rate limiting (`rateLimit: { requestsPerSecond, burst, per }`):
//! token buckets, per service or route ([`TokenBucket`]) and per caller
//! identity ([`KeyedTokenBuckets`]).
//!
//! A bucket holds up to `burst` tokens and refills at the rate; a request
//! takes one token or is refused (429). Over any interval of T seconds a
//! bucket admits at most `rate × T + burst`.
//!
//! Per shard: each shard's bucket has its share of the rate (from
//! [`super::shares::RateSplit`]) and of the burst
//! ([`super::shares::burst_share`]). Rates are in thousandths of a request
//! per second so that small shares stay exact. Token amounts are kept in
//! 10⁻¹² tokens: `nanoseconds × milli-requests per second` is exactly that
//! unit, so refilling is one multiplication with no rounding.
//!
//! # Pooling: tokens a shard cannot use go to a shard that needs them
//!
//! Shares follow demand only once a period (resilience/shares.rs), so when
//! traffic moves between shards, or one shard's traffic comes in bunches, one
//! bucket sits full (its refill is wasted) while another refuses. With more
//! than one shard, a per-service [`TokenBucket`] therefore keeps count of
//! the tokens it had to throw away and of the requests it refused, and
//! reports both to the agent every 250 ms ([`TokenBucket::report`], a
//! message, as docs/design.md wants for anything that crosses cores). The agent
//! keeps the thrown-away tokens in the service's [`TokenPool`], up to
//! [`pool_cap`], and grants the reporting shard what its own bucket could not
//! cover since its last report (refused, or paid from an earlier grant), as
//! far as the pool has it; the shard spends grants once its own bucket is
//! empty and hands back what it did not use at its next report. Tokens are
//! still made only by the shards' refills, at rates that add up to the
//! configured rate; the pool holds at most [`pool_cap`] and the grants out at
//! once add up to at most [`pool_cap`] more. So over any T seconds the proxy
//! admits at most rate × T + burst + N + 2 × [`pool_cap`], and while the
//! offered load is above the rate it admits the rate, however that load is
//! spread over the shards: the pool can pass on [`pool_cap`] per 250 ms, at
//! least the rate. When the load moves to another shard, its tokens follow
//! within a report or two. On a request's path this is a few counters in the
//! shard's own bucket. Per-caller buckets ([`KeyedTokenBuckets`]) keep their
//! shard shares only.

use std::time::Instant;

use crate::balance::stable_hash;

/// One token in the bucket's unit (10⁻¹² token).
const TOKEN: u128 = 1_000_000_000_000;

/// How many tokens a service's [`TokenPool`] holds at most, and how many
/// its grants out at once add up to at most: the configured burst, or a
/// quarter second of the rate (what the idle shards together throw away
/// between two reports) if that is more.
/// `rate_milli` is the proxy's rate in thousandths of a request per second.
pub fn pool_cap(rate_milli: u64, burst: u64) -> u64 {
    burst.max(rate_milli.div_ceil(4_000)).max(1)
}

/// What a pooling [`TokenBucket`] tells the agent each report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// Whole tokens the bucket could not hold since the last report.
    pub wasted: u64,
    /// Requests refused since the last report.
    pub refused: u64,
    /// Granted tokens spent since the last report.
    pub spent: u64,
    /// Granted tokens not spent, handed back with this report.
    pub returned: u64,
}

/// One service's pooled tokens, on the agent thread: what the shards could
/// not use, for the shards that refused (see the module documentation).
#[derive(Clone, Debug)]
pub struct TokenPool {
    cap: u64,
    held: u64,
    /// Per shard: granted and not yet reported spent or returned.
    out: Vec<u64>,
}

impl TokenPool {
    /// An empty pool of at most `cap` tokens (with its grants) for `shards`.
    pub fn new(cap: u64, shards: usize) -> Self {
        TokenPool {
            cap,
            held: 0,
            out: vec![0; shards],
        }
    }

    /// A new cap (policy change); tokens held above it go (grants already
    /// out are spent or handed back at their shards' next reports).
    pub fn set_cap(&mut self, cap: u64) {
        self.cap = cap;
        self.held = self.held.min(cap);
    }

    /// Tokens held now (not counting grants out).
    #[cfg(test)]
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Folds in `shard`'s report; returns how many tokens to grant it: what
    /// its own bucket could not cover since its last report (refused, or paid
    /// from a grant: what it will likely need again), as far as the pool has
    /// it and the grants out stay within the cap.
    pub fn report(&mut self, shard: usize, r: PoolReport) -> u64 {
        let Some(out) = self.out.get_mut(shard) else {
            return 0;
        };
        *out = out.saturating_sub(r.spent.saturating_add(r.returned));
        self.held = self
            .held
            .saturating_add(r.wasted)
            .saturating_add(r.returned)
            .min(self.cap);
        let room = self.cap.saturating_sub(self.out.iter().sum());
        let grant = self.held.min(room).min(r.refused.saturating_add(r.spent));
        self.held -= grant;
        self.out[shard] += grant;
        grant
    }
}

/// The refill arithmetic shared by both kinds of bucket.
#[derive(Clone, Copy, Debug)]
struct Level {
    /// Tokens, in 10⁻¹² token.
    tokens: u128,
    /// Time of the last refill.
    stamp: Instant,
}

impl Level {
    fn full(capacity: u128, now: Instant) -> Self {
        Level {
            tokens: capacity,
            stamp: now,
        }
    }

    /// Credits the time since the last refill; returns what did not fit
    /// under `capacity`.
    fn refill(&mut self, rate_milli: u64, capacity: u128, now: Instant) -> u128 {
        if now <= self.stamp {
            return 0;
        }
        let ns = now.duration_since(self.stamp).as_nanos();
        let full = self
            .tokens
            .saturating_add(ns.saturating_mul(u128::from(rate_milli)));
        self.stamp = now;
        self.tokens = full.min(capacity);
        full - self.tokens
    }

    fn try_take(&mut self, rate_milli: u64, capacity: u128, now: Instant) -> bool {
        self.refill(rate_milli, capacity, now);
        self.take()
    }

    fn take(&mut self) -> bool {
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            false
        }
    }
}

/// One service's (or route's) rate limit on one shard.
///
/// Created by the shard with its shares; kept across snapshots (update with
/// [`Self::set`]); [`Self::try_take`] per request. No allocation.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_milli: u64,
    capacity: u128,
    level: Level,
    demand: u64,
    /// Whether this bucket reports to the service's [`TokenPool`] (more
    /// than one shard).
    pooled: bool,
    /// Refill thrown away since the last report, in the bucket's unit.
    wasted: u128,
    refused: u64,
    /// Tokens granted from the pool, spent once the bucket is empty.
    credit: u64,
    spent: u64,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_milli` thousandths of a token per
    /// second (100 rps on one shard: 100 000), holding at most `burst` tokens
    /// (at least 1). Shard, when a service first has a `rateLimit`.
    pub fn new(rate_milli: u64, burst: u64, now: Instant) -> Self {
        let capacity = u128::from(burst.max(1)) * TOKEN;
        TokenBucket {
            rate_milli,
            capacity,
            level: Level::full(capacity, now),
            demand: 0,
            pooled: false,
            wasted: 0,
            refused: 0,
            credit: 0,
            spent: 0,
        }
    }

    /// Reports to the service's [`TokenPool`] from now on. Shard, with more
    /// than one shard, when it builds the bucket.
    pub fn pool(&mut self) {
        self.pooled = true;
    }

    /// Refills to `now`, counting what does not fit.
    fn refill(&mut self, now: Instant) {
        let over = self.level.refill(self.rate_milli, self.capacity, now);
        if self.pooled {
            self.wasted = self.wasted.saturating_add(over);
        }
    }

    /// What to report to the pool (refilling to `now` first), and resets
    /// the counts; unspent grants go back with it. `None`: nothing to
    /// report. Shard, every 250 ms, for a pooled bucket.
    pub fn report(&mut self, now: Instant) -> Option<PoolReport> {
        self.refill(now);
        let wasted = (self.wasted / TOKEN) as u64;
        self.wasted %= TOKEN;
        let r = PoolReport {
            wasted,
            refused: std::mem::take(&mut self.refused),
            spent: std::mem::take(&mut self.spent),
            returned: std::mem::take(&mut self.credit),
        };
        (r != PoolReport::default()).then_some(r)
    }

    /// Tokens granted by the pool. Shard, when the agent's grant arrives.
    pub fn grant(&mut self, tokens: u64) {
        self.credit = self.credit.saturating_add(tokens);
    }

    /// New shares (from the agent's rebalance) or a new policy. Shard, when it
    /// applies either. Tokens already earned are kept, up to the new burst.
    pub fn set(&mut self, rate_milli: u64, burst: u64, now: Instant) {
        // Credit the time so far at the old rate before switching.
        self.refill(now);
        self.rate_milli = rate_milli;
        self.capacity = u128::from(burst.max(1)) * TOKEN;
        let kept = self.level.tokens.min(self.capacity);
        if self.pooled {
            // What a smaller burst cannot keep goes to the other shards.
            self.wasted = self.wasted.saturating_add(self.level.tokens - kept);
        }
        self.level.tokens = kept;
    }

    /// Takes a token if there is one. Shard, per request, before routing to
    /// the upstream; `false`: answer 429.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.demand += 1;
        self.refill(now);
        if self.level.take() {
            return true;
        }
        if self.credit > 0 {
            self.credit -= 1;
            self.spent += 1;
            return true;
        }
        if self.pooled {
            self.refused += 1;
        }
        false
    }

    /// Attempts (admitted or not) since the last call: this shard's demand
    /// for the rate split. Shard, once per period, into its report.
    pub fn take_demand(&mut self) -> u64 {
        std::mem::take(&mut self.demand)
    }
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u64,
    level: Level,
    /// Towards the most recently used.
    prev: u32,
    /// Towards the least recently used.
    next: u32,
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
    rate_milli: u64,
    capacity: u128,
    entries: Vec<Entry>,
    /// Slot indices, `NIL` for empty; length a power of two.
    index: Vec<u32>,
    max_keys: usize,
    /// Most and least recently used.
    head: u32,
    tail: u32,
    demand: u64,
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
    pub fn len(&self) -> usize {
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
    fn find(&self, hash: u64) -> Result<u32, usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::shares::{burst_share, RateSplit};
    use crate::resilience::test_rng;
    use std::time::Duration;

    #[test]
    fn hundred_rps_over_ten_seconds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 20, t0);
        // Offered: 400 rps, evenly spaced, for 10 s.
        let admitted = (0..4000)
            .filter(|i| b.try_take(t0 + Duration::from_micros(i * 2500)))
            .count();
        assert!((900..=1100).contains(&admitted), "{admitted}");
        // Exactly: burst + rate × 10 s (less the last refill's fraction).
        assert!((1015..=1020).contains(&admitted), "{admitted}");
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, 5, t0);
        assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 5);
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!((0..10).filter(|_| b.try_take(t1)).count(), 2);
        // Fractional rates: 0.5 rps.
        let mut slow = TokenBucket::new(500, 1, t0);
        assert!(slow.try_take(t0));
        assert!(!slow.try_take(t0 + Duration::from_millis(1999)));
        assert!(slow.try_take(t0 + Duration::from_millis(2000)));
        assert_eq!(slow.take_demand(), 3);
    }

    #[test]
    fn set_keeps_earned_tokens_up_to_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 10, t0);
        assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 10);
        // 4 s at 1 rps earned 4 tokens; the new burst of 2 keeps 2 of them.
        let t1 = t0 + Duration::from_secs(4);
        b.set(100_000, 2, t1);
        assert_eq!((0..10).filter(|_| b.try_take(t1)).count(), 2);
        // 3 s at 1 rps earned 3; a larger burst keeps all 3.
        let t2 = t1 + Duration::from_secs(3);
        b.set(1_000, 10, t2 - Duration::from_secs(3));
        b.set(100_000, 10, t2);
        assert_eq!((0..10).filter(|_| b.try_take(t2)).count(), 3);
    }

    /// One bucket per share of `total` (thousandths of a request per
    /// second) with its part of `burst`, reporting to a pool when `pooled`.
    fn shard_buckets(
        shares: &[u64],
        total: u64,
        burst: u64,
        pooled: bool,
        t0: Instant,
    ) -> Vec<TokenBucket> {
        shares
            .iter()
            .map(|&s| {
                let mut b = TokenBucket::new(s, burst_share(burst, s, total), t0);
                if pooled {
                    b.pool();
                }
                b
            })
            .collect()
    }

    /// The agent's once-a-period re-split from the buckets' demand, applied
    /// to them at `now`.
    fn resplit(
        split: &mut RateSplit,
        buckets: &mut [TokenBucket],
        total: u64,
        burst: u64,
        now: Instant,
    ) {
        let demand: Vec<u64> = buckets.iter_mut().map(|b| b.take_demand()).collect();
        if split.update(&demand) {
            for (b, &s) in buckets.iter_mut().zip(split.shares()) {
                b.set(s, burst_share(burst, s, total), now);
            }
        }
    }

    /// A simulated 2-shard proxy with 100 rps and a burst of 20 configured:
    /// shares rebalanced every second from each shard's demand and, when
    /// `pooled`, buckets reporting to a [`TokenPool`] every 250 ms (grants
    /// arrive at once); `offered` rps, `skew`% of it on shard
    /// `busy(second, request)`. Returns the rps admitted per second.
    fn two_shards(
        offered: u64,
        skew: u64,
        pooled: bool,
        busy: impl Fn(u64, u64) -> usize,
    ) -> Vec<u64> {
        let t0 = Instant::now();
        let total = 100_000;
        let burst = 20;
        let mut split = RateSplit::new(total, 2);
        let mut pool = TokenPool::new(pool_cap(total, burst), 2);
        let mut buckets = shard_buckets(split.shares(), total, burst, pooled, t0);
        let mut rng = test_rng(offered + skew);
        let mut per_second = Vec::new();
        let tick = Duration::from_millis(250);
        let mut next_tick = t0 + tick;
        for sec in 0..15 {
            let mut admitted = 0;
            for k in 0..offered {
                let now = t0
                    + Duration::from_secs(sec)
                    + Duration::from_nanos(k * 1_000_000_000 / offered);
                while pooled && next_tick <= now {
                    for (i, b) in buckets.iter_mut().enumerate() {
                        if let Some(r) = b.report(next_tick) {
                            b.grant(pool.report(i, r));
                        }
                    }
                    next_tick += tick;
                }
                let busy = busy(sec, k);
                let i = if rng() % 100 < skew { busy } else { 1 - busy };
                admitted += u64::from(buckets[i].try_take(now));
            }
            per_second.push(admitted);
            let now = t0 + Duration::from_secs(sec + 1);
            resplit(&mut split, &mut buckets, total, burst, now);
        }
        per_second
    }

    /// The rps admitted over seconds 5..15.
    fn settled(per_second: &[u64]) -> f64 {
        per_second[5..].iter().sum::<u64>() as f64 / 10.0
    }

    /// The rate-limit test: 100 rps on a 2-shard proxy admits
    /// 100 ± 10 rps averaged over 10 s after a warm-up, however unevenly the
    /// traffic is split between the shards; pooled, all of it.
    #[test]
    fn two_shards_admit_the_configured_rate() {
        for (offered, skew) in [
            (150u64, 50u64),
            (300, 75),
            (1000, 90),
            (120, 97),
            (101, 100),
        ] {
            let alone = settled(&two_shards(offered, skew, false, |_, _| 0));
            assert!(
                (90.0..=110.0).contains(&alone),
                "offered {offered}, skew {skew}%, not pooled: {alone} rps"
            );
            let pooled = settled(&two_shards(offered, skew, true, |_, _| 0));
            assert!(
                (99.0..=101.0).contains(&pooled),
                "offered {offered}, skew {skew}%, pooled: {pooled} rps"
            );
        }
    }

    /// When the busy shard changes, the one that gained the traffic admits
    /// its old share for a period, then catches up over about two more (the
    /// documented transient); pooled, it gets what the other shard no longer
    /// uses.
    #[test]
    fn traffic_moving_between_shards_costs_about_two_periods() {
        let alone = two_shards(300, 95, false, |sec, _| usize::from(sec >= 7));
        let lost: u64 = alone[7..11].iter().map(|&a| 100u64.saturating_sub(a)).sum();
        // The shortfall is ~85 rps in the first period; α = ½ halves it each
        // period after: about 2 × 85 in all.
        assert!(lost <= 200, "lost {lost}: {alone:?}");
        let after = alone[11..].iter().sum::<u64>() as f64 / 4.0;
        assert!((90.0..=110.0).contains(&after), "{alone:?}");
        // Pooled, the move costs what refills the bucket that lost its
        // traffic (its burst share, 18) and one report's delay (a quarter
        // second of its share, 22) instead.
        let pooled = two_shards(300, 95, true, |sec, _| usize::from(sec >= 7));
        let moved: u64 = pooled[7..11].iter().sum();
        assert!((360..=410).contains(&moved), "{moved} in 4 s: {pooled:?}");
        let after = pooled[11..].iter().sum::<u64>() as f64 / 4.0;
        assert!((98.0..=102.0).contains(&after), "{pooled:?}");
    }

    /// Traffic that hops between the shards several times a second (one
    /// pooled upstream connection, then the other): per-shard shares cannot
    /// follow it, and alone the shards admit well under the rate; pooled, they
    /// admit the rate.
    #[test]
    fn traffic_hopping_between_shards_still_gets_the_rate() {
        // The busy shard changes every 300 ms (90 requests at 300 rps).
        let hop = |_: u64, k: u64| usize::from((k / 90) % 2 == 1);
        let alone = settled(&two_shards(300, 100, false, hop));
        let pooled = settled(&two_shards(300, 100, true, hop));
        assert!(alone < 95.0, "not pooled: {alone} rps");
        assert!((98.0..=101.0).contains(&pooled), "pooled: {pooled} rps");
    }

    /// Four shards, all traffic on one, reports at staggered times (as each
    /// shard's own timer runs): the pool passes on what the three idle shards
    /// throw away, so the proxy admits its rate; when the busy shard changes
    /// every 2 s, each move costs a few tokens pooled, and most of the rate
    /// alone (shares move by half the gap per second).
    #[test]
    fn four_shards_with_one_busy_get_the_rate() {
        let run = |pooled: bool, hop: u64| -> f64 {
            let t0 = Instant::now();
            let (n, total, burst, offered) = (4usize, 100_000u64, 20u64, 300u64);
            let mut split = RateSplit::new(total, n);
            let mut pool = TokenPool::new(pool_cap(total, burst), n);
            let mut buckets = shard_buckets(split.shares(), total, burst, pooled, t0);
            // Shard i reports at i × 62.5 ms past each quarter second.
            let mut next: Vec<Instant> = (0..n)
                .map(|i| t0 + Duration::from_micros(250_000 + 62_500 * i as u64))
                .collect();
            let mut admitted = 0;
            for sec in 0..15u64 {
                for k in 0..offered {
                    let now = t0
                        + Duration::from_secs(sec)
                        + Duration::from_nanos(k * 1_000_000_000 / offered);
                    for (i, b) in buckets.iter_mut().enumerate() {
                        while pooled && next[i] <= now {
                            if let Some(r) = b.report(next[i]) {
                                b.grant(pool.report(i, r));
                            }
                            next[i] += Duration::from_millis(250);
                        }
                    }
                    let busy = (sec / hop) as usize % n;
                    let ok = buckets[busy].try_take(now);
                    if sec >= 5 {
                        admitted += u64::from(ok);
                    }
                }
                let now = t0 + Duration::from_secs(sec + 1);
                resplit(&mut split, &mut buckets, total, burst, now);
            }
            admitted as f64 / 10.0
        };
        let (alone, pooled) = (run(false, 100), run(true, 100));
        assert!(alone < 93.0, "one busy shard, not pooled: {alone} rps");
        assert!(
            (99.0..=101.0).contains(&pooled),
            "one busy shard: {pooled} rps"
        );
        let (alone, pooled) = (run(false, 2), run(true, 2));
        assert!(alone < 50.0, "moving every 2 s, not pooled: {alone} rps");
        assert!(
            (90.0..=101.0).contains(&pooled),
            "moving every 2 s: {pooled} rps"
        );
    }

    /// The pool only moves tokens: after a long quiet spell (both buckets
    /// and the pool full), a burst and the next second admit at most
    /// burst + N + 2 × pool cap + the rate.
    #[test]
    fn the_pool_never_makes_tokens() {
        let t0 = Instant::now();
        let (total, burst) = (100_000, 20);
        let cap = pool_cap(total, burst);
        assert_eq!(cap, 25, "a quarter second of 100 rps");
        let mut pool = TokenPool::new(cap, 2);
        let mut buckets = shard_buckets(&[50_000, 50_000], total, burst, true, t0);
        let mut report = |buckets: &mut Vec<TokenBucket>, at: Instant| {
            for (i, b) in buckets.iter_mut().enumerate() {
                if let Some(r) = b.report(at) {
                    b.grant(pool.report(i, r));
                }
            }
        };
        let quiet = t0 + Duration::from_secs(60);
        report(&mut buckets, quiet);
        // 400 rps for 1 s, reports every 250 ms.
        let mut admitted = 0;
        for i in 0..400u64 {
            let now = quiet + Duration::from_micros(i * 2500);
            if i % 100 == 99 {
                report(&mut buckets, now);
            }
            admitted += u64::from(buckets[(i % 2) as usize].try_take(now));
        }
        assert!(
            admitted <= burst + 2 + 2 * cap + 100,
            "{admitted} admitted in a second after a quiet spell"
        );
        assert!(admitted >= burst + cap + 95, "{admitted}: the pool is used");
    }

    /// Grants are accounted until spent or returned, so a report that
    /// crosses a grant in flight cannot make room for more than the cap.
    #[test]
    fn pool_grants_stay_within_the_cap() {
        let mut pool = TokenPool::new(10, 2);
        let wasted = |n| PoolReport {
            wasted: n,
            ..PoolReport::default()
        };
        assert_eq!(pool.report(0, wasted(100)), 0);
        assert_eq!(pool.held(), 10, "capped");
        let refused = PoolReport {
            refused: 4,
            ..PoolReport::default()
        };
        assert_eq!(pool.report(1, refused), 4);
        assert_eq!(pool.held(), 6);
        // Shard 1 reports again before the grant arrived: the 4 are still
        // out, and the pool refills to its cap.
        assert_eq!(pool.report(1, wasted(100)), 0);
        assert_eq!(pool.held(), 10);
        // Grants out stay within the cap: room for 6 more.
        let many = PoolReport {
            refused: 100,
            ..PoolReport::default()
        };
        assert_eq!(pool.report(0, many), 6);
        assert_eq!(pool.held(), 4);
        // Shard 0 spent its 6; it gets 4 (what the pool has) of the 6 it
        // needed.
        let spent6 = PoolReport {
            spent: 6,
            ..PoolReport::default()
        };
        assert_eq!(pool.report(0, spent6), 4);
        assert_eq!(pool.held(), 0);
        // It spent 1 and returns 3.
        let back = PoolReport {
            spent: 1,
            returned: 3,
            ..PoolReport::default()
        };
        assert_eq!(pool.report(1, back), 1, "it needed 1 more than its own");
        assert_eq!(pool.held(), 2, "3 returned - 1 granted");
        pool.report(0, wasted(100));
        assert_eq!(pool.held(), 10);
        pool.set_cap(2);
        assert_eq!(pool.held(), 2);
        // 4 (shard 0) and 1 (shard 1) are out, over the new cap: no grant
        // until they come back.
        assert_eq!(pool.report(0, many), 0);
        assert_eq!(pool.report(7, wasted(1)), 0, "no such shard");
    }

    /// A bucket spends its grant only when empty, counts what it refuses and
    /// throws away, and hands unspent grants back.
    #[test]
    fn a_pooled_bucket_reports_what_it_wasted_spent_and_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, 2, t0);
        b.pool();
        assert_eq!(b.report(t0), None, "nothing yet");
        // 1 s at 10 rps into a full bucket of 2: 10 thrown away.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            b.report(t1),
            Some(PoolReport {
                wasted: 10,
                ..PoolReport::default()
            })
        );
        b.grant(3);
        let taken = (0..6).filter(|_| b.try_take(t1)).count();
        assert_eq!(taken, 5, "2 of its own, then 3 granted");
        assert_eq!(
            b.report(t1),
            Some(PoolReport {
                wasted: 0,
                refused: 1,
                spent: 3,
                returned: 0
            })
        );
        b.grant(4);
        assert!(b.try_take(t1 + Duration::from_millis(100)), "its own token");
        let r = b.report(t1 + Duration::from_millis(100)).unwrap();
        assert_eq!((r.spent, r.returned), (0, 4));
        // Not pooled: nothing is counted.
        let mut alone = TokenBucket::new(10_000, 2, t0);
        assert!(alone.try_take(t1) && alone.try_take(t1) && !alone.try_take(t1));
        assert_eq!(alone.report(t1), None);
    }

    #[test]
    fn keyed_buckets_limit_each_caller() {
        let t0 = Instant::now();
        let mut k = KeyedTokenBuckets::new(1_000, 3, 16);
        assert_eq!((0..5).filter(|_| k.try_take(b"alice", t0)).count(), 3);
        assert_eq!((0..5).filter(|_| k.try_take(b"bob", t0)).count(), 3);
        assert!(!k.try_take(b"alice", t0));
        assert!(k.try_take(b"alice", t0 + Duration::from_secs(1)));
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn keyed_buckets_evict_least_recently_used_and_never_grow() {
        let t0 = Instant::now();
        let cap = 64;
        let mut k = KeyedTokenBuckets::new(1_000, 2, cap);
        let index_len = k.index.len();
        let entries_capacity = k.entries.capacity();
        let mut rng = test_rng(77);
        // "hot" is used between every other key and drained: it must never be
        // evicted (it would come back full).
        assert!(k.try_take(b"hot", t0) && k.try_take(b"hot", t0));
        for i in 0..20_000u64 {
            let key = (rng() % 500).to_le_bytes();
            k.try_take(&key, t0);
            assert!(!k.try_take(b"hot", t0), "hot evicted at {i}");
            assert!(k.len() <= cap);
        }
        assert_eq!(k.len(), cap);
        assert_eq!(k.entries.capacity(), entries_capacity, "no reallocation");
        assert_eq!(k.index.len(), index_len);
        // The index and the LRU list agree with the entries.
        let indexed = k.index.iter().filter(|&&s| s != NIL).count();
        assert_eq!(indexed, cap);
        for (slot, e) in k.entries.iter().enumerate() {
            assert_eq!(k.find(e.key), Ok(slot as u32));
        }
        let mut n = 0;
        let mut s = k.head;
        while s != NIL {
            n += 1;
            s = k.entries[s as usize].next;
        }
        assert_eq!(n, cap);
    }
}
