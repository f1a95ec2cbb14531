//! `kind: Resilience` through meshctl and the HTTP API against the real
//! coremesh-control: apply, get (table, YAML, JSON), refusals that name the
//! document and field, delete (and the deletes it blocks), history and
//! rollback. What each proxy's snapshot holds is tested beside the hub
//! (src/hub/tests.rs) and the view (src/view.rs).

mod common;

use common::{temp_dir, Control};

const MESH: &str = "
kind: Service
name: api
---
kind: Service
name: api-shadow
---
kind: Resilience
service: api
loadBalancer: { ring-hash: { header: x-user } }
circuitBreaker: { maxConnections: 1000, maxPending: 100, maxRequests: 1000 }
outlierDetection: { consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }
retryBudget: { ratio: 0.5, minPerSecond: 5 }
rateLimit: { requestsPerSecond: 100, burst: 20, per: caller }
mirror: { service: api-shadow, percent: 10 }
";

#[test]
fn apply_get_refuse_delete_and_roll_back() {
    let dir = temp_dir("resilience");
    std::fs::create_dir_all(&dir).unwrap();
    let control = Control::start(&dir, &[]);

    let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(MESH));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.contains("version 1: resilience/api, service/api, service/api-shadow"),
        "{out}"
    );

    let table = control.ok(&["get", "resiliences"]);
    assert!(
        table.contains("Resilience")
            && table.contains("service api, ring-hash(header x-user), circuitBreaker, outlierDetection, retryBudget 0.5 + 5/s, rateLimit 100/s per caller, mirror api-shadow 10%"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "resilience", "-o", "json"])).unwrap();
    assert_eq!(json[0]["kind"], "Resilience");
    assert_eq!(json[0]["service"], "api");
    assert_eq!(json[0]["loadBalancer"]["ring-hash"]["header"], "x-user");
    assert_eq!(json[0]["outlierDetection"]["baseEjection"], "30s");
    assert_eq!(json[0]["mirror"]["percent"], 10.0);
    let yaml = control.ok(&["get", "resilience", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Resilience\nservice: api\n") && yaml.contains("per: caller"),
        "{yaml}"
    );
    // What `get -o yaml` prints applies back unchanged.
    let again = control.meshctl_stdin(&["apply", "-f", "-"], Some(&yaml));
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));

    // Refusals: exit 1, document, resource, field and reason.
    for (bad, says) in [
        (
            "kind: Resilience\nservice: api\nfaults: { abort: { percent: 5, status: 200 } }\n",
            "document 1 (resilience/api): faults.abort.status: 200 is not an error status (400..=599)",
        ),
        (
            "kind: Resilience\nservice: web\n",
            "resilience/web: service: service \"web\" does not exist; apply a `kind: Service` named web first",
        ),
        (
            "kind: Resilience\nservice: api\nmirror: { service: nope }\n",
            "resilience/api: mirror.service: service \"nope\" does not exist",
        ),
        (
            "kind: Resilience\nservice: api\nhealthCheck: { path: /healthz }\n",
            "unknown field `path`",
        ),
    ] {
        let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(bad));
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: {err}");
    }

    // The service and the mirror stay while the Resilience does.
    for service in ["api", "api-shadow"] {
        let out = control.meshctl(&["delete", "service", service]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("resilience/api"), "{err}");
    }
    let out = control.ok(&["delete", "resilience", "api"]);
    assert!(out.contains("version 2: resilience/api"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "resiliences", "-o", "json"])).unwrap();
    assert_eq!(json, serde_json::json!([]));
    let out = control.meshctl(&["delete", "resilience", "api"]);
    assert_eq!(out.status.code(), Some(1));

    let history = control.ok(&["history"]);
    assert!(history.contains("delete resilience/api"), "{history}");
    control.ok(&["rollback", "--to", "1"]);
    let json: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "resiliences", "-o", "json"])).unwrap();
    assert_eq!(json[0]["rateLimit"]["per"], "caller");
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
