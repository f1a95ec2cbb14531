use super::writer::Counters;
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
        request_id: b"rid-1",
        trace_id: None,
        caller: None,
    }
}

/// A writer on `path` counting into `counters`, and a shard's log on it.
fn open(path: &std::path::Path, counters: &'static Counters) -> (Writer, AccessLog) {
    let w = Writer::start(path, counters).unwrap();
    let log = AccessLog::new(w.sink());
    (w, log)
}

/// Waits (5 s at most) for the writer thread to get somewhere.
fn wait_until(f: impl Fn() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            std::time::Instant::now() < until,
            "the writer did not catch up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

const JSON: AccessLogFormat = AccessLogFormat::Json;
const TEXT: AccessLogFormat = AccessLogFormat::Text;

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
    static C: Counters = Counters::new();
    let (w, mut log) = open(&path, &C);
    let nasty: &[u8] = b"/a\"b\\c\n\x1b[31m\xff\xfe/\xc3\xa9t\xc3";
    log.log(&entry(b"/ok", 200), JSON);
    let mut e = entry(nasty, 0);
    e.upstream = None;
    e.direction = Direction::Inbound;
    log.log(&e, JSON);
    // Nothing written before a flush.
    assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    log.flush();
    drop(w);
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
    assert_eq!(lines[0]["request_id"], "rid-1");
    assert_eq!(lines[0]["trace_id"], serde_json::Value::Null);
    assert_eq!(lines[0]["caller"], serde_json::Value::Null);
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
fn hands_whole_lines_over_past_64k_and_on_drop() {
    static C: Counters = Counters::new();
    let path = temp_path("big");
    let long = vec![b'x'; 1000];
    let (w, mut log) = open(&path, &C);
    let mut n = 0;
    loop {
        log.log(&entry(&long, 200), JSON);
        n += 1;
        if log.lines == 0 {
            break;
        }
        assert!(n < 1000, "never handed over");
    }
    // The hand-over is immediate; the write follows on the thread.
    wait_until(|| C.written() == n as u64);
    let written = std::fs::read(&path).unwrap();
    assert!(written.len() > FLUSH_AT);
    assert_eq!(written.last(), Some(&b'\n'));
    log.log(&entry(b"/last", 204), JSON);
    drop(log);
    drop(w);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), n + 1);
    assert_eq!(C.written(), n as u64 + 1);
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
    format_json(&mut out, &e, UNIX_EPOCH);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["grpc_status"], 14);
}

/// The local app on its Unix socket file is `"upstream":"unix"`.
#[test]
fn a_unix_app_is_logged_as_unix() {
    let mut e = entry(b"/", 200);
    e.upstream = Some(crate::config::UNIX_APP);
    let mut out = Vec::new();
    format_json(&mut out, &e, UNIX_EPOCH);
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["upstream"], "unix");
    out.clear();
    format_text(&mut out, &e, UNIX_EPOCH);
    assert!(String::from_utf8(out).unwrap().contains(" upstream=unix "));
}

#[test]
fn json_carries_request_id_trace_id_and_caller() {
    let t = *b"4bf92f3577b34da6a3ce929d0e0e4736";
    let e = AccessEntry {
        trace_id: Some(&t),
        caller: Some("spiffe://mesh.test/service/web"),
        request_id: b"a\"b",
        ..entry(b"/", 200)
    };
    let mut out = Vec::new();
    format_json(&mut out, &e, UNIX_EPOCH);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["caller"], "spiffe://mesh.test/service/web");
    assert_eq!(v["request_id"], "a\"b");
}

#[test]
fn text_lines_look_like_the_combined_format() {
    let t = *b"4bf92f3577b34da6a3ce929d0e0e4736";
    let e = AccessEntry {
        trace_id: Some(&t),
        caller: Some("spiffe://mesh.test/service/web"),
        grpc_status: Some(14),
        ..entry(b"/a?x=1", 503)
    };
    let mut out = Vec::new();
    format_text(
        &mut out,
        &e,
        UNIX_EPOCH + Duration::from_millis(1_709_251_199_123),
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "- - spiffe://mesh.test/service/web [29/Feb/2024:23:59:59 +0000] \"GET /a?x=1 HTTP/1.1\" 503 345 \
         request_id=\"rid-1\" trace_id=4bf92f3577b34da6a3ce929d0e0e4736 direction=outbound service=api \
         authority=\"api:80\" upstream=10.0.0.7:8080 duration_us=1234 bytes_in=12 core=1 grpc_status=14\n"
    );
    // No caller, no trace, no upstream: `-`; untrusted bytes escaped.
    let e = AccessEntry {
        upstream: None,
        request_id: b"x\" y\x1b\xff",
        ..entry(b"/\"\\\x7f\xc3\xa9", 0)
    };
    let mut out = Vec::new();
    format_text(&mut out, &e, UNIX_EPOCH);
    let line = String::from_utf8(out).unwrap();
    assert!(
        line.starts_with("- - - [01/Jan/1970:00:00:00 +0000] \"GET /\\\"\\\\\\x7f\\xc3\\xa9 HTTP/1.1\" 0 345 request_id=\"x\\\" y\\x1b\\xff\" trace_id=- "),
        "{line}"
    );
    assert!(line.contains(" upstream=- "), "{line}");
    assert!(line
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\n'));
}

#[test]
fn trace_ids_come_from_valid_traceparents_only() {
    let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        trace_id(good).as_ref().map(|t| &t[..]),
        Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
    );
    // A later version may append fields.
    assert!(trace_id(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    for bad in [
        &b""[..],
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01x",
    ] {
        assert_eq!(trace_id(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

/// A writer that falls behind costs lines, counted, never a wait: with the
/// thread's queue full, the shard's hand-over drops the buffer.
#[test]
fn a_full_queue_drops_and_counts_lines() {
    static C: Counters = Counters::new();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let sink = Sink::for_test(tx, &C);
    let mut log = AccessLog::new(sink);
    log.log(&entry(b"/1", 200), JSON);
    log.flush();
    // The queue (one buffer) is full now and nobody reads it.
    log.log(&entry(b"/2", 200), JSON);
    log.log(&entry(b"/3", 200), TEXT);
    log.flush();
    assert_eq!(C.dropped_queue_full(), 2);
    // The buffer was kept for the next lines, emptied.
    assert_eq!(log.lines, 0);
    assert!(log.buf.is_empty());
    drop(rx);
}

/// SIGUSR1's reopen: after the file is moved away, lines handed over go
/// to a new file at the path.
#[test]
fn reopen_starts_a_new_file_at_the_path() {
    static C: Counters = Counters::new();
    let path = temp_path("reopen");
    let moved = path.with_extension("log.1");
    let (w, mut log) = open(&path, &C);
    log.log(&entry(b"/before", 200), JSON);
    log.flush();
    wait_until(|| C.written() == 1);
    std::fs::rename(&path, &moved).unwrap();
    w.sink().reopen();
    log.log(&entry(b"/after", 200), TEXT);
    log.flush();
    drop(w);
    let old = std::fs::read_to_string(&moved).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");
    assert!(new.contains("/after") && !new.contains("/before"), "{new}");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&moved);
}
