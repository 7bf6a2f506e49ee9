//! Tests of the core's router with real boringtun peers and a virtual clock.
//! Nothing here touches a socket: packets go from a `Tunn` into
//! `Router::handle` and the verdict says where they would go. They live in
//! this crate, not beside the router, because the core may not depend on
//! boringtun even for its tests (`lanrage-relay-core`'s Cargo.toml).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boringtun::noise::{rate_limiter::RateLimiter as WgRateLimiter, Tunn};
use lanrage_proto::control::{ControlMessage, Probe, NO_COOKIE};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_relay_core::metrics::{DropReason, Event};
use lanrage_relay_core::router::{
    RateLimit, RouteKey, Router, RouterConfig, Verdict, MAX_PENDING_PER_PEER, MAX_SESSIONS_PER_PEER,
};
use lanrage_relay_core::Command;
use lanrage_test_support::router_peers::*;

#[test]
fn real_handshake_then_transport_both_ways() {
    let mut s = session();
    assert_eq!(s.router.route_count(), 2);
    for i in 0..10u8 {
        let plain = ipv4_packet(&[i; 100]);
        let mut wire = encapsulate(&mut s.ab, &plain);
        assert_eq!(
            s.router.handle(s.now, s.a.endpoint, &mut wire),
            Verdict::Forward(s.b.endpoint)
        );
        assert_eq!(deliver(&mut s.ba, &wire), Some(plain.clone()));

        let mut back = encapsulate(&mut s.ba, &plain);
        assert_eq!(
            s.router.handle(s.now, s.b.endpoint, &mut back),
            Verdict::Forward(s.a.endpoint)
        );
        assert_eq!(deliver(&mut s.ab, &back), Some(plain));
    }
    assert_eq!(
        s.router.metrics().event_count(Event::ForwardedTransport),
        20
    );
}

#[test]
fn unregistered_source_gets_nothing_forwarded() {
    let mut s = session();
    let stranger = addr("192.0.2.99:5000");
    let mut init = initiation(&mut s.ab);
    assert_eq!(
        s.router.handle(s.now, stranger, &mut init),
        Verdict::Drop(DropReason::Unregistered)
    );
    // Transport from a stranger gets at most a small, rate-limited hint.
    let mut wire = encapsulate(&mut s.ab, &ipv4_packet(&[1; 64]));
    let sent = wire.len();
    let Verdict::Reply(len) = s.router.handle(s.now, stranger, &mut wire) else {
        panic!("expected a hint");
    };
    assert!(len < sent);
    let Ok(ControlMessage::UnknownSession(hint)) = ControlMessage::parse(&wire[..len]) else {
        panic!("hint parses");
    };
    assert!(!hint.registered);
    let mut hints = 1;
    for _ in 0..20 {
        let mut wire = encapsulate(&mut s.ab, &ipv4_packet(&[1; 64]));
        match s.router.handle(s.now, stranger, &mut wire) {
            Verdict::Reply(_) => hints += 1,
            Verdict::Drop(DropReason::NoRoute) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(hints, 4, "hints are limited to the burst");
    assert_eq!(s.router.metrics().dropped(DropReason::NoRoute), 21);
}

#[test]
fn peers_outside_mutual_consent_are_unreachable() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1");
    let mut b = Peer::new(2, "198.51.100.2:2");
    let mut c = Peer::new(3, "198.51.100.3:3");
    let b_view = Peer::new(2, "0.0.0.0:1");
    let a_view = Peer::new(1, "0.0.0.0:1");
    // A consents only to B; C consents to A; B consents to nobody.
    register(&mut router, now, &mut a, &[&b_view]);
    register(&mut router, now, &mut b, &[]);
    register(&mut router, now, &mut c, &[&a_view]);

    let mut ca = c.tunnel_to(&a, 3);
    let mut init = initiation(&mut ca);
    assert_eq!(
        router.handle(now, c.endpoint, &mut init),
        Verdict::Drop(DropReason::NoConsentingResponder),
        "A does not consent to C"
    );
    let mut ab = a.tunnel_to(&b, 1);
    let mut init = initiation(&mut ab);
    assert_eq!(
        router.handle(now, a.endpoint, &mut init),
        Verdict::Drop(DropReason::NoConsentingResponder),
        "B does not consent back to A"
    );
}

#[test]
fn replayed_and_forged_registrations_are_rejected() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1");
    let accepted = register(&mut router, now, &mut a, &[]);
    let attacker = addr("192.0.2.66:6666");

    // Replayed from its own address: too old.
    let mut replay = accepted.clone();
    assert_eq!(
        router.handle(now, a.endpoint, &mut replay),
        Verdict::Drop(DropReason::RegistrationReplay)
    );
    // Replayed from another address: its cookie is for A's address, so it
    // proves nothing there and only earns a challenge.
    let mut replay = accepted;
    let Verdict::Reply(len) = router.handle(now, attacker, &mut replay) else {
        panic!("a replay from elsewhere is challenged");
    };
    assert!(is_challenge(&replay[..len]));
    assert_eq!(
        router.endpoint_of(&a.key),
        Some(a.endpoint),
        "replay did not move A"
    );

    // Sealed with keys from another secret, claiming A's public key, from an
    // attacker that fetched a cookie for its own address first.
    let mut forger = Peer::new(5, "192.0.2.66:6666");
    forger.key = a.key;
    let (_, verdict) = send_registration(&mut router, now, &mut forger, &[]);
    assert!(matches!(verdict, Verdict::Reply(_)), "challenged first");
    let (_, verdict) = send_registration(&mut router, now, &mut forger, &[]);
    assert_eq!(verdict, Verdict::Drop(DropReason::RegistrationBadMac));
    assert_eq!(router.endpoint_of(&a.key), Some(a.endpoint));

    // And from an unknown key with a cookie (the full X25519 path).
    let mut stranger = Peer::new(6, "192.0.2.7:7");
    let _ = send_registration(&mut router, now, &mut stranger, &[]);
    let mut msg = stranger.registration(&[]);
    let last = msg.len() - 1;
    msg[last] ^= 1;
    assert_eq!(
        router.handle(now, stranger.endpoint, &mut msg),
        Verdict::Drop(DropReason::RegistrationBadMac)
    );
}

#[test]
fn roaming_moves_both_directions_of_a_session() {
    let mut s = session();
    let old = s.a.endpoint;
    s.a.endpoint = addr("198.51.100.1:50000");
    let b_view = Peer::new(2, "0.0.0.0:1");
    register(&mut s.router, s.now, &mut s.a, &[&b_view]);
    assert_eq!(s.router.metrics().event_count(Event::EndpointChanged), 1);

    let plain = ipv4_packet(&[5; 40]);
    let mut from_a = encapsulate(&mut s.ab, &plain);
    assert_eq!(
        s.router.handle(s.now, s.a.endpoint, &mut from_a),
        Verdict::Forward(s.b.endpoint)
    );
    assert_eq!(deliver(&mut s.ba, &from_a), Some(plain.clone()));
    let mut to_a = encapsulate(&mut s.ba, &plain);
    assert_eq!(to_a[0], 4, "B answers on the established session");
    assert_eq!(
        s.router.handle(s.now, s.b.endpoint, &mut to_a),
        Verdict::Forward(s.a.endpoint)
    );
    assert_eq!(deliver(&mut s.ab, &to_a), Some(plain.clone()));
    let mut from_old = encapsulate(&mut s.ab, &plain);
    assert!(matches!(
        s.router.handle(s.now, old, &mut from_old),
        Verdict::Reply(_)
    ));
    assert_eq!(s.router.route_count(), 2);
}

#[test]
fn routes_expire_after_idle_timeout_and_hint_says_registered() {
    let mut s = session();
    let (a_view, b_view) = (Peer::new(1, "0.0.0.0:1"), Peer::new(2, "0.0.0.0:1"));
    let mut now = s.now;
    // Keep registrations fresh while the session idles.
    for _ in 0..4 {
        now += Duration::from_secs(50);
        register(&mut s.router, now, &mut s.a, &[&b_view]);
        register(&mut s.router, now, &mut s.b, &[&a_view]);
        s.router.handle_timeout(now);
    }
    assert_eq!(s.router.route_count(), 0, "200 s idle > 180 s timeout");
    assert_eq!(s.router.metrics().event_count(Event::RouteExpired), 1);
    let mut wire = encapsulate(&mut s.ab, &ipv4_packet(&[1; 10]));
    let Verdict::Reply(len) = s.router.handle(now, s.a.endpoint, &mut wire) else {
        panic!("expected a hint");
    };
    let Ok(ControlMessage::UnknownSession(hint)) = ControlMessage::parse(&wire[..len]) else {
        panic!("hint parses");
    };
    assert!(hint.registered);
    assert_eq!(hint.relay_epoch, 7);
}

#[test]
fn busy_routes_do_not_expire() {
    let mut s = session();
    let (a_view, b_view) = (Peer::new(1, "0.0.0.0:1"), Peer::new(2, "0.0.0.0:1"));
    let mut now = s.now;
    for _ in 0..8 {
        now += Duration::from_secs(30);
        register(&mut s.router, now, &mut s.a, &[&b_view]);
        register(&mut s.router, now, &mut s.b, &[&a_view]);
        let mut wire = encapsulate(&mut s.ab, &ipv4_packet(&[1; 10]));
        assert_eq!(
            s.router.handle(now, s.a.endpoint, &mut wire),
            Verdict::Forward(s.b.endpoint)
        );
        s.router.handle_timeout(now);
    }
    assert_eq!(
        s.router.route_count(),
        2,
        "one busy direction keeps the pair"
    );
}

#[test]
fn registrations_expire_without_refresh() {
    let mut s = session();
    let now = s.now + Duration::from_secs(91);
    s.router.handle_timeout(now);
    assert_eq!(s.router.registration_count(), 0);
    assert_eq!(s.router.route_count(), 0);
    let mut init = initiation(&mut s.ab);
    assert_eq!(
        s.router.handle(now, s.a.endpoint, &mut init),
        Verdict::Drop(DropReason::Unregistered)
    );
}

#[test]
fn colliding_indices_on_one_endpoint_drop_the_second_handshake() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1");
    let mut b = Peer::new(2, "198.51.100.2:2");
    let mut c = Peer::new(3, "198.51.100.3:3");
    let views = [1, 2, 3].map(|seed| Peer::new(seed, "0.0.0.0:1"));
    register(&mut router, now, &mut a, &[&views[1], &views[2]]);
    register(&mut router, now, &mut b, &[&views[0]]);
    register(&mut router, now, &mut c, &[&views[0]]);
    let (mut ab, mut ba) = (a.tunnel_to(&b, 1), b.tunnel_to(&a, 9));
    handshake(&mut router, now, &a, &b, &mut ab, &mut ba);

    // C picks the same local index as B: A's transport to either would carry
    // the same receiver index from the same endpoint.
    let (mut ac, mut ca) = (a.tunnel_to(&c, 2), c.tunnel_to(&a, 9));
    let mut init = initiation(&mut ac);
    assert_eq!(
        router.handle(now, a.endpoint, &mut init),
        Verdict::Forward(c.endpoint)
    );
    let mut response = deliver(&mut ca, &init).expect("C answers");
    assert_eq!(
        router.handle(now, c.endpoint, &mut response),
        Verdict::Drop(DropReason::IndexCollision)
    );
    // The first session is untouched.
    let mut wire = encapsulate(&mut ab, &ipv4_packet(&[3; 20]));
    assert_eq!(
        router.handle(now, a.endpoint, &mut wire),
        Verdict::Forward(b.endpoint)
    );
}

#[test]
fn under_load_initiations_need_mac2_and_arrive_with_it_zeroed() {
    let now = Instant::now();
    let config = RouterConfig {
        under_load_handshakes_per_second: 0,
        ..RouterConfig::default()
    };
    let mut router = router_with(config, now);
    let (mut a, b) = pair(&mut router, now);
    let b_view = b.view();
    let (mut ab, mut ba) = (a.tunnel_to(&b, 1), b.tunnel_to(&a, 2));

    let mut init = initiation(&mut ab);
    let Verdict::Reply(len) = router.handle(now, a.endpoint, &mut init) else {
        panic!("under load, an initiation without mac2 gets a cookie reply");
    };
    assert_eq!(len, 64);
    // A (real boringtun) accepts the cookie reply as if B had sent it.
    assert_eq!(deliver(&mut ab, &init[..len]), None);

    let mut retry = initiation(&mut ab);
    assert_ne!(&retry[132..], &[0u8; 16], "A now sends a mac2");
    assert_eq!(
        router.handle(now, a.endpoint, &mut retry),
        Verdict::Forward(b.endpoint)
    );
    assert_eq!(&retry[132..], &[0u8; 16], "mac2 zeroed before forwarding");
    let mut response = deliver(&mut ba, &retry).expect("B answers");
    assert_eq!(
        router.handle(now, b.endpoint, &mut response),
        Verdict::Forward(a.endpoint)
    );

    // The cookie is bound to A's address: after A roams, its old cookie no
    // longer proves anything and it gets a fresh cookie reply.
    a.endpoint = addr("198.51.100.1:2");
    register(&mut router, now, &mut a, &[&b_view]);
    let mut again = initiation(&mut ab);
    assert_eq!(
        router.handle(now, a.endpoint, &mut again),
        Verdict::Reply(64)
    );
    assert_eq!(router.metrics().event_count(Event::CookieReplySent), 2);
    // Each initiation answered with a cookie instead of forwarded is a
    // counted drop: the two without a valid mac2, not the one forwarded.
    assert_eq!(router.metrics().dropped(DropReason::Mac2Invalid), 2);
}

#[test]
fn responder_cookie_reply_follows_the_pending_initiation() {
    let now = Instant::now();
    let mut router = router(now);
    let (a, b) = pair(&mut router, now);
    let mut ab = a.tunnel_to(&b, 1);
    // B is "under load" from the start: a limit of 0 handshakes.
    let b_public = PublicKey::from(&b.secret);
    let limiter = std::sync::Arc::new(WgRateLimiter::new(&b_public, 0));
    let mut ba = Tunn::new(
        b.secret.clone(),
        PublicKey::from(a.key),
        None,
        None,
        2,
        Some(limiter),
    );

    let mut init = initiation(&mut ab);
    assert_eq!(
        router.handle(now, a.endpoint, &mut init),
        Verdict::Forward(b.endpoint)
    );
    let mut cookie = deliver(&mut ba, &init).expect("B sends a cookie reply");
    assert_eq!(cookie.len(), 64);
    assert_eq!(
        router.handle(now, b.endpoint, &mut cookie),
        Verdict::Forward(a.endpoint)
    );
    assert_eq!(deliver(&mut ab, &cookie), None, "A accepts B's cookie");
}

#[test]
fn withdrawn_consent_removes_the_session() {
    let mut s = session();
    register(&mut s.router, s.now, &mut s.a, &[]);
    assert_eq!(s.router.route_count(), 0);
    let mut wire = encapsulate(&mut s.ab, &ipv4_packet(&[1; 10]));
    assert!(matches!(
        s.router.handle(s.now, s.a.endpoint, &mut wire),
        Verdict::Reply(_)
    ));
}

#[test]
fn another_key_on_an_endpoint_evicts_the_old_owner() {
    let mut s = session();
    let mut c = Peer::new(3, "0.0.0.0:1");
    c.endpoint = s.a.endpoint;
    register(&mut s.router, s.now, &mut c, &[]);
    assert_eq!(s.router.endpoint_of(&s.a.key), None);
    assert_eq!(s.router.route_count(), 0);
}

#[test]
fn new_keys_are_rate_limited_per_source_ip_and_refreshes_per_key() {
    let now = Instant::now();
    let config = RouterConfig {
        handshake_rate_limit: RateLimit {
            per_second: 1,
            burst: 3,
        },
        ..RouterConfig::default()
    };
    let mut router = router_with(config, now);
    // Three new keys from one IP (different ports) spend its X25519 budget.
    let mut peers: Vec<Peer> = (1..=3u8)
        .map(|seed| Peer::new(seed, &format!("198.51.100.1:{seed}")))
        .collect();
    for p in &mut peers {
        register(&mut router, now, p, &[]);
    }
    let mut fourth = Peer::new(4, "198.51.100.1:4");
    let _ = send_registration(&mut router, now, &mut fourth, &[]);
    let (_, verdict) = send_registration(&mut router, now, &mut fourth, &[]);
    assert_eq!(verdict, Verdict::Drop(DropReason::RateLimited));
    register(&mut router, now + Duration::from_secs(1), &mut fourth, &[]);

    // A registered client's refreshes spend its own budget (10 at once, its
    // first registration included, then 1/s), not the IP's, which is empty.
    let a = &mut peers[0];
    let verdicts: Vec<Verdict> = (0..10)
        .map(|_| send_registration(&mut router, now, a, &[]).1)
        .collect();
    assert!(verdicts[..9].iter().all(|v| matches!(v, Verdict::Reply(_))));
    assert_eq!(verdicts[9], Verdict::Drop(DropReason::RateLimited));
}

#[test]
fn malformed_datagrams_of_every_kind_are_counted() {
    let now = Instant::now();
    let mut router = router(now);
    let src = addr("192.0.2.1:1");
    let mut a = Peer::new(1, "198.51.100.1:1");
    let registration = a.registration(&[]);
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![1, 0, 0, 0, 1], DropReason::MalformedWireGuard),
        (vec![2; 91], DropReason::UnknownProtocol),
        (
            [&[2u8, 0, 0, 0][..], &[0; 87]].concat(),
            DropReason::MalformedWireGuard,
        ),
        (
            [&[3u8, 0, 0, 0][..], &[0; 61]].concat(),
            DropReason::MalformedWireGuard,
        ),
        (
            [&[4u8, 0, 0, 0][..], &[0; 27]].concat(),
            DropReason::MalformedWireGuard,
        ),
        (
            registration[..registration.len() - 1].to_vec(),
            DropReason::MalformedControl,
        ),
        (b"LRG!".to_vec(), DropReason::MalformedControl),
        (b"LRG!\x09\x01\0\0".to_vec(), DropReason::UnsupportedVersion),
        (b"LRG!\x01\x01\0\0".to_vec(), DropReason::UnsupportedVersion),
        (b"LRG!\x02\x77\0\0".to_vec(), DropReason::UnknownControlType),
        (b"LRG!\x02\x01\x01\0".to_vec(), DropReason::MalformedControl),
        (vec![], DropReason::UnknownProtocol),
        (vec![0xff; 1400], DropReason::UnknownProtocol),
    ];
    for (mut bytes, reason) in cases {
        assert_eq!(
            router.handle(now, src, &mut bytes),
            Verdict::Drop(reason),
            "{bytes:?}"
        );
    }
    assert_eq!(router.metrics().dropped(DropReason::MalformedWireGuard), 4);
    assert_eq!(router.metrics().dropped(DropReason::MalformedControl), 3);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, from a registered endpoint or not, the router
        /// answers with a verdict, and a reply is never larger than the request.
        #[test]
        fn any_datagram_gets_a_verdict_and_replies_never_amplify(
            bytes in proptest::collection::vec(any::<u8>(), 0..1600),
            kind in 0u8..6,
            from_registered in any::<bool>(),
        ) {
            let mut s = session();
            let mut bytes = bytes;
            // Steer some inputs into each parser's deeper paths.
            if kind < 5 && bytes.len() >= 4 {
                bytes[0] = kind;
                bytes[1..4].fill(0);
            } else if kind == 5 && bytes.len() >= 8 {
                bytes[..6].copy_from_slice(b"LRG!\x02\x01");
            }
            let src = if from_registered { s.a.endpoint } else { addr("192.0.2.1:9") };
            let sent = bytes.len();
            if let Verdict::Reply(len) = s.router.handle(s.now, src, &mut bytes) {
                prop_assert!(len <= sent);
            }
            prop_assert_eq!(s.router.metrics().dropped(DropReason::ReplyLargerThanRequest), 0);
        }
    }
}

#[test]
fn workers_share_registrations_and_routes() {
    let now = Instant::now();
    let mut first = router(now);
    let mut second = first.worker();
    let mut a = Peer::new(1, "198.51.100.1:1");
    let mut b = Peer::new(2, "198.51.100.2:2");
    let (a_view, b_view) = (Peer::new(1, "0.0.0.0:1"), Peer::new(2, "0.0.0.0:1"));
    // SO_REUSEPORT pins each client to one worker: A to the first, B to the second.
    register(&mut first, now, &mut a, &[&b_view]);
    register(&mut second, now, &mut b, &[&a_view]);
    let (mut ab, mut ba) = (a.tunnel_to(&b, 1), b.tunnel_to(&a, 2));
    let mut init = initiation(&mut ab);
    assert_eq!(
        first.handle(now, a.endpoint, &mut init),
        Verdict::Forward(b.endpoint)
    );
    let mut response = deliver(&mut ba, &init).expect("B answers");
    assert_eq!(
        second.handle(now, b.endpoint, &mut response),
        Verdict::Forward(a.endpoint)
    );
    let _ = deliver(&mut ab, &response);

    let plain = ipv4_packet(&[8; 60]);
    let mut to_b = encapsulate(&mut ab, &plain);
    assert_eq!(
        first.handle(now, a.endpoint, &mut to_b),
        Verdict::Forward(b.endpoint)
    );
    // B's session is confirmed by A's first data packet; then B can send.
    assert_eq!(deliver(&mut ba, &to_b), Some(plain.clone()));
    let mut to_a = encapsulate(&mut ba, &plain);
    assert_eq!(
        second.handle(now, b.endpoint, &mut to_a),
        Verdict::Forward(a.endpoint)
    );
    assert_eq!(first.route_count(), 2);
    assert_eq!(second.registration_count(), 2);
    assert_eq!(first.metrics().event_count(Event::ForwardedTransport), 2);
}

/// Route commands (applied to the XDP map in production) follow the
/// router's routes through installs, roaming, kernel-side use and expiry;
/// here they are applied to a map in the test, as the driver would.
#[test]
fn route_commands_follow_installs_roaming_and_expiry() {
    let now = Instant::now();
    let config = RouterConfig {
        route_commands: true,
        ..RouterConfig::default()
    };
    let Session {
        mut router,
        mut a,
        mut b,
        ..
    } = session_on(router_with(config, now), now);
    let mut copy = HashMap::new();
    let apply = |router: &mut Router, copy: &mut HashMap<RouteKey, SocketAddr>| {
        let mut commands = Vec::new();
        router.take_commands(&mut commands);
        assert!(!router.has_commands(), "all taken");
        for command in commands {
            match command {
                Command::InstallRoute { key, dst } => {
                    copy.insert(key, dst);
                }
                Command::RemoveRoute { key } => {
                    copy.remove(&key);
                }
            }
        }
    };
    let (a_view, b_view) = (a.view(), b.view());
    assert!(router.has_commands());
    apply(&mut router, &mut copy);

    // Installed: one route per direction, the same as the router's.
    assert_eq!(copy.len(), 2);
    let from_a = copy
        .iter()
        .find(|(k, _)| k.src == a.endpoint)
        .map(|(k, d)| (*k, *d))
        .expect("A's route copied");
    assert_eq!(from_a.1, b.endpoint);
    let from_b = copy
        .iter()
        .find(|(k, _)| k.src == b.endpoint)
        .map(|(k, d)| (*k, *d))
        .expect("B's route copied");
    assert_eq!(from_b.1, a.endpoint);
    assert!(router.has_route(&from_a.0) && router.has_route(&from_b.0));

    // Roaming: A's route is re-keyed to its new source, B's re-aimed at it.
    a.endpoint = addr("198.51.100.1:50000");
    register(&mut router, now, &mut a, &[&b_view]);
    apply(&mut router, &mut copy);
    assert_eq!(copy.len(), 2);
    let moved = RouteKey {
        src: a.endpoint,
        index: from_a.0.index,
    };
    assert_eq!(copy.get(&moved), Some(&b.endpoint));
    assert_eq!(copy.get(&from_b.0), Some(&a.endpoint));

    // Only the copy carries the session: userspace sees no transport at
    // all, but the driver's reports of the kernel's last use keep the pair
    // alive past the idle timeout.
    let mut t = now;
    for _ in 0..8 {
        t += Duration::from_secs(30);
        register(&mut router, t, &mut a, &[&b_view]);
        register(&mut router, t, &mut b, &[&a_view]);
        assert!(router.note_route_used(&from_b.0, t - Duration::from_secs(1)));
        router.handle_timeout(t);
        apply(&mut router, &mut copy);
    }
    assert_eq!(router.route_count(), 2, "busy in XDP, kept in userspace");
    assert_eq!(copy.len(), 2);

    // The kernel stops forwarding: both directions expire, in both places.
    for _ in 0..7 {
        t += Duration::from_secs(30);
        register(&mut router, t, &mut a, &[&b_view]);
        register(&mut router, t, &mut b, &[&a_view]);
        router.handle_timeout(t);
        apply(&mut router, &mut copy);
    }
    assert_eq!(router.route_count(), 0);
    assert!(copy.is_empty(), "expiry removed the copied pair");
    assert!(!router.note_route_used(&from_b.0, t), "gone from the table");
}

/// Without a driver that asked for them, the router queues no commands
/// (they would only pile up).
#[test]
fn no_route_commands_unless_asked() {
    let Session { mut router, .. } = session();
    assert_eq!(router.route_count(), 2);
    assert!(!router.has_commands());
    let mut commands = Vec::new();
    router.take_commands(&mut commands);
    assert!(commands.is_empty());
}

// ---- the relay on the open internet (issue: return-routability, floods, fair limits)

/// A registration for a fresh key from a source that never received a
/// challenge costs the relay one MAC: it gets a challenge smaller than itself
/// and leaves no state, however many arrive.
#[test]
fn unproven_registrations_get_a_stateless_challenge_and_no_state() {
    let now = Instant::now();
    let mut router = router(now);
    for i in 0..200u32 {
        let mut p = Peer::new((i % 250) as u8 + 1, "0.0.0.0:1");
        p.endpoint = SocketAddr::new(
            std::net::Ipv4Addr::from(0xC000_0200 + i).into(),
            (i % 60_000) as u16 + 1,
        );
        let (reply, verdict) = send_registration(&mut router, now, &mut p, &[]);
        assert!(matches!(verdict, Verdict::Reply(_)));
        assert!(is_challenge(&reply));
    }
    assert_eq!(router.registration_count(), 0);
    assert_eq!(router.metrics().event_count(Event::ChallengeSent), 200);
    assert_eq!(router.metrics().dropped(DropReason::RateLimited), 0);
}

/// Attack: one spoofed registration binds the attacker's key to a victim's
/// address (so the relay would forward the attacker's traffic there), or
/// evicts the client registered there. Without the challenge's cookie, which
/// only the real owner of the address receives, neither happens.
#[test]
fn a_spoofed_registration_cannot_bind_or_take_over_an_address() {
    let mut s = session();
    let victim = s.a.endpoint;
    let mut attacker = Peer::new(9, "0.0.0.0:1");
    attacker.endpoint = victim;
    // The attacker can't see the challenge (it went to the victim), so it
    // sends its registration with no cookie, or with a cookie it fetched for
    // its own address.
    let (reply, _) = send_registration(&mut s.router, s.now, &mut attacker, &[]);
    assert!(is_challenge(&reply));
    attacker.cookie = NO_COOKIE;
    let (reply, _) = send_registration(&mut s.router, s.now, &mut attacker, &[]);
    assert!(is_challenge(&reply));
    let mut elsewhere = Peer::new(9, "192.0.2.50:5000");
    let _ = send_registration(&mut s.router, s.now, &mut elsewhere, &[]);
    attacker.cookie = elsewhere.cookie;
    let (reply, _) = send_registration(&mut s.router, s.now, &mut attacker, &[]);
    assert!(
        is_challenge(&reply),
        "a cookie for another address proves nothing"
    );

    assert_eq!(s.router.endpoint_of(&attacker.key), None);
    assert_eq!(
        s.router.endpoint_of(&s.a.key),
        Some(victim),
        "A keeps its address"
    );
    assert_eq!(s.router.route_count(), 2, "A's session survives");
}

/// Attack: junk registrations claiming a client's key from its IP (another
/// port: a carrier-grade NAT neighbour, or spoofed) used to spend the IP's
/// budget before the MAC was checked, starving the client's refreshes.
#[test]
fn junk_from_a_clients_ip_does_not_starve_its_refreshes() {
    let mut s = session();
    let b_view = Peer::new(2, "0.0.0.0:1");
    for port in 0..500u16 {
        let mut junk = s.a.registration(&[]);
        let last = junk.len() - 1;
        junk[last] ^= 0x5a;
        let neighbour = SocketAddr::new(s.a.endpoint.ip(), 20_000 + port);
        let verdict = s.router.handle(s.now, neighbour, &mut junk);
        assert!(
            matches!(verdict, Verdict::Reply(_)),
            "junk is challenged: {verdict:?}"
        );
        // And from A's own port: a MAC failure, nothing spent.
        let mut junk = s.a.registration(&[]);
        junk[last] ^= 0x5a;
        assert_eq!(
            s.router.handle(s.now, s.a.endpoint, &mut junk),
            Verdict::Drop(DropReason::RegistrationBadMac)
        );
    }
    register(&mut s.router, s.now, &mut s.a, &[&b_view]);
    assert_eq!(s.router.metrics().dropped(DropReason::RateLimited), 0);
}

/// Attack: a registration captured in flight, delivered first from another
/// address, moved the victim's endpoint.
#[test]
fn a_captured_registration_delivered_from_elsewhere_does_not_move_the_client() {
    let mut s = session();
    let b_view = Peer::new(2, "0.0.0.0:1");
    let captured = s.a.registration(&[&b_view]);
    let mut first = captured.clone();
    let Verdict::Reply(len) = s.router.handle(s.now, addr("192.0.2.80:8080"), &mut first) else {
        panic!("challenged");
    };
    assert!(is_challenge(&first[..len]));
    assert_eq!(s.router.endpoint_of(&s.a.key), Some(s.a.endpoint));
    // The genuine copy still lands.
    let mut genuine = captured;
    assert!(matches!(
        s.router.handle(s.now, s.a.endpoint, &mut genuine),
        Verdict::Reply(_)
    ));
}

/// Roaming needs the same proof as a first registration: the client answers
/// the challenge at its new address, then its session moves with it.
#[test]
fn roaming_takes_one_challenge_round_trip() {
    let mut s = session();
    let b_view = Peer::new(2, "0.0.0.0:1");
    s.a.endpoint = addr("198.51.100.1:50001");
    let (reply, _) = send_registration(&mut s.router, s.now, &mut s.a, &[&b_view]);
    assert!(is_challenge(&reply), "a new address must be proven");
    let (reply, _) = send_registration(&mut s.router, s.now, &mut s.a, &[&b_view]);
    assert!(matches!(
        ControlMessage::parse(&reply),
        Ok(ControlMessage::RegisterAck(_))
    ));
    assert_eq!(s.router.endpoint_of(&s.a.key), Some(s.a.endpoint));
}

/// A cookie lasts for the current and the next secret period (2–4 min).
#[test]
fn a_cookie_expires_after_two_secret_periods() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1");
    let _ = send_registration(&mut router, now, &mut a, &[]);
    let later = now + Duration::from_secs(240);
    let (reply, _) = send_registration(&mut router, later, &mut a, &[]);
    assert!(
        is_challenge(&reply),
        "a cookie from two periods ago is stale"
    );
    let (reply, _) = send_registration(&mut router, later + Duration::from_secs(119), &mut a, &[]);
    assert!(matches!(
        ControlMessage::parse(&reply),
        Ok(ControlMessage::RegisterAck(_))
    ));
}

/// Attack: replay protection reset whenever a key's state was dropped, so a
/// registration captured earlier could be replayed after the key expired.
#[test]
fn replay_protection_outlives_expiry() {
    let now = Instant::now();
    let mut router = router(now);
    let mut a = Peer::new(1, "198.51.100.1:1");
    let old = register(&mut router, now, &mut a, &[]);
    let later = now + Duration::from_secs(91);
    router.handle_timeout(later);
    assert_eq!(router.registration_count(), 0, "A expired");
    // The replay carries a cookie for A's address that is still valid.
    let mut replay = old.clone();
    assert_eq!(
        router.handle(later, a.endpoint, &mut replay),
        Verdict::Drop(DropReason::RegistrationReplay)
    );
    // The memory is bounded in time: it lasts as long as any cookie a
    // captured registration can carry (two secret periods), then it is gone,
    // and the stale cookie gets the replay nothing but a challenge.
    let much_later = later + Duration::from_secs(240);
    router.handle_timeout(much_later);
    assert_eq!(router.remembered_replays(), 0);
    let mut replay = old;
    let verdict = router.handle(much_later, a.endpoint, &mut replay);
    assert!(
        matches!(verdict, Verdict::Reply(_)),
        "challenged, not accepted: {verdict:?}"
    );
    assert_eq!(router.registration_count(), 0);
}

/// Attack: a few attacker pairs filled the global pending-handshake table
/// (fresh sender indices every time), and a victim pair's handshake failed.
#[test]
fn pending_handshakes_are_capped_per_pair_so_a_victim_still_handshakes() {
    let now = Instant::now();
    let config = RouterConfig {
        max_pending_handshakes: 8,
        ..RouterConfig::default()
    };
    let mut router = router_with(config, now);
    let (x, y) = registered_pair(
        &mut router,
        now,
        (11, "198.51.100.11:1"),
        (12, "198.51.100.12:1"),
    );
    let mut xy = x.tunnel_to(&y, 100);
    for _ in 0..40 {
        // boringtun picks a fresh sender index for every initiation.
        let mut init = initiation(&mut xy);
        assert_eq!(
            router.handle(now, x.endpoint, &mut init),
            Verdict::Forward(y.endpoint)
        );
    }
    let pending = router.pending_count();
    assert_eq!(pending, MAX_PENDING_PER_PEER);
    assert_eq!(router.metrics().event_count(Event::PendingReplaced), 38);

    let (a, b) = pair(&mut router, now);
    let (mut ab, mut ba) = (a.tunnel_to(&b, 1), b.tunnel_to(&a, 2));
    handshake(&mut router, now, &a, &b, &mut ab, &mut ba);
}

/// Attack: attacker pairs completing handshake after handshake filled the
/// route table. Sessions are capped per pair of peers: a new one replaces the
/// oldest, so a pair's share of the table stays constant.
#[test]
fn sessions_are_capped_per_pair_of_peers() {
    let mut s = session();
    for i in 0..20u32 {
        let mut ab = s.a.tunnel_to(&s.b, 1000 + i);
        let mut ba = s.b.tunnel_to(&s.a, 2000 + i);
        handshake(&mut s.router, s.now, &s.a, &s.b, &mut ab, &mut ba);
        assert!(s.router.route_count() <= 2 * MAX_SESSIONS_PER_PEER);
    }
    assert_eq!(s.router.route_count(), 2 * MAX_SESSIONS_PER_PEER);
    assert_eq!(
        s.router.metrics().event_count(Event::SessionReplaced),
        21 - 4
    );
    // The newest session works.
    let mut ab = s.a.tunnel_to(&s.b, 5000);
    let mut ba = s.b.tunnel_to(&s.a, 6000);
    handshake(&mut s.router, s.now, &s.a, &s.b, &mut ab, &mut ba);
    let plain = ipv4_packet(&[7; 30]);
    let mut wire = encapsulate(&mut ab, &plain);
    assert_eq!(
        s.router.handle(s.now, s.a.endpoint, &mut wire),
        Verdict::Forward(s.b.endpoint)
    );
}

/// Junk initiations from a registered endpoint spend that endpoint's junk
/// budget only: a neighbour behind the same IP keeps handshaking, and once the
/// junk budget is empty the junk costs no mac1 work at all.
#[test]
fn junk_initiations_do_not_spend_a_neighbours_budget() {
    let now = Instant::now();
    let config = RouterConfig {
        handshake_rate_limit: RateLimit {
            per_second: 1,
            burst: 5,
        },
        ..RouterConfig::default()
    };
    let mut router = router_with(config, now);
    let mut a = Peer::new(1, "198.51.100.1:1");
    let mut b = Peer::new(2, "198.51.100.2:2");
    let mut c = Peer::new(3, "198.51.100.1:3"); // A's neighbour behind one IP
    let views = [1, 2, 3].map(|seed| Peer::new(seed, "0.0.0.0:1"));
    register(&mut router, now, &mut a, &[&views[1]]);
    register(
        &mut router,
        now + Duration::from_secs(5),
        &mut b,
        &[&views[0], &views[2]],
    );
    register(
        &mut router,
        now + Duration::from_secs(5),
        &mut c,
        &[&views[1]],
    );
    let now = now + Duration::from_secs(10);
    let mut junk_verdicts = Vec::new();
    for i in 0..20u8 {
        let mut junk = vec![i; 148];
        junk[..4].copy_from_slice(&[1, 0, 0, 0]);
        junk_verdicts.push(router.handle(now, a.endpoint, &mut junk));
    }
    assert!(junk_verdicts[..5]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::NoConsentingResponder)));
    assert!(junk_verdicts[5..]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::RateLimited)));
    let (mut cb, mut bc) = (c.tunnel_to(&b, 1), b.tunnel_to(&c, 2));
    handshake(&mut router, now, &c, &b, &mut cb, &mut bc);
}

/// Attack: filling the hint limiter's source table (110k spoofed sources)
/// locked every newcomer out. A full table now evicts the oldest source.
#[test]
fn a_full_rate_limiter_table_evicts_instead_of_refusing() {
    let now = Instant::now();
    let config = RouterConfig {
        max_rate_limited_sources: 100,
        ..RouterConfig::default()
    };
    let mut router = router_with(config, now);
    for i in 0..1000u32 {
        let spoofed = SocketAddr::new(std::net::Ipv4Addr::from(0xC633_6400 + i).into(), 9);
        let mut miss = [&[4u8, 0, 0, 0][..], &[0; 28]].concat();
        assert!(matches!(
            router.handle(now, spoofed, &mut miss),
            Verdict::Reply(24)
        ));
    }
    // A real client arriving now still gets its hint.
    let mut miss = [&[4u8, 0, 0, 0][..], &[0; 28]].concat();
    assert!(matches!(
        router.handle(now, addr("203.0.113.9:4000"), &mut miss),
        Verdict::Reply(24)
    ));
    router.handle_timeout(now + Duration::from_secs(1));
    assert!(router
        .metrics()
        .render_prometheus()
        .contains("lanrage_relay_rate_limiter_evictions_total{limiter=\"hint\"} 901"));
}

/// Hint budgets were per worker, so a spoofed source reaching every worker
/// got the per-IP rate times the worker count.
#[test]
fn hint_budget_is_per_ip_across_workers() {
    let now = Instant::now();
    let mut first = router(now);
    let mut second = first.worker();
    let src = addr("192.0.2.1:9");
    let mut hints = 0;
    for i in 0..20 {
        let mut miss = [&[4u8, 0, 0, 0][..], &[0; 28]].concat();
        let worker = if i % 2 == 0 { &mut first } else { &mut second };
        if matches!(worker.handle(now, src, &mut miss), Verdict::Reply(_)) {
            hints += 1;
        }
    }
    assert_eq!(hints, 4, "one burst of 4 in total, not 4 per worker");
}

/// A client that only receives notices a relay restart by probing: a known
/// key at its address gets an authenticated ack with the epoch; an unknown
/// one (as after a restart) an unauthenticated "not registered".
#[test]
fn probes_tell_a_client_whether_the_relay_still_knows_it() {
    let mut s = session();
    let mut probe = Probe {
        client: s.a.key,
        timestamp: 77,
    }
    .seal(&s.a.keys);
    let Verdict::Reply(len) = s.router.handle(s.now, s.a.endpoint, &mut probe) else {
        panic!("probe answered");
    };
    assert!(len < 64);
    let Ok(ControlMessage::ProbeAck(ack)) = ControlMessage::parse(&probe[..len]) else {
        panic!("a probe ack");
    };
    let ack = ack.verify(&s.a.keys).expect("authenticated");
    assert!(ack.registered);
    assert_eq!((ack.echoed_timestamp, ack.relay_epoch), (77, 7));

    // A restarted relay (new epoch, empty tables) does not know A.
    let mut restarted = Router::new(
        RouterConfig::default(),
        StaticSecret::from(RELAY_SECRET),
        8,
        [1; 32],
        s.now,
    );
    let mut probe = Probe {
        client: s.a.key,
        timestamp: 78,
    }
    .seal(&s.a.keys);
    let Verdict::Reply(len) = restarted.handle(s.now, s.a.endpoint, &mut probe) else {
        panic!("probe answered");
    };
    let Ok(ControlMessage::ProbeAck(ack)) = ControlMessage::parse(&probe[..len]) else {
        panic!("a probe ack");
    };
    let ack = ack.unauthenticated();
    assert!(!ack.registered);
    assert_eq!(ack.relay_epoch, 8);

    // A forged probe from A's address is dropped.
    let mut forged = Probe {
        client: s.a.key,
        timestamp: 79,
    }
    .seal(&s.b.keys);
    assert_eq!(
        s.router.handle(s.now, s.a.endpoint, &mut forged),
        Verdict::Drop(DropReason::ProbeBadMac)
    );
}

/// A spoofed transport flood from many sources would make the relay answer
/// nearly every datagram; hints are capped in total too.
#[test]
fn hints_are_capped_in_total_not_only_per_ip() {
    let now = Instant::now();
    let mut router = router(now);
    let hints = (0..20_000u32)
        .filter(|i| {
            let spoofed = SocketAddr::new(std::net::Ipv4Addr::from(0x0A00_0000 + i).into(), 9);
            let mut miss = [&[4u8, 0, 0, 0][..], &[0; 28]].concat();
            matches!(router.handle(now, spoofed, &mut miss), Verdict::Reply(_))
        })
        .count();
    assert_eq!(hints, 5_000);
    assert_eq!(router.metrics().dropped(DropReason::NoRoute), 20_000);
}

/// Found by the router_sequences fuzz target: B withdrew its consent while
/// A's initiation was pending; B's response then still installed a route
/// pair between peers that no longer both consent.
#[test]
fn a_response_after_consent_was_withdrawn_installs_nothing() {
    let now = Instant::now();
    let mut router = router(now);
    let (a, mut b) = pair(&mut router, now);
    let (mut ab, mut ba) = (a.tunnel_to(&b, 1), b.tunnel_to(&a, 2));
    let mut init = initiation(&mut ab);
    assert_eq!(
        router.handle(now, a.endpoint, &mut init),
        Verdict::Forward(b.endpoint)
    );
    let mut response = deliver(&mut ba, &init).expect("B answers");
    register(&mut router, now, &mut b, &[]);
    assert_eq!(
        router.handle(now, b.endpoint, &mut response),
        Verdict::Drop(DropReason::NoPendingHandshake)
    );
    assert_eq!(router.route_count(), 0);
}
