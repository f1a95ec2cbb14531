use super::*;

fn entry<'a>(path: &'a [u8], status: u16) -> AccessEntry<'a> {
    AccessEntry {
        direction: Direction::Outbound,
        service: "api",
        method: b"GET",
        authority: b"api:80",
        path,
        status,
        duration: Duration::from_micros(1234),
        bytes_in: 12,
        bytes_out: 345,
        upstream: Some("10.0.0.7:8080".parse().unwrap()),
        core: 1,
        protocol: "HTTP/1.1",
        grpc_status: None,
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "coremesh-accesslog-{}-{name}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(59), (1970, 3, 1));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(civil_from_days(20_088), (2024, 12, 31));
    let mut out = Vec::new();
    push_rfc3339_millis(
        &mut out,
        UNIX_EPOCH + Duration::from_millis(1_709_251_199_123),
    );
    assert_eq!(out, b"2024-02-29T23:59:59.123Z");
}

#[test]
fn lines_are_json_and_escaped() {
    let path = temp_path("escape");
    let mut log = AccessLog::open(&path).unwrap();
    let nasty: &[u8] = b"/a\"b\\c\n\x1b[31m\xff\xfe/\xc3\xa9t\xc3";
    log.log(&entry(b"/ok", 200));
    let mut e = entry(nasty, 0);
    e.upstream = None;
    e.direction = Direction::Inbound;
    log.log(&e);
    // Nothing written before a flush.
    assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    log.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["path"], "/ok");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["duration_us"], 1234);
    assert_eq!(lines[0]["bytes_out"], 345);
    assert_eq!(lines[0]["upstream"], "10.0.0.7:8080");
    assert_eq!(lines[0]["core"], 1);
    assert_eq!(lines[0]["direction"], "outbound");
    assert_eq!(lines[0]["protocol"], "HTTP/1.1");
    assert_eq!(lines[0].get("grpc_status"), None);
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        lines[1]["path"],
        "/a\"b\\c\n\u{1b}[31m\\xff\\xfe/\u{e9}t\\xc3"
    );
    assert_eq!(lines[1]["upstream"], serde_json::Value::Null);
    assert_eq!(lines[1]["direction"], "inbound");
    // No raw control byte reaches the file.
    assert!(!text.bytes().any(|b| b < 0x20 && b != b'\n'));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn flushes_whole_lines_past_64k_and_on_drop() {
    let path = temp_path("big");
    let long = vec![b'x'; 1000];
    let mut log = AccessLog::open(&path).unwrap();
    let mut n = 0;
    while std::fs::metadata(&path).unwrap().len() == 0 {
        log.log(&entry(&long, 200));
        n += 1;
        assert!(n < 1000, "never flushed");
    }
    let written = std::fs::read(&path).unwrap();
    assert!(written.len() > FLUSH_AT);
    assert_eq!(written.last(), Some(&b'\n'));
    log.log(&entry(b"/last", 204));
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), n + 1);
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn grpc_calls_carry_their_status() {
    let mut out = Vec::new();
    let e = AccessEntry {
        protocol: "HTTP/2",
        grpc_status: Some(14),
        ..entry(b"/pkg.Echo/Unary", 200)
    };
    format_line(&mut out, &e, UNIX_EPOCH);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["grpc_status"], 14);
}

/// The local app on its Unix socket file is `"upstream":"unix"`.
#[test]
fn a_unix_app_is_logged_as_unix() {
    let path = temp_path("unix");
    let mut log = AccessLog::open(&path).unwrap();
    let mut e = entry(b"/", 200);
    e.upstream = Some(crate::config::UNIX_APP);
    log.log(&e);
    log.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(line["upstream"], "unix", "{text}");
}
