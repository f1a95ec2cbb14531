//! STUB
use std::{net::SocketAddr, path::Path, time::Duration};
use crate::stats::Direction;
pub struct AccessLog;
impl AccessLog { pub fn open(_p: &Path) -> std::io::Result<AccessLog> { Ok(AccessLog) } pub fn log(&mut self, _e: &AccessEntry<'_>) {} pub fn flush(&mut self) {} }
pub struct AccessEntry<'a> { pub direction: Direction, pub service: &'a str, pub method: &'a [u8], pub authority: &'a [u8], pub path: &'a [u8], pub status: u16, pub duration: Duration, pub bytes_in: u64, pub bytes_out: u64, pub upstream: Option<SocketAddr>, pub core: usize }
