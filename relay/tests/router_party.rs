//! Party requests through the core's router (docs/protocol.md §2.12):
//! accepted only from a key registered at the source, with an id above
//! its last and a seal that opens, then handed to the party service's
//! queue and answered by it later (the worker sends nothing); everything
//! else is a counted drop. The service learns of every new binding, and
//! what it seals for a key opens at that key's client only.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use lanrage_proto::party::{seal_request, PartyBody, PartyOp, Status};
use lanrage_proto::ControlMessage;
use lanrage_relay_core::metrics::{DropReason, Event};
use lanrage_relay_core::router::{PartyInbound, Router, Verdict};
use lanrage_test_support::router_peers::*;

fn request(peer: &Peer, id: u64, op: &PartyOp) -> Vec<u8> {
    seal_request(&peer.keys, peer.key, id, op).expect("seals")
}

fn verdict(router: &mut Router, now: Instant, from: std::net::SocketAddr, bytes: &[u8]) -> Verdict {
    let mut buf = bytes.to_vec();
    router.handle(now, from, &mut buf)
}

#[test]
fn requests_reach_the_service_only_when_authentic_fresh_and_from_the_bound_endpoint() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1000");
    let sync = PartyOp::Sync;

    // No service attached: a counted drop, even when authentic.
    register(&mut router, now, &mut a, &[]);
    let first = a.timestamp + 1;
    assert_eq!(
        verdict(&mut router, now, a.endpoint, &request(&a, first, &sync)),
        Verdict::Drop(DropReason::PartyUnavailable)
    );

    let (sink, inbox) = sync_channel(4);
    router.attach_party_service(sink);
    let id = a.timestamp + 2;
    assert_eq!(
        verdict(&mut router, now, a.endpoint, &request(&a, id, &sync)),
        Verdict::Consumed
    );
    match inbox.try_recv().expect("queued") {
        PartyInbound::Request {
            client,
            source,
            id: got,
            plaintext,
        } => {
            assert_eq!((client, source, got), (a.key, a.endpoint, id));
            assert_eq!(PartyOp::decode(&plaintext), Ok(PartyOp::Sync));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(router.metrics().event_count(Event::PartyRequestAccepted), 1);

    // The same id again, or an older one: replays.
    for stale in [id, id - 1] {
        assert_eq!(
            verdict(&mut router, now, a.endpoint, &request(&a, stale, &sync)),
            Verdict::Drop(DropReason::PartyReplay)
        );
    }
    // From another address (a spoofer, or a NAT rebinding not yet
    // re-registered): unregistered.
    let elsewhere = addr("203.0.113.9:999");
    assert_eq!(
        verdict(&mut router, now, elsewhere, &request(&a, id + 1, &sync)),
        Verdict::Drop(DropReason::Unregistered)
    );
    // Sealed with another key's session: does not open.
    let b = Peer::new(2, "198.51.100.2:2000");
    let mut forged = request(&b, id + 2, &sync);
    forged[8..40].copy_from_slice(a.key.as_bytes());
    assert_eq!(
        verdict(&mut router, now, a.endpoint, &forged),
        Verdict::Drop(DropReason::PartyBadSeal)
    );
    // A request captured before the registration that bound the key (ids
    // are the client's timestamps) is a replay after a fresh binding too.
    let mut c = Peer::new(3, "198.51.100.3:3000");
    let captured = request(&c, c.timestamp, &sync);
    register(&mut router, now, &mut c, &[]);
    assert_eq!(
        verdict(&mut router, now, c.endpoint, &captured),
        Verdict::Drop(DropReason::PartyReplay)
    );
    assert_eq!(inbox.try_recv(), Ok(PartyInbound::Bound { client: c.key }));
    assert!(inbox.try_recv().is_err(), "nothing else was queued");
    for reason in [
        DropReason::PartyReplay,
        DropReason::Unregistered,
        DropReason::PartyBadSeal,
        DropReason::PartyUnavailable,
    ] {
        assert!(router.metrics().dropped(reason) >= 1, "{reason:?}");
    }
}

#[test]
fn a_full_queue_and_an_exhausted_budget_are_counted_drops() {
    let now = Instant::now();
    let mut router = router(now);
    let (sink, inbox) = sync_channel(2);
    router.attach_party_service(sink);
    let mut a = Peer::new(1, "198.51.100.1:1000");
    register(&mut router, now, &mut a, &[]);
    assert_eq!(inbox.try_recv(), Ok(PartyInbound::Bound { client: a.key }));
    let base = a.timestamp;
    let mut verdicts = Vec::new();
    for i in 1..=30 {
        verdicts.push(verdict(
            &mut router,
            now,
            a.endpoint,
            &request(&a, base + i, &PartyOp::Sync),
        ));
    }
    // Two fit the queue; the rest wait for room until the budget (20) runs out.
    assert_eq!(verdicts[..2], [Verdict::Consumed, Verdict::Consumed]);
    assert!(verdicts[2..20]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::PartyQueueFull)));
    assert!(verdicts[20..]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::RateLimited)));
    drop(inbox);
}

#[test]
fn the_service_answers_sealed_for_the_registered_key_only() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1000");
    register(&mut router, now, &mut a, &[]);
    let body = PartyBody::Reply {
        status: Status::Ok,
        party: 7,
        secret: Some([5; 10]),
    };
    let (to, first) = router.seal_party(&a.key, 99, &body).expect("registered");
    assert_eq!(to, a.endpoint);
    let Ok(ControlMessage::PartyMessage(view)) = ControlMessage::parse(&first) else {
        panic!("not a party message");
    };
    assert_eq!(view.id(), 99);
    assert_eq!(view.open(&a.keys), Ok(body.clone()));
    let b = Peer::new(2, "198.51.100.2:2000");
    assert!(view.open(&b.keys).is_err());
    // Never the same nonce twice: the same body seals differently.
    let (_, second) = router.seal_party(&a.key, 99, &body).expect("registered");
    assert_ne!(first, second);
    // Not registered: nothing to send (it gets its roster on registering).
    assert!(router.seal_party(&b.key, 1, &body).is_none());
}
