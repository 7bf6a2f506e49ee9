//! One relay as the client sees it: registration (with the challenge round
//! trip and the retry schedule of `docs/protocol.md` §2.4), refreshes,
//! liveness probes (§2.8) and the RTT/jitter/loss they measure.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_proto::control::{
    Challenge, Probe, ProbeAckView, RegisterAckView, Registration, RegistrationCookie, SessionKeys,
    NO_COOKIE,
};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;

use crate::config::RelaySpec;
use crate::estimator::Estimator;

/// Refreshes go out every 20–25 s (§2.4), which also keeps the NAT mapping open.
pub const REFRESH_MIN: Duration = Duration::from_secs(20);
pub const REFRESH_JITTER: Duration = Duration::from_secs(5);
/// Retry schedule for a registration that got neither an ack nor a challenge.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(8);
/// Probes to a relay a peer's path uses: often enough that three lost in a
/// row (the death rule of §2.8) take about a second.
pub const PROBE_IN_USE: Duration = Duration::from_millis(300);
/// Probes to the other relays: enough to keep their RTT current for the
/// relay choice, cheap when idle.
pub const PROBE_IDLE: Duration = Duration::from_secs(5);
/// Unanswered probes in a row that make a relay unreachable (§2.8).
pub const DEAD_AFTER: usize = 3;
/// A relay that forwarded a peer's datagram to us this recently is not
/// dead, whatever its probes say.
pub const FORWARDED_IS_ALIVE: Duration = Duration::from_millis(500);
/// Probes remembered for matching acks.
const PROBES_IN_FLIGHT: usize = 32;

/// Who registers: this client's key and the peers it consents to.
#[derive(Debug, Clone, Copy)]
pub struct Registrant<'a> {
    pub client: PeerKey,
    pub consent: &'a [PeerKey],
}

/// What a datagram from this relay meant to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayNews {
    Nothing,
    /// Registered (first time, or again after a restart or a loss of state).
    Registered,
    /// The relay restarted: its routes are gone, sessions through it must
    /// handshake again.
    NewEpoch,
    /// It answered again after being unreachable.
    Revived,
}

pub struct Relay {
    pub spec: RelaySpec,
    keys: SessionKeys,
    cookie: RegistrationCookie,
    /// The registration in flight: its timestamp and when it left.
    in_flight: Option<(u64, Instant)>,
    next_registration: Instant,
    retry: Duration,
    /// This relay's share of [`REFRESH_JITTER`], drawn once.
    refresh_jitter: Duration,
    registered: bool,
    /// Registering again after the relay forgot us (a restart): the relay
    /// stays the path meanwhile, so a round trip of re-registration doesn't
    /// move sessions to a worse relay.
    rejoining: bool,
    pub epoch: Option<u64>,
    pub reflexive: Option<SocketAddr>,
    pub estimator: Estimator,
    /// The last authenticated datagram it forwarded to us (a peer's
    /// WireGuard or signal): proof of life besides probe acks.
    last_forwarded: Option<Instant>,
    probes: VecDeque<(u64, Instant)>,
    next_probe: Instant,
    reachable: bool,
    /// Drops of datagrams claiming to be from this relay (bad MAC, stale).
    pub rejected: u64,
}

/// Why a relay can't be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakRelayKey(pub String);

impl Relay {
    pub fn new(
        spec: RelaySpec,
        secret: &StaticSecret,
        refresh_jitter: Duration,
        now: Instant,
    ) -> Result<Self, WeakRelayKey> {
        let keys = SessionKeys::for_client(secret, &PublicKey::from(spec.key))
            .map_err(|_| WeakRelayKey(spec.name.clone()))?;
        Ok(Self {
            spec,
            keys,
            cookie: NO_COOKIE,
            in_flight: None,
            next_registration: now,
            retry: RETRY_FIRST,
            refresh_jitter: refresh_jitter.min(REFRESH_JITTER),
            registered: false,
            rejoining: false,
            epoch: None,
            reflexive: None,
            last_forwarded: None,
            estimator: Estimator::default(),
            probes: VecDeque::new(),
            next_probe: now + PROBE_IDLE,
            reachable: true,
            rejected: 0,
        })
    }

    /// The MAC keys this client shares with the relay.
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Registered (or registering again) and answering: a path may use it.
    pub fn is_usable(&self) -> bool {
        (self.registered || self.rejoining) && self.reachable
    }

    pub fn next_deadline(&self) -> Instant {
        self.next_registration.min(self.next_probe)
    }

    /// Due work: a registration (first, retry or refresh) and a probe.
    /// Returns the datagrams to send to the relay.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        in_use: bool,
        who: Registrant<'_>,
        timestamp: &mut dyn FnMut() -> u64,
        jitter: &mut dyn FnMut(Duration) -> Duration,
        out: &mut Vec<Vec<u8>>,
    ) {
        if now >= self.next_registration {
            // Unanswered: this is a retry, and the backoff grows (1, 2, 4,
            // 8 s, then every 8 s). An ack moves the next one to a refresh.
            if self.in_flight.is_some() {
                self.retry = (self.retry * 2).min(RETRY_MAX);
            }
            let wait = self.retry + jitter(self.retry / 5);
            out.push(self.registration(now, who, timestamp()));
            self.next_registration = now + wait;
        }
        if now >= self.next_probe && self.registered {
            out.push(self.probe(now, who.client, timestamp()));
        }
        if now >= self.next_probe {
            self.next_probe = now + if in_use { PROBE_IN_USE } else { PROBE_IDLE };
        }
        self.check_reachable(now);
    }

    /// The probe cadence changed (a path started or stopped using this relay).
    pub fn set_in_use(&mut self, now: Instant, in_use: bool) {
        let interval = if in_use { PROBE_IN_USE } else { PROBE_IDLE };
        self.next_probe = self.next_probe.min(now + interval);
    }

    /// Registers again at once (a restart, a "not registered" prompt).
    pub fn register_soon(&mut self, now: Instant) {
        self.rejoining |= self.registered;
        self.registered = false;
        self.next_registration = now;
        self.retry = RETRY_FIRST;
    }

    fn registration(&mut self, now: Instant, who: Registrant<'_>, timestamp: u64) -> Vec<u8> {
        self.in_flight = Some((timestamp, now));
        let registration = Registration {
            client: who.client,
            timestamp,
            observed: None,
            cookie: self.cookie,
            consent: who.consent.to_vec(),
        };
        // The engine keeps consent lists at MAX_CONSENT or fewer (config).
        registration.seal(&self.keys).unwrap_or_else(|_| Vec::new())
    }

    fn probe(&mut self, now: Instant, client: PeerKey, timestamp: u64) -> Vec<u8> {
        if self.probes.len() == PROBES_IN_FLIGHT {
            self.probes.pop_front();
        }
        self.probes.push_back((timestamp, now));
        self.estimator.sent(now);
        Probe { client, timestamp }.seal(&self.keys).to_vec()
    }

    fn check_reachable(&mut self, now: Instant) {
        let grace = self
            .estimator
            .rtt()
            .map_or(Duration::from_millis(250), |rtt| {
                (rtt * 2).max(Duration::from_millis(100))
            });
        // A relay that is forwarding our peers' datagrams to us is alive,
        // whatever happened to a few probes: random loss must not fail a
        // good path over (only silence does).
        let forwarding = self
            .last_forwarded
            .is_some_and(|at| now.saturating_duration_since(at) < FORWARDED_IS_ALIVE);
        if self.reachable
            && !forwarding
            && self.estimator.unanswered_in_a_row(now, grace) >= DEAD_AFTER
        {
            self.reachable = false;
            tracing::info!(relay = %self.spec.name, "relay unreachable: {DEAD_AFTER} probes unanswered");
        }
    }

    /// A challenge from the relay's address.
    pub fn on_challenge(
        &mut self,
        now: Instant,
        challenge: Challenge,
        who: Registrant<'_>,
        timestamp: u64,
    ) -> Option<Vec<u8>> {
        let (sent, _) = self.in_flight?;
        if challenge.echoed_timestamp != sent {
            self.rejected += 1;
            return None;
        }
        self.cookie = challenge.cookie;
        // Answered at once, and not a retry: the backoff stays.
        Some(self.registration(now, who, timestamp))
    }

    pub fn on_ack(&mut self, now: Instant, view: RegisterAckView<'_>) -> RelayNews {
        let Ok(ack) = view.verify(&self.keys) else {
            self.rejected += 1;
            return RelayNews::Nothing;
        };
        let Some((sent_ts, sent_at)) = self.in_flight else {
            // A duplicate or late ack: authenticated, so the epoch is news.
            return self.epoch_news(ack.relay_epoch);
        };
        if ack.echoed_timestamp != sent_ts {
            return self.epoch_news(ack.relay_epoch);
        }
        self.in_flight = None;
        self.retry = RETRY_FIRST;
        self.next_registration = now + REFRESH_MIN + self.refresh_jitter;
        self.estimator
            .sample(now.saturating_duration_since(sent_at));
        self.reflexive = Some(ack.reflexive);
        let was_registered = self.registered;
        self.registered = true;
        self.rejoining = false;
        let revived = self.revive();
        match self.epoch_news(ack.relay_epoch) {
            RelayNews::NewEpoch => RelayNews::NewEpoch,
            _ if !was_registered => RelayNews::Registered,
            _ if revived => RelayNews::Revived,
            _ => RelayNews::Nothing,
        }
    }

    pub fn on_probe_ack(&mut self, now: Instant, view: ProbeAckView<'_>) -> RelayNews {
        let unauthenticated = view.unauthenticated();
        let Some(position) = self
            .probes
            .iter()
            .position(|(ts, _)| *ts == unauthenticated.echoed_timestamp)
        else {
            self.rejected += 1;
            return RelayNews::Nothing;
        };
        if !unauthenticated.registered {
            // Only a prompt (§2.8): the relay doesn't know us here.
            if self.registered {
                tracing::debug!(relay = %self.spec.name, "relay no longer knows us; registering again");
                self.register_soon(now);
            }
            return RelayNews::Nothing;
        }
        let Ok(ack) = view.verify(&self.keys) else {
            self.rejected += 1;
            return RelayNews::Nothing;
        };
        let Some((_, sent)) = self.probes.remove(position) else {
            return RelayNews::Nothing;
        };
        self.estimator.answered(sent, now);
        let revived = self.revive();
        match self.epoch_news(ack.relay_epoch) {
            RelayNews::NewEpoch => RelayNews::NewEpoch,
            _ if revived => RelayNews::Revived,
            _ => RelayNews::Nothing,
        }
    }

    fn revive(&mut self) -> bool {
        let was = self.reachable;
        self.reachable = true;
        !was
    }

    fn epoch_news(&mut self, epoch: u64) -> RelayNews {
        match self.epoch.replace(epoch) {
            Some(old) if old != epoch => {
                tracing::info!(relay = %self.spec.name, "relay restarted (new epoch)");
                self.estimator.reset();
                RelayNews::NewEpoch
            }
            _ => RelayNews::Nothing,
        }
    }

    /// An authenticated datagram it forwarded to us from a peer.
    pub fn forwarded(&mut self, now: Instant) {
        self.last_forwarded = Some(now);
    }

    pub fn reachable(&self) -> bool {
        self.reachable
    }
}
