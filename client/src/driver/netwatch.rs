//! This host's addresses, and notice when they (or its routes) change: the
//! engine's host candidates, and its cue that the network changed
//! (`docs/client.md`, "Direct paths").
//!
//! The notice is a netlink route socket subscribed to address, route and
//! link changes. Its messages are not parsed: any of them means "look
//! again", and the engine ignores a look that finds nothing new.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// The socket's port on each IPv4 address of an interface that is up, not
/// loopback and not `skip` (our own TUN): where a peer on one of our
/// networks can reach us.
pub fn local_addresses(port: u16, skip: &str) -> Vec<SocketAddr> {
    let Ok(addrs) = getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        if a.interface_name == skip
            || !a.flags.contains(InterfaceFlags::IFF_UP)
            || a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(ip) = a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())) else {
            continue;
        };
        // Link-local addresses change with every link and route nowhere.
        if ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() {
            continue;
        }
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The IPv4 default route's interface and gateway, from /proc/net/route:
/// a new one means another uplink even when our addresses stay the same.
pub fn default_route() -> Option<(String, std::net::Ipv4Addr)> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_route(&table)
}

/// `/proc/net/route`'s columns: Iface, Destination, Gateway (hex, in
/// network byte order read as a little-endian number), Flags, ...
fn parse_default_route(table: &str) -> Option<(String, std::net::Ipv4Addr)> {
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let iface = fields.next()?;
        let destination = fields.next()?;
        let gateway = u32::from_str_radix(fields.next()?, 16).ok()?;
        (destination == "00000000").then(|| {
            (
                iface.to_owned(),
                std::net::Ipv4Addr::from(gateway.to_le_bytes()),
            )
        })
    })
}

/// A netlink socket that becomes readable when an address, route or link
/// changes.
pub struct NetWatch {
    fd: OwnedFd,
}

impl NetWatch {
    pub fn new() -> nix::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        let groups = libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups as u32))?;
        Ok(Self { fd })
    }

    /// Reads every waiting notice (bounded); whether there was any.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        for _ in 0..256 {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) | Err(_) => break,
                Ok(_) => any = true,
            }
        }
        any
    }
}

impl AsRawFd for NetWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_never_a_candidate() {
        let addrs = local_addresses(51900, "lanrage-test-none");
        assert!(
            addrs
                .iter()
                .all(|a| !a.ip().is_loopback() && a.port() == 51900),
            "{addrs:?}"
        );
    }

    #[test]
    fn the_default_route_is_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(
            parse_default_route(table),
            Some(("eth0".to_owned(), std::net::Ipv4Addr::new(192, 168, 1, 1)))
        );
        assert_eq!(parse_default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn the_watch_opens_and_drains_without_blocking() {
        let watch = NetWatch::new().expect("a netlink route socket");
        // Nothing changed (or something did): either way it returns.
        let _ = watch.drain();
    }
}
