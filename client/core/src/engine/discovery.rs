//! The engine's half of LAN game discovery (`docs/lan-discovery.md`): a
//! broadcast or multicast packet read from the TUN is copied, unchanged,
//! into the WireGuard session of every peer (over whatever path each one
//! has); a copy that a peer's session brings is written to our TUN as it
//! came. [`crate::discovery`] says which packets those are.

use std::net::Ipv4Addr;
use std::time::Instant;

use boringtun::noise::TunnResult;

use super::{Engine, PREFIX_LEN};
use crate::discovery::{self, DiscoveryConfig, RateLimit, Scope};
use crate::DropReason;

impl Engine {
    /// The virtual LAN's directed broadcast address (10.66.255.255).
    pub(super) fn subnet_broadcast(&self) -> Option<Ipv4Addr> {
        self.virtual_ip
            .and_then(|ip| discovery::subnet_broadcast(ip, PREFIX_LEN))
    }

    /// A TUN packet addressed to no peer: copied to every peer if it is
    /// the segment's broadcast or multicast, dropped and counted if not.
    pub(super) fn handle_tun_broadcast(
        &mut self,
        now: Instant,
        source: Ipv4Addr,
        destination: Ipv4Addr,
        protocol: u8,
        packet: &[u8],
    ) {
        match discovery::scope(destination, protocol, self.subnet_broadcast()) {
            Scope::Unicast => self.count(DropReason::NoPeerForPacket),
            Scope::Local => self.count(DropReason::LocalOnly),
            Scope::Segment if !self.discovery.enabled => self.count(DropReason::NoPeerForPacket),
            Scope::Segment => self.fan_out(now, source, packet),
        }
    }

    fn fan_out(&mut self, now: Instant, source: Ipv4Addr, packet: &[u8]) {
        // Only what this PC's own programs send from its own address: a
        // packet from another address (a socket bound to a LAN address
        // that followed our route) would leak that address, and every
        // receiver would refuse it. It also means a copy we received can
        // never go out again (its source is another member's).
        if Some(source) != self.virtual_ip {
            self.count(DropReason::ForeignSource);
            return;
        }
        if self.peers.is_empty() {
            return;
        }
        if !self.discovery_out.allow(now) {
            self.count(DropReason::DiscoveryRateLimited);
            return;
        }
        let mut targets = Vec::with_capacity(self.peers.len());
        for peer in 0..self.peers.len() {
            match self.destination(now, peer) {
                Some(dst) => targets.push((peer, dst)),
                None => self.count(DropReason::NoRelay),
            }
        }
        // Copies for one address (every member behind one relay) leave back
        // to back, equal in size: the driver sends them as one GSO batch.
        targets.sort_by_key(|(_, dst)| (dst.socket, dst.addr));
        for (peer, dst) in targets {
            self.touch(now, peer);
            match self.peers[peer].tunn.encapsulate(packet, &mut self.scratch) {
                TunnResult::WriteToNetwork(datagram) => {
                    let payload = datagram.to_vec();
                    self.send_wireguard(now, peer, dst, payload);
                    self.peers[peer].discovery_sent += 1;
                }
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %self.peers[peer].spec.name, error = ?e, "encapsulate failed");
                }
                // Queued inside boringtun until the handshake completes.
                _ => self.peers[peer].discovery_sent += 1,
            }
        }
    }

    /// Whether a decrypted packet from `peer` that is not addressed to us
    /// may be written to the TUN: the segment's broadcast or multicast,
    /// within the peer's rate. Counts what it refuses.
    pub(super) fn accept_copy(&mut self, now: Instant, peer: usize, packet: &[u8]) -> bool {
        let Ok(ip) = etherparse::Ipv4HeaderSlice::from_slice(packet) else {
            self.count(DropReason::Malformed);
            return false;
        };
        let scope = discovery::scope(
            ip.destination_addr(),
            ip.protocol().0,
            self.subnet_broadcast(),
        );
        match scope {
            Scope::Segment if self.discovery.enabled => {}
            Scope::Local => {
                self.count(DropReason::LocalOnly);
                return false;
            }
            Scope::Segment | Scope::Unicast => {
                self.count(DropReason::UnexpectedDestination);
                return false;
            }
        }
        // The sender limits itself; this limit holds a sender that doesn't.
        // Twice the burst: an honest sender's packets can arrive bunched
        // (queued behind a handshake, or by the path's jitter).
        let config = DiscoveryConfig {
            burst: self.discovery.burst.saturating_mul(2),
            ..self.discovery
        };
        let limit = self.peers[peer]
            .discovery_in
            .get_or_insert_with(|| RateLimit::new(&config, now));
        if !limit.allow(now) {
            self.count(DropReason::PeerDiscoveryRateLimited);
            return false;
        }
        self.peers[peer].discovery_received += 1;
        true
    }
}
