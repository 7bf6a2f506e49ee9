//! The engine: relays, peers and the packets between them. See the crate
//! docs for the verbs and the drive order.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use lanrage_proto::control::{ControlMessage, MAX_CONSENT};
use lanrage_proto::path_probe::{PathProbe, PathProbeView, ProbeKind};
use lanrage_proto::signal::{Signal, SignalView};

use crate::birthday::{self, Attempt, Role, SocketId};
use crate::choice::{self, LatencyVector};
use crate::direct::{PongOutcome, MAX_CANDIDATES};
use crate::estimator::Estimator;
use crate::netcheck::{NatReport, Netcheck};
use crate::party::{Membership, PartyClient};
use crate::payload::{CandidateSet, NatHint, Payload};
use lanrage_proto::party::Status as PartyStatus;

mod discovery;
mod roster;
use lanrage_proto::stun::{BindingRequest, BindingResponse, TransactionId};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, DatagramKind, PeerKey};
pub use roster::{CodeLimits, PartyError};

use crate::config::EngineConfig;
use crate::discovery::{DiscoveryConfig, RateLimit};
use crate::peer::Peer;
use crate::relay::{Registrant, Relay, RelayNews};
use crate::status::{PeerPath, PeerStatus, RelayStatus, Status};
use crate::wall_clock::Timestamps;

/// The TUN device's MTU: 1500 minus WireGuard (32), UDP (8), IPv4 (20) and
/// room for PPPoE (8, rounded to 1420 as wg-quick does).
pub const TUN_MTU: u16 = 1420;
/// The virtual LAN's prefix length (10.66.0.0/16).
pub const PREFIX_LEN: u8 = 16;
/// How often boringtun's timers run (rekey, keepalive, retries), as its
/// documentation asks (LAB.md: about every 100 ms).
pub const WIREGUARD_TICK: Duration = Duration::from_millis(100);
/// How often the engine looks at its latency vector, sends it to peers
/// when it changed, and re-evaluates each peer's relay.
pub const VECTOR_CHECK: Duration = Duration::from_secs(1);
/// A vector is sent again after this long even if nothing changed (the
/// peer may have restarted and lost it).
pub const VECTOR_REFRESH: Duration = Duration::from_secs(20);
/// The engine's first retry of an unanswered handshake, doubling up to
/// [`HANDSHAKE_RETRY_MAX`] (boringtun's REKEY_TIMEOUT).
pub const HANDSHAKE_RETRY_FIRST: Duration = Duration::from_millis(200);
pub const HANDSHAKE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Pings remembered for matching pongs; older ones are forgotten.
const MAX_PINGS_IN_FLIGHT: usize = 64;
/// boringtun's timer tick when no peer has traffic.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// Largest datagram the engine builds: a full TUN packet plus WireGuard's 32.
const MAX_DATAGRAM: usize = TUN_MTU as usize + 32 + 64;

/// Predicted candidates sent at most (a sequential NAT's next ports).
pub const MAX_PREDICTED: usize = 12;

/// A datagram for the driver to send, from `socket` (almost always the
/// main one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    pub socket: SocketId,
}

impl Transmit {
    /// From the main socket.
    pub fn main(dst: SocketAddr, payload: Vec<u8>) -> Self {
        Self {
            dst,
            payload,
            socket: SocketId::MAIN,
        }
    }
}

/// Something the driver applies or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Give the TUN this address and MTU: at start if the address is
    /// known, and whenever the party gives us another.
    ConfigureInterface {
        address: Ipv4Addr,
        prefix_len: u8,
        mtu: u16,
    },
    /// We have no address on the virtual LAN any more (left the party):
    /// take the TUN down.
    RemoveInterface,
    /// The answer to a party verb ([`Engine::party_create`] and the
    /// others): `None` if the home relay never answered. `code`: a new
    /// join code (create, invite).
    PartyReply {
        id: u64,
        status: Option<PartyStatus>,
        party: u64,
        code: Option<String>,
    },
    /// A new roster was applied (`None`: no longer in a party): the
    /// driver saves it, so the client remembers its party.
    PartyChanged {
        membership: Option<Membership>,
    },
    RelayRegistered {
        relay: String,
        reflexive: Option<SocketAddr>,
    },
    RelayUnreachable {
        relay: String,
    },
    RelayRestarted {
        relay: String,
    },
    /// A peer's traffic now takes this path.
    PathChanged {
        peer: String,
        path: PeerPath,
    },
    /// A NAT discovery finished; `ids` are the [`Engine::netcheck`]
    /// requests it answers.
    Netcheck {
        ids: Vec<u64>,
        report: NatReport,
    },
    /// A birthday attempt is over: the spray sockets other than `keep`
    /// (those carrying a direct path) may be closed.
    ReleaseSockets {
        keep: Vec<SocketId>,
    },
    /// The answer to [`Engine::ping`], and the path it came back on.
    Pong {
        peer: String,
        id: u64,
        rtt: Duration,
        path: PeerPath,
    },
}

/// Why the engine dropped something it was given. Every drop is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A datagram from an address that is no configured relay.
    UnknownSource,
    /// Not WireGuard or LANrage control, or malformed.
    Malformed,
    /// A control message that failed its MAC, echoed nothing we sent, or
    /// is not one a relay sends a client.
    BadControl,
    /// A WireGuard message for no session of ours.
    NoSession,
    /// boringtun refused a WireGuard message (bad MAC, replay, decryption).
    WireGuardRejected,
    /// A decrypted packet whose source is not the peer's virtual IP.
    SpoofedInnerSource,
    /// A TUN packet that isn't IPv4 to a known peer (or, with LAN
    /// discovery on, to the segment's broadcast or multicast).
    NoPeerForPacket,
    /// A packet for a peer when no relay is usable.
    NoRelay,
    /// STUN that answers none of our requests (this client answers no
    /// one's STUN).
    Stun,
    /// Broadcast or multicast that stays on this PC: IGMP and other
    /// non-UDP, and link control groups such as 224.0.0.1 and 224.0.0.22
    /// (`docs/lan-discovery.md`).
    LocalOnly,
    /// A TUN broadcast or multicast whose source is not our virtual IP.
    ForeignSource,
    /// Our broadcast and multicast beyond the configured rate.
    DiscoveryRateLimited,
    /// A peer's broadcast and multicast beyond the configured rate.
    PeerDiscoveryRateLimited,
    /// A decrypted packet addressed neither to us nor to the segment.
    UnexpectedDestination,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::UnknownSource,
        DropReason::Malformed,
        DropReason::BadControl,
        DropReason::NoSession,
        DropReason::WireGuardRejected,
        DropReason::SpoofedInnerSource,
        DropReason::NoPeerForPacket,
        DropReason::NoRelay,
        DropReason::Stun,
        DropReason::LocalOnly,
        DropReason::ForeignSource,
        DropReason::DiscoveryRateLimited,
        DropReason::PeerDiscoveryRateLimited,
        DropReason::UnexpectedDestination,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::Malformed => "malformed",
            DropReason::BadControl => "bad_control",
            DropReason::NoSession => "no_session",
            DropReason::WireGuardRejected => "wireguard_rejected",
            DropReason::SpoofedInnerSource => "spoofed_inner_source",
            DropReason::NoPeerForPacket => "no_peer_for_packet",
            DropReason::NoRelay => "no_relay",
            DropReason::Stun => "stun",
            DropReason::LocalOnly => "local_only",
            DropReason::ForeignSource => "foreign_source",
            DropReason::DiscoveryRateLimited => "discovery_rate_limited",
            DropReason::PeerDiscoveryRateLimited => "peer_discovery_rate_limited",
            DropReason::UnexpectedDestination => "unexpected_destination",
        }
    }
}

/// Why a configuration can't run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("relay {0}: its public key is a low-order point; check the key")]
    WeakRelayKey(String),
    #[error("{count} peers configured; at most {MAX_CONSENT} fit a relay registration")]
    TooManyPeers { count: usize },
    #[error("peer {0} is configured twice (same public key)")]
    DuplicatePeer(String),
    #[error("peers {0} and {1} have the same virtual IP")]
    DuplicateVirtualIp(String, String),
    #[error("peer {0} has this client's own public key")]
    PeerIsSelf(String),
    #[error("peer {0}: its endpoint is a relay's or another peer's address")]
    SharedEndpoint(String),
    #[error("peers are configured, so the address is required")]
    NoAddress,
}

pub struct Engine {
    secret: StaticSecret,
    public: PublicKey,
    key: PeerKey,
    virtual_ip: Option<Ipv4Addr>,
    relays: Vec<Relay>,
    by_relay_addr: HashMap<SocketAddr, usize>,
    peers: Vec<Peer>,
    by_ip: HashMap<Ipv4Addr, usize>,
    by_key: HashMap<PeerKey, usize>,
    by_slot: HashMap<u32, usize>,
    /// Peers by their configured endpoint.
    by_direct_addr: HashMap<SocketAddr, usize>,
    consent: Vec<PeerKey>,
    /// Our socket's addresses on our own networks (host candidates).
    local_addrs: Vec<SocketAddr>,
    /// Whether direct paths are looked for ([`EngineConfig::direct_paths`]).
    direct_paths: bool,
    /// The latest `now` we were given (for `poll_timeout`, which has none).
    last_now: Instant,
    /// The NAT discovery in progress, the last one's findings, and the ids
    /// of `lanrage netcheck` requests waiting for the next.
    netcheck: Option<Netcheck>,
    nat: Option<NatReport>,
    netcheck_waiters: Vec<u64>,
    timestamps: Timestamps,
    rng: u64,
    next_wireguard_tick: Instant,
    next_vector_check: Instant,
    /// Pings in flight: (id, peer, sent at, why), oldest first.
    pings: VecDeque<(u64, usize, Instant, PingKind)>,
    next_ping_id: u64,
    transmits: VecDeque<Transmit>,
    tun_out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    drops: [u64; DropReason::ALL.len()],
    scratch: Vec<u8>,
    /// Whether spray sockets may be open (an attempt used them and they
    /// haven't been released since).
    spray_pool_open: bool,
    /// The party: requests in flight, roster pages, the membership.
    party: PartyClient,
    /// Peers are configured by hand: no party.
    static_peers: bool,
    /// The slot the next new peer gets (see [`Peer::new`]).
    next_slot: u32,
    /// A create or join answer waiting for its roster, and until when.
    held_reply: Option<(Event, Instant)>,
    /// LAN discovery's settings, and the limit on our own broadcast and
    /// multicast (one bucket for all of it: "one source" is this PC).
    discovery: DiscoveryConfig,
    discovery_out: RateLimit,
}

impl Engine {
    pub fn new(config: EngineConfig, now: Instant) -> Result<Self, ConfigError> {
        let EngineConfig {
            private_key,
            virtual_ip,
            relays,
            peers,
            unix_nanos_at_start,
            seed,
            direct_paths,
            membership,
            discovery,
        } = config;
        if !peers.is_empty() && virtual_ip.is_none() {
            return Err(ConfigError::NoAddress);
        }
        if peers.len() > MAX_CONSENT {
            return Err(ConfigError::TooManyPeers { count: peers.len() });
        }
        let public = PublicKey::from(&private_key);
        let key = PeerKey::from(&public);
        let mut rng = u64::from_le_bytes(seed[..8].try_into().unwrap_or([7; 8])) | 1;
        let mut engine_relays = Vec::with_capacity(relays.len());
        for spec in relays {
            let jitter = Duration::from_millis(xorshift(&mut rng) % 5_000);
            let name = spec.name.clone();
            let relay = Relay::new(spec, &private_key, jitter, now)
                .map_err(|_| ConfigError::WeakRelayKey(name))?;
            engine_relays.push(relay);
        }
        let by_relay_addr = engine_relays
            .iter()
            .enumerate()
            .map(|(i, r)| (r.spec.addr, i))
            .collect();
        let mut engine = Self {
            secret: private_key,
            public,
            key,
            virtual_ip,
            relays: engine_relays,
            by_relay_addr,
            peers: Vec::new(),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
            by_slot: HashMap::new(),
            by_direct_addr: HashMap::new(),
            consent: Vec::new(),
            local_addrs: Vec::new(),
            direct_paths,
            last_now: now,
            netcheck: None,
            nat: None,
            netcheck_waiters: Vec::new(),
            timestamps: Timestamps::new(now, unix_nanos_at_start),
            rng,
            next_wireguard_tick: now + WIREGUARD_TICK,
            next_vector_check: now + VECTOR_CHECK,
            pings: VecDeque::new(),
            next_ping_id: 0,
            transmits: VecDeque::new(),
            tun_out: VecDeque::new(),
            events: VecDeque::new(),
            drops: [0; DropReason::ALL.len()],
            scratch: vec![0; MAX_DATAGRAM],
            spray_pool_open: false,
            party: PartyClient::default(),
            static_peers: !peers.is_empty(),
            next_slot: 0,
            held_reply: None,
            discovery,
            discovery_out: RateLimit::new(&discovery, now),
        };
        if let Some(address) = virtual_ip {
            engine.events.push_back(Event::ConfigureInterface {
                address,
                prefix_len: PREFIX_LEN,
                mtu: TUN_MTU,
            });
        }
        // Slots start at a random base so a restarted client doesn't reuse
        // the receiver indices of its previous run (a relay still holding
        // routes for them would refuse the collision).
        let base = (xorshift(&mut engine.rng) as u32) & 0x00ff_ffff;
        engine.next_slot = (base + MAX_CONSENT as u32) & 0x00ff_ffff;
        for (i, spec) in peers.into_iter().enumerate() {
            if spec.key == key {
                return Err(ConfigError::PeerIsSelf(spec.name));
            }
            if engine.by_key.contains_key(&spec.key) {
                return Err(ConfigError::DuplicatePeer(spec.name));
            }
            if let Some(&other) = engine.by_ip.get(&spec.virtual_ip) {
                return Err(ConfigError::DuplicateVirtualIp(
                    engine.peers[other].spec.name.clone(),
                    spec.name,
                ));
            }
            let slot = (base + i as u32) & 0x00ff_ffff;
            engine.by_ip.insert(spec.virtual_ip, i);
            engine.by_key.insert(spec.key, i);
            engine.by_slot.insert(slot, i);
            if let Some(endpoint) = spec.endpoint {
                if engine.by_relay_addr.contains_key(&endpoint)
                    || engine.by_direct_addr.insert(endpoint, i).is_some()
                {
                    return Err(ConfigError::SharedEndpoint(spec.name));
                }
                engine.events.push_back(Event::PathChanged {
                    peer: spec.name.clone(),
                    path: PeerPath::Direct(endpoint),
                });
            }
            engine.consent.push(spec.key);
            engine.peers.push(Peer::new(spec, &engine.secret, slot));
        }
        if !engine.static_peers {
            // The remembered party: its peers and our address now, a fresh
            // roster once the home relay answers.
            engine.apply_membership(now, membership);
        }
        Ok(engine)
    }

    pub fn public_key(&self) -> PeerKey {
        self.key
    }

    // ---- inputs

    /// One datagram from the main UDP socket.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.handle_udp_on(now, SocketId::MAIN, from, bytes);
    }

    /// One datagram from `socket`. A spray socket carries only path probes
    /// and a punched path's WireGuard; anything else on it is dropped.
    pub fn handle_udp_on(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        self.last_now = self.last_now.max(now);
        let kind = classify(bytes);
        // STUN answers come from the relay's other addresses too.
        if kind == DatagramKind::Stun {
            if socket.is_main() {
                self.handle_stun(now, from, bytes);
            } else {
                self.count(DropReason::Stun);
            }
            return;
        }
        // Path probes come from anywhere a peer may be (every candidate);
        // their MAC, checked before anything is sent, says whose they are.
        if kind == DatagramKind::Control && PathProbeView::is_path_probe(bytes) {
            if self.by_relay_addr.contains_key(&from) {
                self.count(DropReason::BadControl);
            } else {
                self.handle_path_probe(now, socket, from, bytes);
            }
            return;
        }
        let relay = self
            .by_relay_addr
            .get(&from)
            .copied()
            .filter(|_| socket.is_main());
        if let Some(relay) = relay {
            match kind {
                DatagramKind::Control => self.handle_control(now, relay, bytes),
                DatagramKind::WireGuard => self.handle_wireguard(now, Via::Relay(relay), bytes),
                DatagramKind::Stun | DatagramKind::Unknown => self.count(DropReason::Malformed),
            }
            return;
        }
        // A peer's own addresses carry only its WireGuard datagrams.
        let Some(&peer) = self.by_direct_addr.get(&from) else {
            self.count(DropReason::UnknownSource);
            return;
        };
        match kind {
            DatagramKind::WireGuard => {
                self.handle_wireguard(now, Via::Direct { peer, from, socket }, bytes)
            }
            _ => self.count(DropReason::Malformed),
        }
    }

    /// One IP packet read from the TUN.
    pub fn handle_tun(&mut self, now: Instant, packet: &[u8]) {
        self.last_now = self.last_now.max(now);
        let Ok(ip) = etherparse::Ipv4HeaderSlice::from_slice(packet) else {
            self.count(DropReason::NoPeerForPacket);
            return;
        };
        let Some(&peer) = self.by_ip.get(&ip.destination_addr()) else {
            let (source, destination) = (ip.source_addr(), ip.destination_addr());
            self.handle_tun_broadcast(now, source, destination, ip.protocol().0, packet);
            return;
        };
        let Some(dst) = self.destination(now, peer) else {
            self.count(DropReason::NoRelay);
            return;
        };
        self.touch(now, peer);
        let result = self.peers[peer].tunn.encapsulate(packet, &mut self.scratch);
        match result {
            TunnResult::WriteToNetwork(datagram) => {
                let payload = datagram.to_vec();
                self.send_wireguard(now, peer, dst, payload);
            }
            TunnResult::Err(e) => {
                tracing::debug!(peer = %self.peers[peer].spec.name, error = ?e, "encapsulate failed");
            }
            // Queued inside boringtun until the handshake completes.
            _ => {}
        }
    }

    /// Runs due timers: registrations, probes, WireGuard's own timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        for i in 0..self.relays.len() {
            if now < self.relays[i].next_deadline() {
                continue;
            }
            // Probed fast only while a session through it carries traffic:
            // an idle client stays quiet, and wakes up on the next packet.
            let in_use = self
                .peers
                .iter()
                .any(|p| p.direct.is_none() && p.relay == Some(i) && p.is_active(now));
            let was_reachable = self.relays[i].reachable();
            let mut out = Vec::new();
            let (timestamps, rng) = (&mut self.timestamps, &mut self.rng);
            let who = Registrant {
                client: self.key,
                consent: &self.consent,
            };
            self.relays[i].on_timeout(
                now,
                in_use,
                who,
                &mut || timestamps.next(now),
                &mut |max| jitter(rng, max),
                &mut out,
            );
            let dst = self.relays[i].spec.addr;
            for payload in out {
                self.transmits.push_back(Transmit::main(dst, payload));
            }
            if was_reachable && !self.relays[i].reachable() {
                self.events.push_back(Event::RelayUnreachable {
                    relay: self.relays[i].spec.name.clone(),
                });
                self.move_paths_off(now, i);
            }
        }
        if now >= self.next_vector_check {
            self.next_vector_check = now + VECTOR_CHECK;
            let vector = self.latency_vector();
            for peer in 0..self.peers.len() {
                self.send_vector_if_changed(now, peer, &vector);
                self.evaluate_relay(now, peer);
                self.send_candidates_if_changed(now, peer, false);
                // An active peer's path is measured once a second (a ping
                // over signaling, or a path probe to a configured endpoint;
                // a punched path has its heartbeats): RTT, jitter and loss
                // for `status`.
                let p = &self.peers[peer];
                let measured = if p.direct.is_some() {
                    p.pinned
                } else {
                    p.relay.is_some()
                };
                if p.is_active(now) && measured {
                    self.ping_peer(now, peer, PingKind::Measuring);
                }
            }
        }
        self.direct_timers(now);
        self.netcheck_timers(now);
        self.party_timers(now);
        if now >= self.next_wireguard_tick {
            // boringtun's timers matter while packets flow or a handshake
            // is out; otherwise once a second is plenty (keepalives and
            // rekeys follow traffic).
            let busy = self
                .peers
                .iter()
                .any(|p| p.is_active(now) || p.handshake_sent.is_some());
            self.next_wireguard_tick = now + if busy { WIREGUARD_TICK } else { IDLE_TICK };
            for peer in 0..self.peers.len() {
                self.wireguard_timers(now, peer);
                self.retry_handshake(now, peer);
            }
        }
    }

    // ---- outputs

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_tun(&mut self) -> Option<Vec<u8>> {
        self.tun_out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        // Direct-path deadlines are judged as of the last wake-up's
        // activity; a peer going idle only makes them later.
        let direct = self
            .peers
            .iter()
            .filter_map(|p| p.direct_path.next_deadline(p.is_active(self.last_now)));
        self.relays
            .iter()
            .map(Relay::next_deadline)
            .chain([self.next_wireguard_tick, self.next_vector_check])
            .chain(direct)
            .chain(self.netcheck.as_ref().map(Netcheck::next_deadline))
            .chain(self.party.next_deadline())
            .chain(self.held_reply.as_ref().map(|(_, until)| *until))
            .min()
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn status(&self, now: Instant) -> Status {
        Status {
            virtual_ip: self.virtual_ip,
            relays: self
                .relays
                .iter()
                .enumerate()
                .map(|(i, r)| RelayStatus {
                    name: r.spec.name.clone(),
                    addr: r.spec.addr,
                    registered: r.is_registered(),
                    reachable: r.reachable(),
                    reflexive: r.reflexive,
                    rtt: r.estimator.rtt(),
                    jitter: r.estimator.jitter(),
                    loss: r.estimator.loss(now),
                    in_use: self
                        .peers
                        .iter()
                        .any(|p| p.direct.is_none() && p.relay == Some(i)),
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let (since, tx, rx, loss, rtt) = p.tunn.stats();
                    PeerStatus {
                        name: p.spec.name.clone(),
                        virtual_ip: p.spec.virtual_ip,
                        path: self.path_of(p),
                        rtt: p
                            .path_quality
                            .rtt()
                            .or_else(|| rtt.map(|ms| Duration::from_millis(u64::from(ms)))),
                        jitter: p.path_quality.jitter(),
                        loss: if p.path_quality.rtt().is_some() {
                            p.path_quality.loss(now) as f32
                        } else {
                            loss
                        },
                        tx_bytes: tx as u64,
                        rx_bytes: rx as u64,
                        discovery_sent: p.discovery_sent,
                        discovery_received: p.discovery_received,
                        since_last_handshake: since,
                    }
                })
                .collect(),
            nat: self.nat.clone(),
            party: self.party.membership.clone(),
            drops: DropReason::ALL
                .iter()
                .map(|d| (d.as_str(), self.drops[*d as usize]))
                .collect(),
        }
    }

    // ---- internals

    fn count(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
        tracing::trace!(reason = reason.as_str(), "dropped");
    }

    fn handle_control(&mut self, now: Instant, relay: usize, bytes: &[u8]) {
        let Ok(message) = ControlMessage::parse(bytes) else {
            self.count(DropReason::Malformed);
            return;
        };
        let news = match message {
            ControlMessage::Challenge(challenge) => {
                let timestamp = self.timestamps.next(now);
                let who = Registrant {
                    client: self.key,
                    consent: &self.consent,
                };
                let reply = self.relays[relay].on_challenge(now, challenge, who, timestamp);
                match reply {
                    Some(payload) => {
                        let dst = self.relays[relay].spec.addr;
                        self.transmits.push_back(Transmit::main(dst, payload));
                    }
                    None => self.count(DropReason::BadControl),
                }
                RelayNews::Nothing
            }
            ControlMessage::RegisterAck(view) => {
                let rejected = self.relays[relay].rejected;
                let news = self.relays[relay].on_ack(now, view);
                if self.relays[relay].rejected != rejected {
                    self.count(DropReason::BadControl);
                }
                news
            }
            ControlMessage::ProbeAck(view) => {
                let rejected = self.relays[relay].rejected;
                let news = self.relays[relay].on_probe_ack(now, view);
                if self.relays[relay].rejected != rejected {
                    self.count(DropReason::BadControl);
                }
                news
            }
            ControlMessage::UnknownSession(hint) => {
                if !hint.registered {
                    self.relays[relay].register_soon(now);
                }
                // The index is the peer's, in the session it shares with us:
                // the peer whose path is this relay and whose traffic missed.
                // The hint is unauthenticated, so it may only prompt a
                // (rate-limited) handshake, never change anything else.
                let peers: Vec<usize> = (0..self.peers.len())
                    .filter(|&p| self.peers[p].relay == Some(relay))
                    .collect();
                for peer in peers {
                    self.force_handshake(now, peer, relay, Urgency::Prompted);
                }
                RelayNews::Nothing
            }
            ControlMessage::Signal(view) => {
                self.handle_signal(now, relay, view);
                RelayNews::Nothing
            }
            ControlMessage::PartyMessage(view) => {
                self.handle_party_message(now, relay, view);
                RelayNews::Nothing
            }
            ControlMessage::Register(_)
            | ControlMessage::Probe(_)
            | ControlMessage::PartyRequest(_) => {
                self.count(DropReason::BadControl);
                RelayNews::Nothing
            }
        };
        self.on_relay_news(now, relay, news);
    }

    /// A signal from a peer, forwarded by a relay: opened with the peer's
    /// key and newer than the last, or a counted drop.
    fn handle_signal(&mut self, now: Instant, relay: usize, view: SignalView<'_>) {
        let Some(&peer) = self.by_key.get(&view.sender()) else {
            self.count(DropReason::BadControl);
            return;
        };
        if view.recipient() != self.key {
            self.count(DropReason::BadControl);
            return;
        }
        let Ok(plaintext) = self.peers[peer].accept_signal(&view) else {
            self.count(DropReason::BadControl);
            return;
        };
        let vector = match Payload::decode(&plaintext) {
            Some(Payload::Latency(vector)) => vector,
            Some(Payload::Ping(id)) => {
                self.send_signal(now, peer, relay, &Payload::Pong(id));
                return;
            }
            Some(Payload::Pong(id)) => {
                let path = PeerPath::Relay(self.relays[relay].spec.name.clone());
                if !self.on_pong(now, peer, path, id) {
                    self.count(DropReason::BadControl);
                }
                return;
            }
            Some(Payload::Candidates { want_reply, set }) => {
                self.on_candidates(now, peer, want_reply, &set);
                return;
            }
            None => {
                self.count(DropReason::BadControl);
                return;
            }
        };
        self.peers[peer].remote_vector = Some(vector);
        // The peer is registered and alive: a handshake waiting for it can
        // go again now rather than at its next retry.
        if let Some((sent, _)) = self.peers[peer].handshake_sent {
            self.peers[peer].handshake_sent = Some((sent, Duration::ZERO));
            self.retry_handshake(now, peer);
        }
        self.evaluate_relay(now, peer);
    }

    /// Our RTT to every relay a path could use now.
    fn latency_vector(&self) -> LatencyVector {
        self.relays
            .iter()
            .filter(|r| r.is_usable())
            .filter_map(|r| Some((r.spec.key, r.estimator.rtt()?)))
            .collect()
    }

    /// Sends `vector` to `peer` if it differs enough from what the peer has
    /// (a relay gained or lost, an RTT moved by 2 ms and a tenth), or after
    /// [`VECTOR_REFRESH`].
    fn send_vector_if_changed(&mut self, now: Instant, peer: usize, vector: &LatencyVector) {
        if vector.is_empty() {
            return;
        }
        let stale = match &self.peers[peer].sent_vector {
            None => true,
            Some((sent, at)) => {
                now.saturating_duration_since(*at) >= VECTOR_REFRESH
                    || sent.len() != vector.len()
                    || sent.iter().zip(vector).any(|((r1, a), (r2, b))| {
                        r1 != r2 || a.abs_diff(*b) > Duration::from_millis(2).max(*a / 10)
                    })
            }
        };
        if !stale {
            return;
        }
        let Some(relay) = self.signaling_relay(peer) else {
            return;
        };
        if !self.send_signal(now, peer, relay, &Payload::Latency(vector.clone())) {
            return;
        }
        self.peers[peer].sent_vector = Some((vector.clone(), now));
        self.evaluate_relay(now, peer);
    }

    /// The relay a signal to `peer` goes through: its session's while
    /// usable, else the best usable one.
    fn signaling_relay(&self, peer: usize) -> Option<usize> {
        self.peers[peer]
            .relay
            .filter(|&r| self.relays[r].is_usable())
            .or_else(|| self.best_relay())
    }

    /// Seals `payload` for `peer` and sends it through `relay`.
    fn send_signal(&mut self, now: Instant, peer: usize, relay: usize, payload: &Payload) -> bool {
        let Some(key) = self.peers[peer].signal_key().cloned() else {
            return false;
        };
        let signal = Signal {
            sender: self.key,
            recipient: self.peers[peer].spec.key,
            timestamp: self.timestamps.next(now),
            plaintext: payload.encode(),
        };
        let Ok(bytes) = signal.seal(&key, self.relays[relay].keys()) else {
            return false;
        };
        let dst = self.relays[relay].spec.addr;
        self.transmits.push_back(Transmit::main(dst, bytes));
        true
    }

    /// Sends a ping to the peer called `name` through its path (or the
    /// relay it would take), like `tailscale ping`: the pong comes back as
    /// [`Event::Pong`]. `None` if there is no such peer or no usable relay.
    pub fn ping(&mut self, now: Instant, name: &str) -> Option<u64> {
        let peer = self.peers.iter().position(|p| p.spec.name == name)?;
        self.ping_peer(now, peer, PingKind::Asked)
    }

    /// A ping on the peer's path: a path probe on a direct path, a signal
    /// through its relay otherwise.
    fn ping_peer(&mut self, now: Instant, peer: usize, kind: PingKind) -> Option<u64> {
        let id = self.next_txid();
        if let Some(addr) = self.peers[peer].direct {
            let socket = self.peers[peer].direct_socket;
            if !self.send_path_probe(now, peer, socket, addr, id, ProbeKind::Ping) {
                return None;
            }
            self.peers[peer]
                .direct_path
                .ping_sent(id, addr, socket, now);
        } else {
            let relay = self.peers[peer]
                .relay
                .filter(|&r| self.relays[r].is_usable())
                .or_else(|| self.preferred_relay(peer))
                .or_else(|| self.best_relay())?;
            if !self.send_signal(now, peer, relay, &Payload::Ping(id)) {
                return None;
            }
        }
        if self.pings.len() >= MAX_PINGS_IN_FLIGHT {
            self.pings.pop_front();
        }
        self.pings.push_back((id, peer, now, kind));
        self.peers[peer].path_quality.sent(now);
        Some(id)
    }

    /// A pong to one of [`Self::ping_peer`]'s pings, back on `path`;
    /// whether it was one.
    fn on_pong(&mut self, now: Instant, peer: usize, path: PeerPath, id: u64) -> bool {
        let Some(i) = self
            .pings
            .iter()
            .position(|(i, p, _, _)| *i == id && *p == peer)
        else {
            return false;
        };
        let Some((_, _, sent, kind)) = self.pings.remove(i) else {
            return false;
        };
        self.peers[peer].path_quality.answered(sent, now);
        if kind == PingKind::Asked {
            self.events.push_back(Event::Pong {
                peer: self.peers[peer].spec.name.clone(),
                id,
                rtt: now.saturating_duration_since(sent),
                path,
            });
        }
        true
    }

    fn next_txid(&mut self) -> u64 {
        self.next_ping_id += 1;
        self.next_ping_id
    }

    // ---- NAT discovery

    /// Runs a NAT discovery now (`lanrage netcheck`), unless one is
    /// running; its report comes as [`Event::Netcheck`] with this id among
    /// its `ids`. `None` if no relay is registered to ask.
    pub fn netcheck(&mut self, now: Instant) -> Option<u64> {
        self.last_now = self.last_now.max(now);
        if self.netcheck.is_none() && !self.start_netcheck(now) {
            return None;
        }
        let id = self.next_txid();
        self.netcheck_waiters.push(id);
        Some(id)
    }

    /// The last discovery's findings.
    pub fn nat(&self) -> Option<&NatReport> {
        self.nat.as_ref()
    }

    /// Starts a discovery against the usable relay with the lowest RTT.
    fn start_netcheck(&mut self, now: Instant) -> bool {
        let Some(relay) = self
            .best_relay()
            .filter(|&r| self.relays[r].is_registered())
        else {
            return false;
        };
        let (name, addr) = (
            self.relays[relay].spec.name.clone(),
            self.relays[relay].spec.addr,
        );
        let rng = &mut self.rng;
        let check = Netcheck::start(
            now,
            &name,
            addr,
            &self.local_addrs,
            self.nat.as_ref(),
            &mut || random_txid(rng),
        );
        self.netcheck = Some(check);
        self.netcheck_timers(now);
        true
    }

    fn netcheck_timers(&mut self, now: Instant) {
        let Some(check) = self.netcheck.as_mut() else {
            return;
        };
        if now < check.next_deadline() {
            return;
        }
        let mut out = Vec::new();
        let rng = &mut self.rng;
        let done = check.poll(now, &mut || random_txid(rng), &mut out);
        for (dst, payload) in out {
            self.transmits.push_back(Transmit::main(dst, payload));
        }
        if let Some(report) = done {
            tracing::info!(
                relay = %report.relay,
                nat = report.nat_type(),
                reflexive = ?report.reflexive,
                hairpin = ?report.hairpin,
                sequential = ?report.sequential.as_ref().map(|s| s.step),
                "netcheck"
            );
            self.netcheck = None;
            self.nat = Some(report.clone());
            self.events.push_back(Event::Netcheck {
                ids: std::mem::take(&mut self.netcheck_waiters),
                report,
            });
            // Peers learn what we found (and our predicted ports); a pair
            // that needs birthday probing can start it now.
            for peer in 0..self.peers.len() {
                self.send_candidates_if_changed(now, peer, false);
                self.maybe_birthday(now, peer);
            }
        }
    }

    /// STUN: answers to the discovery's requests (from the relay's primary
    /// or other address), or our own hairpin request coming back. Anything
    /// else is a counted drop: this client answers no one's STUN.
    fn handle_stun(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Some(check) = self.netcheck.as_mut() else {
            self.count(DropReason::Stun);
            return;
        };
        let ours = match BindingResponse::parse(bytes) {
            Ok(response) => check.on_response(now, from, &response),
            Err(_) => BindingRequest::parse(bytes).is_ok_and(|r| check.on_request(&r, from)),
        };
        if !ours {
            self.count(DropReason::Stun);
        }
    }

    // ---- direct paths

    /// The addresses this client's socket has on its own networks (each
    /// interface address with the socket's port): the host candidates. The
    /// driver calls this at start and whenever they change; a change after
    /// the first means the network changed, so punched paths are dropped
    /// (back to the relay) and found again, and the relays are told anew.
    pub fn set_local_addresses(&mut self, now: Instant, addrs: &[SocketAddr]) {
        self.last_now = self.last_now.max(now);
        let mut next = Vec::with_capacity(MAX_CANDIDATES);
        for &a in addrs {
            if next.len() < MAX_CANDIDATES && !next.contains(&a) {
                next.push(a);
            }
        }
        if next == self.local_addrs {
            return;
        }
        let changed = !self.local_addrs.is_empty();
        self.local_addrs = next;
        if changed {
            tracing::info!("local addresses changed");
            self.network_changed(now);
        }
        // Candidates go out at the next check, which is now.
        self.next_vector_check = now;
    }

    /// The network changed under us (new addresses, or a new default
    /// route: another uplink, the same addresses): what we know of our NAT
    /// and our direct paths is stale. Punched paths go back to the relay at
    /// once, the relays are registered with again (they may see us at a
    /// new address), and NAT discovery and punching run again as soon as a
    /// relay answers.
    pub fn network_changed(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        tracing::info!("network changed: finding the NAT and direct paths again");
        self.nat = None;
        self.netcheck = None;
        for relay in &mut self.relays {
            relay.register_soon(now);
        }
        for peer in 0..self.peers.len() {
            if self.peers[peer].pinned {
                continue;
            }
            self.peers[peer].direct_path.reset();
            if let Some(addr) = self.peers[peer].direct {
                self.fall_back(now, peer, addr);
            }
        }
        self.next_vector_check = now;
    }

    /// Ours: host addresses, then what each relay sees (server-reflexive),
    /// then, behind a NAT that allocates in sequence, its next ports
    /// (predicted), with what we know of our NAT. Also how many are not
    /// predicted: predictions shift with every netcheck, and that is no
    /// move of ours.
    fn local_candidates(&self) -> (CandidateSet, usize) {
        let mut addrs = self.local_addrs.clone();
        let hosts = addrs.len();
        for r in &self.relays {
            if let Some(addr) = r.reflexive.filter(|_| r.is_usable()) {
                if addrs.len() < MAX_CANDIDATES && !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        let base = addrs.len();
        let sequential = self.nat.as_ref().and_then(|n| n.sequential.as_ref());
        if let Some(seq) = sequential {
            for addr in seq.predict(MAX_PREDICTED) {
                if addrs.len() < MAX_CANDIDATES && !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        let nat = self.nat.as_ref().map(|n| NatHint {
            mapping: n.mapping,
            filtering: n.filtering,
            sequential: sequential.is_some(),
        });
        (CandidateSet { addrs, hosts, nat }, base)
    }

    /// Sends our candidates to `peer` when they differ from what it has
    /// (or it asked for them: `force`), asking for its own back if we have
    /// none of them yet. While none of its have come, ours go again every
    /// [`VECTOR_REFRESH`]: a signal may be lost (or dropped by a relay the
    /// peer hadn't registered with yet).
    fn send_candidates_if_changed(&mut self, now: Instant, peer: usize, force: bool) {
        let p = &self.peers[peer];
        if p.pinned || !self.direct_paths {
            return;
        }
        let (mine, base) = self.local_candidates();
        let fresh = p.sent_candidates.as_ref().is_some_and(|(sent, _, at)| {
            *sent == mine
                && (p.direct_path.has_candidates()
                    || now.saturating_duration_since(*at) < VECTOR_REFRESH)
        });
        if mine.addrs.is_empty() || (!force && fresh) {
            return;
        }
        let Some(relay) = self.signaling_relay(peer) else {
            return;
        };
        // Ours changed since the peer last heard (a new mapping, a new
        // network): both sides must punch again, since the peer's filter
        // only opens for an address once it has sent there, and ours only
        // for the peer's once we have. So we punch, and ask it to.
        // (Only the host and server-reflexive ones: a NAT report or new
        // predictions alone are news, not a move.)
        let moved = self.peers[peer]
            .sent_candidates
            .as_ref()
            .is_some_and(|(sent, sent_base, _)| sent.addrs[..*sent_base] != mine.addrs[..base]);
        let payload = Payload::Candidates {
            want_reply: moved || !self.peers[peer].direct_path.has_candidates(),
            set: mine.clone(),
        };
        if self.send_signal(now, peer, relay, &payload) {
            self.peers[peer].sent_candidates = Some((mine, base, now));
            if moved {
                self.punch_afresh(now, peer);
            }
        }
    }

    /// A peer's candidates: kept, ours sent back if it asked, and a punch
    /// started if they are new (or it asked: it is punching now too).
    fn on_candidates(&mut self, now: Instant, peer: usize, want_reply: bool, set: &CandidateSet) {
        if self.peers[peer].pinned || !self.direct_paths {
            return;
        }
        let had = self.peers[peer].direct_path.has_candidates();
        let changed = self.peers[peer].direct_path.set_candidates(&set.addrs);
        let p = &mut self.peers[peer];
        p.remote_nat = set.nat;
        p.remote_public = set.public().to_vec();
        if want_reply {
            self.send_candidates_if_changed(now, peer, true);
        }
        if changed && had && want_reply {
            // The peer moved (it asks for ours again when it has): the
            // path we have to it is stale.
            self.punch_afresh(now, peer);
        } else if changed || want_reply {
            self.peers[peer].direct_path.start_punch(now);
            self.direct_timers_of(now, peer);
        }
        self.maybe_birthday(now, peer);
    }

    /// Starts a birthday attempt with `peer` if our NATs need one
    /// ([`birthday::role`]) and none is running: spraying its public
    /// addresses from the spray sockets, or probing random ports of its
    /// public IPs.
    fn maybe_birthday(&mut self, now: Instant, peer: usize) {
        let p = &self.peers[peer];
        if p.pinned || !self.direct_paths || p.direct.is_some() || p.remote_public.is_empty() {
            return;
        }
        let attempt = match birthday::role(self.nat.as_ref(), p.remote_nat) {
            None => return,
            Some(Role::Spray) => Attempt::spray(now, &p.remote_public),
            Some(Role::Probe) => {
                let mut ips: Vec<std::net::IpAddr> = Vec::new();
                for a in &p.remote_public {
                    if !ips.contains(&a.ip()) {
                        ips.push(a.ip());
                    }
                }
                let near: Vec<u16> = p.remote_public.iter().map(|a| a.port()).collect();
                let ports = random_ports(&mut self.rng, birthday::PROBE_PORTS, &near);
                Attempt::probe(now, &ips, ports)
            }
        };
        let role = attempt.role();
        if self.peers[peer].direct_path.start_attempt(now, attempt) {
            tracing::debug!(peer = %self.peers[peer].spec.name, ?role, "birthday attempt");
            self.spray_pool_open |= role == Role::Spray;
            self.direct_timers_of(now, peer);
        }
    }

    /// Releases the spray sockets once no attempt needs them, keeping the
    /// ones that carry a direct path.
    fn release_spray_pool(&mut self, now: Instant) {
        if !self.spray_pool_open || self.peers.iter().any(|p| p.direct_path.attempt_live(now)) {
            return;
        }
        self.spray_pool_open = false;
        let keep = self
            .peers
            .iter()
            .filter(|p| p.direct.is_some() && !p.direct_socket.is_main())
            .map(|p| p.direct_socket)
            .collect();
        self.events.push_back(Event::ReleaseSockets { keep });
    }

    /// One side's addresses moved (a new mapping, a new network): a
    /// punched path to the old ones is stale, so traffic goes back to the
    /// relay now rather than after the path's death is noticed, and a new
    /// punch starts.
    fn punch_afresh(&mut self, now: Instant, peer: usize) {
        if self.peers[peer].pinned {
            return;
        }
        self.peers[peer].direct_path.reset();
        if let Some(addr) = self.peers[peer].direct {
            self.fall_back(now, peer, addr);
        }
        self.peers[peer].direct_path.start_punch(now);
        self.direct_timers_of(now, peer);
    }

    /// Seals and queues a path probe to `peer` at `dst`, from `socket`.
    fn send_path_probe(
        &mut self,
        now: Instant,
        peer: usize,
        socket: SocketId,
        dst: SocketAddr,
        txid: u64,
        kind: ProbeKind,
    ) -> bool {
        let Some(key) = self.peers[peer].probe_out.as_ref() else {
            return false;
        };
        let probe = PathProbe {
            sender: self.key,
            recipient: self.peers[peer].spec.key,
            timestamp: self.timestamps.next(now),
            txid,
            kind,
        };
        let payload = probe.encode(key).to_vec();
        self.transmits.push_back(Transmit {
            dst,
            payload,
            socket,
        });
        true
    }

    /// A path probe from `from`, on our `socket`: verified, then a ping is
    /// answered in kind (same size, to where it came from, from the socket
    /// it reached) and a pong may confirm a path.
    fn handle_path_probe(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let Ok(view) = PathProbeView::parse(bytes) else {
            self.count(DropReason::Malformed);
            return;
        };
        let Some(&peer) = self.by_key.get(&view.sender()) else {
            self.count(DropReason::BadControl);
            return;
        };
        let verified = match self.peers[peer].probe_in.as_ref() {
            Some(key) if view.recipient() == self.key => view.verify(key).ok(),
            _ => None,
        };
        let Some(probe) = verified else {
            self.count(DropReason::BadControl);
            return;
        };
        // Direct paths off: only a configured endpoint's probes count.
        if !self.direct_paths && !self.peers[peer].pinned {
            self.count(DropReason::BadControl);
            return;
        }
        if !self.peers[peer].probe_replay.accept(probe.timestamp) {
            self.count(DropReason::BadControl);
            return;
        }
        // Proven the peer's: its WireGuard datagrams are welcome from here.
        self.learn_peer_addr(peer, from);
        match probe.kind {
            ProbeKind::Ping => {
                let pong = ProbeKind::Pong { observed: from };
                self.send_path_probe(now, peer, socket, from, probe.txid, pong);
                let p = &mut self.peers[peer];
                if !p.pinned
                    && p.direct.is_none()
                    && (p.direct_path.add_peer_reflexive(from, socket)
                        || !p.direct_path.is_punching())
                {
                    // The peer is punching: punch back, now, including the
                    // address its ping came from (its NAT's mapping to us).
                    p.direct_path.start_punch(now);
                    self.direct_timers_of(now, peer);
                }
            }
            ProbeKind::Pong { .. } => {
                let may_confirm = !self.peers[peer].pinned;
                let outcome = self.peers[peer].direct_path.on_pong(
                    now,
                    socket,
                    from,
                    probe.txid,
                    may_confirm,
                );
                match outcome {
                    PongOutcome::Unmatched => self.count(DropReason::BadControl),
                    PongOutcome::Confirmed { addr, socket, sent } => {
                        self.upgrade(peer, addr, socket);
                        self.peers[peer].path_quality.answered(sent, now);
                    }
                    PongOutcome::Answered { sent } => {
                        if !self.on_pong(now, peer, PeerPath::Direct(from), probe.txid)
                            && self.peers[peer].direct == Some(from)
                        {
                            self.peers[peer].path_quality.answered(sent, now);
                        }
                    }
                }
            }
        }
    }

    fn learn_peer_addr(&mut self, peer: usize, addr: SocketAddr) {
        if let Some(old) = self.peers[peer].learn_addr(addr) {
            if self.by_direct_addr.get(&old) == Some(&peer) {
                self.by_direct_addr.remove(&old);
            }
        }
        self.by_direct_addr.insert(addr, peer);
    }

    /// Punch rounds, heartbeats and the death of punched paths, for every
    /// peer whose time has come.
    fn direct_timers(&mut self, now: Instant) {
        for peer in 0..self.peers.len() {
            self.direct_timers_of(now, peer);
        }
        self.release_spray_pool(now);
    }

    fn direct_timers_of(&mut self, now: Instant, peer: usize) {
        if self.peers[peer].pinned {
            return;
        }
        let active = self.peers[peer].is_active(now);
        if let Some(lost) = self.peers[peer].direct_path.check_dead(now, active) {
            tracing::debug!(peer = %self.peers[peer].spec.name, %lost, "direct path lost");
            self.fall_back(now, peer, lost);
        }
        let mut due = Vec::new();
        let mut next = self.next_ping_id;
        self.peers[peer].direct_path.poll(
            now,
            active,
            &mut || {
                next += 1;
                next
            },
            &mut due,
        );
        self.next_ping_id = next;
        let confirmed = self.peers[peer].direct_path.confirmed();
        for (socket, dst, txid) in due {
            if Some(dst) == confirmed {
                self.peers[peer].path_quality.sent(now);
            }
            self.send_path_probe(now, peer, socket, dst, txid, ProbeKind::Ping);
        }
    }

    /// The first confirmed pair: the session's datagrams go to `addr` from
    /// now on (the WireGuard session itself doesn't change, and datagrams
    /// still arriving through the relay are accepted, so nothing is lost).
    fn upgrade(&mut self, peer: usize, addr: SocketAddr, socket: SocketId) {
        let p = &mut self.peers[peer];
        p.direct = Some(addr);
        p.direct_socket = socket;
        p.path_quality = Estimator::default();
        tracing::debug!(peer = %p.spec.name, %addr, socket = socket.0, "direct path");
        self.events.push_back(Event::PathChanged {
            peer: p.spec.name.clone(),
            path: PeerPath::Direct(addr),
        });
    }

    /// The punched path to `peer` died: back to its relay, with a
    /// handshake through it at once (the relay only knows sessions it saw
    /// handshaken, and rekeys on the direct path went past it).
    fn fall_back(&mut self, now: Instant, peer: usize, lost: SocketAddr) {
        if self.peers[peer].direct != Some(lost) {
            return;
        }
        self.peers[peer].direct = None;
        self.peers[peer].direct_socket = SocketId::MAIN;
        self.peers[peer].path_quality = Estimator::default();
        let Some(relay) = self.path_for(now, peer) else {
            return;
        };
        self.events.push_back(Event::PathChanged {
            peer: self.peers[peer].spec.name.clone(),
            path: PeerPath::Relay(self.relays[relay].spec.name.clone()),
        });
        self.peers[peer].relay = Some(relay);
        self.relays[relay].set_in_use(now, true);
        self.force_handshake(now, peer, relay, Urgency::Now);
    }

    /// Moves `peer`'s path to the relay both vectors agree on, if it beats
    /// the current one clearly, [`choice::CONFIRMATIONS`] times in a row.
    fn evaluate_relay(&mut self, now: Instant, peer: usize) {
        let p = &self.peers[peer];
        let (Some((mine, _)), Some(theirs), Some(current)) =
            (&p.sent_vector, &p.remote_vector, p.relay)
        else {
            return;
        };
        let Some((best, best_cost)) = choice::best(mine, theirs) else {
            return;
        };
        let current_key = self.relays[current].spec.key;
        let current_cost = choice::cost(mine, theirs, &current_key).unwrap_or(Duration::MAX);
        if best == current_key || !choice::clearly_better(best_cost, current_cost) {
            self.peers[peer].better = None;
            return;
        }
        let wins = match self.peers[peer].better {
            Some((relay, n)) if relay == best => n + 1,
            _ => 1,
        };
        self.peers[peer].better = Some((best, wins));
        if wins < choice::CONFIRMATIONS {
            return;
        }
        let Some(target) = self
            .relays
            .iter()
            .position(|r| r.spec.key == best && r.is_usable())
        else {
            return;
        };
        self.peers[peer].better = None;
        tracing::debug!(peer = %self.peers[peer].spec.name, relay = %self.relays[target].spec.name, "a clearly better relay");
        self.set_path(now, peer, target);
        self.force_handshake(now, peer, target, Urgency::Now);
    }

    fn on_relay_news(&mut self, now: Instant, relay: usize, news: RelayNews) {
        let name = self.relays[relay].spec.name.clone();
        match news {
            RelayNews::Nothing => {}
            RelayNews::Registered | RelayNews::Revived => {
                if news == RelayNews::Registered {
                    self.events.push_back(Event::RelayRegistered {
                        relay: name,
                        reflexive: self.relays[relay].reflexive,
                    });
                    // A new server-reflexive candidate: peers hear of it now
                    // rather than at the next check.
                    for peer in 0..self.peers.len() {
                        self.send_candidates_if_changed(now, peer, false);
                    }
                    // The first relay up: find out what NAT we are behind.
                    if self.nat.is_none() && self.netcheck.is_none() {
                        self.start_netcheck(now);
                    }
                    self.party_registered(now, relay);
                }
                // Sessions through it may have lost their routes (the relay
                // forgot us); handshake them again through it.
                let peers: Vec<usize> = (0..self.peers.len())
                    .filter(|&p| self.peers[p].relay == Some(relay))
                    .collect();
                for peer in peers {
                    self.force_handshake(now, peer, relay, Urgency::Now);
                }
            }
            RelayNews::NewEpoch => {
                self.events.push_back(Event::RelayRestarted { relay: name });
                let peers: Vec<usize> = (0..self.peers.len())
                    .filter(|&p| self.peers[p].relay == Some(relay))
                    .collect();
                for peer in peers {
                    self.force_handshake(now, peer, relay, Urgency::Now);
                }
            }
        }
    }

    /// A WireGuard datagram, through a relay or straight from a peer's
    /// endpoint; answers go back the way it came.
    fn handle_wireguard(&mut self, now: Instant, via: Via, bytes: &[u8]) {
        let Ok(packet) = Tunn::parse_incoming_packet(bytes) else {
            self.count(DropReason::Malformed);
            return;
        };
        let peer = match packet {
            Packet::HandshakeInit(ref init) => {
                match parse_handshake_anon(&self.secret, &self.public, init) {
                    Ok(half) => self.by_key.get(&PeerKey(half.peer_static_public)).copied(),
                    Err(_) => {
                        self.count(DropReason::WireGuardRejected);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(ref p) => self.by_slot.get(&(p.receiver_idx >> 8)).copied(),
            Packet::PacketCookieReply(ref p) => self.by_slot.get(&(p.receiver_idx >> 8)).copied(),
            Packet::PacketData(ref p) => self.by_slot.get(&(p.receiver_idx >> 8)).copied(),
        };
        let Some(peer) = peer else {
            self.count(DropReason::NoSession);
            return;
        };
        let dst = match via {
            Via::Relay(relay) => Dest::main(self.relays[relay].spec.addr),
            // A peer's address speaks only for that peer.
            Via::Direct { peer: owner, .. } if owner != peer => {
                self.count(DropReason::UnknownSource);
                return;
            }
            Via::Direct { from, socket, .. } => Dest { addr: from, socket },
        };
        let handshake = matches!(
            packet,
            Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
        );
        // Whether the peer's session reached us straight from an address
        // of its that we weren't sending to: see below.
        let mut adopted = false;
        let result = self.peers[peer]
            .tunn
            .decapsulate(None, bytes, &mut self.scratch);
        if !matches!(result, TunnResult::Err(_)) {
            let was_active = self.peers[peer].is_active(now);
            match via {
                Via::Relay(relay) => {
                    self.relays[relay].forwarded(now);
                    if !was_active {
                        // Traffic again after a quiet spell: the relay it
                        // came through is probed fast again (a receiving
                        // side must notice a dead relay within about a
                        // second too).
                        self.relays[relay].set_in_use(now, true);
                    }
                }
                Via::Direct { from, socket, .. } => {
                    self.peers[peer].direct_path.heard_from(now, from);
                    let p = &mut self.peers[peer];
                    adopted =
                        !p.pinned && p.direct.is_none() && p.direct_path.adopt(now, socket, from);
                }
            }
            if !was_active {
                self.peers[peer].direct_path.wake(now);
            }
            self.peers[peer].last_activity = Some(now);
        }
        match result {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::debug!(peer = %self.peers[peer].spec.name, error = ?e, "WireGuard message refused");
                self.count(DropReason::WireGuardRejected);
                return;
            }
            TunnResult::WriteToNetwork(datagram) => {
                let payload = datagram.to_vec();
                self.send_wireguard(now, peer, dst, payload);
                // boringtun queues packets while a handshake is pending;
                // flushing them is a decapsulate of nothing, until Done.
                self.flush_queued(now, peer, dst);
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                if src != self.peers[peer].spec.virtual_ip {
                    self.count(DropReason::SpoofedInnerSource);
                    return;
                }
                let packet = packet.to_vec();
                // Addressed to us, or the segment's broadcast and
                // multicast (LAN discovery); nothing else.
                let for_us = self
                    .virtual_ip
                    .is_some_and(|ip| packet.get(16..20) == Some(&ip.octets()[..]));
                if !for_us && !self.accept_copy(now, peer, &packet) {
                    return;
                }
                self.tun_out.push_back(packet);
            }
            TunnResult::WriteToTunnelV6(..) => {
                self.count(DropReason::SpoofedInnerSource);
                return;
            }
        }
        if adopted {
            // Its session came straight to us: answer the same way (the
            // relay may never have seen this session, so it couldn't carry
            // our answers), even before our own pong arrives.
            if let Via::Direct { from, socket, .. } = via {
                self.upgrade(peer, from, socket);
            }
        }
        if handshake {
            // Answered (a response to ours) or answering (theirs): no retry.
            self.peers[peer].handshake_sent = None;
            // The session now lives on this relay: it installed the routes
            // from this handshake, so our datagrams go back through it.
            if let Via::Relay(relay) = via {
                self.set_path(now, peer, relay);
            }
        }
    }

    fn flush_queued(&mut self, now: Instant, peer: usize, dst: Dest) {
        // Bounded: boringtun's queue holds at most a few hundred packets.
        for _ in 0..1024 {
            match self.peers[peer]
                .tunn
                .decapsulate(None, &[], &mut self.scratch)
            {
                TunnResult::WriteToNetwork(datagram) => {
                    let payload = datagram.to_vec();
                    self.send_wireguard(now, peer, dst, payload);
                }
                _ => return,
            }
        }
    }

    fn wireguard_timers(&mut self, now: Instant, peer: usize) {
        match self.peers[peer].tunn.update_timers(&mut self.scratch) {
            TunnResult::WriteToNetwork(datagram) => {
                let payload = datagram.to_vec();
                match self.destination(now, peer) {
                    Some(dst) => self.send_wireguard(now, peer, dst, payload),
                    None => self.count(DropReason::NoRelay),
                }
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %self.peers[peer].spec.name, error = ?e, "WireGuard timer");
            }
            _ => {}
        }
    }

    /// Where a datagram for `peer` goes: its endpoint if it has one, else
    /// the relay [`Self::path_for`] picks.
    fn destination(&mut self, now: Instant, peer: usize) -> Option<Dest> {
        if let Some(addr) = self.peers[peer].direct {
            let socket = self.peers[peer].direct_socket;
            return Some(Dest { addr, socket });
        }
        let relay = self.path_for(now, peer)?;
        Some(Dest::main(self.relays[relay].spec.addr))
    }

    /// The way `peer`'s datagrams take now, for `status`.
    fn path_of(&self, peer: &Peer) -> Option<PeerPath> {
        match (peer.direct, peer.relay) {
            (Some(addr), _) => Some(PeerPath::Direct(addr)),
            (None, Some(relay)) => Some(PeerPath::Relay(self.relays[relay].spec.name.clone())),
            (None, None) => None,
        }
    }

    /// The relay a datagram for `peer` goes through: the session's, while it
    /// is usable; otherwise the best usable relay, with a handshake through
    /// it (the old relay's routes are of no use on another).
    fn path_for(&mut self, now: Instant, peer: usize) -> Option<usize> {
        if let Some(relay) = self.peers[peer].relay {
            if self.relays[relay].is_usable() {
                return Some(relay);
            }
        }
        let best = self.preferred_relay(peer).or_else(|| self.best_relay())?;
        if self.peers[peer].relay.is_some() {
            self.set_path(now, peer, best);
            self.force_handshake(now, peer, best, Urgency::Now);
        }
        Some(best)
    }

    /// The relay both latency vectors agree on for `peer`, if we have both
    /// and it is usable.
    fn preferred_relay(&self, peer: usize) -> Option<usize> {
        let p = &self.peers[peer];
        let (mine, _) = p.sent_vector.as_ref()?;
        let (best, _) = choice::best(mine, p.remote_vector.as_ref()?)?;
        self.relays
            .iter()
            .position(|r| r.spec.key == best && r.is_usable())
    }

    /// The usable relay with the lowest RTT; ties (and relays not measured
    /// yet) broken by the relay's key, so the choice is deterministic.
    fn best_relay(&self) -> Option<usize> {
        (0..self.relays.len())
            .filter(|&r| self.relays[r].is_usable())
            .min_by_key(|&r| {
                let relay = &self.relays[r];
                (
                    relay.estimator.rtt().unwrap_or(Duration::MAX),
                    relay.spec.key.0,
                )
            })
    }

    fn set_path(&mut self, now: Instant, peer: usize, relay: usize) {
        let old = self.peers[peer].relay.replace(relay);
        if old == Some(relay) {
            return;
        }
        self.relays[relay].set_in_use(now, true);
        if self.peers[peer].direct.is_none() {
            self.events.push_back(Event::PathChanged {
                peer: self.peers[peer].spec.name.clone(),
                path: PeerPath::Relay(self.relays[relay].spec.name.clone()),
            });
        }
    }

    /// A relay became unreachable: every peer on it moves to the best other
    /// one, with a handshake through it.
    fn move_paths_off(&mut self, now: Instant, relay: usize) {
        let peers: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.peers[p].relay == Some(relay))
            .collect();
        for peer in peers {
            let Some(best) = self.preferred_relay(peer).or_else(|| self.best_relay()) else {
                return;
            };
            self.set_path(now, peer, best);
            self.force_handshake(now, peer, best, Urgency::Now);
        }
    }

    /// A packet for `peer` from the TUN: the peer is active, and the relay
    /// its path uses goes back to the fast probe cadence at once.
    fn touch(&mut self, now: Instant, peer: usize) {
        let was_active = self.peers[peer].is_active(now);
        self.peers[peer].last_activity = Some(now);
        if !was_active {
            if let (None, Some(relay)) = (self.peers[peer].direct, self.peers[peer].relay) {
                self.relays[relay].set_in_use(now, true);
            }
            self.peers[peer].direct_path.wake(now);
            self.next_wireguard_tick = self.next_wireguard_tick.min(now + WIREGUARD_TICK);
        }
    }

    /// Queues a WireGuard datagram of `peer`'s session. An initiation starts
    /// the engine's own retry clock for it ([`HANDSHAKE_RETRY_FIRST`]): a
    /// relay drops an initiation for a peer that hasn't registered there
    /// yet, and boringtun alone would retry only after 5 s.
    fn send_wireguard(&mut self, now: Instant, peer: usize, dst: Dest, payload: Vec<u8>) {
        if payload.first() == Some(&1) && self.peers[peer].handshake_sent.is_none() {
            self.peers[peer].handshake_sent = Some((now, HANDSHAKE_RETRY_FIRST));
        }
        self.transmits.push_back(Transmit {
            dst: dst.addr,
            payload,
            socket: dst.socket,
        });
    }

    /// Retries a handshake that got no answer, sooner than boringtun would:
    /// after 200 ms, then doubling up to boringtun's own 5 s.
    fn retry_handshake(&mut self, now: Instant, peer: usize) {
        let Some((sent, wait)) = self.peers[peer].handshake_sent else {
            return;
        };
        if now.saturating_duration_since(sent) < wait {
            return;
        }
        let next = Some((now, (wait * 2).min(HANDSHAKE_RETRY_MAX)));
        if let Some(addr) = self.peers[peer].direct {
            self.peers[peer].handshake_sent = next;
            let socket = self.peers[peer].direct_socket;
            self.initiate(now, peer, Dest { addr, socket });
            return;
        }
        let Some(relay) = self.path_for(now, peer) else {
            return;
        };
        self.peers[peer].handshake_sent = next;
        self.force_handshake(now, peer, relay, Urgency::Now);
    }

    /// A handshake initiation to `peer` through `relay`, now. Only through a
    /// relay that has registered us (it drops handshakes from unregistered
    /// sources; its ack triggers the handshake instead), and never for a
    /// peer with an endpoint: its session doesn't live on any relay.
    fn force_handshake(&mut self, now: Instant, peer: usize, relay: usize, urgency: Urgency) {
        if self.peers[peer].direct.is_some() {
            return;
        }
        if !self.relays[relay].is_registered() || !self.relays[relay].reachable() {
            return;
        }
        if !self.peers[peer].may_force_handshake(now) && urgency == Urgency::Prompted {
            return;
        }
        let dst = Dest::main(self.relays[relay].spec.addr);
        self.initiate(now, peer, dst);
    }

    /// A fresh handshake initiation of `peer`'s session, to `dst`.
    fn initiate(&mut self, now: Instant, peer: usize, dst: Dest) {
        let result = self.peers[peer]
            .tunn
            .format_handshake_initiation(&mut self.scratch, true);
        if let TunnResult::WriteToNetwork(datagram) = result {
            let payload = datagram.to_vec();
            self.send_wireguard(now, peer, dst, payload);
        }
    }
}

/// How a datagram reached us: through a relay (index), or from an address
/// known to be a peer's (index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Relay(usize),
    Direct {
        peer: usize,
        from: SocketAddr,
        socket: SocketId,
    },
}

/// Where a datagram goes, and from which of our sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dest {
    addr: SocketAddr,
    socket: SocketId,
}

impl Dest {
    fn main(addr: SocketAddr) -> Self {
        Self {
            addr,
            socket: SocketId::MAIN,
        }
    }
}

/// Who sent a ping: `lanrage ping` (its pong is an event), or the engine
/// measuring an active peer's path (RTT, jitter, loss for `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingKind {
    Asked,
    Measuring,
}

/// Whether a forced handshake waits for the per-peer spacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// Something we know happened (a relay restart, failover): at once.
    Now,
    /// An unauthenticated prompt (a hint): rate-limited per peer.
    Prompted,
}

/// A STUN transaction id from the engine's generator (seeded from OS
/// randomness by the driver).
fn random_txid(rng: &mut u64) -> TransactionId {
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&xorshift(rng).to_le_bytes());
    id[8..].copy_from_slice(&xorshift(rng).to_le_bytes()[..4]);
    id
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// `count` distinct random ports a NAT may hand out (1024–65535): every
/// other one within [`birthday::NEAR`] of a port in `near` (the peer's
/// known mappings), the rest from the whole range. Against a NAT that
/// scatters uniformly, where the ports are drawn makes no difference to
/// the odds; against one that allocates from a block around its first
/// mapping (carrier-grade NATs' per-subscriber blocks), the near half
/// lands in the block.
fn random_ports(rng: &mut u64, count: usize, near: &[u16]) -> Vec<u16> {
    let lowest = u64::from(birthday::LOWEST_NAT_PORT);
    let span = u64::from(u16::MAX) - lowest + 1;
    let mut ports: Vec<u16> = Vec::with_capacity(count);
    // Bounded: with 300 of 64,512 taken, a draw repeats rarely.
    for i in 0..count * 4 {
        if ports.len() == count {
            break;
        }
        let draw = xorshift(rng);
        let port = if i % 2 == 0 && !near.is_empty() {
            let center = u64::from(near[(i / 2) % near.len()]);
            let offset = draw % (2 * u64::from(birthday::NEAR) + 1);
            (center + offset)
                .saturating_sub(u64::from(birthday::NEAR))
                .clamp(lowest, u64::from(u16::MAX))
        } else {
            lowest + draw % span
        } as u16;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// A random duration in `[0, max]`.
fn jitter(rng: &mut u64, max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(xorshift(rng) % nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ports_are_distinct_nat_ports_half_of_them_near_the_known_ones() {
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        let ports = random_ports(&mut rng, birthday::PROBE_PORTS, &[20467]);
        assert_eq!(ports.len(), birthday::PROBE_PORTS);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "distinct");
        assert!(ports.iter().all(|&p| p >= birthday::LOWEST_NAT_PORT));
        let near = ports
            .iter()
            .filter(|&&p| p.abs_diff(20467) <= birthday::NEAR)
            .count();
        // Half by construction, plus the few uniform draws that land near.
        assert!((150..=170).contains(&near), "{near} near");
        // Near the top of the range, clamped into it; no known port: all
        // uniform.
        assert!(random_ports(&mut rng, 50, &[65500])
            .iter()
            .all(|&p| p >= 1024));
        let far = random_ports(&mut rng, 300, &[]);
        assert!(far.iter().filter(|&&p| p.abs_diff(20467) <= 1024).count() < 30);
    }
}
