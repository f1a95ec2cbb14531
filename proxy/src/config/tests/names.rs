//! Host names where addresses are configured: `[[services]] endpoints` and
//! `[control] address` take `host:port`, kept apart from the IP literals
//! (the agent resolves them; the config never does).

use super::super::*;
use super::{error, parse, MINIMAL};

fn name(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}

#[test]
fn service_endpoints_take_host_names() {
    let c = parse(&format!(
        "{MINIMAL}[[services]]\nname = \"api\"\nendpoints = [\"127.0.0.1:9000\", \"localhost:9001\", \"API.internal:80\"]\n"
    ))
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.endpoints, ["127.0.0.1:9000".parse().unwrap()]);
    assert_eq!(s.names, [name("localhost", 9001), name("api.internal", 80)]);
    let j = c.to_json();
    assert_eq!(j["services"][0]["names"][0], "localhost:9001");
}

#[test]
fn control_address_takes_host_names() {
    let c = parse(
        "[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n[control]\naddress = [\"control.example:7443\", \"10.0.0.9:7443\"]\nstate_dir = \"st\"\n",
    )
    .unwrap();
    let cc = c.control.unwrap();
    assert_eq!(
        cc.addresses,
        [
            Target::Name(name("control.example", 7443)),
            Target::Addr("10.0.0.9:7443".parse().unwrap())
        ]
    );
}

#[test]
fn bad_names_say_why() {
    assert_eq!(
        error(&format!(
            "{MINIMAL}[[services]]\nname = \"api\"\nendpoints = [\"bad host:80\"]\n"
        )),
        r#"proxy.toml: [[services]] #1 endpoints: "bad host:80" has a host name that is not valid (letters, digits, '-', '.', labels of 1 to 63 characters)"#
    );
    assert_eq!(
        error(&format!(
            "{MINIMAL}[[services]]\nname = \"api\"\nendpoints = [\"localhost:1\", \"LOCALHOST:1\"]\n"
        )),
        r#"proxy.toml: [[services]] #1 endpoints: "LOCALHOST:1" is listed twice"#
    );
    assert_eq!(
        error(
            "[proxy]\nservice = \"web\"\n[inbound]\napp = \"127.0.0.1:8080\"\n[control]\naddress = \"control.example:0\"\nstate_dir = \"st\"\n"
        ),
        r#"proxy.toml: [control] address: "control.example:0" has port 0, which cannot be connected to"#
    );
}

#[test]
fn a_localhost_control_is_not_remote() {
    // No loopback-advertise warning: control named localhost is local.
    let c = parse(
        "[proxy]\nservice = \"web\"\n[inbound]\nlisten = \"127.0.0.1:4143\"\napp = \"127.0.0.1:8080\"\n[control]\naddress = \"localhost:7443\"\nstate_dir = \"st\"\n",
    )
    .unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}
