//! The original destination of a redirected connection.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Where the client sent this accepted connection before nftables
/// redirected it here (`SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST`
/// for IPv6, from the connection's conntrack entry). `None`: it was not
/// redirected (the app connected to the listener itself, or the kernel
/// tracks no NAT for it).
///
/// Two syscalls, once per accepted connection, and only on a proxy with
/// `[intercept]`.
pub fn original_dst(fd: RawFd) -> io::Result<Option<SocketAddr>> {
    let local = socket_addr(fd, None)?;
    let opt = if local.is_ipv6() {
        (libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)
    } else {
        (libc::SOL_IP, libc::SO_ORIGINAL_DST)
    };
    match socket_addr(fd, Some(opt)) {
        Ok(dst) if dst == local => Ok(None),
        Ok(dst) => Ok(Some(dst)),
        // ENOENT: no conntrack entry; ENOPROTOOPT: no NAT in this kernel
        // or namespace. Either way nothing redirected the connection.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOPROTOOPT)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The socket's local address (`opt: None`, getsockname) or the address
/// option `(level, name)` (getsockopt).
fn socket_addr(fd: RawFd, opt: Option<(libc::c_int, libc::c_int)>) -> io::Result<SocketAddr> {
    // SAFETY: `try_init` hands the closure a zeroed sockaddr_storage and
    // its length, and trusts the closure to fill at most that many bytes
    // and set the length: getsockname and getsockopt do exactly that, on a
    // descriptor the caller owns for the duration of the call. An invalid
    // descriptor is an error return (EBADF), not undefined behaviour.
    let (_, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let rc = match opt {
                None => libc::getsockname(fd, storage.cast(), len),
                Some((level, name)) => libc::getsockopt(fd, level, name, storage.cast(), len),
            };
            if rc == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }?;
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket's address is not an IP address",
        )
    })
}
