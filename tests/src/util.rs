//! Small helpers: per-test temp dirs, free ports, the body pattern and checksum.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A directory under the system temp dir, unique to one test, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "coremesh-e2e-{}-{}-{}-{}",
            label,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the dir and returns the full path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loopback address nobody listens on: bound to port 0, then closed. A
/// connect to it is refused (the port is not reused this quickly in practice).
pub fn unused_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// FNV-1a, 64 bit: a position-sensitive checksum that can be fed in pieces,
/// so streamed bodies are verified without holding them.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Length of the repeating block of the body pattern; a prime, so the pattern
/// does not line up with any buffer size a proxy might use.
const BLOCK_LEN: usize = 65_521;

fn block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..BLOCK_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// A deterministic byte stream of a given length, generated on the fly, so
/// 100 MiB bodies never sit in memory. Byte `i` is the same wherever it is
/// produced (client, origin, or when computing the expected checksum).
pub struct Pattern {
    offset: u64,
    len: u64,
}

impl Pattern {
    pub fn new(len: u64) -> Pattern {
        Pattern { offset: 0, len }
    }

    /// Fills up to `buf.len()` bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let block = block();
        let want = buf.len().min((self.len - self.offset) as usize);
        let mut done = 0;
        while done < want {
            let at = ((self.offset + done as u64) % BLOCK_LEN as u64) as usize;
            let n = (BLOCK_LEN - at).min(want - done);
            buf[done..done + n].copy_from_slice(&block[at..at + n]);
            done += n;
        }
        self.offset += want as u64;
        want
    }

    pub fn remaining(&self) -> u64 {
        self.len - self.offset
    }
}

/// The checksum of the first `len` bytes of the pattern.
pub fn pattern_checksum(len: u64) -> u64 {
    let mut p = Pattern::new(len);
    let mut h = Fnv64::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = p.fill(&mut buf);
        if n == 0 {
            return h.value();
        }
        h.update(&buf[..n]);
    }
}

/// Strips ANSI escape sequences (colours in human-readable logs).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether the suite runs under CI (`CI` set to anything but empty/false/0).
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Whether `program` can be run (found on PATH).
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_split_invariant() {
        let mut whole = Fnv64::new();
        let mut p = Pattern::new(200_000);
        let mut buf = vec![0u8; 200_000];
        assert_eq!(p.fill(&mut buf), 200_000);
        whole.update(&buf);

        let mut pieces = Fnv64::new();
        let mut p = Pattern::new(200_000);
        let mut small = [0u8; 777];
        loop {
            let n = p.fill(&mut small);
            if n == 0 {
                break;
            }
            pieces.update(&small[..n]);
        }
        assert_eq!(whole.value(), pieces.value());
        assert_eq!(whole.value(), pattern_checksum(200_000));
        assert_ne!(pattern_checksum(200_000), pattern_checksum(199_999));
    }

    #[test]
    fn ansi_is_stripped() {
        let s = "\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m bound \u{1b}[3minbound\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5";
        assert_eq!(strip_ansi(s), "2024  INFO bound inbound=127.0.0.1:5");
    }
}
