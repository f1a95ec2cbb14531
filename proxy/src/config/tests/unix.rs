//! `unix:/PATH` in `[inbound] app` and `[outbound] listen`, with
//! `listen_mode`, `listen_owner` and `listen_group`: values, the one-line
//! message for each mistake, what `[intercept]` makes of them, and reloads.

use std::path::{Path, PathBuf};

use super::super::*;

const PROXY: &str = "[proxy]\nservice = \"web\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_cpus(Path::new("proxy.toml"), text, || Ok(vec![0]))
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("accepted:\n{text}\n{config:?}"),
        Err(e) => e.to_string(),
    }
}

fn outbound(keys: &str) -> String {
    format!("{PROXY}[outbound]\nlisten = \"unix:/run/coremesh/out.sock\"\n{keys}")
}

#[test]
fn an_app_on_a_socket_file() {
    let c = parse(&format!(
        "{PROXY}[inbound]\napp = \"unix:/run/api/app.sock\"\n"
    ))
    .unwrap();
    let app = &c.inbound.as_ref().unwrap().app;
    assert_eq!(app, &AppAddr::Unix(PathBuf::from("/run/api/app.sock")));
    assert_eq!(app.key(), UNIX_APP);
    assert_eq!(app.tcp(), None);
    assert_eq!(app.to_string(), "unix:/run/api/app.sock");
    assert_eq!(c.to_json()["inbound"]["app"], "unix:/run/api/app.sock");
    // A TCP app keeps its own address as its key.
    let c = parse(&format!("{PROXY}[inbound]\napp = \"127.0.0.1:8080\"\n")).unwrap();
    let app = &c.inbound.unwrap().app;
    assert_eq!(app.key(), "127.0.0.1:8080".parse().unwrap());
    assert_ne!(app.key(), UNIX_APP);
}

#[test]
fn a_listener_on_a_socket_file_with_mode_and_owner() {
    let c = parse(&outbound(
        "listen_mode = \"0660\"\nlisten_owner = 0\nlisten_group = \"root\"\n",
    ))
    .unwrap();
    let want = UnixListen {
        path: PathBuf::from("/run/coremesh/out.sock"),
        mode: Some(0o660),
        owner: Some(0),
        group: Some(0),
    };
    let o = c.outbound.as_ref().unwrap();
    assert_eq!(o.listen, ListenAddr::Unix(want));
    assert_eq!(o.listen.tcp(), None);
    let j = c.to_json();
    assert_eq!(j["outbound"]["listen"], "unix:/run/coremesh/out.sock");
    assert_eq!(j["outbound"]["listen_mode"], "0660");
    assert_eq!(j["outbound"]["listen_owner"], 0);
    // Names and numbers alike; "root" is user and group 0 everywhere.
    for (owner, group) in [("\"root\"", "\"0\""), ("\"0\"", "0")] {
        let c = parse(&outbound(&format!(
            "listen_owner = {owner}\nlisten_group = {group}\n"
        )))
        .unwrap();
        match c.outbound.unwrap().listen {
            ListenAddr::Unix(u) => assert_eq!((u.owner, u.group), (Some(0), Some(0))),
            other => panic!("{other:?}"),
        }
    }
    // Without the keys: as created, by this process's user.
    match parse(&outbound("")).unwrap().outbound.unwrap().listen {
        ListenAddr::Unix(u) => assert_eq!((u.mode, u.owner, u.group), (None, None, None)),
        other => panic!("{other:?}"),
    }
    // Modes: with or without the leading 0 (or 0o).
    for (text, mode) in [
        ("\"660\"", 0o660),
        ("\"0o600\"", 0o600),
        ("\"0777\"", 0o777),
    ] {
        match parse(&outbound(&format!("listen_mode = {text}\n")))
            .unwrap()
            .outbound
            .unwrap()
            .listen
        {
            ListenAddr::Unix(u) => assert_eq!(u.mode, Some(mode)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn every_mistake_names_the_key_and_the_value() {
    let cases = [
        (
            format!("{PROXY}[inbound]\napp = \"unix:\"\n"),
            "proxy.toml: [inbound] app: \"unix:\" names no path: write \"unix:/run/app.sock\"",
        ),
        (
            format!("{PROXY}[inbound]\napp = \"unix:app.sock\"\n"),
            "proxy.toml: [inbound] app: \"unix:app.sock\" is not an absolute path",
        ),
        (
            format!("{PROXY}[outbound]\nlisten = \"unix:/{}\"\n", "x".repeat(110)),
            "is 111 bytes long; a Unix socket path holds at most 107",
        ),
        (
            outbound("listen_mode = \"rw-rw----\"\n"),
            "proxy.toml: [outbound] listen_mode: \"rw-rw----\" is not an octal mode such as \"0660\"",
        ),
        (
            outbound("listen_mode = 432\n"),
            "proxy.toml: [outbound] listen_mode: 432 is not a string; write the mode in octal, as a string: \"0660\"",
        ),
        (
            outbound("listen_mode = \"4755\"\n"),
            "proxy.toml: [outbound] listen_mode: \"4755\" sets setuid, setgid or sticky bits",
        ),
        (
            outbound("listen_owner = \"no-such-user-here\"\n"),
            "proxy.toml: [outbound] listen_owner: no user is called \"no-such-user-here\" on this host",
        ),
        (
            outbound("listen_group = -1\n"),
            "proxy.toml: [outbound] listen_group: -1 is not a group id",
        ),
        (
            outbound("listen_owner = true\n"),
            "proxy.toml: [outbound] listen_owner: true is not a user name or id",
        ),
        (
            format!("{PROXY}[outbound]\nlisten = \"127.0.0.1:4140\"\nlisten_owner = \"root\"\n"),
            "proxy.toml: [outbound] listen_owner: applies to a socket file only; listen \"127.0.0.1:4140\" is a TCP address",
        ),
        (
            format!("{PROXY}[outbound]\nlisten_group = \"root\"\n"),
            "proxy.toml: [outbound] listen_group: applies to a socket file only; listen \"127.0.0.1:4140\"",
        ),
    ];
    for (text, want) in cases {
        let e = error(&text);
        assert!(e.contains(want), "want {want:?}\n got {e:?}");
    }
}

#[test]
fn intercept_needs_ports_a_socket_file_has_not() {
    let e = error(&format!(
        "{PROXY}[inbound]\napp = \"unix:/run/app.sock\"\n[intercept]\noutbound = false\n"
    ));
    assert!(
        e.starts_with("proxy.toml: [intercept] inbound_ports: is needed: [inbound] app \"unix:/run/app.sock\" is a Unix socket"),
        "{e}"
    );
    // Given explicitly, the ports are fine: callers reach the app's old port.
    let c = parse(&format!(
        "{PROXY}[inbound]\nlisten = \"0.0.0.0:4143\"\napp = \"unix:/run/app.sock\"\n[intercept]\noutbound = false\ninbound_ports = [8080]\n"
    ))
    .unwrap();
    assert_eq!(c.intercept.unwrap().inbound_ports, vec![8080]);
    let e = error(&format!("{}[intercept]\n", outbound("")));
    assert!(
        e.starts_with("proxy.toml: [intercept] outbound: [outbound] listen \"unix:/run/coremesh/out.sock\" is a Unix socket"),
        "{e}"
    );
    // A unix outbound listener without outbound interception is fine.
    parse(&format!("{}[intercept]\noutbound = false\n", outbound(""))).unwrap();
}

#[test]
fn reload_keeps_the_socket_file_and_may_move_the_app() {
    let old = parse(&outbound("listen_mode = \"0660\"\n")).unwrap();
    let moved = parse(&format!(
        "{PROXY}[outbound]\nlisten = \"unix:/run/coremesh/other.sock\"\n"
    ))
    .unwrap();
    let e = old.check_reload(&moved).unwrap_err().to_string();
    assert!(
        e.contains("[outbound] listen: changed from \"unix:/run/coremesh/out.sock\" to \"unix:/run/coremesh/other.sock\"; this key needs a restart"),
        "{e}"
    );
    let remoded = parse(&outbound("listen_mode = \"0600\"\n")).unwrap();
    let e = old.check_reload(&remoded).unwrap_err().to_string();
    assert!(
        e.contains("[outbound] listen_mode, listen_owner or listen_group: changed"),
        "{e}"
    );
    // The app may move between TCP and a socket file on SIGHUP.
    let tcp = parse(&format!("{PROXY}[inbound]\napp = \"127.0.0.1:8080\"\n")).unwrap();
    let unix = parse(&format!("{PROXY}[inbound]\napp = \"unix:/run/app.sock\"\n")).unwrap();
    tcp.check_reload(&unix).unwrap();
}
