//! `#[repr(C)]` mirrors of the map layouts in `bpf/lanrage_xdp.h`.
//!
//! The header is the definition; `tests/layout.rs` compiles it with the host C
//! compiler and checks every size, offset and counter value below against it.
//! Addresses and ports are in network byte order, as in the packet headers.

use std::net::{Ipv4Addr, SocketAddrV4};

/// `struct lrg_route_key`: one established session as seen from one source.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RouteKey {
    /// IPv4 source address, network byte order.
    pub src_addr: u32,
    /// UDP source port, network byte order.
    pub src_port: u16,
    /// Always zero (hash keys compare padding too).
    pub _pad: u16,
    /// WireGuard receiver index: the 4 wire bytes read as a native `u32`.
    pub receiver_index: u32,
}

impl RouteKey {
    /// The key for transport messages from `src` carrying `receiver_index`
    /// (the index's value, as `lanrage-proto` parses it from the
    /// little-endian wire bytes).
    pub fn new(src: SocketAddrV4, receiver_index: u32) -> Self {
        Self {
            src_addr: u32::from_ne_bytes(src.ip().octets()),
            src_port: src.port().to_be(),
            _pad: 0,
            receiver_index: u32::from_ne_bytes(receiver_index.to_le_bytes()),
        }
    }

    /// The source endpoint this key matches.
    pub fn src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(self.src_addr.to_ne_bytes()),
            u16::from_be(self.src_port),
        )
    }

    /// The receiver index's value.
    pub fn receiver_index(&self) -> u32 {
        u32::from_le_bytes(self.receiver_index.to_ne_bytes())
    }
}

/// `struct lrg_route_value`: where a session's packets are sent.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RouteValue {
    /// Peer IPv4 address, network byte order.
    pub dst_addr: u32,
    /// Peer UDP port, network byte order.
    pub dst_port: u16,
    /// Always zero.
    pub _pad: u16,
    /// `CLOCK_MONOTONIC` nanoseconds of the last packet the program forwarded
    /// on this route (`bpf_ktime_get_ns`); 0 = none yet.
    pub last_seen_ns: u64,
}

impl RouteValue {
    /// A route to `peer`, not yet used.
    pub fn new(peer: SocketAddrV4) -> Self {
        Self {
            dst_addr: u32::from_ne_bytes(peer.ip().octets()),
            dst_port: peer.port().to_be(),
            _pad: 0,
            last_seen_ns: 0,
        }
    }

    /// The peer endpoint packets are sent to.
    pub fn peer(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            Ipv4Addr::from(self.dst_addr.to_ne_bytes()),
            u16::from_be(self.dst_port),
        )
    }
}

/// `struct lrg_config`: the single entry of the config map.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Config {
    /// Relay IPv4 address, network byte order; 0 = reply from the address
    /// each packet was sent to.
    pub relay_addr: u32,
    /// Relay UDP port, network byte order; 0 = not configured (all pass).
    pub relay_port: u16,
    /// Always zero.
    pub _pad: u16,
}

impl Config {
    /// The config for a relay listening on `relay` (the address may be
    /// unspecified: `0.0.0.0`).
    pub fn new(relay: SocketAddrV4) -> Self {
        Self {
            relay_addr: u32::from_ne_bytes(relay.ip().octets()),
            relay_port: relay.port().to_be(),
            _pad: 0,
        }
    }
}

/// `enum lrg_counter`: the per-CPU counter slots, one per verdict and reason.
/// Every packet the program sees increments exactly one.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Forwarded (`XDP_TX`) with MACs from `bpf_fib_lookup`.
    Tx = 0,
    /// Forwarded (`XDP_TX`) with the MACs swapped because the FIB lookup failed.
    TxFibFallback = 1,
    /// Not Ethernet + IPv4.
    PassNotIpv4 = 2,
    /// IPv4 header with options.
    PassIpOptions = 3,
    /// IPv4 fragment.
    PassIpFragment = 4,
    /// IPv4 but not UDP.
    PassNotUdp = 5,
    /// UDP not addressed to the relay's port (or address).
    PassWrongPort = 6,
    /// WireGuard handshake initiation, response or cookie reply.
    PassHandshake = 7,
    /// LANrage control, STUN, or anything else that isn't WireGuard.
    PassNotTransport = 8,
    /// WireGuard transport type, but shorter than 32 bytes.
    PassShort = 9,
    /// Transport message without a route.
    PassRouteMiss = 10,
    /// The relay port is not configured.
    PassNoConfig = 11,
    /// Truncated frame or inconsistent IPv4/UDP lengths.
    PassMalformed = 12,
}

impl Counter {
    /// Every slot, in index order (`ALL[i] as usize == i`).
    pub const ALL: [Counter; 13] = [
        Counter::Tx,
        Counter::TxFibFallback,
        Counter::PassNotIpv4,
        Counter::PassIpOptions,
        Counter::PassIpFragment,
        Counter::PassNotUdp,
        Counter::PassWrongPort,
        Counter::PassHandshake,
        Counter::PassNotTransport,
        Counter::PassShort,
        Counter::PassRouteMiss,
        Counter::PassNoConfig,
        Counter::PassMalformed,
    ];

    /// The slot's name: the C enumerator without `LRG_`, lower-cased
    /// (stable; used as a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Counter::Tx => "tx",
            Counter::TxFibFallback => "tx_fib_fallback",
            Counter::PassNotIpv4 => "pass_not_ipv4",
            Counter::PassIpOptions => "pass_ip_options",
            Counter::PassIpFragment => "pass_ip_fragment",
            Counter::PassNotUdp => "pass_not_udp",
            Counter::PassWrongPort => "pass_wrong_port",
            Counter::PassHandshake => "pass_handshake",
            Counter::PassNotTransport => "pass_not_transport",
            Counter::PassShort => "pass_short",
            Counter::PassRouteMiss => "pass_route_miss",
            Counter::PassNoConfig => "pass_no_config",
            Counter::PassMalformed => "pass_malformed",
        }
    }

    /// Whether packets counted here were forwarded by XDP.
    pub fn is_forwarded(self) -> bool {
        matches!(self, Counter::Tx | Counter::TxFibFallback)
    }
}

// SAFETY: plain `#[repr(C)]` integers with every padding byte named, so any bit
// pattern is valid and no byte is uninitialised.
#[cfg(feature = "xdp")]
unsafe impl aya::Pod for RouteKey {}
// SAFETY: as above.
#[cfg(feature = "xdp")]
unsafe impl aya::Pod for RouteValue {}
// SAFETY: as above.
#[cfg(feature = "xdp")]
unsafe impl aya::Pod for Config {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_endpoint_and_index() {
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 51820);
        let key = RouteKey::new(src, 0x1234_5678);
        assert_eq!(key.src(), src);
        assert_eq!(key.receiver_index(), 0x1234_5678);
        // Network byte order in memory, as in the IPv4/UDP headers.
        assert_eq!(key.src_addr.to_ne_bytes(), [192, 0, 2, 7]);
        assert_eq!(key.src_port.to_ne_bytes(), 51820u16.to_be_bytes());
        // The index as its little-endian wire bytes.
        assert_eq!(key.receiver_index.to_ne_bytes(), [0x78, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn counters_are_dense_and_named() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(!c.name().is_empty());
        }
    }
}
