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
//!
//! | file | holds |
//! |---|---|
//! | `bucket.rs` | [`TokenBucket`], per service or route, and the refill arithmetic |
//! | `pool.rs` | [`TokenPool`]: the agent's pool of tokens shards could not use |
//! | `lru.rs` | [`KeyedTokenBuckets`]: per-caller buckets in a fixed-size LRU |

mod bucket;
mod lru;
mod pool;

pub(crate) use bucket::Level;
pub use bucket::TokenBucket;
pub use lru::KeyedTokenBuckets;
pub use pool::{pool_cap, PoolReport, TokenPool};

/// One token in the bucket's unit (10⁻¹² token).
const TOKEN: u128 = 1_000_000_000_000;

#[cfg(test)]
mod tests;
