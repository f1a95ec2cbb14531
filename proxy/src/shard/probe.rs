//! Active health checks of upstream endpoints (a Resilience `healthCheck`).
//!
//! One shard (shard 0) runs them, so an endpoint is probed once per proxy,
//! not once per core. Each probe connects to the endpoint's proxy over
//! mutual TLS (the peer must present the service's identity) and asks
//! `GET /.well-known/coremesh/health`, which that proxy answers itself from
//! its own check of its app: a probe never reaches the app and never meets
//! its authorization. 200 is a pass; anything else, or no answer within the
//! timeout, a failure. Results go to the agent, which applies the
//! thresholds and tells every shard which endpoints to avoid.
//!
//! The agent sends the whole plan ([`ProbeTarget`]s) whenever it changes;
//! probes of the previous plan stop at their next turn.

use std::rc::Rc;
use std::sync::Arc;

use crate::conn::Conn;
use crate::http1::{parse_response, Limits, Method};
use crate::msg::ProbeTarget;
use crate::runtime::{self, TcpStream};
use crate::shard::Shard;
use crate::tls::identity::{server_name, ALPN_HTTP1};
use crate::tls::{Session, TlsStream};

/// Path on the inbound listener that the proxy answers itself, for probes
/// from peer proxies and from the operator: 200 while the local app is
/// healthy (or unchecked), 503 while it is not. It never reaches the app and
/// no AccessPolicy applies to it (any caller that passed mutual TLS).
pub const PROBE_PATH: &[u8] = b"/.well-known/coremesh/health";

/// Starts probing `plan` on this shard (replacing any previous plan).
pub fn run_plan(shard: &Rc<Shard>, plan: Arc<Vec<ProbeTarget>>) {
    let generation = shard.probe_generation.get() + 1;
    shard.probe_generation.set(generation);
    for i in 0..plan.len() {
        let shard = shard.clone();
        let plan = plan.clone();
        runtime::spawn_local(async move {
            let t = &plan[i];
            // Spread the first probes over the interval.
            let offset = t.interval.mul_f64((i as f64 * 0.618_034).fract());
            runtime::sleep(offset).await;
            while shard.probe_generation.get() == generation {
                let ok = matches!(
                    runtime::timeout(t.timeout, probe(&shard, t)).await,
                    Ok(Ok(200))
                );
                if shard.probe_generation.get() != generation {
                    return;
                }
                let _ = shard.agent_link().send(crate::msg::AgentRequest::Probe {
                    service: t.service.clone(),
                    addr: t.addr,
                    ok,
                });
                runtime::sleep(t.interval).await;
            }
        });
    }
}

/// One probe: the status the endpoint's proxy answered.
async fn probe(shard: &Shard, t: &ProbeTarget) -> std::io::Result<u16> {
    let tcp = TcpStream::connect(t.addr, t.timeout).await?;
    let mut conn = match shard.tls() {
        Some(tls) => {
            let name = server_name(&t.service, t.addr)
                .ok_or_else(|| std::io::Error::other("service name is not a TLS name"))?;
            let session = Session::client_with_alpn(tls.client.clone(), name, ALPN_HTTP1)?;
            Conn::Tls(TlsStream::handshake(tcp, session, t.timeout, &shard.peers).await?)
        }
        None => Conn::Plain(tcp),
    };
    let mut req = Vec::with_capacity(128);
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(PROBE_PATH);
    req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    req.extend_from_slice(t.service.as_bytes());
    req.extend_from_slice(b"\r\nuser-agent: coremesh-probe\r\nconnection: close\r\n\r\n");
    let len = req.len();
    let (res, _) = conn.write_all(req, 0..len).await;
    res?;
    let limits = Limits {
        max_head_bytes: 4096,
        max_request_line: 4096,
        max_headers: 64,
    };
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (res, back) = conn.read(buf).await;
        buf = back;
        if res? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match parse_response(&buf, Method::Get, &limits) {
            Ok(Some(head)) => return Ok(head.status),
            Ok(None) if buf.len() < buf.capacity() => {}
            Ok(None) | Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}
