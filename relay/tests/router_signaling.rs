//! Signals through the core's router (docs/protocol.md §2.10): forwarded
//! unchanged between registered, mutually consenting peers, and only
//! there; never answered, so never larger towards anyone; replays, forgeries
//! and floods are counted drops.

use std::time::{Duration, Instant};

use lanrage_proto::signal::{Signal, SignalKey};
use lanrage_relay_core::metrics::{DropReason, Event};
use lanrage_relay_core::router::{Router, Verdict};
use lanrage_test_support::router_peers::*;

/// A signal from `from` to `to`, sealed end to end and MACed for the relay.
fn signal(from: &Peer, to: &Peer, timestamp: u64) -> Vec<u8> {
    Signal {
        sender: from.key,
        recipient: to.key,
        timestamp,
        plaintext: b"latency vector".to_vec(),
    }
    .seal(
        &SignalKey::outgoing(&from.secret, &to.key).expect("key"),
        &from.keys,
    )
    .expect("seal")
}

/// What the router does with `bytes` from `from`'s endpoint.
fn verdict(router: &mut Router, now: Instant, from: &Peer, bytes: &[u8]) -> Verdict {
    send(router, now, from, bytes).0
}

fn send(router: &mut Router, now: Instant, from: &Peer, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = bytes.to_vec();
    let verdict = router.handle(now, from.endpoint, &mut buf);
    (verdict, buf)
}

#[test]
fn forwarded_unchanged_between_consenting_peers_and_opened_by_the_recipient() {
    let now = Instant::now();
    let mut router = router(now);
    let (a, b) = pair(&mut router, now);
    let wire = signal(&a, &b, 10);
    let (verdict, forwarded) = send(&mut router, now, &a, &wire);
    assert_eq!(verdict, Verdict::Forward(b.endpoint));
    assert_eq!(forwarded, wire, "byte for byte");
    let Ok(lanrage_proto::ControlMessage::Signal(view)) =
        lanrage_proto::ControlMessage::parse(&forwarded)
    else {
        panic!("not a signal");
    };
    let incoming = SignalKey::incoming(&b.secret, &a.key).expect("key");
    assert_eq!(view.open(&incoming).expect("opens"), b"latency vector");
    assert_eq!(router.metrics().event_count(Event::SignalForwarded), 1);
    // And back.
    let (verdict, _) = send(&mut router, now, &b, &signal(&b, &a, 11));
    assert_eq!(verdict, Verdict::Forward(a.endpoint));
}

#[test]
fn never_to_a_key_that_does_not_consent_or_is_not_registered() {
    let now = Instant::now();
    let mut router = router(now);
    let (mut a, b) = pair(&mut router, now);
    // C is registered but consents to nobody; A doesn't consent to C either.
    let mut c = Peer::new(3, "198.51.100.3:3000");
    register(&mut router, now, &mut c, &[]);
    let nobody = Peer::new(4, "198.51.100.4:4000");
    for (i, to) in [&c, &nobody].into_iter().enumerate() {
        let (verdict, _) = send(&mut router, now, &a, &signal(&a, to, 20 + i as u64));
        assert_eq!(verdict, Verdict::Drop(DropReason::SignalNotForwardable));
    }
    // C consents to A, but A still doesn't consent to C: not forwarded.
    register(&mut router, now, &mut c, &[&a.view()]);
    let (verdict, _) = send(&mut router, now, &c, &signal(&c, &a, 30));
    assert_eq!(verdict, Verdict::Drop(DropReason::SignalNotForwardable));
    // A withdraws consent for B: B's signals stop.
    register(&mut router, now, &mut a, &[]);
    let (verdict, _) = send(&mut router, now, &b, &signal(&b, &a, 40));
    assert_eq!(verdict, Verdict::Drop(DropReason::SignalNotForwardable));
    assert_eq!(router.metrics().event_count(Event::SignalForwarded), 0);
}

#[test]
fn replays_forgeries_and_strangers_are_dropped_and_never_answered() {
    let now = Instant::now();
    let mut router = router(now);
    let (a, b) = pair(&mut router, now);
    const S: u64 = 1_000_000_000; // a second of timestamp
    let wire = signal(&a, &b, 50 * S);
    assert_eq!(
        verdict(&mut router, now, &a, &wire),
        Verdict::Forward(b.endpoint)
    );
    // The same bytes again, and a timestamp far older than the newest:
    // replays.
    assert_eq!(
        verdict(&mut router, now, &a, &wire),
        Verdict::Drop(DropReason::SignalReplay)
    );
    assert_eq!(
        verdict(&mut router, now, &a, &signal(&a, &b, 47 * S)),
        Verdict::Drop(DropReason::SignalReplay)
    );
    // Slightly older but never seen (a jittery path reordered two signals
    // sent close together): forwarded, once.
    let reordered = signal(&a, &b, 50 * S - 5_000_000);
    assert_eq!(
        verdict(&mut router, now, &a, &reordered),
        Verdict::Forward(b.endpoint)
    );
    assert_eq!(
        verdict(&mut router, now, &a, &reordered),
        Verdict::Drop(DropReason::SignalReplay)
    );
    // A's signal from another address (spoofed, or A's old NAT mapping).
    let mut elsewhere = Peer::new(1, "192.0.2.66:6666");
    elsewhere.keys = a.keys.clone();
    assert_eq!(
        verdict(&mut router, now, &elsewhere, &signal(&a, &b, 60 * S)),
        Verdict::Drop(DropReason::Unregistered)
    );
    // B forges a signal in A's name from B's own address: not A's endpoint.
    let mut forged = signal(&a, &b, 61 * S);
    assert_eq!(
        verdict(&mut router, now, &b, &forged),
        Verdict::Drop(DropReason::Unregistered)
    );
    // From A's address but MACed with another key.
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        verdict(&mut router, now, &a, &forged),
        Verdict::Drop(DropReason::SignalBadMac)
    );
    // Never a reply: nothing goes back towards any source.
    assert_eq!(router.metrics().dropped(DropReason::SignalReplay), 3);
}

#[test]
fn a_flood_of_signals_spends_only_the_sender_s_budget() {
    let now = Instant::now();
    let mut router = router(now);
    let (a, b) = pair(&mut router, now);
    let mut forwarded = 0;
    for ts in 0..1000u64 {
        if send(&mut router, now, &a, &signal(&a, &b, 100 + ts)).0 == Verdict::Forward(b.endpoint) {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 40, "the burst, then the per-key limit");
    assert_eq!(router.metrics().dropped(DropReason::RateLimited), 960);
    // B's own signals are unaffected, and A's budget refills.
    assert_eq!(
        verdict(&mut router, now, &b, &signal(&b, &a, 5)),
        Verdict::Forward(a.endpoint)
    );
    let later = now + Duration::from_secs(1);
    assert_eq!(
        send(&mut router, later, &a, &signal(&a, &b, 2000)).0,
        Verdict::Forward(b.endpoint)
    );
}
