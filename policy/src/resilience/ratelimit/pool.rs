//! The agent's pool of the tokens that shards' buckets could not hold, and
//! what each shard reports into it.

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
