//! Conversions between the kernel's `sockaddr_storage` and `SocketAddr`.
//!
//! On a dual-stack IPv6 socket the kernel reports IPv4 peers as IPv4-mapped
//! IPv6 addresses (`::ffff:a.b.c.d`). They are turned into plain IPv4 here,
//! and back when sending, so the router keys one endpoint by one address
//! whichever family the socket has.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{c_int, sa_family_t, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};

/// Reads an address the kernel wrote. `None` for other families or a short length.
pub(crate) fn to_std(storage: &sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<sockaddr_in>() => {
            // SAFETY: the family is AF_INET and the kernel wrote a whole
            // sockaddr_in; sockaddr_storage is large and aligned enough for it.
            let sin = unsafe { &*(storage as *const sockaddr_storage).cast::<sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6 and sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const sockaddr_storage).cast::<sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Some(SocketAddr::V4(SocketAddrV4::new(v4, port)));
            }
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` in the form a socket of the given family sends to, and
/// returns its length. `None` if that socket cannot reach the address (an
/// IPv6 destination on an IPv4 socket).
pub(crate) fn from_std(
    addr: SocketAddr,
    v6_socket: bool,
    storage: &mut sockaddr_storage,
) -> Option<socklen_t> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    *storage = unsafe { mem::zeroed() };
    let v4 = match addr {
        SocketAddr::V4(v4) => Some(v4),
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, v6.port())),
    };
    match (v4, v6_socket) {
        (Some(v4), false) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in, and was zeroed above, so sin_zero is zero.
            let sin = unsafe { &mut *(storage as *mut sockaddr_storage).cast::<sockaddr_in>() };
            sin.sin_family = libc::AF_INET as sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            Some(mem::size_of::<sockaddr_in>() as socklen_t)
        }
        (Some(v4), true) => write_v6(storage, v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        (None, true) => match addr {
            SocketAddr::V6(v6) => {
                write_v6(storage, *v6.ip(), v6.port(), v6.flowinfo(), v6.scope_id())
            }
            SocketAddr::V4(_) => None,
        },
        (None, false) => None,
    }
}

fn write_v6(
    storage: &mut sockaddr_storage,
    ip: Ipv6Addr,
    port: u16,
    flowinfo: u32,
    scope_id: u32,
) -> Option<socklen_t> {
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6,
    // and the caller zeroed it.
    let sin6 = unsafe { &mut *(storage as *mut sockaddr_storage).cast::<sockaddr_in6>() };
    sin6.sin6_family = libc::AF_INET6 as sa_family_t;
    sin6.sin6_port = port.to_be();
    sin6.sin6_flowinfo = flowinfo;
    sin6.sin6_addr.s6_addr = ip.octets();
    sin6.sin6_scope_id = scope_id;
    Some(mem::size_of::<sockaddr_in6>() as socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(addr: SocketAddr, v6_socket: bool) -> Option<SocketAddr> {
        // SAFETY: all zeroes is a valid sockaddr_storage.
        let mut storage: sockaddr_storage = unsafe { mem::zeroed() };
        let len = from_std(addr, v6_socket, &mut storage)?;
        to_std(&storage, len)
    }

    #[test]
    fn ipv4_round_trips_on_both_socket_families() {
        let addr: SocketAddr = "192.0.2.7:51888".parse().expect("addr");
        assert_eq!(round_trip(addr, false), Some(addr));
        assert_eq!(round_trip(addr, true), Some(addr));
    }

    #[test]
    fn ipv6_round_trips_with_flow_and_scope() {
        let addr = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().expect("ip"),
            4000,
            7,
            3,
        ));
        assert_eq!(round_trip(addr, true), Some(addr));
        assert_eq!(round_trip(addr, false), None);
    }

    #[test]
    fn mapped_ipv4_becomes_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.51.100.9]:1234".parse().expect("addr");
        let plain: SocketAddr = "198.51.100.9:1234".parse().expect("addr");
        assert_eq!(round_trip(mapped, true), Some(plain));
        assert_eq!(round_trip(mapped, false), Some(plain));
    }

    #[test]
    fn ipv4_on_ipv6_socket_is_written_mapped() {
        // SAFETY: all zeroes is a valid sockaddr_storage.
        let mut storage: sockaddr_storage = unsafe { mem::zeroed() };
        let addr: SocketAddr = "203.0.113.1:9".parse().expect("addr");
        let len = from_std(addr, true, &mut storage).expect("fits");
        assert_eq!(len as usize, mem::size_of::<sockaddr_in6>());
        assert_eq!(c_int::from(storage.ss_family), libc::AF_INET6);
    }

    #[test]
    fn short_or_unknown_addresses_are_rejected() {
        // SAFETY: all zeroes is a valid sockaddr_storage.
        let mut storage: sockaddr_storage = unsafe { mem::zeroed() };
        assert_eq!(to_std(&storage, 128), None);
        let len =
            from_std("192.0.2.1:1".parse().expect("addr"), false, &mut storage).expect("fits");
        assert_eq!(to_std(&storage, len - 1), None);
    }
}
