//! What an operator sees: values parsed from whole files, and the exact one-line
//! message for each class of mistake.

mod control;
mod mtls;
mod names;
mod unix;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

const FULL: &str = r#"
[proxy]
service = "web"
cpus = [2, 3]
admin = "127.0.0.1:9000"
labels = { zone = "eu-1", team = "payments" }
drain_timeout = "30s"
access_log = "/var/log/coremesh/access.log"

[inbound]
listen = "0.0.0.0:4143"
app = "127.0.0.1:8080"

[outbound]
listen = "[::1]:4140"
passthrough = true

[[services]]
name = "api"
endpoints = ["10.0.0.1:9000", "[fd00::2]:9000"]

[[services]]
name = "billing.internal"
endpoints = []

[timeouts]
connect = "250ms"
head_read = "5s"
keepalive_idle = "2m"
request = "1h"
idle = "90s"
total = "2h"

[limits]
max_head_bytes = 16384
max_request_line = 4096
max_headers = 64

[limits.h2]
max_concurrent_streams = 100
stream_window = 65536

[upstream]
pool_idle_timeout = "45s"
max_idle_per_endpoint = 0
multiplex = true
"#;

const MINIMAL: &str = "[proxy]\nservice = \"web\"\n[outbound]\n";

/// This machine's CPUs do not matter: the tests see CPUs 0-3.
fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_cpus(Path::new("proxy.toml"), text, || Ok(vec![0, 1, 2, 3]))
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("accepted:\n{text}\n{config:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn full_example_parses_with_its_values() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.source, Path::new("proxy.toml"));
    assert_eq!(
        c.proxy,
        ProxyConfig {
            service: "web".into(),
            cores: 2,
            cpus: Some(vec![2, 3]),
            admin: addr("127.0.0.1:9000"),
            labels: [("team", "payments"), ("zone", "eu-1")]
                .map(|(k, v)| (k.into(), v.into()))
                .into(),
            drain_timeout: Duration::from_secs(30),
            access_log: Some("/var/log/coremesh/access.log".into()),
            upgrade_socket: None,
        }
    );
    assert_eq!(
        c.inbound,
        Some(InboundConfig {
            listen: addr("0.0.0.0:4143"),
            app: AppAddr::Tcp(addr("127.0.0.1:8080")),
            identity_header: None,
            tcp: false,
            app_protocol: AppProtocol::Auto,
        })
    );
    assert_eq!(
        c.outbound,
        Some(OutboundConfig {
            listen: ListenAddr::Tcp(addr("[::1]:4140")),
            passthrough: true,
            tcp: Vec::new(),
        })
    );
    assert_eq!(
        c.services,
        [
            ServiceConfig {
                name: "api".into(),
                endpoints: vec![addr("10.0.0.1:9000"), addr("[fd00::2]:9000")],
                names: vec![],
                protocol: AppProtocol::Auto,
            },
            ServiceConfig {
                name: "billing.internal".into(),
                endpoints: vec![],
                names: vec![],
                protocol: AppProtocol::Auto,
            },
        ]
    );
    assert_eq!(
        c.timeouts,
        Timeouts {
            connect: Duration::from_millis(250),
            head_read: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(120),
            request: Duration::from_secs(3600),
            idle: Duration::from_secs(90),
            total: Duration::from_secs(7200),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_head_bytes: 16384,
            max_request_line: 4096,
            max_headers: 64,
            buffer_budget: 256 * 1024 * 1024,
            connection_buffer_budget: 32 * 1024 * 1024,
            h2: H2Limits {
                max_concurrent_streams: 100,
                stream_window: 65536,
                ..H2Limits::default()
            }
        }
    );
    assert_eq!(
        c.upstream,
        UpstreamConfig {
            pool_idle_timeout: Duration::from_secs(45),
            max_idle_per_endpoint: 0,
            multiplex: true,
        }
    );
    assert_eq!(c.service("api").map(|s| s.endpoints.len()), Some(2));
    assert_eq!(c.service("nope"), None);
}

#[test]
fn defaults_fill_every_optional_key() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.proxy.service, "web");
    assert_eq!(c.proxy.cores, 1);
    assert_eq!(c.proxy.cpus, None);
    assert_eq!(c.proxy.admin, addr("127.0.0.1:9901"));
    assert!(c.proxy.labels.is_empty());
    assert_eq!(c.proxy.drain_timeout, Duration::from_secs(10));
    assert_eq!(c.proxy.access_log, None);
    assert_eq!(c.inbound, None);
    assert_eq!(
        c.outbound,
        Some(OutboundConfig {
            listen: ListenAddr::Tcp(addr("127.0.0.1:4140")),
            passthrough: false,
            tcp: Vec::new(),
        })
    );
    assert!(c.services.is_empty());
    assert_eq!(
        c.timeouts,
        Timeouts {
            connect: Duration::from_secs(1),
            head_read: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(60),
            request: Duration::from_secs(15),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(300),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_head_bytes: 65536,
            max_request_line: 8192,
            max_headers: 100,
            buffer_budget: 268435456,
            connection_buffer_budget: 33554432,
            h2: H2Limits {
                max_concurrent_streams: 256,
                stream_window: 262144,
                connection_window: 1048576,
                upstream_connection_window: 16777216,
                max_pending_resets: 32,
                max_local_resets: 256,
                max_settings_per_second: 100,
                max_pings_per_second: 100,
                max_empty_frames_per_second: 100,
            }
        }
    );
    assert_eq!(
        c.upstream,
        UpstreamConfig {
            pool_idle_timeout: Duration::from_secs(30),
            max_idle_per_endpoint: 64,
            multiplex: false,
        }
    );

    let c = parse("[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n").unwrap();
    assert_eq!(c.inbound.unwrap().listen, addr("127.0.0.1:4143"));
    assert_eq!(c.outbound, None);
    // Empty sections are fine and mean "all defaults".
    let c = parse(&format!("{MINIMAL}[timeouts]\n[limits]\n[upstream]\n")).unwrap();
    assert_eq!(c, parse(MINIMAL).unwrap());
}

#[test]
fn real_affinity_is_used_by_parse() {
    let cpu = affinity::allowed_cpus().unwrap()[0];
    let text = format!("[proxy]\nservice = \"web\"\ncpus = [{cpu}]\n[outbound]\n");
    let c = Config::parse(Path::new("proxy.toml"), &text).unwrap();
    assert_eq!((c.proxy.cores, c.proxy.cpus), (1, Some(vec![cpu])));
    // cpu_set_t holds 1024 CPUs, so this one is never allowed.
    let text = "[proxy]\nservice = \"web\"\ncpus = [4000]\n[outbound]\n";
    let e = Config::parse(Path::new("proxy.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "proxy.toml: [proxy] cpus: CPU 4000 is not in this process's allowed CPU set ("
        ),
        "{e}"
    );
}

#[test]
fn unknown_key_names_line_and_column() {
    let text = "[proxy]\nservice = \"web\"\n\n[inbound]\napp = \"127.0.0.1:8080\"\n  lissten = \"127.0.0.1:1\"\n";
    assert_eq!(
        error(text),
        "proxy.toml:6:3: [inbound] lissten: unknown field `lissten`, expected one of `listen`, `app`, `identity_header`, `protocol`, `app_protocol`"
    );
    let e = parse("[proxy]\nservice = \"web\"\n[outbund]\n").unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert!(
        e.to_string()
            .starts_with("proxy.toml:3:2: unknown field `outbund`, expected one of `proxy`, "),
        "{e}"
    );
}

#[test]
fn syntax_and_type_errors_name_line_and_column() {
    assert!(error("[proxy\n").starts_with("proxy.toml:1:7: "));
    assert_eq!(
        error("[proxy]\nservice = \"web\"\ncores = \"two\"\n[outbound]\n"),
        "proxy.toml:3:9: [proxy] cores: invalid type: string \"two\", expected i64"
    );
    assert!(!error("[proxy]\nservice = \"web\"\nadmin = 1\n").contains('\n'));
}

#[test]
fn bad_socket_address_names_key_and_value() {
    let e = parse("[proxy]\nservice = \"web\"\n[inbound]\nlisten = \"0.0.0.0:99999\"\napp = \"127.0.0.1:8080\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"proxy.toml: [inbound] listen: "0.0.0.0:99999" is not a socket address"#
    );
    assert_eq!(e.kind(), ConfigErrorKind::Invalid);
    assert_eq!(
        error("[proxy]\nservice = \"web\"\nadmin = \"localhost:9901\"\n[outbound]\n"),
        r#"proxy.toml: [proxy] admin: "localhost:9901" is not a socket address"#
    );
    assert_eq!(
        error(&format!(
            "{MINIMAL}[[services]]\nname = \"api\"\nendpoints = [\"10.0.0.1\"]\n"
        )),
        r#"proxy.toml: [[services]] #1 endpoints: "10.0.0.1" is not an address (IP:port, [IPv6]:port or host:port)"#
    );
    assert_eq!(
        error("[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:0\"\n"),
        r#"proxy.toml: [inbound] app: "127.0.0.1:0" has port 0, which cannot be connected to"#
    );
    assert_eq!(
        error("[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:4143\"\n"),
        r#"proxy.toml: [inbound] app: "127.0.0.1:4143" is the inbound listen address itself"#
    );
}

#[test]
fn bad_durations_name_key_and_value() {
    let with = |section: &str, kv: &str| error(&format!("{MINIMAL}[{section}]\n{kv}\n"));
    assert_eq!(
        with("timeouts", "connect = \"10\""),
        r#"proxy.toml: [timeouts] connect: "10" is not a duration (a whole number and a unit: ms, s, m or h, e.g. "250ms", "10s", "2m")"#
    );
    assert_eq!(
        with("timeouts", "idle = \"0ms\""),
        r#"proxy.toml: [timeouts] idle: "0ms" must be greater than 0"#
    );
    assert_eq!(
        with("timeouts", "request = \"25h\""),
        r#"proxy.toml: [timeouts] request: "25h" must be at most 24h"#
    );
    assert_eq!(
        with("upstream", "pool_idle_timeout = \"1.5s\""),
        r#"proxy.toml: [upstream] pool_idle_timeout: "1.5s" is not a duration (a whole number and a unit: ms, s, m or h, e.g. "250ms", "10s", "2m")"#
    );
    assert_eq!(
        error(
            "[proxy]\nservice = \"web\"\ndrain_timeout = \"99999999999999999999s\"\n[outbound]\n"
        ),
        r#"proxy.toml: [proxy] drain_timeout: "99999999999999999999s" is too large"#
    );
    // A drain of zero means "do not wait".
    let c = parse("[proxy]\nservice = \"web\"\ndrain_timeout = \"0s\"\n[outbound]\n").unwrap();
    assert_eq!(c.proxy.drain_timeout, Duration::ZERO);
}

#[test]
fn duplicate_service_is_named_by_position() {
    let text = format!(
        "{MINIMAL}[[services]]\nname = \"api\"\n[[services]]\nname = \"api\"\nendpoints = [\"127.0.0.1:1\"]\n"
    );
    assert_eq!(
        error(&text),
        r#"proxy.toml: [[services]] #2 name: "api" is defined twice"#
    );
    let text = format!(
        "{MINIMAL}[[services]]\nname = \"api\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n"
    );
    assert_eq!(
        error(&text),
        r#"proxy.toml: [[services]] #1 endpoints: "127.0.0.1:1" is listed twice"#
    );
    assert_eq!(
        error(&format!("{MINIMAL}[[services]]\n")),
        "proxy.toml: [[services]] #1 name: is required"
    );
}

#[test]
fn cores_and_cpus_must_agree() {
    let proxy = |keys: &str| format!("[proxy]\nservice = \"web\"\n{keys}\n[outbound]\n");
    assert_eq!(
        error(&proxy("cores = 2\ncpus = [0, 1, 2]")),
        "proxy.toml: [proxy] cores: 2 does not match cpus, which lists 3 CPUs"
    );
    assert_eq!(
        parse(&proxy("cores = 2\ncpus = [3, 1]"))
            .unwrap()
            .proxy
            .cpus,
        Some(vec![3, 1])
    );
    assert_eq!(parse(&proxy("cores = 4")).unwrap().proxy.cores, 4);
    assert_eq!(
        error(&proxy("cpus = [5]")),
        "proxy.toml: [proxy] cpus: CPU 5 is not in this process's allowed CPU set (0-3)"
    );
    assert_eq!(
        error(&proxy("cpus = [1, 1]")),
        "proxy.toml: [proxy] cpus: CPU 1 is listed twice"
    );
    assert_eq!(
        error(&proxy("cpus = []")),
        "proxy.toml: [proxy] cpus: is empty; remove the key to leave shards unpinned"
    );
    assert_eq!(
        error(&proxy("cpus = [-1]")),
        "proxy.toml: [proxy] cpus: -1 is not a CPU number"
    );
    assert_eq!(
        error(&proxy("cores = 0")),
        "proxy.toml: [proxy] cores: 0 is out of range 1..=256"
    );
    assert_eq!(
        error(&proxy("cores = 257")),
        "proxy.toml: [proxy] cores: 257 is out of range 1..=256"
    );
}

#[test]
fn listener_sections_and_addresses() {
    assert_eq!(
        error("[proxy]\nservice = \"web\"\n"),
        "proxy.toml: at least one of [inbound] and [outbound] is required"
    );
    assert_eq!(
        error("[outbound]\n"),
        "proxy.toml: [proxy]: this section is required"
    );
    assert_eq!(
        error("[proxy]\nservice = \"web\"\nadmin = \"0.0.0.0:4140\"\n[outbound]\n"),
        r#"proxy.toml: [outbound] listen: "127.0.0.1:4140" collides with [proxy] admin "0.0.0.0:4140""#
    );
    assert_eq!(
        error("[proxy]\nservice = \"web\"\n[inbound]\nlisten = \"127.0.0.1:7\"\napp = \"127.0.0.1:8080\"\n[outbound]\nlisten = \"127.0.0.1:7\"\n"),
        r#"proxy.toml: [outbound] listen: "127.0.0.1:7" collides with [inbound] listen "127.0.0.1:7""#
    );
    // Port 0: the OS picks a free port for each (how the e2e tests run).
    let c = parse(
        "[proxy]\nservice = \"web\"\nadmin = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"127.0.0.1:8080\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    assert_eq!(c.proxy.admin.port(), 0);
    // Same port on two specific IPs does not collide.
    parse("[proxy]\nservice = \"web\"\nadmin = \"127.0.0.2:4140\"\n[outbound]\n").unwrap();
}

#[test]
fn names_and_labels() {
    let service = |name: &str| parse(&format!("[proxy]\nservice = \"{name}\"\n[outbound]\n"));
    for good in [
        "a",
        "web",
        "api-v2",
        "billing.internal",
        "9",
        &"a".repeat(63),
    ] {
        assert!(service(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "Web",
        "-web",
        "web-",
        "web.",
        "we_b",
        "wéb",
        &"a".repeat(64),
    ] {
        assert!(service(bad).is_err(), "{bad}");
    }
    assert_eq!(
        service("Web").unwrap_err().to_string(),
        "proxy.toml: [proxy] service: \"Web\" is not a valid name (lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit, at most 63 characters)"
    );
    assert_eq!(
        error("[proxy]\n[outbound]\n"),
        "proxy.toml: [proxy] service: is required"
    );
    let labels = |l: &str| {
        error(&format!(
            "[proxy]\nservice = \"web\"\nlabels = {{ {l} }}\n[outbound]\n"
        ))
    };
    assert_eq!(
        labels("team = \"\""),
        "proxy.toml: [proxy] labels.team: is empty"
    );
    assert_eq!(
        labels("\"\" = \"x\""),
        "proxy.toml: [proxy] labels: a label key is empty"
    );
    assert_eq!(
        error("[proxy]\nservice = \"web\"\naccess_log = \"\"\n[outbound]\n"),
        "proxy.toml: [proxy] access_log: is empty; remove the key to disable the access log"
    );
}

#[test]
fn h2_limit_ranges_and_windows() {
    let h2 = |kv: &str| parse(&format!("{MINIMAL}[limits.h2]\n{kv}\n"));
    let err = |kv: &str| h2(kv).unwrap_err().to_string();
    assert_eq!(
        err("max_concurrent_streams = 0"),
        "proxy.toml: [limits.h2] max_concurrent_streams: 0 is out of range 1..=65535"
    );
    assert_eq!(
        err("stream_window = 1024"),
        "proxy.toml: [limits.h2] stream_window: 1024 is out of range 16384..=16777216"
    );
    assert_eq!(
        err("stream_window = 65536\nconnection_window = 32768"),
        "proxy.toml: [limits.h2] connection_window: 32768 is out of range 65536..=2147483647"
    );
    assert_eq!(
        err("stream_window = 4194304"),
        "proxy.toml: [limits.h2] connection_window: default 1048576 is smaller than \
         stream_window 4194304; set it to at least that"
    );
    assert_eq!(
        err("max_pings_per_second = 0"),
        "proxy.toml: [limits.h2] max_pings_per_second: 0 is out of range 1..=100000"
    );
    assert!(err("max_streams = 5").contains("unknown field `max_streams`"));
    let l = h2("max_pending_resets = 4\nmax_empty_frames_per_second = 7")
        .unwrap()
        .limits
        .h2;
    assert_eq!(
        (l.max_pending_resets, l.max_empty_frames_per_second),
        (4, 7)
    );
}

#[test]
fn limit_ranges() {
    let limits = |kv: &str| parse(&format!("{MINIMAL}[limits]\n{kv}\n"));
    let err = |kv: &str| limits(kv).unwrap_err().to_string();
    assert_eq!(
        err("max_head_bytes = 1023"),
        "proxy.toml: [limits] max_head_bytes: 1023 is out of range 1024..=1048576"
    );
    assert_eq!(
        err("max_headers = 513"),
        "proxy.toml: [limits] max_headers: 513 is out of range 1..=512"
    );
    assert_eq!(
        err("max_request_line = 255"),
        "proxy.toml: [limits] max_request_line: 255 is out of range 256..=65536"
    );
    assert_eq!(
        err("max_head_bytes = 2048\nmax_request_line = 4096"),
        "proxy.toml: [limits] max_request_line: 4096 is out of range 256..=2048"
    );
    assert_eq!(
        err("max_head_bytes = 4096"),
        "proxy.toml: [limits] max_request_line: default 8192 exceeds max_head_bytes 4096; set it to at most that"
    );
    assert_eq!(
        limits("max_head_bytes = 1024\nmax_request_line = 1024")
            .unwrap()
            .limits
            .max_request_line,
        1024
    );
    assert_eq!(
        error(&format!(
            "{MINIMAL}[upstream]\nmax_idle_per_endpoint = -1\n"
        )),
        format!(
            "proxy.toml: [upstream] max_idle_per_endpoint: -1 is out of range 0..={}",
            usize::MAX
        )
    );
}

#[test]
fn load_names_the_file_it_cannot_read() {
    let path = Path::new("/nonexistent/coremesh/proxy.toml");
    let e = Config::load(path).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Io);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/coremesh/proxy.toml: cannot read: "),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("coremesh-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.source, path);
    std::fs::write(&path, "[proxy]\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{}: [proxy] service: is required", path.display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reload_accepts_what_is_read_per_request() {
    let old = parse(FULL).unwrap();
    let new = parse(
        &FULL
            .replace("name = \"api\"", "name = \"api2\"")
            .replace("\"[fd00::2]:9000\"", "\"[fd00::3]:9000\"")
            .replace("connect = \"250ms\"", "connect = \"2s\"")
            .replace("max_headers = 64", "max_headers = 32")
            .replace("passthrough = true", "passthrough = false")
            .replace("app = \"127.0.0.1:8080\"", "app = \"127.0.0.1:8081\"")
            .replace("zone = \"eu-1\"", "zone = \"eu-2\"")
            .replace("drain_timeout = \"30s\"", "drain_timeout = \"5s\"")
            .replace("max_idle_per_endpoint = 0", "max_idle_per_endpoint = 8"),
    )
    .unwrap();
    assert_ne!(old, new);
    old.check_reload(&new).unwrap();
    old.check_reload(&old).unwrap();
}

#[test]
fn reload_rejects_what_is_set_up_at_start() {
    let old = parse(MINIMAL).unwrap();
    let reload = |text: &str| old.check_reload(&parse(text).unwrap()).unwrap_err();
    let e = reload("[proxy]\nservice = \"web\"\ncores = 2\n[outbound]\n");
    assert_eq!(e.kind(), ConfigErrorKind::NeedsRestart);
    assert_eq!(
        e.to_string(),
        "proxy.toml: [proxy] cores: changed from 1 to 2; this key needs a restart"
    );
    assert_eq!(
        reload("[proxy]\nservice = \"web\"\ncpus = [0]\n[outbound]\n").to_string(),
        "proxy.toml: [proxy] cpus: changed from none to [0]; this key needs a restart"
    );
    assert_eq!(
        reload("[proxy]\nservice = \"api\"\n[outbound]\n").to_string(),
        r#"proxy.toml: [proxy] service: changed from "web" to "api"; this key needs a restart"#
    );
    assert_eq!(
        reload("[proxy]\nservice = \"web\"\nadmin = \"127.0.0.1:1\"\n[outbound]\n").to_string(),
        r#"proxy.toml: [proxy] admin: changed from "127.0.0.1:9901" to "127.0.0.1:1"; this key needs a restart"#
    );
    assert_eq!(
        reload("[proxy]\nservice = \"web\"\naccess_log = \"a.log\"\n[outbound]\n").to_string(),
        r#"proxy.toml: [proxy] access_log: changed from none to "a.log"; this key needs a restart"#
    );
    assert_eq!(
        reload("[proxy]\nservice = \"web\"\n[outbound]\nlisten = \"127.0.0.1:1\"\n").to_string(),
        r#"proxy.toml: [outbound] listen: changed from "127.0.0.1:4140" to "127.0.0.1:1"; this key needs a restart"#
    );
    assert_eq!(
        reload(&format!("{MINIMAL}[inbound]\napp = \"127.0.0.1:8080\"\n")).to_string(),
        "proxy.toml: [inbound]: section was added; this needs a restart"
    );
    assert_eq!(
        reload("[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n").to_string(),
        "proxy.toml: [inbound]: section was added; this needs a restart"
    );
    let full = parse(FULL).unwrap();
    let no_outbound = FULL.replace(
        "[outbound]\nlisten = \"[::1]:4140\"\npassthrough = true\n",
        "",
    );
    assert_eq!(
        full.check_reload(&parse(&no_outbound).unwrap())
            .unwrap_err()
            .to_string(),
        "proxy.toml: [outbound]: section was removed; this needs a restart"
    );
}

#[test]
fn json_shows_effective_values_with_durations_as_text() {
    let j = parse(FULL).unwrap().to_json();
    assert_eq!(j["source"], "proxy.toml");
    assert_eq!(j["proxy"]["cores"], 2);
    assert_eq!(j["proxy"]["cpus"], serde_json::json!([2, 3]));
    assert_eq!(j["proxy"]["admin"], "127.0.0.1:9000");
    assert_eq!(j["proxy"]["labels"]["zone"], "eu-1");
    assert_eq!(j["proxy"]["drain_timeout"], "30s");
    assert_eq!(j["outbound"]["listen"], "[::1]:4140");
    assert_eq!(j["services"][0]["endpoints"][1], "[fd00::2]:9000");
    assert_eq!(j["timeouts"]["connect"], "250ms");
    assert_eq!(j["timeouts"]["keepalive_idle"], "2m");
    assert_eq!(j["timeouts"]["request"], "1h");
    assert_eq!(j["timeouts"]["idle"], "90s");
    assert_eq!(j["upstream"]["pool_idle_timeout"], "45s");
    assert_eq!(j["limits"]["max_headers"], 64);

    let j = parse(MINIMAL).unwrap().to_json();
    assert_eq!(j["inbound"], serde_json::Value::Null);
    assert_eq!(j["proxy"]["cpus"], serde_json::Value::Null);
    assert_eq!(j["proxy"]["access_log"], serde_json::Value::Null);
    assert_eq!(j["timeouts"]["head_read"], "10s");
}

/// The serde error for an unknown key lists every key the section accepts; each
/// must be documented in REFERENCE, so the two cannot drift apart.
#[test]
fn reference_documents_every_key() {
    let sections = [
        ("", ""),
        ("proxy", "[proxy]\n"),
        ("inbound", "[inbound]\n"),
        ("outbound", "[outbound]\n"),
    ];
    let more = [
        ("services", "[[services]]\n"),
        ("timeouts", "[timeouts]\n"),
        ("limits", "[limits]\n"),
        ("limits.h2", "[limits.h2]\n"),
        ("upstream", "[upstream]\n"),
        ("control", "[control]\n"),
        ("control.health", "[control.health]\n"),
        ("tls", "[tls]\n"),
        ("outbound.tcp", "[[outbound.tcp]]\n"),
        ("intercept", "[intercept]\n"),
        ("access_log", "[access_log]\n"),
    ];
    for (section, header) in sections.into_iter().chain(more) {
        let e = error(&format!("{header}zzz_unknown = 1\n"));
        let expected = e.split_once("expected").map_or("", |(_, list)| list);
        let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(keys.len() >= 2, "{e}");
        for key in keys {
            let documented = if section.is_empty() {
                REFERENCE.contains(&format!("\n[{key}]"))
                    || REFERENCE.contains(&format!("\n[[{key}]]"))
            } else {
                REFERENCE
                    .lines()
                    .any(|line| line.split_whitespace().next() == Some(key))
            };
            assert!(documented, "{section}.{key} is missing from REFERENCE");
        }
    }
}

#[test]
fn static_resilience_blocks_parse_and_are_checked() {
    let base = "[proxy]\nservice = \"web\"\n[outbound]\n[[services]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9000\"]\n[[services]]\nname = \"shadow\"\n";
    let c = parse(&format!(
        "{base}[[resilience]]\nservice = \"api\"\nloadBalancer = \"round-robin\"\ncircuitBreaker = {{ maxRequests = 10 }}\nmirror = {{ service = \"shadow\", percent = 5 }}\nfaults = {{ abort = {{ percent = 1.5, status = 503 }} }}\n[[resilience]]\nservice = \"web\"\nrateLimit = {{ requestsPerSecond = 100, burst = 20 }}\n"
    ))
    .unwrap();
    assert_eq!(c.resilience.len(), 2);
    assert_eq!(
        c.resilience[0]
            .circuit_breaker
            .as_ref()
            .unwrap()
            .max_requests,
        Some(10)
    );
    for (extra, want) in [
        ("[[resilience]]\nservice = \"nope\"\n", "[[resilience]] #1 service"),
        ("[[resilience]]\nservice = \"api\"\nmirror = { service = \"gone\" }\n", "mirror.service"),
        ("[[resilience]]\nservice = \"api\"\nfaults = { abort = { percent = 150, status = 503 } }\n", "percent"),
        ("[[resilience]]\nservice = \"api\"\nloadBalancer = \"fastest\"\n", "loadBalancer"),
        ("[[resilience]]\nservice = \"api\"\n[[resilience]]\nservice = \"api\"\n", "two [[resilience]] blocks"),
    ] {
        let e = parse(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(e.contains(want), "{extra:?}: {e}");
    }
}

/// `[intercept]`: defaults follow the listeners; redirect targets need a
/// fixed port and a section; values out of range are named.
#[test]
fn intercept_section() {
    let base = "[proxy]\nservice = \"web\"\n[inbound]\nlisten = \"0.0.0.0:15006\"\napp = \"127.0.0.1:8080\"\n[outbound]\nlisten = \"127.0.0.1:15001\"\n";
    assert_eq!(parse(base).unwrap().intercept, None);
    let c = parse(&format!("{base}[intercept]\n")).unwrap();
    let i = c.intercept.expect("[intercept]");
    assert_eq!(i.mark, 0x434d);
    assert!(i.outbound);
    assert_eq!(i.inbound_ports, vec![8080]);
    assert!(i.exclude_outbound_ports.is_empty() && i.exclude_uids.is_empty());
    let c = parse(&format!(
        "{base}[intercept]\nmark = 7\noutbound = false\ninbound_ports = [80, 443]\nexclude_outbound_ports = [22]\nexclude_uids = [0]\n"
    ))
    .unwrap();
    let i = c.intercept.unwrap();
    assert_eq!((i.mark, i.outbound), (7, false));
    assert_eq!(i.inbound_ports, vec![80, 443]);
    assert_eq!(
        (i.exclude_outbound_ports, i.exclude_uids),
        (vec![22], vec![0])
    );

    let e = error(&format!("{base}[intercept]\nmark = 0\n"));
    assert!(e.contains("[intercept] mark: 0 is not a mark"), "{e}");
    let e = error(&format!("{base}[intercept]\ninbound_ports = [70000]\n"));
    assert!(
        e.contains("[intercept] inbound_ports: 70000 is not a port"),
        "{e}"
    );
    let e = error(&format!("{base}[intercept]\ninbound_ports = [15006]\n"));
    assert!(e.contains("15006 is [inbound] listen's own port"), "{e}");
    let e =
        error("[proxy]\nservice = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[intercept]\n");
    assert!(
        e.contains("[intercept] outbound: [outbound] listen \"127.0.0.1:0\" has port 0"),
        "{e}"
    );
    let e = error("[proxy]\nservice = \"web\"\n[outbound]\n[intercept]\ninbound_ports = [80]\n");
    assert!(
        e.contains("[intercept] inbound_ports: needs an [inbound] section"),
        "{e}"
    );
    let e = error("[proxy]\nservice = \"api\"\n[inbound]\napp = \"127.0.0.1:80\"\n[intercept]\noutbound = true\n");
    assert!(
        e.contains("[intercept] outbound: true needs an [outbound] section"),
        "{e}"
    );
    let e = error("[proxy]\nservice = \"api\"\n[inbound]\nlisten = \"127.0.0.1:15006\"\napp = \"127.0.0.1:80\"\n[intercept]\n");
    assert!(
        e.contains("[inbound] listen \"127.0.0.1:15006\" is on loopback"),
        "{e}"
    );
    let e =
        error("[proxy]\nservice = \"web\"\n[outbound]\nlisten = \"10.0.0.2:15001\"\n[intercept]\n");
    assert!(
        e.contains("[outbound] listen \"10.0.0.2:15001\" is not on loopback"),
        "{e}"
    );
}

#[test]
fn app_protocol_is_auto_http1_or_h2c() {
    let base = "[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n";
    let c = parse(&format!("{base}app_protocol = \"http1\"\n")).unwrap();
    assert_eq!(c.inbound.unwrap().app_protocol, AppProtocol::Http1);
    let c = parse(&format!("{base}app_protocol = \"h2c\"\n")).unwrap();
    assert_eq!(c.inbound.unwrap().app_protocol, AppProtocol::H2c);
    let svc = "[outbound]\n[[services]]\nname = \"grpc\"\nendpoints = [\"127.0.0.1:9000\"]\n";
    let c = parse(&format!("{base}{svc}protocol = \"h2c\"\n")).unwrap();
    assert_eq!(c.services[0].protocol, AppProtocol::H2c);
    assert_eq!(
        error(&format!("{base}{svc}protocol = \"h3\"\n")),
        r#"proxy.toml: [[services]] #1 protocol: "h3" is not "auto" (the client's protocol), "http1" or "h2c""#
    );
    assert_eq!(
        error(&format!("{base}app_protocol = \"spdy\"\n")),
        r#"proxy.toml: [inbound] app_protocol: "spdy" is not "auto" (the client's protocol), "http1" or "h2c""#
    );
}

#[test]
fn buffer_budgets_are_validated() {
    let parse = |limits: &str| parse(&format!("{MINIMAL}[limits]\n{limits}"));
    let c = parse("buffer_budget = 1048576\nconnection_buffer_budget = 262144\n").unwrap();
    assert_eq!(c.limits.buffer_budget, 1_048_576);
    assert_eq!(c.limits.connection_buffer_budget, 262_144);
    // A small global budget lowers the default per connection with it.
    let c = parse("buffer_budget = 131072\n").unwrap();
    assert_eq!(c.limits.connection_buffer_budget, 131_072);
    let e = parse("buffer_budget = 1000\n").unwrap_err().to_string();
    assert!(e.contains("[limits] buffer_budget"), "{e}");
    let e = parse("connection_buffer_budget = 4096\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("connection_buffer_budget"), "{e}");
    let e = parse("buffer_budget = 65536\n").unwrap_err().to_string();
    assert!(e.contains("max_head_bytes + 16384"), "{e}");
}

#[test]
fn access_log_section() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.access_log, AccessLogConfig::default());
    assert_eq!(c.access_log.format, AccessLogFormat::Json);
    assert_eq!(c.access_log.sample, 1.0);
    assert!(c.access_log.enabled);

    let c = parse(&format!(
        "{MINIMAL}[access_log]\npath = \"a.log\"\nformat = \"text\"\nsample = 0.1\nenabled = false\n"
    ))
    .unwrap();
    assert_eq!(c.proxy.access_log, Some("a.log".into()));
    assert_eq!(c.access_log.format, AccessLogFormat::Text);
    assert_eq!(c.access_log.sample, 0.1);
    assert!(!c.access_log.enabled);
    let j = c.to_json();
    assert_eq!(j["access_log"]["format"], "text");
    assert_eq!(j["access_log"]["path"], "a.log");
    // An integer is a ratio too.
    let c = parse(&format!("{MINIMAL}[access_log]\nsample = 0\n")).unwrap();
    assert_eq!(c.access_log.sample, 0.0);

    for (body, want) in [
        (
            "[access_log]\nformat = \"xml\"\n",
            r#"proxy.toml: [access_log] format: "xml" is not one of "json", "text""#,
        ),
        (
            "[access_log]\nsample = 1.5\n",
            "proxy.toml: [access_log] sample: 1.5 is not within 0.0..=1.0",
        ),
        (
            "[access_log]\nsample = \"all\"\n",
            r#"proxy.toml: [access_log] sample: "all" is not a number from 0.0 to 1.0"#,
        ),
        (
            "[access_log]\npath = \"\"\n",
            "proxy.toml: [access_log] path: is empty; remove the key to disable the access log",
        ),
    ] {
        assert_eq!(error(&format!("{MINIMAL}{body}")), want);
    }
    assert_eq!(
        error("[proxy]\nservice = \"web\"\naccess_log = \"a.log\"\n[outbound]\n[access_log]\npath = \"b.log\"\n"),
        "proxy.toml: [access_log] path: the file is also set by [proxy] access_log; keep one of the two"
    );
}

#[test]
fn access_log_format_sample_and_enabled_reload_but_the_file_does_not() {
    let old = parse(&format!("{MINIMAL}[access_log]\npath = \"a.log\"\n")).unwrap();
    let new = parse(&format!(
        "{MINIMAL}[access_log]\npath = \"a.log\"\nformat = \"text\"\nsample = 0.5\nenabled = false\n"
    ))
    .unwrap();
    old.check_reload(&new).unwrap();
    // The older spelling of the same file is the same file.
    let same = parse("[proxy]\nservice = \"web\"\naccess_log = \"a.log\"\n[outbound]\n").unwrap();
    old.check_reload(&same).unwrap();
    let moved = parse(&format!("{MINIMAL}[access_log]\npath = \"b.log\"\n")).unwrap();
    assert_eq!(
        old.check_reload(&moved).unwrap_err().to_string(),
        r#"proxy.toml: [proxy] access_log: changed from "a.log" to "b.log"; this key needs a restart"#
    );
}
