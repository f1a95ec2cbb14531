//! [`FileConfig`] → [`Config`]: defaults, types, and every check that needs more
//! than one key. Each check names its section and key through [`At`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::affinity::format_cpu_list;
use super::file::{
    AccessLogFile, ControlFile, FileConfig, H2LimitsFile, HealthFile, InboundFile, LimitsFile,
    OutboundFile, ProxyFile, ServiceFile, TimeoutsFile, TlsFile, UpstreamFile,
};
use super::target::{parse_target, Target};
use super::unix;
use super::{
    duration, AccessLogConfig, AccessLogFormat, AppAddr, AppProtocol, Config, ConfigError,
    ControlConfig, H2Limits, HealthConfig, HealthKind, InboundConfig, Limits, ListenAddr,
    OutboundConfig, ProxyConfig, ServiceConfig, TcpUpstreamConfig, Timeouts, TlsConfig, UnixListen,
    UpstreamConfig,
};

type Result<T> = std::result::Result<T, ConfigError>;

/// Shards are threads on one host; more than this is a typo, not a machine.
const CORES: RangeInclusive<usize> = 1..=256;
const MAX_HEAD_BYTES: RangeInclusive<usize> = 1024..=1_048_576;
/// A pooled buffer's size (`shard::buf::BUF_SIZE`; shard/budget's tests
/// check they agree, config does not import the shard).
pub(crate) const POOLED_BUF: usize = 16_384;
const MIN_REQUEST_LINE: usize = 256;
const MAX_HEADERS: RangeInclusive<usize> = 1..=512;
/// Upper bound for every timeout: anything longer is a unit mistake.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest service name: one DNS label.
const MAX_NAME_LEN: usize = 63;

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_INBOUND_LISTEN: &str = "127.0.0.1:4143";
const DEFAULT_OUTBOUND_LISTEN: &str = "127.0.0.1:4140";
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Validates `file` and fills in defaults. `allowed_cpus` is only called when
/// `[proxy] cpus` is given (tests pass a fixed set).
pub(crate) fn resolve(
    path: &Path,
    file: FileConfig,
    allowed_cpus: impl FnOnce() -> io::Result<Vec<usize>>,
    hostname: impl FnOnce() -> String,
) -> Result<Config> {
    let proxy = file
        .proxy
        .ok_or_else(|| At::new(path, "[proxy]").err("", "this section is required"))?;
    let mut proxy = resolve_proxy(At::new(path, "[proxy]"), proxy, allowed_cpus)?;
    let access_log = resolve_access_log(
        At::new(path, "[access_log]"),
        file.access_log.unwrap_or_default(),
        &mut proxy,
    )?;
    let inbound = file
        .inbound
        .map(|f| resolve_inbound(At::new(path, "[inbound]"), f))
        .transpose()?;
    let outbound = file
        .outbound
        .map(|f| resolve_outbound(At::new(path, "[outbound]"), f))
        .transpose()?;
    if inbound.is_none() && outbound.is_none() {
        return Err(
            At::new(path, "").err("", "at least one of [inbound] and [outbound] is required")
        );
    }
    check_listeners_distinct(path, &proxy, inbound.as_ref(), outbound.as_ref())?;
    let services = resolve_services(path, file.services)?;
    let timeouts = resolve_timeouts(
        At::new(path, "[timeouts]"),
        file.timeouts.unwrap_or_default(),
    )?;
    let limits = resolve_limits(At::new(path, "[limits]"), file.limits.unwrap_or_default())?;
    let upstream = resolve_upstream(
        At::new(path, "[upstream]"),
        file.upstream.unwrap_or_default(),
    )?;
    let control = file
        .control
        .map(|f| resolve_control(path, f, inbound.as_ref(), hostname))
        .transpose()?;
    let tls = file.tls.map(|f| resolve_tls(path, f)).transpose()?;
    let mut resilience = Vec::with_capacity(file.resilience.len());
    for (i, r) in file.resilience.into_iter().enumerate() {
        coremesh_api::resource::validate_resilience(&r, "").map_err(|e| {
            ConfigError::invalid(path, &format!("[[resilience]] #{}", i + 1), "", e)
        })?;
        let known = |name: &str| {
            name.eq_ignore_ascii_case(&proxy.service)
                || services.iter().any(|s| s.name.eq_ignore_ascii_case(name))
        };
        let here = At::new(path, &format!("[[resilience]] #{}", i + 1));
        if !known(&r.service) {
            return Err(here.err(
                "service",
                format!(
                    "\"{}\" is neither [proxy] service nor one of the [[services]]",
                    r.service
                ),
            ));
        }
        if let Some(m) = &r.mirror {
            if !services
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(&m.service))
            {
                return Err(here.err(
                    "mirror.service",
                    format!("\"{}\" is not one of the [[services]]", m.service),
                ));
            }
        }
        if resilience
            .iter()
            .any(|x: &coremesh_api::resource::Resilience| {
                x.service.eq_ignore_ascii_case(&r.service)
            })
        {
            return Err(here.err(
                "service",
                format!("\"{}\" has two [[resilience]] blocks", r.service),
            ));
        }
        resilience.push(r);
    }
    let intercept = file
        .intercept
        .map(|f| super::intercept::resolve(path, f, &inbound, &outbound))
        .transpose()?;
    if tls.is_some() && control.is_some() {
        return Err(At::new(path, "[tls]").err(
            "",
            "not used with [control]: control issues this proxy's certificate; remove one",
        ));
    }
    Ok(Config {
        source: path.to_owned(),
        proxy,
        inbound,
        outbound,
        services,
        timeouts,
        limits,
        upstream,
        control,
        tls,
        resilience,
        intercept,
        access_log,
    })
}

/// `[access_log]`; its `path` is kept in `[proxy] access_log` (the older
/// spelling of the same key, still accepted), so one of the two may be set.
fn resolve_access_log(
    at: At<'_>,
    f: AccessLogFile,
    proxy: &mut ProxyConfig,
) -> Result<AccessLogConfig> {
    let d = AccessLogConfig::default();
    if let Some(p) = f.path {
        if p.is_empty() {
            return Err(at.err("path", "is empty; remove the key to disable the access log"));
        }
        if proxy.access_log.is_some() {
            return Err(at.err(
                "path",
                "the file is also set by [proxy] access_log; keep one of the two",
            ));
        }
        proxy.access_log = Some(PathBuf::from(p));
    }
    let format = match f.format.as_deref() {
        None => d.format,
        Some("json") => AccessLogFormat::Json,
        Some("text") => AccessLogFormat::Text,
        Some(other) => {
            return Err(at.err(
                "format",
                format!("\"{other}\" is not one of \"json\", \"text\""),
            ))
        }
    };
    let sample = match f.sample {
        None => d.sample,
        Some(v) => {
            let n = match v {
                toml::Value::Float(x) => x,
                toml::Value::Integer(i) => i as f64,
                other => {
                    return Err(at.err("sample", format!("{other} is not a number from 0.0 to 1.0")))
                }
            };
            if !(0.0..=1.0).contains(&n) {
                return Err(at.err("sample", format!("{n} is not within 0.0..=1.0")));
            }
            n
        }
    };
    Ok(AccessLogConfig {
        enabled: f.enabled.unwrap_or(d.enabled),
        format,
        sample,
    })
}

fn resolve_proxy(
    at: At<'_>,
    f: ProxyFile,
    allowed_cpus: impl FnOnce() -> io::Result<Vec<usize>>,
) -> Result<ProxyConfig> {
    let service = at.name("service", at.required("service", f.service)?)?;
    let cores = f.cores.map(|n| at.int_in("cores", n, CORES)).transpose()?;
    let cpus = f
        .cpus
        .map(|list| resolve_cpus(&at, &list, allowed_cpus))
        .transpose()?;
    let cores = match (cores, &cpus) {
        (Some(n), Some(cpus)) if n != cpus.len() => {
            return Err(at.err(
                "cores",
                format!("{n} does not match cpus, which lists {} CPUs", cpus.len()),
            ));
        }
        (Some(n), _) => n,
        (None, Some(cpus)) if !CORES.contains(&cpus.len()) => {
            return Err(at.err(
                "cpus",
                format!(
                    "lists {} CPUs; at most {} shards are supported",
                    cpus.len(),
                    CORES.end()
                ),
            ));
        }
        (None, Some(cpus)) => cpus.len(),
        (None, None) => 1,
    };
    let admin = at.socket_addr("admin", f.admin.as_deref().unwrap_or(DEFAULT_ADMIN))?;
    let labels = f.labels.unwrap_or_default();
    check_labels(&at, &labels)?;
    let drain_timeout = at.duration(
        "drain_timeout",
        f.drain_timeout.as_deref(),
        DEFAULT_DRAIN_TIMEOUT,
        false,
    )?;
    let access_log = match f.access_log {
        Some(p) if p.is_empty() => {
            return Err(at.err(
                "access_log",
                "is empty; remove the key to disable the access log",
            ))
        }
        p => p.map(PathBuf::from),
    };
    let upgrade_socket = match f.upgrade_socket {
        Some(p) if p.is_empty() => {
            return Err(at.err(
                "upgrade_socket",
                "is empty; remove the key to disable upgrades in place",
            ))
        }
        p => p.map(PathBuf::from),
    };
    Ok(ProxyConfig {
        service,
        cores,
        cpus,
        admin,
        labels,
        drain_timeout,
        access_log,
        upgrade_socket,
    })
}

fn resolve_cpus(
    at: &At<'_>,
    list: &[i64],
    allowed_cpus: impl FnOnce() -> io::Result<Vec<usize>>,
) -> Result<Vec<usize>> {
    if list.is_empty() {
        return Err(at.err("cpus", "is empty; remove the key to leave shards unpinned"));
    }
    let mut cpus = Vec::with_capacity(list.len());
    for &n in list {
        let cpu =
            usize::try_from(n).map_err(|_| at.err("cpus", format!("{n} is not a CPU number")))?;
        if cpus.contains(&cpu) {
            return Err(at.err("cpus", format!("CPU {cpu} is listed twice")));
        }
        cpus.push(cpu);
    }
    let allowed = allowed_cpus().map_err(|e| {
        at.err(
            "cpus",
            format!("cannot read this process's allowed CPU set: {e}"),
        )
    })?;
    if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
        return Err(at.err(
            "cpus",
            format!(
                "CPU {cpu} is not in this process's allowed CPU set ({})",
                format_cpu_list(&allowed)
            ),
        ));
    }
    Ok(cpus)
}

fn check_labels(at: &At<'_>, labels: &BTreeMap<String, String>) -> Result<()> {
    for (key, value) in labels {
        if key.is_empty() {
            return Err(at.err("labels", "a label key is empty"));
        }
        if value.is_empty() {
            return Err(at.err(&format!("labels.{key}"), "is empty"));
        }
    }
    Ok(())
}

fn resolve_inbound(at: At<'_>, f: InboundFile) -> Result<InboundConfig> {
    let listen = at.socket_addr(
        "listen",
        f.listen.as_deref().unwrap_or(DEFAULT_INBOUND_LISTEN),
    )?;
    let app = at.app_addr("app", &at.required("app", f.app)?)?;
    if app.tcp() == Some(listen) {
        // Forwarding to ourselves would loop until the connection limit.
        return Err(at.err(
            "app",
            format!("\"{app}\" is the inbound listen address itself"),
        ));
    }
    let identity_header = f
        .identity_header
        .map(|h| resolve_identity_header(&at, h))
        .transpose()?;
    let tcp = match f.protocol.as_deref() {
        None | Some("http") => false,
        Some("tcp") => true,
        Some(other) => {
            return Err(at.err(
                "protocol",
                format!("\"{}\" is not \"http\" or \"tcp\"", other.escape_debug()),
            ))
        }
    };
    if tcp && identity_header.is_some() {
        return Err(at.err(
            "identity_header",
            "a TCP service's stream has no headers (protocol = \"tcp\")",
        ));
    }
    let app_protocol = app_protocol(&at, "app_protocol", f.app_protocol.as_deref())?;
    if tcp && app_protocol != AppProtocol::Auto {
        return Err(at.err(
            "app_protocol",
            "a TCP service's stream is relayed as is (protocol = \"tcp\")",
        ));
    }
    Ok(InboundConfig {
        tcp,
        app_protocol,
        listen,
        app,
        identity_header,
    })
}

/// A header name the proxy sets itself: a token (RFC 9110 5.6.2), stored
/// lowercase, and not one whose removal from incoming requests would change
/// how they are framed, routed or carried hop to hop.
fn resolve_identity_header(at: &At<'_>, h: String) -> Result<String> {
    // The fields the HTTP/1 codec interprets (http1/fields.rs `classify`),
    // the hop-by-hop fields of RFC 9110 7.6.1 and RFC 2616 13.5.1, and the
    // proxy's own error header.
    const RESERVED: [&str; 13] = [
        "host",
        "content-length",
        "transfer-encoding",
        "expect",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "coremesh-error",
    ];
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if h.is_empty() || !h.bytes().all(tchar) {
        return Err(at.err(
            "identity_header",
            format!(
                "\"{}\" is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
                h.escape_debug()
            ),
        ));
    }
    let h = h.to_ascii_lowercase();
    if RESERVED.contains(&h.as_str()) {
        return Err(at.err(
            "identity_header",
            format!("\"{h}\" is a framing or hop-by-hop header, which the proxy must not replace"),
        ));
    }
    Ok(h)
}

/// The three files are read (and their certificates checked) at start and on
/// every reload, not here: a reload with a bad file keeps the previous
/// identity. Relative paths are taken from the directory of `path`, where
/// the certificate usually sits next to `proxy.toml`.
fn resolve_tls(path: &Path, f: TlsFile) -> Result<TlsConfig> {
    let at = At::new(path, "[tls]");
    let file = |key: &str, v: Option<String>| -> Result<PathBuf> {
        match at.required(key, v)? {
            p if p.is_empty() => Err(at.err(key, "is empty")),
            p => Ok(beside(path, &p)),
        }
    };
    Ok(TlsConfig {
        cert: file("cert", f.cert)?,
        key: file("key", f.key)?,
        ca: file("ca", f.ca)?,
    })
}

/// `p` as is when absolute, else joined to the directory of the config file
/// `config` (as given: a relative `config` gives a path relative to the
/// working directory, which the proxy never changes).
fn beside(config: &Path, p: &str) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join(p)
}

fn resolve_outbound(at: At<'_>, f: OutboundFile) -> Result<OutboundConfig> {
    let listen = outbound_listen(&at, &f)?;
    let mut tcp: Vec<TcpUpstreamConfig> = Vec::with_capacity(f.tcp.len());
    for (i, t) in f.tcp.into_iter().enumerate() {
        let at = At::new(at.path, &format!("[[outbound.tcp]] #{}", i + 1));
        let service = at.name("service", at.required("service", t.service)?)?;
        let addr = at.socket_addr("listen", &at.required("listen", t.listen)?)?;
        if tcp.iter().any(|x| x.service == service) {
            return Err(at.err("service", format!("\"{service}\" is listed twice")));
        }
        tcp.push(TcpUpstreamConfig {
            service,
            listen: addr,
        });
    }
    Ok(OutboundConfig {
        listen,
        passthrough: f.passthrough.unwrap_or(false),
        tcp,
    })
}

/// `[outbound] listen`, with `listen_mode`, `listen_owner` and
/// `listen_group`, which only a `unix:` socket file has.
fn outbound_listen(at: &At<'_>, f: &OutboundFile) -> Result<ListenAddr> {
    let text = f.listen.as_deref().unwrap_or(DEFAULT_OUTBOUND_LISTEN);
    let path = match unix::parse_path(text) {
        None => {
            let file_keys = [
                ("listen_mode", &f.listen_mode),
                ("listen_owner", &f.listen_owner),
                ("listen_group", &f.listen_group),
            ];
            if let Some((key, _)) = file_keys.iter().find(|(_, v)| v.is_some()) {
                return Err(at.err(
                    key,
                    format!("applies to a socket file only; listen \"{text}\" is a TCP address (write listen = \"unix:/PATH\")"),
                ));
            }
            return Ok(ListenAddr::Tcp(at.socket_addr("listen", text)?));
        }
        Some(p) => p.map_err(|e| at.err("listen", e))?,
    };
    let mode = f
        .listen_mode
        .as_ref()
        .map(unix::parse_mode)
        .transpose()
        .map_err(|e| at.err("listen_mode", e))?;
    let owner = f
        .listen_owner
        .as_ref()
        .map(|v| unix::parse_id(v, unix::Ids::User))
        .transpose()
        .map_err(|e| at.err("listen_owner", e))?;
    let group = f
        .listen_group
        .as_ref()
        .map(|v| unix::parse_id(v, unix::Ids::Group))
        .transpose()
        .map_err(|e| at.err("listen_group", e))?;
    Ok(ListenAddr::Unix(UnixListen {
        path,
        mode,
        owner,
        group,
    }))
}

/// Two listeners on one port collide when their IPs are equal or either is the
/// wildcard (Linux refuses the second bind). Port 0 asks the OS for a free port,
/// so it never collides.
fn check_listeners_distinct(
    path: &Path,
    proxy: &ProxyConfig,
    inbound: Option<&InboundConfig>,
    outbound: Option<&OutboundConfig>,
) -> Result<()> {
    // (place, key, address): the place names the [[outbound.tcp]] entry.
    let mut listeners: Vec<(String, &str, SocketAddr)> =
        vec![("[proxy]".to_owned(), "admin", proxy.admin)];
    if let Some(i) = inbound {
        listeners.push(("[inbound]".to_owned(), "listen", i.listen));
    }
    if let Some(o) = outbound {
        if let Some(listen) = o.listen.tcp() {
            listeners.push(("[outbound]".to_owned(), "listen", listen));
        }
        for (n, t) in o.tcp.iter().enumerate() {
            let place = format!("[[outbound.tcp]] #{}", n + 1);
            listeners.push((place, "listen", t.listen));
        }
    }
    for (i, (first, first_key, a)) in listeners.iter().enumerate() {
        for (second, second_key, b) in &listeners[i + 1..] {
            let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() != 0 && a.port() == b.port() && overlap {
                return Err(At::new(path, second).err(
                    second_key,
                    format!("\"{b}\" collides with {first} {first_key} \"{a}\""),
                ));
            }
        }
    }
    Ok(())
}

fn resolve_services(path: &Path, files: Vec<ServiceFile>) -> Result<Vec<ServiceConfig>> {
    let mut services: Vec<ServiceConfig> = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        let at = At::new(path, &format!("[[services]] #{}", i + 1));
        let name = at.name("name", at.required("name", f.name)?)?;
        if services.iter().any(|s| s.name == name) {
            return Err(at.err("name", format!("\"{name}\" is defined twice")));
        }
        let mut endpoints = Vec::with_capacity(f.endpoints.len());
        let mut names = Vec::new();
        for text in &f.endpoints {
            let twice = || at.err("endpoints", format!("\"{text}\" is listed twice"));
            match at.target("endpoints", text)? {
                Target::Addr(a) if endpoints.contains(&a) => return Err(twice()),
                Target::Addr(a) => endpoints.push(a),
                Target::Name(n) if names.contains(&n) => return Err(twice()),
                Target::Name(n) => names.push(n),
            }
        }
        let protocol = app_protocol(&at, "protocol", f.protocol.as_deref())?;
        services.push(ServiceConfig {
            name,
            endpoints,
            names,
            protocol,
        });
    }
    Ok(services)
}

/// What an app or an endpoint speaks: `"auto"` (the client's protocol),
/// `"http1"` or `"h2c"`.
fn app_protocol(at: &At<'_>, key: &str, v: Option<&str>) -> Result<AppProtocol> {
    match v {
        None | Some("auto") => Ok(AppProtocol::Auto),
        Some("http1") => Ok(AppProtocol::Http1),
        Some("h2c") => Ok(AppProtocol::H2c),
        Some(other) => Err(at.err(
            key,
            format!(
                "\"{}\" is not \"auto\" (the client's protocol), \"http1\" or \"h2c\"",
                other.escape_debug()
            ),
        )),
    }
}

fn resolve_timeouts(at: At<'_>, f: TimeoutsFile) -> Result<Timeouts> {
    let d = Timeouts::default();
    Ok(Timeouts {
        connect: at.duration("connect", f.connect.as_deref(), d.connect, true)?,
        head_read: at.duration("head_read", f.head_read.as_deref(), d.head_read, true)?,
        keepalive_idle: at.duration(
            "keepalive_idle",
            f.keepalive_idle.as_deref(),
            d.keepalive_idle,
            true,
        )?,
        request: at.duration("request", f.request.as_deref(), d.request, true)?,
        idle: at.duration("idle", f.idle.as_deref(), d.idle, true)?,
        total: at.duration("total", f.total.as_deref(), d.total, true)?,
    })
}

fn resolve_limits(at: At<'_>, f: LimitsFile) -> Result<Limits> {
    let d = Limits::default();
    let max_head_bytes = f.max_head_bytes.map_or(Ok(d.max_head_bytes), |n| {
        at.int_in("max_head_bytes", n, MAX_HEAD_BYTES)
    })?;
    let max_request_line = match f.max_request_line {
        Some(n) => at.int_in("max_request_line", n, MIN_REQUEST_LINE..=max_head_bytes)?,
        None if d.max_request_line > max_head_bytes => {
            // Only reachable with a small max_head_bytes: say which key to change.
            return Err(at.err(
                "max_request_line",
                format!(
                    "default {} exceeds max_head_bytes {max_head_bytes}; set it to at most that",
                    d.max_request_line
                ),
            ));
        }
        None => d.max_request_line,
    };
    let max_headers = f.max_headers.map_or(Ok(d.max_headers), |n| {
        at.int_in("max_headers", n, MAX_HEADERS)
    })?;
    let buffer_budget = f.buffer_budget.map_or(Ok(d.buffer_budget), |n| {
        at.int_in("buffer_budget", n, 65_536..=1 << 40)
    })?;
    // A request charges its head buffer and its response head's buffer
    // when it is admitted (shard/budget.rs): a connection's budget must
    // hold the largest head beside a pooled buffer.
    let min_conn = max_head_bytes + POOLED_BUF;
    let connection_buffer_budget = match f.connection_buffer_budget {
        Some(n) => at.int_in("connection_buffer_budget", n, min_conn..=buffer_budget)?,
        None => d
            .connection_buffer_budget
            .clamp(min_conn, buffer_budget.max(min_conn)),
    };
    if connection_buffer_budget > buffer_budget {
        return Err(at.err(
            "buffer_budget",
            format!(
                "{buffer_budget} is smaller than one connection's budget                  ({connection_buffer_budget}: max_head_bytes + 16384 at least); raise it"
            ),
        ));
    }
    let h2 = resolve_h2_limits(At::new(at.path, "[limits.h2]"), f.h2.unwrap_or_default())?;
    Ok(Limits {
        max_head_bytes,
        max_request_line,
        max_headers,
        buffer_budget,
        connection_buffer_budget,
        h2,
    })
}

/// The largest HTTP/2 flow-control window (RFC 9113, section 6.9.1).
const MAX_H2_WINDOW: usize = (1 << 31) - 1;

fn resolve_h2_limits(at: At<'_>, f: H2LimitsFile) -> Result<H2Limits> {
    let d = H2Limits::default();
    let int = |key: &str, v: Option<i64>, default: usize, range: RangeInclusive<usize>| {
        v.map_or(Ok(default), |n| at.int_in(key, n, range))
    };
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let stream_window = int(
        "stream_window",
        f.stream_window,
        d.stream_window as usize,
        16_384..=16_777_216,
    )?;
    let window = |key: &str, v: Option<i64>, default: u32| -> Result<u32> {
        match v {
            Some(n) => at.int_in(key, n, stream_window..=MAX_H2_WINDOW).map(u32_of),
            None if (default as usize) < stream_window => Err(at.err(
                key,
                format!(
                    "default {default} is smaller than stream_window {stream_window}; \
                     set it to at least that"
                ),
            )),
            None => Ok(default),
        }
    };
    let rate = |key: &str, v: Option<i64>, default: u32| {
        int(key, v, default as usize, 1..=100_000).map(u32_of)
    };
    Ok(H2Limits {
        max_concurrent_streams: u32_of(int(
            "max_concurrent_streams",
            f.max_concurrent_streams,
            d.max_concurrent_streams as usize,
            1..=65_535,
        )?),
        stream_window: u32_of(stream_window),
        connection_window: window(
            "connection_window",
            f.connection_window,
            d.connection_window,
        )?,
        upstream_connection_window: window(
            "upstream_connection_window",
            f.upstream_connection_window,
            d.upstream_connection_window,
        )?,
        max_pending_resets: int(
            "max_pending_resets",
            f.max_pending_resets,
            d.max_pending_resets,
            1..=10_000,
        )?,
        max_local_resets: int(
            "max_local_resets",
            f.max_local_resets,
            d.max_local_resets,
            1..=100_000,
        )?,
        max_settings_per_second: rate(
            "max_settings_per_second",
            f.max_settings_per_second,
            d.max_settings_per_second,
        )?,
        max_pings_per_second: rate(
            "max_pings_per_second",
            f.max_pings_per_second,
            d.max_pings_per_second,
        )?,
        max_empty_frames_per_second: rate(
            "max_empty_frames_per_second",
            f.max_empty_frames_per_second,
            d.max_empty_frames_per_second,
        )?,
    })
}

fn resolve_upstream(at: At<'_>, f: UpstreamFile) -> Result<UpstreamConfig> {
    let d = UpstreamConfig::default();
    Ok(UpstreamConfig {
        pool_idle_timeout: at.duration(
            "pool_idle_timeout",
            f.pool_idle_timeout.as_deref(),
            d.pool_idle_timeout,
            true,
        )?,
        max_idle_per_endpoint: f
            .max_idle_per_endpoint
            .map_or(Ok(d.max_idle_per_endpoint), |n| {
                at.int_in("max_idle_per_endpoint", n, 0..=usize::MAX)
            })?,
        multiplex: f.multiplex.unwrap_or(d.multiplex),
    })
}

fn resolve_control(
    path: &Path,
    f: ControlFile,
    inbound: Option<&InboundConfig>,
    hostname: impl FnOnce() -> String,
) -> Result<ControlConfig> {
    let at = At::new(path, "[control]");
    let addresses = resolve_control_addresses(&at, at.required("address", f.address)?)?;
    let token_file = match f.token_file {
        Some(p) if p.is_empty() => return Err(at.err("token_file", "is empty")),
        p => p.map(PathBuf::from),
    };
    let state_dir = match at.required("state_dir", f.state_dir)? {
        p if p.is_empty() => return Err(at.err("state_dir", "is empty")),
        p => PathBuf::from(p),
    };
    let node = match f.node {
        Some(n) => {
            if n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_control() || c == ' ') {
                return Err(at.err(
                    "node",
                    format!(
                        "\"{}\" is not a node name (1 to 253 characters, no spaces)",
                        n.escape_debug()
                    ),
                ));
            }
            n
        }
        None => hostname(),
    };
    let advertise = match f.advertise {
        Some(text) => {
            if inbound.is_none() {
                return Err(at.err(
                    "advertise",
                    "needs an [inbound] section: it is the address peers reach [inbound] listen at",
                ));
            }
            let a = at.connect_addr("advertise", &text)?;
            if a.ip().is_unspecified() {
                return Err(at.err(
                    "advertise",
                    format!("\"{text}\" is a wildcard address, which peers cannot connect to"),
                ));
            }
            Some(a)
        }
        None => None,
    };
    let calls = match f.calls {
        Some(list) => {
            let mut calls: Vec<String> = Vec::with_capacity(list.len());
            for name in list {
                let name = at.name("calls", name)?;
                if calls.contains(&name) {
                    return Err(at.err("calls", format!("\"{name}\" is listed twice")));
                }
                calls.push(name);
            }
            Some(calls)
        }
        None => None,
    };
    let health = match f.health {
        Some(_) if inbound.is_none() => {
            return Err(At::new(path, "[control.health]").err(
                "",
                "needs an [inbound] section: the check connects to [inbound] app",
            ));
        }
        Some(h) => resolve_health(At::new(path, "[control.health]"), h)?,
        None => HealthConfig::default(),
    };
    Ok(ControlConfig {
        addresses,
        token_file,
        state_dir,
        node,
        advertise,
        calls,
        allow_store_change: f.allow_store_change.unwrap_or(false),
        health,
    })
}

/// `address = "HOST:port"` or `address = ["HOST:port", ...]` (HOST: an IP
/// or a name): non-empty, distinct.
fn resolve_control_addresses(at: &At<'_>, value: toml::Value) -> Result<Vec<Target>> {
    const SHAPE: &str = "must be an address string (\"127.0.0.1:7443\") or a list of them";
    let texts = match value {
        toml::Value::String(s) => vec![s],
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(at.err("address", format!("{other} {SHAPE}"))),
            })
            .collect::<Result<_>>()?,
        other => return Err(at.err("address", format!("{other} {SHAPE}"))),
    };
    if texts.is_empty() {
        return Err(at.err("address", "is an empty list; name at least one address"));
    }
    let mut addresses = Vec::with_capacity(texts.len());
    for text in &texts {
        let a = at.target("address", text)?;
        if addresses.contains(&a) {
            return Err(at.err("address", format!("\"{text}\" is listed twice")));
        }
        addresses.push(a);
    }
    Ok(addresses)
}

fn resolve_health(at: At<'_>, f: HealthFile) -> Result<HealthConfig> {
    let d = HealthConfig::default();
    let kind = match f.kind.as_deref() {
        None | Some("tcp") => HealthKind::Tcp,
        Some("http") => HealthKind::Http,
        Some("grpc") => HealthKind::Grpc,
        Some(other) => {
            return Err(at.err(
                "kind",
                format!("\"{other}\" is not a check kind (\"tcp\", \"http\" or \"grpc\")"),
            ))
        }
    };
    let grpc_service = match f.service {
        Some(s) if kind != HealthKind::Grpc => {
            return Err(at.err(
                "service",
                format!("\"{s}\" is only used with kind = \"grpc\""),
            ))
        }
        Some(s)
            if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_') =>
        {
            return Err(at.err(
                "service",
                format!(
                    "\"{}\" is not a gRPC service name (package.Service)",
                    s.escape_debug()
                ),
            ))
        }
        Some(s) => s,
        None => String::new(),
    };
    let path = match f.path {
        // A path without kind = "http" is most likely a forgotten kind: the
        // check would silently be a TCP connect.
        Some(p) if kind != HealthKind::Http => {
            return Err(at.err("path", format!("\"{p}\" is only used with kind = \"http\"")))
        }
        Some(p) => {
            // The path goes into a request line as is: no spaces or controls.
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(at.err(
                    "path",
                    format!(
                        "\"{}\" must start with '/' and contain no spaces or control characters",
                        p.escape_debug()
                    ),
                ));
            }
            p
        }
        None => d.path,
    };
    Ok(HealthConfig {
        kind,
        path,
        grpc_service,
        interval: at.duration("interval", f.interval.as_deref(), d.interval, true)?,
        timeout: at.duration("timeout", f.timeout.as_deref(), d.timeout, true)?,
    })
}

/// Where a value sits in the file: `[proxy]`, `[[services]] #2`. Its methods
/// check one value and, on failure, name this place, the key and the value.
struct At<'a> {
    path: &'a Path,
    place: String,
}

impl<'a> At<'a> {
    fn new(path: &'a Path, place: &str) -> Self {
        Self {
            path,
            place: place.to_owned(),
        }
    }

    fn err(&self, key: &str, reason: impl std::fmt::Display) -> ConfigError {
        ConfigError::invalid(self.path, &self.place, key, reason)
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| self.err(key, "is required"))
    }

    fn socket_addr(&self, key: &str, text: &str) -> Result<SocketAddr> {
        text.parse()
            .map_err(|_| self.err(key, format!("\"{text}\" is not a socket address")))
    }

    /// An address or `host:port` to connect to (see [`parse_target`]).
    fn target(&self, key: &str, text: &str) -> Result<Target> {
        parse_target(text).map_err(|e| self.err(key, format!("\"{text}\" {e}")))
    }

    /// `[inbound] app`: an address to connect to, or `unix:/PATH`.
    fn app_addr(&self, key: &str, text: &str) -> Result<AppAddr> {
        match unix::parse_path(text) {
            Some(p) => p.map(AppAddr::Unix).map_err(|e| self.err(key, e)),
            None => self.connect_addr(key, text).map(AppAddr::Tcp),
        }
    }

    /// An address to connect to: port 0 names no listener.
    fn connect_addr(&self, key: &str, text: &str) -> Result<SocketAddr> {
        let addr = self.socket_addr(key, text)?;
        if addr.port() == 0 {
            return Err(self.err(
                key,
                format!("\"{text}\" has port 0, which cannot be connected to"),
            ));
        }
        Ok(addr)
    }

    fn int_in(&self, key: &str, n: i64, range: RangeInclusive<usize>) -> Result<usize> {
        usize::try_from(n)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                self.err(
                    key,
                    format!("{n} is out of range {}..={}", range.start(), range.end()),
                )
            })
    }

    /// `text` (or `default` when absent), at most [`MAX_TIMEOUT`], and non-zero
    /// when `positive`.
    fn duration(
        &self,
        key: &str,
        text: Option<&str>,
        default: Duration,
        positive: bool,
    ) -> Result<Duration> {
        let Some(text) = text else { return Ok(default) };
        let d = duration::parse(text)
            .map_err(|reason| self.err(key, format!("\"{text}\" {reason}")))?;
        if positive && d.is_zero() {
            return Err(self.err(key, format!("\"{text}\" must be greater than 0")));
        }
        if d > MAX_TIMEOUT {
            return Err(self.err(
                key,
                format!(
                    "\"{text}\" must be at most {}",
                    duration::format(MAX_TIMEOUT)
                ),
            ));
        }
        Ok(d)
    }

    /// A service name: `[a-z0-9]([a-z0-9-.]*[a-z0-9])?`, at most 63 characters,
    /// so it can appear in a `Host:` header, a SPIFFE ID and a metric label as is.
    fn name(&self, key: &str, text: String) -> Result<String> {
        let edge_ok =
            |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let bytes = text.as_bytes();
        let valid = text.len() <= MAX_NAME_LEN
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(self.err(
                key,
                format!(
                    "\"{text}\" is not a valid name (lowercase letters, digits, '-' and '.', \
                     starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters)"
                ),
            ));
        }
        Ok(text)
    }
}
