//! Unix stream sockets for the tests: [`UnixFront`] puts a socket file in
//! front of a TCP server (an [`Origin`](crate::Origin), an
//! [`H2Origin`](crate::H2Origin)), so an app "listens on a Unix socket"
//! while the test still reads what the origin received.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A Unix socket file whose every connection is relayed, byte for byte and
/// with half-closes passed on, to a TCP address. Dropped: it stops
/// accepting and removes its socket file, as a stopped app does.
pub struct UnixFront {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl UnixFront {
    /// Listens on `path` (which must not exist) and relays to `to`.
    pub fn start(path: &Path, to: SocketAddr) -> UnixFront {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind unix:{}: {e}", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (sp, n) = (stop.clone(), connections.clone());
        let acceptor = std::thread::Builder::new()
            .name("unix-front".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sp.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    n.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || {
                        if let Ok(up) = TcpStream::connect(to) {
                            let _ = relay(conn, up);
                        }
                    });
                }
            })
            .expect("spawn unix-front thread");
        UnixFront {
            path: path.to_path_buf(),
            stop,
            connections,
            acceptor: Some(acceptor),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `unix:PATH`, as proxy.toml writes it.
    pub fn address(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for UnixFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and closes the listener.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Both directions until each has ended; a direction's EOF is passed on as
/// a half-close.
fn relay(a: UnixStream, b: TcpStream) -> io::Result<()> {
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    let back = std::thread::spawn(move || {
        let _ = io::copy(&mut b2, &mut a2);
        let _ = a2.shutdown(Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = io::copy(&mut a, &mut b);
    let _ = b.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}
