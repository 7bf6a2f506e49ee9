//! The engine against real relay routers on a simulated network (virtual
//! time, seeded delay, jitter and loss): registration, the relay choice,
//! failover when the relay in use dies, recovery after a relay restart, and
//! hostile input.

mod sim;

use std::time::Duration;

use lanrage_client_core::{DropReason, Event, PeerPath};
use sim::{Link, Sim};

const PING: &[u8] = b"ping";

/// Two clients, two relays: relay1 is 20 ms away from both, relay2 5 ms.
fn two_by_two(seed: u64) -> Sim {
    Sim::new(
        seed,
        2,
        &[
            vec![Link::ms(20), Link::ms(5)],
            vec![Link::ms(20), Link::ms(5)],
        ],
    )
}

/// A ping stream: one packet from 0 to 1 every `every`, for `duration`,
/// each carrying its sequence number.
fn ping_stream(sim: &mut Sim, every: Duration, duration: Duration) -> usize {
    let count = (duration.as_millis() / every.as_millis()) as usize;
    for seq in 0..count {
        let mut payload = PING.to_vec();
        payload.extend_from_slice(&(seq as u32).to_be_bytes());
        sim.send_packet(0, 1, &payload);
        sim.run_for(every);
    }
    count
}

/// Pings client 0 → 1 for a second, does `disrupt`, pings on for
/// `then`, and returns how long after the disruption the first ping
/// arrived.
fn gap_after(sim: &mut Sim, disrupt: impl FnOnce(&mut Sim), then: Duration) -> Duration {
    ping_stream(sim, Duration::from_millis(20), Duration::from_secs(1));
    let before = sim.received_with(1, PING).len();
    disrupt(sim);
    let at = sim.now;
    ping_stream(sim, Duration::from_millis(20), then);
    let resumed = sim
        .received_with(1, PING)
        .get(before)
        .expect("traffic resumed")
        .0;
    resumed.saturating_duration_since(at)
}

/// The longest time between two consecutive pings arriving at client 1.
fn longest_gap(sim: &Sim) -> Duration {
    let arrivals: Vec<_> = sim
        .received_with(1, PING)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or(Duration::MAX)
}

#[test]
fn clients_register_with_every_relay_and_ping_through_the_nearest() {
    let mut sim = two_by_two(1);
    sim.run_for(Duration::from_secs(1));
    for c in 0..2 {
        let status = sim.clients[c].engine.status(sim.now);
        assert!(status.relays.iter().all(|r| r.registered), "{status:?}");
        let rtt = |name: &str| {
            status
                .relays
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.rtt)
                .expect("measured")
        };
        assert_eq!(rtt("relay1"), Duration::from_millis(40));
        assert_eq!(rtt("relay2"), Duration::from_millis(10));
    }
    let sent = ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(1));
    let got = sim.received_with(1, PING);
    // The first ping waits for the handshake (one round trip through relay2).
    assert!(got.len() >= sent - 1, "{} of {sent}", got.len());
    let first = got.first().expect("a ping arrived").0;
    assert!(
        first.saturating_duration_since(sim.start) < Duration::from_millis(1100),
        "first ping after {:?}",
        first - sim.start
    );
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
    assert_eq!(sim.path_of(1, 0).as_deref(), Some("relay relay2"));
    assert_eq!(
        sim.clients[1]
            .engine
            .dropped(DropReason::SpoofedInnerSource),
        0
    );
    // The path is measured while it carries traffic (a ping a second): 5 ms
    // each way to relay2 and on to the peer is a 20 ms round trip, with no
    // jitter.
    ping_stream(
        &mut sim,
        Duration::from_millis(20),
        Duration::from_millis(1100),
    );
    let peer = sim.clients[0].engine.status(sim.now).peers.remove(0);
    assert_eq!(peer.rtt, Some(Duration::from_millis(20)), "{peer:?}");
    assert_eq!(peer.jitter, Duration::ZERO);
    assert_eq!(peer.loss, 0.0);
}

#[test]
fn failover_moves_both_clients_when_the_relay_in_use_dies() {
    let mut sim = two_by_two(2);
    sim.run_for(Duration::from_secs(1));
    let gap = gap_after(
        &mut sim,
        |sim| {
            assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
            sim.kill_relay(1);
        },
        Duration::from_secs(4),
    );
    assert!(gap <= Duration::from_millis(1500), "failover gap {gap:?}");
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay1"));
    assert!(sim.clients[0]
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::RelayUnreachable { relay } if relay == "relay2")));
    // Client 1 only receives, and still moved (its probes saw relay2 die).
    assert_eq!(sim.path_of(1, 0).as_deref(), Some("relay relay1"));
    println!("failover gap: {gap:?}");
}

#[test]
fn a_relay_restart_costs_under_a_second_even_for_the_receiving_side() {
    let mut sim = two_by_two(3);
    sim.run_for(Duration::from_secs(1));
    let gap = gap_after(&mut sim, |sim| sim.restart_relay(1), Duration::from_secs(3));
    assert!(gap <= Duration::from_secs(1), "restart gap {gap:?}");
    // Back through the restarted relay (still the nearest), both ways.
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
    assert!(sim.clients[1].events.iter().any(|(_, e)| matches!(
        e,
        Event::RelayRestarted { .. } | Event::RelayRegistered { .. }
    )));
    println!("restart gap: {gap:?}");
}

#[test]
fn jitter_on_the_relay_in_use_never_flaps_the_path() {
    // The relay in use is 25 ± 20 ms away each way, with 2 % loss; the other
    // a steady 30 ms. On average the jittery one is better (RTT 50 against
    // 60 ms), and single samples swing from 10 to 90 ms: ten minutes of it,
    // and the path is chosen once and never moves.
    let mut sim = two_by_two(4);
    let jittery = Link {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(40),
        loss: 0.02,
    };
    for c in 0..2 {
        sim.set_link(c, 0, Link::ms(30));
        sim.set_link(c, 1, jittery);
    }
    sim.run_for(Duration::from_secs(2));
    ping_stream(
        &mut sim,
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    for c in 0..2 {
        let changes: Vec<_> = sim.clients[c]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::PathChanged { .. }))
            .collect();
        let others: Vec<_> = sim.clients[c]
            .events
            .iter()
            .filter(|(_, e)| !matches!(e, Event::PathChanged { .. }))
            .map(|(at, e)| (*at - sim.start, e))
            .collect();
        assert_eq!(
            changes.len(),
            1,
            "client {c}: one path, chosen once: {changes:?}\nother events: {others:?}"
        );
    }
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
    // 2 % loss at 100 ms spacing: a gap of a few pings at most, never a stall.
    let gap = longest_gap(&sim);
    assert!(gap < Duration::from_millis(800), "longest gap {gap:?}");
    // Jitter reorders signals (vectors, pings, pongs sent close together):
    // each is still opened once, none is taken for a replay.
    for c in 0..2 {
        let refused = sim.clients[c].engine.dropped(DropReason::BadControl);
        assert_eq!(refused, 0, "client {c} refused {refused} signals");
    }
}

#[test]
fn garbage_and_forgeries_are_counted_drops() {
    let mut sim = two_by_two(5);
    sim.run_for(Duration::from_secs(1));
    let relay = sim.relays[1].addr;
    let stranger = "192.0.2.99:1".parse().expect("addr");
    let now = sim.now;
    let engine = &mut sim.clients[0].engine;
    engine.handle_udp(now, stranger, b"hello");
    for bytes in [
        &b""[..],
        b"\x01",
        b"LRG!\x02\x02\0\0",
        b"LRG!\x02\x06\0\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &[
            4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
            9, 9, 9,
        ],
        &[1u8; 148],
    ] {
        engine.handle_udp(now, relay, bytes);
    }
    let status = engine.status(now);
    let total: u64 = status.drops.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 7, "{:?}", status.drops);
    assert_eq!(engine.dropped(DropReason::UnknownSource), 1);
    // Still works afterwards.
    ping_stream(
        &mut sim,
        Duration::from_millis(20),
        Duration::from_millis(500),
    );
    assert!(!sim.received_with(1, PING).is_empty());
}

#[test]
fn both_clients_move_together_when_their_relay_gets_slower() {
    let mut sim = two_by_two(6);
    sim.run_for(Duration::from_secs(2));
    ping_stream(&mut sim, Duration::from_millis(50), Duration::from_secs(3));
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
    // A delaying forwarder in front of relay2: 5 ms becomes 60 ms each way.
    let slowed = sim.now;
    sim.set_link(0, 1, Link::ms(60));
    sim.set_link(1, 1, Link::ms(60));
    ping_stream(&mut sim, Duration::from_millis(50), Duration::from_secs(20));
    for (c, peer) in [(0, 1), (1, 0)] {
        assert_eq!(
            sim.path_of(c, peer).as_deref(),
            Some("relay relay1"),
            "client {c}"
        );
        let moves: Vec<_> = sim.clients[c]
            .events
            .iter()
            .filter(|(at, e)| *at > slowed && matches!(e, Event::PathChanged { .. }))
            .collect();
        assert_eq!(moves.len(), 1, "client {c} moved once: {moves:?}");
    }
    // Traffic kept flowing through the move.
    assert!(
        longest_gap(&sim) < Duration::from_millis(600),
        "{:?}",
        longest_gap(&sim)
    );
}

#[test]
fn the_pair_picks_the_relay_best_for_both_not_for_one() {
    // relay1 is next to client 0 but far from client 1; relay2 is in the
    // middle. Alone, client 0 would take relay1 (5 + 80 = 85 ms one way);
    // together they take relay2 (30 + 30 = 60 ms).
    let mut sim = Sim::new(
        7,
        2,
        &[
            vec![Link::ms(5), Link::ms(30)],
            vec![Link::ms(80), Link::ms(30)],
        ],
    );
    sim.run_for(Duration::from_secs(3));
    ping_stream(&mut sim, Duration::from_millis(50), Duration::from_secs(15));
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
    assert_eq!(sim.path_of(1, 0).as_deref(), Some("relay relay2"));
}

#[test]
fn a_peer_that_comes_up_later_is_reached_soon_after_it_registers() {
    let mut sim = two_by_two(8);
    // Client 1's network is down for 2 s while client 0 already pings.
    sim.set_offline(1, true);
    sim.run_for(Duration::from_millis(500));
    for _ in 0..30 {
        sim.send_packet(0, 1, PING);
        sim.run_for(Duration::from_millis(50));
    }
    sim.set_offline(1, false);
    let online = sim.now;
    ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(4));
    let registered = sim.clients[1]
        .events
        .iter()
        .find(|(at, e)| *at >= online && matches!(e, Event::RelayRegistered { .. }))
        .map(|(at, _)| *at)
        .expect("client 1 registered");
    let first = sim
        .received_with(1, PING)
        .first()
        .expect("a ping arrived")
        .0;
    let wait = first.saturating_duration_since(registered);
    // Not boringtun's 5 s retry: the engine retries unanswered handshakes
    // after 200 ms (doubling), and at once when the peer's vector arrives.
    assert!(
        wait < Duration::from_millis(1500),
        "first ping {wait:?} after registering"
    );
    println!("first ping {wait:?} after the late peer registered");
}

#[test]
fn ping_is_answered_through_the_path_with_its_rtt() {
    let mut sim = two_by_two(9);
    sim.run_for(Duration::from_secs(2));
    ping_stream(
        &mut sim,
        Duration::from_millis(50),
        Duration::from_millis(500),
    );
    let id = sim.ping(0, "client2").expect("a peer and a relay");
    sim.run_for(Duration::from_millis(100));
    let pong = sim.clients[0].events.iter().find_map(|(_, e)| match e {
        Event::Pong {
            id: got,
            rtt,
            path,
            peer,
        } if *got == id => Some((*rtt, path.to_string(), peer.clone())),
        _ => None,
    });
    let (rtt, path, peer) = pong.expect("a pong");
    assert_eq!((path.as_str(), peer.as_str()), ("relay relay2", "client2"));
    assert_eq!(rtt, Duration::from_millis(20), "5 ms each way, twice");
    assert!(sim.ping(0, "nobody").is_none());
}

#[test]
fn an_idle_client_is_quiet() {
    let mut sim = two_by_two(10);
    sim.run_for(Duration::from_secs(2));
    ping_stream(&mut sim, Duration::from_millis(50), Duration::from_secs(2));
    // Quiet from here: after ACTIVE_FOR (30 s) the client only keeps its
    // registrations, probes and vectors alive.
    sim.run_for(Duration::from_secs(40));
    let (sent, wakeups) = (sim.clients[0].sent, sim.clients[0].wakeups);
    sim.run_for(Duration::from_secs(60));
    let sent = sim.clients[0].sent - sent;
    let wakeups = sim.clients[0].wakeups - wakeups;
    println!("idle minute: {sent} datagrams sent, {wakeups} wake-ups");
    // Two relays probed every 5 s, refreshed every 20-25 s, one vector
    // refresh every 20 s: well under one datagram a second.
    assert!(sent <= 40, "{sent} datagrams in an idle minute");
    // boringtun's timers once a second, the vector check once a second,
    // the relays' own timers: a few wake-ups a second at most.
    assert!(wakeups <= 180, "{wakeups} wake-ups in an idle minute");
    // And it wakes up again: a packet now gets through at once.
    let before = sim.received_with(1, PING).len();
    sim.send_packet(0, 1, PING);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.received_with(1, PING).len(), before + 1);
}

#[test]
fn replayed_and_forged_signals_are_counted_drops() {
    let mut sim = two_by_two(11);
    sim.run_for(Duration::from_secs(3));
    let (src, captured) = sim
        .last_signal
        .get(&1)
        .cloned()
        .expect("a vector reached client 1");
    let now = sim.now;
    let engine = &mut sim.clients[1].engine;
    let before = engine.dropped(DropReason::BadControl) + engine.dropped(DropReason::Malformed);
    // The same signal again, as an attacker on the path would send it.
    engine.handle_udp(now, src, &captured);
    // Every single-bit change of it: the seal or the header gives it away.
    for i in 0..captured.len() {
        let mut forged = captured.clone();
        forged[i] ^= 0x01;
        engine.handle_udp(now, src, &forged);
    }
    let after = engine.dropped(DropReason::BadControl) + engine.dropped(DropReason::Malformed);
    assert_eq!(
        after - before,
        1 + captured.len() as u64,
        "every replay and forgery is one counted drop"
    );
    // And the client still works.
    ping_stream(&mut sim, Duration::from_millis(50), Duration::from_secs(1));
    assert!(!sim.received_with(1, PING).is_empty());
}

/// Peers configured with each other's endpoints talk straight to each
/// other: no WireGuard datagram goes through a relay, `status` says
/// `direct`, and losing every relay doesn't disturb them.
#[test]
fn peers_with_endpoints_talk_directly_and_need_no_relay() {
    let mut sim = Sim::new_direct(
        7,
        2,
        &[
            vec![Link::ms(20), Link::ms(5)],
            vec![Link::ms(20), Link::ms(5)],
        ],
        Link::ms(2),
    );
    let sent = ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(1));
    let got = sim.received_with(1, PING);
    assert!(got.len() >= sent - 1, "{} of {sent}", got.len());
    // One direct round trip (4 ms) for the handshake, not one via a relay.
    let first = got.first().expect("a ping arrived").0;
    assert!(
        first.saturating_duration_since(sim.start) <= Duration::from_millis(25),
        "first ping after {:?}",
        first - sim.start
    );
    for (c, peer) in [(0, 1), (1, 0)] {
        let direct = format!("direct {}", sim.client_addr(peer));
        assert_eq!(sim.path_of(c, peer), Some(direct));
    }
    assert_eq!(sim.wireguard_to_relays, 0);
    assert!(sim.wireguard_direct >= sent as u64);

    sim.kill_relay(0);
    sim.kill_relay(1);
    ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(5));
    assert!(
        longest_gap(&sim) <= Duration::from_millis(21),
        "{:?}",
        longest_gap(&sim)
    );
    assert_eq!(sim.wireguard_to_relays, 0);
}

/// A peer's endpoint may send only WireGuard; anything else from it is a
/// counted drop, and the session carries on.
#[test]
fn a_peer_endpoint_sends_only_wireguard() {
    let mut sim = Sim::new_direct(8, 2, &[vec![Link::ms(5)], vec![Link::ms(5)]], Link::ms(2));
    ping_stream(
        &mut sim,
        Duration::from_millis(20),
        Duration::from_millis(200),
    );
    let from = sim.client_addr(0);
    let before = sim.clients[1].engine.dropped(DropReason::Malformed);
    let now = sim.now;
    for junk in [&b"LRG!\x01\x07garbage"[..], &[0u8; 64], &[0x00, 0x01, 0, 0]] {
        sim.clients[1].engine.handle_udp(now, from, junk);
    }
    assert_eq!(
        sim.clients[1].engine.dropped(DropReason::Malformed),
        before + 3
    );
    let got = sim.received_with(1, PING).len();
    ping_stream(
        &mut sim,
        Duration::from_millis(20),
        Duration::from_millis(200),
    );
    assert!(sim.received_with(1, PING).len() >= got + 9);
}

/// The first PathChanged event to a direct path at client `c`, and when.
fn went_direct(sim: &Sim, c: usize) -> Option<std::time::Instant> {
    sim.clients[c].events.iter().find_map(|(at, e)| match e {
        Event::PathChanged {
            path: PeerPath::Direct(_),
            ..
        } => Some(*at),
        _ => None,
    })
}

/// Two clients behind port-restricted filters, no endpoint configured:
/// traffic starts on the relay, the candidates they exchange over signaling
/// punch a direct path within a second, the upgrade loses nothing, and
/// when the direct path dies traffic is back on the relay within 1.5 s.
#[test]
fn punching_finds_the_direct_path_and_falls_back_when_it_dies() {
    let mut sim = Sim::punchable(
        11,
        2,
        &[
            vec![Link::ms(20), Link::ms(5)],
            vec![Link::ms(20), Link::ms(5)],
        ],
        Link::ms(2),
        true,
    );
    let sent = ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(3));
    for c in 0..2 {
        let at = went_direct(&sim, c).expect("a direct path");
        assert!(
            at.saturating_duration_since(sim.start) <= Duration::from_secs(1),
            "client {c} direct after {:?}",
            at - sim.start
        );
        let direct = format!("direct {}", sim.client_addr(1 - c));
        assert_eq!(sim.path_of(c, 1 - c), Some(direct));
    }
    let got = sim.received_with(1, PING);
    let seqs: Vec<u32> = got
        .iter()
        .map(|(_, p)| u32::from_be_bytes(p[p.len() - 4..].try_into().expect("seq")))
        .collect();
    // The first ping goes at the very start, before any relay has
    // registered us, and may be dropped (`no_relay`), as in the tests
    // above; after it, none is lost, across the upgrade too.
    let missing: Vec<u32> = (1..sent as u32).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost {missing:?} of {sent}");
    let direct_before = sim.wireguard_direct;
    ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(1));
    assert!(sim.wireguard_direct >= direct_before + 50);
    let status = sim.clients[0].engine.status(sim.now).peers.remove(0);
    assert_eq!(status.rtt, Some(Duration::from_millis(4)), "{status:?}");

    let gap = gap_after(
        &mut sim,
        |sim| sim.set_direct_link(0, 1, None),
        Duration::from_secs(4),
    );
    assert!(
        gap <= Duration::from_millis(1500),
        "back on the relay after {gap:?}"
    );
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay2"));
    assert_eq!(sim.path_of(1, 0).as_deref(), Some("relay relay2"));
}

/// When the clients can't reach each other directly, they stay on the
/// relay and punching stops after its schedule (no polling).
#[test]
fn without_a_direct_link_punching_gives_up_quietly() {
    let mut sim = Sim::punchable(
        12,
        2,
        &[vec![Link::ms(5)], vec![Link::ms(5)]],
        Link::ms(2),
        true,
    );
    sim.set_direct_link(0, 1, None);
    ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(2));
    assert_eq!(went_direct(&sim, 0), None);
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay1"));
    // Quiet for 35 s (no longer active), then count a minute.
    sim.run_for(Duration::from_secs(35));
    let sent_before = sim.clients[0].sent;
    sim.run_for(Duration::from_secs(60));
    let probes = sim.clients[0].sent - sent_before;
    // Idle on the relay: registration refreshes and relay probes only.
    assert!(probes < 40, "{probes} datagrams in an idle minute");
}

/// A network change (a new default route, say) drops the punched path at
/// once, and the clients punch a new one as soon as the relay has them
/// registered again; traffic carries on meanwhile.
#[test]
fn a_network_change_goes_back_to_the_relay_and_punches_again() {
    let mut sim = Sim::punchable(
        13,
        2,
        &[vec![Link::ms(5)], vec![Link::ms(5)]],
        Link::ms(2),
        true,
    );
    ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(1));
    let direct = format!("direct {}", sim.client_addr(1));
    assert_eq!(sim.path_of(0, 1), Some(direct.clone()));
    let before = sim.received_with(1, PING).len();
    let now = sim.now;
    sim.clients[0].engine.network_changed(now);
    assert_eq!(sim.path_of(0, 1).as_deref(), Some("relay relay1"));
    let sent = ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(2));
    assert_eq!(sim.path_of(0, 1), Some(direct));
    let got = sim.received_with(1, PING).len() - before;
    assert!(got + 2 >= sent, "{got} of {sent} across the change");
}

/// Path probes and STUN are the two kinds of datagram the client takes
/// from anywhere. A replayed or forged probe, one from a stranger's key,
/// STUN nobody asked for: each is a counted drop, none is answered, and the
/// direct path carries on.
#[test]
fn forged_replayed_and_stray_probes_and_stun_are_counted_and_never_answered() {
    let mut sim = Sim::punchable(
        14,
        2,
        &[vec![Link::ms(5)], vec![Link::ms(5)]],
        Link::ms(2),
        true,
    );
    ping_stream(&mut sim, Duration::from_millis(20), Duration::from_secs(1));
    assert!(sim.path_of(1, 0).is_some_and(|p| p.starts_with("direct ")));
    let (src, captured) = sim
        .last_probe
        .get(&1)
        .cloned()
        .expect("a probe reached client 1");
    let stranger: std::net::SocketAddr = "192.0.2.99:4444".parse().expect("addr");
    let now = sim.now;
    let engine = &mut sim.clients[1].engine;
    while engine.poll_transmit().is_some() {}
    let drops = |e: &lanrage_client_core::Engine| {
        // (A bit flip in the magic or the type makes it no probe at all:
        // from a stranger, that is `unknown_source`.)
        e.dropped(DropReason::BadControl)
            + e.dropped(DropReason::Malformed)
            + e.dropped(DropReason::Stun)
            + e.dropped(DropReason::UnknownSource)
    };
    let before = drops(engine);
    let mut sent = 0;
    // The same probe again, from where it came and from a stranger.
    engine.handle_udp(now, src, &captured);
    engine.handle_udp(now, stranger, &captured);
    sent += 2;
    // Every single-bit change of it.
    for i in 0..captured.len() {
        let mut forged = captured.clone();
        forged[i] ^= 0x01;
        engine.handle_udp(now, stranger, &forged);
        sent += 1;
    }
    // STUN: a Binding response for no request of ours, and junk with the
    // magic cookie.
    let mut stun = vec![0x01, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    stun.extend([7u8; 12]);
    engine.handle_udp(now, stranger, &stun);
    stun[3] = 200;
    engine.handle_udp(now, stranger, &stun);
    sent += 2;
    assert_eq!(drops(engine) - before, sent, "every one a counted drop");
    assert!(engine.poll_transmit().is_none(), "nothing answered");
    // And the direct path still carries traffic.
    let got = sim.received_with(1, PING).len();
    ping_stream(
        &mut sim,
        Duration::from_millis(20),
        Duration::from_millis(500),
    );
    assert!(sim.received_with(1, PING).len() >= got + 24);
    assert!(sim.path_of(1, 0).is_some_and(|p| p.starts_with("direct ")));
}
