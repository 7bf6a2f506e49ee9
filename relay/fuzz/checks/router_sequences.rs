//! The `router_sequences` check: sequences of datagrams from many sources
//! through [`Router::handle`] on a virtual clock, with the router's promises
//! checked after every step against a model the harness keeps.
//!
//! Shared, unchanged, by the cargo-fuzz target
//! (`relay/fuzz/fuzz_targets/router_sequences.rs`, nightly) and the stable
//! test (`relay/tests/router_sequences.rs`), which runs it on random inputs and
//! replays `relay/fuzz/regressions/router_sequences/`. Both feed raw bytes
//! through `arbitrary`, so a file found by the fuzzer replays the same way on
//! stable.
//!
//! The input is a few router limits and a list of [`Step`]s. Five simulated
//! clients hold real X25519 keys (fixed seeds, so their registrations verify)
//! and live at addresses from a pool of eight. They register the way a real
//! client does (answering the relay's challenge), or oddly (a stale, foreign,
//! missing or random cookie, an old timestamp, a wrong MAC, no answer to the
//! challenge). Any source can send handshakes with mac1 for a chosen key,
//! cookie replies, transport with chosen indices, probes, raw bytes, or any
//! earlier datagram again, mutated or not. Time advances by chosen amounts,
//! with or without `handle_timeout`.
//!
//! The model knows, from the acks it saw, which key is bound to which address
//! with which consent list, and which addresses have ever been acked (proven
//! they receive). Registrations leave the relay only by expiry (at a sweep the
//! harness can predict from `poll_timeout`) or by another key taking their
//! address, so the model tracks the registration table exactly. Invariants:
//!
//! (a) a `Forward` is of a WireGuard message, from the address bound to some
//!     key K to the address bound to another key P, K and P list each other in
//!     their latest accepted consent lists, and a forwarded handshake's mac1 is
//!     for P; the bytes are unchanged (an initiation under load may have mac2
//!     zeroed);
//! (b) a `Reply` is never longer than the datagram; to a source never acked
//!     at its address it is only a challenge, an unknown-session hint, an
//!     unauthenticated probe ack, or the ack that proves it (which needs a
//!     cookie the relay sent to that address for that key); every reply is the
//!     right type for its request, authenticated where it must be, and says
//!     what the model says (hint and probe-ack flags, echoed timestamps);
//! (c) registrations, routes and pending handshakes stay within the
//!     configured limits, no pair of keys holds more than
//!     [`MAX_SESSIONS_PER_PEER`] sessions, every route has its reverse, and the
//!     registration table equals the model's;
//! (d) an accepted registration's timestamp is above the key's last accepted
//!     one while the relay must still remember it;
//! (e) every `Drop` is counted under its reason, a reply counts only what it
//!     stands for (a hint: `no_route`; a cookie reply: `mac2_invalid`), and
//!     nothing else counts a drop.
//!
//! Bugs found and not fixed yet are listed in [`UNFIXED`]; see
//! [`tolerating_known_bugs`]. [`run_observed`] also reports the states a run
//! reached, which the fuzz target turns into libFuzzer counters, and
//! [`Input::encode`] turns a scenario written as steps into a seed file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use lanrage_proto::control::{
    Probe, Registration, RegistrationCookie, SessionKeys, CHALLENGE_LEN, NO_COOKIE, PROBE_ACK_LEN,
    UNKNOWN_SESSION_LEN,
};
use lanrage_proto::mac::{self, CookieKey, Mac1Key};
use lanrage_proto::wireguard::{COOKIE_REPLY_LEN, INITIATION_LEN, MAC_LEN, RESPONSE_LEN};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, ControlMessage, DatagramKind, PeerKey, WgMessage};
use lanrage_relay_core::metrics::DropReason;
use lanrage_relay_core::router::{RateLimit, Router, RouterConfig, Verdict, MAX_SESSIONS_PER_PEER};

/// Steps past this many are ignored, so one input stays fast.
pub const MAX_STEPS: usize = 64;

const RELAY_SECRET: [u8; 32] = [0x42; 32];
const EPOCH: u64 = 7;
const SEED: [u8; 32] = [9; 32];
/// Secrets `[seed; 32]` of the simulated clients.
const CLIENT_SEEDS: [u8; 5] = [1, 2, 3, 4, 5];
const CLIENTS: usize = CLIENT_SEEDS.len();
/// A key no simulated client holds the secret of.
const OUTSIDER: PeerKey = PeerKey([0xEE; 32]);
/// A low-order point: no shared secret, refused as a weak key.
const WEAK: PeerKey = PeerKey([0; 32]);
/// Where sources live; client `i` starts at the `i`-th. Two ports on one IP
/// (one rate-limit bucket), IPv6, a v4-mapped IPv6 address that is a
/// different socket address than its IPv4, and two no client starts at.
const ADDRESSES: [&str; 8] = [
    "192.0.2.1:1000",
    "192.0.2.1:1001",
    "192.0.2.2:2000",
    "198.51.100.7:51820",
    "[2001:db8::1]:4000",
    "[::ffff:192.0.2.2]:2000",
    "203.0.113.9:9",
    "[2001:db8::2]:4001",
];
/// The router's cookie secrets rotate every 120 s; a captured registration's
/// cookie is good for at most two periods, and the relay remembers a removed
/// key's timestamp at least that long (`Core::handle_timeout`).
const COOKIE_PERIOD: Duration = Duration::from_secs(120);

/// One fuzz input: router limits (small, so every bound is reached) and steps.
///
/// From raw bytes (`arbitrary_take_rest`, what `fuzz_target!` uses): 8 bytes
/// of limits, then one step per [`STEP_LEN`] bytes to the end. Fixed-size
/// steps keep libFuzzer's in-place byte mutations local to one step, and
/// bytes appended to an input become more steps.
#[derive(Debug, Clone)]
pub struct Input {
    pub limits: Limits,
    pub steps: Vec<Step>,
}

/// Each field picks a small value of one [`RouterConfig`] limit.
#[derive(Debug, Clone, Arbitrary)]
pub struct Limits {
    pub max_registrations: u8,
    pub max_routes: u8,
    pub max_pending: u8,
    pub max_sources: u8,
    pub handshake_per_second: u8,
    pub handshake_burst: u8,
    pub hint_burst: u8,
    pub under_load: u8,
}

impl Limits {
    pub fn config(&self) -> RouterConfig {
        RouterConfig {
            max_registrations: 1 + usize::from(self.max_registrations % 6),
            // Up to two pairs at MAX_SESSIONS_PER_PEER sessions (two entries each).
            max_routes: 1 + usize::from(self.max_routes % 16),
            max_pending_handshakes: 1 + usize::from(self.max_pending % 8),
            max_rate_limited_sources: 1 + usize::from(self.max_sources % 8),
            handshake_rate_limit: RateLimit {
                per_second: 1 + u32::from(self.handshake_per_second % 8),
                burst: 1 + u32::from(self.handshake_burst % 32),
            },
            hint_rate_limit: RateLimit {
                per_second: 2,
                burst: 1 + u32::from(self.hint_burst % 8),
            },
            under_load_handshakes_per_second: match self.under_load % 8 {
                7 => 5_000,
                n => u32::from(n),
            },
            ..RouterConfig::default()
        }
    }
}

/// Bytes per step in a raw input: a tag (bit 7: the second worker) and up to
/// 11 bytes of fields; a short last step reads zeros.
pub const STEP_LEN: usize = 12;

/// One action, on one of two workers (handles on the same router state).
#[derive(Debug, Clone)]
pub struct Step {
    pub second_worker: bool,
    pub action: Action,
}

/// Where a client registers from.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    /// Its bound address, or its home address if none (a refresh, or a first
    /// registration).
    Own,
    /// An address from the pool: roaming, or taking over another key's address.
    Address(u8),
}

/// Where a datagram comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The address client `n` is bound to, or its home address if none.
    Client(u8),
    /// An address from the pool.
    Address(u8),
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Client `client` registers from `at` as a real client does: the next
    /// timestamp, the latest cookie it got there, and when challenged, again at
    /// once with the new cookie. `consent` is a bit set (see [`consent_list`]).
    Register { client: u8, at: Place, consent: u8 },
    /// A registration no well-behaved client sends. `claimant` may also be the
    /// outsider or the weak key, which the harness can't MAC for.
    RegisterOddly {
        claimant: u8,
        at: Source,
        consent: u8,
        cookie: CookieChoice,
        timestamp: TimestampChoice,
        mac: MacChoice,
        answer_challenge: bool,
    },
    /// A liveness probe for `claimant`'s key.
    Probe {
        claimant: u8,
        from: Source,
        right_mac: bool,
        timestamp: u8,
    },
    /// A handshake initiation. With bit 7 of `responder` clear and `from` a
    /// registered client, its mac1 is for a key in that client's consent list
    /// (what a real client sends); otherwise for the key `responder & 0x7F`
    /// picks among the clients and the outsider.
    /// mac2 from the cookie last received at the source, if asked and there
    /// is one.
    Initiation {
        from: Source,
        responder: u8,
        sender: u8,
        mac2: bool,
        fill: u8,
    },
    /// The responder of an initiation the relay forwarded (the `which`-th
    /// most recent) answers it as WireGuard does: from its endpoint, to the
    /// initiator's sender index, mac1 for the initiator.
    Answer { which: u8, sender: u8, fill: u8 },
    /// Transport on a session the relay routed (the `which`-th most recent
    /// forwarded response), from one side's endpoint to the other's index.
    Traffic {
        which: u8,
        backwards: bool,
        extra_len: u8,
    },
    /// A handshake response whose mac1 is for `initiator`.
    Response {
        from: Source,
        initiator: u8,
        sender: u8,
        receiver: u8,
        fill: u8,
    },
    CookieReply {
        from: Source,
        receiver: u8,
        fill: u8,
    },
    Transport {
        from: Source,
        receiver: u8,
        extra_len: u8,
        counter: u8,
    },
    /// One of the last datagrams seen (sent, forwarded or replied), again,
    /// from any source, with one byte changed (`xor` non-zero) or not.
    Replay {
        which: u8,
        from: Source,
        at: u16,
        xor: u8,
    },
    /// `len` (mod 2049) bytes of `pattern`, repeated.
    Raw {
        from: Source,
        len: u16,
        pattern: [u8; 8],
    },
    /// Time passes; with `sweep`, the drive loop then calls `handle_timeout`.
    /// The top two bits of `millis` pick the scale: the rest modulo 1 s (00),
    /// 30 s (01, 11) or 200 s (10), so registrations mostly live on.
    Advance { millis: u32, sweep: bool },
}

#[derive(Debug, Clone, Copy)]
pub enum CookieChoice {
    /// The latest cookie the relay sent to this address for this key.
    Latest,
    /// The oldest one (from an earlier secret period, if time has passed).
    Oldest,
    /// One the relay sent for this key to another address.
    ForAddress(u8),
    /// One the relay sent to this address for another client's key.
    OfClient(u8),
    Missing,
    /// Sixteen of this byte.
    Bytes(u8),
}

#[derive(Debug, Clone, Copy)]
pub enum TimestampChoice {
    Next,
    /// The last one this client sent.
    Repeat,
    /// That many below the last one.
    Back(u8),
}

#[derive(Debug, Clone, Copy)]
pub enum MacChoice {
    Right,
    /// Under another client's session keys.
    OtherClient(u8),
    Zero,
}

// The enums decode with a one-byte tag (the derive spends four), so that a
// short fuzz input holds many steps.

fn tag(u: &mut Unstructured<'_>, variants: u8) -> arbitrary::Result<u8> {
    Ok(u8::arbitrary(u)? % variants)
}

impl<'a> Arbitrary<'a> for Source {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // Three in four from a client: most traffic comes from registered peers.
        let b = u8::arbitrary(u)?;
        Ok(if b >> 6 != 3 {
            Self::Client(b)
        } else {
            Self::Address(b & 0x3F)
        })
    }
}

impl<'a> Arbitrary<'a> for Place {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // One in eight moves: a client mostly registers where it is.
        let b = u8::arbitrary(u)?;
        Ok(if b >> 5 != 7 {
            Self::Own
        } else {
            Self::Address(b & 0x1F)
        })
    }
}

impl<'a> Arbitrary<'a> for CookieChoice {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match tag(u, 6)? {
            0 => Self::Latest,
            1 => Self::Oldest,
            2 => Self::ForAddress(u.arbitrary()?),
            3 => Self::OfClient(u.arbitrary()?),
            4 => Self::Missing,
            _ => Self::Bytes(u.arbitrary()?),
        })
    }
}

impl<'a> Arbitrary<'a> for TimestampChoice {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match tag(u, 3)? {
            0 => Self::Next,
            1 => Self::Repeat,
            _ => Self::Back(u.arbitrary()?),
        })
    }
}

impl<'a> Arbitrary<'a> for MacChoice {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match tag(u, 3)? {
            0 => Self::Right,
            1 => Self::OtherClient(u.arbitrary()?),
            _ => Self::Zero,
        })
    }
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let limits = u.arbitrary()?;
        let steps = u
            .arbitrary_iter()?
            .take(MAX_STEPS)
            .collect::<Result<_, _>>()?;
        Ok(Self { limits, steps })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        let limits = u.arbitrary()?;
        let mut steps = Vec::new();
        while !u.is_empty() && steps.len() < MAX_STEPS {
            steps.push(u.arbitrary()?);
        }
        Ok(Self { limits, steps })
    }
}

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let chunk = u.bytes(u.len().min(STEP_LEN))?;
        let mut step = Unstructured::new(chunk);
        let head = u8::arbitrary(&mut step)?;
        Ok(Self {
            second_worker: head & 0x80 != 0,
            action: Action::decode(head & 0x7F, &mut step)?,
        })
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (STEP_LEN, Some(STEP_LEN))
    }
}

impl Action {
    /// A number per kind of action, for [`run_observed`].
    fn kind(&self) -> u16 {
        match self {
            Self::Register { .. } => 0,
            Self::RegisterOddly { .. } => 1,
            Self::Probe { .. } => 2,
            Self::Initiation { .. } => 3,
            Self::Answer { .. } => 4,
            Self::Traffic { .. } => 5,
            Self::Response { .. } => 6,
            Self::CookieReply { .. } => 7,
            Self::Transport { .. } => 8,
            Self::Replay { .. } => 9,
            Self::Raw { .. } => 10,
            Self::Advance { .. } => 11,
        }
    }

    /// The action `tag` picks, its fields from `u` (at most 11 bytes).
    fn decode(tag: u8, u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match tag % 13 {
            // Twice the weight: most of what a relay sees is well-behaved.
            0 | 1 => Self::Register {
                client: u.arbitrary()?,
                at: u.arbitrary()?,
                consent: u.arbitrary()?,
            },
            2 => Self::RegisterOddly {
                claimant: u.arbitrary()?,
                at: u.arbitrary()?,
                consent: u.arbitrary()?,
                cookie: u.arbitrary()?,
                timestamp: u.arbitrary()?,
                mac: u.arbitrary()?,
                answer_challenge: u.arbitrary()?,
            },
            3 => Self::Probe {
                claimant: u.arbitrary()?,
                from: u.arbitrary()?,
                right_mac: u.arbitrary()?,
                timestamp: u.arbitrary()?,
            },
            4 => Self::Initiation {
                from: u.arbitrary()?,
                responder: u.arbitrary()?,
                sender: u.arbitrary()?,
                mac2: u.arbitrary()?,
                fill: u.arbitrary()?,
            },
            5 => Self::Response {
                from: u.arbitrary()?,
                initiator: u.arbitrary()?,
                sender: u.arbitrary()?,
                receiver: u.arbitrary()?,
                fill: u.arbitrary()?,
            },
            6 => Self::CookieReply {
                from: u.arbitrary()?,
                receiver: u.arbitrary()?,
                fill: u.arbitrary()?,
            },
            7 => Self::Transport {
                from: u.arbitrary()?,
                receiver: u.arbitrary()?,
                extra_len: u.arbitrary()?,
                counter: u.arbitrary()?,
            },
            8 => Self::Replay {
                which: u.arbitrary()?,
                from: u.arbitrary()?,
                at: u.arbitrary()?,
                xor: u.arbitrary()?,
            },
            9 => Self::Raw {
                from: u.arbitrary()?,
                len: u.arbitrary()?,
                pattern: u.arbitrary()?,
            },
            10 => Self::Advance {
                millis: u.arbitrary()?,
                sweep: u.arbitrary()?,
            },
            11 => Self::Answer {
                which: u.arbitrary()?,
                sender: u.arbitrary()?,
                fill: u.arbitrary()?,
            },
            _ => Self::Traffic {
                which: u.arbitrary()?,
                backwards: u.arbitrary()?,
                extra_len: u.arbitrary()?,
            },
        })
    }
}

impl Input {
    /// The raw bytes that decode ([`decode`]) to this input: how a scenario
    /// written as steps becomes a seed file for the fuzzer. Steps past
    /// [`MAX_STEPS`] are dropped.
    pub fn encode(&self) -> Vec<u8> {
        let l = &self.limits;
        let mut out = vec![
            l.max_registrations,
            l.max_routes,
            l.max_pending,
            l.max_sources,
            l.handshake_per_second,
            l.handshake_burst,
            l.hint_burst,
            l.under_load,
        ];
        for step in self.steps.iter().take(MAX_STEPS) {
            let (tag, fields) = step.action.encode();
            assert!(fields.len() < STEP_LEN, "{step:?} encodes too long");
            let mut chunk = [0u8; STEP_LEN];
            chunk[0] = tag | if step.second_worker { 0x80 } else { 0 };
            chunk[1..=fields.len()].copy_from_slice(&fields);
            out.extend_from_slice(&chunk);
        }
        out
    }
}

impl Source {
    fn encode(self) -> u8 {
        match self {
            // Decodes as the same client.
            Self::Client(n) if n < 0xC0 => n,
            Self::Client(n) => n % CLIENTS as u8,
            Self::Address(n) => 0xC0 | (n & 0x3F),
        }
    }
}

impl Place {
    fn encode(self) -> u8 {
        match self {
            Self::Own => 0,
            Self::Address(n) => 0xE0 | (n & 0x1F),
        }
    }
}

impl Action {
    /// Its tag and fields, as [`Action::decode`] reads them.
    fn encode(&self) -> (u8, Vec<u8>) {
        let b = u8::from;
        match *self {
            Self::Register {
                client,
                at,
                consent,
            } => (0, vec![client, at.encode(), consent]),
            Self::RegisterOddly {
                claimant,
                at,
                consent,
                cookie,
                timestamp,
                mac,
                answer_challenge,
            } => {
                let mut f = vec![claimant, at.encode(), consent];
                f.extend(match cookie {
                    CookieChoice::Latest => vec![0],
                    CookieChoice::Oldest => vec![1],
                    CookieChoice::ForAddress(n) => vec![2, n],
                    CookieChoice::OfClient(n) => vec![3, n],
                    CookieChoice::Missing => vec![4],
                    CookieChoice::Bytes(n) => vec![5, n],
                });
                f.extend(match timestamp {
                    TimestampChoice::Next => vec![0],
                    TimestampChoice::Repeat => vec![1],
                    TimestampChoice::Back(n) => vec![2, n],
                });
                f.extend(match mac {
                    MacChoice::Right => vec![0],
                    MacChoice::OtherClient(n) => vec![1, n],
                    MacChoice::Zero => vec![2],
                });
                f.push(b(answer_challenge));
                (2, f)
            }
            Self::Probe {
                claimant,
                from,
                right_mac,
                timestamp,
            } => (3, vec![claimant, from.encode(), b(right_mac), timestamp]),
            Self::Initiation {
                from,
                responder,
                sender,
                mac2,
                fill,
            } => (4, vec![from.encode(), responder, sender, b(mac2), fill]),
            Self::Response {
                from,
                initiator,
                sender,
                receiver,
                fill,
            } => (5, vec![from.encode(), initiator, sender, receiver, fill]),
            Self::CookieReply {
                from,
                receiver,
                fill,
            } => (6, vec![from.encode(), receiver, fill]),
            Self::Transport {
                from,
                receiver,
                extra_len,
                counter,
            } => (7, vec![from.encode(), receiver, extra_len, counter]),
            Self::Replay {
                which,
                from,
                at,
                xor,
            } => {
                let mut f = vec![which, from.encode()];
                f.extend_from_slice(&at.to_le_bytes());
                f.push(xor);
                (8, f)
            }
            Self::Raw { from, len, pattern } => {
                let mut f = vec![from.encode()];
                f.extend_from_slice(&len.to_le_bytes());
                f.extend_from_slice(&pattern);
                (9, f)
            }
            Self::Advance { millis, sweep } => {
                let mut f = millis.to_le_bytes().to_vec();
                f.push(b(sweep));
                (10, f)
            }
            Self::Answer {
                which,
                sender,
                fill,
            } => (11, vec![which, sender, fill]),
            Self::Traffic {
                which,
                backwards,
                extra_len,
            } => (12, vec![which, b(backwards), extra_len]),
        }
    }
}

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: usize,
    pub what: String,
    /// The known router bug this is a symptom of, if it is one.
    pub bug: Option<KnownBug>,
    /// What the run did up to the violation.
    pub stats: Stats,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}", self.step, self.what)?;
        if let Some(bug) = self.bug {
            write!(f, " (known bug: {bug:?})")?;
        }
        Ok(())
    }
}

/// Router bugs this check found, each with a named `#[ignore]`d test in
/// `relay/tests/router_sequences.rs` that fails until it is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownBug {
    /// A response (or cookie reply) to an initiation still pending when one
    /// side withdrew consent is forwarded, and installs a session.
    PendingOutlivesConsent,
    /// A response that reuses a routed index overwrites one half of an older
    /// session and leaves the other half without its reverse.
    ReusedIndexOrphansRoute,
}

/// The bugs in [`KnownBug`] not fixed yet. A run that hits one stops there
/// and passes under [`tolerating_known_bugs`], so the fuzzer and the stable
/// replay keep looking for other bugs instead of finding these again. Remove
/// a bug's entry with its fix.
pub const UNFIXED: &[KnownBug] = &[];

/// `result`, with a violation that is a symptom of an [`UNFIXED`] bug
/// turned into a pass (its `stats` count one `known_bug_stops`).
pub fn tolerating_known_bugs(result: Result<Stats, Violation>) -> Result<Stats, Violation> {
    match result {
        Err(v) if v.bug.is_some_and(|bug| UNFIXED.contains(&bug)) => Ok(Stats {
            known_bug_stops: 1,
            ..v.stats
        }),
        other => other,
    }
}

/// What a run did, so tests can tell that inputs reach deep states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams: u64,
    pub forwards: u64,
    pub forwarded_responses: u64,
    pub forwarded_transport: u64,
    pub acks: u64,
    pub challenges: u64,
    pub cookie_replies: u64,
    pub sweeps: u64,
    /// Runs that stopped at an [`UNFIXED`] bug (see [`tolerating_known_bugs`]).
    pub known_bug_stops: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Self) {
        self.datagrams += o.datagrams;
        self.forwards += o.forwards;
        self.forwarded_responses += o.forwarded_responses;
        self.forwarded_transport += o.forwarded_transport;
        self.acks += o.acks;
        self.challenges += o.challenges;
        self.cookie_replies += o.cookie_replies;
        self.sweeps += o.sweeps;
        self.known_bug_stops += o.known_bug_stops;
    }
}

/// Decodes raw fuzzer bytes the way `fuzz_target!` does; `None` for bytes
/// that decode to no input (the fuzz target skips those too).
pub fn decode(data: &[u8]) -> Option<Input> {
    Input::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// Runs one input; the first violated invariant is the error.
pub fn run(input: &Input) -> Result<Stats, Violation> {
    Sim::new(input.limits.config(), false).run(&input.steps).0
}

/// [`run`], printing every step and verdict to stderr (to read a failure).
pub fn trace(input: &Input) -> Result<Stats, Violation> {
    Sim::new(input.limits.config(), true).run(&input.steps).0
}

/// Number of distinct values [`run_observed`] reports.
pub const FEATURES: usize = 3072;

/// [`run`], also reporting which states the run reached, as numbers below
/// [`FEATURES`]: (action, verdict) pairs, consecutive verdicts, table sizes,
/// and how many sessions carried traffic. Code coverage alone stops
/// rewarding an input once each branch ran; the fuzz target feeds these to
/// libFuzzer as extra counters, so inputs that reach deeper states are kept.
pub fn run_observed(input: &Input, features: &mut Vec<u16>) -> Result<Stats, Violation> {
    let (result, reached) = Sim::new(input.limits.config(), false).run(&input.steps);
    features.extend(reached);
    result
}

// Feature ranges of `run_observed`.
const VERDICT_CLASSES: u16 = 32;
const ACTION_VERDICT_AT: u16 = 0; // 13 actions x 32 verdict classes
const VERDICT_PAIR_AT: u16 = ACTION_VERDICT_AT + 13 * VERDICT_CLASSES; // 32 x 32
const TABLES_AT: u16 = VERDICT_PAIR_AT + VERDICT_CLASSES * VERDICT_CLASSES; // 7 x 17 x 9
const DEPTH_AT: u16 = TABLES_AT + 7 * 17 * 9; // 8 x 8
const _: () = assert!(DEPTH_AT as usize + 64 <= FEATURES);

/// The consent list a byte stands for. With bits 5–7 all set (one in eight),
/// every client (a party where all consent to all). Otherwise bits 0–4 the
/// clients (a client's own key included if its bit is set), bit 5 the
/// outsider key, bit 6 reverses the order, bit 7 repeats the first entry.
pub fn consent_list(bits: u8) -> Vec<PeerKey> {
    let ids = identities();
    if bits & 0xE0 == 0xE0 {
        return ids.iter().map(|id| id.key).collect();
    }
    let mut list: Vec<PeerKey> = (0..CLIENTS)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| ids[i].key)
        .collect();
    if bits & 0x20 != 0 {
        list.push(OUTSIDER);
    }
    if bits & 0x40 != 0 {
        list.reverse();
    }
    if bits & 0x80 != 0 {
        if let Some(first) = list.first().copied() {
            list.push(first);
        }
    }
    list
}

/// A simulated client's fixed identity.
struct Identity {
    key: PeerKey,
    keys: SessionKeys,
    mac1: Mac1Key,
    cookie: CookieKey,
}

fn identities() -> &'static [Identity] {
    static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    IDS.get_or_init(|| {
        let relay = PublicKey::from(&StaticSecret::from(RELAY_SECRET));
        CLIENT_SEEDS
            .iter()
            .map(|&seed| {
                let secret = StaticSecret::from([seed; 32]);
                let key = PeerKey::from(&PublicKey::from(&secret));
                Identity {
                    keys: SessionKeys::for_client(&secret, &relay).expect("fixed client keys"),
                    mac1: Mac1Key::for_responder(key.as_bytes()),
                    cookie: CookieKey::for_responder(key.as_bytes()),
                    key,
                }
            })
            .collect()
    })
}

fn identity(key: &PeerKey) -> Option<&'static Identity> {
    identities().iter().find(|id| id.key == *key)
}

fn addresses() -> &'static [SocketAddr] {
    static ADDRS: OnceLock<Vec<SocketAddr>> = OnceLock::new();
    ADDRS.get_or_init(|| {
        ADDRESSES
            .iter()
            .map(|a| a.parse().expect("address literal"))
            .collect()
    })
}

fn address(n: u8) -> SocketAddr {
    let all = addresses();
    all[usize::from(n) % all.len()]
}

fn client_index(n: u8) -> usize {
    usize::from(n) % CLIENTS
}

/// A key to claim or to aim a mac1 at: a client's, the outsider's, or (with
/// `weak`) the low-order key.
fn claimed_key(n: u8, weak: bool) -> PeerKey {
    let extra = if weak { 2 } else { 1 };
    match usize::from(n) % (CLIENTS + extra) {
        i if i < CLIENTS => identities()[i].key,
        i if i == CLIENTS => OUTSIDER,
        _ => WEAK,
    }
}

/// WireGuard indices from a small pool, so that they collide.
fn index(n: u8) -> u32 {
    u32::from(n % 8)
}

/// What the harness knows about the router's registrations.
#[derive(Default)]
struct Model {
    bound: HashMap<PeerKey, Binding>,
    /// Addresses that ever got an ack: they have shown they receive.
    proven: HashSet<SocketAddr>,
    /// Every cookie a challenge carried, per (address it went to, key it was for), oldest first.
    cookies: HashMap<(SocketAddr, PeerKey), Vec<RegistrationCookie>>,
    /// Removed keys' last accepted timestamp: (timestamp, when, removal sequence number).
    removed: HashMap<PeerKey, (u64, Instant, u64)>,
    /// The sequence number of the first removal of a key at an instant (the
    /// relay's replay memory is ordered by (key, instant)).
    first_removal: HashMap<(PeerKey, Instant), u64>,
    removals: u64,
}

struct Binding {
    endpoint: SocketAddr,
    consent: Vec<PeerKey>,
    refreshed: Instant,
    timestamp: u64,
}

impl Model {
    fn owner_of(&self, endpoint: SocketAddr) -> Option<PeerKey> {
        self.bound
            .iter()
            .find(|(_, b)| b.endpoint == endpoint)
            .map(|(k, _)| *k)
    }

    fn bound_at(&self, key: &PeerKey, endpoint: SocketAddr) -> bool {
        self.bound.get(key).is_some_and(|b| b.endpoint == endpoint)
    }

    fn mutual(&self, a: &PeerKey, b: &PeerKey) -> bool {
        let consents =
            |x: &PeerKey, y: &PeerKey| self.bound.get(x).is_some_and(|bx| bx.consent.contains(y));
        a != b && consents(a, b) && consents(b, a)
    }

    /// Removes registrations as one batch (one sweep, or one takeover).
    fn remove(&mut self, keys: &[PeerKey], now: Instant) {
        let seq = self.removals;
        for key in keys {
            let Some(binding) = self.bound.remove(key) else {
                continue;
            };
            let first = *self.first_removal.entry((*key, now)).or_insert(seq);
            self.removed.insert(*key, (binding.timestamp, now, first));
        }
        self.removals += keys.len() as u64;
    }
}

/// A simulated client's changing state.
#[derive(Clone, Copy)]
struct ClientState {
    /// The last registration timestamp it sent.
    timestamp: u64,
}

struct Sim {
    config: RouterConfig,
    workers: [Router; 2],
    /// The virtual clock, and when the router was created.
    now: Instant,
    start: Instant,
    clients: [ClientState; CLIENTS],
    model: Model,
    /// Recent datagrams (sent, forwarded, replied), for `Replay`.
    seen: VecDeque<Vec<u8>>,
    /// Initiations the relay forwarded: (initiator, responder, sender index), newest last.
    initiations: VecDeque<(PeerKey, PeerKey, u32)>,
    /// Responses it forwarded: (initiator, its index, responder, its index), newest last.
    sessions: VecDeque<(PeerKey, u32, PeerKey, u32)>,
    /// The WireGuard cookie (from a relay cookie reply) last received per address.
    wg_cookies: HashMap<SocketAddr, mac::Cookie>,
    step: usize,
    trace: bool,
    stats: Stats,
    /// States reached (see [`run_observed`]), and what the last datagram got.
    features: Vec<u16>,
    action: u16,
    last_class: u16,
}

const SEEN_KEPT: usize = 32;

impl Sim {
    fn new(config: RouterConfig, trace: bool) -> Self {
        let now = Instant::now();
        let router = Router::new(
            config.clone(),
            StaticSecret::from(RELAY_SECRET),
            EPOCH,
            SEED,
            now,
        );
        let second = router.worker();
        Self {
            config,
            workers: [router, second],
            now,
            start: now,
            clients: [ClientState { timestamp: 1_000 }; CLIENTS],
            model: Model::default(),
            seen: VecDeque::new(),
            initiations: VecDeque::new(),
            sessions: VecDeque::new(),
            wg_cookies: HashMap::new(),
            step: 0,
            trace,
            stats: Stats::default(),
            features: Vec::new(),
            action: 0,
            last_class: 0,
        }
    }

    fn run(mut self, steps: &[Step]) -> (Result<Stats, Violation>, Vec<u16>) {
        let result = self.run_steps(steps);
        (result, self.features)
    }

    fn run_steps(&mut self, steps: &[Step]) -> Result<Stats, Violation> {
        if self.trace {
            eprintln!("config: {:?}", self.config);
        }
        for (n, step) in steps.iter().take(MAX_STEPS).enumerate() {
            self.step = n;
            if self.trace {
                eprintln!("step {n}: {step:?}");
            }
            self.action = step.action.kind();
            self.act(usize::from(step.second_worker), &step.action)?;
            self.check_tables()?;
            self.observe_tables();
        }
        Ok(self.stats)
    }

    fn fail<T>(&self, what: impl Into<String>) -> Result<T, Violation> {
        self.fail_with(None, what)
    }

    fn fail_with<T>(&self, bug: Option<KnownBug>, what: impl Into<String>) -> Result<T, Violation> {
        Err(Violation {
            step: self.step,
            what: what.into(),
            bug,
            stats: self.stats,
        })
    }

    fn source(&self, source: Source) -> SocketAddr {
        match source {
            Source::Client(n) => self.endpoint_or_home(&identities()[client_index(n)].key),
            Source::Address(n) => address(n),
        }
    }

    fn act(&mut self, worker: usize, action: &Action) -> Result<(), Violation> {
        match *action {
            Action::Register {
                client,
                at,
                consent,
            } => {
                let c = client_index(client);
                let src = match at {
                    Place::Own => self.source(Source::Client(client)),
                    Place::Address(n) => address(n),
                };
                let cookie = self.latest_cookie(src, &identities()[c].key);
                let ts = self.next_timestamp(c);
                let consent = consent_list(consent);
                self.register(worker, c, src, ts, cookie, &consent, MacChoice::Right, true)
            }
            Action::RegisterOddly {
                claimant,
                at,
                consent,
                cookie,
                timestamp,
                mac,
                answer_challenge,
            } => {
                let key = claimed_key(claimant, true);
                let src = self.source(at);
                let cookie = self.odd_cookie(src, &key, cookie);
                let consent = consent_list(consent);
                match identities().iter().position(|id| id.key == key) {
                    Some(c) => {
                        let ts = match timestamp {
                            TimestampChoice::Next => self.next_timestamp(c),
                            TimestampChoice::Repeat => self.clients[c].timestamp,
                            TimestampChoice::Back(n) => {
                                self.clients[c].timestamp.saturating_sub(u64::from(n))
                            }
                        };
                        self.register(worker, c, src, ts, cookie, &consent, mac, answer_challenge)
                    }
                    None => {
                        // No secret for this key: the MAC is a guess.
                        let keys = match mac {
                            MacChoice::OtherClient(n) => &identities()[client_index(n)].keys,
                            _ => &identities()[0].keys,
                        };
                        let wire = Registration {
                            client: key,
                            timestamp: 1_000,
                            observed: None,
                            cookie,
                            consent,
                        }
                        .seal(keys)
                        .expect("consent within the cap");
                        self.datagram(worker, src, wire).map(|_| ())
                    }
                }
            }
            Action::Probe {
                claimant,
                from,
                right_mac,
                timestamp,
            } => {
                let key = claimed_key(claimant, false);
                let keys = match identity(&key) {
                    Some(id) if right_mac => &id.keys,
                    Some(_) => &identities()[(client_index(claimant) + 1) % CLIENTS].keys,
                    None => &identities()[0].keys,
                };
                let wire = Probe {
                    client: key,
                    timestamp: u64::from(timestamp),
                }
                .seal(keys)
                .to_vec();
                let src = self.source(from);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Initiation {
                from,
                responder,
                sender,
                mac2,
                fill,
            } => {
                let src = self.source(from);
                let mut wire = vec![fill; INITIATION_LEN];
                wire[..4].copy_from_slice(&[1, 0, 0, 0]);
                wire[4..8].copy_from_slice(&index(sender).to_le_bytes());
                let party = match from {
                    Source::Client(c) if responder & 0x80 == 0 => self
                        .model
                        .bound
                        .get(&identities()[client_index(c)].key)
                        .map(|b| b.consent.as_slice())
                        .filter(|consent| !consent.is_empty()),
                    _ => None,
                };
                let target = match party {
                    Some(consent) => consent[usize::from(responder) % consent.len()],
                    None => claimed_key(responder & 0x7F, false),
                };
                let mac1_at = INITIATION_LEN - 2 * MAC_LEN;
                let mac1 = Mac1Key::for_responder(target.as_bytes()).compute(&wire[..mac1_at]);
                wire[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
                let mac2_at = INITIATION_LEN - MAC_LEN;
                let cookie = self.wg_cookies.get(&src).filter(|_| mac2);
                let mac2 = cookie.map_or([0; MAC_LEN], |c| mac::compute_mac2(c, &wire[..mac2_at]));
                wire[mac2_at..].copy_from_slice(&mac2);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Answer {
                which,
                sender,
                fill,
            } => {
                let Some(&(initiator, responder, initiator_index)) =
                    recent(&self.initiations, which)
                else {
                    return Ok(());
                };
                let src = self.endpoint_or_home(&responder);
                let wire = response(index(sender), initiator_index, &initiator, fill);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Traffic {
                which,
                backwards,
                extra_len,
            } => {
                let Some(&(initiator, i_index, responder, r_index)) = recent(&self.sessions, which)
                else {
                    return Ok(());
                };
                let (from, to_index) = if backwards {
                    (responder, i_index)
                } else {
                    (initiator, r_index)
                };
                let src = self.endpoint_or_home(&from);
                let wire = transport(to_index, extra_len, 0x55);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Response {
                from,
                initiator,
                sender,
                receiver,
                fill,
            } => {
                let src = self.source(from);
                let target = claimed_key(initiator, false);
                let wire = response(index(sender), index(receiver), &target, fill);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::CookieReply {
                from,
                receiver,
                fill,
            } => {
                let src = self.source(from);
                let mut wire = vec![fill; COOKIE_REPLY_LEN];
                wire[..4].copy_from_slice(&[3, 0, 0, 0]);
                wire[4..8].copy_from_slice(&index(receiver).to_le_bytes());
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Transport {
                from,
                receiver,
                extra_len,
                counter,
            } => {
                let src = self.source(from);
                let wire = transport(index(receiver), extra_len, counter);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Replay {
                which,
                from,
                at,
                xor,
            } => {
                if self.seen.is_empty() {
                    return Ok(());
                }
                let mut wire = self.seen[usize::from(which) % self.seen.len()].clone();
                if xor != 0 && !wire.is_empty() {
                    let at = usize::from(at) % wire.len();
                    wire[at] ^= xor;
                }
                let src = self.source(from);
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Raw { from, len, pattern } => {
                let src = self.source(from);
                let wire = pattern
                    .iter()
                    .copied()
                    .cycle()
                    .take(usize::from(len) % 2049)
                    .collect();
                self.datagram(worker, src, wire).map(|_| ())
            }
            Action::Advance { millis, sweep } => {
                let span = match millis >> 30 {
                    0 => 1_000,
                    2 => 200_000,
                    _ => 30_000,
                };
                self.now += Duration::from_millis(u64::from(millis % span));
                if sweep {
                    self.sweep(worker);
                }
                Ok(())
            }
        }
    }

    fn endpoint_or_home(&self, key: &PeerKey) -> SocketAddr {
        match self.model.bound.get(key) {
            Some(binding) => binding.endpoint,
            None => {
                let i = identities()
                    .iter()
                    .position(|id| id.key == *key)
                    .unwrap_or(0);
                address(i as u8)
            }
        }
    }

    fn next_timestamp(&mut self, client: usize) -> u64 {
        let c = &mut self.clients[client];
        c.timestamp = c.timestamp.saturating_add(1);
        c.timestamp
    }

    fn latest_cookie(&self, src: SocketAddr, key: &PeerKey) -> RegistrationCookie {
        self.model
            .cookies
            .get(&(src, *key))
            .and_then(|all| all.last().copied())
            .unwrap_or(NO_COOKIE)
    }

    fn odd_cookie(
        &self,
        src: SocketAddr,
        key: &PeerKey,
        choice: CookieChoice,
    ) -> RegistrationCookie {
        let cookies = &self.model.cookies;
        let found = match choice {
            CookieChoice::Latest => cookies.get(&(src, *key)).and_then(|c| c.last()),
            CookieChoice::Oldest => cookies.get(&(src, *key)).and_then(|c| c.first()),
            CookieChoice::ForAddress(n) => cookies.get(&(address(n), *key)).and_then(|c| c.last()),
            CookieChoice::OfClient(n) => cookies
                .get(&(src, identities()[client_index(n)].key))
                .and_then(|c| c.last()),
            CookieChoice::Missing => None,
            CookieChoice::Bytes(byte) => return [byte; 16],
        };
        found.copied().unwrap_or(NO_COOKIE)
    }

    /// Sends client `c`'s registration from `src`; if challenged and
    /// `answer_challenge`, sends it again at once with the new cookie and the
    /// next timestamp, as a client receiving at `src` does.
    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        worker: usize,
        c: usize,
        src: SocketAddr,
        timestamp: u64,
        cookie: RegistrationCookie,
        consent: &[PeerKey],
        mac: MacChoice,
        answer_challenge: bool,
    ) -> Result<(), Violation> {
        let id = &identities()[c];
        let keys = match mac {
            MacChoice::Right => Some(&id.keys),
            MacChoice::OtherClient(n) => Some(&identities()[client_index(n)].keys),
            MacChoice::Zero => None,
        };
        let seal = |timestamp: u64, cookie: RegistrationCookie| {
            let registration = Registration {
                client: id.key,
                timestamp,
                observed: None,
                cookie,
                consent: consent.to_vec(),
            };
            let mut wire = registration
                .seal(keys.unwrap_or(&id.keys))
                .expect("consent within the cap");
            if keys.is_none() {
                let len = wire.len();
                wire[len - MAC_LEN..].fill(0);
            }
            wire
        };
        let reply = self.datagram(worker, src, seal(timestamp, cookie))?;
        let Some(reply) = reply else {
            return Ok(());
        };
        let Ok(ControlMessage::Challenge(challenge)) = ControlMessage::parse(&reply) else {
            return Ok(());
        };
        if !answer_challenge || challenge.echoed_timestamp != timestamp {
            return Ok(());
        }
        let timestamp = self.next_timestamp(c);
        self.datagram(worker, src, seal(timestamp, challenge.cookie))
            .map(|_| ())
    }

    fn remember_seen(&mut self, bytes: &[u8]) {
        if self.seen.len() == SEEN_KEPT {
            self.seen.pop_front();
        }
        self.seen.push_back(bytes.to_vec());
    }

    fn drop_counts(&self) -> Vec<u64> {
        let metrics = self.workers[0].metrics();
        DropReason::ALL
            .iter()
            .map(|&reason| metrics.dropped(reason))
            .collect()
    }

    /// One datagram through the router, every per-datagram invariant checked.
    /// Returns the reply, if the router answered.
    fn datagram(
        &mut self,
        worker: usize,
        src: SocketAddr,
        sent: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, Violation> {
        let before = self.drop_counts();
        let mut buf = sent.clone();
        let verdict = self.workers[worker].handle(self.now, src, &mut buf);
        if self.trace {
            eprintln!(
                "  {} bytes {:?} from {src} -> {verdict:?}",
                sent.len(),
                describe(&sent)
            );
        }
        self.remember_seen(&sent);
        self.stats.datagrams += 1;
        // A reply to a transport message is a hint (a counted no_route);
        // one to an initiation is a cookie reply under load (a counted
        // mac2_invalid: the initiation was not forwarded).
        let replied_drop = match (WgMessage::parse(&sent), verdict) {
            (Ok(WgMessage::Transport(_)), Verdict::Reply(_)) => Some(DropReason::NoRoute),
            (Ok(WgMessage::Initiation(_)), Verdict::Reply(_)) => Some(DropReason::Mac2Invalid),
            _ => None,
        };
        self.check_counted(verdict, replied_drop, &before)?;
        self.observe_verdict(&sent, verdict, &buf);
        match verdict {
            Verdict::Forward(dst) => {
                self.check_forward(src, dst, &sent, &buf)?;
                self.remember_seen(&buf);
                self.stats.forwards += 1;
                let (Some(from), Some(to)) = (self.model.owner_of(src), self.model.owner_of(dst))
                else {
                    unreachable!("check_forward found both");
                };
                match WgMessage::parse(&sent) {
                    Ok(WgMessage::Initiation(h)) => {
                        keep_recent(&mut self.initiations, (from, to, h.sender_index()));
                    }
                    Ok(WgMessage::Response(h)) => {
                        self.stats.forwarded_responses += 1;
                        let session = (to, h.receiver_index(), from, h.sender_index());
                        keep_recent(&mut self.sessions, session);
                    }
                    Ok(WgMessage::Transport(_)) => self.stats.forwarded_transport += 1,
                    _ => {}
                }
                Ok(None)
            }
            Verdict::Reply(len) => {
                if len > sent.len() {
                    return self.fail(format!(
                        "reply of {len} bytes to a {}-byte datagram from {src}",
                        sent.len()
                    ));
                }
                let reply = buf[..len].to_vec();
                if self.trace {
                    eprintln!("  reply {:?}", describe(&reply));
                }
                self.check_reply(src, &sent, &reply)?;
                self.remember_seen(&reply);
                Ok(Some(reply))
            }
            Verdict::Drop(DropReason::ReplyLargerThanRequest) => self.fail(format!(
                "a reply larger than the request from {src} was built"
            )),
            Verdict::Drop(_) | Verdict::Consumed => Ok(None),
        }
    }

    fn observe_verdict(&mut self, sent: &[u8], verdict: Verdict, out: &[u8]) {
        let class = match verdict {
            Verdict::Forward(_) => match WgMessage::parse(sent) {
                Ok(WgMessage::Initiation(_)) => 0,
                Ok(WgMessage::Response(_)) => 1,
                Ok(WgMessage::CookieReply(_)) => 2,
                _ => 3,
            },
            Verdict::Reply(len) => match ControlMessage::parse(&out[..len.min(out.len())]) {
                Ok(ControlMessage::Challenge(_)) => 4,
                Ok(ControlMessage::RegisterAck(_)) => 5,
                Ok(ControlMessage::UnknownSession(_)) => 6,
                Ok(ControlMessage::ProbeAck(ack)) if ack.unauthenticated().registered => 7,
                Ok(ControlMessage::ProbeAck(_)) => 8,
                _ => 9,
            },
            // No party service in the check: requests are dropped, never
            // consumed; the class exists for completeness.
            Verdict::Consumed => 9,
            Verdict::Drop(reason) => {
                let i = DropReason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(0);
                10 + (i as u16 % (VERDICT_CLASSES - 10))
            }
        };
        self.features
            .push(ACTION_VERDICT_AT + self.action * VERDICT_CLASSES + class);
        self.features
            .push(VERDICT_PAIR_AT + self.last_class * VERDICT_CLASSES + class);
        self.last_class = class;
    }

    fn observe_tables(&mut self) {
        let router = &self.workers[0];
        let registrations = router.registration_count().min(6) as u16;
        let routes = router.route_count().min(16) as u16;
        let pending = router.pending_count().min(8) as u16;
        self.features
            .push(TABLES_AT + (registrations * 17 + routes) * 9 + pending);
        let transport = self.stats.forwarded_transport.min(7) as u16;
        let responses = self.stats.forwarded_responses.min(7) as u16;
        self.features.push(DEPTH_AT + transport * 8 + responses);
    }

    /// (e): a drop is counted once under its reason; a hint counts
    /// `no_route`, a cookie reply under load `mac2_invalid`; nothing else
    /// counts a drop.
    fn check_counted(
        &self,
        verdict: Verdict,
        replied_drop: Option<DropReason>,
        before: &[u64],
    ) -> Result<(), Violation> {
        let after = self.drop_counts();
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let expected = match verdict {
                Verdict::Drop(r) if r == *reason => 1,
                Verdict::Reply(_) if replied_drop == Some(*reason) => 1,
                _ => 0,
            };
            let counted = after[i] - before[i];
            if counted != expected {
                return self.fail(format!(
                    "verdict {verdict:?} counted {counted} drops as {}, expected {expected}",
                    reason.as_str()
                ));
            }
        }
        Ok(())
    }

    /// (a).
    fn check_forward(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        sent: &[u8],
        out: &[u8],
    ) -> Result<(), Violation> {
        let Ok(message) = WgMessage::parse(sent) else {
            return self.fail(format!(
                "forwarded a non-WireGuard datagram from {src} to {dst}"
            ));
        };
        let Some(from) = self.model.owner_of(src) else {
            return self.fail(format!("forwarded from {src}, which no key is bound to"));
        };
        let Some(to) = self.model.owner_of(dst) else {
            return self.fail(format!(
                "forwarded to {dst}, which no key is bound to (from {src})"
            ));
        };
        if !self.model.mutual(&from, &to) {
            // A handshake answer's only way past consent is a pending entry
            // created while the two still consented.
            let bug = matches!(message, WgMessage::Response(_) | WgMessage::CookieReply(_))
                .then_some(KnownBug::PendingOutlivesConsent);
            return self.fail_with(bug, format!(
                "forwarded {} from {from} at {src} to {to} at {dst}, which are not mutually consenting",
                describe(sent)
            ));
        }
        let mac1_for = |key: &PeerKey, h: &lanrage_proto::wireguard::Handshake<'_>| {
            identity(key).is_some_and(|id| id.mac1.verifies(h))
        };
        match message {
            WgMessage::Initiation(h) | WgMessage::Response(h) if !mac1_for(&to, &h) => {
                return self.fail(format!(
                    "forwarded a handshake from {src} to {to} at {dst}, whose mac1 is not for {to}"
                ));
            }
            _ => {}
        }
        let unchanged = out == sent;
        let mac2_zeroed = matches!(message, WgMessage::Initiation(_))
            && out[..INITIATION_LEN - MAC_LEN] == sent[..INITIATION_LEN - MAC_LEN]
            && out[INITIATION_LEN - MAC_LEN..] == [0; MAC_LEN];
        if !unchanged && !mac2_zeroed {
            return self.fail(format!("forwarded {} from {src} changed", describe(sent)));
        }
        Ok(())
    }

    /// (b), and the ack's effect on the model.
    fn check_reply(&mut self, src: SocketAddr, sent: &[u8], reply: &[u8]) -> Result<(), Violation> {
        let proven = self.model.proven.contains(&src);
        let answer = ControlMessage::parse(reply);
        let unproven_ok = match (&answer, WgMessage::parse(reply)) {
            (Ok(ControlMessage::Challenge(_) | ControlMessage::UnknownSession(_)), _) => true,
            (Ok(ControlMessage::ProbeAck(ack)), _) => !ack.unauthenticated().registered,
            // Checked below: only with a cookie sent to this address.
            (Ok(ControlMessage::RegisterAck(_)), _) => true,
            _ => false,
        };
        if !proven && !unproven_ok {
            return self.fail(format!(
                "replied {} to {src}, which never showed it receives there",
                describe(reply)
            ));
        }
        if let Ok(request) = WgMessage::parse(sent) {
            return self.check_wireguard_reply(src, request, reply);
        }
        let Ok(request) = ControlMessage::parse(sent) else {
            return self.fail(format!(
                "replied {} to an unparsable datagram",
                describe(reply)
            ));
        };
        match (request, answer) {
            (ControlMessage::Register(view), Ok(ControlMessage::Challenge(challenge))) => {
                let key = view.client();
                if reply.len() != CHALLENGE_LEN || challenge.echoed_timestamp != view.timestamp() {
                    return self
                        .fail("a challenge that does not echo the registration's timestamp");
                }
                if self.model.bound_at(&key, src) {
                    return self.fail(format!(
                        "challenged a refresh of {key} from its bound address {src}"
                    ));
                }
                self.stats.challenges += 1;
                let cookies = self.model.cookies.entry((src, key)).or_default();
                if !cookies.contains(&challenge.cookie) {
                    cookies.push(challenge.cookie);
                }
                Ok(())
            }
            (ControlMessage::Register(view), Ok(ControlMessage::RegisterAck(ack))) => {
                let key = view.client();
                let Some(id) = identity(&key) else {
                    return self.fail(format!(
                        "acked a registration of {key}, whose secret no client holds"
                    ));
                };
                let Ok(ack) = ack.verify(&id.keys) else {
                    return self.fail(format!("an ack for {key} that its keys don't verify"));
                };
                let Ok(registration) = view.verify(&id.keys) else {
                    return self.fail(format!("acked a registration of {key} whose MAC is wrong"));
                };
                if ack.echoed_timestamp != registration.timestamp
                    || ack.reflexive != src
                    || ack.relay_epoch != EPOCH
                {
                    return self.fail(format!(
                        "ack {ack:?} does not match the registration from {src}"
                    ));
                }
                self.stats.acks += 1;
                self.accept(src, registration)
            }
            (ControlMessage::Probe(view), Ok(ControlMessage::ProbeAck(ack))) => {
                let key = view.client();
                let bound = self.model.bound_at(&key, src);
                let flags = ack.unauthenticated();
                if reply.len() != PROBE_ACK_LEN
                    || flags.echoed_timestamp != view.timestamp()
                    || flags.relay_epoch != EPOCH
                {
                    return self.fail("a probe ack that does not echo the probe");
                }
                if flags.registered != bound {
                    return self.fail(format!(
                        "probe ack says registered={} for {key} at {src}; the model says {bound}",
                        flags.registered
                    ));
                }
                if bound {
                    let id = identity(&key).expect("only clients get bound");
                    if view.verify(&id.keys).is_err() || ack.verify(&id.keys).is_err() {
                        return self
                            .fail("an authenticated probe ack for a probe whose MAC is wrong");
                    }
                } else if reply[PROBE_ACK_LEN - MAC_LEN..] != [0; MAC_LEN] {
                    return self.fail("an unauthenticated probe ack with a MAC");
                }
                Ok(())
            }
            (_, answer) => self.fail(format!("replied {answer:?} to {}", describe(sent))),
        }
    }

    fn check_wireguard_reply(
        &mut self,
        src: SocketAddr,
        request: WgMessage<'_>,
        reply: &[u8],
    ) -> Result<(), Violation> {
        let owner = self.model.owner_of(src);
        match (
            request,
            ControlMessage::parse(reply),
            WgMessage::parse(reply),
        ) {
            (WgMessage::Transport(t), Ok(ControlMessage::UnknownSession(hint)), _) => {
                if reply.len() != UNKNOWN_SESSION_LEN
                    || hint.receiver_index != t.receiver_index()
                    || hint.relay_epoch != EPOCH
                    || hint.registered != owner.is_some()
                {
                    return self.fail(format!(
                        "hint {hint:?} to {src} does not match (owner {owner:?})"
                    ));
                }
                Ok(())
            }
            (WgMessage::Initiation(h), _, Ok(WgMessage::CookieReply(c))) => {
                let Some(initiator) = owner else {
                    return self.fail(format!("a cookie reply to {src}, which no key is bound to"));
                };
                if c.receiver_index() != h.sender_index() {
                    return self.fail("a cookie reply for another sender index");
                }
                // Sealed for a mutually consenting responder the mac1 is for,
                // as that responder would have.
                let opened = identities().iter().find_map(|id| {
                    (self.model.mutual(&initiator, &id.key) && id.mac1.verifies(&h))
                        .then(|| mac::open_cookie_reply(&id.cookie, &c, h.mac1()))
                        .flatten()
                });
                let Some(cookie) = opened else {
                    return self.fail(format!(
                        "a cookie reply to {initiator} at {src} that no consenting responder's key opens"
                    ));
                };
                self.stats.cookie_replies += 1;
                self.wg_cookies.insert(src, cookie);
                Ok(())
            }
            _ => self.fail(format!(
                "replied {} to {}",
                describe(reply),
                describe(request.bytes())
            )),
        }
    }

    /// An acked registration: checks what the relay may not accept (d, and
    /// return-routability), then applies it to the model as the relay does.
    fn accept(&mut self, src: SocketAddr, registration: Registration) -> Result<(), Violation> {
        let key = registration.client;
        let refresh = self.model.bound_at(&key, src);
        if !refresh {
            let sent_here = self
                .model
                .cookies
                .get(&(src, key))
                .is_some_and(|c| c.contains(&registration.cookie));
            if !sent_here {
                return self.fail(format!(
                    "bound {key} to {src} with a cookie the relay never sent there for it"
                ));
            }
        }
        if let Some(binding) = self.model.bound.get(&key) {
            if registration.timestamp <= binding.timestamp {
                return self.fail(format!(
                    "accepted timestamp {} for {key}, not above its last {}",
                    registration.timestamp, binding.timestamp
                ));
            }
        } else {
            if let Some(&(last, at, seq)) = self.model.removed.get(&key) {
                // The replay memory holds max_registrations keys for at least
                // two cookie periods: it may have forgotten the key only after
                // that long or that many later removals.
                let keep_for = self.config.registration_timeout.max(2 * COOKIE_PERIOD);
                let later_removals = self.model.removals - seq - 1;
                let must_remember = self.now.saturating_duration_since(at) < keep_for
                    && later_removals < self.config.max_registrations as u64;
                if must_remember && registration.timestamp <= last {
                    return self.fail(format!(
                        "accepted timestamp {} for {key}, removed {:?} ago with timestamp {last}",
                        registration.timestamp,
                        self.now.saturating_duration_since(at)
                    ));
                }
            }
            if self.model.bound.len() >= self.config.max_registrations {
                return self.fail(format!(
                    "registered {key} beyond max_registrations {}",
                    self.config.max_registrations
                ));
            }
        }
        if let Some(previous) = self.model.owner_of(src).filter(|owner| *owner != key) {
            self.model.remove(&[previous], self.now);
        }
        let mut consent = registration.consent;
        consent.sort_unstable();
        consent.dedup();
        self.model.removed.remove(&key);
        self.model.bound.insert(
            key,
            Binding {
                endpoint: src,
                consent,
                refreshed: self.now,
                timestamp: registration.timestamp,
            },
        );
        self.model.proven.insert(src);
        Ok(())
    }

    /// `handle_timeout`, and the expiry it does if its sweep is due.
    fn sweep(&mut self, worker: usize) {
        let due = self.workers[worker]
            .poll_timeout()
            .is_some_and(|at| at <= self.now);
        self.workers[worker].handle_timeout(self.now);
        if self.trace {
            eprintln!("  handle_timeout at +{:?}: sweep {due}", self.elapsed());
        }
        if !due {
            return;
        }
        self.stats.sweeps += 1;
        let timeout = self.config.registration_timeout;
        let expired: Vec<PeerKey> = self
            .model
            .bound
            .iter()
            .filter(|(_, b)| self.now.saturating_duration_since(b.refreshed) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        self.model.remove(&expired, self.now);
    }

    fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.start)
    }

    /// (c), and the registration table against the model.
    fn check_tables(&self) -> Result<(), Violation> {
        let router = &self.workers[0];
        let config = &self.config;
        let registrations = router.registration_count();
        if registrations != self.model.bound.len() {
            return self.fail(format!(
                "{registrations} registrations, the model has {}",
                self.model.bound.len()
            ));
        }
        if registrations > config.max_registrations {
            return self.fail(format!(
                "{registrations} registrations over max_registrations {}",
                config.max_registrations
            ));
        }
        for id in identities() {
            let expected = self.model.bound.get(&id.key).map(|b| b.endpoint);
            let actual = router.endpoint_of(&id.key);
            if actual != expected {
                return self.fail(format!(
                    "{} is bound to {actual:?}, the model says {expected:?}",
                    id.key
                ));
            }
        }
        let routes = router.route_count();
        if routes > config.max_routes {
            return self.fail(format!(
                "{routes} routes over max_routes {}",
                config.max_routes
            ));
        }
        let pending = router.pending_count();
        if pending > config.max_pending_handshakes {
            return self.fail(format!(
                "{pending} pending handshakes over max_pending_handshakes {}",
                config.max_pending_handshakes
            ));
        }
        let mut listed = 0;
        for a in identities() {
            for b in identities() {
                let ab = router.routes_between(&a.key, &b.key);
                listed += ab;
                // Pairing first: an unpaired route is how the per-pair cap
                // is outgrown (KnownBug::ReusedIndexOrphansRoute).
                let ba = router.routes_between(&b.key, &a.key);
                if ab != ba {
                    return self.fail_with(
                        Some(KnownBug::ReusedIndexOrphansRoute),
                        format!(
                            "{ab} routes from {} to {}, but {ba} back: a route without its reverse",
                            a.key, b.key
                        ),
                    );
                }
                if ab > MAX_SESSIONS_PER_PEER {
                    return self.fail(format!(
                        "{ab} sessions from {} to {}, over MAX_SESSIONS_PER_PEER {MAX_SESSIONS_PER_PEER}",
                        a.key, b.key
                    ));
                }
            }
        }
        if listed != routes {
            return self.fail_with(
                Some(KnownBug::ReusedIndexOrphansRoute),
                format!("{routes} routes in the table, {listed} held by registered keys"),
            );
        }
        Ok(())
    }
}

/// The `which`-th most recent entry.
fn recent<T>(list: &VecDeque<T>, which: u8) -> Option<&T> {
    let back = usize::from(which) % list.len().max(1);
    list.len().checked_sub(1 + back).and_then(|i| list.get(i))
}

fn keep_recent<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == 8 {
        list.pop_front();
    }
    list.push_back(item);
}

/// A response with mac1 for `initiator` (mac2 zero: the relay never needs
/// one on a response).
fn response(sender: u32, receiver: u32, initiator: &PeerKey, fill: u8) -> Vec<u8> {
    let mut wire = vec![fill; RESPONSE_LEN];
    wire[..4].copy_from_slice(&[2, 0, 0, 0]);
    wire[4..8].copy_from_slice(&sender.to_le_bytes());
    wire[8..12].copy_from_slice(&receiver.to_le_bytes());
    let mac1_at = RESPONSE_LEN - 2 * MAC_LEN;
    let mac1 = Mac1Key::for_responder(initiator.as_bytes()).compute(&wire[..mac1_at]);
    wire[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
    wire[RESPONSE_LEN - MAC_LEN..].fill(0);
    wire
}

fn transport(receiver: u32, extra_len: u8, fill: u8) -> Vec<u8> {
    let mut wire = vec![fill; 32 + usize::from(extra_len % 64)];
    wire[..4].copy_from_slice(&[4, 0, 0, 0]);
    wire[4..8].copy_from_slice(&receiver.to_le_bytes());
    wire
}

/// A short name for a datagram, for messages.
fn describe(bytes: &[u8]) -> String {
    match (
        classify(bytes),
        WgMessage::parse(bytes),
        ControlMessage::parse(bytes),
    ) {
        (DatagramKind::WireGuard, Ok(m), _) => match m {
            WgMessage::Initiation(h) => format!("initiation(sender {})", h.sender_index()),
            WgMessage::Response(h) => format!(
                "response(sender {}, receiver {})",
                h.sender_index(),
                h.receiver_index()
            ),
            WgMessage::CookieReply(c) => format!("cookie-reply(receiver {})", c.receiver_index()),
            WgMessage::Transport(t) => format!("transport(receiver {})", t.receiver_index()),
        },
        (_, _, Ok(ControlMessage::Register(v))) => {
            format!("register({}, ts {})", v.client(), v.timestamp())
        }
        (_, _, Ok(ControlMessage::RegisterAck(_))) => "register-ack".to_owned(),
        (_, _, Ok(ControlMessage::UnknownSession(h))) => format!("{h:?}"),
        (_, _, Ok(ControlMessage::Challenge(c))) => format!("challenge(ts {})", c.echoed_timestamp),
        (_, _, Ok(ControlMessage::Probe(p))) => format!("probe({})", p.client()),
        (_, _, Ok(ControlMessage::ProbeAck(a))) => format!("{:?}", a.unauthenticated()),
        (kind, _, _) => format!("{kind:?}({} bytes)", bytes.len()),
    }
}
