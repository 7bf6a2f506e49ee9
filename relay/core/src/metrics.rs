//! Relay counters, shared lock-free between the data plane and the metrics
//! endpoint. Every drop has a reason, and every reason has a counter.
//!
//! These are the router's: what it decided. What only an IO backend can
//! see (datagrams received, failed sends, GSO, io_uring's queues) the relay
//! crate counts itself, in a [`MetricsSource`] built on the same per-thread
//! [`ShardedCounters`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// More metrics, rendered at scrape time after the relay's own (the XDP fast
/// path reads its kernel counters this way).
pub trait MetricsSource: Send + Sync {
    /// Appends complete `# HELP`/`# TYPE`/sample lines to `out`.
    fn render_prometheus(&self, out: &mut String);
}

/// Why the router dropped a datagram. Each variant is one Prometheus label
/// value of `lanrage_relay_dropped_total{reason="…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not WireGuard, STUN or LANrage control.
    UnknownProtocol,
    /// WireGuard header or length invalid for its type.
    MalformedWireGuard,
    /// LANrage control message truncated, wrong length, bad field.
    MalformedControl,
    /// LANrage control message of another protocol version.
    UnsupportedVersion,
    /// LANrage control message of an unknown type.
    UnknownControlType,
    /// A control message only a relay sends (ack, hint) arrived at the relay.
    UnexpectedControl,
    /// STUN that is not a well-formed message (length, attribute framing,
    /// FINGERPRINT).
    StunMalformed,
    /// STUN other than a Binding request (responses, indications, other
    /// methods): nothing to answer.
    StunNotBindingRequest,
    /// A Binding request too short for even the smallest answer: the relay
    /// never sends an unproven source more than it sent (clients pad).
    StunRequestTooShort,
    /// STUN answers per source IP (`stun.rate_limit`) or in total exceeded.
    StunRateLimited,
    /// A STUN answer for an alternate socket found the hand-off queue to
    /// that socket's thread full.
    StunHandoffFull,
    /// A STUN answer for an alternate socket, from a driver without one.
    StunNoAlternateSocket,
    /// Handshake or transport from a source that is not a registered endpoint.
    Unregistered,
    /// Transport message whose `(source, receiver_index)` has no route.
    NoRoute,
    /// Initiation whose mac1 matches no registered, mutually consenting peer.
    NoConsentingResponder,
    /// Response or cookie reply that answers no pending handshake.
    NoPendingHandshake,
    /// A handshake would reuse an index already routed for that endpoint.
    IndexCollision,
    /// Per-source handshake/registration budget exceeded.
    RateLimited,
    /// Registration MAC failed: not made with the claimed key.
    RegistrationBadMac,
    /// Registration timestamp not newer than the last accepted one.
    RegistrationReplay,
    /// Registration key is a low-order point.
    RegistrationWeakKey,
    /// Registration table is at `max_registrations`.
    RegistrationTableFull,
    /// Route or pending-handshake table is at its limit.
    RouteTableFull,
    /// Under load, an initiation carried no valid mac2: not forwarded, and
    /// answered with a cookie reply (`cookie_replies_sent_total`) so that a
    /// real initiator retries with one.
    Mac2Invalid,
    /// A liveness probe from a key's bound endpoint whose MAC failed.
    ProbeBadMac,
    /// A reply would have been larger than the request it answers. Replies are
    /// built smaller by design; this counter staying at zero is the proof.
    ReplyLargerThanRequest,
    /// A signal whose MAC is not its sender's (registration key).
    SignalBadMac,
    /// A signal whose timestamp is not above its sender's last forwarded one.
    SignalReplay,
    /// A signal to a key that isn't registered or doesn't consent to the
    /// sender (or that the sender doesn't consent to).
    SignalNotForwardable,
    /// A party request whose id is not above its sender's last (or its
    /// registration's timestamp): a replay.
    PartyReplay,
    /// A party request that doesn't open under its sender's keys.
    PartyBadSeal,
    /// A party request to a relay that hosts no parties (`party:` off).
    PartyUnavailable,
    /// A party request that found the party service's queue full.
    PartyQueueFull,
}

impl DropReason {
    pub const ALL: [DropReason; 33] = [
        Self::UnknownProtocol,
        Self::MalformedWireGuard,
        Self::MalformedControl,
        Self::UnsupportedVersion,
        Self::UnknownControlType,
        Self::UnexpectedControl,
        Self::StunMalformed,
        Self::StunNotBindingRequest,
        Self::StunRequestTooShort,
        Self::StunRateLimited,
        Self::StunHandoffFull,
        Self::StunNoAlternateSocket,
        Self::Unregistered,
        Self::NoRoute,
        Self::NoConsentingResponder,
        Self::NoPendingHandshake,
        Self::IndexCollision,
        Self::RateLimited,
        Self::RegistrationBadMac,
        Self::RegistrationReplay,
        Self::RegistrationWeakKey,
        Self::RegistrationTableFull,
        Self::RouteTableFull,
        Self::Mac2Invalid,
        Self::ProbeBadMac,
        Self::ReplyLargerThanRequest,
        Self::SignalBadMac,
        Self::SignalReplay,
        Self::SignalNotForwardable,
        Self::PartyReplay,
        Self::PartyBadSeal,
        Self::PartyUnavailable,
        Self::PartyQueueFull,
    ];

    /// The label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownProtocol => "unknown_protocol",
            Self::MalformedWireGuard => "malformed_wireguard",
            Self::MalformedControl => "malformed_control",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownControlType => "unknown_control_type",
            Self::UnexpectedControl => "unexpected_control",
            Self::StunMalformed => "stun_malformed",
            Self::StunNotBindingRequest => "stun_not_binding_request",
            Self::StunRequestTooShort => "stun_request_too_short",
            Self::StunRateLimited => "stun_rate_limited",
            Self::StunHandoffFull => "stun_handoff_full",
            Self::StunNoAlternateSocket => "stun_no_alternate_socket",
            Self::Unregistered => "unregistered",
            Self::NoRoute => "no_route",
            Self::NoConsentingResponder => "no_consenting_responder",
            Self::NoPendingHandshake => "no_pending_handshake",
            Self::IndexCollision => "index_collision",
            Self::RateLimited => "rate_limited",
            Self::RegistrationBadMac => "registration_bad_mac",
            Self::RegistrationReplay => "registration_replay",
            Self::RegistrationWeakKey => "registration_weak_key",
            Self::RegistrationTableFull => "registration_table_full",
            Self::RouteTableFull => "route_table_full",
            Self::Mac2Invalid => "mac2_invalid",
            Self::ProbeBadMac => "probe_bad_mac",
            Self::ReplyLargerThanRequest => "reply_larger_than_request",
            Self::SignalBadMac => "signal_bad_mac",
            Self::SignalReplay => "signal_replay",
            Self::SignalNotForwardable => "signal_not_forwardable",
            Self::PartyReplay => "party_replay",
            Self::PartyBadSeal => "party_bad_seal",
            Self::PartyUnavailable => "party_unavailable",
            Self::PartyQueueFull => "party_queue_full",
        }
    }

    /// `ALL` lists the variants in declaration order, so the discriminant is
    /// the counter's slot (checked by a test).
    fn slot(self) -> usize {
        self as usize
    }
}

/// What the router did with a datagram that was not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    ForwardedTransport,
    ForwardedInitiation,
    ForwardedResponse,
    ForwardedCookieReply,
    RegistrationAccepted,
    /// A registration moved a client to a new endpoint (roaming).
    EndpointChanged,
    CookieReplySent,
    UnknownSessionHintSent,
    RouteInstalled,
    RouteExpired,
    RegistrationExpired,
    /// A registration that had to prove its source address was answered
    /// with a challenge (return-routability).
    ChallengeSent,
    /// A liveness probe was answered.
    ProbeAnswered,
    /// A new pending initiation replaced the oldest of the same pair of peers.
    PendingReplaced,
    /// A new session replaced the oldest of the same pair of peers.
    SessionReplaced,
    /// A signal forwarded between two consenting peers.
    SignalForwarded,
    /// A STUN Binding success response sent.
    StunSuccessSent,
    /// A STUN Binding error response (420) sent.
    StunErrorSent,
    /// A STUN answer that left from an alternate socket (CHANGE-REQUEST).
    StunSentFromAlternate,
    /// A party request authenticated and handed to the party service.
    PartyRequestAccepted,
}

const EVENTS: [(Event, &str, &str); 20] = [
    (
        Event::ForwardedTransport,
        "lanrage_relay_forwarded_total{kind=\"transport\"}",
        "",
    ),
    (
        Event::ForwardedInitiation,
        "lanrage_relay_forwarded_total{kind=\"initiation\"}",
        "",
    ),
    (
        Event::ForwardedResponse,
        "lanrage_relay_forwarded_total{kind=\"response\"}",
        "",
    ),
    (
        Event::ForwardedCookieReply,
        "lanrage_relay_forwarded_total{kind=\"cookie_reply\"}",
        "",
    ),
    (
        Event::RegistrationAccepted,
        "lanrage_relay_registrations_accepted_total",
        "Registrations accepted (new and refreshed).",
    ),
    (
        Event::EndpointChanged,
        "lanrage_relay_endpoint_changes_total",
        "Registrations that moved a client to a new endpoint.",
    ),
    (
        Event::CookieReplySent,
        "lanrage_relay_cookie_replies_sent_total",
        "Cookie replies the relay sent itself, under load.",
    ),
    (
        Event::UnknownSessionHintSent,
        "lanrage_relay_unknown_session_hints_total",
        "Unknown-session hints sent after a route miss.",
    ),
    (
        Event::RouteInstalled,
        "lanrage_relay_routes_installed_total",
        "Routes installed from handshake responses.",
    ),
    (
        Event::RouteExpired,
        "lanrage_relay_routes_expired_total",
        "Routes removed after idling past the route timeout.",
    ),
    (
        Event::RegistrationExpired,
        "lanrage_relay_registrations_expired_total",
        "Registrations removed after no refresh.",
    ),
    (
        Event::ChallengeSent,
        "lanrage_relay_challenges_sent_total",
        "Registrations answered with a return-routability challenge (unproven source address).",
    ),
    (
        Event::ProbeAnswered,
        "lanrage_relay_probes_answered_total",
        "Liveness probes answered.",
    ),
    (
        Event::PendingReplaced,
        "lanrage_relay_pending_handshakes_replaced_total",
        "Pending initiations replaced by a newer one of the same pair of peers (per-pair quota).",
    ),
    (
        Event::SessionReplaced,
        "lanrage_relay_sessions_replaced_total",
        "Sessions replaced by a newer one of the same pair of peers (per-pair quota).",
    ),
    (
        Event::SignalForwarded,
        "lanrage_relay_signals_forwarded_total",
        "Signals forwarded between two registered, mutually consenting peers.",
    ),
    (
        Event::StunSuccessSent,
        "lanrage_relay_stun_responses_total{kind=\"success\"}",
        "STUN Binding responses sent, by kind (error: 420 Unknown Attribute).",
    ),
    (
        Event::StunErrorSent,
        "lanrage_relay_stun_responses_total{kind=\"error\"}",
        "",
    ),
    (
        Event::StunSentFromAlternate,
        "lanrage_relay_stun_alternate_responses_total",
        "STUN responses sent from an alternate socket (RFC 5780 CHANGE-REQUEST).",
    ),
    (
        Event::PartyRequestAccepted,
        "lanrage_relay_party_requests_total",
        "Party requests authenticated and handed to the party service.",
    ),
];

/// The most worker threads that get a counter shard of their own; more share.
pub const MAX_SHARDS: usize = 64;

thread_local! {
    /// This thread's counter shard; workers set it once at start.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread record into shard `worker % MAX_SHARDS`. Each data
/// plane worker calls this once, so two cores never write one cache line.
pub fn bind_thread_to_shard(worker: usize) {
    SHARD.with(|s| s.set(worker % MAX_SHARDS));
}

/// The shard the calling thread records into.
#[inline]
fn current_shard() -> usize {
    SHARD.with(|s| s.get())
}

/// `N` counters, sharded per worker thread ([`bind_thread_to_shard`]) so
/// that no two workers write one cache line, and summed when read. Relaxed
/// atomics: they are statistics, not synchronisation. The relay's own
/// [`Metrics`] use it, and so does any [`MetricsSource`] that counts on the
/// data path (the relay crate's backend counters).
#[derive(Debug)]
pub struct ShardedCounters<const N: usize> {
    shards: Box<[CounterShard<N>]>,
}

/// One thread's counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct CounterShard<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for ShardedCounters<N> {
    fn default() -> Self {
        Self {
            shards: (0..MAX_SHARDS)
                .map(|_| CounterShard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl<const N: usize> ShardedCounters<N> {
    /// Adds `n` to counter `index` (`< N`) in the calling thread's shard.
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        self.shards[current_shard()].0[index].fetch_add(n, Ordering::Relaxed);
    }

    /// Counter `index` summed over every shard.
    pub fn get(&self, index: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[index].load(Ordering::Relaxed))
            .sum()
    }
}

/// The relay's counters: drop reasons, then events.
const COUNTERS: usize = DropReason::ALL.len() + EVENTS.len();

/// Counters and gauges, updated with relaxed atomics: they are statistics, not
/// synchronisation. Counters are sharded per worker thread (see
/// [`bind_thread_to_shard`]) and summed when read.
#[derive(Debug)]
pub struct Metrics {
    counters: ShardedCounters<COUNTERS>,
    registrations: AtomicU64,
    routes: AtomicU64,
    pending_handshakes: AtomicU64,
    handshake_limiter_evictions: AtomicU64,
    hint_limiter_evictions: AtomicU64,
    stun_limiter_evictions: AtomicU64,
    sources: RwLock<Vec<Arc<dyn MetricsSource>>>,
}

impl std::fmt::Debug for dyn MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            counters: ShardedCounters::default(),
            registrations: AtomicU64::new(0),
            routes: AtomicU64::new(0),
            pending_handshakes: AtomicU64::new(0),
            handshake_limiter_evictions: AtomicU64::new(0),
            hint_limiter_evictions: AtomicU64::new(0),
            stun_limiter_evictions: AtomicU64::new(0),
            sources: RwLock::new(Vec::new()),
        }
    }
}

impl Metrics {
    pub fn record_drop(&self, reason: DropReason) {
        self.counters.add(reason.slot(), 1);
    }

    pub fn record(&self, event: Event) {
        self.record_n(event, 1);
    }

    pub fn record_n(&self, event: Event, n: u64) {
        self.counters.add(DropReason::ALL.len() + event as usize, n);
    }

    /// Table sizes, set by the router after each change.
    pub fn set_table_sizes(&self, registrations: usize, routes: usize, pending: usize) {
        self.registrations
            .store(registrations as u64, Ordering::Relaxed);
        self.routes.store(routes as u64, Ordering::Relaxed);
        self.pending_handshakes
            .store(pending as u64, Ordering::Relaxed);
    }

    /// Sources the per-IP handshake limiter evicted because its table was
    /// full (its own running total; set at each sweep).
    pub fn set_handshake_limiter_evictions(&self, total: u64) {
        self.handshake_limiter_evictions
            .store(total, Ordering::Relaxed);
    }

    /// The same for the unknown-session hint limiter.
    pub fn set_hint_limiter_evictions(&self, total: u64) {
        self.hint_limiter_evictions.store(total, Ordering::Relaxed);
    }

    /// The same for the STUN limiter.
    pub fn set_stun_limiter_evictions(&self, total: u64) {
        self.stun_limiter_evictions.store(total, Ordering::Relaxed);
    }

    /// Adds metrics rendered after the relay's own on every scrape.
    pub fn add_source(&self, source: Arc<dyn MetricsSource>) {
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.counters.get(reason.slot())
    }

    pub fn event_count(&self, event: Event) -> u64 {
        self.counters.get(DropReason::ALL.len() + event as usize)
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_dropped_total Datagrams dropped, by reason."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_dropped_total counter");
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "lanrage_relay_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.dropped(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_forwarded_total WireGuard messages forwarded, by kind."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_forwarded_total counter");
        for (event, name, help) in EVENTS.iter() {
            if !help.is_empty() {
                let base = name.split('{').next().unwrap_or(name);
                let _ = writeln!(out, "# HELP {base} {help}");
                let _ = writeln!(out, "# TYPE {base} counter");
            }
            let _ = writeln!(out, "{name} {}", self.event_count(*event));
        }
        for (name, help, value) in [
            (
                "lanrage_relay_registrations",
                "Registered clients.",
                &self.registrations,
            ),
            (
                "lanrage_relay_routes",
                "Installed transport routes.",
                &self.routes,
            ),
            (
                "lanrage_relay_pending_handshakes",
                "Initiations awaiting a response.",
                &self.pending_handshakes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", gauge(value));
        }
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_rate_limiter_evictions_total Sources evicted from a full per-IP rate-limiter table to admit a new one."
        );
        let _ = writeln!(
            out,
            "# TYPE lanrage_relay_rate_limiter_evictions_total counter"
        );
        for (limiter, value) in [
            ("handshake", &self.handshake_limiter_evictions),
            ("hint", &self.hint_limiter_evictions),
            ("stun", &self.stun_limiter_evictions),
        ] {
            let _ = writeln!(
                out,
                "lanrage_relay_rate_limiter_evictions_total{{limiter=\"{limiter}\"}} {}",
                gauge(value)
            );
        }
        for source in self
            .sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            source.render_prometheus(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_declaration_order() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.slot(), i);
        }
        for (i, (event, _, _)) in EVENTS.iter().enumerate() {
            assert_eq!(*event as usize, i);
        }
    }

    #[test]
    fn shards_sum_across_threads() {
        let m = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..3)
            .map(|worker| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    bind_thread_to_shard(worker);
                    for _ in 0..1000 {
                        m.record(Event::ForwardedTransport);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        assert_eq!(m.event_count(Event::ForwardedTransport), 3000);
    }

    #[test]
    fn sources_render_after_the_relay_s_own() {
        struct Fixed;
        impl MetricsSource for Fixed {
            fn render_prometheus(&self, out: &mut String) {
                out.push_str("extra_total 3\n");
            }
        }
        let m = Metrics::default();
        m.add_source(Arc::new(Fixed));
        assert!(m.render_prometheus().ends_with("extra_total 3\n"));
    }

    #[test]
    fn every_event_renders_once_as_a_typed_counter() {
        let text = Metrics::default().render_prometheus();
        for (_, name, _) in EVENTS.iter() {
            let base = name.split('{').next().unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {base} counter\n")), "{base}");
            assert_eq!(text.matches(&format!("\n{name} 0\n")).count(), 1, "{name}");
        }
    }

    #[test]
    fn every_reason_and_event_renders_once() {
        let m = Metrics::default();
        m.record_drop(DropReason::NoRoute);
        m.record(Event::ForwardedTransport);
        let text = m.render_prometheus();
        assert!(text.contains("lanrage_relay_dropped_total{reason=\"no_route\"} 1"));
        assert!(text.contains("lanrage_relay_forwarded_total{kind=\"transport\"} 1"));
        for reason in DropReason::ALL {
            assert_eq!(text.matches(&format!("\"{}\"", reason.as_str())).count(), 1);
        }
    }
}
