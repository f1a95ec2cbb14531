//! Outbound routing: the request's authority picks a mesh service.
//!
//! The authority comes from an absolute-form target (`GET http://api/x`, as
//! sent by clients honouring `http_proxy`) or the `Host` field. `api`,
//! `api.mesh`, `API.mesh.` and any of them with a port all name service
//! `api`. Anything else is refused, or with `[outbound] passthrough = true`
//! forwarded to the host it names.

use crate::config::{Config, ServiceConfig};
use crate::error::ErrorKind;
use crate::http1::{split_authority, Method, RequestHead};

/// Where an outbound request goes.
#[derive(Debug)]
pub enum Target<'a> {
    /// A mesh service from the configuration.
    Service(&'a ServiceConfig),
    /// Not a mesh service; forwarded directly (passthrough).
    Passthrough { host: String, port: u16 },
}

/// The mesh service name an authority's host names, if it has the mesh form.
fn mesh_name(host: &[u8]) -> &[u8] {
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > 5 && host[host.len() - 5..].eq_ignore_ascii_case(b".mesh") {
        &host[..host.len() - 5]
    } else {
        host
    }
}

/// Routes an outbound request.
pub fn outbound<'a>(
    cfg: &'a Config,
    head: &RequestHead,
    buf: &[u8],
) -> Result<Target<'a>, ErrorKind> {
    let span = head.authority.clone().ok_or(ErrorKind::NoAuthority)?;
    let (host, port) = split_authority(&buf[span]).map_err(|_| ErrorKind::NoAuthority)?;
    if host.is_empty() {
        return Err(ErrorKind::NoAuthority);
    }
    let name = mesh_name(host);
    if head.method != Method::Connect {
        if let Some(svc) = cfg
            .services
            .iter()
            .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
        {
            return Ok(Target::Service(svc));
        }
    }
    let passthrough = cfg.outbound.as_ref().is_some_and(|o| o.passthrough);
    if !passthrough {
        return Err(if head.method == Method::Connect {
            ErrorKind::ConnectNotAllowed
        } else {
            ErrorKind::UnknownService
        });
    }
    let host = std::str::from_utf8(host).map_err(|_| ErrorKind::NoAuthority)?;
    let default_port = if head.method == Method::Connect {
        443
    } else {
        80
    };
    Ok(Target::Passthrough {
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or(default_port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_suffix_is_optional() {
        assert_eq!(mesh_name(b"api"), b"api");
        assert_eq!(mesh_name(b"api.mesh"), b"api");
        assert_eq!(mesh_name(b"api.MESH."), b"api");
        assert_eq!(mesh_name(b".mesh"), b".mesh");
        assert_eq!(mesh_name(b"example.com"), b"example.com");
    }
}
