//! Starts the real coremesh-control binary on loopback ports the OS picks,
//! with a fresh data directory, and runs meshctl against it.

#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Control {
    pub child: Child,
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub api: SocketAddr,
}

static N: AtomicU32 = AtomicU32::new(0);

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-control-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Control {
    /// Starts control with its data in `dir/data`.
    pub fn start(dir: &Path, extra: &[&str]) -> Control {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coremesh-control"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(extra)
            // Control's own log only when asked for (RUST_LOG=info cargo test).
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start coremesh-control");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (quic, api) = loop {
            assert!(
                Instant::now() < deadline,
                "control did not say it was listening"
            );
            let line = lines
                .next()
                .expect("control exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening ").nth(1) {
                let mut quic = None;
                let mut api = None;
                for part in rest.split_whitespace() {
                    if let Some(a) = part.strip_prefix("quic=") {
                        quic = a.parse().ok();
                    }
                    if let Some(a) = part.strip_prefix("api=") {
                        api = a.parse().ok();
                    }
                }
                break (quic.unwrap(), api.unwrap());
            }
        };
        // Keep draining stdout so control never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Control {
            child,
            dir: dir.to_path_buf(),
            quic,
            api,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn meshctl(&self, args: &[&str]) -> Output {
        self.meshctl_stdin(args, None)
    }

    pub fn meshctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
        cmd.arg("--api")
            .arg(format!("https://{}", self.api))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("COREMESH_API")
            .env_remove("COREMESH_CREDENTIAL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run meshctl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// meshctl left running (`meshctl tap`), its stdout piped.
    pub fn meshctl_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .arg("--api")
            .arg(format!("https://{}", self.api))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("COREMESH_API")
            .env_remove("COREMESH_CREDENTIAL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run meshctl")
    }

    /// meshctl that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill();
    }
}

pub const EXAMPLE: &str = r#"
kind: Service
name: api
protocol: http
---
kind: Route
name: api-canary
service: api
rules:
  - match: { headers: { x-canary: "true" } }
    backends: [ { subset: { version: v2 } } ]
  - match: { pathPrefix: / }
    timeout: 2s
    retries: { attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }
    backends:
      - { subset: { version: v1 }, weight: 90 }
      - { subset: { version: v2 }, weight: 10 }
"#;
