//! What the engine is told at start: its key, the relays, and either the
//! peers (configured by hand) or the party it remembers. The driver builds
//! it from the user's config file and its state file.

use std::net::{Ipv4Addr, SocketAddr};

use lanrage_proto::x25519::StaticSecret;
use lanrage_proto::PeerKey;

/// A relay to register with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    pub name: String,
    pub addr: SocketAddr,
    pub key: PeerKey,
}

/// A peer on the virtual LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub key: PeerKey,
    /// Its address on the virtual LAN; the only source address accepted
    /// from its tunnel (WireGuard's AllowedIPs, one /32).
    pub virtual_ip: Ipv4Addr,
    /// A fixed address where the peer listens, as WireGuard's `Endpoint`:
    /// its datagrams go there directly, never through a relay, and its
    /// direct datagrams are accepted only from there. `None`: through the
    /// best relay.
    pub endpoint: Option<SocketAddr>,
}

#[derive(Clone)]
pub struct EngineConfig {
    pub private_key: StaticSecret,
    /// This client's address on the virtual LAN: required with `peers`;
    /// in a party the roster gives it.
    pub virtual_ip: Option<Ipv4Addr>,
    pub relays: Vec<RelaySpec>,
    /// Peers configured by hand (no party then).
    pub peers: Vec<PeerSpec>,
    /// The party this client was in when it last ran (its state file).
    pub membership: Option<crate::party::Membership>,
    /// Unix time in nanoseconds at the `now` given to [`crate::Engine::new`]:
    /// registration timestamps must grow across restarts of the client, so
    /// they are wall-clock based (`docs/protocol.md` §2.2).
    pub unix_nanos_at_start: u64,
    /// Random bytes for the engine's own choices (refresh jitter).
    pub seed: [u8; 32],
    /// Whether to find direct paths to peers (candidates, punching). Off:
    /// every peer without a configured endpoint stays on a relay.
    pub direct_paths: bool,
    /// LAN discovery: whether broadcast and multicast cross, and at what
    /// rate per member.
    pub discovery: crate::discovery::DiscoveryConfig,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("virtual_ip", &self.virtual_ip)
            .field("relays", &self.relays)
            .field("peers", &self.peers)
            .field("direct_paths", &self.direct_paths)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}
