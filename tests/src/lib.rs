//! coremesh-e2e: end-to-end tests that start the real `coremesh-proxy` binary
//! (and `coremesh-control` with `meshctl`) on loopback and drive them the way
//! users and attackers do.
//!
//! How a test is put together:
//!
//! ```text
//!  Client / curl ──▶ coremesh-proxy (child process) ──▶ Origin (std threads)
//!   raw TCP, owns      config written to a TempDir,        records what it received,
//!   the framing        ports from port 0, read back        answers by path (/delay,
//!                      from the `bound` log line           /bytes, /chunked, /status..)
//! ```
//!
//! * [`proxy`]: the [`ProxyBuilder`] (TOML in a per-test temp dir), the running
//!   [`Proxy`] (addresses, stderr capture, admin requests, signals, RSS, killed
//!   on drop; prints its log tail when a test panics).
//! * [`origin`]: upstream servers on `127.0.0.1:0` that answer with what they
//!   received (method, target, headers, body length and checksum).
//! * [`client`]: a raw HTTP/1.1 client that owns its bytes, so tests can send
//!   malformed or pipelined requests and read responses exactly as sent.
//! * [`curl`]: the real client, for the forms where a real client matters.
//! * [`control`]: the real `coremesh-control` ([`Control`]: kill -9, restart
//!   on the same data dir), `meshctl` runs (exit code, stdout, stderr), and
//!   the proxy side of joining ([`Member`]: state dir and token file;
//!   [`MeshProxy`]: `[control]` and labels on a [`ProxyBuilder`]).
//! * [`metrics`]: a small Prometheus text parser for `/metrics`.
//! * [`pki`]: CAs and SPIFFE certificates for static-mode mutual TLS and for
//!   peers that should be refused (foreign CA, expired, wrong service).
//! * [`util`]: temp dirs, the deterministic body pattern and its checksum.
//! * [`h2`]: an h2c origin ([`H2Origin`], the JSON echo over HTTP/2 with
//!   prior knowledge) and a raw h2 client ([`H2Client`], concurrent
//!   streams, trailers, gRPC frames).
//! * [`grpc`]: the Python apps and clients of `tests/py/` (grpcio,
//!   websockets) as processes ([`PyApp`], [`GrpcClient`]).
//! * [`unix`]: a Unix socket file in front of an origin ([`UnixFront`]),
//!   for apps that listen on one.
//!
//! Every address is loopback and every port is picked by the OS, so all tests
//! run in parallel.

// The harness shares small pieces of state between its helper threads (stderr
// capture, what an origin received). This is test code, off the data plane,
// where clippy's disallowed `Mutex` (the shared-nothing rule) does not apply.
#![allow(clippy::disallowed_types)]

pub mod client;
pub mod control;
pub mod curl;
pub mod etcd;
pub mod grpc;
pub mod h2;
pub mod metrics;
pub mod openload;
pub mod origin;
pub mod pki;
pub mod proxy;
pub mod unix;
pub mod util;

pub use client::{http_get, Client, Request, Response};
pub use control::{Control, ControlBuilder, ControlSection, Member, MeshProxy, Meshctl};
pub use curl::Curl;
pub use grpc::{GrpcClient, GrpcRun, PyApp};
pub use h2::{H2Client, H2Origin, H2Request, H2Response};
pub use metrics::Metrics;
pub use origin::{Origin, Received};
pub use proxy::{Proxy, ProxyBuilder};
pub use unix::UnixFront;
pub use util::{pattern_checksum, unused_port, Fnv64, Pattern, TempDir};
