//! TCP services (issue 5): an app's byte stream to a database-like server
//! through the mesh, over mutual TLS, with half-close, large transfers,
//! AccessPolicy by caller identity, and byte/connection metrics.
//!
//! ```text
//!  client ──TCP──▶ web proxy [[outbound.tcp]] db ══mTLS══▶ db proxy [inbound] ──TCP──▶ echo server
//!  client ──TCP──▶ batch proxy [[outbound.tcp]] db ══mTLS══▶ (denied by db-access)
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{ControlBuilder, MeshProxy, Proxy, ProxyBuilder};

/// A TCP echo server: each connection's bytes come back as they arrive;
/// when the client half-closes, the server finishes writing and closes.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                // The client's half-close arrived: answer with ours.
                let _ = w.write_all(b"<eof seen>");
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// The local address of `proxy`'s `[[outbound.tcp]]` listener for `service`.
fn tcp_listener(proxy: &Proxy, service: &str) -> SocketAddr {
    let config = proxy.admin_get("/config").json();
    config["bound"]["tcp"][service]
        .as_str()
        .unwrap_or_else(|| panic!("no tcp listener for {service}: {config}"))
        .parse()
        .unwrap()
}

/// Sends `data` then half-closes; returns everything read until EOF.
fn round_trip(addr: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || {
        let res = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
        res
    });
    let mut got = Vec::new();
    let res = s.read_to_end(&mut got);
    let _ = writer.join();
    res.map(|_| got)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_tcp_service_carries_a_stream_with_half_close_and_policy_by_identity() {
    let control = ControlBuilder::new().start();
    let echo = echo_server();
    let members = [
        control.member("db", "db-1"),
        control.member("web", "web-1"),
        control.member("batch", "batch-1"),
    ];
    let db = ProxyBuilder::new("db")
        .inbound(echo)
        .inbound_key("protocol", "\"tcp\"")
        .control(&control.section(&members[0]))
        .start();
    let caller = |name: &str, m| {
        ProxyBuilder::new(name)
            .outbound()
            .extra("[[outbound.tcp]]\nservice = \"db\"\nlisten = \"127.0.0.1:0\"\n")
            .control(&control.section(m).calls(&["db"]))
            .start()
    };
    let web = caller("web", &members[1]);
    let batch = caller("batch", &members[2]);
    control.apply(
        "kind: Service\nname: db\nprotocol: tcp\n---\nkind: Service\nname: web\n---\nkind: Service\nname: batch\n---\n\
         kind: AccessPolicy\nname: db-access\nservice: db\ndefault: deny\nrules:\n  - from: [web]\n",
    );
    let web_db = tcp_listener(&web, "db");
    let batch_db = tcp_listener(&batch, "db");

    // Small first, until the policy and endpoints have arrived everywhere.
    let ready = wait_for(Duration::from_secs(15), || {
        let got = round_trip(web_db, b"ping".to_vec()).ok()?;
        (got == b"ping<eof seen>").then_some(())
    });
    assert!(ready.is_some(), "web never reached db");

    // 8 MiB each way, and the client's half-close reaches the server while
    // the server's answer still flows back.
    let data = pattern(8 << 20);
    let got = round_trip(web_db, data.clone()).unwrap();
    assert_eq!(got.len(), data.len() + 10);
    assert!(got[..data.len()] == data[..], "the stream was altered");
    assert_eq!(&got[data.len()..], b"<eof seen>");

    // batch is a mesh member too, but db-access only lets web in.
    let denied = round_trip(batch_db, b"let me in".to_vec()).unwrap_or_default();
    assert!(
        denied.is_empty(),
        "batch got {:?}",
        String::from_utf8_lossy(&denied)
    );

    // A relay is counted when it ends (both directions closed).
    let inbound = [("direction", "inbound"), ("service", "db")];
    let counted = wait_for(Duration::from_secs(5), || {
        let m = db.metrics();
        (m.sum("coremesh_tcp_connections_total", &inbound) >= 2.0).then_some(m)
    });
    let m = counted.expect("db proxy counted the relays");
    assert!(m.sum("coremesh_tcp_sent_bytes_total", &inbound) >= data.len() as f64);
    assert!(m.sum("coremesh_tcp_received_bytes_total", &inbound) >= data.len() as f64);
    assert!(
        m.sum(
            "coremesh_authz_denied_total",
            &[
                ("policy", "db-access"),
                ("caller", "spiffe://coremesh.local/service/batch")
            ]
        ) >= 1.0
    );
    let outbound = [("direction", "outbound"), ("service", "db")];
    let sent = wait_for(Duration::from_secs(5), || {
        let n = web
            .metrics()
            .sum("coremesh_tcp_sent_bytes_total", &outbound);
        (n >= data.len() as f64).then_some(n)
    });
    assert!(sent.is_some(), "web proxy did not count the bytes");
}
