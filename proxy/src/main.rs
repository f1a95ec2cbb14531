//! `coremesh-proxy`: the sidecar binary. Parses the command line and the
//! configuration, binds the listeners, starts the shards and runs the agent
//! on the main thread.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use coremesh_proxy::config::{Config, REFERENCE};

/// `--intercept`: what to do with this proxy's nftables ruleset.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Intercept {
    /// Print the ruleset rendered from the config's [intercept] section.
    Print,
    /// Install it (`nft -f -`, table inet coremesh), replacing an earlier one.
    Apply,
    /// Delete table inet coremesh: traffic goes direct again.
    Remove,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// coremesh sidecar proxy: forwards HTTP/1.1 between the local app and the
/// mesh (outbound by service name, inbound to the local app).
#[derive(Debug, Parser)]
#[command(name = "coremesh-proxy", version, after_long_help = REFERENCE)]
struct Cli {
    /// The configuration file (TOML; see the reference below with --help).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 if it is valid, 1 with the error if not.
    #[arg(long)]
    check: bool,
    /// Take the listening sockets over from the proxy running with this
    /// `upgrade_socket`, then tell it to drain and exit (an upgrade that
    /// drops no connection).
    #[arg(long, value_name = "PATH")]
    upgrade_from: Option<PathBuf>,
    /// Transparent interception: print, apply or remove the nftables
    /// ruleset for this config's [intercept] section, then exit (needs
    /// CAP_NET_ADMIN to apply or remove; runs in the caller's network
    /// namespace).
    #[arg(long, value_enum, value_name = "ACTION", conflicts_with = "check")]
    intercept: Option<Intercept>,
    /// Log format on stderr. The level comes from RUST_LOG (default "info").
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Keeps up to 1 MiB of freed memory at the top of each malloc heap instead
/// of handing it back to the kernel at once.
///
/// glibc trims a thread's heap (madvise(MADV_DONTNEED)) whenever more than
/// 128 KiB at its top is free. A shard allocates and frees the state of every
/// request (the boxed request future, ~10 KiB), so with a few dozen requests
/// in flight the top of its heap kept crossing that line: measured on the
/// small keep-alive benchmark, one madvise per ~30 requests and 3.5 page
/// faults per request (HAProxy: none), each fault a trap into the VM's
/// kernel. 1 MiB covers that churn; a larger burst is still returned, and
/// the idle-connection RSS budget (1 KiB x thousands of connections) is not
/// touched by what is kept.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) takes two integers, no pointers, and only sets a
    // glibc malloc parameter (under malloc's own lock); it is called first
    // thing in `main`, before any other thread exists or allocates.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// `--intercept ACTION`: 0 when done, 1 with the error on stderr.
fn intercept(config: &std::path::Path, action: Intercept) -> ExitCode {
    use coremesh_proxy::intercept::{run, Action};
    let action = match action {
        Intercept::Print => Action::Print,
        Intercept::Apply => Action::Apply,
        Intercept::Remove => Action::Remove,
    };
    // Removing needs no valid config: a broken file must not keep the
    // redirects in place.
    let cfg = match (Config::load(config), action) {
        (Ok(cfg), _) => Some(cfg),
        (Err(_), Action::Remove) => None,
        (Err(e), _) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cfg {
        Some(cfg) => run(cfg, action),
        None => coremesh_proxy::intercept::remove().map(|()| String::new()),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coremesh-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if cli.check {
        return match Config::load(&cli.config) {
            Ok(cfg) => {
                let file_warnings = match coremesh_proxy::check_files(&cfg) {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                for w in cfg.warnings().into_iter().chain(file_warnings) {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(action) = cli.intercept {
        return intercept(&cli.config, action);
    }
    init_logging(cli.log_format);
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    match coremesh_proxy::start(cli.config, cfg, cli.upgrade_from) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
