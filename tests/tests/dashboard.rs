//! The dashboard in a real browser: `scripts/quickstart.sh` starts its mesh
//! (control, web → api v1/v2 → db, the 90/10 route) with this build's
//! binaries, the test puts it under steady load, and
//! `tests/browser/dashboard.mjs` drives Debian's headless Chromium through
//! playwright-core: it logs in, checks the cookie and the CSRF rule, reads
//! Proxies, diffs two History versions and rolls back through the confirm
//! dialog, sees web, api and db with non-zero rps on their edges in
//! Topology, opens `api` and finds the live 90/10 split, and logs out.
//! Screenshots go to `<target>/dashboard-screenshots/`.
//!
//! Needs `scripts/install-deps.sh` (chromium, node, and playwright-core in
//! tests/browser/node_modules); the test fails, saying so, without them.
//! scripts/test.sh runs it alone, after the rest of the e2e suite.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremesh_e2e::control::control_bin;
use coremesh_e2e::TempDir;

/// The quickstart builds nothing here, but starts nine processes and waits
/// for them to converge.
const QUICKSTART_TIMEOUT: Duration = Duration::from_secs(120);
/// The browser test's own waits are bounded; this bounds the whole run.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
/// Load on web: each thread sends one request per LOAD_INTERVAL, or as
/// fast as answers come (the debug build's whole chain: about 20-40 req/s
/// here in all).
const LOAD_THREADS: u64 = 4;
const LOAD_INTERVAL: Duration = Duration::from_millis(50);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace().join(t),
        None => workspace().join("target"),
    }
}

/// The quickstart running with `--keep`; on drop it gets SIGTERM (its
/// trap stops every process it started and removes its directory).
struct Quickstart {
    child: Child,
    log: PathBuf,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Quickstart {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// KEY=VALUE lines.
fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One GET to the web app (which calls api, which calls db); true on 200.
fn get_once(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

#[test]
fn the_dashboard_shows_the_quickstart_mesh_under_load() {
    let browser_dir = workspace().join("tests/browser");
    assert!(
        browser_dir
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed in tests/browser/node_modules: run scripts/install-deps.sh"
    );
    let chromium = std::env::var("COREMESH_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "no {chromium}: run scripts/install-deps.sh (Debian package chromium)"
    );

    let work = TempDir::new("dashboard");
    let info = work.path().join("info");
    let log = work.path().join("quickstart.out");
    let bin_dir = control_bin()
        .parent()
        .expect("the binary is in a directory")
        .to_path_buf();
    let child = Command::new("bash")
        .arg(workspace().join("scripts/quickstart.sh"))
        .arg("--keep")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--info")
        .arg(&info)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("create the log"))
        .stderr(Stdio::from(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("open the log"),
        ))
        .spawn()
        .expect("run scripts/quickstart.sh");
    let mut quickstart = Quickstart { child, log };

    let deadline = Instant::now() + QUICKSTART_TIMEOUT;
    let info = loop {
        if let Ok(text) = std::fs::read_to_string(&info) {
            break parse_info(&text);
        }
        if let Ok(Some(status)) = quickstart.child.try_wait() {
            panic!(
                "quickstart.sh exited ({status}) before the mesh was up:\n{}",
                quickstart.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "quickstart.sh did not bring the mesh up within {QUICKSTART_TIMEOUT:?}:\n{}",
            quickstart.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let dashboard = info["DASHBOARD_URL"].clone();
    let out = quickstart.output();
    assert!(
        out.contains(&format!("dashboard:    {dashboard}"))
            && out.contains("log in with the operator credential"),
        "the quickstart prints where the dashboard is and how to log in:\n{out}"
    );

    // Steady load on web for as long as the browser looks.
    let web: SocketAddr = info["WEB_URL"]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("WEB_URL is http://ADDR/");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..LOAD_THREADS)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + LOAD_INTERVAL;
                    if get_once(web) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();

    let shots = target_dir().join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut browser = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .current_dir(&browser_dir)
        .env("COREMESH_DASHBOARD_URL", &dashboard)
        .env("COREMESH_CREDENTIAL_FILE", &info["CREDENTIAL_FILE"])
        .env("COREMESH_SCREENSHOT_DIR", &shots)
        .env("COREMESH_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (scripts/install-deps.sh installs it)");
    let (mut stdout, mut stderr) = (
        browser.stdout.take().expect("piped"),
        browser.stderr.take().expect("piped"),
    );
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = browser.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = browser.kill();
            let _ = browser.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    let (out, err) = (
        out_reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    );
    println!("{out}");
    eprintln!("{err}");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("load on web: {ok} requests answered 200, {failed} not");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "the browser test failed ({s}); screenshots in {}:\n{out}\n{err}\nquickstart:\n{}",
            shots.display(),
            quickstart.output()
        ),
        None => panic!("the browser test did not finish within {BROWSER_TIMEOUT:?}:\n{out}\n{err}"),
    }
    assert!(ok > 0, "the load reached web ({failed} failed)");
    for name in ["login", "proxies", "history", "topology", "service-api"] {
        assert!(
            shots.join(format!("{name}.png")).is_file(),
            "screenshot {name}.png saved"
        );
    }
    drop(quickstart);
}
