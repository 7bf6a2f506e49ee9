//! The sans-IO router: `handle(now, src, packet) -> Verdict`.
//!
//! It decides, for every datagram on the relay's port, whether to forward it
//! (and where), answer it (a registration ack, a cookie reply, an
//! unknown-session hint), or drop it with a counted reason. It never reads the
//! clock, opens a socket or asks the OS for randomness: time and a random seed
//! come in, verdicts go out. Every IO backend executes the same verdicts.
//!
//! Drive loop, as a backend runs it:
//! 1. for each received datagram: `handle(now, src, &mut buf[..len])`, then act
//!    on the verdict (send `buf` to the forward address, or `buf[..n]` back to
//!    `src`);
//! 2. when `poll_timeout()` has passed: `handle_timeout(now)`;
//! 3. if route commands are on ([`RouterConfig::route_commands`]) and
//!    [`Router::has_commands`]: [`Router::take_commands`], and apply them in
//!    order, outside any router call (the XDP map updater does).
//!
//! Routing follows `docs/protocol.md` ("Routing"): registrations bind a
//! WireGuard public key to an endpoint; an initiation is routed to the
//! consenting peer whose mac1 key verifies it; a response installs a route pair
//! keyed by `(source endpoint, receiver_index)`; transport follows the routes.
//!
//! Cost discipline, because the relay sits on a public address:
//! - a source that has not shown it receives at its address costs at most a
//!   lookup and a MAC: a registration from it gets a stateless challenge
//!   (return-routability, `docs/protocol.md` §2.4), never an X25519;
//! - the X25519 of a proven new client runs on the worker, outside the core
//!   lock that refreshes and handshakes need;
//! - every budget is charged only for traffic that is what it claims to be
//!   (a proven source, a verified MAC, a matching mac1), so junk sent in a
//!   client's name does not spend the client's budget;
//! - no key can fill a global table: pending handshakes and sessions are
//!   capped per pair of peers, and the oldest is replaced, not the newest refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lanrage_proto::control::{
    Challenge, ControlError, ControlMessage, ProbeAck, ProbeView, RegisterAck, RegisterView,
    Registration, RegistrationCookie, SessionKeys, UnknownSession, CHALLENGE_LEN, NO_COOKIE,
    PROBE_ACK_LEN, REGISTER_ACK_LEN, UNKNOWN_SESSION_LEN,
};
use lanrage_proto::mac::{self, CookieKey, Mac1Key};
use lanrage_proto::path_probe::ReplayWindow;
use lanrage_proto::signal::SignalView;
use lanrage_proto::wireguard::{CookieReply, Handshake, Transport, COOKIE_REPLY_LEN, MAC_LEN};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, DatagramKind, PeerKey, WgMessage};

use crate::command::{Command, CommandQueue};
use crate::metrics::{DropReason, Event, Metrics};
pub use crate::rate_limit::RateLimit;
use crate::rate_limit::{Bucket, RateLimiter};
pub use crate::route_table::RouteKey;
use crate::route_table::{Route, RouteTable};
pub use crate::stun::{LocalSocket, StunConfig, StunSockets};
pub use party::PartyInbound;

mod party;
use crate::stun::{StunReply, StunResponder};

/// What to do with a datagram after [`Router::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the buffer (its whole length) to this address.
    Forward(SocketAddr),
    /// Send `buf[..len]` back to the datagram's source. Replies are written into
    /// the received buffer, so they can never be larger than the request.
    Reply(usize),
    /// Send nothing; the reason was counted.
    Drop(DropReason),
    /// Send nothing now: the datagram went to a service that answers
    /// later (a party request; counted as accepted).
    Consumed,
}

/// What [`Router::handle_at`] decided: a [`Verdict`] for the socket the
/// datagram arrived on, or a STUN answer that must leave from another of
/// the relay's sockets (an RFC 5780 CHANGE-REQUEST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Verdict(Verdict),
    /// Send `buf[..len]` to the datagram's source from `socket`. Written
    /// into the received buffer, so never larger than the request.
    ReplyFrom {
        socket: LocalSocket,
        len: usize,
    },
}

/// Limits and timeouts of the router. `Default` holds the documented defaults
/// (`docs/configuration.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// A route pair is removed when neither direction carried a packet for this
    /// long. WireGuard rejects a session after 180 s (REJECT_AFTER_TIME) and
    /// rekeys every 120 s, so idle routes older than that are dead.
    pub route_idle_timeout: Duration,
    /// A registration not refreshed for this long is removed with its routes.
    pub registration_timeout: Duration,
    /// An initiation waits this long for its response. WireGuard retries after
    /// 5 s (REKEY_TIMEOUT) with a new index, so 10 s covers one retry.
    pub pending_handshake_timeout: Duration,
    pub max_registrations: usize,
    /// Route entries (each session is two: one per direction).
    pub max_routes: usize,
    pub max_pending_handshakes: usize,
    /// Handshakes and registrations per source IP.
    pub handshake_rate_limit: RateLimit,
    /// Bound on the per-source tables of both rate limiters.
    pub max_rate_limited_sources: usize,
    /// Above this many initiations per second, relay-wide, an initiation must
    /// carry a mac2 proving its source address, or it gets a cookie reply.
    /// 0 means always.
    pub under_load_handshakes_per_second: u32,
    /// Unknown-session hints per source IP.
    pub hint_rate_limit: RateLimit,
    /// Queue a [`Command`] for every route change, for a driver that keeps
    /// a copy of the routes (the XDP fast path). Off by default: nothing
    /// is queued that nobody would drain.
    pub route_commands: bool,
    /// The STUN responder: where the relay's STUN sockets are, and its
    /// per-source rate limit. The default knows only the primary socket,
    /// at an unknown address.
    pub stun: StunConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            route_idle_timeout: Duration::from_secs(180),
            registration_timeout: Duration::from_secs(90),
            pending_handshake_timeout: Duration::from_secs(10),
            max_registrations: 100_000,
            max_routes: 1_000_000,
            max_pending_handshakes: 100_000,
            handshake_rate_limit: RateLimit {
                per_second: 20,
                burst: 50,
            },
            max_rate_limited_sources: 100_000,
            under_load_handshakes_per_second: 5_000,
            hint_rate_limit: RateLimit {
                per_second: 2,
                burst: 4,
            },
            route_commands: false,
            stun: StunConfig::default(),
        }
    }
}

/// WireGuard's cookie secret lifetime (paper §5.4.7: "changing every two
/// minutes"). The registration cookie's secret rotates at the same period.
const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// Label of the registration cookie's rotating secret (docs/protocol.md §2.7).
const REGISTRATION_COOKIE_LABEL: &[u8] = b"lanrage registration cookie v2";
/// Sessions (route pairs) kept per pair of peers. WireGuard holds at most three
/// keypairs per peer (previous, current, next); one more covers a handshake
/// completing while the relay has not yet seen the oldest idle out. A fifth
/// replaces the oldest.
pub const MAX_SESSIONS_PER_PEER: usize = 4;
/// Pending initiations kept per (initiator, responder). WireGuard retries an
/// unanswered initiation every 5 s (REKEY_TIMEOUT) and a pending entry lives
/// 10 s, so two cover one retry; a third replaces the oldest.
pub const MAX_PENDING_PER_PEER: usize = 2;
/// A registered client's own budget for authenticated registrations from it
/// (refreshes every 20–25 s, a challenge round trip, roaming).
const CLIENT_REGISTRATION_LIMIT: RateLimit = RateLimit {
    per_second: 1,
    burst: 10,
};
/// A registered client's budget for signals it sends through the relay
/// (latency vectors, candidates, pings: a few per second at most).
/// Signal timestamps remembered per client for the replay window (80
/// bytes a client): a client sends a few signals a second.
const SIGNALS_REMEMBERED: usize = 8;
const CLIENT_SIGNAL_LIMIT: RateLimit = RateLimit {
    per_second: 20,
    burst: 40,
};
/// How often `handle_timeout` sweeps the tables.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the core did not apply an authenticated registration.
enum Refusal {
    /// The source must (again) prove its address: answer with a challenge.
    NeedsProof,
    Drop(DropReason),
}

/// Locks a mutex shared by workers. A worker that panicked mid-update leaves
/// tables that are still memory-safe and at worst briefly inconsistent; keep
/// serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a handler decided, before it touches the buffer again.
enum Outcome {
    Forward(SocketAddr),
    ForwardZeroingMac2(SocketAddr),
    Reply(Reply),
    Consumed,
}

impl Outcome {
    /// A reply of `bytes`, or a counted drop if it is longer than any reply
    /// should be (a bug, never sent cut short).
    fn reply(bytes: &[u8]) -> Result<Self, DropReason> {
        Reply::new(bytes)
            .map(Outcome::Reply)
            .ok_or(DropReason::ReplyLargerThanRequest)
    }
}

/// The largest reply the relay sends: a cookie reply, a registration ack,
/// a challenge, a probe ack or an unknown-session hint.
const MAX_REPLY_LEN: usize = {
    let lens = [
        COOKIE_REPLY_LEN,
        REGISTER_ACK_LEN,
        CHALLENGE_LEN,
        PROBE_ACK_LEN,
        UNKNOWN_SESSION_LEN,
    ];
    let mut max = 0;
    let mut i = 0;
    while i < lens.len() {
        if lens[i] > max {
            max = lens[i];
        }
        i += 1;
    }
    max
};

/// A reply held inline, until it is checked against the request's length.
#[derive(Debug)]
struct Reply {
    buf: [u8; MAX_REPLY_LEN],
    len: usize,
}

impl Reply {
    /// `None` if `bytes` is longer than any reply the relay sends: a reply
    /// is never cut short (a truncated reply would pass the "never larger
    /// than the request" check and go out corrupt).
    fn new(bytes: &[u8]) -> Option<Self> {
        let mut buf = [0u8; MAX_REPLY_LEN];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self {
            buf,
            len: bytes.len(),
        })
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

struct Client {
    endpoint: SocketAddr,
    keys: SessionKeys,
    mac1: Mac1Key,
    cookie: CookieKey,
    last_timestamp: u64,
    consent: Vec<PeerKey>,
    refreshed: Instant,
    /// Keys of routes whose source is this client's endpoint, oldest first.
    routes: Vec<RouteKey>,
    /// Pending initiations this client sent, as keys of `Core::pending`,
    /// oldest first (the per-peer quota replaces from the front).
    pending: Vec<(PeerKey, u32)>,
    /// Authenticated registrations from this client.
    registration_budget: Bucket,
    /// Initiations from this client's endpoint whose mac1 matched no
    /// consenting peer. Junk spends this, never the per-IP handshake budget,
    /// so junk sent in a client's name can't starve a neighbour behind the
    /// same IP; when it is empty, junk is dropped before any mac1 work.
    junk_budget: Bucket,
    /// Timestamps of signals forwarded from this client: each goes once,
    /// and only within 2 s of the newest (replay through the relay). A
    /// window, not "above the last": a jittery path reorders signals sent
    /// close together.
    signals_seen: ReplayWindow<SIGNALS_REMEMBERED>,
    /// Signals from this client ([`CLIENT_SIGNAL_LIMIT`]).
    signal_budget: Bucket,
    /// The id of the last party request accepted from this client, or the
    /// timestamp of the registration that bound it: a request captured
    /// before that is a replay.
    party_last_id: u64,
    /// Party requests from this client ([`party::CLIENT_PARTY_LIMIT`]).
    party_budget: Bucket,
}

impl Client {
    fn consents_to(&self, peer: &PeerKey) -> bool {
        self.consent.contains(peer)
    }
}

/// An initiation awaiting its response, keyed by (responder, initiator's sender index).
struct Pending {
    initiator: PeerKey,
    created: Instant,
}

/// The last accepted timestamp of a key whose registration was removed
/// (expired, evicted, taken over), kept for the registration lifetime so a
/// captured registration can't be replayed once the key's state is gone.
struct ReplayMemory {
    last: HashMap<PeerKey, (u64, Instant)>,
    /// Keys in the order they were remembered: what goes first when full.
    order: std::collections::VecDeque<(PeerKey, Instant)>,
    max: usize,
}

impl ReplayMemory {
    fn new(max: usize) -> Self {
        Self {
            last: HashMap::new(),
            order: std::collections::VecDeque::new(),
            max: max.max(1),
        }
    }

    fn remember(&mut self, key: PeerKey, timestamp: u64, now: Instant) {
        while self.last.len() >= self.max {
            let Some((oldest, at)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&oldest).is_some_and(|(_, t)| *t == at) {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(key, (timestamp, now));
        self.order.push_back((key, now));
    }

    fn last_timestamp(&self, key: &PeerKey) -> Option<u64> {
        self.last.get(key).map(|(ts, _)| *ts)
    }

    fn forget(&mut self, key: &PeerKey) {
        self.last.remove(key);
    }

    fn expire(&mut self, now: Instant, keep_for: Duration) {
        while let Some((key, at)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < keep_for {
                break;
            }
            self.order.pop_front();
            if self.last.get(&key).is_some_and(|(_, t)| *t == at) {
                self.last.remove(&key);
            }
        }
    }
}

/// A secret that rotates every [`COOKIE_SECRET_LIFETIME`], derived from the
/// run's seed, so every worker computes the same one without sharing state.
/// The current and the previous generation are accepted.
struct RotatingSecret {
    seed: [u8; 32],
    label: &'static [u8],
    started: Instant,
    /// (generation, its secret, the previous generation's secret).
    cached: Option<(u64, [u8; 32], Option<[u8; 32]>)>,
}

impl RotatingSecret {
    fn new(seed: [u8; 32], label: &'static [u8], started: Instant) -> Self {
        Self {
            seed,
            label,
            started,
            cached: None,
        }
    }

    /// The current secret and the previous one (none in the first period).
    fn secrets(&mut self, now: Instant) -> ([u8; 32], Option<[u8; 32]>) {
        let generation = now.saturating_duration_since(self.started).as_secs()
            / COOKIE_SECRET_LIFETIME.as_secs();
        match self.cached {
            Some((g, current, previous)) if g == generation => (current, previous),
            _ => {
                let current = mac::derive_secret(&self.seed, self.label, generation);
                let previous = generation
                    .checked_sub(1)
                    .map(|g| mac::derive_secret(&self.seed, self.label, g));
                self.cached = Some((generation, current, previous));
                (current, previous)
            }
        }
    }
}

/// Unknown-session hints the relay sends in all, per second, on top of the
/// per-IP limit. A spoofed transport flood from many sources would otherwise
/// make the relay answer nearly every datagram: a send per packet that the
/// flood makes the relay pay, and reflection towards the spoofed addresses.
/// Hints only speed recovery up (probes and refreshes also find a restart),
/// so under such a flood they are shed first.
const TOTAL_HINT_LIMIT: RateLimit = RateLimit {
    per_second: 5_000,
    burst: 5_000,
};

/// The unknown-session hint budget: per source IP, and in total.
struct HintLimiter {
    per_ip: RateLimiter,
    total: Bucket,
}

impl HintLimiter {
    fn allow(&mut self, now: Instant, src: SocketAddr) -> bool {
        // The total first: when it is empty, a flood costs no table work.
        self.total.has_token(TOTAL_HINT_LIMIT, now)
            && self.per_ip.allow(now, src.ip())
            && self.total.take(TOTAL_HINT_LIMIT, now)
    }
}

/// What an authenticated registration had shown about its source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressProof {
    /// It came from the address already bound to its key (a refresh).
    BoundEndpoint,
    /// It echoed a valid cookie for its key and source address.
    Cookie,
}

/// Counts initiations per one-second window to decide "under load".
struct LoadMeter {
    window_start: Instant,
    current: u32,
    previous: u32,
}

/// One data-plane worker's handle on the router. Every worker has its own
/// (see [`Router::worker`]); all share one [`Core`] and one route table.
///
/// Transport messages, the per-packet path, take no lock: they are one lookup
/// in the lock-free route table. Everything else (registrations, handshakes,
/// expiry) runs under the core's mutex, at handshake rates.
pub struct Router {
    core: Arc<Mutex<Core>>,
    routes: Arc<RouteTable>,
    metrics: Arc<Metrics>,
    /// Shared by all workers, with a lock of its own (not the core's): a
    /// spoofed source can reach any worker, so a per-worker budget would
    /// multiply the per-IP hint rate by the worker count.
    hints: Arc<Mutex<HintLimiter>>,
    /// The relay's key, for the X25519 of proven new clients, which runs here
    /// on the worker rather than under the core lock.
    secret: StaticSecret,
    registration_cookies: RotatingSecret,
    epoch: u64,
    public: PeerKey,
    /// Set under the core lock when a command is queued, cleared when they
    /// are taken: lets a driver check for commands without the lock.
    commands_queued: Arc<AtomicBool>,
    /// Shares its rate limiter with every worker's.
    stun: StunResponder,
}

/// The slow path's state: registrations, pending handshakes, rate limits,
/// cookies, and the write side of the route table.
struct Core {
    config: RouterConfig,
    epoch: u64,
    seed: [u8; 32],
    started: Instant,
    nonce_counter: u64,
    clients: HashMap<PeerKey, Client>,
    by_endpoint: HashMap<SocketAddr, PeerKey>,
    routes: Arc<RouteTable>,
    pending: HashMap<(PeerKey, u32), Pending>,
    /// Per source IP: X25519 for proven new clients, and handshakes that are
    /// what they claim to be (mac1 matched a consenting peer).
    handshake_limiter: RateLimiter,
    replay: ReplayMemory,
    load: LoadMeter,
    next_sweep: Instant,
    metrics: Arc<Metrics>,
    /// Side effects for the driver (route changes for the XDP map).
    commands: CommandQueue,
    /// The party service's queue, once attached.
    party: Option<std::sync::mpsc::SyncSender<PartyInbound>>,
}

impl Router {
    /// `epoch` identifies this relay run (clients see it change on restart);
    /// `seed` is 32 random bytes for the cookie secrets and nonces.
    pub fn new(
        config: RouterConfig,
        secret: StaticSecret,
        epoch: u64,
        seed: [u8; 32],
        now: Instant,
    ) -> Self {
        let public = PeerKey::from(&PublicKey::from(&secret));
        let handshake_limiter =
            RateLimiter::new(config.handshake_rate_limit, config.max_rate_limited_sources);
        let hints = HintLimiter {
            per_ip: RateLimiter::new(config.hint_rate_limit, config.max_rate_limited_sources),
            total: Bucket::full(TOTAL_HINT_LIMIT, now),
        };
        let routes = Arc::new(RouteTable::new(now));
        let metrics = Arc::new(Metrics::default());
        let replay = ReplayMemory::new(config.max_registrations);
        let commands = CommandQueue::new(config.route_commands);
        let commands_queued = commands.signal();
        let stun = StunResponder::new(
            config.stun,
            config.max_rate_limited_sources,
            Arc::clone(&metrics),
            now,
        );
        let core = Core {
            config,
            epoch,
            seed,
            started: now,
            nonce_counter: 0,
            clients: HashMap::new(),
            by_endpoint: HashMap::new(),
            routes: Arc::clone(&routes),
            pending: HashMap::new(),
            handshake_limiter,
            replay,
            load: LoadMeter {
                window_start: now,
                current: 0,
                previous: 0,
            },
            next_sweep: now + SWEEP_INTERVAL,
            metrics: Arc::clone(&metrics),
            commands,
            party: None,
        };
        Self {
            core: Arc::new(Mutex::new(core)),
            routes,
            metrics,
            hints: Arc::new(Mutex::new(hints)),
            secret,
            registration_cookies: RotatingSecret::new(seed, REGISTRATION_COOKIE_LABEL, now),
            epoch,
            public,
            commands_queued,
            stun,
        }
    }

    /// Another worker's handle on the same router state.
    pub fn worker(&self) -> Router {
        Router {
            core: Arc::clone(&self.core),
            routes: Arc::clone(&self.routes),
            metrics: Arc::clone(&self.metrics),
            hints: Arc::clone(&self.hints),
            secret: self.secret.clone(),
            registration_cookies: RotatingSecret::new(
                self.registration_cookies.seed,
                REGISTRATION_COOKIE_LABEL,
                self.registration_cookies.started,
            ),
            epoch: self.epoch,
            public: self.public,
            commands_queued: Arc::clone(&self.commands_queued),
            stun: self.stun.clone(),
        }
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    pub fn public_key(&self) -> PeerKey {
        self.public
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters of all workers (sharded per thread, summed when read).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decides what to do with one datagram that arrived on the primary
    /// socket. `buf` is exactly the datagram; the router may rewrite it
    /// (zeroing mac2) or overwrite its head with a reply.
    ///
    /// For a driver with no alternate STUN sockets: a STUN answer that
    /// should leave from one (configured in [`RouterConfig::stun`]) is a
    /// counted drop here; drivers with them call [`Router::handle_at`].
    pub fn handle(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Verdict {
        match self.handle_at(now, LocalSocket::Primary, src, buf) {
            Decision::Verdict(verdict) => verdict,
            Decision::ReplyFrom { .. } => self.drop(src, DropReason::StunNoAlternateSocket),
        }
    }

    /// Decides what to do with one datagram that arrived on `socket`. The
    /// alternate sockets carry STUN only; anything else on them is
    /// `unknown_protocol`.
    pub fn handle_at(
        &mut self,
        now: Instant,
        socket: LocalSocket,
        src: SocketAddr,
        buf: &mut [u8],
    ) -> Decision {
        let kind = classify(buf);
        if kind == DatagramKind::Stun {
            return match self.stun.handle(now, socket, src, buf) {
                Ok(StunReply { from, len }) if from == socket => {
                    Decision::Verdict(Verdict::Reply(len))
                }
                Ok(StunReply { from, len }) => Decision::ReplyFrom { socket: from, len },
                Err(reason) => Decision::Verdict(self.drop(src, reason)),
            };
        }
        if socket != LocalSocket::Primary {
            return Decision::Verdict(self.drop(src, DropReason::UnknownProtocol));
        }
        let outcome = match kind {
            DatagramKind::WireGuard => match WgMessage::parse(buf) {
                // The per-packet path: one lock-free lookup, no rewrite.
                Ok(WgMessage::Transport(t)) => self.route_transport(now, src, t),
                Ok(handshake) => self.core().handle_handshake(now, src, handshake),
                Err(_) => Err(DropReason::MalformedWireGuard),
            },
            DatagramKind::Control => self.handle_control(now, src, buf),
            DatagramKind::Stun | DatagramKind::Unknown => Err(DropReason::UnknownProtocol),
        };
        Decision::Verdict(match outcome {
            Ok(Outcome::Forward(dst)) => Verdict::Forward(dst),
            Ok(Outcome::ForwardZeroingMac2(dst)) => {
                // The responder can't verify the relay's cookie; a zero mac2
                // reads as "no cookie" to it.
                let len = buf.len();
                buf[len - MAC_LEN..].fill(0);
                Verdict::Forward(dst)
            }
            // Replies are built no larger than the request (see `Reply`), so
            // this copy always fits; the check keeps that a structural fact.
            Ok(Outcome::Reply(reply)) if reply.len <= buf.len() => {
                buf[..reply.len].copy_from_slice(reply.bytes());
                Verdict::Reply(reply.len)
            }
            Ok(Outcome::Reply(_)) => self.drop(src, DropReason::ReplyLargerThanRequest),
            Ok(Outcome::Consumed) => Verdict::Consumed,
            Err(reason) => self.drop(src, reason),
        })
    }

    fn drop(&self, src: SocketAddr, reason: DropReason) -> Verdict {
        self.metrics.record_drop(reason);
        tracing::trace!(%src, reason = reason.as_str(), "dropped");
        Verdict::Drop(reason)
    }

    fn route_transport(
        &mut self,
        now: Instant,
        src: SocketAddr,
        t: Transport<'_>,
    ) -> Result<Outcome, DropReason> {
        let key = RouteKey {
            src,
            index: t.receiver_index(),
        };
        if let Some(dst) = self.routes.forward(&key, now) {
            self.metrics.record(Event::ForwardedTransport);
            return Ok(Outcome::Forward(dst));
        }
        // Tell the source so it re-handshakes (or re-registers) now instead of
        // after WireGuard's timeouts. Rate-limited, and smaller than the
        // smallest transport message, so never an amplifier.
        if !lock(&self.hints).allow(now, src) {
            return Err(DropReason::NoRoute);
        }
        self.metrics.record_drop(DropReason::NoRoute);
        let hint = UnknownSession {
            receiver_index: key.index,
            relay_epoch: self.epoch,
            registered: self.core().by_endpoint.contains_key(&src),
        };
        self.metrics.record(Event::UnknownSessionHintSent);
        tracing::debug!(%src, index = key.index, registered = hint.registered, "unknown session hint");
        Outcome::reply(&hint.encode())
    }

    // ---- control ----------------------------------------------------------------

    fn handle_control(
        &mut self,
        now: Instant,
        src: SocketAddr,
        buf: &[u8],
    ) -> Result<Outcome, DropReason> {
        match ControlMessage::parse(buf) {
            Ok(ControlMessage::Register(view)) => self.register(now, src, view),
            Ok(ControlMessage::Probe(view)) => self.probe(src, view),
            Ok(ControlMessage::Signal(view)) => self.core().forward_signal(now, src, &view),
            Ok(
                ControlMessage::RegisterAck(_)
                | ControlMessage::UnknownSession(_)
                | ControlMessage::Challenge(_)
                | ControlMessage::ProbeAck(_)
                | ControlMessage::PartyMessage(_),
            ) => Err(DropReason::UnexpectedControl),
            Ok(ControlMessage::PartyRequest(view)) => self.core().party_request(now, src, &view),
            Err(ControlError::UnsupportedVersion(_)) => Err(DropReason::UnsupportedVersion),
            Err(ControlError::UnknownType(_)) => Err(DropReason::UnknownControlType),
            Err(_) => Err(DropReason::MalformedControl),
        }
    }

    /// A registration, cheapest checks first (docs/protocol.md §2.4):
    /// 1. from the address already bound to its key: a refresh, one MAC under
    ///    the cached session key;
    /// 2. otherwise the source must echo a valid cookie, or it gets a
    ///    challenge: one MAC, no state, no X25519;
    /// 3. a proven source with a new key pays one X25519 (budgeted per source
    ///    IP), here on the worker, not under the core lock;
    /// 4. the core applies it under its lock, re-checking what may have
    ///    changed meanwhile.
    fn register(
        &mut self,
        now: Instant,
        src: SocketAddr,
        view: RegisterView<'_>,
    ) -> Result<Outcome, DropReason> {
        let key = view.client();
        let known = self.core().session_keys(&key);
        let refresh = known.as_ref().is_some_and(|(endpoint, _)| *endpoint == src);
        if !refresh {
            if let Err(current) = self.check_cookie(now, src, &key, &view.cookie()) {
                return self.challenge(current, src, view.timestamp());
            }
        }
        let keys = match known {
            Some((_, keys)) => keys,
            None => {
                if !self.core().handshake_limiter.allow(now, src.ip()) {
                    return Err(DropReason::RateLimited);
                }
                SessionKeys::for_relay(&self.secret, &PublicKey::from(key))
                    .map_err(|_| DropReason::RegistrationWeakKey)?
            }
        };
        let registration = view
            .verify(&keys)
            .map_err(|_| DropReason::RegistrationBadMac)?;
        let proof = if refresh {
            AddressProof::BoundEndpoint
        } else {
            AddressProof::Cookie
        };
        let applied = self
            .core()
            .apply_registration(now, src, registration, keys, proof);
        match applied {
            Err(Refusal::NeedsProof) => {
                let (current, _) = self.registration_cookies.secrets(now);
                let cookie = mac::registration_cookie(&current, key.as_bytes(), src);
                self.challenge(cookie, src, view.timestamp())
            }
            Err(Refusal::Drop(reason)) => Err(reason),
            Ok(outcome) => Ok(outcome),
        }
    }

    /// Checks that `cookie` was issued for `key` at `src` by this run, in
    /// the current or the previous secret period. On failure, returns the
    /// current cookie for the challenge, so a junk cookie costs one MAC (two
    /// after the first period, when the previous secret is checked too).
    fn check_cookie(
        &mut self,
        now: Instant,
        src: SocketAddr,
        key: &PeerKey,
        cookie: &RegistrationCookie,
    ) -> Result<(), RegistrationCookie> {
        let (current, previous) = self.registration_cookies.secrets(now);
        let expected = mac::registration_cookie(&current, key.as_bytes(), src);
        if *cookie == NO_COOKIE {
            return Err(expected);
        }
        if mac::cookies_equal(&expected, cookie)
            || previous.is_some_and(|secret| {
                mac::registration_cookie_matches(&secret, key.as_bytes(), src, cookie)
            })
        {
            Ok(())
        } else {
            Err(expected)
        }
    }

    /// The stateless answer to an unproven registration: the cookie for its
    /// key at its source address, sent only there.
    fn challenge(
        &mut self,
        cookie: RegistrationCookie,
        src: SocketAddr,
        timestamp: u64,
    ) -> Result<Outcome, DropReason> {
        let challenge = Challenge {
            echoed_timestamp: timestamp,
            cookie,
        };
        self.metrics.record(Event::ChallengeSent);
        tracing::trace!(%src, "registration challenged");
        Outcome::reply(&challenge.encode())
    }

    /// A liveness probe: answered with an authenticated ack if its key is
    /// registered at its source, else with an unauthenticated "not
    /// registered" (no X25519 for an unknown key). Both are smaller than the
    /// probe.
    fn probe(&mut self, src: SocketAddr, view: ProbeView<'_>) -> Result<Outcome, DropReason> {
        let bound = self
            .core()
            .session_keys(&view.client())
            .filter(|(endpoint, _)| *endpoint == src);
        let Some((_, keys)) = bound else {
            self.metrics.record(Event::ProbeAnswered);
            let ack = ProbeAck::not_registered(view.timestamp(), self.epoch);
            return Outcome::reply(&ack);
        };
        let probe = view.verify(&keys).map_err(|_| DropReason::ProbeBadMac)?;
        let ack = ProbeAck {
            echoed_timestamp: probe.timestamp,
            relay_epoch: self.epoch,
            registered: true,
        };
        self.metrics.record(Event::ProbeAnswered);
        Outcome::reply(&ack.seal(&keys))
    }

    /// The next time `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.core().next_sweep)
    }

    /// Expires routes, registrations, pending handshakes and idle rate-limit
    /// entries. Cheap to call early; it does nothing before `poll_timeout()`.
    /// With several workers, whichever calls first does the sweep.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.core().handle_timeout(now) {
            let mut hints = lock(&self.hints);
            hints.per_ip.forget_idle(now);
            let evictions = hints.per_ip.evictions();
            drop(hints);
            self.metrics.set_hint_limiter_evictions(evictions);
            let evictions = self.stun.handle_timeout(now);
            self.metrics.set_stun_limiter_evictions(evictions);
        }
    }

    /// Whether commands wait to be taken. Lock-free: a driver can ask after
    /// every datagram.
    pub fn has_commands(&self) -> bool {
        self.commands_queued.load(Ordering::Acquire)
    }

    /// Moves the queued commands to the end of `out`, oldest first. A driver
    /// with several workers must take and apply them under one lock of its
    /// own, so that they are applied in the order they were queued.
    pub fn take_commands(&mut self, out: &mut Vec<Command>) {
        self.core().commands.drain_into(out);
    }

    /// The driver's report that its own copy of the routes (the XDP map)
    /// forwarded on `key`'s route at `at`: packets forwarded there never
    /// reach [`Router::handle`], and expiry must not take a busy route.
    /// Lock-free. Returns whether the route exists (a driver may remove an
    /// unknown route from its copy once it is idle).
    pub fn note_route_used(&self, key: &RouteKey, at: Instant) -> bool {
        self.routes.note_used(key, at)
    }

    /// Whether the route table holds `key`. Lock-free.
    pub fn has_route(&self, key: &RouteKey) -> bool {
        self.routes.contains(key)
    }

    /// Number of installed route entries (two per session).
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    pub fn registration_count(&self) -> usize {
        self.core().clients.len()
    }

    /// The endpoint a registered client is reachable at.
    pub fn endpoint_of(&self, key: &PeerKey) -> Option<SocketAddr> {
        self.core().clients.get(key).map(|c| c.endpoint)
    }

    /// Keys whose last registration timestamp is remembered after their
    /// state went (replay protection; for tests and diagnostics).
    pub fn remembered_replays(&self) -> usize {
        self.core().replay.last.len()
    }

    /// Number of initiations awaiting their response.
    pub fn pending_count(&self) -> usize {
        self.core().pending.len()
    }

    /// Route entries that `from` sends on and that reach `to`: one per session
    /// between the two (each session is one such entry each way).
    pub fn routes_between(&self, from: &PeerKey, to: &PeerKey) -> usize {
        let core = self.core();
        core.clients.get(from).map_or(0, |client| {
            client
                .routes
                .iter()
                .filter(|k| self.routes.get(k).is_some_and(|r| r.to == *to))
                .count()
        })
    }
}

impl Core {
    /// Runs the periodic sweep if due; returns whether it ran.
    fn handle_timeout(&mut self, now: Instant) -> bool {
        if now < self.next_sweep {
            return false;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        self.expire_pending(now);
        self.expire_registrations(now);
        self.expire_routes(now);
        self.handshake_limiter.forget_idle(now);
        // Remembered for as long as a captured registration's cookie can be
        // valid: after that, a replay only earns a challenge.
        let keep_for = self
            .config
            .registration_timeout
            .max(2 * COOKIE_SECRET_LIFETIME);
        self.replay.expire(now, keep_for);
        self.metrics
            .set_handshake_limiter_evictions(self.handshake_limiter.evictions());
        self.update_gauges();
        true
    }

    // ---- WireGuard ----------------------------------------------------------

    fn handle_handshake(
        &mut self,
        now: Instant,
        src: SocketAddr,
        message: WgMessage<'_>,
    ) -> Result<Outcome, DropReason> {
        match message {
            WgMessage::Initiation(handshake) => self.route_initiation(now, src, handshake),
            WgMessage::Response(handshake) => self.route_response(now, src, handshake),
            WgMessage::CookieReply(reply) => self.route_cookie_reply(src, reply),
            // Transport never reaches the core: workers route it lock-free.
            WgMessage::Transport(_) => Err(DropReason::NoRoute),
        }
    }

    /// Routes an initiation to the mutually consenting peer whose mac1 verifies
    /// it, or answers with a cookie reply when under load.
    fn route_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        h: Handshake<'_>,
    ) -> Result<Outcome, DropReason> {
        let initiator = *self.by_endpoint.get(&src).ok_or(DropReason::Unregistered)?;
        let junk_limit = self.config.handshake_rate_limit;
        let junk_left = self
            .clients
            .get(&initiator)
            .is_some_and(|c| c.junk_budget.has_token(junk_limit, now));
        if !junk_left {
            // Initiations from this endpoint have been junk for a while: no
            // more mac1 work for it until its junk budget refills.
            return Err(DropReason::RateLimited);
        }
        let Some(responder) = self.consenting_responder(&initiator, &h) else {
            if let Some(client) = self.clients.get_mut(&initiator) {
                client.junk_budget.take(junk_limit, now);
            }
            return Err(DropReason::NoConsentingResponder);
        };
        // What it claims to be (for a consenting, registered peer): now it
        // may spend its source IP's handshake budget.
        if !self.handshake_limiter.allow(now, src.ip()) {
            return Err(DropReason::RateLimited);
        }

        let under_load = self.count_initiation(now);
        if under_load && !self.mac2_proves_source(now, src, &h) {
            // Not forwarded: counted as a drop, and answered with a cookie
            // reply so that a real initiator retries with a valid mac2.
            let reply = self.cookie_reply(now, src, &responder, &h);
            self.metrics.record_drop(DropReason::Mac2Invalid);
            self.metrics.record(Event::CookieReplySent);
            return Outcome::reply(&reply);
        }

        let pending_key = (responder, h.sender_index());
        let dst = self
            .clients
            .get(&responder)
            .map(|c| c.endpoint)
            .ok_or(DropReason::NoConsentingResponder)?;
        match self.pending.get_mut(&pending_key) {
            Some(p) if p.initiator != initiator => return Err(DropReason::IndexCollision),
            // A retransmission of the same initiation.
            Some(p) => p.created = now,
            None => self.add_pending(pending_key, initiator, now)?,
        }
        self.metrics.record(Event::ForwardedInitiation);
        tracing::debug!(from = %initiator, to = %responder, "initiation forwarded");
        Ok(if under_load {
            Outcome::ForwardZeroingMac2(dst)
        } else {
            Outcome::Forward(dst)
        })
    }

    /// Remembers a new pending initiation, within the per-peer quota: the
    /// initiator's oldest pending initiation to the same responder makes room.
    fn add_pending(
        &mut self,
        pending_key: (PeerKey, u32),
        initiator: PeerKey,
        now: Instant,
    ) -> Result<(), DropReason> {
        let responder = pending_key.0;
        let (to_same_peer, oldest) = self.clients.get(&initiator).map_or((0, None), |c| {
            let mut same = c.pending.iter().filter(|(r, _)| *r == responder);
            let oldest = same.next().copied();
            (usize::from(oldest.is_some()) + same.count(), oldest)
        });
        if to_same_peer >= MAX_PENDING_PER_PEER {
            if let Some(oldest) = oldest {
                self.remove_pending(&oldest);
                self.metrics.record(Event::PendingReplaced);
            }
        }
        if self.pending.len() >= self.config.max_pending_handshakes {
            return Err(DropReason::RouteTableFull);
        }
        self.pending.insert(
            pending_key,
            Pending {
                initiator,
                created: now,
            },
        );
        if let Some(client) = self.clients.get_mut(&initiator) {
            client.pending.push(pending_key);
        }
        Ok(())
    }

    /// Removes a pending initiation and unlinks it from its initiator.
    fn remove_pending(&mut self, pending_key: &(PeerKey, u32)) {
        let Some(pending) = self.pending.remove(pending_key) else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&pending.initiator) {
            client.pending.retain(|k| k != pending_key);
        }
    }

    /// The registered peer that `initiator` consents to, that consents back,
    /// and whose mac1 key verifies the handshake.
    fn consenting_responder(&self, initiator: &PeerKey, h: &Handshake<'_>) -> Option<PeerKey> {
        let client = self.clients.get(initiator)?;
        client.consent.iter().copied().find(|candidate| {
            candidate != initiator
                && self
                    .clients
                    .get(candidate)
                    .is_some_and(|peer| peer.consents_to(initiator) && peer.mac1.verifies(h))
        })
    }

    fn route_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        h: Handshake<'_>,
    ) -> Result<Outcome, DropReason> {
        let responder = *self.by_endpoint.get(&src).ok_or(DropReason::Unregistered)?;
        let pending_key = (responder, h.receiver_index());
        let initiator = self
            .pending
            .get(&pending_key)
            .map(|p| p.initiator)
            .ok_or(DropReason::NoPendingHandshake)?;
        let initiator_client = self
            .clients
            .get(&initiator)
            .ok_or(DropReason::NoPendingHandshake)?;
        // mac1 of a response is keyed by the initiator's public key: it
        // confirms the response is for the pending initiator.
        if !initiator_client.mac1.verifies(&h) {
            return Err(DropReason::NoPendingHandshake);
        }
        let initiator_endpoint = initiator_client.endpoint;
        // Consent may have been withdrawn since the initiation was pending
        // (found by the router_sequences fuzz target).
        if !self.mutually_consenting(&initiator, &responder) {
            return Err(DropReason::NoPendingHandshake);
        }
        // It answers a pending initiation: only now may it spend its source
        // IP's handshake budget.
        if !self.handshake_limiter.allow(now, src.ip()) {
            return Err(DropReason::RateLimited);
        }

        // A→B transport carries B's index; B→A carries A's.
        let to_responder = RouteKey {
            src: initiator_endpoint,
            index: h.sender_index(),
        };
        let to_initiator = RouteKey {
            src,
            index: h.receiver_index(),
        };
        for (key, to) in [(to_responder, responder), (to_initiator, initiator)] {
            if self.routes.get(&key).is_some_and(|r| r.to != to) {
                tracing::debug!(src = %key.src, index = key.index, "route index collision");
                return Err(DropReason::IndexCollision);
            }
        }
        // A key that already routes to the same peer but belongs to another
        // pair (one side reused an index) would leave two half-pairs whose
        // reverses disagree; the new session replaces that pair.
        for (key, other) in [(to_responder, to_initiator), (to_initiator, to_responder)] {
            if self.routes.get(&key).is_some_and(|r| r.reverse != other) {
                self.remove_route_pair(key);
            }
        }
        let new_entries = [to_responder, to_initiator]
            .iter()
            .filter(|k| !self.routes.contains(k))
            .count();
        if new_entries == 2 {
            self.make_room_for_session(&initiator, &responder);
        }
        if self.routes.len() + new_entries > self.config.max_routes {
            return Err(DropReason::RouteTableFull);
        }

        self.remove_pending(&pending_key);
        self.install_route(to_responder, initiator, responder, src, to_initiator, now);
        self.install_route(
            to_initiator,
            responder,
            initiator,
            initiator_endpoint,
            to_responder,
            now,
        );
        self.metrics.record(Event::ForwardedResponse);
        self.update_gauges();
        tracing::debug!(from = %responder, to = %initiator, "session routed");
        Ok(Outcome::Forward(initiator_endpoint))
    }

    /// Whether both keys are registered and list each other.
    fn mutually_consenting(&self, a: &PeerKey, b: &PeerKey) -> bool {
        let (Some(ca), Some(cb)) = (self.clients.get(a), self.clients.get(b)) else {
            return false;
        };
        ca.consents_to(b) && cb.consents_to(a)
    }

    /// Keeps the sessions between two peers within [`MAX_SESSIONS_PER_PEER`]:
    /// a new one replaces the oldest, so no pair of keys can grow the route
    /// table without bound.
    fn make_room_for_session(&mut self, initiator: &PeerKey, responder: &PeerKey) {
        let Some(client) = self.clients.get(initiator) else {
            return;
        };
        let mut sessions = client
            .routes
            .iter()
            .filter(|k| self.routes.get(k).is_some_and(|r| r.to == *responder));
        let Some(oldest) = sessions.next().copied() else {
            return;
        };
        if 1 + sessions.count() >= MAX_SESSIONS_PER_PEER {
            self.remove_route_pair(oldest);
            self.metrics.record(Event::SessionReplaced);
        }
    }

    fn install_route(
        &mut self,
        key: RouteKey,
        from: PeerKey,
        to: PeerKey,
        dst: SocketAddr,
        reverse: RouteKey,
        now: Instant,
    ) {
        let route = Route {
            dst,
            from,
            to,
            reverse,
        };
        if self.routes.insert(key, route, now, &mut self.commands) {
            if let Some(client) = self.clients.get_mut(&from) {
                client.routes.push(key);
            }
            self.metrics.record(Event::RouteInstalled);
        }
    }

    /// A cookie reply answers the handshake message whose sender index it
    /// carries: a pending initiation (responder under load), or a response
    /// (initiator under load), which by then has a route.
    fn route_cookie_reply(
        &mut self,
        src: SocketAddr,
        reply: CookieReply<'_>,
    ) -> Result<Outcome, DropReason> {
        let sender = *self.by_endpoint.get(&src).ok_or(DropReason::Unregistered)?;
        let index = reply.receiver_index();
        let dst = match self.pending.get(&(sender, index)) {
            Some(pending) if self.mutually_consenting(&pending.initiator, &sender) => {
                self.clients.get(&pending.initiator).map(|c| c.endpoint)
            }
            Some(_) => None,
            None => self.routes.get(&RouteKey { src, index }).map(|r| r.dst),
        }
        .ok_or(DropReason::NoPendingHandshake)?;
        self.metrics.record(Event::ForwardedCookieReply);
        Ok(Outcome::Forward(dst))
    }

    // ---- cookies (WireGuard paper §5.4.7) --------------------------------------

    /// Counts an initiation and reports whether the relay is under load: more
    /// than the threshold in the current or the previous one-second window.
    fn count_initiation(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.load.window_start);
        if elapsed >= Duration::from_secs(2) {
            self.load.previous = 0;
            self.load.current = 0;
            self.load.window_start = now;
        } else if elapsed >= Duration::from_secs(1) {
            self.load.previous = self.load.current;
            self.load.current = 0;
            self.load.window_start += Duration::from_secs(1);
        }
        self.load.current = self.load.current.saturating_add(1);
        let threshold = self.config.under_load_handshakes_per_second;
        self.load.current.max(self.load.previous) > threshold
    }

    fn cookie_generation(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / COOKIE_SECRET_LIFETIME.as_secs()
    }

    fn cookie(&self, generation: u64, src: SocketAddr) -> mac::Cookie {
        mac::cookie_for(
            &mac::derive_secret(&self.seed, b"lanrage relay cookie secret", generation),
            src,
        )
    }

    /// Whether mac2 carries a cookie for `src` from the current or the previous
    /// secret (a cookie handed out just before a rotation stays good).
    fn mac2_proves_source(&self, now: Instant, src: SocketAddr, h: &Handshake<'_>) -> bool {
        let generation = self.cookie_generation(now);
        [Some(generation), generation.checked_sub(1)]
            .into_iter()
            .flatten()
            .any(|g| mac::mac2_verifies(&self.cookie(g, src), h))
    }

    /// A cookie reply on behalf of `responder`: the initiator opens it with the
    /// responder's public key, exactly as if the responder had sent it.
    fn cookie_reply(
        &mut self,
        now: Instant,
        src: SocketAddr,
        responder: &PeerKey,
        h: &Handshake<'_>,
    ) -> [u8; 64] {
        self.nonce_counter += 1;
        let nonce_material = mac::derive_secret(
            &self.seed,
            b"lanrage relay cookie nonce",
            self.nonce_counter,
        );
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&nonce_material[..24]);
        let cookie = self.cookie(self.cookie_generation(now), src);
        let key = match self.clients.get(responder) {
            Some(client) => client.cookie.clone(),
            None => CookieKey::for_responder(responder.as_bytes()),
        };
        mac::seal_cookie_reply(&key, h, &cookie, &nonce)
    }

    // ---- registration -------------------------------------------------------------

    /// The endpoint and cached session keys of a registered key.
    /// A signal (docs/protocol.md §2.10): forwarded unchanged, to the
    /// recipient's endpoint, only from the sender's bound endpoint with its
    /// MAC, a timestamp above the last, within its budget, and between two
    /// registered keys that consent to each other. Anything else is a
    /// counted drop; nothing is ever sent back.
    fn forward_signal(
        &mut self,
        now: Instant,
        src: SocketAddr,
        view: &SignalView<'_>,
    ) -> Result<Outcome, DropReason> {
        let sender = view.sender();
        let recipient = view.recipient();
        let target = self
            .clients
            .get(&recipient)
            .filter(|target| target.consents_to(&sender))
            .map(|target| target.endpoint);
        let Some(client) = self.clients.get_mut(&sender) else {
            return Err(DropReason::Unregistered);
        };
        if client.endpoint != src {
            return Err(DropReason::Unregistered);
        }
        view.verify_relay_mac(&client.keys)
            .map_err(|_| DropReason::SignalBadMac)?;
        if !client.signals_seen.check(view.timestamp()) {
            return Err(DropReason::SignalReplay);
        }
        if !client.signal_budget.take(CLIENT_SIGNAL_LIMIT, now) {
            return Err(DropReason::RateLimited);
        }
        let Some(target) = target.filter(|_| client.consents_to(&recipient)) else {
            return Err(DropReason::SignalNotForwardable);
        };
        client.signals_seen.accept(view.timestamp());
        self.metrics.record(Event::SignalForwarded);
        Ok(Outcome::Forward(target))
    }

    fn session_keys(&self, key: &PeerKey) -> Option<(SocketAddr, SessionKeys)> {
        self.clients
            .get(key)
            .map(|client| (client.endpoint, client.keys.clone()))
    }

    /// Applies an authenticated registration: binds the key to the source
    /// endpoint (moving routes if it roamed, evicting another key that held
    /// the address), stores the consent list, and acknowledges. The worker
    /// checked `proof` without the lock; what may have changed since is
    /// checked again here.
    fn apply_registration(
        &mut self,
        now: Instant,
        src: SocketAddr,
        registration: Registration,
        keys: SessionKeys,
        proof: AddressProof,
    ) -> Result<Outcome, Refusal> {
        let key = registration.client;
        let bound_here = self.clients.get(&key).is_some_and(|c| c.endpoint == src);
        if proof == AddressProof::BoundEndpoint && !bound_here {
            // Another worker moved or removed the key since: this source has
            // proven nothing about the address now.
            return Err(Refusal::NeedsProof);
        }
        let last = match self.clients.get(&key) {
            Some(client) => Some(client.last_timestamp),
            None => self.replay.last_timestamp(&key),
        };
        if last.is_some_and(|last| registration.timestamp <= last) {
            return Err(Refusal::Drop(DropReason::RegistrationReplay));
        }
        if let Some(client) = self.clients.get_mut(&key) {
            if !client
                .registration_budget
                .take(CLIENT_REGISTRATION_LIMIT, now)
            {
                return Err(Refusal::Drop(DropReason::RateLimited));
            }
        } else if self.clients.len() >= self.config.max_registrations {
            return Err(Refusal::Drop(DropReason::RegistrationTableFull));
        }

        // One endpoint belongs to one client: a different key that proved it
        // receives there means the old owner's NAT mapping was reused.
        if let Some(previous_owner) = self.by_endpoint.get(&src).copied() {
            if previous_owner != key {
                tracing::debug!(peer = %previous_owner, %src, "endpoint taken over by another key");
                self.remove_client(&previous_owner, now);
            }
        }

        let mut consent = registration.consent;
        consent.sort_unstable();
        consent.dedup();
        match self.clients.get_mut(&key) {
            Some(client) => {
                client.last_timestamp = registration.timestamp;
                client.refreshed = now;
                let consent_changed = client.consent != consent;
                client.consent = consent;
                let old_endpoint = client.endpoint;
                if old_endpoint != src {
                    self.move_client(&key, old_endpoint, src);
                    self.party_bound(key);
                }
                if consent_changed {
                    self.drop_unconsented_routes(&key);
                }
            }
            None => {
                self.replay.forget(&key);
                let handshake_limit = self.config.handshake_rate_limit;
                let mut registration_budget = Bucket::full(CLIENT_REGISTRATION_LIMIT, now);
                registration_budget.take(CLIENT_REGISTRATION_LIMIT, now);
                self.clients.insert(
                    key,
                    Client {
                        endpoint: src,
                        keys: keys.clone(),
                        mac1: Mac1Key::for_responder(key.as_bytes()),
                        cookie: CookieKey::for_responder(key.as_bytes()),
                        last_timestamp: registration.timestamp,
                        consent,
                        refreshed: now,
                        routes: Vec::new(),
                        pending: Vec::new(),
                        registration_budget,
                        junk_budget: Bucket::full(handshake_limit, now),
                        signals_seen: ReplayWindow::default(),
                        signal_budget: Bucket::full(CLIENT_SIGNAL_LIMIT, now),
                        party_last_id: registration.timestamp,
                        party_budget: Bucket::full(party::CLIENT_PARTY_LIMIT, now),
                    },
                );
                self.by_endpoint.insert(src, key);
                self.party_bound(key);
                tracing::debug!(peer = %key, %src, "registered");
            }
        }
        self.metrics.record(Event::RegistrationAccepted);
        self.update_gauges();
        let ack = RegisterAck {
            echoed_timestamp: registration.timestamp,
            relay_epoch: self.epoch,
            reflexive: src,
        };
        Outcome::reply(&ack.seal(&keys)).map_err(Refusal::Drop)
    }

    /// Roaming: the client's authenticated registration came from a new
    /// endpoint. Its outbound routes are re-keyed, its inbound routes re-aimed.
    fn move_client(&mut self, key: &PeerKey, old: SocketAddr, new: SocketAddr) {
        self.by_endpoint.remove(&old);
        self.by_endpoint.insert(new, *key);
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        client.endpoint = new;
        let outbound = std::mem::take(&mut client.routes);
        let mut moved = Vec::with_capacity(outbound.len());
        for old_key in outbound {
            let new_key = RouteKey {
                src: new,
                index: old_key.index,
            };
            let Some(route) = self.routes.rekey(&old_key, new_key, &mut self.commands) else {
                continue;
            };
            self.routes
                .update(&route.reverse, &mut self.commands, |reverse| {
                    reverse.dst = new;
                    reverse.reverse = new_key;
                });
            moved.push(new_key);
        }
        if let Some(client) = self.clients.get_mut(key) {
            client.routes = moved;
        }
        self.metrics.record(Event::EndpointChanged);
        tracing::debug!(peer = %key, %old, %new, "endpoint changed");
    }

    /// After a consent change, removes sessions with peers that are no longer
    /// mutually consenting.
    fn drop_unconsented_routes(&mut self, key: &PeerKey) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        let gone: Vec<RouteKey> = client
            .routes
            .iter()
            .filter(|k| {
                self.routes.get(k).is_some_and(|r| {
                    !client.consents_to(&r.to)
                        || !self
                            .clients
                            .get(&r.to)
                            .is_some_and(|peer| peer.consents_to(key))
                })
            })
            .copied()
            .collect();
        for route_key in gone {
            self.remove_route_pair(route_key);
        }
    }

    /// Removes a registration with its sessions and pending handshakes; its
    /// last timestamp is remembered, so a captured registration can't be
    /// replayed now that the key's state is gone.
    fn remove_client(&mut self, key: &PeerKey, now: Instant) {
        let Some(client) = self.clients.remove(key) else {
            return;
        };
        self.replay.remember(*key, client.last_timestamp, now);
        if self.by_endpoint.get(&client.endpoint) == Some(key) {
            self.by_endpoint.remove(&client.endpoint);
        }
        for route_key in client.routes {
            self.remove_route_pair(route_key);
        }
        let involved: Vec<(PeerKey, u32)> = self
            .pending
            .iter()
            .filter(|((responder, _), p)| responder == key || p.initiator == *key)
            .map(|(k, _)| *k)
            .collect();
        for pending_key in involved {
            self.remove_pending(&pending_key);
        }
    }

    /// Removes a route and its reverse, and unlinks both from their owners.
    fn remove_route_pair(&mut self, key: RouteKey) {
        let Some(route) = self.routes.remove(&key, &mut self.commands) else {
            return;
        };
        self.unlink_route(&route.from, key);
        if let Some(reverse) = self.routes.remove(&route.reverse, &mut self.commands) {
            self.unlink_route(&reverse.from, route.reverse);
        }
    }

    fn unlink_route(&mut self, owner: &PeerKey, key: RouteKey) {
        if let Some(client) = self.clients.get_mut(owner) {
            client.routes.retain(|k| *k != key);
        }
    }

    // ---- expiry -----------------------------------------------------------------

    fn expire_pending(&mut self, now: Instant) {
        let timeout = self.config.pending_handshake_timeout;
        let expired: Vec<(PeerKey, u32)> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.created) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for pending_key in expired {
            self.remove_pending(&pending_key);
        }
    }

    fn expire_registrations(&mut self, now: Instant) {
        let timeout = self.config.registration_timeout;
        let expired: Vec<PeerKey> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.refreshed) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            tracing::debug!(peer = %key, "registration expired");
            self.remove_client(&key, now);
            self.metrics.record(Event::RegistrationExpired);
        }
    }

    /// A session's two routes expire together, when neither carried traffic
    /// for the idle timeout.
    fn expire_routes(&mut self, now: Instant) {
        for key in self.routes.idle_pairs(now, self.config.route_idle_timeout) {
            if self.routes.contains(&key) {
                self.remove_route_pair(key);
                self.metrics.record(Event::RouteExpired);
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics
            .set_table_sizes(self.clients.len(), self.routes.len(), self.pending.len());
    }
}

// The router's tests drive it with real boringtun peers, which the core
// may not depend on even for tests (its dependency tree is the proof that it
// does no IO): they are in relay/tests/router.rs.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_the_relay_sends_fits_inline() {
        for len in [
            COOKIE_REPLY_LEN,
            REGISTER_ACK_LEN,
            CHALLENGE_LEN,
            PROBE_ACK_LEN,
            UNKNOWN_SESSION_LEN,
        ] {
            let bytes = vec![0xab; len];
            let reply = Reply::new(&bytes).expect("fits");
            assert_eq!(reply.bytes(), &bytes[..]);
        }
    }

    /// A reply longer than any the relay sends is refused whole, never cut
    /// to fit (which would slip past the "never larger than the request"
    /// check and send a corrupt reply).
    #[test]
    fn an_overlong_reply_is_refused_not_truncated() {
        let bytes = vec![0xab; MAX_REPLY_LEN + 1];
        assert!(Reply::new(&bytes).is_none());
        assert!(matches!(
            Outcome::reply(&bytes),
            Err(DropReason::ReplyLargerThanRequest)
        ));
    }
}
