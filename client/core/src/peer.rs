//! One peer on the virtual LAN: its WireGuard session (one boringtun
//! `Tunn`) and the relay its datagrams currently go through.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use lanrage_proto::path_probe::{PathKey, ReplayWindow};
use lanrage_proto::signal::{SignalKey, SignalView};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;

use crate::birthday::SocketId;
use crate::choice::LatencyVector;
use crate::direct::{DirectPath, MAX_CANDIDATES};
use crate::estimator::Estimator;
use crate::payload::{CandidateSet, NatHint};

use crate::config::PeerSpec;

/// A peer with a packet this recent is active: its relay is probed fast
/// and boringtun's timers tick every 100 ms.
pub const ACTIVE_FOR: Duration = Duration::from_secs(30);

/// At most one forced handshake initiation per peer this often: a hint or
/// a relay change prompts one, and a burst of prompts must not become a
/// burst of initiations (the relay would count them against us).
pub const FORCED_HANDSHAKE_SPACING: Duration = Duration::from_millis(250);

/// Addresses remembered per peer for accepting its direct datagrams.
pub const MAX_KNOWN_ADDRS: usize = 2 * MAX_CANDIDATES;

pub struct Peer {
    pub spec: PeerSpec,
    /// The upper 24 bits of our receiver indices in its sessions.
    pub slot: u32,
    pub tunn: Tunn,
    /// The relay (index into the engine's relays) the current session was
    /// handshaken through, and so the one the relay holds routes on.
    pub relay: Option<usize>,
    /// Where the peer takes datagrams directly (its configured endpoint,
    /// or the confirmed punched path); when set, datagrams go there and not
    /// through `relay`.
    pub direct: Option<SocketAddr>,
    /// Our socket that reaches `direct` (the main one, unless birthday
    /// probing found the path from a spray socket).
    pub direct_socket: SocketId,
    /// Whether `direct` is the configured endpoint (never punched, never
    /// given up).
    pub pinned: bool,
    /// Candidates, punching and the punched path's heartbeats.
    pub direct_path: DirectPath,
    /// Path-probe keys, both directions, and the incoming replay window.
    pub probe_out: Option<PathKey>,
    pub probe_in: Option<PathKey>,
    pub probe_replay: ReplayWindow,
    /// Addresses proven to be this peer's (a verified probe came from
    /// them): its WireGuard datagrams are accepted from them. Oldest first.
    pub known_addrs: Vec<SocketAddr>,
    /// Our candidates as last sent to this peer, how many of them were not
    /// predicted, and when.
    pub sent_candidates: Option<(CandidateSet, usize, Instant)>,
    /// What the peer said of its NAT, and its public (non-host) candidates.
    pub remote_nat: Option<NatHint>,
    pub remote_public: Vec<SocketAddr>,
    last_forced: Option<Instant>,
    /// End-to-end signal keys, both directions (none for a low-order key,
    /// which boringtun refuses too).
    signal_out: Option<SignalKey>,
    signal_in: Option<SignalKey>,
    /// The timestamps of signals opened from this peer: each opens once,
    /// and a jittery relay path may reorder them (`docs/protocol.md` §2.10).
    signal_replay: ReplayWindow,
    /// The peer's latency vector, as it last sent it.
    pub remote_vector: Option<LatencyVector>,
    /// Ours, as we last sent it to this peer, and when.
    pub sent_vector: Option<(LatencyVector, Instant)>,
    /// A relay that beat the current one, and on how many evaluations in a row.
    pub better: Option<(PeerKey, u32)>,
    /// Our unanswered initiation: when it (or its last retry) went, and
    /// how long to wait before the next.
    pub handshake_sent: Option<(Instant, Duration)>,
    /// The last packet to or from this peer through its tunnel.
    pub last_activity: Option<Instant>,
    /// RTT, jitter and loss of the path, from the engine's pings.
    pub path_quality: Estimator,
    /// Broadcast and multicast copies handed to this peer's session (sent,
    /// or queued until its handshake) and received from it (LAN
    /// discovery), and the limit on what it sends.
    pub discovery_sent: u64,
    pub discovery_received: u64,
    pub discovery_in: Option<crate::discovery::RateLimit>,
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
        let signal_out = SignalKey::outgoing(secret, &spec.key).ok();
        let signal_in = SignalKey::incoming(secret, &spec.key).ok();
        Self {
            direct: spec.endpoint,
            pinned: spec.endpoint.is_some(),
            direct_path: DirectPath::default(),
            probe_out: PathKey::outgoing(secret, &spec.key).ok(),
            probe_in: PathKey::incoming(secret, &spec.key).ok(),
            probe_replay: ReplayWindow::default(),
            known_addrs: spec.endpoint.into_iter().collect(),
            slot,
            sent_candidates: None,
            remote_nat: None,
            remote_public: Vec::new(),
            direct_socket: SocketId::MAIN,
            spec,
            tunn,
            relay: None,
            last_forced: None,
            discovery_sent: 0,
            discovery_received: 0,
            discovery_in: None,
            signal_out,
            signal_in,
            signal_replay: ReplayWindow::default(),
            remote_vector: None,
            sent_vector: None,
            better: None,
            handshake_sent: None,
            last_activity: None,
            path_quality: Estimator::default(),
        }
    }

    /// The key for signals to this peer.
    pub fn signal_key(&self) -> Option<&SignalKey> {
        self.signal_out.as_ref()
    }

    /// Opens a signal from this peer if it is authentic and not one opened
    /// before (nor older than the replay window: a relay can't replay or
    /// forge one).
    pub fn accept_signal(&mut self, view: &SignalView<'_>) -> Result<Vec<u8>, ()> {
        let key = self.signal_in.as_ref().ok_or(())?;
        if !self.signal_replay.check(view.timestamp()) {
            return Err(());
        }
        let plaintext = view.open(key).map_err(|_| ())?;
        self.signal_replay.accept(view.timestamp());
        Ok(plaintext)
    }

    /// Remembers `addr` as one of the peer's; returns the address it
    /// displaced, if the list was full.
    pub fn learn_addr(&mut self, addr: SocketAddr) -> Option<SocketAddr> {
        if self.known_addrs.contains(&addr) {
            return None;
        }
        let evicted = (self.known_addrs.len() >= MAX_KNOWN_ADDRS).then(|| {
            // The configured endpoint (first) is never displaced.
            let at = usize::from(self.pinned);
            self.known_addrs.remove(at)
        });
        self.known_addrs.push(addr);
        evicted
    }

    pub fn is_active(&self, now: Instant) -> bool {
        self.last_activity
            .is_some_and(|at| now.saturating_duration_since(at) < ACTIVE_FOR)
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
