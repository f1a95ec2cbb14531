//! `meshctl`: the operator's command line for coremesh-control's HTTP API.
//!
//! Finds control through `--api` / `COREMESH_API` (several replicas: a
//! comma-separated list or the flag repeated, tried in order until one
//! accepts the connection) and the operator
//! credential through `--credential FILE` / `COREMESH_CREDENTIAL` or
//! `--data-dir DIR` (reads `DIR/operator.credential`).
//!
//! The API is HTTPS; meshctl pins the CA that issued control's API
//! certificate: `--ca FILE` / `COREMESH_CA`, else `api-ca.pem` in
//! `--data-dir`, else `api-ca.pem` beside the `--credential` file (so a
//! remote operator copies the two files together and pins control
//! without a flag). `http://` is for a control with `--api-plaintext`.
//!
//! Exit codes: 0 success, 1 input rejected (the server's reason is
//! printed; also a change refused because the config moved past its
//! `--if-version`, or past what control read, when another control on the
//! same etcd committed first), 2 control unreachable.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use coremesh_api::http::{
    ApplyResult, EdgesView, EndpointStatus, ErrorBody, HistoryEntry, NodeEvicted, NodeReadmitted,
    NodeStatus, ProxyStatus, RollbackRequest, TokenCreated, TokenInfo, TokenRequest,
};
use coremesh_api::resource::{self, Resource};
use coremesh_control::bootstrap;
use coremesh_control::ca_rotation::RotationStatus;
use coremesh_control::client::{Client, ClientError};
use serde::de::DeserializeOwned;

/// Operate a coremesh control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Control's API: https://HOST:PORT (http:// only for a control with
    /// --api-plaintext). Several replicas: comma-separated, or the flag
    /// repeated; tried in order, the first that accepts the connection
    /// answers (an error it answers is final).
    #[arg(
        long,
        env = "COREMESH_API",
        default_value = "https://127.0.0.1:7080",
        value_delimiter = ',',
        global = true
    )]
    api: Vec<String>,
    /// The CA certificate (PEM) that issued control's API certificate.
    /// Default: api-ca.pem in --data-dir, else beside the --credential file.
    #[arg(long, env = "COREMESH_CA", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// File holding the operator credential.
    #[arg(long, env = "COREMESH_CREDENTIAL", global = true)]
    credential: Option<String>,
    /// Control's data directory; the credential is read from DIR/operator.credential.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create or update resources from YAML (`-` reads stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Apply only if the config is still at version N (the version you
        /// read, e.g. in `meshctl history`): if someone else changed it
        /// since, nothing is applied and meshctl exits 1.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// List resources, proxies or endpoints.
    Get {
        what: What,
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Delete a resource: `meshctl delete route api-canary`; kinds: service,
    /// route, accesspolicy, resilience, meshconfig.
    Delete {
        kind: String,
        name: String,
        /// Delete only if the config is still at version N (see apply).
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// Every proxy: service, node, address, applied version, ACK/NACK, heartbeat, certificate.
    Status,
    /// A live stream of the requests going through SERVICE's proxies
    /// (both directions): time, direction, node, caller, method,
    /// authority, path, status, latency, trace id. Never a body. Runs
    /// until interrupted; the tap stops on the proxies when meshctl exits.
    Tap {
        service: String,
        /// Only requests whose path starts with this (e.g. /users).
        #[arg(long)]
        path: Option<String>,
        /// At most this many requests a second in all (1 to 10000).
        #[arg(long, default_value_t = 100)]
        max_rps: u32,
        /// `json`: one JSON object per request (as control streams them).
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Diagnoses the mesh: control's CA, every proxy connected and ACKing
    /// without a NACK, certificates not close to expiry, clocks in step
    /// with control's, endpoints healthy; each finding with a one-line
    /// fix. Exit 1 when something is wrong.
    Check {
        /// A proxy certificate expiring sooner than this is flagged.
        #[arg(long, default_value = "1h", value_parser = coremesh_api::resource::parse_duration)]
        cert_warn: Duration,
        /// A proxy whose clock is further than this from control's is
        /// flagged.
        #[arg(long, default_value = "1s", value_parser = coremesh_api::resource::parse_duration)]
        max_clock_skew: Duration,
        /// `json`: the findings as one JSON document.
        #[arg(short, long)]
        output: Option<String>,
    },
    /// The mesh's edges live, like `linkerd viz top`: requests per
    /// second, success rate, p50 and p99 per source, destination, subset
    /// and protocol, merged from every proxy's summaries; the screen is
    /// redrawn every second until interrupted. `-o json`: one snapshot
    /// (control's `GET /v1/edges`).
    Top {
        /// Only edges from or to this service.
        #[arg(long)]
        service: Option<String>,
        /// The window the figures cover: `10s` or `1m`.
        #[arg(long, default_value = "10s")]
        window: String,
        /// `json`: one snapshot as JSON, then exit.
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Every config version.
    History,
    /// Restore the config of an earlier version, as a new version.
    Rollback {
        #[arg(long)]
        to: u64,
        /// Roll back only if the config is still at version N (see apply).
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// Join tokens for new proxies.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Hosts (nodes): evict a compromised one, readmit it, list them.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// The CA kept in etcd (`coremesh-control --ca-in-store`): rotate its
    /// root, see where a rotation is.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Set up a new host: writes OUT/proxy.toml (control address, node,
    /// token file, state dir, listeners) and OUT/join.token (a one-time
    /// token for SERVICE), both mode 0600 and never overwritten; then run
    /// `coremesh-proxy --config OUT/proxy.toml` there.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, clap::Args)]
struct BootstrapArgs {
    /// The service the proxy fronts.
    service: String,
    /// The host's name, as `meshctl status` lists it.
    #[arg(long)]
    node: String,
    /// Directory to write proxy.toml and join.token into (created 0700).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The local app's address: adds an [inbound] section.
    #[arg(long, value_name = "HOST:PORT")]
    inbound_app: Option<String>,
    /// The inbound listener (with --inbound-app).
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:4143")]
    inbound_listen: String,
    /// The outbound listener the app calls other services through.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4140")]
    outbound_listen: String,
    /// Leave out the [outbound] section.
    #[arg(long)]
    no_outbound: bool,
    /// Control's QUIC address as the proxy reaches it (a host name is
    /// fine). Default: --api's host, port 7443.
    #[arg(long, value_name = "HOST:PORT")]
    control_address: Option<String>,
    /// The proxy's state directory (certificate, key, last snapshot).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/coremesh-proxy")]
    state_dir: PathBuf,
    /// The proxy's admin endpoint.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9901")]
    admin: String,
    /// How long the token can be used, e.g. 10m, 1h.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Create the token although no Service resource defines the service.
    #[arg(long)]
    allow_undefined: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a token bound to a service; prints the token alone on stdout.
    Create {
        #[arg(long)]
        service: String,
        /// How long it can be used, e.g. 10m, 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many proxies may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Create the token although no Service resource defines the
        /// service yet (it is refused otherwise).
        #[arg(long)]
        allow_undefined: bool,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Where a root rotation is: the roots in etcd (current, next,
    /// previous), and the ones this control issues from and trusts.
    Status,
    /// A step of a root rotation (docs/etcd.md, "Rotating the root in
    /// etcd"): `begin` (a next root is issued once, by one control),
    /// `switch` (the next root issues; the old one stays trusted),
    /// `finish` (the old root is dropped). Every control takes each step
    /// within about a second, without a restart.
    Rotate {
        #[arg(value_parser = ["begin", "switch", "finish"])]
        step: String,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Evict NODE: control refuses its joins, sessions and renewals from
    /// now on (durably), closes its sessions, withdraws its endpoints, and
    /// every proxy refuses the certificates issued to it, on new
    /// handshakes and on open connections, from its next snapshot.
    Evict { node: String },
    /// Let an evicted NODE join again (with a new token); the certificates
    /// it had stay revoked until they expire.
    Readmit { node: String },
    /// Every node control issued certificates to, and the evicted ones.
    List,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    Services,
    Routes,
    #[value(name = "accesspolicies", alias = "accesspolicy")]
    AccessPolicies,
    #[value(name = "resiliences", alias = "resilience")]
    Resiliences,
    #[value(name = "meshconfig")]
    MeshConfig,
    Proxies,
    Endpoints,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

/// How meshctl fails: the message and the exit code.
struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { .. } => Fail(
                2,
                format!("{e}\nIs coremesh-control running? Check --api / COREMESH_API, and that its log says `listening ... api=ADDR`."),
            ),
            ClientError::NoneReachable { .. } => Fail(
                2,
                format!("{e}\nAre the coremesh-control replicas running? Check --api / COREMESH_API, and that their logs say `listening ... api=ADDR`."),
            ),
            ClientError::Protocol { .. } => Fail(2, format!("{e}\nIs --api pointing at coremesh-control's API port? Control serves https:// unless started with --api-plaintext.")),
            ClientError::BadUrl(m) => Fail(1, m),
            ClientError::NoCa { .. } => Fail(1, format!("{e}: pass --ca FILE (control's <data-dir>/api-ca.pem), or --data-dir DIR, or keep api-ca.pem beside the --credential file")),
            ClientError::BadCa { .. } => Fail(1, e.to_string()),
            ClientError::Untrusted { .. } => Fail(2, format!("{e}\nPin the CA of this control: its <data-dir>/api-ca.pem, or the CA of its --api-cert (--ca FILE).")),
            ClientError::WrongName { .. } => Fail(2, e.to_string()),
            ClientError::Tls { .. } => Fail(2, format!("{e}\nIf control runs with --api-plaintext, use http://.")),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("meshctl: {msg}");
            ExitCode::from(code)
        }
    }
}

fn credential(cli: &Cli) -> Result<String, Fail> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                Fail(
                    1,
                    format!("cannot read the credential {}: {e}", path.display()),
                )
            })
    };
    if let Some(c) = &cli.credential {
        let path = PathBuf::from(c);
        if path.exists() {
            return read(&path);
        }
        // COREMESH_CREDENTIAL may also hold the credential itself.
        if !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(c.clone());
        }
        return Err(Fail(1, format!("credential file {c} does not exist")));
    }
    if let Some(dir) = &cli.data_dir {
        return read(&dir.join("operator.credential"));
    }
    Err(Fail(
        1,
        "no operator credential: pass --data-dir DIR (control's data directory) or --credential FILE (or set COREMESH_CREDENTIAL)".into(),
    ))
}

struct Api {
    client: Client,
}

impl Api {
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<T, Fail> {
        let r = self
            .client
            .request(method, path, body)
            .map_err(|e| answer_lost(method, e))?;
        if r.status == 401 {
            return Err(Fail(
                1,
                "control refused the operator credential (401); check --credential / --data-dir"
                    .into(),
            ));
        }
        if !(200..300).contains(&r.status) {
            let msg = serde_json::from_slice::<ErrorBody>(&r.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
            return Err(Fail(1, msg));
        }
        serde_json::from_slice(&r.body)
            .map_err(|e| Fail(2, format!("unexpected answer from control: {e}")))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Fail> {
        self.call("GET", path, None)
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, Fail> {
        let body = serde_json::to_vec(body).map_err(|e| Fail(1, e.to_string()))?;
        self.call("POST", path, Some(("application/json", &body)))
    }
}

/// A change (anything but GET) whose request was sent and whose answer
/// never came: control may have died after committing it, or before.
/// Exit 2 as for an unreachable control, saying that the outcome is
/// unknown and how to find it out, so it is not blindly sent again.
fn answer_lost(method: &str, e: ClientError) -> Fail {
    let lost = matches!(
        &e,
        ClientError::Unreachable { step, .. } if !step.is_empty()
    ) || matches!(
        &e,
        ClientError::Protocol {
            reason: coremesh_control::client::ResponseError::NoHead,
            ..
        }
    );
    if method == "GET" || !lost {
        return Fail::from(e);
    }
    Fail(
        2,
        format!(
            "{e}\nThe change was sent, but control's answer was lost (did it stop?): it may or may not have been committed. \
             Check `meshctl history` (through another replica, if one died) before sending it again; \
             `--if-version N` makes a repeat safe."
        ),
    )
}

/// The CA file to pin: `--ca`, else `api-ca.pem` in `--data-dir`, else
/// beside the `--credential` file; `None` when none of them exists (fine
/// for `http://`; [`Client::new`] says what is missing for `https://`).
fn ca_file(cli: &Cli) -> Option<PathBuf> {
    if let Some(ca) = &cli.ca {
        return Some(ca.clone());
    }
    let beside_credential = cli
        .credential
        .as_ref()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .and_then(|p| p.parent().map(|d| d.join(API_CA)));
    cli.data_dir
        .as_ref()
        .map(|d| d.join(API_CA))
        .into_iter()
        .chain(beside_credential)
        .find(|p| p.is_file())
}

const API_CA: &str = coremesh_control::datadir::API_CA;

/// The first `--api` URL: where `bootstrap` derives control's QUIC address
/// from when `--control-address` is not given.
fn first_api(cli: &Cli) -> &str {
    cli.api.first().map_or("", String::as_str)
}

fn run(cli: Cli) -> Result<(), Fail> {
    if let Cmd::Bootstrap(args) = &cli.cmd {
        // Check everything before a token is spent on it.
        bootstrap_plan(first_api(&cli), args)?;
    }
    let cred = credential(&cli)?;
    let api = Api {
        client: Client::with_urls(&cli.api, &cred, ca_file(&cli).as_deref())?,
    };
    match cli.cmd {
        Cmd::Apply { file, if_version } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Fail(1, format!("reading stdin: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|e| Fail(1, format!("{file}: {e}")))?
            };
            let r: ApplyResult = api
                .call(
                    "POST",
                    &with_if_version("/v1/apply", if_version),
                    Some(("application/yaml", text.as_bytes())),
                )
                .map_err(|Fail(c, m)| Fail(c, if c == 1 { format!("{file}: {m}") } else { m }))?;
            print_change(&r);
        }
        Cmd::Get { what, output } => get(&api, what, output)?,
        Cmd::Delete {
            kind,
            name,
            if_version,
        } => {
            let plural = match coremesh_control::config::kind_of(&kind) {
                Some("service") => "services",
                Some("route") => "routes",
                Some("accesspolicy") => "accesspolicies",
                Some("resilience") => "resiliences",
                Some(_) => "meshconfig",
                None => {
                    return Err(Fail(
                        1,
                        format!(
                            "unknown kind {:?}: use {}",
                            kind.to_ascii_lowercase(),
                            coremesh_control::config::DELETE_KINDS
                        ),
                    ))
                }
            };
            let path = with_if_version(&format!("/v1/{plural}/{name}"), if_version);
            let r: ApplyResult = api.call("DELETE", &path, None)?;
            print_change(&r);
        }
        Cmd::Status => {
            // A replica on etcd says how its link to etcd is; one control
            // on redb (or from before /v1/replica: 404) prints no line.
            if let Ok(r) = api.get::<coremesh_api::http::ReplicaStatus>("/v1/replica") {
                if r.replica.is_some() {
                    println!("{}", replica_line(&r, now_secs()));
                }
            }
            let proxies: Vec<ProxyStatus> = api.get("/v1/proxies")?;
            let nodes: Vec<NodeStatus> = api.get("/v1/nodes")?;
            print_status(&proxies, &nodes);
        }
        Cmd::Check {
            cert_warn,
            max_clock_skew,
            output,
        } => check(&api, cert_warn, max_clock_skew, output.as_deref())?,
        Cmd::Tap {
            service,
            path,
            max_rps,
            output,
        } => tap(&api, &service, path.as_deref(), max_rps, output.as_deref())?,
        Cmd::Top {
            service,
            window,
            output,
        } => top(&api, service.as_deref(), &window, output.as_deref())?,
        Cmd::History => {
            let h: Vec<HistoryEntry> = api.get("/v1/history")?;
            let mut rows = vec![vec![
                "VERSION".into(),
                "TIME (UTC)".into(),
                "SUMMARY".into(),
            ]];
            for e in h {
                rows.push(vec![e.version.to_string(), utc(e.at), e.summary]);
            }
            print_table(&rows);
        }
        Cmd::Rollback { to, if_version } => {
            let path = with_if_version("/v1/rollback", if_version);
            let r: ApplyResult = api.post_json(&path, &RollbackRequest { to })?;
            print_change(&r);
        }
        Cmd::Token { cmd } => token(&api, cmd)?,
        Cmd::Node { cmd } => node(&api, cmd)?,
        Cmd::Ca { cmd } => ca_cmd(&api, cmd)?,
        Cmd::Bootstrap(args) => {
            let url = cli.api.first().map_or("", String::as_str);
            bootstrap(&api, url, &args)?
        }
    }
    Ok(())
}

/// The proxy.toml's contents and the two files to write, every input
/// checked; creates the output directory.
fn bootstrap_plan(
    api_url: &str,
    a: &BootstrapArgs,
) -> Result<(bootstrap::Plan, PathBuf, PathBuf), Fail> {
    let bad = |e: bootstrap::BootstrapError| Fail(1, e.to_string());
    let control_address = match &a.control_address {
        Some(c) => c.clone(),
        None => bootstrap::default_control_address(api_url).ok_or_else(|| {
            Fail(1, format!("cannot tell control's address from --api {api_url:?}: pass --control-address HOST:PORT"))
        })?,
    };
    bootstrap::check_address("--control-address", &control_address).map_err(bad)?;
    bootstrap::check_address("--admin", &a.admin).map_err(bad)?;
    if let Some(app) = &a.inbound_app {
        bootstrap::check_address("--inbound-app", app).map_err(bad)?;
        bootstrap::check_address("--inbound-listen", &a.inbound_listen).map_err(bad)?;
    }
    if !a.no_outbound {
        bootstrap::check_address("--outbound-listen", &a.outbound_listen).map_err(bad)?;
    }
    let out = bootstrap::prepare_dir(&a.out).map_err(bad)?;
    let (config, token) = bootstrap::targets(&out).map_err(bad)?;
    let plan = bootstrap::Plan {
        service: a.service.clone(),
        node: a.node.clone(),
        control_address,
        token_file: token.clone(),
        state_dir: a.state_dir.clone(),
        admin: a.admin.clone(),
        inbound: a
            .inbound_app
            .clone()
            .map(|app| (a.inbound_listen.clone(), app)),
        outbound: (!a.no_outbound).then(|| a.outbound_listen.clone()),
    };
    Ok((plan, config, token))
}

fn bootstrap(api: &Api, api_url: &str, a: &BootstrapArgs) -> Result<(), Fail> {
    let (plan, config, token_path) = bootstrap_plan(api_url, a)?;
    let ttl = resource::parse_duration(&a.ttl).map_err(|e| Fail(1, format!("--ttl: {e}")))?;
    let req = TokenRequest {
        service: a.service.clone(),
        ttl_secs: Some(ttl.as_secs()),
        uses: Some(1),
        allow_undefined: a.allow_undefined,
    };
    let t: TokenCreated = api.post_json("/v1/tokens", &req)?;
    let written = bootstrap::write_new(&token_path, &format!("{}\n", t.token))
        .and_then(|()| bootstrap::write_new(&config, &bootstrap::render(&plan)));
    if let Err(e) = written {
        // The token is useless without its files: revoke it.
        let _: Result<serde_json::Value, _> =
            api.call("DELETE", &format!("/v1/tokens/{}", t.id), None);
        return Err(Fail(1, format!("{e} (token {} revoked)", t.id)));
    }
    println!("wrote {}", config.display());
    println!(
        "wrote {} (token {}, one use, expires {} UTC)",
        token_path.display(),
        t.id,
        utc(t.expires_at)
    );
    println!(
        "on node {}: coremesh-proxy --config {}",
        plan.node,
        config.display()
    );
    Ok(())
}

/// `service api, p2c-ewma, circuitBreaker, rateLimit 100/s per service,
/// mirror api-shadow 10%`: the service, the balancer and the blocks set.
fn resilience_detail(r: &resource::Resilience) -> String {
    let mut parts = vec![format!("service {}", r.service), r.load_balancer.describe()];
    if r.circuit_breaker.is_some() {
        parts.push("circuitBreaker".into());
    }
    if r.outlier_detection.is_some() {
        parts.push("outlierDetection".into());
    }
    if r.health_check.is_some() {
        parts.push("healthCheck".into());
    }
    if r.retry_budget != resource::RetryBudget::default() {
        parts.push(format!(
            "retryBudget {} + {}/s",
            r.retry_budget.ratio, r.retry_budget.min_per_second
        ));
    }
    if let Some(rl) = &r.rate_limit {
        let per = match rl.per {
            resource::RateLimitKey::Service => "service",
            resource::RateLimitKey::Caller => "caller",
        };
        parts.push(format!("rateLimit {}/s per {per}", rl.requests_per_second));
    }
    if r.faults.is_some() {
        parts.push("faults".into());
    }
    if let Some(m) = &r.mirror {
        parts.push(format!("mirror {} {}%", m.service, m.percent));
    }
    parts.join(", ")
}

/// `path` with `?if_version=N` when `--if-version N` was given.
fn with_if_version(path: &str, if_version: Option<u64>) -> String {
    match if_version {
        Some(n) => format!("{path}?if_version={n}"),
        None => path.to_string(),
    }
}

fn print_change(r: &ApplyResult) {
    if r.changed.is_empty() {
        println!("unchanged (version {})", r.version);
    } else {
        println!("version {}: {}", r.version, r.changed.join(", "));
    }
}

fn get(api: &Api, what: What, output: Output) -> Result<(), Fail> {
    let path = match what {
        What::Services => "/v1/services",
        What::Routes => "/v1/routes",
        What::AccessPolicies => "/v1/accesspolicies",
        What::Resiliences => "/v1/resiliences",
        What::MeshConfig => "/v1/meshconfig",
        What::Proxies => "/v1/proxies",
        What::Endpoints => "/v1/endpoints",
    };
    let value: serde_json::Value = api.get(path)?;
    match output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return Ok(());
        }
        Output::Yaml => {
            let text = match what {
                What::Services
                | What::Routes
                | What::AccessPolicies
                | What::Resiliences
                | What::MeshConfig => {
                    let rs: Vec<Resource> = serde_json::from_value(value)
                        .map_err(|e| Fail(2, format!("unexpected answer: {e}")))?;
                    resource::to_yaml(&rs)
                }
                _ => serde_norway::to_string(&value).unwrap_or_default(),
            };
            print!("{text}");
            return Ok(());
        }
        Output::Table => {}
    }
    let bad = |e: serde_json::Error| Fail(2, format!("unexpected answer: {e}"));
    match what {
        What::Services
        | What::Routes
        | What::AccessPolicies
        | What::Resiliences
        | What::MeshConfig => {
            let rs: Vec<Resource> = serde_json::from_value(value).map_err(bad)?;
            if rs.is_empty() && matches!(what, What::MeshConfig) {
                println!("no MeshConfig applied: defaultAccess allow");
                return Ok(());
            }
            let mut rows = vec![vec!["KIND".into(), "NAME".into(), "DETAIL".into()]];
            for r in rs {
                let detail = match &r {
                    Resource::Service(s) => format!("protocol {:?}", s.protocol).to_lowercase(),
                    Resource::Route(rt) => {
                        format!("service {}, {} rule(s)", rt.service, rt.rules.len())
                    }
                    Resource::AccessPolicy(p) => format!(
                        "service {}, {} rule(s), default {}",
                        p.service,
                        p.rules.len(),
                        p.default.as_str()
                    ),
                    Resource::Resilience(res) => resilience_detail(res),
                    Resource::MeshConfig(m) => {
                        let tracing = match &m.tracing {
                            Some(t) => format!(", tracing {} to {}", t.sampling, t.collector),
                            None => String::new(),
                        };
                        format!(
                            "defaultAccess {}, outboundPolicy {}{tracing}",
                            m.default_access.as_str(),
                            m.outbound_policy.as_str()
                        )
                    }
                };
                rows.push(vec![r.kind().into(), r.name().into(), detail]);
            }
            print_table(&rows);
        }
        What::Proxies => {
            let ps: Vec<ProxyStatus> = serde_json::from_value(value).map_err(bad)?;
            let nodes: Vec<NodeStatus> = api.get("/v1/nodes")?;
            print_status(&ps, &nodes);
        }
        What::Endpoints => {
            let es: Vec<EndpointStatus> = serde_json::from_value(value).map_err(bad)?;
            // The owning replica, when registrations are shared (etcd).
            let replicas = es.iter().any(|e| e.replica.is_some());
            let mut head: Vec<String> = vec![
                "SERVICE".into(),
                "ADDRESS".into(),
                "NODE".into(),
                "HEALTHY".into(),
                "LABELS".into(),
            ];
            if replicas {
                head.push("REPLICA".into());
            }
            let mut rows = vec![head];
            for e in es {
                let labels: Vec<String> =
                    e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut row = vec![
                    e.service,
                    e.address.to_string(),
                    e.node,
                    e.healthy.to_string(),
                    labels.join(","),
                ];
                if replicas {
                    row.push(e.replica.unwrap_or_default());
                }
                rows.push(row);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

fn ca_cmd(api: &Api, cmd: CaCmd) -> Result<(), Fail> {
    let status: RotationStatus = match cmd {
        CaCmd::Status => api.get("/v1/ca/rotation")?,
        CaCmd::Rotate { step } => api.post_json(&format!("/v1/ca/rotation/{step}"), &())?,
    };
    let show = |f: &Option<String>| f.clone().unwrap_or_else(|| "-".to_string());
    println!("phase:    {}", status.phase);
    println!("current:  {}", show(&status.current));
    println!("next:     {}", show(&status.next));
    println!("previous: {}", show(&status.previous));
    println!(
        "this control issues from {} and trusts {} root(s): {}{}",
        status.issuing,
        status.trusted.len(),
        status.trusted.join(", "),
        if status.leading {
            " (leader of election ca-rotation)"
        } else {
            ""
        }
    );
    Ok(())
}

fn token(api: &Api, cmd: TokenCmd) -> Result<(), Fail> {
    match cmd {
        TokenCmd::Create {
            service,
            ttl,
            uses,
            allow_undefined,
        } => {
            let ttl = resource::parse_duration(&ttl).map_err(|e| Fail(1, format!("--ttl: {e}")))?;
            let req = TokenRequest {
                service: service.clone(),
                ttl_secs: Some(ttl.as_secs()),
                uses: Some(uses),
                allow_undefined,
            };
            let t: TokenCreated = api.post_json("/v1/tokens", &req)?;
            eprintln!(
                "token {} for service {service}: {uses} use(s), expires {} UTC",
                t.id,
                utc(t.expires_at)
            );
            println!("{}", t.token);
        }
        TokenCmd::List => {
            let ts: Vec<TokenInfo> = api.get("/v1/tokens")?;
            let now = now_secs();
            let mut rows = vec![vec![
                "ID".into(),
                "SERVICE".into(),
                "EXPIRES (UTC)".into(),
                "USES LEFT".into(),
                "STATE".into(),
            ]];
            for t in ts {
                let state = if t.revoked {
                    "revoked"
                } else if now >= t.expires_at {
                    "expired"
                } else if t.uses_left == 0 {
                    "used up"
                } else {
                    "active"
                };
                rows.push(vec![
                    t.id,
                    t.service,
                    utc(t.expires_at),
                    t.uses_left.to_string(),
                    state.into(),
                ]);
            }
            print_table(&rows);
        }
        TokenCmd::Revoke { id } => {
            let _: serde_json::Value = api.call("DELETE", &format!("/v1/tokens/{id}"), None)?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}

fn node(api: &Api, cmd: NodeCmd) -> Result<(), Fail> {
    match cmd {
        NodeCmd::Evict { node } => {
            let e: NodeEvicted = api.call(
                "POST",
                &format!("/v1/nodes/{node}/evict"),
                Some(("application/json", b"{}")),
            )?;
            if e.already {
                println!(
                    "node {} was already evicted (at {} UTC)",
                    e.node,
                    utc(e.evicted_at)
                );
            } else {
                println!("evicted node {} at {} UTC", e.node, utc(e.evicted_at));
            }
            println!(
                "revoked {} certificate(s) (sent to every proxy in its next snapshot):",
                e.revoked.len()
            );
            for c in &e.revoked {
                println!("  serial {}  expires {} UTC", c.serial, utc(c.not_after));
            }
            println!(
                "closed {} control session(s); withdrew {} endpoint(s); its joins and renewals are refused",
                e.sessions_closed, e.endpoints_withdrawn
            );
            println!("`meshctl status` shows when every proxy has ACKed it");
        }
        NodeCmd::Readmit { node } => {
            let r: NodeReadmitted = api.call(
                "POST",
                &format!("/v1/nodes/{node}/readmit"),
                Some(("application/json", b"{}")),
            )?;
            println!(
                "readmitted node {}: it may join again with a new token (`meshctl token create`); {} of its old certificate(s) stay revoked until they expire",
                r.node, r.still_revoked
            );
        }
        NodeCmd::List => {
            let nodes: Vec<NodeStatus> = api.get("/v1/nodes")?;
            let mut rows = vec![vec![
                "NODE".into(),
                "STATE".into(),
                "CERTIFICATES".into(),
                "REVOKED".into(),
            ]];
            for n in nodes {
                rows.push(vec![
                    n.node,
                    n.evicted_at
                        .map_or("member".into(), |t| format!("EVICTED {} UTC", utc(t))),
                    n.certificates.to_string(),
                    n.revoked.to_string(),
                ]);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

/// One finding of `meshctl check`.
#[derive(serde::Serialize)]
struct Finding {
    ok: bool,
    what: String,
    /// How to fix it (empty when ok).
    fix: String,
}

fn check(
    api: &Api,
    cert_warn: Duration,
    max_skew: Duration,
    output: Option<&str>,
) -> Result<(), Fail> {
    let ca: coremesh_api::http::CaStatus = api.get("/v1/ca")?;
    let proxies: Vec<ProxyStatus> = api.get("/v1/proxies")?;
    let endpoints: Vec<coremesh_api::http::EndpointStatus> = api.get("/v1/endpoints")?;
    let findings = findings(&ca, &proxies, &endpoints, cert_warn, max_skew);
    let bad = findings.iter().filter(|f| !f.ok).count();
    if output == Some("json") {
        let doc = serde_json::json!({ "ok": bad == 0, "findings": findings });
        println!("{doc:#}");
    } else {
        for f in &findings {
            if f.ok {
                println!("ok    {}", f.what);
            } else {
                println!("FAIL  {}\n      fix: {}", f.what, f.fix);
            }
        }
        println!(
            "{}",
            match bad {
                0 => "the mesh looks healthy".to_string(),
                n => format!("{n} problem(s) found"),
            }
        );
    }
    if bad > 0 {
        return Err(Fail(1, String::new()));
    }
    Ok(())
}

/// What `meshctl check` finds in control's view of the mesh.
fn findings(
    ca: &coremesh_api::http::CaStatus,
    proxies: &[ProxyStatus],
    endpoints: &[coremesh_api::http::EndpointStatus],
    cert_warn: Duration,
    max_skew: Duration,
) -> Vec<Finding> {
    let now = ca.now;
    let mut out = Vec::new();
    let mut push = |ok: bool, what: String, fix: &str| {
        out.push(Finding {
            ok,
            what,
            fix: if ok { String::new() } else { fix.to_string() },
        })
    };
    let ca_left = ca.not_after.saturating_sub(now);
    push(
        ca_left > 30 * 86_400,
        if ca.not_after > now {
            format!(
                "control is reachable; its CA ({}) expires in {}",
                ca.trust_domain,
                human(ca_left)
            )
        } else {
            format!("control's CA ({}) EXPIRED {} ago", ca.trust_domain, human(now - ca.not_after))
        },
        "move the mesh to a new CA before it expires (README, \"Rotating the root\": --extra-roots, then --ca-cert/--ca-key)",
    );
    for p in proxies {
        let who = format!("proxy {} on {}", p.service, p.node);
        if !p.connected {
            let left = p
                .last_seen
                .map(|t| format!(" (left {} ago)", human(now.saturating_sub(t))))
                .unwrap_or_default();
            push(
                false,
                format!("{who} is disconnected{left}"),
                "check the host and the unit: `systemctl status coremesh-proxy@SERVICE`, `journalctl -u coremesh-proxy@SERVICE`",
            );
            continue;
        }
        if let Some(problem) = &p.problem {
            push(
                false,
                format!("{who} is misconfigured: {problem}"),
                "correct the proxy's proxy.toml as the message says, then restart it",
            );
        }
        match (&p.nack, p.applied_version, p.sent_version) {
            (Some(reason), _, _) => push(
                false,
                format!("{who} refused its last snapshot (NACK): {reason}"),
                "fix the resource the reason names (or the proxy's own config) and apply again; the proxy keeps its last good policy meanwhile",
            ),
            (None, Some(a), Some(s)) if a == s => push(
                true,
                format!(
                    "{who} runs its last snapshot (config v{})",
                    p.applied_config_version.map_or("-".into(), |c| c.to_string())
                ),
                "",
            ),
            _ => push(
                false,
                format!("{who} has not ACKed its last snapshot yet"),
                "wait a few seconds and check again; if it stays, look at the proxy's log",
            ),
        }
        match p.cert_expiry {
            Some(t) if t <= now => push(
                false,
                format!("{who}: its certificate EXPIRED {} ago", human(now - t)),
                "the proxy could not renew: check its log and its connection to control (peers refuse it meanwhile)",
            ),
            Some(t) if t - now < cert_warn.as_secs() => push(
                false,
                format!("{who}: its certificate expires in {}", human(t - now)),
                "proxies renew over their control session at 2/3 of the lifetime; if this one does not, check its log and its connection to control",
            ),
            _ => {}
        }
        // Reported by the proxy (its Clock message), compared with
        // control's clock on receipt: off by at most the one-way delay.
        match p.clock_skew_ms {
            Some(ms) if ms.unsigned_abs() > max_skew.as_millis() as u64 => push(
                false,
                format!(
                    "{who}: its clock is {} {} control's",
                    human_ms(ms.unsigned_abs()),
                    if ms > 0 { "ahead of" } else { "behind" }
                ),
                "run time synchronization on both hosts (chrony or systemd-timesyncd: `timedatectl status` should say synchronized: yes)",
            ),
            Some(_) => {}
            None => push(
                true,
                format!("{who}: clock skew unknown (a proxy too old to report its clock)"),
                "",
            ),
        }
    }
    let timed: Vec<i64> = proxies
        .iter()
        .filter(|p| p.connected)
        .filter_map(|p| p.clock_skew_ms)
        .collect();
    if let Some(worst) = timed.iter().map(|ms| ms.unsigned_abs()).max() {
        if worst <= max_skew.as_millis() as u64 {
            push(
                true,
                format!(
                    "clocks of {} proxies within {} of control's (largest skew {})",
                    timed.len(),
                    human_ms(max_skew.as_millis() as u64),
                    human_ms(worst)
                ),
                "",
            );
        }
    }
    if proxies.is_empty() {
        push(
            false,
            "no proxy has joined control".into(),
            "create a token (`meshctl token create --service S`) or a host directory (`meshctl bootstrap`) and start a proxy with it",
        );
    }
    let unhealthy: Vec<_> = endpoints.iter().filter(|e| !e.healthy).collect();
    for e in &unhealthy {
        push(
            false,
            format!(
                "endpoint {} of {} on {} is unhealthy",
                e.address, e.service, e.node
            ),
            "its app fails the proxy's [control.health] check: look at the app on that host",
        );
    }
    if unhealthy.is_empty() && !endpoints.is_empty() {
        push(
            true,
            format!("all {} endpoints are healthy", endpoints.len()),
            "",
        );
    }
    out
}

/// `control h1:7080: ok`, or `control h1:7080: cut off from etcd
/// (etcd://...) since 12:01:02 UTC, 9 s: not pushing changes (why)`.
fn replica_line(r: &coremesh_api::http::ReplicaStatus, now: u64) -> String {
    let who = r.replica.as_deref().unwrap_or("(this control)");
    match r.cut_off_since {
        None => format!("control {who}: ok ({})", r.store),
        Some(since) => {
            let t = since % 86_400;
            format!(
                "control {who}: cut off from etcd ({}) since {:02}:{:02}:{:02} UTC, {} s: {}{}",
                r.store,
                t / 3600,
                t / 60 % 60,
                t % 60,
                now.saturating_sub(since),
                if r.pushing {
                    "pushing"
                } else {
                    "not pushing changes"
                },
                r.why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            )
        }
    }
}

fn print_status(ps: &[ProxyStatus], nodes: &[NodeStatus]) {
    let evicted = |node: &str| {
        nodes
            .iter()
            .find(|n| n.node == node)
            .and_then(|n| n.evicted_at)
    };
    let now = now_secs();
    let mut rows = vec![vec![
        "SERVICE".into(),
        "NODE".into(),
        "ADDRESS".into(),
        "CONNECTED".into(),
        "APPLIED".into(),
        "STATE".into(),
        "HEARTBEAT".into(),
        "HEALTHY".into(),
        "CERT EXPIRES".into(),
    ]];
    for p in ps {
        // The config version is what `meshctl history` lists; the
        // snapshot version (a timestamp) is in `-o json`.
        let ago = p
            .applied_at
            .map(|t| format!(", {} ago", human(now.saturating_sub(t))))
            .unwrap_or_default();
        let applied = match (p.applied_version, p.applied_config_version, p.held_running) {
            (Some(_), Some(c), _) => format!("v{c}{ago}"),
            (Some(v), None, _) => format!("snapshot {v}{ago}"),
            (None, _, Some(v)) => format!("snapshot {v} (as it said)"),
            _ => "-".into(),
        };
        let state = match (&p.nack, p.applied_version, p.sent_version) {
            (None, None, None) if p.held_running.is_some() => {
                "held: control's grace period; runs its last snapshot".into()
            }
            (Some(reason), _, _) => format!("NACK: {reason}"),
            (None, Some(a), Some(s)) if a == s => "ACK".into(),
            (None, Some(_), Some(_)) => "ACK (newer pending)".into(),
            (None, None, Some(_)) => "pending".into(),
            _ => "-".into(),
        };
        let state = match &p.problem {
            Some(problem) => format!("MISCONFIGURED: {problem}; {state}"),
            None => state,
        };
        let state = match evicted(&p.node) {
            Some(at) => format!("EVICTED {} UTC", utc(at)),
            None => state,
        };
        rows.push(vec![
            p.service.clone(),
            p.node.clone(),
            p.address.map_or("-".into(), |a| a.to_string()),
            match (p.connected, p.last_seen) {
                (true, _) => "yes".into(),
                (false, Some(t)) => format!("no (left {} ago)", human(now.saturating_sub(t))),
                (false, None) => "no".into(),
            },
            applied,
            state,
            p.last_heartbeat.map_or("-".into(), |t| {
                format!("{} ago", human(now.saturating_sub(t)))
            }),
            // A proxy that left reports nothing: its last health is not
            // its app's state now.
            match (p.connected, p.healthy) {
                (true, Some(h)) => h.to_string(),
                (false, Some(h)) => format!("- (was {h})"),
                (_, None) => "-".into(),
            },
            p.cert_expiry.map_or("-".into(), |t| {
                if t > now {
                    format!("in {}", human(t - now))
                } else {
                    format!("EXPIRED {} ago", human(now - t))
                }
            }),
        ]);
    }
    // An evicted node whose proxies control no longer lists (forgotten
    // after --forget-after) still shows.
    for n in nodes {
        if let Some(at) = n.evicted_at {
            if !ps.iter().any(|p| p.node == n.node) {
                let mut row = vec!["-".to_string(); 9];
                row[1] = n.node.clone();
                row[5] = format!("EVICTED {} UTC", utc(at));
                rows.push(row);
            }
        }
    }
    print_table(&rows);
}

/// `meshctl top`: one snapshot as JSON, or the table redrawn every second.
fn top(api: &Api, service: Option<&str>, window: &str, output: Option<&str>) -> Result<(), Fail> {
    if coremesh_control::fleet::Window::parse(window).is_none() {
        return Err(Fail(1, format!("--window {window:?}: use 10s or 1m")));
    }
    let fetch = || -> Result<EdgesView, Fail> {
        let mut v: EdgesView = api.get(&format!("/v1/edges?window={window}"))?;
        if let Some(s) = service {
            v.edges.retain(|e| e.source == s || e.destination == s);
        }
        Ok(v)
    };
    match output {
        Some("json") => {
            let v = fetch()?;
            let text = serde_json::to_string_pretty(&v).map_err(|e| Fail(1, e.to_string()))?;
            println!("{text}");
            return Ok(());
        }
        Some(other) => return Err(Fail(1, format!("-o {other}: only json is supported"))),
        None => {}
    }
    use std::io::Write as _;
    loop {
        let v = fetch()?;
        // Clear the screen and go home, then the table.
        print!("\x1b[2J\x1b[H");
        println!(
            "meshctl top: {} edge(s), window {}, {} UTC (Ctrl-C to quit)\n",
            v.edges.len(),
            v.window,
            utc(v.generated_at_ms / 1000)
        );
        print_table(&top_rows(&v));
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn top_rows(v: &EdgesView) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "SOURCE",
        "DESTINATION",
        "SUBSET",
        "PROTO",
        "RPS",
        "SUCCESS",
        "P50",
        "P99",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    let ms = |x: f64| {
        if x < 10.0 {
            format!("{x:.2}ms")
        } else {
            format!("{x:.0}ms")
        }
    };
    for e in &v.edges {
        rows.push(vec![
            e.source.clone(),
            e.destination.clone(),
            if e.subset.is_empty() {
                "-".into()
            } else {
                e.subset.clone()
            },
            e.protocol.clone(),
            format!("{:.1}", e.rps),
            format!("{:.2}%", e.success_rate * 100.0),
            ms(e.p50_ms),
            ms(e.p99_ms),
        ]);
    }
    rows
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn now_secs() -> u64 {
    coremesh_control::unix_secs(SystemTime::now())
}

/// `250ms`, `1.5s`, `3m`.
fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => human(ms / 1000),
    }
}

/// Streams a tap until interrupted (or control ends it: exit 2).
fn tap(
    api: &Api,
    service: &str,
    path: Option<&str>,
    max_rps: u32,
    output: Option<&str>,
) -> Result<(), Fail> {
    use coremesh_api::http::{TapEvent, TapStatus};
    use std::io::Write;
    let json = match output {
        None => false,
        Some("json") => true,
        Some(other) => return Err(Fail(1, format!("-o {other:?}: only json is supported"))),
    };
    let mut url = format!("/v1/tap/{}?max_rps={max_rps}", encode_query(service));
    if let Some(p) = path {
        url.push_str(&format!("&path={}", encode_query(p)));
    }
    let mut last: Option<TapStatus> = None;
    let mut bad: Option<String> = None;
    let stdout = std::io::stdout();
    let answer = api.client.stream_lines(&url, |line| {
        if line.is_empty() {
            return true;
        }
        let event: TapEvent = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                bad = Some(format!("unexpected line from control: {e}"));
                return false;
            }
        };
        let mut out = stdout.lock();
        let written = match event {
            TapEvent::Request(r) if json => serde_json::to_string(&r)
                .map_err(std::io::Error::other)
                .and_then(|s| writeln!(out, "{s}")),
            TapEvent::Request(r) => writeln!(out, "{}", tap_line(&r)),
            TapEvent::Status(s) => {
                tap_status(last.as_ref(), &s, path, max_rps);
                last = Some(s);
                Ok(())
            }
        };
        // stdout closed (`| head`): stop, quietly.
        written.and_then(|()| out.flush()).is_ok()
    })?;
    if let Some(r) = answer {
        if r.status == 401 {
            return Err(Fail(
                1,
                "control refused the operator credential (401); check --credential / --data-dir"
                    .into(),
            ));
        }
        let msg = serde_json::from_slice::<ErrorBody>(&r.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
        return Err(Fail(1, msg));
    }
    if let Some(msg) = bad {
        return Err(Fail(2, msg));
    }
    if std::io::stdout().flush().is_err() {
        return Ok(());
    }
    Err(Fail(2, "control ended the tap (did it restart?)".into()))
}

/// One request of a tap, on one line: time (UTC), direction, node,
/// caller, method, authority, path, status, latency, trace id.
fn tap_line(r: &coremesh_api::http::TapRequest) -> String {
    let secs = r.at_ms / 1000;
    format!(
        "{}.{:03}  {:<8}  node={}  from={}  {} {} {} -> {}  {}  trace={}",
        &utc(secs)[11..],
        r.at_ms % 1000,
        r.direction,
        printable(&r.node),
        r.caller.as_deref().map_or("-".into(), printable),
        printable(&r.method),
        printable(&r.authority),
        printable(&r.path),
        if r.status == 0 {
            "no response".to_string()
        } else {
            r.status.to_string()
        },
        human_us(r.latency_us),
        r.trace_id.as_deref().map_or("-".into(), printable),
    )
}

/// What changed in a tap's status, on stderr.
fn tap_status(
    last: Option<&coremesh_api::http::TapStatus>,
    s: &coremesh_api::http::TapStatus,
    path: Option<&str>,
    max_rps: u32,
) {
    if last.is_none_or(|l| l.proxies != s.proxies) {
        eprintln!(
            "tapping {} proxies of {}{} (at most {max_rps} requests/s); Ctrl-C to stop",
            s.proxies,
            s.service,
            path.map(|p| format!(", paths under {p}"))
                .unwrap_or_default()
        );
    }
    if !s.untapped.is_empty() && last.is_none_or(|l| l.untapped != s.untapped) {
        eprintln!(
            "not tapped (proxies too old for tap; upgrade them): {}",
            s.untapped.join(", ")
        );
    }
    if s.dropped > last.map_or(0, |l| l.dropped) {
        eprintln!(
            "{} requests left out so far (over --max-rps, or queues full)",
            s.dropped
        );
    }
}

/// Request bytes shown on a terminal: control characters escaped.
fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.to_string()
    }
}

/// `850us`, `12.3ms`, `2.1s`.
fn human_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1000..=999_999 => format!("{:.1}ms", us as f64 / 1000.0),
        _ => format!("{:.1}s", us as f64 / 1e6),
    }
}

/// Percent-encodes a query value (all but unreserved characters and `/`).
fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `45s`, `3m`, `2h5m`, `3d4h`.
fn human(secs: u64) -> String {
    let d = Duration::from_secs(secs).as_secs();
    match d {
        0..=59 => format!("{d}s"),
        60..=3599 => format!("{}m", d / 60),
        3600..=86_399 => format!("{}h{}m", d / 3600, d % 3600 / 60),
        _ => format!("{}d{}h", d / 86_400, d % 86_400 / 3600),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC), without a date crate.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn api_takes_a_list_comma_separated_or_repeated() {
        let apis = |args: &[&str]| {
            let mut argv = vec!["meshctl"];
            argv.extend_from_slice(args);
            argv.push("status");
            Cli::try_parse_from(argv).map(|c| c.api)
        };
        assert_eq!(
            apis(&["--api", "https://a:1,https://b:2"]).ok(),
            Some(vec!["https://a:1".to_string(), "https://b:2".to_string()])
        );
        assert_eq!(
            apis(&["--api", "https://a:1", "--api", "https://b:2,https://c:3"]).ok(),
            Some(vec![
                "https://a:1".to_string(),
                "https://b:2".to_string(),
                "https://c:3".to_string()
            ])
        );
    }

    fn proxy(node: &str, skew: Option<i64>) -> ProxyStatus {
        ProxyStatus {
            service: "api".into(),
            node: node.into(),
            address: None,
            connected: true,
            sent_version: Some(5),
            applied_version: Some(5),
            applied_config_version: Some(3),
            nack: None,
            last_heartbeat: Some(1_000),
            healthy: Some(true),
            cert_expiry: Some(1_000_000),
            last_seen: None,
            problem: None,
            held_running: None,
            applied_at: Some(1_000),
            clock_skew_ms: skew,
        }
    }

    #[test]
    fn check_flags_clock_skew_with_a_fix() {
        let ca = coremesh_api::http::CaStatus {
            trust_domain: "mesh.local".into(),
            fingerprint: "ab".into(),
            not_after: 100_000_000,
            now: 1_000,
        };
        let ps = [
            proxy("in-step", Some(-40)),
            proxy("ahead", Some(2_500)),
            proxy("behind", Some(-90_000)),
            proxy("old", None),
        ];
        let f = findings(
            &ca,
            &ps,
            &[],
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        let fails: Vec<&str> = f
            .iter()
            .filter(|f| !f.ok)
            .map(|f| f.what.as_str())
            .collect();
        assert_eq!(
            fails,
            [
                "proxy api on ahead: its clock is 2.5s ahead of control's",
                "proxy api on behind: its clock is 1m behind control's"
            ]
        );
        assert!(f
            .iter()
            .filter(|f| !f.ok)
            .all(|f| f.fix.contains("timedatectl")));
        assert!(f
            .iter()
            .any(|f| f.ok && f.what.contains("on old: clock skew unknown")));
        // All in step: one summary line.
        let f = findings(
            &ca,
            &ps[..1],
            &[],
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        assert!(
            f.iter().any(|f| f.ok
                && f.what == "clocks of 1 proxies within 1.0s of control's (largest skew 40ms)"),
            "{:?}",
            f.iter().map(|f| &f.what).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_tapped_request_on_one_line() {
        let r = coremesh_api::http::TapRequest {
            at_ms: 1_700_000_000_123,
            node: "host-1".into(),
            direction: "inbound".into(),
            caller: Some("spiffe://mesh.local/service/web".into()),
            service: "api".into(),
            method: "GET".into(),
            authority: "api".into(),
            path: "/a\u{1b}[2Jb".into(),
            status: 200,
            latency_us: 1_250,
            trace_id: None,
        };
        assert_eq!(
            tap_line(&r),
            "22:13:20.123  inbound   node=host-1  from=spiffe://mesh.local/service/web  GET api /a\\u{1b}[2Jb -> 200  1.2ms  trace=-"
        );
    }

    #[test]
    fn top_table_rows() {
        let v = EdgesView {
            window: "10s".into(),
            generated_at_ms: 0,
            edges: vec![coremesh_api::http::EdgeView {
                source: "web".into(),
                destination: "api".into(),
                subset: "version=v1".into(),
                protocol: "http".into(),
                rps: 12.5,
                success_rate: 0.998,
                p50_ms: 1.2,
                p95_ms: 3.4,
                p99_ms: 15.0,
                requests: 125,
                failures: 0,
            }],
        };
        let rows = top_rows(&v);
        assert_eq!(rows[0][0], "SOURCE");
        assert_eq!(
            rows[1],
            [
                "web",
                "api",
                "version=v1",
                "http",
                "12.5",
                "99.80%",
                "1.20ms",
                "15ms"
            ]
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
    }
}
