//! Per-shard statistics. (skeleton, being written)
