//! The HTTP/2 scenarios of `compare` (issue 14, item 8): h2c through one
//! proxy, and unary gRPC through the mutual-TLS mesh pair, for coremesh
//! and for nginx and HAProxy set up to do the same.
//!
//! ```text
//! h2:    load ─h2c─▶ proxy ─h2c─▶ origin
//! grpc:  load ─h2c─▶ outbound proxy ─h2 over mutual TLS 1.3─▶ inbound proxy ─h2c─▶ origin
//! ```
//!
//! The load is N connections x M concurrent streams (`--h2-connections`,
//! `--h2-streams`), 128 B responses (`GET /size/128`) or unary gRPC calls
//! with a 128 B reply payload ([`crate::grpc`]); the origin serves both
//! on its one port. Scenarios: `h2` and `grpc` (closed loop: every stream
//! slot busy, saturation), `h2-rate` and `grpc-rate` (open loop at a fixed
//! rate, a quarter of the slowest target's saturation throughput in round
//! 1), `h2-idle` (RSS per idle h2c client connection of a fresh one-hop
//! proxy: one GET on each, then held open).
//!
//! What each proxy is given (configs written to `<out dir>/configs/`):
//!
//! - coremesh: the same configurations as the HTTP/1.1 scenarios (`small`
//!   one hop, `mtls` pair): its listeners take h2c with prior knowledge on
//!   the HTTP port, keep the client's protocol toward the origin, and
//!   carry h2 between the proxies over the mutual TLS 1.3 hop (ALPN h2).
//! - nginx: `listen ... http2` (prior knowledge on a plaintext port, ALPN
//!   on a TLS one) and `grpc_pass`, its only HTTP/2 upstream (there is no
//!   `proxy_http_version 2`); gRPC's upstream TLS is `grpc_ssl_*`, the same
//!   rules as the mtls pair's `proxy_ssl_*`. nginx's grpc upstream carries
//!   one stream per upstream connection (keep-alive pooled), so it opens
//!   about as many upstream connections as there are streams in flight.
//! - HAProxy: `proto h2` on the plaintext bind and on the servers, `alpn
//!   h2,http/1.1` on the TLS bind (HTTP/1.1 stays for the mtls checks),
//!   `alpn h2` on the TLS server; `http-reuse always` lets idle server
//!   connections (and their free streams) serve any client.
//!
//! Checks before measuring: a one-hop proxy answers an h2c GET with 200; a
//! pair answers a gRPC call with HTTP 200, a well-formed reply and
//! grpc-status 0, and its inbound proxy refuses plaintext and TLS without
//! a client certificate (the mtls pair's checks, [`mtls::check_inbound`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mtls::{self, MtlsError, PkiFiles, CALLER, SERVICE};
use super::proxies::{self, file_label, Kind, Pin, Running};
use super::{log, IdleSample, Scenario, Target, TargetInfo, ORIGIN_HOST, SMALL};
use crate::error_chain;
use crate::load::http2::{self as h2load, Mode};
use crate::sys;

/// The gRPC calls' reply payload size.
pub const GRPC_REPLY: u32 = SMALL as u32;

/// A `grpc-timeout` value for `d`: whole milliseconds (`1500m`), at most
/// 8 digits (about 27 hours).
pub fn grpc_timeout(d: Duration) -> String {
    format!("{}m", d.as_millis().clamp(1, 99_999_999))
}

/// A check of a started h2 target that failed: it is skipped.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("h2c GET {path} (:authority {authority}) answered {status}, not 200")]
    Status {
        path: String,
        authority: String,
        status: u16,
    },
    #[error("gRPC call through the pair answered HTTP {status}, grpc-status {grpc:?}")]
    Grpc { status: u16, grpc: Option<u32> },
    #[error("h2c request through {addr} failed")]
    Probe {
        addr: SocketAddr,
        #[source]
        source: h2load::ProbeError,
    },
    #[error(transparent)]
    Inbound(#[from] mtls::CheckError),
}

/// Why one idle-connection measurement did not happen (a note).
#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error("the fresh instance did not start")]
    Start(#[source] MtlsError),
    #[error("warm-up request")]
    Warmup(#[source] CheckError),
    #[error(transparent)]
    Open(#[from] h2load::IdleError),
}

/// nginx, one hop: h2c in (prior knowledge), h2c out through `grpc_pass`
/// to a keep-alive upstream.
pub fn nginx_h2(port: u16, origin: SocketAddr, dir: &Path, nofile: u64) -> String {
    format!(
        r#"{head}
http {{
{http}
    upstream origin_h2 {{
        server {origin};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}

    server {{
        # Plaintext HTTP/2 with prior knowledge (no HTTP/1.1 on this port).
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            # grpc_pass is nginx's only HTTP/2 upstream; it forwards any
            # request, not only gRPC ones.
            grpc_pass grpc://origin_h2;
            grpc_set_header Host $http_host;
            grpc_buffer_size 16k;
        }}
    }}
}}
"#,
        head = mtls::nginx_head("h2: h2c in, grpc_pass (h2c) out", dir, nofile)
            .replace("compare mtls:", "compare h2:"),
        http = mtls::nginx_http_head(dir),
    )
}

/// HAProxy, one hop: `proto h2` on the bind and on the server.
pub fn haproxy_h2(port: u16, origin: SocketAddr, dir: &Path, nofile: u64) -> String {
    let conns = proxies::max_conns(nofile);
    format!(
        r#"{head}
frontend bench_h2
    # Plaintext HTTP/2 with prior knowledge.
    bind 127.0.0.1:{port} proto h2
    default_backend origin_h2

backend origin_h2
    # Idle server connections (and their free streams) serve any client.
    http-reuse always
    server origin {origin} proto h2 maxconn {conns}
"#,
        head = proxies::haproxy_head("h2: HAProxy, h2c in and out, one thread", "", dir, nofile),
    )
}

/// nginx as the gRPC outbound proxy: h2c in, `grpc_pass grpcs://` to the
/// inbound proxy, our client certificate, the server's chain and name
/// verified, sessions reused.
pub fn nginx_grpc_outbound(
    pki: &PkiFiles,
    port: u16,
    inbound: SocketAddr,
    dir: &Path,
    nofile: u64,
) -> String {
    format!(
        r#"{head}
http {{
{http}
    upstream {SERVICE}_mesh {{
        server {inbound};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            grpc_pass grpcs://{SERVICE}_mesh;
            grpc_set_header Host $http_host;
            # Mutual TLS 1.3: as the mtls pair's proxy_ssl_* lines.
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_certificate {web_cert};
            grpc_ssl_certificate_key {web_key};
            grpc_ssl_trusted_certificate {ca};
            grpc_ssl_verify on;
            grpc_ssl_verify_depth 2;
            grpc_ssl_name {SERVICE};
            grpc_ssl_server_name on;
            grpc_ssl_session_reuse on;
            grpc_buffer_size 16k;
        }}
    }}
}}
"#,
        head = mtls::nginx_head("grpc outbound (calling) proxy", dir, nofile)
            .replace("compare mtls:", "compare grpc:"),
        http = mtls::nginx_http_head(dir),
        web_cert = pki.web_cert.display(),
        web_key = pki.web_key.display(),
        ca = pki.ca.display(),
    )
}

/// nginx as the gRPC inbound proxy: mutual TLS 1.3 with HTTP/2 by ALPN
/// in, `grpc_pass` (h2c) to the origin.
pub fn nginx_grpc_inbound(
    pki: &PkiFiles,
    port: u16,
    origin: SocketAddr,
    dir: &Path,
    nofile: u64,
) -> String {
    format!(
        r#"{head}
http {{
{http}
    upstream origin_h2 {{
        server {origin};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate {api_cert};
        ssl_certificate_key {api_key};
        ssl_verify_client on;
        ssl_client_certificate {ca};
        ssl_verify_depth 2;
        ssl_session_tickets on;
        ssl_session_cache shared:mesh:10m;
        location / {{
            grpc_pass grpc://origin_h2;
            grpc_set_header Host $http_host;
            grpc_buffer_size 16k;
        }}
    }}
}}
"#,
        head = mtls::nginx_head("grpc inbound (called) proxy", dir, nofile)
            .replace("compare mtls:", "compare grpc:"),
        http = mtls::nginx_http_head(dir),
        api_cert = pki.api_cert.display(),
        api_key = pki.api_key.display(),
        ca = pki.ca.display(),
    )
}

/// HAProxy as the gRPC outbound proxy: h2c in, h2 over mutual TLS 1.3 out
/// (ALPN h2, our certificate, the server's chain and name verified).
pub fn haproxy_grpc_outbound(
    pki: &PkiFiles,
    port: u16,
    inbound: SocketAddr,
    dir: &Path,
    nofile: u64,
) -> String {
    let conns = proxies::max_conns(nofile);
    format!(
        r#"{head}
frontend {CALLER}
    bind 127.0.0.1:{port} proto h2
    default_backend {SERVICE}_mesh

backend {SERVICE}_mesh
    http-reuse always
    server {SERVICE} {inbound} ssl crt {web_pem} ca-file {ca} verify required verifyhost {SERVICE} sni str({SERVICE}) alpn h2 ssl-min-ver TLSv1.3 maxconn {conns}
"#,
        head = mtls::haproxy_head("grpc outbound (calling) proxy", dir, nofile)
            .replace("compare mtls:", "compare grpc:"),
        web_pem = pki.web_pem.display(),
        ca = pki.ca.display(),
    )
}

/// HAProxy as the gRPC inbound proxy: mutual TLS 1.3 in (ALPN h2, or
/// http/1.1 for the checks), h2c to the origin.
pub fn haproxy_grpc_inbound(
    pki: &PkiFiles,
    port: u16,
    origin: SocketAddr,
    dir: &Path,
    nofile: u64,
) -> String {
    let conns = proxies::max_conns(nofile);
    format!(
        r#"{head}
frontend {SERVICE}
    bind 127.0.0.1:{port} ssl crt {api_pem} ca-file {ca} verify required alpn h2,http/1.1 ssl-min-ver TLSv1.3
    default_backend origin_h2

backend origin_h2
    http-reuse always
    server origin {origin} proto h2 maxconn {conns}
"#,
        head = mtls::haproxy_head("grpc inbound (called) proxy", dir, nofile)
            .replace("compare mtls:", "compare grpc:"),
        api_pem = pki.api_pem.display(),
        ca = pki.ca.display(),
    )
}

/// The targets of the HTTP/2 scenarios that passed their checks.
pub(super) struct Set {
    /// `h2`, `h2-rate`: one-hop proxies (without `direct`).
    pub one_hop: Vec<Target>,
    /// `grpc`, `grpc-rate`: pairs (without `direct`).
    pub pairs: Vec<Target>,
    pub infos: Vec<TargetInfo>,
    pub notes: Vec<String>,
    /// How to start a fresh one-hop instance (`h2-idle`).
    env: Env,
}

/// What every HTTP/2 target of the run shares.
#[derive(Clone)]
struct Env {
    pki: PkiFiles,
    origin: SocketAddr,
    out_dir: PathBuf,
    nofile: u64,
}

fn info(label: &str, kind: Kind, bin: &Path, topology: &str) -> TargetInfo {
    TargetInfo {
        label: label.into(),
        kind: kind.name().into(),
        binary: Some(bin.display().to_string()),
        version: proxies::version(bin, kind),
        config: None,
        log: None,
        topology: topology.into(),
        inbound_config: None,
        inbound_log: None,
        status: "ok".into(),
        note: String::new(),
    }
}

fn port(kind: Kind, side: &'static str) -> Result<u16, MtlsError> {
    if kind == Kind::Coremesh {
        Ok(0)
    } else {
        proxies::free_port().map_err(|source| MtlsError::FreePort { side, source })
    }
}

/// Starts the one-hop h2 proxies (if `one_hop`) and the gRPC pairs (if
/// `pairs`) of every target in `resolved` that has an HTTP/2
/// configuration here (coremesh, nginx, HAProxy), all pinned by `pin`, and
/// checks each. One that fails to start or a check is skipped with a note.
pub(super) fn start(
    resolved: &[(String, Kind, PathBuf)],
    origin: SocketAddr,
    out_dir: &Path,
    nofile: u64,
    pin: Pin<'_>,
    (one_hop, pairs): (bool, bool),
) -> Result<Set, MtlsError> {
    // Its own PKI (same shape as the mtls pairs'), so neither run
    // rewrites the other's files.
    let pki = mtls::write_pki(&out_dir.join("configs").join("grpc"))?;
    let env = Env {
        pki,
        origin,
        out_dir: out_dir.to_path_buf(),
        nofile,
    };
    let mut set = Set {
        one_hop: Vec::new(),
        pairs: Vec::new(),
        infos: Vec::new(),
        notes: Vec::new(),
        env,
    };
    for (label, kind, bin) in resolved {
        let supported = matches!(kind, Kind::Coremesh | Kind::Nginx | Kind::Haproxy);
        for (wanted, topology) in [(one_hop, "h2"), (pairs, "grpc")] {
            if !wanted {
                continue;
            }
            let mut info = info(label, *kind, bin, topology);
            if !supported {
                mtls::skip(
                    &mut info,
                    format!("no HTTP/2 configuration for {} yet", kind.name()),
                );
                set.infos.push(info);
                continue;
            }
            log(&format!(
                "starting the {topology} target {label} ({})",
                bin.display()
            ));
            if topology == "h2" {
                let started = start_one_hop(&set.env, label, *kind, bin, pin, &mut info);
                match started.map_err(|e| error_chain(&e)).and_then(|r| {
                    check_get(r.addr, ORIGIN_HOST)
                        .map(|()| r)
                        .map_err(|e| error_chain(&e))
                }) {
                    Ok(r) => set.one_hop.push(Target {
                        label: label.clone(),
                        running: vec![r],
                        start: Some((*kind, bin.clone())),
                        host: ORIGIN_HOST.into(),
                    }),
                    Err(e) => mtls::skip(&mut info, e),
                }
            } else {
                match start_pair(&set.env, label, *kind, bin, pin, &mut info) {
                    Ok((outbound, inbound)) => {
                        match check_pair(&set.env.pki, &outbound, &inbound) {
                            Ok(note) => {
                                log(&format!("grpc {label}: {note}"));
                                set.notes.push(format!("grpc {label}: {note}"));
                                set.pairs.push(Target {
                                    label: label.clone(),
                                    running: vec![outbound, inbound],
                                    start: None,
                                    host: SERVICE.into(),
                                });
                            }
                            Err(e) => mtls::skip(&mut info, error_chain(&e)),
                        }
                    }
                    Err(e) => mtls::skip(&mut info, error_chain(&e)),
                }
            }
            set.infos.push(info);
        }
    }
    Ok(set)
}

/// One one-hop h2 proxy; `name` is its file label.
fn launch_one_hop(
    env: &Env,
    name: &str,
    kind: Kind,
    bin: &Path,
    pin: Pin<'_>,
) -> Result<(Running, mtls::Side), MtlsError> {
    let s = mtls::side_named(&env.out_dir, name, kind)?;
    let p = port(kind, "h2")?;
    let text = match kind {
        Kind::Coremesh => proxies::config(kind, 0, env.origin, &s.own, env.nofile).replace(
            "# coremesh-bench compare: one shard,",
            "# coremesh-bench compare h2 (h2c in, the client's protocol kept to the origin): one shard,",
        ),
        Kind::Nginx => nginx_h2(p, env.origin, &s.own, env.nofile),
        _ => haproxy_h2(p, env.origin, &s.own, env.nofile),
    };
    let r = mtls::launch(kind, bin, &s, &text, p, "outbound", pin)
        .map_err(|source| MtlsError::Start { side: "h2", source })?;
    Ok((r, s))
}

fn start_one_hop(
    env: &Env,
    label: &str,
    kind: Kind,
    bin: &Path,
    pin: Pin<'_>,
    info: &mut TargetInfo,
) -> Result<Running, MtlsError> {
    let name = format!("h2-{}", file_label(label));
    let (r, s) = launch_one_hop(env, &name, kind, bin, pin)?;
    info.config = Some(s.config.display().to_string());
    info.log = Some(s.log.display().to_string());
    Ok(r)
}

/// The inbound proxy first (the outbound one needs its address).
fn start_pair(
    env: &Env,
    label: &str,
    kind: Kind,
    bin: &Path,
    pin: Pin<'_>,
    info: &mut TargetInfo,
) -> Result<(Running, Running), MtlsError> {
    let (pki, origin, nofile) = (&env.pki, env.origin, env.nofile);
    let ins = mtls::side_named(
        &env.out_dir,
        &format!("grpc-{}-inbound", file_label(label)),
        kind,
    )?;
    let in_port = port(kind, "inbound")?;
    let text = match kind {
        Kind::Coremesh => mtls::coremesh_inbound(pki, mtls::App::Tcp(origin)),
        Kind::Nginx => nginx_grpc_inbound(pki, in_port, origin, &ins.own, nofile),
        _ => haproxy_grpc_inbound(pki, in_port, origin, &ins.own, nofile),
    };
    info.inbound_config = Some(ins.config.display().to_string());
    info.inbound_log = Some(ins.log.display().to_string());
    let inbound =
        mtls::launch(kind, bin, &ins, &text, in_port, "inbound", pin).map_err(|source| {
            MtlsError::Start {
                side: "inbound",
                source,
            }
        })?;
    let outs = mtls::side_named(
        &env.out_dir,
        &format!("grpc-{}-outbound", file_label(label)),
        kind,
    )?;
    let out_port = port(kind, "outbound")?;
    let text = match kind {
        Kind::Coremesh => mtls::coremesh_outbound(pki, inbound.addr, false),
        Kind::Nginx => nginx_grpc_outbound(pki, out_port, inbound.addr, &outs.own, nofile),
        _ => haproxy_grpc_outbound(pki, out_port, inbound.addr, &outs.own, nofile),
    };
    info.config = Some(outs.config.display().to_string());
    info.log = Some(outs.log.display().to_string());
    let outbound =
        mtls::launch(kind, bin, &outs, &text, out_port, "outbound", pin).map_err(|source| {
            MtlsError::Start {
                side: "outbound",
                source,
            }
        })?;
    Ok((outbound, inbound))
}

/// An h2c GET of a small response through `addr` answers 200.
pub(super) fn check_get(addr: SocketAddr, authority: &str) -> Result<(), CheckError> {
    let path = format!("/size/{SMALL}");
    match h2load::probe(addr, authority, &path, Mode::Get) {
        Ok((200, _)) => Ok(()),
        Ok((status, _)) => Err(CheckError::Status {
            path,
            authority: authority.into(),
            status,
        }),
        Err(source) => Err(CheckError::Probe { addr, source }),
    }
}

/// A gRPC call through `addr` answers HTTP 200, a well-formed reply and
/// grpc-status 0.
pub(super) fn check_grpc(addr: SocketAddr, authority: &str) -> Result<(), CheckError> {
    let mode = Mode::Grpc {
        reply_size: GRPC_REPLY,
    };
    match h2load::probe(addr, authority, "/", mode) {
        Ok((200, Some(0))) => Ok(()),
        Ok((status, grpc)) => Err(CheckError::Grpc { status, grpc }),
        Err(source) => Err(CheckError::Probe { addr, source }),
    }
}

fn check_pair(pki: &PkiFiles, outbound: &Running, inbound: &Running) -> Result<String, CheckError> {
    check_grpc(outbound.addr, SERVICE)?;
    let inbound_note = mtls::check_inbound(pki, inbound.addr)?;
    Ok(format!(
        "a gRPC call through the pair got grpc-status 0; {inbound_note}"
    ))
}

/// The `h2-idle` measurement of one round: for every one-hop h2 target, a
/// fresh instance, 20 warm-up GETs, `n` h2c connections with one GET each
/// held open for 2 s; RSS delta of its process tree / n. A failure is a
/// note.
pub(super) fn measure_idle(
    set: &Set,
    n: usize,
    round: usize,
    pin: Pin<'_>,
    idle: &mut Vec<IdleSample>,
    notes: &mut Vec<String>,
) {
    for t in &set.one_hop {
        let Some((kind, bin)) = &t.start else {
            continue;
        };
        let name = format!("h2-{}-idle", file_label(&t.label));
        let measured = launch_one_hop(&set.env, &name, *kind, bin, pin)
            .map_err(IdleError::Start)
            .and_then(|(mut r, _)| {
                let s = idle_rss(&r, &t.label, n, round);
                r.stop();
                s
            });
        match measured {
            Ok(s) => {
                log(&format!(
                    "round {round} h2-idle  {:<18} {} conns: {:.0} bytes/conn",
                    t.label, s.connections, s.bytes_per_conn
                ));
                idle.push(s);
            }
            Err(e) => notes.push(format!(
                "{} h2-idle round {round}: {}",
                t.label,
                error_chain(&e)
            )),
        }
    }
}

fn idle_rss(r: &Running, label: &str, n: usize, round: usize) -> Result<IdleSample, IdleError> {
    let pid = r.pid();
    for _ in 0..20 {
        check_get(r.addr, ORIGIN_HOST).map_err(IdleError::Warmup)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = sys::tree_rss_bytes(pid);
    let mut conns = h2load::open_idle(r.addr, ORIGIN_HOST, &format!("/size/{SMALL}"), n)?;
    conns.idle_for(Duration::from_secs(2));
    let after = sys::tree_rss_bytes(pid);
    let count = conns.len();
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    Ok(IdleSample {
        round,
        scenario: Scenario::H2Idle,
        target: label.to_string(),
        connections: count,
        rss_before: before,
        rss_after: after,
        bytes_per_conn: (after as f64 - before as f64) / count.max(1) as f64,
        burst: None,
    })
}

impl Set {
    /// Stops every process.
    pub(super) fn stop(&mut self) {
        for t in self.one_hop.iter_mut().chain(self.pairs.iter_mut()) {
            for r in &mut t.running {
                r.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests;
