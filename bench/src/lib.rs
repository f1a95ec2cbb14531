//! coremesh-bench: the measuring side of coremesh.
//!
//! - [`load`]: an open-loop HTTP/1.1 load generator. A [`schedule::Schedule`]
//!   says when each request is intended to go out; per-thread mio event loops
//!   send it on a free keep-alive connection, frame the response with
//!   [`http`], and record the latency from the intended time into an
//!   hdrhistogram ([`schedule::Latency`]), so stalls cannot hide behind
//!   coordinated omission. [`load::http2`] does the same over HTTP/2 (h2c
//!   with prior knowledge, N connections x M concurrent streams, or unary
//!   gRPC calls checked for grpc-status 0) on current-thread tokio
//!   runtimes, the send times still from a timerfd.
//! - [`origin`]: a fast keep-alive origin server with pre-built responses;
//!   h2c and a unary gRPC method ([`grpc`]) on the same port.
//! - [`compare`]: the side-by-side harness. It starts the origin, writes an
//!   equivalent configuration for each proxy found (coremesh, nginx,
//!   HAProxy, Envoy, Caddy), pins the proxies and the generator to separate
//!   cores, runs `load` (as a child process) through each proxy in
//!   alternating rounds, reads the proxies' CPU time and RSS from `/proc`
//!   ([`sys`]), and reports medians, spread and ratios as markdown, JSON and
//!   SVG charts ([`compare::chart`]).
//!
//!   Its policy scenarios ([`compare::policy`]) run coremesh as a mesh:
//!   coremesh-control, a calling and a called proxy per target, mutual TLS
//!   between them, with and without 100 Routes and a Resilience block.
//!   Its mtls scenarios ([`compare::mtls`]) run the whole mesh hop for
//!   coremesh, nginx and HAProxy alike: a pair of processes per target, an
//!   outbound proxy, mutual TLS 1.3 with harness-made SPIFFE certificates,
//!   an inbound proxy in front of the origin.
//!   Its HTTP/2 scenarios ([`compare::http2`]) run h2c through one proxy
//!   and unary gRPC through the mutual-TLS pair, against nginx
//!   (`grpc_pass`) and HAProxy (`proto h2`), with RSS per idle h2c
//!   connection.
//! - [`fleet`]: thousands of simulated proxy sessions (one QUIC connection
//!   each) against coremesh-control, or spread over N control replicas on
//!   etcd that it starts (`--replicas N --store etcd://...`), timing how
//!   long a route change takes to reach them all, with each control's RSS
//!   and CPU.
//! - [`failover`]: the quickstart's mesh, each process in its own network
//!   namespace host, under faults (an app, a subset, a proxy killed, a link
//!   down, with control up or down): failed requests, how long requests
//!   still went to the faulty endpoint, and the p99 the fault added.
//! - [`soak`]: the quickstart's mesh (HTTP/1.1, h2, gRPC and a TCP
//!   service) under open-loop load for as long as asked, while apps,
//!   endpoints and control are killed and restarted, proxies reloaded,
//!   routes changed and certificates renewed, beside a slowloris and an
//!   h2 rapid-reset client: every failure attributed to a fault or marked
//!   unexplained, every process's RSS and fds over time.
//! - [`mesh`]: starting coremesh-control and joining proxies to it, for
//!   the policy scenarios and `failover`.
//! - [`operator`]: the operator HTTP API client both of those apply
//!   resources and read proxy status with.
//!
//! Scheduling, latency accounting and HTTP framing are sans-I/O (time and
//! bytes in, results out) and unit tested without sockets.

pub mod compare;
pub mod failover;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod load;
pub mod mesh;
pub mod operator;
pub mod origin;
pub mod schedule;
pub mod soak;
pub mod sys;

use std::time::Duration;

/// Why [`parse_duration`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The leading number is missing or malformed.
    #[error("{input:?} is not a duration (examples: 30s, 500ms, 2m)")]
    NotANumber {
        input: String,
        #[source]
        source: std::num::ParseFloatError,
    },
    /// The number is followed by something other than a known unit.
    #[error("{input:?}: unknown unit {unit:?} (use ms, s, m or h)")]
    UnknownUnit { input: String, unit: String },
}

/// Parses "30s", "500ms", "2m", "1h" or a plain number of seconds ("1.5").
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|source| DurationError::NotANumber {
        input: s.to_string(),
        source,
    })?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                input: s.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `e` and its causes, outermost first, joined by ": " ("cannot write
/// x.json: Permission denied (os error 13)"). The error types here leave
/// their cause out of their own message and return it as
/// [`std::error::Error::source`]; this is how they are shown to a person.
pub fn error_chain(e: &(dyn std::error::Error + '_)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests;
