//! The routes that make a LAN game's broadcast and multicast leave through
//! the TUN (`docs/lan-discovery.md`, "Capture"): while the interface is up,
//! 255.255.255.255/32 and 224.0.0.0/4 point at it, and it has the MULTICAST
//! flag. (The subnet's broadcast address is the TUN address's, `tun.rs`.)
//!
//! Everything here is on the TUN device, so the kernel removes it with the
//! device, on every exit, a crash included. The one change that would
//! outlive us is a route of the user's that ours had to displace (same
//! destination, same metric 0: e.g. `224.0.0.0/4 dev eth0`, which some
//! multicast guides tell people to add). Such a route is written to the
//! journal *before* it is deleted, put back when the interface goes down,
//! and, after a crash, put back by the next start in the same boot
//! ([`repair`]). An entry that can't be put back stays in the journal and
//! is tried again at the next start.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use netlink_packet_core::{
    Emitable as _, Parseable as _, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use base64::Engine as _;

use super::rtnl::Rtnl;
use super::state::write_replacing;

/// The routing protocol number on our routes, so `ip route` shows whose
/// they are (`proto 76`; 76 is unassigned in iproute2's rt_protos).
pub const RTPROT_LANRAGE: u8 = 76;

/// The destinations routed to the TUN: limited broadcast, and all of IPv4
/// multicast.
pub const CAPTURED: [(Ipv4Addr, u8); 2] =
    [(Ipv4Addr::BROADCAST, 32), (Ipv4Addr::new(224, 0, 0, 0), 4)];

/// The routes we added and the user's routes we displaced.
pub struct Capture {
    interface: String,
    index: u32,
    journal: PathBuf,
    displaced: Vec<Displaced>,
}

/// A route of the user's that ours replaced, as the kernel described it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Displaced {
    /// For people reading the journal: `224.0.0.0/4 dev eth0`.
    route: String,
    /// The route message, base64: the kernel's dump of it, with the status
    /// flags the kernel refuses on a new route (linkdown, dead) cleared.
    netlink: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    interface: String,
    /// The kernel's boot id when the journal was written: routes from an
    /// earlier boot are gone anyway (the system sets its own up again), and
    /// the interface indexes in them mean other devices now.
    #[serde(default)]
    boot_id: String,
    displaced: Vec<Displaced>,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Capture {
    /// Routes broadcast and multicast to `interface` (which must exist and
    /// be up). Displaced routes go to `journal` first.
    pub fn install(interface: &str, journal: &Path) -> anyhow::Result<Self> {
        let index = nix::net::if_::if_nametoindex(interface)
            .with_context(|| format!("interface {interface}: not found"))?;
        let mut rtnl = Rtnl::new().context("cannot open a netlink socket")?;
        set_multicast_flag(&mut rtnl, index)
            .with_context(|| format!("interface {interface}: cannot set MULTICAST"))?;
        // What an earlier run displaced and couldn't put back is still
        // ours to put back: kept, so that journalling more doesn't lose it.
        let left = read_journal(journal)?
            .map(|j| j.displaced)
            .unwrap_or_default();
        let mut capture = Self {
            interface: interface.to_owned(),
            index,
            journal: journal.to_owned(),
            displaced: left,
        };
        for (destination, prefix_len) in CAPTURED {
            capture
                .add_route(&mut rtnl, destination, prefix_len)
                .with_context(|| {
                    format!("cannot route {destination}/{prefix_len} to {interface}")
                })?;
        }
        tracing::info!(%interface, displaced = capture.displaced.len(), "broadcast and multicast routed to the virtual LAN");
        Ok(capture)
    }

    fn add_route(
        &mut self,
        rtnl: &mut Rtnl,
        destination: Ipv4Addr,
        prefix_len: u8,
    ) -> anyhow::Result<()> {
        let ours = our_route(destination, prefix_len, self.index);
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        match rtnl.request(RouteNetlinkMessage::NewRoute(ours.clone()), flags) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // A route with this destination and metric is there already.
        for route in main_routes(rtnl)? {
            if !same_slot(&route, destination, prefix_len) {
                continue;
            }
            if oif(&route) == Some(self.index) {
                // Ours, from an earlier install on this same device.
                return Ok(());
            }
            let displaced = Displaced {
                route: describe(&route),
                netlink: encode(&emit(&restorable(&route))),
            };
            // Journalled first: once it is deleted, the journal is the
            // only record of it.
            let mut journalled = self.displaced.clone();
            journalled.push(displaced);
            write_journal(&self.journal, &self.interface, &journalled)?;
            self.displaced = journalled;
            rtnl.request(RouteNetlinkMessage::DelRoute(route), 0)?;
            tracing::warn!(route = %self.displaced.last().map_or("", |d| &d.route), "displaced a route to the virtual LAN; it is put back when LANrage goes down");
        }
        rtnl.request(RouteNetlinkMessage::NewRoute(ours), flags)?;
        Ok(())
    }

    /// Takes our routes away (if the device is still there) and puts back
    /// what they displaced.
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        let Ok(mut rtnl) = Rtnl::new() else {
            tracing::warn!("cannot open a netlink socket; the routes go with the interface");
            return;
        };
        for (destination, prefix_len) in CAPTURED {
            let ours = our_route(destination, prefix_len, self.index);
            match rtnl.request(RouteNetlinkMessage::DelRoute(ours), 0) {
                Ok(_) => {}
                // Gone with the device, or removed by someone else.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENODEV)) => {}
                Err(e) => tracing::warn!(%destination, error = %e, "cannot remove our route"),
            }
        }
        if !self.displaced.is_empty() {
            let left = put_back(&mut rtnl, std::mem::take(&mut self.displaced));
            keep_or_remove(&self.journal, &self.interface, &left);
        }
    }
}

fn write_journal(path: &Path, interface: &str, displaced: &[Displaced]) -> anyhow::Result<()> {
    let journal = Journal {
        interface: interface.to_owned(),
        boot_id: boot_id(),
        displaced: displaced.to_vec(),
    };
    write_replacing(path, &serde_json::to_vec_pretty(&journal)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The journal after a put-back: removed if everything is back, else
/// rewritten with what is still missing (tried again at the next start).
fn keep_or_remove(path: &Path, interface: &str, left: &[Displaced]) {
    let result = if left.is_empty() {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    } else {
        write_journal(path, interface, left)
    };
    if let Err(e) = result {
        tracing::warn!(journal = %path.display(), "{e:#}");
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// At start: puts back the routes a crashed run displaced (its journal),
/// then forgets them.
pub fn repair(journal: &Path) -> anyhow::Result<()> {
    let Some(found) = read_journal(journal)? else {
        return Ok(());
    };
    let mut rtnl = Rtnl::new().context("cannot open a netlink socket")?;
    tracing::info!(interface = %found.interface, routes = found.displaced.len(), "putting back routes a previous run displaced");
    let left = put_back(&mut rtnl, found.displaced);
    keep_or_remove(journal, &found.interface, &left);
    Ok(())
}

/// Adds each route again, in the order they were displaced (appended, so
/// two that shared the slot both come back), and returns those that could
/// not be: kept for another try, except one whose device is gone.
/// The journal at `path`, if there is one of this boot: an unreadable one
/// or one from an earlier boot is removed.
fn read_journal(path: &Path) -> anyhow::Result<Option<Journal>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let Ok(found) = serde_json::from_slice::<Journal>(&text) else {
        tracing::warn!(journal = %path.display(), "unreadable route journal; removing it");
        let _ = std::fs::remove_file(path);
        return Ok(None);
    };
    if found.boot_id != boot_id() {
        tracing::info!(journal = %path.display(), "route journal from an earlier boot; removing it");
        let _ = std::fs::remove_file(path);
        return Ok(None);
    }
    Ok(Some(found))
}

fn put_back(rtnl: &mut Rtnl, displaced: Vec<Displaced>) -> Vec<Displaced> {
    let mut left = Vec::new();
    for d in displaced {
        let Some(route) = decode(&d.netlink).and_then(|b| RouteMessage::parse(&b[..]).ok()) else {
            tracing::warn!(route = %d.route, "journal entry unreadable; not put back");
            continue;
        };
        match rtnl.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_APPEND,
        ) {
            Ok(_) => tracing::info!(route = %d.route, "route put back"),
            // The very same route is there already.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                tracing::warn!(route = %d.route, "the route's device is gone; not put back");
            }
            Err(e) => {
                tracing::warn!(route = %d.route, error = %e, "cannot put the route back; trying again at the next start");
                left.push(d);
            }
        }
    }
    left
}

/// The route as it can be added again: the status flags the kernel sets
/// on a dumped route (linkdown, dead, offload, ...) refuse a new one, so
/// only onlink, which a user sets, is kept.
fn restorable(route: &RouteMessage) -> RouteMessage {
    let mut route = route.clone();
    route.header.flags &= RouteFlags::Onlink;
    for attribute in &mut route.attributes {
        if let RouteAttribute::MultiPath(hops) = attribute {
            for hop in hops {
                hop.flags &= RouteNextHopFlags::Onlink;
            }
        }
    }
    route
}

/// Our route: `DESTINATION/PREFIX dev INDEX scope link proto 76`, in the
/// main table, metric 0.
fn our_route(destination: Ipv4Addr, prefix_len: u8, index: u32) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.destination_prefix_length = prefix_len;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Other(RTPROT_LANRAGE);
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![
        RouteAttribute::Destination(RouteAddress::Inet(destination)),
        RouteAttribute::Oif(index),
    ];
    route
}

fn main_routes(rtnl: &mut Rtnl) -> io::Result<Vec<RouteMessage>> {
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    let answers = rtnl.request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP)?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .filter(|r| table(r) == u32::from(RouteHeader::RT_TABLE_MAIN))
        .collect())
}

/// Whether `route` is the one a route of ours to this destination collides
/// with: same destination and prefix, TOS 0, metric 0.
fn same_slot(route: &RouteMessage, destination: Ipv4Addr, prefix_len: u8) -> bool {
    let dst = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    });
    let metric = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    route.header.destination_prefix_length == prefix_len
        && route.header.tos == 0
        && dst == Some(destination)
        && metric.unwrap_or(0) == 0
}

fn table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn describe(route: &RouteMessage) -> String {
    let mut out = String::new();
    for a in &route.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                out = format!("{ip}/{}{out}", route.header.destination_prefix_length);
            }
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => out.push_str(&format!(" via {ip}")),
            RouteAttribute::Oif(i) => {
                let name = nix::net::if_::if_indextoname(*i)
                    .ok()
                    .and_then(|n| n.into_string().ok())
                    .unwrap_or_else(|| i.to_string());
                out.push_str(&format!(" dev {name}"));
            }
            _ => {}
        }
    }
    out
}

fn set_multicast_flag(rtnl: &mut Rtnl, index: u32) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Multicast;
    link.header.change_mask = LinkFlags::Multicast;
    rtnl.request(RouteNetlinkMessage::SetLink(link), 0)?;
    Ok(())
}

fn emit(route: &RouteMessage) -> Vec<u8> {
    let mut buf = vec![0u8; route.buffer_len()];
    route.emit(&mut buf);
    buf
}

/// The journal's text for route bytes (base64, as the keys are written).
fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_survives_the_journal_byte_for_byte() {
        let route = our_route(Ipv4Addr::new(224, 0, 0, 0), 4, 7);
        let text = encode(&emit(&route));
        let back = decode(&text)
            .and_then(|b| RouteMessage::parse(&b[..]).ok())
            .expect("parses");
        assert_eq!(back, route);
        assert!(same_slot(&back, Ipv4Addr::new(224, 0, 0, 0), 4));
        assert!(!same_slot(&back, Ipv4Addr::BROADCAST, 32));
        assert_eq!(oif(&back), Some(7));
        assert_eq!(decode("abc"), None);
        // A route dumped while its link was down is added back without
        // the flags the kernel refuses.
        let mut down = route;
        down.header.flags = RouteFlags::Linkdown | RouteFlags::Dead | RouteFlags::Onlink;
        assert_eq!(restorable(&down).header.flags, RouteFlags::Onlink);
        assert_eq!(decode("zz"), None);
    }
}
