//! coremesh-policy: what the proxy decides about a request, without I/O.
//!
//! Every function here takes the time (`Instant`) and, where it draws, an rng
//! from its caller, and owns no sockets, threads or clocks; the proxy's
//! shards and agent do the I/O and call in. So the tests drive whole request
//! sequences in memory with simulated time.
//!
//! | module | decides |
//! |---|---|
//! | [`routing`] | snapshot → routing table: services, Route rules, backends, retry policies |
//! | [`route`] | authority → service → rule, for any protocol ([`route::RequestView`]) |
//! | [`authz`] | whether the caller's identity may call this method and path |
//! | [`balance`] | which endpoint: p2c, least-requests, round-robin, ring hash |
//! | [`resilience`] | breakers, retry budgets, outlier ejection, health, faults, backoff, rate limits |
//! | [`traffic`] | a service's compiled Resilience policy and the shard's per-service state |
//! | [`attempt`] | after a failed try: retry or not, where, and whether the body can be replayed |
//! | [`error`] | what went wrong, who is to blame, and the answer a client gets |
//! | [`grpc`] | gRPC calls: `grpc-timeout`, the gRPC status of a local answer |

#![forbid(unsafe_code)]

pub mod attempt;
pub mod authz;
pub mod balance;
pub mod error;
pub mod grpc;
pub mod resilience;
pub mod route;
pub mod routing;
pub mod traffic;
