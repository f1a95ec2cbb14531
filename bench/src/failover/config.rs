//! The failover mesh's resources (applied to coremesh-control) and its
//! proxies' configuration files.

use std::net::SocketAddr;
use std::path::Path;

use crate::mesh::{q, qp, Member};

/// The api instances: node name (also the host and the origin's
/// `x-instance`) and its `version` label.
pub const INSTANCES: [(&str, &str); 3] = [("api-v1-a", "v1"), ("api-v1-b", "v1"), ("api-v2", "v2")];

/// The Route's `failover` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// The default: a backend without a usable endpoint gives its share to
    /// the others.
    SpillOver,
    /// A request stays in the backend drawn for it.
    Strict,
}

impl Failover {
    pub fn name(self) -> &'static str {
        match self {
            Failover::SpillOver => "spill-over",
            Failover::Strict => "strict",
        }
    }
}

/// Every resource of the mesh: the quickstart's web and api services, a
/// Route splitting api 90/10 over v1 and v2 with retries, an
/// AccessPolicy letting web call api, and api's Resilience (outlier
/// detection and active health checks on top of the defaults).
pub fn resources_yaml(failover: Failover) -> String {
    format!(
        r#"kind: Service
name: web
protocol: http
---
kind: Service
name: api
protocol: http
---
# 90/10 over the subsets; GETs are retried (idempotent only, the
# default) on a failed connect, a reset or a 5xx, in another endpoint.
kind: Route
name: api
service: api
rules:
  - match: {{ pathPrefix: / }}
    timeout: 2s
    retries: {{ attempts: 2, perTryTimeout: 500ms, on: [connect-failure, reset, 5xx] }}
    failover: {failover}
    backends:
      - {{ subset: {{ version: v1 }}, weight: 90 }}
      - {{ subset: {{ version: v2 }}, weight: 10 }}
---
kind: AccessPolicy
name: api-access
service: api
default: deny
rules:
  - from: [web]
---
# How web's proxy treats its calls to api: round-robin (every endpoint
# carries its share when the fault comes; p2c-ewma, with two endpoints in
# v1, sends nearly all of v1's share to the faster one), ejection after 5
# failures in a row, and a probe of every endpoint's proxy each second (2
# failed probes: out; 2 good ones: back).
kind: Resilience
service: api
loadBalancer: round-robin
outlierDetection: {{ consecutiveFailures: 5, baseEjection: 30s, maxEjectedPercent: 50 }}
healthCheck: {{ interval: 1s, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2 }}
retryBudget: {{ ratio: 0.2, minPerSecond: 10 }}
"#,
        failover = failover.name()
    )
}

/// The web proxy: one shard, an outbound listener on the web host's
/// loopback (the load is web's app), an access log naming the endpoint
/// of each request's last try.
pub fn web_toml(control: SocketAddr, m: &Member, access_log: &Path) -> String {
    format!(
        "# coremesh-bench failover: web's proxy; the load enters its outbound listener.\n\
         [proxy]\n\
         service = \"web\"\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         access_log = {}\n\
         \n\
         [outbound]\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         {}",
        qp(access_log),
        m.control_table(control, Some(&["api".to_string()]))
    )
}

/// An api instance's proxy: one shard, a mutual-TLS inbound listener on
/// its host's address (registered with control) in front of its origin
/// on the host's loopback, whose health it checks every second.
pub fn api_toml(
    control: SocketAddr,
    m: &Member,
    version: &str,
    inbound: SocketAddr,
    app: SocketAddr,
) -> String {
    format!(
        "# coremesh-bench failover: the proxy of {node}, in front of its origin.\n\
         [proxy]\n\
         service = \"api\"\n\
         cores = 1\n\
         admin = \"127.0.0.1:0\"\n\
         labels = {{ version = {version} }}\n\
         \n\
         [inbound]\n\
         listen = {inbound}\n\
         app = {app}\n\
         \n\
         {control}\
         \n\
         [control.health]\n\
         kind = \"http\"\n\
         path = \"/healthz\"\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n",
        node = m.node,
        version = q(version),
        inbound = q(&inbound.to_string()),
        app = q(&app.to_string()),
        control = m.control_table(control, None)
    )
}
