use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coremesh-upgrade-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("upgrade.sock");
    let _ = std::fs::remove_file(&path);
    path
}

/// The old side: serves the handover of `sockets` on `path` on its own
/// thread; returns what `serve` returned.
fn old_side(path: &Path, sockets: Vec<(String, OwnedFd)>) -> std::thread::JoinHandle<Option<u32>> {
    let unix = listen(path).unwrap();
    unix.set_nonblocking(true).unwrap();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let l = tokio::net::UnixListener::from_std(unix).unwrap();
            serve(l, path, sockets).await
        })
    })
}

#[test]
fn a_successor_takes_the_same_listening_socket_and_the_old_side_returns_on_ready() {
    let path = temp_socket("ok");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let old = old_side(
        &path,
        vec![("inbound".into(), OwnedFd::from(tcp.try_clone().unwrap()))],
    );

    let mut new = Inherited::take_over(&path).unwrap();
    // Port 0 in the config: the inherited port is taken.
    let want: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let taken = new.tcp("inbound", want).expect("inherited");
    assert_eq!(taken.local_addr().unwrap(), addr);
    assert!(new.tcp("outbound", want).is_none(), "nothing of that name");
    new.ready().unwrap();
    assert_eq!(old.join().unwrap(), Some(std::process::id()));

    // The old copy closed: the successor's socket still takes connections.
    drop(tcp);
    let mut c = TcpStream::connect(addr).unwrap();
    let (mut s, _) = taken.accept().unwrap();
    s.write_all(b"hi").unwrap();
    let mut got = [0u8; 2];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");
}

#[test]
fn a_listener_moved_in_the_config_is_bound_anew() {
    let path = temp_socket("moved");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let old = old_side(&path, vec![("admin".into(), OwnedFd::from(tcp))]);
    let mut new = Inherited::take_over(&path).unwrap();
    let elsewhere: SocketAddr = "127.0.0.2:0".parse().unwrap();
    assert!(new.tcp("admin", elsewhere).is_none());
    new.ready().unwrap();
    assert!(old.join().unwrap().is_some());
}

#[test]
fn a_successor_that_fails_before_ready_leaves_the_old_side_serving() {
    let path = temp_socket("fail");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let old = old_side(&path, vec![("outbound".into(), OwnedFd::from(tcp))]);
    // Takes the sockets, then dies without a word.
    drop(Inherited::take_over(&path).unwrap());
    // A rude one says something else.
    let mut rude = UnixStream::connect(&path).unwrap();
    rude.write_all(b"hello?\n").unwrap();
    drop(rude);
    // The next one succeeds.
    let new = Inherited::take_over(&path).unwrap();
    new.ready().unwrap();
    assert!(old.join().unwrap().is_some());
}

#[test]
fn a_stale_socket_file_is_replaced_but_a_live_one_is_not() {
    let path = temp_socket("stale");
    drop(UnixListener::bind(&path).unwrap()); // the file stays behind
    let live = listen(&path).expect("stale file replaced");
    assert!(matches!(listen(&path), Err(UpgradeError::InUse { .. })));
    drop(live);
}

#[test]
fn a_successor_gets_the_same_arguments_and_one_upgrade_from() {
    let args = [
        "--config",
        "/etc/coremesh/api.toml",
        "--upgrade-from",
        "/old.sock",
        "--log-format=json",
    ]
    .map(std::ffi::OsString::from);
    let got = successor_args(args.into_iter(), Path::new("/run/api.sock"));
    let want = [
        "--config",
        "/etc/coremesh/api.toml",
        "--log-format=json",
        "--upgrade-from",
        "/run/api.sock",
    ]
    .map(std::ffi::OsString::from);
    assert_eq!(got, want);
    let args = ["--upgrade-from=/x", "--config", "c"].map(std::ffi::OsString::from);
    assert_eq!(
        successor_args(args.into_iter(), Path::new("/s")),
        ["--config", "c", "--upgrade-from", "/s"].map(std::ffi::OsString::from)
    );
}
