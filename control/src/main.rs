//! `coremesh-control`: the control process. Opens (or creates) the data
//! directory, the store and the CA, then serves proxies over QUIC and
//! operators over HTTP. Prints `listening quic=ADDR api=ADDR` once both
//! sockets are bound (port 0 picks free ports, and the line says which).
//! The API is served over TLS unless `--api-plaintext` (see
//! `coremesh_control::api_tls`).
//!
//! `coremesh-control backup` and `coremesh-control restore` take and
//! restore backups of a data directory (see `coremesh_control::backup`).
//!
//! Under systemd it sends `READY=1` after that line, `STOPPING=1` on
//! SIGTERM/SIGINT and watchdog pings (`coremesh_control::systemd`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use coremesh_control::ca_rotation::{CaRotation, OnChange};
use coremesh_control::hub::{Hub, Options};
use coremesh_control::store::ca_record::SealKey;
use coremesh_control::store::startup::{ca_from_etcd, open_etcd, open_store, OwnCa};
use coremesh_control::store::{Store, StoreDump};
use coremesh_control::{api, api_tls, backup, ca, datadir, quic, systemd, Error};

fn duration(s: &str) -> Result<Duration, coremesh_api::resource::DurationError> {
    coremesh_api::resource::parse_duration(s)
}

/// The coremesh control plane.
#[derive(Debug, Parser)]
#[command(version, about, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Data directory: CA, operator credential, QUIC endpoint secret, store and its identity. Created (0700) on first start.
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// Start with a new, empty store although the data directory was
    /// initialized and its store is missing, empty, damaged or another
    /// directory's. The old file is moved aside and the reinitialization is
    /// recorded in the history. The new store keeps the directory's
    /// identity, so proxies refuse its versions below the ones they run.
    #[arg(long)]
    reinitialize_store: bool,
    /// QUIC (UDP) address proxies connect to.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// Address of the operator API (meshctl), served over TLS.
    #[arg(long, default_value = "127.0.0.1:7080")]
    api: SocketAddr,
    #[command(flatten)]
    api_tls: api_tls::ApiTlsArgs,
    #[command(flatten)]
    store: coremesh_control::store::EtcdArgs,
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
    /// Share the CA through the etcd store (`--store etcd://...`), its key
    /// sealed with --ca-store-key: the first control stores its CA there
    /// (--ca-cert/--ca-key's, the data directory's, or a new one), the
    /// others take it from there and keep its key in memory only.
    #[arg(long, requires = "ca_store_key")]
    ca_in_store: bool,
    /// The operator's key (64 hex digits, mode 0600) that seals the CA key
    /// in etcd; the same file on every control. Make one with
    /// `coremesh-control ca-store-key FILE`.
    #[arg(long, value_name = "FILE", requires = "ca_in_store")]
    ca_store_key: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Writes a consistent backup of a data directory (its store, store
    /// identity, CA certificate, operator credential and QUIC endpoint
    /// secret) to a new file with mode 0600. Works while control runs: the
    /// store is then read through its API.
    Backup {
        /// The data directory to back up.
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Also include the CA's private key (`ca.key`). Keep such a file
        /// as safe as the key itself.
        #[arg(long)]
        include_ca_key: bool,
        /// The API of the control running on the data directory, if one
        /// is (verified with the data directory's api-ca.pem).
        #[arg(long, default_value = "https://127.0.0.1:7080", env = "COREMESH_API")]
        api: String,
    },
    /// Restores a backup into a data directory. Refuses a non-empty
    /// directory without --force, and one whose control is running.
    Restore {
        /// The backup file (from `coremesh-control backup`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The data directory to restore into (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Replace the state of a non-empty data directory.
        #[arg(long)]
        force: bool,
    },
    /// Writes a new random key for --ca-store-key to FILE (mode 0600,
    /// never overwriting a file) and prints its key id. Copy it to every
    /// control of the store, as safely as the CA key itself.
    CaStoreKey {
        /// The key file to create.
        file: PathBuf,
    },
}

/// The CA: the operator's (--ca-cert/--ca-key) or the data directory's,
/// plus --extra-roots.
fn load_ca(args: &Args, dir: &datadir::DataDir) -> Result<ca::Ca, Error> {
    let ca = match (&args.ca_cert, &args.ca_key, &dir.ca) {
        (Some(cert), Some(key), _) => ca::Ca::load_files(cert, key, &args.trust_domain)?,
        (_, _, Some((cert_pem, key_pem))) => ca::Ca::from_pem(
            &dir.path.join(datadir::CA_CERT).display().to_string(),
            cert_pem,
            &dir.path.join(datadir::CA_KEY).display().to_string(),
            key_pem,
            &args.trust_domain,
            SystemTime::now(),
        )?,
        _ => return Err(Error::internal("no CA: pass --ca-cert and --ca-key")),
    };
    with_extra_roots(args, ca)
}

/// `ca` with --extra-roots in its trust bundle; warns when it expires soon.
fn with_extra_roots(args: &Args, ca: ca::Ca) -> Result<ca::Ca, Error> {
    add_extra_roots(&args.extra_roots, ca)
}

/// `ca` with the roots of `files` in its trust bundle; warns when it
/// expires soon.
fn add_extra_roots(files: &[PathBuf], mut ca: ca::Ca) -> Result<ca::Ca, Error> {
    let now = SystemTime::now();
    for path in files {
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
    let mut args = Args::parse();
    if let Some(cmd) = args.cmd.take() {
        return match offline(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coremesh-control: {e}");
                ExitCode::FAILURE
            }
        };
    }
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

/// `backup` and `restore`: no runtime, no sockets but the API call of an
/// online backup.
fn offline(cmd: Cmd) -> Result<(), Error> {
    let now = coremesh_control::unix_secs(SystemTime::now());
    match cmd {
        Cmd::Backup {
            data_dir,
            to,
            include_ca_key,
            api,
        } => {
            let api_ca = data_dir.join(datadir::API_CA);
            let taken = backup::take(&data_dir, include_ca_key, now, |credential| {
                online_dump(&api, credential, &api_ca)
            })?;
            backup::write(&taken, &to)?;
            println!(
                "backed up store {} (version {}, {} versions, {} join tokens){} to {}",
                taken.store.store_id,
                taken.store.current,
                taken.store.versions.len(),
                taken.store.tokens.len(),
                if include_ca_key {
                    " with the CA key"
                } else {
                    ""
                },
                to.display()
            );
            Ok(())
        }
        Cmd::Restore {
            from,
            data_dir,
            force,
        } => {
            let read = backup::read(&from)?;
            let done = backup::restore(&read, &data_dir, force)?;
            for f in &done.files {
                println!("restored {}", f.display());
            }
            println!(
                "restored store {} at version {} with {} join tokens into {}",
                done.store_id,
                done.version,
                done.tokens,
                data_dir.display()
            );
            if done.needs_ca_key {
                println!(
                    "the backup holds no CA key: put the CA's key back as {} before starting control, or start it with --ca-cert and --ca-key",
                    data_dir.join(datadir::CA_KEY).display()
                );
            }
            Ok(())
        }
        Cmd::CaStoreKey { file } => {
            let key = SealKey::write_new(&file).map_err(|e| Error::rejected(e.to_string()))?;
            println!(
                "wrote a new CA store key to {} (kid {}); pass it as --ca-store-key to every control of the store, with --ca-in-store",
                file.display(),
                key.kid()
            );
            Ok(())
        }
    }
}

/// This control's own CA for `--ca-in-store`: --ca-cert/--ca-key's, or the
/// data directory's if it has one (never made here).
fn own_ca(args: &Args, dir: &datadir::DataDir) -> Result<Option<OwnCa>, Error> {
    if let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::rejected(format!("{}: cannot read: {e}", p.display())))
        };
        return Ok(Some(OwnCa {
            cert_src: cert.display().to_string(),
            cert_pem: read(cert)?,
            key_src: key.display().to_string(),
            key_pem: read(key)?,
        }));
    }
    Ok(
        datadir::read_ca(&dir.path)?.map(|(cert_pem, key_pem)| OwnCa {
            cert_src: dir.path.join(datadir::CA_CERT).display().to_string(),
            cert_pem,
            key_src: dir.path.join(datadir::CA_KEY).display().to_string(),
            key_pem,
        }),
    )
}

/// The store of a running control, through its API.
fn online_dump(api: &str, credential: &str, api_ca: &std::path::Path) -> Result<StoreDump, Error> {
    let client = coremesh_control::client::Client::new(api, credential, Some(api_ca))
        .map_err(|e| Error::rejected(e.to_string()))?;
    let r = client.get("/v1/store/dump").map_err(|e| {
        Error::internal(format!(
            "the store is held by a running control (its store file is locked, or absent: an etcd store), and asking it failed: {e} (pass its --api)"
        ))
    })?;
    if r.status != 200 {
        return Err(Error::internal(format!(
            "control at {api} answered {} to the store dump: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )));
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| Error::internal(format!("control at {api} sent a bad store dump: {e}")))
}

async fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let data_dir = args
        .data_dir
        .clone()
        .ok_or_else(|| Error::rejected("--data-dir is required"))?;
    let etcd = args
        .store
        .etcd_endpoints()
        .map_err(|e| Error::rejected(e.to_string()))?;
    // Read before anything is created: a bad key file fails the start
    // with nothing written.
    let seal_key = match (&args.ca_store_key, &etcd) {
        (Some(_), None) => {
            return Err(Error::rejected(
                "--ca-in-store needs an etcd store (--store etcd://...): the redb store is one control's, which has its CA in its files",
            ))
        }
        (Some(path), Some(_)) => {
            Some(SealKey::read_file(path).map_err(|e| Error::rejected(e.to_string()))?)
        }
        (None, _) => None,
    };
    let own_files = args.ca_cert.is_none() && seal_key.is_none();
    let mut dir = datadir::open(&data_dir, &args.trust_domain, own_files)?;
    for path in &dir.created {
        println!("created {}", path.display());
    }
    println!(
        "operator credential: {}",
        dir.path.join(datadir::CREDENTIAL).display()
    );
    // With --ca-in-store the CA is read once the store is open.
    let mut ca = match seal_key {
        Some(_) => None,
        None => {
            let ca = load_ca(&args, &dir)?;
            println!(
                "CA certificate: {}",
                args.ca_cert
                    .clone()
                    .unwrap_or_else(|| dir.path.join(datadir::CA_CERT))
                    .display()
            );
            Some(ca)
        }
    };
    let now = coremesh_control::unix_secs(SystemTime::now());
    let mut etcd_store: Option<Arc<coremesh_control::store::EtcdStore>> = None;
    let store: Arc<dyn Store> = match etcd {
        None => {
            let store = open_store(&mut dir, args.reinitialize_store, now)?;
            // The store holds token hashes and the history: not for other users.
            std::fs::set_permissions(
                dir.store_path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .map_err(|e| {
                Error::internal(format!("{}: chmod 0600: {e}", dir.store_path().display()))
            })?;
            Arc::new(store)
        }
        Some(endpoints) => {
            let mut store = open_etcd(
                &mut dir,
                &endpoints,
                &args.store,
                args.reinitialize_store,
                now,
            )?;
            if let Some(key) = &seal_key {
                let own = own_ca(&args, &dir)?;
                let taken = ca_from_etcd(&store, key, own, &args.trust_domain)?;
                match &taken.stored {
                    Some(what) => println!(
                        "CA: stored {what} in etcd at {} (key sealed, kid {})",
                        taken.key_name,
                        key.kid()
                    ),
                    None => println!(
                        "CA: from etcd at {} (key sealed, kid {})",
                        taken.key_name,
                        key.kid()
                    ),
                }
                ca = Some(with_extra_roots(&args, taken.ca)?);
            }
            let Some(ca) = &ca else {
                return Err(Error::internal("no CA"));
            };
            let trusted: Vec<String> = ca
                .roots()
                .iter()
                .map(|der| coremesh_api::token::fingerprint_hex(der.as_ref()))
                .collect();
            match store.agree_ca(&trusted) {
                Ok(Ok(())) => {}
                Ok(Err(mismatch)) => return Err(Error::internal(mismatch.to_string())),
                Err(e) => return Err(e.into()),
            }
            let replica = args.store.replica(args.api.port());
            store
                .start_session(&replica, args.heartbeat_timeout)
                .map_err(|e| {
                    Error::internal(format!(
                        "the store under {}: starting this replica's session: {e}",
                        args.store.etcd_prefix
                    ))
                })?;
            println!(
                "store: etcd at {} under {} (store {}, replica {replica})",
                store.endpoints(),
                store.keys().prefix(),
                store.id()
            );
            let store = Arc::new(store);
            etcd_store = Some(store.clone());
            store
        }
    };
    let opts = Options {
        heartbeat_timeout: args.heartbeat_timeout,
        // On etcd, three heartbeats per timeout (the lease TTL), so that a
        // short --heartbeat-timeout does not let the leader withdraw live
        // proxies: 5 s from the default 15 s, as with redb.
        heartbeat_interval: if args.store.store == "redb" {
            Options::default().heartbeat_interval
        } else {
            (args.heartbeat_timeout / 3).clamp(
                Duration::from_millis(100),
                Options::default().heartbeat_interval,
            )
        },
        grace: args.grace,
        cert_lifetime: args.cert_lifetime,
        forget_after: args.forget_after,
        ..Options::default()
    };
    let Some(ca) = ca else {
        return Err(Error::internal("no CA"));
    };
    let hub = Hub::new(store, ca, opts, started)?;
    let (version, _) = hub.config();
    let endpoint = quic::bind(&hub, args.listen, &dir.quic_reset_key)?;
    let quic_addr = endpoint
        .local_addr()
        .map_err(|e| Error::internal(format!("QUIC socket: {e}")))?;
    let api_tls = api_tls::acceptor(
        &args.api_tls,
        &hub.ca(),
        args.api,
        &dir.path,
        SystemTime::now(),
    )?;
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {} (API): {e}", args.api)))?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("API socket: {e}")))?;
    tracing::info!(
        config_version = version,
        store_id = hub.store_id(),
        ca_fingerprint = hub.ca().fingerprint(),
        trust_bundle = hub.ca().roots().len(),
        trust_domain = %args.trust_domain,
        grace = ?args.grace,
        "control started"
    );
    println!("listening quic={quic_addr} api={api_addr}");
    systemd::ready();
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(systemd::watchdog(every));
    }
    tokio::spawn(hub.clone().run());
    tokio::spawn(quic::serve(endpoint.clone(), hub.clone()));
    // The leader of election ca-rotation issues a requested next root;
    // every replica swaps its CA when the CA in etcd changes.
    let rotation = match (etcd_store, seal_key) {
        (Some(store), Some(key)) => {
            let started_with = hub.ca();
            let (hub, endpoint) = (hub.clone(), endpoint.clone());
            let (extra, listen_ip) = (args.extra_roots.clone(), args.listen.ip());
            let on_change: OnChange = Box::new(move |ca| {
                let ca = add_extra_roots(&extra, ca)?;
                let trusted = ca
                    .roots()
                    .iter()
                    .map(|der| coremesh_api::token::fingerprint_hex(der.as_ref()))
                    .collect();
                hub.set_ca(ca);
                // New connections get a server certificate from the new CA
                // and are verified against the new bundle.
                endpoint.set_server_config(Some(quic::server_config(&hub, listen_ip)?));
                Ok(trusted)
            });
            Some(CaRotation::start(
                store,
                key,
                &started_with,
                Duration::from_secs(1),
                on_change,
            )?)
        }
        _ => None,
    };
    let app = api::router(hub.clone(), &dir.credential, api_tls.is_some())
        .layer(axum::Extension(rotation));
    api_tls::serve(listener, app, api_tls, shutdown()).await;
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
    systemd::stopping();
}
