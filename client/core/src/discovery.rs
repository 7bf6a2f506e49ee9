//! LAN game discovery (`docs/lan-discovery.md`): which IP packets are the
//! broadcast and multicast of the virtual LAN segment, and the per-member
//! rate limit on them.
//!
//! A LAN game finds others by sending UDP to 255.255.255.255, the subnet's
//! broadcast address, or a multicast group. The engine copies such a packet,
//! unchanged, into every party member's session; each receiver writes it to
//! its TUN with the sender's source address and port and the original
//! destination. This module decides, for one packet, whether it is such a
//! packet ([`Scope::Segment`]), traffic that must stay on this PC
//! ([`Scope::Local`]: IGMP, routing protocols, the link-local control
//! groups), or ordinary unicast.
//!
//! Loops can't form: a sender copies only packets whose source is its own
//! virtual address (the engine checks), and a received copy's source is
//! another member's, so even if a receiver's kernel sent one out again it
//! would stop at the receiver's engine.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// IP protocol number of UDP, the only protocol whose broadcast and
/// multicast cross (every game and service-discovery protocol is UDP; IGMP,
/// OSPF, PIM and VRRP are link control and stay local).
const UDP: u8 = 17;

/// The group of the Local Network Control Block (224.0.0.0/24) that is
/// service discovery rather than link control, and so crosses: mDNS.
/// Everything else there stays local (RFC 5771 §4): 224.0.0.1 all hosts,
/// .2 all routers, .22 IGMPv3, routing protocols, and LLMNR (.252), which
/// no game needs and which is the classic way to poison a LAN's name
/// lookups (Responder).
const CROSSING_LINK_LOCAL_GROUPS: [Ipv4Addr; 1] = [
    Ipv4Addr::new(224, 0, 0, 251), // mDNS (RFC 6762)
];

/// Where a packet belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Addressed to one host.
    Unicast,
    /// The segment's broadcast or multicast: copied to every member.
    Segment,
    /// Broadcast or multicast that must not leave this PC.
    Local,
}

/// The scope of a packet with this destination and IP protocol, on a
/// segment whose directed broadcast address is `subnet_broadcast`.
pub fn scope(destination: Ipv4Addr, protocol: u8, subnet_broadcast: Option<Ipv4Addr>) -> Scope {
    let broadcast = destination == Ipv4Addr::BROADCAST || Some(destination) == subnet_broadcast;
    if !broadcast && !destination.is_multicast() {
        return Scope::Unicast;
    }
    if protocol != UDP {
        return Scope::Local;
    }
    let link_control = destination.octets()[..3] == [224, 0, 0];
    if link_control && !CROSSING_LINK_LOCAL_GROUPS.contains(&destination) {
        return Scope::Local;
    }
    Scope::Segment
}

/// The directed broadcast address of `address`/`prefix_len` (none for a /31
/// or /32, which have no broadcast address).
pub fn subnet_broadcast(address: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Addr> {
    if prefix_len >= 31 {
        return None;
    }
    let host_bits = u32::MAX >> prefix_len;
    Some(Ipv4Addr::from(u32::from(address) | host_bits))
}

/// How much discovery traffic one member may send: a token bucket of
/// `burst` packets refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Off: broadcast and multicast from the TUN are dropped (as before
    /// discovery existed) and copies from peers are refused.
    pub enabled: bool,
    pub per_second: u32,
    pub burst: u32,
}

impl Default for DiscoveryConfig {
    /// 100 packets a second with a burst of 100: far above what discovery
    /// needs (Minecraft announces every 1.5 s; a Warcraft III lobby
    /// refreshes once a second; an mDNS start-up probe is a handful), and
    /// still room for games that broadcast their game state. A party of 64
    /// at the full rate is 6,300 copies a second from the sender.
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 100,
            burst: 100,
        }
    }
}

/// A token bucket on the engine's clock. Tokens are kept in millionths so
/// that refills at any rate stay exact in integers.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: u64,
    capacity: u64,
    tokens: u64,
    last: Instant,
}

const MICRO: u64 = 1_000_000;

impl RateLimit {
    /// A full bucket.
    pub fn new(config: &DiscoveryConfig, now: Instant) -> Self {
        let capacity = u64::from(config.burst.max(1)) * MICRO;
        Self {
            per_second: u64::from(config.per_second),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one packet's token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        // Refill whole microseconds only, so no time is lost to rounding.
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        if micros > 0 {
            let refill = micros.saturating_mul(self.per_second);
            self.tokens = self.tokens.saturating_add(refill).min(self.capacity);
            self.last += Duration::from_micros(micros);
        }
        if self.tokens >= MICRO {
            self.tokens -= MICRO;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBNET: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 66, 255, 255));

    #[test]
    fn games_broadcast_and_multicast_cross() {
        for destination in [
            Ipv4Addr::BROADCAST,               // Warcraft III, Quake 3, Teeworlds
            Ipv4Addr::new(10, 66, 255, 255),   // subnet broadcast
            Ipv4Addr::new(224, 0, 2, 60),      // Minecraft Java
            Ipv4Addr::new(224, 0, 0, 251),     // mDNS
            Ipv4Addr::new(239, 255, 255, 250), // SSDP
        ] {
            assert_eq!(
                scope(destination, UDP, SUBNET),
                Scope::Segment,
                "{destination}"
            );
        }
    }

    #[test]
    fn link_control_and_non_udp_stay_local() {
        for destination in [
            Ipv4Addr::new(224, 0, 0, 1),   // all hosts
            Ipv4Addr::new(224, 0, 0, 2),   // all routers
            Ipv4Addr::new(224, 0, 0, 22),  // IGMPv3 reports
            Ipv4Addr::new(224, 0, 0, 9),   // RIP, which is UDP
            Ipv4Addr::new(224, 0, 0, 252), // LLMNR, which is UDP too
        ] {
            assert_eq!(
                scope(destination, UDP, SUBNET),
                Scope::Local,
                "{destination}"
            );
        }
        // IGMP (2) to any group, and a non-UDP broadcast.
        assert_eq!(scope(Ipv4Addr::new(224, 0, 2, 60), 2, SUBNET), Scope::Local);
        assert_eq!(scope(Ipv4Addr::BROADCAST, 6, SUBNET), Scope::Local);
    }

    #[test]
    fn unicast_is_unicast() {
        assert_eq!(
            scope(Ipv4Addr::new(10, 66, 1, 2), UDP, SUBNET),
            Scope::Unicast
        );
        // Another subnet's broadcast is just an address here.
        assert_eq!(
            scope(Ipv4Addr::new(192, 168, 1, 255), UDP, SUBNET),
            Scope::Unicast
        );
        assert_eq!(
            scope(Ipv4Addr::new(10, 66, 255, 255), UDP, None),
            Scope::Unicast
        );
    }

    #[test]
    fn subnet_broadcast_of_the_party_prefix() {
        assert_eq!(
            subnet_broadcast(Ipv4Addr::new(10, 66, 3, 4), 16),
            Some(Ipv4Addr::new(10, 66, 255, 255))
        );
        assert_eq!(
            subnet_broadcast(Ipv4Addr::new(192, 168, 7, 9), 24),
            Some(Ipv4Addr::new(192, 168, 7, 255))
        );
        assert_eq!(subnet_broadcast(Ipv4Addr::new(10, 0, 0, 1), 31), None);
        assert_eq!(subnet_broadcast(Ipv4Addr::new(10, 0, 0, 1), 32), None);
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let config = DiscoveryConfig {
            enabled: true,
            per_second: 100,
            burst: 10,
        };
        let start = Instant::now();
        let mut limit = RateLimit::new(&config, start);
        let burst = (0..50).filter(|_| limit.allow(start)).count();
        assert_eq!(burst, 10);
        // One second at 1,000 attempts a second: the rate, not the storm.
        let passed = (1..=1000)
            .filter(|ms| limit.allow(start + Duration::from_millis(*ms)))
            .count();
        assert_eq!(passed, 100);
        // A quiet spell refills the bucket to its burst, no more.
        let later = start + Duration::from_secs(60);
        let after_quiet = (0..50).filter(|_| limit.allow(later)).count();
        assert_eq!(after_quiet, 10);
    }

    #[test]
    fn a_zero_rate_passes_only_the_burst() {
        let config = DiscoveryConfig {
            enabled: true,
            per_second: 0,
            burst: 3,
        };
        let start = Instant::now();
        let mut limit = RateLimit::new(&config, start);
        let passed = (0..100)
            .filter(|s| limit.allow(start + Duration::from_secs(*s)))
            .count();
        assert_eq!(passed, 3);
    }
}
