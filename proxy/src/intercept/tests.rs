use super::*;
use crate::config::Config;

fn config(text: &str) -> Config {
    Config::parse(std::path::Path::new("/etc/coremesh/proxy.toml"), text).expect("config")
}

const BOTH: &str = "[proxy]\nservice = \"web\"\n[inbound]\nlisten = \"0.0.0.0:15006\"\napp = \"127.0.0.1:8080\"\n[outbound]\nlisten = \"127.0.0.1:15001\"\n";

#[test]
fn ruleset_for_both_directions() {
    let cfg = config(&format!(
        "{BOTH}[intercept]\nexclude_outbound_ports = [22, 53]\nexclude_uids = [0]\n"
    ));
    assert_eq!(
        ruleset(&cfg).unwrap(),
        "# coremesh-proxy --intercept, from /etc/coremesh/proxy.toml
table inet coremesh
delete table inet coremesh
table inet coremesh {
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta mark 0x0000434d return
\t\tmeta skuid { 0 } return
\t\toifname \"lo\" return
\t\ttcp dport { 22, 53 } return
\t\tmeta nfproto ipv4 meta l4proto tcp redirect to :15001
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta nfproto ipv4 tcp dport { 8080 } redirect to :15006
\t}
}
"
    );
}

/// Only the directions the proxy serves get a chain; an IPv6 listener
/// gets IPv6 traffic.
#[test]
fn ruleset_follows_the_sections() {
    let inbound_only = config(
        "[proxy]\nservice = \"api\"\n[inbound]\nlisten = \"[::]:15006\"\napp = \"[::1]:8080\"\n[intercept]\n",
    );
    let r = ruleset(&inbound_only).unwrap();
    assert!(!r.contains("chain output"), "{r}");
    assert!(
        r.contains("meta nfproto ipv6 tcp dport { 8080 } redirect to :15006"),
        "{r}"
    );
    let outbound_only = config(&format!(
        "{BOTH}[intercept]\ninbound_ports = []\nmark = 5\n"
    ));
    let r = ruleset(&outbound_only).unwrap();
    assert!(!r.contains("chain prerouting"), "{r}");
    assert!(r.contains("meta mark 0x00000005 return"), "{r}");
    let e = ruleset(&config(BOTH)).unwrap_err().to_string();
    assert_eq!(
        e,
        "/etc/coremesh/proxy.toml: no [intercept] section: nothing to redirect (add [intercept], see --help)"
    );
}

/// A connection nothing redirected has no original destination of its
/// own: the listener's address comes back, or no NAT entry at all.
#[test]
fn a_direct_connection_has_no_original_destination() {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    assert_eq!(original_dst(s.as_raw_fd()).unwrap(), None);
    assert!(original_dst(-1).is_err());
}
