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

/// The mesh of the first test without the denied caller: web reaches `app`
/// as TCP service db. Returns web's local listener for db.
struct TcpMesh {
    db: Proxy,
    listener: SocketAddr,
    _web: Proxy,
    // Dropped last: the members hold the proxies' state dirs.
    _members: [coremesh_e2e::Member; 2],
    _control: coremesh_e2e::Control,
}

fn tcp_mesh(app: SocketAddr) -> TcpMesh {
    let control = ControlBuilder::new().start();
    let db_m = control.member("db", "db-1");
    let web_m = control.member("web", "web-1");
    let db = ProxyBuilder::new("db")
        .inbound(app)
        .inbound_key("protocol", "\"tcp\"")
        .control(&control.section(&db_m))
        .start();
    let web = ProxyBuilder::new("web")
        .outbound()
        .extra("[[outbound.tcp]]\nservice = \"db\"\nlisten = \"127.0.0.1:0\"\n")
        .control(&control.section(&web_m).calls(&["db"]))
        .start();
    control.apply("kind: Service\nname: db\nprotocol: tcp\n---\nkind: Service\nname: web\n");
    let listener = tcp_listener(&web, "db");
    TcpMesh {
        db,
        listener,
        _web: web,
        _members: [db_m, web_m],
        _control: control,
    }
}

/// Skips (or, under CI, fails) when `program` is not installed.
fn require(program: &str, package: &str) -> bool {
    if coremesh_e2e::util::have_program(program) {
        return true;
    }
    assert!(
        !coremesh_e2e::util::under_ci(),
        "{program} is not installed (Debian package {package}; scripts/install-deps.sh installs it)"
    );
    eprintln!("SKIPPED: {program} is not installed (Debian package {package})");
    false
}

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Python asyncio streams server: reads each connection to EOF (the
/// client's half-close), then answers with the byte count and SHA-256 of
/// what it read, and closes. Prints its port first.
const PY_SERVER: &str = r#"
import asyncio, hashlib, sys
async def serve(reader, writer):
    h = hashlib.sha256(); n = 0
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        h.update(chunk); n += len(chunk)
    writer.write(f"{n} {h.hexdigest()}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// A Python asyncio streams client: sends argv[2] bytes of a fixed pattern
/// to port argv[1], half-closes, and prints what it sent (count, SHA-256)
/// and what came back.
const PY_CLIENT: &str = r#"
import asyncio, hashlib, sys
async def main():
    port, size = int(sys.argv[1]), int(sys.argv[2])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = bytes((i * 7) % 251 for i in range(size))
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 60)
    print(f"{size} {hashlib.sha256(data).hexdigest()}")
    print(reply.decode().strip())
    writer.close()
asyncio.run(main())
"#;

#[test]
fn python_asyncio_streams_cross_the_mesh_with_half_close() {
    if !require("python3", "python3") {
        return;
    }
    let mut server = std::process::Command::new("python3")
        .args(["-c", PY_SERVER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the python server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _server = Child(server);
    let app: SocketAddr = format!("127.0.0.1:{}", line.trim()).parse().unwrap();
    let mesh = tcp_mesh(app);
    let listener = mesh.listener;

    let run = |size: usize| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                PY_CLIENT,
                &listener.port().to_string(),
                &size.to_string(),
            ])
            .output()
            .expect("run the python client");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        (out.status.success() && lines.len() == 2 && lines[0] == lines[1]).then_some(text)
    };
    let ready = wait_for(Duration::from_secs(15), || run(5));
    assert!(
        ready.is_some(),
        "the python client never reached the server"
    );
    // 4 MiB: the server sees every byte, in order, and the client's
    // half-close; its answer comes back after it.
    let big = run(4 << 20);
    assert!(
        big.is_some(),
        "4 MiB through the mesh did not arrive intact"
    );
}

#[test]
fn redis_cli_talks_to_redis_server_through_the_mesh() {
    if !require("redis-server", "redis-server") || !require("redis-cli", "redis-tools") {
        return;
    }
    let dir = coremesh_e2e::util::TempDir::new("redis");
    // redis-server takes a port number; pick a free one and retry on a race.
    let (redis, port) = (0..5)
        .find_map(|_| {
            let port = coremesh_e2e::util::unused_port().port();
            let mut child = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start redis-server");
            let up = wait_for(Duration::from_secs(5), || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            });
            if up.is_some() && child.try_wait().ok().flatten().is_none() {
                Some((Child(child), port))
            } else {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        })
        .expect("redis-server did not start");
    let _redis = redis;
    let app: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mesh = tcp_mesh(app);
    let (db, listener) = (&mesh.db, mesh.listener);

    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &listener.port().to_string()])
            .args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        if let Some(data) = stdin {
            let mut w = c.stdin.take().unwrap();
            w.write_all(data).unwrap();
        }
        let out = c.wait_with_output().unwrap();
        if !out.status.success() {
            eprintln!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ready = wait_for(Duration::from_secs(15), || {
        (cli(&["PING"], None) == "PONG").then_some(())
    });
    assert!(ready.is_some(), "redis-cli never got PONG through the mesh");

    // A 1 MiB value in (from stdin, -x) and back out, byte for byte.
    let value: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(cli(&["-x", "SET", "big"], Some(&value)), "OK");
    assert_eq!(cli(&["STRLEN", "big"], None), (value.len()).to_string());
    assert_eq!(cli(&["GET", "big"], None).as_bytes(), &value[..]);
    // A pipeline of 1000 commands in one go (redis-cli --pipe).
    let mut pipe = Vec::new();
    for i in 0..1000 {
        pipe.extend_from_slice(format!("SET k{i} v{i}\r\n").as_bytes());
    }
    let report = cli(&["--pipe"], Some(&pipe));
    assert!(report.contains("errors: 0, replies: 1000"), "{report}");
    assert_eq!(cli(&["GET", "k999"], None), "v999");

    let inbound = [("direction", "inbound"), ("service", "db")];
    let counted = wait_for(Duration::from_secs(5), || {
        let m = db.metrics();
        let sent = m.sum("coremesh_tcp_sent_bytes_total", &inbound);
        let back = m.sum("coremesh_tcp_received_bytes_total", &inbound);
        (sent >= value.len() as f64 && back >= value.len() as f64).then_some(())
    });
    assert!(
        counted.is_some(),
        "the db proxy did not count the SET's and the GET's bytes"
    );
}
