//! A snapshot of the engine for `lanrage status`: one row per relay and per
//! peer, plus the counted drops.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub virtual_ip: Option<Ipv4Addr>,
    pub relays: Vec<RelayStatus>,
    pub peers: Vec<PeerStatus>,
    /// What the last NAT discovery found.
    pub nat: Option<crate::netcheck::NatReport>,
    /// The party this client is in.
    pub party: Option<crate::party::Membership>,
    /// (reason, count) for every drop reason, in a fixed order.
    pub drops: Vec<(&'static str, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelayStatus {
    pub name: String,
    pub addr: SocketAddr,
    pub registered: bool,
    pub reachable: bool,
    /// Our address as the relay sees it (server-reflexive).
    pub reflexive: Option<SocketAddr>,
    pub rtt: Option<Duration>,
    pub jitter: Duration,
    /// 0.0–1.0 over the last probes.
    pub loss: f64,
    /// Whether some peer's path goes through it.
    pub in_use: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    pub virtual_ip: Ipv4Addr,
    /// Where the session's datagrams go; `None` before the first
    /// handshake through a relay.
    pub path: Option<PeerPath>,
    /// The path's RTT from the engine's pings (once a second while the
    /// peer is active); before any, WireGuard's RTT of the last handshake.
    pub rtt: Option<Duration>,
    /// The path's jitter, from the same pings.
    pub jitter: Duration,
    /// Lost pings, 0.0–1.0 (before any ping: boringtun's estimate).
    pub loss: f32,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// LAN discovery: broadcast and multicast packets copied to this peer
    /// and received from it.
    pub discovery_sent: u64,
    pub discovery_received: u64,
    pub since_last_handshake: Option<Duration>,
}

/// The way a peer's datagrams take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPath {
    /// Through the relay of this name.
    Relay(String),
    /// Straight to the peer at this address.
    Direct(SocketAddr),
}

impl std::fmt::Display for PeerPath {
    /// `relay NAME` or `direct IP:PORT`, as `lanrage status` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerPath::Relay(name) => write!(f, "relay {name}"),
            PeerPath::Direct(addr) => write!(f, "direct {addr}"),
        }
    }
}
