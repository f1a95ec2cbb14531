//! Per-shard statistics. (skeleton: being written)

/// Which listener a request or connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// A point-in-time copy of one shard's stats.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {}
