//! A snapshot of the engine for `lanrage status`: one row per relay and per
//! peer, plus the counted drops.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub virtual_ip: Ipv4Addr,
    pub relays: Vec<RelayStatus>,
    pub peers: Vec<PeerStatus>,
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
    /// The relay the session goes through, by name; `None` before the
    /// first handshake.
    pub path: Option<String>,
    /// The path's RTT from the engine's pings (once a second while the
    /// peer is active); before any, WireGuard's RTT of the last handshake.
    pub rtt: Option<Duration>,
    /// The path's jitter, from the same pings.
    pub jitter: Duration,
    /// Lost pings, 0.0–1.0 (before any ping: boringtun's estimate).
    pub loss: f32,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub since_last_handshake: Option<Duration>,
}
