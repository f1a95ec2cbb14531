//! `[tls]`, `[inbound] identity_header` and `[[outbound.tcp]]`: the keys of
//! mutual TLS between proxies. Values, relative paths, the one-line message
//! for each mistake, and which changes a reload may apply.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::super::*;

const PROXY: &str = "[proxy]\nservice = \"web\"\n";
const INBOUND: &str = "[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n";
const TLS: &str = "[tls]\ncert = \"/etc/coremesh/proxy.crt\"\nkey = \"/etc/coremesh/proxy.key\"\nca = \"/etc/coremesh/ca.crt\"\n";

fn parse_at(path: &str, text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_cpus(Path::new(path), text, || Ok(vec![0, 1, 2, 3]))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_at("proxy.toml", text)
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

fn tcp(service: &str, listen: &str) -> String {
    format!("[[outbound.tcp]]\nservice = \"{service}\"\nlisten = \"{listen}\"\n")
}

#[test]
fn all_three_parse_with_their_values() {
    let text = format!(
        "{INBOUND}identity_header = \"X-Coremesh-Caller\"\n\
         [outbound]\nlisten = \"127.0.0.1:4140\"\npassthrough = true\n{}{}{TLS}",
        tcp("db", "127.0.0.1:5432"),
        tcp("cache", "127.0.0.1:0"),
    );
    let c = parse(&text).unwrap();
    let i = c.inbound.as_ref().unwrap();
    assert_eq!(i.identity_header.as_deref(), Some("x-coremesh-caller"));
    assert_eq!(
        c.outbound,
        Some(OutboundConfig {
            listen: ListenAddr::Tcp(addr("127.0.0.1:4140")),
            passthrough: true,
            tcp: vec![
                TcpUpstreamConfig {
                    service: "db".into(),
                    listen: addr("127.0.0.1:5432"),
                },
                TcpUpstreamConfig {
                    service: "cache".into(),
                    listen: addr("127.0.0.1:0"),
                },
            ],
        })
    );
    assert_eq!(
        c.tls,
        Some(TlsConfig {
            cert: "/etc/coremesh/proxy.crt".into(),
            key: "/etc/coremesh/proxy.key".into(),
            ca: "/etc/coremesh/ca.crt".into(),
        })
    );

    let j = c.to_json();
    assert_eq!(j["inbound"]["identity_header"], "x-coremesh-caller");
    assert_eq!(
        j["outbound"]["tcp"],
        serde_json::json!([
            { "service": "db", "listen": "127.0.0.1:5432" },
            { "service": "cache", "listen": "127.0.0.1:0" },
        ])
    );
    assert_eq!(
        j["tls"],
        serde_json::json!({
            "cert": "/etc/coremesh/proxy.crt",
            "key": "/etc/coremesh/proxy.key",
            "ca": "/etc/coremesh/ca.crt",
        })
    );
}

#[test]
fn absent_means_none_and_empty() {
    let c = parse(&format!("{INBOUND}[outbound]\n")).unwrap();
    assert_eq!(c.tls, None);
    assert_eq!(c.inbound.as_ref().unwrap().identity_header, None);
    assert!(c.outbound.as_ref().unwrap().tcp.is_empty());
    let j = c.to_json();
    assert_eq!(j["tls"], serde_json::Value::Null);
    assert_eq!(j["inbound"]["identity_header"], serde_json::Value::Null);
    assert_eq!(j["outbound"]["tcp"], serde_json::json!([]));
}

/// `[[outbound.tcp]]` is an array of tables inside `outbound`: with or
/// without an `[outbound]` header, before or after it.
#[test]
fn tcp_entries_with_and_without_an_outbound_header() {
    // No [outbound] header: the entry creates the table; listen keeps its default.
    let c = parse(&format!("{PROXY}{}", tcp("db", "127.0.0.1:5432"))).unwrap();
    let o = c.outbound.unwrap();
    assert_eq!(o.listen, ListenAddr::Tcp(addr("127.0.0.1:4140")));
    assert_eq!(o.tcp[0].service, "db");

    // The header after the entries (TOML allows a super-table after its sub-table).
    let c = parse(&format!(
        "{PROXY}{}[outbound]\nlisten = \"127.0.0.1:4141\"\n",
        tcp("db", "127.0.0.1:5432")
    ))
    .unwrap();
    let o = c.outbound.unwrap();
    assert_eq!(o.listen, ListenAddr::Tcp(addr("127.0.0.1:4141")));
    assert_eq!(o.tcp.len(), 1);
}

#[test]
fn tls_paths_are_relative_to_the_config_file() {
    let text = format!(
        "{INBOUND}[tls]\ncert = \"proxy.crt\"\nkey = \"keys/proxy.key\"\nca = \"/etc/pki/ca.crt\"\n"
    );
    let t = parse_at("/etc/coremesh/proxy.toml", &text)
        .unwrap()
        .tls
        .unwrap();
    assert_eq!(t.cert, PathBuf::from("/etc/coremesh/proxy.crt"));
    assert_eq!(t.key, PathBuf::from("/etc/coremesh/keys/proxy.key"));
    assert_eq!(t.ca, PathBuf::from("/etc/pki/ca.crt"));

    // A config file named relative to the working directory gives paths
    // relative to it as well, through the file's directory.
    let t = parse_at("conf/proxy.toml", &text).unwrap().tls.unwrap();
    assert_eq!(t.cert, PathBuf::from("conf/proxy.crt"));
    let c = parse_at("proxy.toml", &text).unwrap();
    assert_eq!(c.tls.as_ref().unwrap().key, PathBuf::from("keys/proxy.key"));
    // /config shows the path the proxy reads.
    let j = parse_at("/etc/coremesh/proxy.toml", &text)
        .unwrap()
        .to_json();
    assert_eq!(j["tls"]["cert"], "/etc/coremesh/proxy.crt");
}

#[test]
fn tls_errors_name_the_key() {
    let tls = |keys: &str| error(&format!("{INBOUND}[tls]\n{keys}"));
    assert_eq!(
        tls("key = \"k\"\nca = \"c\"\n"),
        "proxy.toml: [tls] cert: is required"
    );
    assert_eq!(
        tls("cert = \"c\"\nca = \"c\"\n"),
        "proxy.toml: [tls] key: is required"
    );
    assert_eq!(
        tls("cert = \"c\"\nkey = \"k\"\n"),
        "proxy.toml: [tls] ca: is required"
    );
    assert_eq!(
        tls("cert = \"\"\nkey = \"k\"\nca = \"c\"\n"),
        "proxy.toml: [tls] cert: is empty"
    );
    assert_eq!(tls(""), "proxy.toml: [tls] cert: is required");
    assert_eq!(
        tls("cert = \"c\"\nkey = \"k\"\nca = \"c\"\nciphers = \"x\"\n"),
        "proxy.toml:9:1: [tls] ciphers: unknown field `ciphers`, expected one of `cert`, `key`, `ca`"
    );
    assert_eq!(
        error(&format!(
            "{INBOUND}{TLS}[control]\naddress = \"127.0.0.1:7443\"\nstate_dir = \"/var/lib/p\"\n"
        )),
        "proxy.toml: [tls]: not used with [control]: control issues this proxy's certificate; remove one"
    );
}

#[test]
fn identity_header_is_a_token_and_not_a_framing_or_hop_by_hop_header() {
    let header = |name: &str| {
        parse(&format!("{INBOUND}identity_header = {name:?}\n"))
            .map(|c| c.inbound.unwrap().identity_header.unwrap())
            .map_err(|e| e.to_string())
    };
    for (good, stored) in [
        ("x-coremesh-caller", "x-coremesh-caller"),
        ("X-Forwarded-Client-Cert", "x-forwarded-client-cert"),
        ("x_caller.id!~", "x_caller.id!~"),
    ] {
        assert_eq!(header(good).as_deref(), Ok(stored));
    }
    for bad in ["x caller", "x-caller:", "", "x\u{e9}", "(x)"] {
        assert_eq!(
            header(bad).unwrap_err(),
            format!(
                "proxy.toml: [inbound] identity_header: \"{}\" is not a header name \
                 (letters, digits and !#$%&'*+-.^_`|~)",
                bad.escape_debug()
            )
        );
    }
    for reserved in [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "connection",
        "keep-alive",
        "TE",
        "upgrade",
        "proxy-connection",
        "expect",
    ] {
        assert_eq!(
            header(reserved).unwrap_err(),
            format!(
                "proxy.toml: [inbound] identity_header: \"{}\" is a framing or hop-by-hop \
                 header, which the proxy must not replace",
                reserved.to_ascii_lowercase()
            )
        );
    }
}

#[test]
fn tcp_errors_name_the_entry_and_the_key() {
    let entries = |text: &str| error(&format!("{PROXY}{text}"));
    assert_eq!(
        entries("[[outbound.tcp]]\nlisten = \"127.0.0.1:5432\"\n"),
        "proxy.toml: [[outbound.tcp]] #1 service: is required"
    );
    assert_eq!(
        entries(&format!(
            "{}[[outbound.tcp]]\nservice = \"cache\"\n",
            tcp("db", "127.0.0.1:5432")
        )),
        "proxy.toml: [[outbound.tcp]] #2 listen: is required"
    );
    assert_eq!(
        entries(&tcp("DB", "127.0.0.1:5432")),
        "proxy.toml: [[outbound.tcp]] #1 service: \"DB\" is not a valid name (lowercase \
         letters, digits, '-' and '.', starting and ending with a letter or digit, at most \
         63 characters)"
    );
    assert_eq!(
        entries(&tcp("db", "localhost:5432")),
        "proxy.toml: [[outbound.tcp]] #1 listen: \"localhost:5432\" is not a socket address"
    );
    assert_eq!(
        entries(&format!(
            "{}{}",
            tcp("db", "127.0.0.1:5432"),
            tcp("db", "127.0.0.1:5433")
        )),
        "proxy.toml: [[outbound.tcp]] #2 service: \"db\" is listed twice"
    );
    let e = entries("[[outbound.tcp]]\nservice = \"db\"\nlisten = \"127.0.0.1:5432\"\nport = 1\n");
    assert!(
        e.starts_with("proxy.toml:6:1: [[outbound.tcp]] port: unknown field `port`"),
        "{e}"
    );
}

#[test]
fn tcp_listeners_must_not_collide_except_on_port_0() {
    let entries = |text: &str| error(&format!("{INBOUND}{text}"));
    assert_eq!(
        entries(&format!(
            "{}{}",
            tcp("db", "127.0.0.1:5432"),
            tcp("cache", "0.0.0.0:5432")
        )),
        r#"proxy.toml: [[outbound.tcp]] #2 listen: "0.0.0.0:5432" collides with [[outbound.tcp]] #1 listen "127.0.0.1:5432""#
    );
    assert_eq!(
        entries(&tcp("db", "127.0.0.1:4140")),
        r#"proxy.toml: [[outbound.tcp]] #1 listen: "127.0.0.1:4140" collides with [outbound] listen "127.0.0.1:4140""#
    );
    assert_eq!(
        entries(&tcp("db", "127.0.0.1:4143")),
        r#"proxy.toml: [[outbound.tcp]] #1 listen: "127.0.0.1:4143" collides with [inbound] listen "127.0.0.1:4143""#
    );
    assert_eq!(
        entries(&tcp("db", "[::]:9901")),
        r#"proxy.toml: [[outbound.tcp]] #1 listen: "[::]:9901" collides with [proxy] admin "127.0.0.1:9901""#
    );
    // Port 0: the OS picks a port for each; the same port on two specific
    // IPs can be bound twice.
    let c = parse(&format!(
        "{INBOUND}{}{}{}",
        tcp("db", "127.0.0.1:0"),
        tcp("cache", "127.0.0.1:0"),
        tcp("queue", "127.0.0.2:4140"),
    ))
    .unwrap();
    assert_eq!(c.outbound.unwrap().tcp.len(), 3);
}

#[test]
fn reload_applies_tls_paths_and_identity_header() {
    let old = parse(&format!("{INBOUND}{TLS}")).unwrap();
    for new in [
        format!("{INBOUND}{}", TLS.replace("proxy.crt", "proxy-2.crt")),
        format!(
            "{INBOUND}{}",
            TLS.replace("/etc/coremesh/ca.crt", "/etc/pki/roots.pem")
        ),
        format!("{INBOUND}identity_header = \"x-caller\"\n{TLS}"),
    ] {
        let new = parse(&new).unwrap();
        assert_ne!(old, new);
        old.check_reload(&new).unwrap();
        new.check_reload(&old).unwrap();
    }
    let a = parse(&format!("{INBOUND}identity_header = \"x-a\"\n")).unwrap();
    let b = parse(&format!("{INBOUND}identity_header = \"x-b\"\n")).unwrap();
    a.check_reload(&b).unwrap();
}

#[test]
fn reload_rejects_tls_appearing_or_disappearing() {
    let plain = parse(INBOUND).unwrap();
    let mtls = parse(&format!("{INBOUND}{TLS}")).unwrap();
    let e = plain.check_reload(&mtls).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::NeedsRestart);
    assert_eq!(
        e.to_string(),
        "proxy.toml: [tls]: section was added; this needs a restart"
    );
    assert_eq!(
        mtls.check_reload(&plain).unwrap_err().to_string(),
        "proxy.toml: [tls]: section was removed; this needs a restart"
    );
}

#[test]
fn reload_rejects_any_tcp_listener_change() {
    let with = |entries: &[(&str, &str)]| {
        let list: String = entries.iter().map(|(s, l)| tcp(s, l)).collect();
        parse(&format!("{PROXY}{list}")).unwrap()
    };
    let old = with(&[("db", "127.0.0.1:5432"), ("cache", "127.0.0.1:6379")]);
    old.check_reload(&old.clone()).unwrap();
    let reload = |new: &Config| {
        let e = old.check_reload(new).unwrap_err();
        assert_eq!(e.kind(), ConfigErrorKind::NeedsRestart);
        e.to_string()
    };
    assert_eq!(
        reload(&with(&[
            ("db", "127.0.0.1:5433"),
            ("cache", "127.0.0.1:6379")
        ])),
        r#"proxy.toml: [[outbound.tcp]] #1 listen: changed from "127.0.0.1:5432" to "127.0.0.1:5433"; this key needs a restart"#
    );
    assert_eq!(
        reload(&with(&[
            ("db", "127.0.0.1:5432"),
            ("redis", "127.0.0.1:6379")
        ])),
        r#"proxy.toml: [[outbound.tcp]] #2 service: changed from "cache" to "redis"; this key needs a restart"#
    );
    assert_eq!(
        reload(&with(&[
            ("db", "127.0.0.1:5432"),
            ("cache", "127.0.0.1:6379"),
            ("queue", "127.0.0.1:5672"),
        ])),
        "proxy.toml: [[outbound.tcp]] #3: entry was added; this needs a restart"
    );
    assert_eq!(
        reload(&with(&[("db", "127.0.0.1:5432")])),
        "proxy.toml: [[outbound.tcp]] #2: entry was removed; this needs a restart"
    );
    assert_eq!(
        reload(&with(&[
            ("cache", "127.0.0.1:6379"),
            ("db", "127.0.0.1:5432")
        ])),
        r#"proxy.toml: [[outbound.tcp]] #1 service: changed from "db" to "cache"; this key needs a restart"#
    );
}
