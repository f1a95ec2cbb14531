//! coremesh-api: the contract both coremesh-control and coremesh-proxy compile
//! against. No runtime and no I/O: resource types and their validation
//! ([`resource`]), what a proxy receives ([`snapshot`]), the messages on the
//! control connection and their framing ([`wire`]), and join tokens
//! ([`token`]).
//!
//! Compatibility rule: new fields are additive and have defaults
//! (`#[serde(default)]`), so an older proxy keeps working against a newer
//! control. The hello carries [`wire::PROTOCOL_VERSION`].

pub mod http;
pub mod latency;
pub mod resource;
pub mod snapshot;
pub mod token;
pub mod wire;
