//! `coremesh-control`: the control process. Opens (or creates) the data
//! directory, the store and the CA, then serves proxies over QUIC and
//! operators over HTTP. Prints `listening quic=ADDR api=ADDR` once both
//! sockets are bound (port 0 picks free ports, and the line says which).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use coremesh_control::hub::{Hub, Options};
use coremesh_control::store::{RedbStore, Store};
use coremesh_control::{api, ca, datadir, quic, Error};

fn duration(s: &str) -> Result<Duration, String> {
    coremesh_api::resource::parse_duration(s)
}

/// The coremesh control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Data directory: CA, operator credential, QUIC endpoint secret, store. Created (0700) on first start.
    #[arg(long)]
    data_dir: PathBuf,
    /// QUIC (UDP) address proxies connect to.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// HTTP address of the operator API (meshctl).
    #[arg(long, default_value = "127.0.0.1:7080")]
    api: SocketAddr,
    /// Trust domain of the SPIFFE IDs: spiffe://<trust-domain>/service/<name>.
    #[arg(long, default_value = "coremesh.local")]
    trust_domain: String,
    /// After start, expire no endpoint for this long (proxies re-register).
    #[arg(long, default_value = "30s", value_parser = duration)]
    grace: Duration,
    /// An endpoint whose proxy sent no heartbeat for this long is removed.
    #[arg(long, default_value = "15s", value_parser = duration)]
    heartbeat_timeout: Duration,
    /// How long a disconnected proxy stays listed (as disconnected, with
    /// when it was last seen) in `meshctl status` before control forgets it.
    #[arg(long, default_value = "10m", value_parser = duration)]
    forget_after: Duration,
    /// Lifetime of the certificates issued to proxies.
    #[arg(long, default_value = "24h", value_parser = duration)]
    cert_lifetime: Duration,
    /// Issue from this CA instead of the data directory's: a PEM file with
    /// the CA (root or intermediate) first, then its issuers up to the root.
    /// The last certificate is what proxies trust. Needs --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key (PKCS#8 PEM) of the first certificate of --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// More root certificates (PEM, one or more per file) for proxies and
    /// control to trust, during a root rotation; repeatable.
    #[arg(long, value_name = "FILE")]
    extra_roots: Vec<PathBuf>,
}

/// The CA: the operator's (--ca-cert/--ca-key) or the data directory's,
/// plus --extra-roots.
fn load_ca(args: &Args, dir: &datadir::DataDir) -> Result<ca::Ca, Error> {
    let now = SystemTime::now();
    let mut ca = match (&args.ca_cert, &args.ca_key, &dir.ca) {
        (Some(cert), Some(key), _) => ca::Ca::load_files(cert, key, &args.trust_domain)?,
        (_, _, Some((cert_pem, key_pem))) => ca::Ca::from_pem(
            &dir.path.join(datadir::CA_CERT).display().to_string(),
            cert_pem,
            &dir.path.join(datadir::CA_KEY).display().to_string(),
            key_pem,
            &args.trust_domain,
            now,
        )?,
        _ => return Err(Error::internal("no CA: pass --ca-cert and --ca-key")),
    };
    for path in &args.extra_roots {
        let added = ca.add_extra_roots_file(path, now)?;
        tracing::info!(file = %path.display(), added, "extra roots in the trust bundle");
    }
    let left = ca
        .not_after()
        .saturating_sub(coremesh_control::unix_secs(now));
    if left < 30 * 24 * 3600 {
        tracing::warn!(
            days_left = left / 86_400,
            "the CA expires soon; certificates issued now end with it"
        );
    }
    Ok(ca)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coremesh-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("coremesh-control: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let dir = datadir::open(&args.data_dir, &args.trust_domain, args.ca_cert.is_none())?;
    for path in &dir.created {
        println!("created {}", path.display());
    }
    println!(
        "operator credential: {}",
        dir.path.join(datadir::CREDENTIAL).display()
    );
    let ca = load_ca(&args, &dir)?;
    println!(
        "CA certificate: {}",
        args.ca_cert
            .clone()
            .unwrap_or_else(|| dir.path.join(datadir::CA_CERT))
            .display()
    );
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.store_path())?);
    // The store holds token hashes and the history: not for other users.
    std::fs::set_permissions(
        dir.store_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| Error::internal(format!("{}: chmod 0600: {e}", dir.store_path().display())))?;
    let opts = Options {
        heartbeat_timeout: args.heartbeat_timeout,
        grace: args.grace,
        cert_lifetime: args.cert_lifetime,
        forget_after: args.forget_after,
        ..Options::default()
    };
    let hub = Hub::new(store, ca, opts, started)?;
    let (version, _) = hub.config();
    let endpoint = quic::bind(&hub, args.listen, &dir.quic_reset_key)?;
    let quic_addr = endpoint
        .local_addr()
        .map_err(|e| Error::internal(format!("QUIC socket: {e}")))?;
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {} (API): {e}", args.api)))?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("API socket: {e}")))?;
    tracing::info!(
        config_version = version,
        ca_fingerprint = hub.ca().fingerprint(),
        trust_bundle = hub.ca().roots().len(),
        trust_domain = %args.trust_domain,
        grace = ?args.grace,
        "control started"
    );
    println!("listening quic={quic_addr} api={api_addr}");
    tokio::spawn(hub.clone().run());
    tokio::spawn(quic::serve(endpoint.clone(), hub.clone()));
    let app = api::router(hub.clone(), &dir.credential);
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown());
    server
        .await
        .map_err(|e| Error::internal(format!("API server: {e}")))?;
    tracing::info!("shutting down");
    endpoint.close(0u32.into(), b"control shutting down");
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
