//! The mesh-hop scenarios of `compare` (issue 5, item 8): the whole hop a
//! request takes between two services, for coremesh and for nginx and
//! HAProxy set up in the same topology.
//!
//! ```text
//! load ─▶ outbound proxy ─▶ mutual TLS 1.3 ─▶ inbound proxy ─▶ origin
//!  (plain HTTP, Host: api)   (keep-alive pool,     (keep-alive pool
//!                             client certificate)   to the origin)
//! ```
//!
//! Hypothesis: a coremesh pair (rustls's unbuffered API over the shard's
//! own buffers, pooled proxy-to-proxy connections, resumed sessions) costs
//! at most 0.9x the CPU per request of the best peer pair, aiming for
//! 0.75x, and adds no more latency at a fixed rate.
//!
//! Each target is a pair of processes of one kind, both pinned to the
//! proxy CPUs; its CPU per request is both together. The harness makes one
//! CA and two leaves (ECDSA P-256), written to `<out dir>/configs/mtls/`:
//!
//! - `web`: the outbound proxy's client certificate,
//!   `spiffe://bench.coremesh/service/web`;
//! - `api`: the inbound proxy's server certificate,
//!   `spiffe://bench.coremesh/service/api`, plus the DNS name `api`, which
//!   is what nginx (`proxy_ssl_name`) and HAProxy (`verifyhost`) check:
//!   neither matches URI names. coremesh checks the SPIFFE ID.
//!
//! Every pair uses the same files and the same rules: TLS 1.3 only, the
//! server's chain and name verified by the outbound side, a client
//! certificate required and verified by the inbound side, session reuse
//! on, a keep-alive pool on both hops, one worker / thread / shard per
//! process, no access log.
//!
//! Before measuring, each pair must answer 200 through the hop, and its
//! inbound proxy must refuse plaintext and a TLS client without a
//! certificate, and answer 200 to one with the `web` certificate: so the
//! hop is mutual TLS, not plain HTTP that happens to work.
//!
//! With `--app-unix`, every kind also runs as `<kind>-unix` (issue 16,
//! item 5): the same pair, but the inbound proxy reaches the origin over a
//! Unix socket (coremesh `app = "unix:PATH"`, nginx `server unix:PATH`,
//! HAProxy `server ... unix@PATH`), so the app hop skips the TCP stack.
//! Hypothesis: coremesh's unix pair costs at most 0.75x the best peer's
//! TCP pair and 0.9x the best peer's unix pair.
//!
//! Scenarios: `mtls` (closed loop, saturation) and `mtls-rate` (open loop
//! at a fixed rate, a quarter of the slowest pair's `mtls` throughput in
//! round 1), both with 128 B responses; `direct` (load -> origin) runs in
//! both for the added-latency view.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::proxies::{self, file_label, Kind, Pin, ProbeError, Running, StartError};
use super::{log, Target, TargetInfo, SMALL};
use crate::error_chain;

/// Why the mtls pairs, or one of them, could not be set up, or what the
/// run could not learn from one afterwards.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// rcgen refused a step of making the CA or a leaf.
    #[error("making the mtls PKI: {what}")]
    Pki {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port for the {side} proxy")]
    FreePort {
        side: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The inbound or outbound proxy of a pair.
    #[error("{side} proxy did not start")]
    Start {
        side: &'static str,
        #[source]
        source: StartError,
    },
    #[error("cannot read {}", path.display())]
    ReadLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no admin= address in {}", log.display())]
    NoAdmin { log: PathBuf },
    #[error("GET /metrics from the admin endpoint {admin}")]
    Metrics {
        admin: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A check of a started pair that failed: the pair is skipped.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("GET {path} (Host: {SERVICE}) answered {status}, not 200")]
    ThroughStatus { path: String, status: u16 },
    #[error("GET {path} (Host: {SERVICE}) failed")]
    Through {
        path: String,
        #[source]
        source: ProbeError,
    },
    #[error("the inbound proxy answered 200 to {what}: the hop is not mutual TLS")]
    NotMutual { what: &'static str },
    #[error("TLS 1.3 with the {CALLER} certificate answered {status}")]
    WithCertStatus { status: u16 },
    #[error("TLS 1.3 with the {CALLER} certificate failed")]
    WithCert(#[source] TlsClientError),
}

/// Why the harness's own TLS client got no status from an inbound proxy.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not PEM", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS client configuration: {what}")]
    Config {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("{SERVICE:?} as a TLS server name")]
    ServerName(#[source] rustls::pki_types::InvalidDnsNameError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// The trust domain of the run's certificates.
pub const TRUST_DOMAIN: &str = "bench.coremesh";

/// The label of coremesh's pair with the multiplexed hop (`[upstream]
/// multiplex = true`), beside the default (HTTP/1.1 between the proxies).
pub const MUX_HOP: &str = "coremesh-mux";
/// What the label of a pair whose inbound proxy reaches the origin over
/// its Unix socket ends with (`coremesh-unix`, `nginx-unix`, ...).
pub const APP_UNIX: &str = "-unix";

/// Whether `label` names an app-unix pair.
pub fn is_app_unix(label: &str) -> bool {
    label.ends_with(APP_UNIX)
}

/// Where an inbound proxy reaches the origin (the local app).
#[derive(Debug, Clone, Copy)]
pub enum App<'a> {
    Tcp(SocketAddr),
    /// The origin's Unix socket file.
    Unix(&'a Path),
}

impl App<'_> {
    /// coremesh's `[inbound] app` value.
    fn coremesh(self) -> String {
        match self {
            App::Tcp(a) => a.to_string(),
            App::Unix(p) => format!("unix:{}", p.display()),
        }
    }
    /// nginx's `server` address in an `upstream` block.
    fn nginx(self) -> String {
        match self {
            App::Tcp(a) => a.to_string(),
            App::Unix(p) => format!("unix:{}", p.display()),
        }
    }
    /// HAProxy's `server` address (`unix@` names a stream socket file).
    fn haproxy(self) -> String {
        match self {
            App::Tcp(a) => a.to_string(),
            App::Unix(p) => format!("unix@{}", p.display()),
        }
    }
}

/// The calling service (the outbound proxy's identity).
pub const CALLER: &str = "web";
/// The called service: the load's `Host`, the inbound proxy's identity.
pub const SERVICE: &str = "api";

/// `spiffe://bench.coremesh/service/<name>`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/service/{service}")
}

/// The PEM files of the run's PKI.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca: PathBuf,
    /// The outbound side's client certificate and key; `web_pem` is both
    /// in one file (HAProxy's `crt`).
    pub web_cert: PathBuf,
    pub web_key: PathBuf,
    pub web_pem: PathBuf,
    /// The inbound side's server certificate and key; `api_pem` both.
    pub api_cert: PathBuf,
    pub api_key: PathBuf,
    pub api_pem: PathBuf,
}

/// The paths [`write_pki`] writes in `dir`, without writing them (tests).
#[cfg(test)]
pub(super) fn write_pki_paths(dir: &Path) -> PkiFiles {
    PkiFiles::in_dir(dir)
}

impl PkiFiles {
    fn in_dir(dir: &Path) -> PkiFiles {
        PkiFiles {
            ca: dir.join("ca.pem"),
            web_cert: dir.join("web.crt"),
            web_key: dir.join("web.key"),
            web_pem: dir.join("web.pem"),
            api_cert: dir.join("api.crt"),
            api_key: dir.join("api.key"),
            api_pem: dir.join("api.pem"),
        }
    }
}

fn rc(what: &'static str) -> impl Fn(rcgen::Error) -> MtlsError {
    move |source| MtlsError::Pki { what, source }
}

/// A leaf for `service` signed by `issuer`: the SPIFFE ID as a URI name and
/// the service as a DNS name, for client and server use.
fn leaf(issuer: &Issuer<'_, KeyPair>, service: &str) -> Result<(String, String), MtlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("leaf key"))?;
    let mut p = CertificateParams::new(vec![service.to_string()]).map_err(rc("leaf"))?;
    p.subject_alt_names.push(SanType::URI(
        spiffe_id(service)
            .try_into()
            .map_err(rc("SPIFFE ID as a URI"))?,
    ));
    p.distinguished_name.push(DnType::CommonName, service);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p.signed_by(&key, issuer).map_err(rc("leaf signature"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes the CA and both leaves and writes them to `dir`.
pub fn write_pki(dir: &Path) -> Result<PkiFiles, MtlsError> {
    fs::create_dir_all(dir).map_err(|source| MtlsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA"))?;
    ca.distinguished_name
        .push(DnType::CommonName, "coremesh-bench mtls CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(rc("CA signature"))?;
    let f = PkiFiles::in_dir(dir);
    let issuer = Issuer::new(ca, ca_key);
    let (web_cert, web_key) = leaf(&issuer, CALLER)?;
    let (api_cert, api_key) = leaf(&issuer, SERVICE)?;
    let files: [(&Path, String); 7] = [
        (&f.ca, ca_cert.pem()),
        (&f.web_cert, web_cert.clone()),
        (&f.web_key, web_key.clone()),
        (&f.web_pem, format!("{web_cert}{web_key}")),
        (&f.api_cert, api_cert.clone()),
        (&f.api_key, api_key.clone()),
        (&f.api_pem, format!("{api_cert}{api_key}")),
    ];
    for (path, text) in files {
        fs::write(path, text).map_err(|source| MtlsError::WriteFile {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(f)
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn tls_table(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "[tls]\ncert = {}\nkey = {}\nca = {}\n",
        q(cert),
        q(key),
        q(ca)
    )
}

/// The coremesh outbound proxy (identity `web`): Host `api` goes to the
/// inbound proxy at `inbound` over mutual TLS.
pub fn coremesh_outbound(pki: &PkiFiles, inbound: SocketAddr, multiplex: bool) -> String {
    let upstream = if multiplex {
        "# HTTP/1.1 requests ride shared h2 connections to the inbound proxy.\n\
         [upstream]\nmultiplex = true\n\n"
    } else {
        "# One HTTP/1.1 connection per request in flight (the default).\n"
    };
    format!(
        "# coremesh-bench compare mtls: the outbound (calling) proxy, static mode.\n\
         # One shard; Host: {SERVICE} goes over mutual TLS 1.3 (pooled, sessions resumed)\n\
         # to the inbound proxy, whose certificate must name {sid}.\n\
         [proxy]\n\
         service = \"{CALLER}\"\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         \n\
         [outbound]\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         {tls}\n\
         {upstream}\
         [[services]]\n\
         name = \"{SERVICE}\"\n\
         endpoints = [\"{inbound}\"]\n",
        sid = spiffe_id(SERVICE),
        tls = tls_table(&pki.web_cert, &pki.web_key, &pki.ca),
    )
}

/// The coremesh inbound proxy (identity `api`) in front of `origin`.
pub fn coremesh_inbound(pki: &PkiFiles, origin: App<'_>) -> String {
    format!(
        "# coremesh-bench compare mtls: the inbound (called) proxy, static mode.\n\
         # One shard; the inbound listener accepts mutual TLS 1.3 only (a client\n\
         # certificate of the CA, trust domain {TRUST_DOMAIN}); keep-alive pool to the origin.\n\
         [proxy]\n\
         service = \"{SERVICE}\"\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         \n\
         [inbound]\n\
         listen = \"127.0.0.1:0\"\n\
         app = {app:?}\n\
         \n\
         {}",
        tls_table(&pki.api_cert, &pki.api_key, &pki.ca),
        app = origin.coremesh(),
    )
}

/// The parts every nginx of the run shares: one worker, limits raised, no
/// access log, client keep-alive as long as the benchmark.
pub(super) fn nginx_head(what: &str, dir: &Path, nofile: u64) -> String {
    let d = dir.display();
    let fds = proxies::max_conns(nofile) * 2 + 100;
    format!(
        r#"# coremesh-bench compare mtls: nginx, {what}, one worker.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fds};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;

events {{
    worker_connections {fds};
    multi_accept on;
}}
"#
    )
}

pub(super) fn nginx_http_head(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
"#
    )
}

/// nginx as the outbound proxy: plain HTTP in, `proxy_pass https://` to a
/// keep-alive upstream, client certificate, server verified as `api`.
pub fn nginx_outbound(
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
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass https://{SERVICE}_mesh;
            # HTTP/1.1 and no "Connection: close" upstream: pooled keep-alive.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Mutual TLS 1.3: our client certificate, the server's chain and
            # name ({SERVICE}, its DNS SAN) verified, sessions reused.
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate {web_cert};
            proxy_ssl_certificate_key {web_key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name {SERVICE};
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_buffering on;
            proxy_buffers 16 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"#,
        head = nginx_head("outbound (calling) proxy", dir, nofile),
        http = nginx_http_head(dir),
        web_cert = pki.web_cert.display(),
        web_key = pki.web_key.display(),
        ca = pki.ca.display(),
    )
}

/// nginx as the inbound proxy: mutual TLS 1.3 in (client certificate
/// required and verified), a keep-alive upstream to the origin.
pub fn nginx_inbound(
    pki: &PkiFiles,
    port: u16,
    origin: App<'_>,
    dir: &Path,
    nofile: u64,
) -> String {
    format!(
        r#"{head}
http {{
{http}
    upstream origin {{
        server {origin};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate {api_cert};
        ssl_certificate_key {api_key};
        # A client certificate of the CA is required.
        ssl_verify_client on;
        ssl_client_certificate {ca};
        ssl_verify_depth 2;
        ssl_session_tickets on;
        ssl_session_cache shared:mesh:10m;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering on;
            proxy_buffers 16 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"#,
        head = nginx_head("inbound (called) proxy", dir, nofile),
        http = nginx_http_head(dir),
        api_cert = pki.api_cert.display(),
        api_key = pki.api_key.display(),
        ca = pki.ca.display(),
        origin = origin.nginx(),
    )
}

pub(super) fn haproxy_head(what: &str, dir: &Path, nofile: u64) -> String {
    proxies::haproxy_head(
        &format!("mtls: HAProxy, {what}, one thread"),
        "    ssl-server-verify required\n",
        dir,
        nofile,
    )
}

/// HAProxy as the outbound proxy: plain HTTP in, a TLS 1.3 server with our
/// client certificate, the server's chain and name verified, idle server
/// connections reused across clients.
pub fn haproxy_outbound(
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
    bind 127.0.0.1:{port}
    default_backend {SERVICE}_mesh

backend {SERVICE}_mesh
    http-reuse always
    server {SERVICE} {inbound} ssl crt {web_pem} ca-file {ca} verify required verifyhost {SERVICE} sni str({SERVICE}) ssl-min-ver TLSv1.3 maxconn {conns}
"#,
        head = haproxy_head("outbound (calling) proxy", dir, nofile),
        web_pem = pki.web_pem.display(),
        ca = pki.ca.display(),
    )
}

/// HAProxy as the inbound proxy: mutual TLS 1.3 in (client certificate
/// required and verified), a reused connection pool to the origin.
pub fn haproxy_inbound(
    pki: &PkiFiles,
    port: u16,
    origin: App<'_>,
    dir: &Path,
    nofile: u64,
) -> String {
    let conns = proxies::max_conns(nofile);
    format!(
        r#"{head}
frontend {SERVICE}
    bind 127.0.0.1:{port} ssl crt {api_pem} ca-file {ca} verify required ssl-min-ver TLSv1.3
    default_backend origin

backend origin
    http-reuse always
    server origin {origin} maxconn {conns}
"#,
        head = haproxy_head("inbound (called) proxy", dir, nofile),
        api_pem = pki.api_pem.display(),
        ca = pki.ca.display(),
        origin = origin.haproxy(),
    )
}

/// The pairs of the mtls scenarios that passed their checks.
pub(super) struct Pairs {
    pub targets: Vec<Target>,
    pub infos: Vec<TargetInfo>,
    pub notes: Vec<String>,
}

/// Where one process of a pair keeps its files.
pub(super) struct Side {
    pub own: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub(super) fn side(
    out_dir: &Path,
    label: &str,
    kind: Kind,
    which: &str,
) -> Result<Side, MtlsError> {
    side_named(
        out_dir,
        &format!("mtls-{}-{which}", file_label(label)),
        kind,
    )
}

/// [`side`] with the file name chosen by the caller (`h2-nginx`, ...).
pub(super) fn side_named(out_dir: &Path, name: &str, kind: Kind) -> Result<Side, MtlsError> {
    let own = out_dir.join("run").join(name);
    fs::create_dir_all(&own).map_err(|source| MtlsError::CreateDir {
        path: own.clone(),
        source,
    })?;
    Ok(Side {
        config: out_dir
            .join("configs")
            .join(format!("{name}.{}", kind.config_ext())),
        log: own.join("stderr.log"),
        own,
    })
}

/// Writes `text` to the side's config and starts it: coremesh binds port 0
/// and reports `listener`'s address; the others listen on `port`.
pub(super) fn launch(
    kind: Kind,
    bin: &Path,
    s: &Side,
    text: &str,
    port: u16,
    listener: &str,
    pin: Pin<'_>,
) -> Result<Running, StartError> {
    proxies::write_config(&s.config, text)?;
    if kind == Kind::Coremesh {
        proxies::start_coremesh(bin, s.config.clone(), s.log.clone(), listener, pin)
    } else {
        proxies::spawn(
            kind,
            bin,
            &s.own,
            s.config.clone(),
            port,
            s.log.clone(),
            pin,
        )
    }
}

/// What every pair of the run shares.
#[derive(Clone, Copy)]
struct PairEnv<'a> {
    pki: &'a PkiFiles,
    out_dir: &'a Path,
    nofile: u64,
    pin: Pin<'a>,
}

/// One pair to start: its label, kind and binary, whether coremesh's hop
/// is multiplexed, and how the inbound proxy reaches the origin.
struct Run<'a> {
    label: String,
    kind: Kind,
    bin: PathBuf,
    multiplex: bool,
    app: App<'a>,
}

/// The pairs to start for `resolved`: one per target; coremesh also with
/// the multiplexed hop ([`MUX_HOP`]); and with `origin_unix`, every kind
/// with a two-hop configuration again as `<label>-unix`, its inbound proxy
/// reaching the origin over that socket (the multiplexed hop is measured
/// over TCP only).
fn runs<'a>(
    resolved: &[(String, Kind, PathBuf)],
    origin: SocketAddr,
    origin_unix: Option<&'a Path>,
) -> Vec<Run<'a>> {
    let mut runs = Vec::new();
    for (label, kind, bin) in resolved {
        let run = |label: String, multiplex, app| Run {
            label,
            kind: *kind,
            bin: bin.clone(),
            multiplex,
            app,
        };
        runs.push(run(label.clone(), false, App::Tcp(origin)));
        let first_coremesh = *kind == Kind::Coremesh && label == super::COREMESH;
        if first_coremesh {
            runs.push(run(MUX_HOP.to_string(), true, App::Tcp(origin)));
        }
        // One unix pair per kind: not for the A/A twin or the glommio build.
        let unix_kind = first_coremesh || matches!(kind, Kind::Nginx | Kind::Haproxy);
        if let (Some(path), true) = (origin_unix, unix_kind) {
            runs.push(run(format!("{label}{APP_UNIX}"), false, App::Unix(path)));
        }
    }
    runs
}

/// Starts an inbound then an outbound proxy for every target in `resolved`
/// whose kind has a two-hop TLS configuration here (coremesh, nginx,
/// HAProxy), all pinned by `pin`, and checks each pair. A pair that fails
/// to start or fails a check is skipped with a note. With `origin_unix`
/// (the origin's Unix socket), the app-unix pairs run too (see [`runs`]).
pub(super) fn start(
    resolved: &[(String, Kind, PathBuf)],
    (origin, origin_unix): (SocketAddr, Option<&Path>),
    out_dir: &Path,
    nofile: u64,
    pin: Pin<'_>,
) -> Result<Pairs, MtlsError> {
    let configs = out_dir.join("configs");
    let pki = write_pki(&configs.join("mtls"))?;
    let mut pairs = Pairs {
        targets: Vec::new(),
        infos: Vec::new(),
        notes: vec![format!(
            "mtls scenarios: CA and certificates (ECDSA P-256, {} and {}) in {}",
            spiffe_id(CALLER),
            spiffe_id(SERVICE),
            configs.join("mtls").display()
        )],
    };
    if let Some(p) = origin_unix {
        pairs.notes.push(format!(
            "mtls scenarios: the {APP_UNIX} pairs' inbound proxies reach the origin over its Unix socket {}",
            p.display()
        ));
    }
    for run in runs(resolved, origin, origin_unix) {
        let Run {
            label, kind, bin, ..
        } = &run;
        let mut info = TargetInfo {
            label: label.clone(),
            kind: kind.name().into(),
            binary: Some(bin.display().to_string()),
            version: proxies::version(bin, *kind),
            config: None,
            log: None,
            topology: "mtls".into(),
            inbound_config: None,
            inbound_log: None,
            status: "ok".into(),
            note: String::new(),
        };
        if !matches!(kind, Kind::Coremesh | Kind::Nginx | Kind::Haproxy) {
            skip(
                &mut info,
                format!(
                    "no two-hop mutual TLS configuration for {} yet",
                    kind.name()
                ),
            );
            pairs.infos.push(info);
            continue;
        }
        log(&format!(
            "starting the mtls pair {label} ({})",
            bin.display()
        ));
        match start_pair(
            &PairEnv {
                pki: &pki,
                out_dir,
                nofile,
                pin,
            },
            &run,
            &mut info,
        ) {
            Ok((outbound, inbound)) => match check(&pki, outbound.addr, inbound.addr) {
                Ok(note) => {
                    log(&format!("mtls {label}: {note}"));
                    pairs.notes.push(format!("mtls {label}: {note}"));
                    pairs.targets.push(Target {
                        label: label.clone(),
                        running: vec![outbound, inbound],
                        start: None,
                        host: SERVICE.into(),
                    });
                }
                Err(e) => skip(&mut info, error_chain(&e)),
            },
            Err(e) => skip(&mut info, error_chain(&e)),
        }
        pairs.infos.push(info);
    }
    Ok(pairs)
}

/// The inbound proxy first (the outbound one needs its address), then the
/// outbound one.
fn start_pair(
    env: &PairEnv<'_>,
    run: &Run<'_>,
    info: &mut TargetInfo,
) -> Result<(Running, Running), MtlsError> {
    let PairEnv {
        pki,
        out_dir,
        nofile,
        pin,
    } = *env;
    let Run {
        label,
        kind,
        bin,
        multiplex,
        app,
    } = run;
    let (kind, multiplex, app) = (*kind, *multiplex, *app);
    let port = |k: Kind, side: &'static str| -> Result<u16, MtlsError> {
        if k == Kind::Coremesh {
            Ok(0)
        } else {
            proxies::free_port().map_err(|source| MtlsError::FreePort { side, source })
        }
    };
    let ins = side(out_dir, label, kind, "inbound")?;
    let in_port = port(kind, "inbound")?;
    let text = match kind {
        Kind::Coremesh => coremesh_inbound(pki, app),
        Kind::Nginx => nginx_inbound(pki, in_port, app, &ins.own, nofile),
        _ => haproxy_inbound(pki, in_port, app, &ins.own, nofile),
    };
    info.inbound_config = Some(ins.config.display().to_string());
    info.inbound_log = Some(ins.log.display().to_string());
    let inbound = launch(kind, bin, &ins, &text, in_port, "inbound", pin).map_err(|source| {
        MtlsError::Start {
            side: "inbound",
            source,
        }
    })?;

    let outs = side(out_dir, label, kind, "outbound")?;
    let out_port = port(kind, "outbound")?;
    let text = match kind {
        Kind::Coremesh => coremesh_outbound(pki, inbound.addr, multiplex),
        Kind::Nginx => nginx_outbound(pki, out_port, inbound.addr, &outs.own, nofile),
        _ => haproxy_outbound(pki, out_port, inbound.addr, &outs.own, nofile),
    };
    info.config = Some(outs.config.display().to_string());
    info.log = Some(outs.log.display().to_string());
    let outbound =
        launch(kind, bin, &outs, &text, out_port, "outbound", pin).map_err(|source| {
            MtlsError::Start {
                side: "outbound",
                source,
            }
        })?;
    Ok((outbound, inbound))
}

pub(super) fn skip(info: &mut TargetInfo, note: String) {
    log(&format!(
        "skipping {} ({}): {note}",
        info.label, info.topology
    ));
    info.status = "skipped".into();
    info.note = note;
}

/// The checks of one pair; the note says what they saw.
fn check(pki: &PkiFiles, outbound: SocketAddr, inbound: SocketAddr) -> Result<String, CheckError> {
    let path = format!("/size/{SMALL}");
    match proxies::probe_host(outbound, &path, SERVICE) {
        Ok(200) => {}
        Ok(status) => return Err(CheckError::ThroughStatus { path, status }),
        Err(source) => return Err(CheckError::Through { path, source }),
    }
    Ok(format!(
        "200 through the pair; {}",
        check_inbound(pki, inbound)?
    ))
}

/// The inbound proxy at `inbound` refuses plaintext HTTP/1.1 and a TLS
/// client without a certificate, and answers 200 to TLS 1.3 with the `web`
/// certificate (HTTP/1.1 over the TLS session); the note says what each
/// refusal looked like.
pub(super) fn check_inbound(pki: &PkiFiles, inbound: SocketAddr) -> Result<String, CheckError> {
    let path = format!("/size/{SMALL}");
    fn refused<E: std::error::Error>(
        what: &'static str,
        r: Result<u16, E>,
    ) -> Result<String, CheckError> {
        match r {
            Ok(200) => Err(CheckError::NotMutual { what }),
            Ok(s) => Ok(format!("status {s}")),
            Err(e) => Ok(error_chain(&e)),
        }
    }
    let plain = refused(
        "plaintext HTTP",
        proxies::probe_host(inbound, &path, SERVICE),
    )?;
    let anon = refused(
        "a TLS client without a certificate",
        tls_request(pki, inbound, &path, false),
    )?;
    match tls_request(pki, inbound, &path, true) {
        Ok(200) => {}
        Ok(status) => return Err(CheckError::WithCertStatus { status }),
        Err(e) => return Err(CheckError::WithCert(e)),
    }
    Ok(format!(
        "the inbound proxy refuses plaintext ({}) and TLS without a client certificate ({}), and answers 200 to TLS 1.3 with the {CALLER} certificate",
        short(&plain),
        short(&anon)
    ))
}

pub(super) fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// One request to the inbound proxy over TLS 1.3, verifying its
/// certificate as `api`, with the `web` client certificate or none.
fn tls_request(
    pki: &PkiFiles,
    addr: SocketAddr,
    path: &str,
    with_cert: bool,
) -> Result<u16, TlsClientError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| TlsClientError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let pem = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TlsClientError::Pem { path: p, source }
    };
    let config = |what| move |source| TlsClientError::Config { what, source };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&pki.ca)?) {
        roots
            .add(c.map_err(pem(&pki.ca))?)
            .map_err(config("the CA certificate"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(config("TLS 1.3"))?
    .with_root_certificates(roots);
    let mut cfg = if with_cert {
        let chain = CertificateDer::pem_slice_iter(&read(&pki.web_cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(&pki.web_cert))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&pki.web_key)?).map_err(pem(&pki.web_key))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(config("the client certificate"))?
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(SERVICE).map_err(TlsClientError::ServerName)?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name)
        .map_err(config("the client connection"))?;
    let tcp = proxies::connect(addr)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    Ok(proxies::request_host(&mut tls, path, SERVICE)?)
}

/// coremesh's TLS handshake counters (`coremesh_tls_handshakes_total`,
/// summed by `resumed`) of the process whose log is `log`, from its admin
/// endpoint: (full, resumed). Shows whether pooling and resumption held
/// during the run.
pub(super) fn coremesh_handshakes(log: &Path) -> Result<(f64, f64), MtlsError> {
    let text = fs::read_to_string(log).map_err(|source| MtlsError::ReadLog {
        path: log.to_path_buf(),
        source,
    })?;
    let admin: SocketAddr = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .and_then(|a| a.trim_matches('"').parse().ok())
        .ok_or_else(|| MtlsError::NoAdmin {
            log: log.to_path_buf(),
        })?;
    let metrics = |source| MtlsError::Metrics { admin, source };
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(metrics)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(metrics)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(metrics)?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(metrics)?;
    Ok(handshake_counts(&body))
}

/// (full, resumed) handshakes from Prometheus text.
fn handshake_counts(metrics: &str) -> (f64, f64) {
    let (mut full, mut resumed) = (0.0, 0.0);
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("coremesh_tls_handshakes_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        if labels.contains("resumed=\"true\"") {
            resumed += v;
        } else {
            full += v;
        }
    }
    (full, resumed)
}

#[cfg(test)]
mod tests;
