//! The optional access log: one JSON line per request, written by each core
//! from its own buffer (flushed about once a second and on shutdown).

use std::time::Duration;

use coremesh_e2e::util::wait_for;
use coremesh_e2e::{Origin, ProxyBuilder};

#[test]
fn access_log_has_one_json_line_per_request() {
    let api = Origin::start("api");
    let dir = std::env::temp_dir().join(format!("coremesh-accesslog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let proxy = ProxyBuilder::new("web")
        .outbound()
        .service("api", &[api.addr()])
        .proxy_key("access_log", &format!("{:?}", path.display().to_string()))
        .start();

    let mut c = proxy.outbound_client();
    assert_eq!(c.get("api", "/a?x=1").status, 200);
    assert_eq!(c.get("api", "/status/503").status, 503);
    assert_eq!(c.get("nope", "/b").status, 404);

    let lines = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect();
        (lines.len() >= 3).then_some(lines)
    })
    .unwrap_or_else(|| panic!("3 access log lines within 5 s; log: {}", proxy.log_tail(20)));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["direction"], "outbound");
    assert_eq!(lines[0]["service"], "api");
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/a?x=1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["upstream"], api.addr().to_string());
    assert_eq!(lines[1]["status"], 503);
    assert_eq!(lines[2]["status"], 404);
    assert_eq!(lines[2]["service"], "unknown");
    let _ = std::fs::remove_dir_all(&dir);
}
