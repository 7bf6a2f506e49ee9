//! One peer on the virtual LAN: its WireGuard session (one boringtun
//! `Tunn`) and the relay its datagrams currently go through.

use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use lanrage_proto::x25519::{PublicKey, StaticSecret};

use crate::config::PeerSpec;

/// At most one forced handshake initiation per peer this often: a hint or
/// a relay change prompts one, and a burst of prompts must not become a
/// burst of initiations (the relay would count them against us).
pub const FORCED_HANDSHAKE_SPACING: Duration = Duration::from_millis(250);

pub struct Peer {
    pub spec: PeerSpec,
    pub tunn: Tunn,
    /// The relay (index into the engine's relays) the current session was
    /// handshaken through, and so the one the relay holds routes on.
    pub path: Option<usize>,
    last_forced: Option<Instant>,
    /// Datagrams from this peer's tunnel that the engine refused (a source
    /// address outside the peer's virtual IP, a bad packet).
    pub rejected: u64,
}

impl Peer {
    /// `slot` is the upper 24 bits of every receiver index of ours in this
    /// peer's sessions (boringtun's `Tunn::new` index): how the engine
    /// finds the peer of a response or transport message.
    pub fn new(spec: PeerSpec, secret: &StaticSecret, slot: u32) -> Self {
        let tunn = Tunn::new(
            secret.clone(),
            PublicKey::from(spec.key),
            None,
            None,
            slot,
            None,
        );
        Self {
            spec,
            tunn,
            path: None,
            last_forced: None,
            rejected: 0,
        }
    }

    /// Whether a forced initiation may go now (and records it if so).
    pub fn may_force_handshake(&mut self, now: Instant) -> bool {
        if self
            .last_forced
            .is_some_and(|at| now.saturating_duration_since(at) < FORCED_HANDSHAKE_SPACING)
        {
            return false;
        }
        self.last_forced = Some(now);
        true
    }
}
