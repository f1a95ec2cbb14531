//! Mirroring (`mirror: { service, percent }`): a copy of a request goes to
//! the shadow service, fire-and-forget. The copy is made from the buffer
//! the request already sits in and sent by a detached task; its response is
//! read and discarded. The primary request never waits for it, and a request
//! whose body has not fully arrived (or exceeds 64 KiB) is not mirrored, as
//! that would mean holding or re-reading the primary's body.

use super::*;
use crate::http1::HeadPlan;

/// The largest request (head and body) that is mirrored.
const MAX_MIRRORED: usize = 64 * 1024;

/// Copies in flight per shard; beyond it copies are dropped, so a hung
/// shadow cannot use up the proxy's descriptors.
const MAX_IN_FLIGHT: usize = 64;

/// Starts mirroring the request in `buf` to `target`, if it can be copied.
pub(super) fn send(
    shard: &Shard,
    table: Option<&RoutingTable>,
    target: &str,
    head: &RequestHead,
    buf: &[u8],
    extra: &[u8],
) {
    let body = match head.framing {
        Framing::None => 0,
        Framing::Length(n) => n as usize,
        _ => return,
    };
    let end = head.head_len + body;
    if end > buf.len() || end > MAX_MIRRORED || head.upgrade || head.method == Method::Connect {
        return;
    }
    if shard.mirrors_in_flight.get() >= MAX_IN_FLIGHT {
        return;
    }
    let cfg = shard.config();
    // A mesh service's peers speak mutual TLS; a static one does when
    // `[tls]` is set (as for forwarding).
    let mtls = match table.and_then(|t| t.service(target.as_bytes())) {
        Some(_) => true,
        None => static_mtls(&cfg),
    };
    let Some(eps) = table
        .and_then(|t| t.service(target.as_bytes()))
        .map(|s| s.all.clone())
        .or_else(|| {
            cfg.services
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(target))
                .map(|s| s.endpoints.clone())
        })
        .filter(|e| !e.is_empty())
    else {
        return;
    };
    let addr = eps[shard.next_rr(target) % eps.len()];
    let mut plan = HeadPlan::default();
    // The fields the proxy adds to the request (its traceparent and
    // request id): the copy is part of the same trace, a sibling of the
    // request.
    head.plan_forward(buf, extra, &mut plan);
    let mut copy = plan.to_vec(buf);
    copy.extend_from_slice(&buf[head.head_len..end]);
    let target = target.to_string();
    let method = head.method;
    let shard = shard.self_rc();
    shard
        .mirrors_in_flight
        .set(shard.mirrors_in_flight.get() + 1);
    runtime::spawn_local(async move {
        use crate::shard::budget::{Charge, Refused, REFUSALS};
        // The copy and the buffer its answer is read into, within the
        // buffer budget: refused, the request is not mirrored.
        let need = copy.len() + crate::shard::buf::BUF_SIZE;
        let charge = Charge::new(&shard.budget, None, need, cfg.limits.budgets());
        let res = match charge {
            Some(_charge) => {
                let limit = cfg.timeouts.request;
                runtime::timeout(
                    limit,
                    deliver(&shard, &cfg, &target, addr, copy, method, mtls),
                )
                .await
            }
            None => {
                REFUSALS.count(Refused::Extra);
                Ok(Ok(()))
            }
        };
        shard
            .mirrors_in_flight
            .set(shard.mirrors_in_flight.get() - 1);
        if !matches!(res, Ok(Ok(()))) {
            tracing::debug!(%addr, %target, "mirrored request failed or timed out");
        }
    });
}

async fn deliver(
    shard: &Shard,
    cfg: &Config,
    target: &str,
    addr: SocketAddr,
    copy: Vec<u8>,
    method: Method,
    mtls: bool,
) -> Result<(), ProxyError> {
    let tcp = TcpStream::connect(addr, cfg.timeouts.connect)
        .await
        .map_err(|e| ProxyError::io(ErrorKind::ConnectFailed, "mirror connect", e))?;
    let mut up = if mtls {
        upstream::connect_tls(
            shard,
            cfg,
            tcp,
            target,
            addr,
            &[crate::tls::identity::ALPN_HTTP1],
        )
        .await?
    } else {
        Conn::Plain(tcp)
    };
    let len = copy.len();
    let (res, _) = up.write_all(copy, 0..len).await;
    res.map_err(|e| ProxyError::io(ErrorKind::UpstreamReset, "mirror write", e))?;
    // The response is discarded: read its head (so the shadow sees a
    // normal exchange), then close.
    let lim = limits(cfg);
    let mut buf = shard.bufs.get();
    loop {
        let (res, back) = up.read(buf).await;
        buf = back;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => match http1::parse_response(&buf, method, &lim) {
                Ok(None) if buf.len() < buf.capacity() => {}
                _ => break,
            },
        }
    }
    shard.bufs.put(buf);
    Ok(())
}
