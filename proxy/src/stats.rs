//! STUB
use std::time::Duration;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction { Inbound, Outbound }
impl Direction { pub fn as_str(self) -> &'static str { "x" } }
#[derive(Debug, Clone)] pub struct ShardSnapshot {}
pub struct ShardStats;
impl ShardStats { pub fn new(_c: usize) -> Self { ShardStats } pub fn conn_opened(&mut self, _d: Direction) {} pub fn conn_closed(&mut self, _d: Direction) {}
 pub fn record(&mut self, _dir: Direction, _service: &str, _status: u16, _latency: Duration, _bytes_in: u64, _bytes_out: u64) {}
 pub fn snapshot(&self) -> ShardSnapshot { ShardSnapshot{} } }
