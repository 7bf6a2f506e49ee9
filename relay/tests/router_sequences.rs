//! The `router_sequences` fuzz target's check, on stable: random inputs with
//! fixed seeds, every input committed under `relay/fuzz/regressions/`, and
//! named scenarios. The check itself (the model and the invariants) is
//! `relay/fuzz/checks/router_sequences.rs`, shared with the cargo-fuzz target.
//!
//! `LANRAGE_FUZZ_CASES` sets the number of random inputs (default 300), and
//! `LANRAGE_FUZZ_SEED` runs only that one; `LANRAGE_FUZZ_INPUTS=DIR` replays
//! the files in DIR (relative to the repository root) instead of the committed
//! ones; `LANRAGE_FUZZ_TRACE=1` prints every step of a failing input, and
//! `LANRAGE_FUZZ_TRACE=all` of every input.

#[path = "../fuzz/checks/router_sequences.rs"]
mod router_sequences;

use std::path::PathBuf;

use lanrage_test_support::fuzz_replay::{committed_inputs, env_number, SplitMix64};
use router_sequences::{
    Action, CookieChoice, Input, Limits, MacChoice, Place, Source, Stats, Step, TimestampChoice,
};

type Outcome = Result<Stats, router_sequences::Violation>;

/// Seeds 0..`LANRAGE_FUZZ_CASES` (default 300), or only `LANRAGE_FUZZ_SEED`.
fn seeds() -> std::ops::Range<u64> {
    match env_number("LANRAGE_FUZZ_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..env_number("LANRAGE_FUZZ_CASES").unwrap_or(300),
    }
}

/// SplitMix64: a fixed, dependency-free stream of bytes per seed.
fn random_bytes(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed, 0x5EED);
    let len = (rng.next_u64() % 1024) as usize;
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Runs an input; on a violation, runs it again with a trace if asked, and
/// panics with `name` and the violation. Symptoms of the bugs in
/// `router_sequences::UNFIXED` stop the run without failing it (the named
/// regression tests below use [`check_strictly`]).
fn check(name: &str, input: &Input) -> Stats {
    check_with(name, input, router_sequences::tolerating_known_bugs)
}

/// [`check`], failing on known bugs too.
fn check_strictly(name: &str, input: &Input) -> Stats {
    check_with(name, input, |result| result)
}

fn check_with(name: &str, input: &Input, judge: fn(Outcome) -> Outcome) -> Stats {
    let trace_all = std::env::var_os("LANRAGE_FUZZ_TRACE").is_some_and(|v| v == "all");
    let result = if trace_all {
        router_sequences::trace(input)
    } else {
        router_sequences::run(input)
    };
    match judge(result) {
        Ok(stats) => stats,
        Err(violation) => {
            if std::env::var_os("LANRAGE_FUZZ_TRACE").is_some() {
                let _ = router_sequences::trace(input);
            }
            panic!("{name}: {violation}\ninput: {input:#?}");
        }
    }
}

#[test]
fn random_inputs_keep_the_invariants() {
    let mut total = Stats::default();
    for seed in seeds() {
        let input = router_sequences::decode(&random_bytes(seed)).expect("any bytes decode");
        total += check(&format!("random input {seed}"), &input);
    }
    println!("random inputs: {total:?}");
    // Not vacuous: random inputs register clients and route sessions.
    assert!(total.acks > 0 && total.challenges > 0, "{total:?}");
}

/// `relay/fuzz/regressions/router_sequences`, or `LANRAGE_FUZZ_INPUTS` (a
/// directory) to replay a local corpus or a fuzzer's crash files instead.
fn regressions_dir() -> PathBuf {
    let relay = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("LANRAGE_FUZZ_INPUTS") {
        // Tests run in relay/; a relative path means the repository root's.
        Some(dir) => relay.join("..").join(dir),
        None => relay.join("fuzz/regressions/router_sequences"),
    }
}

/// Every committed input: crashes the fuzzer found (once fixed) and a
/// minimized corpus that reaches deep states random bytes rarely do.
#[test]
fn committed_inputs_keep_the_invariants() {
    let files = committed_inputs(&regressions_dir());
    let mut total = Stats::default();
    for (file, bytes) in &files {
        // Bytes that decode to no input are skipped by the fuzz target too.
        if let Some(input) = router_sequences::decode(bytes) {
            total += check(&file.display().to_string(), &input);
        }
    }
    println!("{} committed inputs: {total:?}", files.len());
    assert!(total.forwarded_transport > 0, "{total:?}");
}

/// Raw bytes re-encode to bytes that decode to the same input: the encoder
/// that turns the scenarios below into seed files is the decoder's inverse.
#[test]
fn inputs_re_encode_to_themselves() {
    for seed in 0..200 {
        let input = router_sequences::decode(&random_bytes(seed)).expect("any bytes decode");
        let bytes = input.encode();
        let again = router_sequences::decode(&bytes).expect("encoded bytes decode");
        assert_eq!(again.encode(), bytes, "seed {seed}");
        assert_eq!(
            router_sequences::run(&again),
            router_sequences::run(&input),
            "seed {seed}"
        );
    }
}

/// What the fuzz target feeds libFuzzer as extra counters stays in range.
#[test]
fn reported_states_fit_the_fuzz_targets_counters() {
    let mut features = Vec::new();
    for seed in 0..100 {
        let input = router_sequences::decode(&random_bytes(seed)).expect("any bytes decode");
        let _ = router_sequences::run_observed(&input, &mut features);
    }
    for (_, scenario) in SCENARIOS {
        let _ = router_sequences::run_observed(&scenario(), &mut features);
    }
    assert!(!features.is_empty());
    assert!(features
        .iter()
        .all(|&f| usize::from(f) < router_sequences::FEATURES));
}

// ---- named scenarios ----------------------------------------------------------
//
// Each is also a committed seed input (`seed-<name>` under
// relay/fuzz/regressions/router_sequences/), so the fuzzer starts from
// states random bytes rarely reach: sessions carrying traffic, roaming,
// takeovers, tables at their limits.

fn limits() -> Limits {
    Limits {
        max_registrations: 5,
        max_routes: 15,
        max_pending: 7,
        max_sources: 7,
        handshake_per_second: 7,
        handshake_burst: 31,
        hint_burst: 3,
        under_load: 7,
    }
}

/// An initiation's `responder` for client 1's key, whatever the consent
/// lists (bit 7 set: by client number).
const TO_CLIENT_1: u8 = 0x80 | 1;
/// A consent byte for every client.
const EVERYONE: u8 = 0xE0;

fn step(action: Action) -> Step {
    Step {
        second_worker: false,
        action,
    }
}

fn register(client: u8, consent: u8) -> Step {
    step(Action::Register {
        client,
        at: Place::Own,
        consent,
    })
}

/// Clients 0 and 1 registering from their home addresses with `consent`
/// (0b11: to each other).
fn register_both(consent: u8) -> Vec<Step> {
    vec![register(0, consent), register(1, consent)]
}

/// Client `from` initiates to client `peer` with sender index `index`; the
/// peer answers with `index`; one transport each way.
fn handshake(from: u8, peer: u8, index: u8) -> Vec<Step> {
    vec![
        step(Action::Initiation {
            from: Source::Client(from),
            responder: 0x80 | peer,
            sender: index,
            mac2: false,
            fill: 0xAA,
        }),
        step(Action::Answer {
            which: 0,
            sender: index,
            fill: 0xBB,
        }),
        step(Action::Traffic {
            which: 0,
            backwards: false,
            extra_len: 8,
        }),
        step(Action::Traffic {
            which: 0,
            backwards: true,
            extra_len: 0,
        }),
    ]
}

fn advance(millis: u32, sweep: bool) -> Step {
    step(Action::Advance { millis, sweep })
}

/// `millis` modulo 200 s (top bits 10), see `Action::Advance`.
const LONG: u32 = 0x8000_0000;

/// Registration with a challenge, a handshake, transport, roaming, an old
/// and a forged registration, consent withdrawal, expiry.
fn session_lifecycle() -> Input {
    let mut steps = register_both(0b11);
    steps.extend([
        step(Action::Initiation {
            from: Source::Client(0),
            responder: TO_CLIENT_1,
            sender: 1,
            mac2: false,
            fill: 0xAA,
        }),
        step(Action::Response {
            from: Source::Client(1),
            initiator: 0,
            sender: 2,
            receiver: 1,
            fill: 0xBB,
        }),
        step(Action::Transport {
            from: Source::Client(0),
            receiver: 2,
            extra_len: 10,
            counter: 1,
        }),
        step(Action::Transport {
            from: Source::Client(1),
            receiver: 1,
            extra_len: 0,
            counter: 1,
        }),
        // Client 0 roams to address 3; transport follows it.
        step(Action::Register {
            client: 0,
            at: Place::Address(3),
            consent: 0b11,
        }),
        step(Action::Transport {
            from: Source::Client(1),
            receiver: 1,
            extra_len: 0,
            counter: 2,
        }),
        // An old registration and a forged one change nothing.
        step(Action::RegisterOddly {
            claimant: 0,
            at: Source::Address(0),
            consent: 0b11,
            cookie: CookieChoice::Oldest,
            timestamp: TimestampChoice::Back(3),
            mac: MacChoice::Right,
            answer_challenge: false,
        }),
        step(Action::RegisterOddly {
            claimant: 1,
            at: Source::Address(4),
            consent: 0b11,
            cookie: CookieChoice::OfClient(0),
            timestamp: TimestampChoice::Next,
            mac: MacChoice::OtherClient(0),
            answer_challenge: true,
        }),
        // Client 1 withdraws consent: the session goes.
        register(1, 0b10),
        step(Action::Transport {
            from: Source::Client(0),
            receiver: 2,
            extra_len: 0,
            counter: 3,
        }),
        // Both expire.
        advance(LONG | 100_000, true),
    ]);
    Input {
        limits: limits(),
        steps,
    }
}

/// Under load (threshold 0), the relay answers an initiation with a cookie
/// reply the initiator opens; mac2 made with that cookie gets through.
fn cookies_under_load() -> Input {
    let mut steps = register_both(0b11);
    let initiation = |mac2| {
        step(Action::Initiation {
            from: Source::Client(0),
            responder: TO_CLIENT_1,
            sender: 1,
            mac2,
            fill: 0xAA,
        })
    };
    steps.extend([initiation(false), initiation(true)]);
    Input {
        limits: Limits {
            under_load: 0,
            ..limits()
        },
        steps,
    }
}

/// Five clients who all consent to each other: sessions between several
/// pairs, on both workers, a roam, a takeover, refreshes and time passing.
fn full_party() -> Input {
    let mut steps: Vec<Step> = (0..5).map(|c| register(c, EVERYONE)).collect();
    steps.extend(handshake(0, 1, 1));
    steps.extend(handshake(2, 3, 2));
    steps.extend(handshake(4, 0, 3));
    steps.push(step(Action::Register {
        client: 2,
        at: Place::Address(6),
        consent: EVERYONE,
    }));
    steps.push(step(Action::Traffic {
        which: 1,
        backwards: true,
        extra_len: 1,
    }));
    steps.push(advance(0x4000_0000 | 20_000, true));
    steps.extend((0..5).map(|c| register(c, EVERYONE)));
    // Client 4 takes over client 3's address: 3 and its sessions go.
    steps.push(step(Action::Register {
        client: 4,
        at: Place::Address(3),
        consent: EVERYONE,
    }));
    steps.extend(handshake(1, 2, 4));
    for step in steps.iter_mut().skip(1).step_by(2) {
        step.second_worker = true;
    }
    Input {
        limits: Limits {
            max_routes: 15,
            ..limits()
        },
        steps,
    }
}

/// Six sessions between one pair: the fifth and sixth replace the oldest
/// (MAX_SESSIONS_PER_PEER is 4).
fn sessions_per_pair() -> Input {
    let mut steps = register_both(0b11);
    for index in 0..6 {
        steps.extend(handshake(0, 1, index));
    }
    Input {
        limits: limits(),
        steps,
    }
}

/// Two registrations, four route entries, one pending handshake: the third
/// client, the third session and the second pending initiation are refused.
fn tables_at_their_limits() -> Input {
    let mut steps: Vec<Step> = (0..3).map(|c| register(c, EVERYONE)).collect();
    steps.extend(handshake(0, 1, 1));
    steps.extend(handshake(1, 0, 2));
    steps.extend(handshake(0, 1, 3));
    steps.extend([
        step(Action::Initiation {
            from: Source::Client(0),
            responder: TO_CLIENT_1,
            sender: 5,
            mac2: false,
            fill: 1,
        }),
        step(Action::Initiation {
            from: Source::Client(1),
            responder: 0x80,
            sender: 6,
            mac2: false,
            fill: 2,
        }),
    ]);
    Input {
        limits: Limits {
            max_registrations: 1,
            max_routes: 3,
            max_pending: 0,
            ..limits()
        },
        steps,
    }
}

type Scenario = (&'static str, fn() -> Input);

/// The scenarios that are also committed seed inputs.
const SCENARIOS: [Scenario; 5] = [
    ("session-lifecycle", session_lifecycle),
    ("cookies-under-load", cookies_under_load),
    ("full-party", full_party),
    ("sessions-per-pair", sessions_per_pair),
    ("tables-at-their-limits", tables_at_their_limits),
];

#[test]
fn a_session_through_its_life_keeps_the_invariants() {
    let stats = check_strictly("session-lifecycle", &session_lifecycle());
    assert_eq!(stats.forwarded_responses, 1, "{stats:?}");
    assert_eq!(stats.forwarded_transport, 3, "{stats:?}");
    assert!(stats.challenges >= 3 && stats.sweeps == 1, "{stats:?}");
}

#[test]
fn cookies_under_load_keep_the_invariants() {
    let stats = check_strictly("cookies-under-load", &cookies_under_load());
    assert_eq!(stats.cookie_replies, 1, "{stats:?}");
    assert_eq!(stats.forwards, 1, "{stats:?}");
}

#[test]
fn a_full_party_keeps_the_invariants() {
    let stats = check_strictly("full-party", &full_party());
    assert_eq!(stats.forwarded_responses, 4, "{stats:?}");
    assert!(stats.forwarded_transport >= 8, "{stats:?}");
}

#[test]
fn sessions_past_the_per_pair_cap_keep_the_invariants() {
    let stats = check_strictly("sessions-per-pair", &sessions_per_pair());
    assert_eq!(stats.forwarded_responses, 6, "{stats:?}");
    assert_eq!(stats.forwarded_transport, 12, "{stats:?}");
}

#[test]
fn tables_at_their_limits_keep_the_invariants() {
    let stats = check_strictly("tables-at-their-limits", &tables_at_their_limits());
    assert_eq!(stats.acks, 2, "{stats:?}");
    assert!(stats.forwarded_responses >= 2, "{stats:?}");
}

/// The committed seed files are the scenarios' current encodings. After
/// changing a scenario or the encoding, rewrite them with
/// `LANRAGE_FUZZ_WRITE_SEEDS=1 cargo test -p lanrage-relay --test router_sequences seed_files`.
#[test]
fn seed_files_are_the_scenarios() {
    let write = std::env::var_os("LANRAGE_FUZZ_WRITE_SEEDS").is_some();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/router_sequences");
    for (name, scenario) in SCENARIOS {
        let path = dir.join(format!("seed-{name}"));
        let bytes = scenario().encode();
        if write {
            std::fs::create_dir_all(&dir).expect("create the regressions directory");
            std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == bytes,
            "{} is not the scenario's encoding; rewrite with LANRAGE_FUZZ_WRITE_SEEDS=1",
            path.display()
        );
    }
}

// ---- regressions ----------------------------------------------------------------

/// Found by `router_sequences` (random input 43 of the stable test).
///
/// A and B consent to each other; A's initiation to B is forwarded and
/// pending. Then one of them re-registers without the other in its consent
/// list, and B answers the pending initiation. The relay must not route
/// that session: docs/protocol.md §2.4 step 7 and §3.6 ("withdrawing consent
/// removes its sessions"). It does: `apply_registration` drops only
/// installed routes (`drop_unconsented_routes`), not pending initiations, and
/// `route_response` installs the pair from the pending entry without checking
/// consent again; transport then flows between the two. A cookie reply
/// from the responder is forwarded the same way (`route_cookie_reply`).
/// Symptom: `KnownBug::PendingOutlivesConsent`; remove it from
/// `router_sequences::UNFIXED` with the fix.
#[test]
fn a_handshake_pending_when_consent_is_withdrawn_is_not_routed() {
    // Who withdraws: 0 (the initiator) keeps only itself, or 1 (the responder).
    for (withdrawing, consent) in [(0u8, 0b01u8), (1, 0b10)] {
        let mut steps = register_both(0b11);
        steps.extend([
            step(Action::Initiation {
                from: Source::Client(0),
                responder: TO_CLIENT_1,
                sender: 1,
                mac2: false,
                fill: 0xAA,
            }),
            step(Action::Register {
                client: withdrawing,
                at: Place::Own,
                consent,
            }),
            step(Action::Answer {
                which: 0,
                sender: 2,
                fill: 0xBB,
            }),
            step(Action::Transport {
                from: Source::Client(0),
                receiver: 2,
                extra_len: 0,
                counter: 1,
            }),
        ]);
        check_strictly(
            &format!("client {withdrawing} withdraws consent"),
            &Input {
                limits: limits(),
                steps,
            },
        );
    }
}

/// Found by `router_sequences` (random input 1389 of the stable test, once
/// the bug above is patched out locally).
///
/// B answers A's handshakes reusing one sender index (WireGuard picks a fresh
/// random one; a registered, consented peer need not). `route_response`
/// accepts a route key that already exists when it goes to the same peer, and
/// `RouteTable::insert` overwrites it: the old session's other half is left
/// behind, pointing at a reverse that no longer points back, and
/// `make_room_for_session` only runs when both keys are new. So each such
/// handshake adds one route that no session cap counts: a consented peer
/// grows the route table past `MAX_SESSIONS_PER_PEER` (after five such
/// handshakes B holds 5 routes to A, A 1 back; each one more adds one) until
/// `max_routes` refuses every client's new session. Symptom:
/// `KnownBug::ReusedIndexOrphansRoute`; remove it from
/// `router_sequences::UNFIXED` with the fix.
#[test]
fn a_reused_responder_index_does_not_grow_the_routes() {
    let mut steps = register_both(0b11);
    for initiator_index in 1..=6 {
        steps.extend([
            step(Action::Initiation {
                from: Source::Client(0),
                responder: TO_CLIENT_1,
                sender: initiator_index,
                mac2: false,
                fill: 0xAA,
            }),
            // The same sender index, 0, every time.
            step(Action::Answer {
                which: 0,
                sender: 0,
                fill: 0xBB,
            }),
        ]);
    }
    check_strictly(
        "reused responder index",
        &Input {
            limits: limits(),
            steps,
        },
    );
}
