//! LAN game discovery in the engine, on the simulated network with real
//! relay routers (`docs/lan-discovery.md`): a broadcast or multicast packet
//! from one client's TUN reaches every other client's TUN unchanged and
//! exactly once; link control stays local; a storm is capped at the
//! sender and counted; a peer that doesn't cap itself is capped by its
//! receivers.

// The simulator is shared with tests/engine.rs, which uses all of it.
#[allow(dead_code)]
mod sim;

use std::net::Ipv4Addr;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use lanrage_client_core::{DiscoveryConfig, DropReason};
use lanrage_proto::x25519::PublicKey;
use sim::{client_secret, ipv4_udp_ports, relay_addr, virtual_ip, Link, Sim};

const MINECRAFT: Ipv4Addr = Ipv4Addr::new(224, 0, 2, 60);

/// Three clients, one relay 10 ms from each.
fn three(discovery: [DiscoveryConfig; 3]) -> Sim {
    let links = vec![vec![Link::ms(10)]; 3];
    let mut sim = Sim::with_discovery(7, &links, &discovery);
    sim.run_for(Duration::from_secs(2));
    sim
}

fn copies_of(sim: &Sim, c: usize, packet: &[u8]) -> usize {
    sim.clients[c]
        .received
        .iter()
        .filter(|(_, p)| p == packet)
        .count()
}

fn peer_counts(sim: &Sim, c: usize, peer: &str) -> (u64, u64) {
    let status = sim.clients[c].engine.status(sim.now);
    let row = status
        .peers
        .iter()
        .find(|p| p.name == peer)
        .expect("a peer row");
    (row.discovery_sent, row.discovery_received)
}

#[test]
fn a_broadcast_reaches_every_other_member_once_unchanged() {
    let mut sim = three([DiscoveryConfig::default(); 3]);
    let packets = [
        // Minecraft's announcement from an ephemeral port.
        ipv4_udp_ports(
            virtual_ip(0),
            43_210,
            MINECRAFT,
            4445,
            b"[MOTD]x[/MOTD][AD]25565[/AD]",
        ),
        // Warcraft III's search, source port 6112 kept.
        ipv4_udp_ports(
            virtual_ip(0),
            6112,
            Ipv4Addr::BROADCAST,
            6112,
            b"\xf7\x2f\x10\x00",
        ),
        // The subnet's broadcast, mDNS and SSDP.
        ipv4_udp_ports(
            virtual_ip(0),
            27_960,
            Ipv4Addr::new(10, 66, 255, 255),
            27_960,
            b"q3",
        ),
        ipv4_udp_ports(
            virtual_ip(0),
            5353,
            Ipv4Addr::new(224, 0, 0, 251),
            5353,
            b"mdns",
        ),
        ipv4_udp_ports(
            virtual_ip(0),
            50_000,
            Ipv4Addr::new(239, 255, 255, 250),
            1900,
            b"ssdp",
        ),
    ];
    for packet in &packets {
        sim.send_raw(0, packet);
    }
    sim.run_for(Duration::from_millis(500));
    for packet in &packets {
        assert_eq!(copies_of(&sim, 1, packet), 1, "client2");
        assert_eq!(copies_of(&sim, 2, packet), 1, "client3");
        assert_eq!(copies_of(&sim, 0, packet), 0, "the sender gets none back");
    }
    assert_eq!(peer_counts(&sim, 0, "client2"), (5, 0));
    assert_eq!(peer_counts(&sim, 0, "client3"), (5, 0));
    assert_eq!(peer_counts(&sim, 1, "client1"), (0, 5));
    // Copies are not sent on: the receivers sent nothing to anyone.
    assert_eq!(peer_counts(&sim, 1, "client3"), (0, 0));
    assert_eq!(peer_counts(&sim, 2, "client2"), (0, 0));
}

#[test]
fn link_control_and_foreign_sources_stay_home() {
    let mut sim = three([DiscoveryConfig::default(); 3]);
    // An IGMPv3 report (protocol 2) and a UDP packet to all-hosts.
    let mut igmp = ipv4_udp_ports(virtual_ip(0), 1, Ipv4Addr::new(224, 0, 0, 22), 1, b"igmp");
    igmp[9] = 2;
    let all_hosts = ipv4_udp_ports(virtual_ip(0), 1, Ipv4Addr::new(224, 0, 0, 1), 1, b"x");
    // A broadcast from an address that isn't ours (a socket bound to a LAN
    // address that followed the route).
    let foreign = ipv4_udp_ports(
        Ipv4Addr::new(192, 168, 1, 20),
        6112,
        Ipv4Addr::BROADCAST,
        6112,
        b"lan",
    );
    for packet in [&igmp, &all_hosts, &foreign] {
        sim.send_raw(0, packet);
    }
    sim.run_for(Duration::from_millis(500));
    for c in [1, 2] {
        assert!(sim.clients[c].received.is_empty(), "client{}", c + 1);
    }
    let engine = &sim.clients[0].engine;
    assert_eq!(engine.dropped(DropReason::LocalOnly), 2);
    assert_eq!(engine.dropped(DropReason::ForeignSource), 1);
}

#[test]
fn a_storm_is_capped_at_the_sender_and_unicast_keeps_flowing() {
    let config = DiscoveryConfig {
        enabled: true,
        per_second: 50,
        burst: 20,
    };
    let mut sim = three([config; 3]);
    // 1,000 broadcasts a second for 2 s, and a ping every 100 ms.
    for i in 0..2_000u32 {
        let packet = ipv4_udp_ports(
            virtual_ip(0),
            6112,
            Ipv4Addr::BROADCAST,
            6112,
            &i.to_be_bytes(),
        );
        sim.send_raw(0, &packet);
        if i % 100 == 0 {
            sim.send_packet(1, 2, format!("game{i}").as_bytes());
        }
        sim.run_for(Duration::from_millis(1));
    }
    sim.run_for(Duration::from_millis(500));
    let received = |c: usize| {
        sim.clients[c]
            .received
            .iter()
            .filter(|(_, p)| p.get(16..20) == Some(&[255, 255, 255, 255][..]))
            .count() as u64
    };
    // 20 at once, then 50 a second for 2 s: 120 (-1 at the edge: the last
    // packet leaves at 1.999 s).
    let cap = 20 + 50 * 2;
    for c in [1, 2] {
        let got = received(c);
        assert!((cap - 1..=cap + 1).contains(&got), "client{}: {got}", c + 1);
    }
    let dropped = sim.clients[0]
        .engine
        .dropped(DropReason::DiscoveryRateLimited);
    assert_eq!(dropped + received(1), 2_000);
    // The others' game traffic: every packet arrived.
    assert_eq!(sim.received_with(2, b"game").len(), 20);
}

#[test]
fn a_member_that_does_not_cap_itself_is_capped_by_its_receivers() {
    let open = DiscoveryConfig {
        enabled: true,
        per_second: 10_000,
        burst: 10_000,
    };
    let strict = DiscoveryConfig {
        enabled: true,
        per_second: 10,
        burst: 5,
    };
    let off = DiscoveryConfig {
        enabled: false,
        ..DiscoveryConfig::default()
    };
    let mut sim = three([open, strict, off]);
    for i in 0..100u32 {
        let packet = ipv4_udp_ports(virtual_ip(0), 1, MINECRAFT, 4445, &i.to_be_bytes());
        sim.send_raw(0, &packet);
    }
    sim.run_for(Duration::from_millis(500));
    // The 100 left together (queued in boringtun until the first
    // handshake) and arrive together: client2 admits twice its burst of 5
    // (its allowance for bunching on the way).
    let admitted = sim.clients[1].received.len() as u64;
    assert_eq!(admitted, 10);
    let refused = sim.clients[1]
        .engine
        .dropped(DropReason::PeerDiscoveryRateLimited);
    assert_eq!(admitted + refused, 100);
    // client3 has discovery off: nothing gets in, all of it counted.
    assert!(sim.clients[2].received.is_empty());
    assert_eq!(
        sim.clients[2]
            .engine
            .dropped(DropReason::UnexpectedDestination),
        100
    );
    // And with it off, its own broadcasts go nowhere.
    let packet = ipv4_udp_ports(virtual_ip(2), 1, Ipv4Addr::BROADCAST, 1, b"x");
    sim.send_raw(2, &packet);
    sim.run_for(Duration::from_millis(200));
    assert!(!sim.clients[0].received.iter().any(|(_, p)| p == &packet));
}

#[test]
fn a_received_copy_never_goes_out_again() {
    let mut sim = three([DiscoveryConfig::default(); 3]);
    let packet = ipv4_udp_ports(virtual_ip(0), 4445, MINECRAFT, 4445, b"announce");
    sim.send_raw(0, &packet);
    sim.run_for(Duration::from_millis(300));
    assert_eq!(copies_of(&sim, 1, &packet), 1);
    // Even if client2's kernel sent the copy back into its TUN, its
    // engine would not copy it on: the source is client1's address.
    sim.send_raw(1, &packet);
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.clients[1].engine.dropped(DropReason::ForeignSource), 1);
    assert_eq!(copies_of(&sim, 2, &packet), 1, "client3 got it once");
    assert_eq!(copies_of(&sim, 0, &packet), 0, "and the sender never");
}

/// A member whose client is modified: its own key, its own session with
/// client2 (a raw boringtun Tunn through the relay's address), sending
/// whatever it likes inside.
#[test]
fn a_modified_member_cannot_reach_past_us_or_send_link_control() {
    let mut sim = three([DiscoveryConfig::default(); 3]);
    let victim = PublicKey::from(&client_secret(1));
    let mut tunn = Tunn::new(client_secret(0), victim, None, None, 0x00ab_cd00, None);
    let mut buf = vec![0u8; 2048];
    let relay = relay_addr(0);
    let now = sim.now;
    let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false) else {
        panic!("an initiation");
    };
    let init = init.to_vec();
    let engine = &mut sim.clients[1].engine;
    engine.handle_udp(now, relay, &init);
    let mut response = None;
    while let Some(t) = engine.poll_transmit() {
        if t.payload.first() == Some(&2) {
            response = Some(t.payload);
        }
    }
    let response = response.expect("client2 answers the handshake");
    let _ = tunn.decapsulate(None, &response, &mut buf);
    let mut send = |engine: &mut lanrage_client_core::Engine, packet: &[u8]| {
        let mut out = vec![0u8; 2048];
        match tunn.encapsulate(packet, &mut out) {
            TunnResult::WriteToNetwork(datagram) => engine.handle_udp(now, relay, datagram),
            other => panic!("encapsulate: {other:?}"),
        }
    };
    let engine = &mut sim.clients[1].engine;
    // Through us to another address (our LAN, the internet).
    let onward = ipv4_udp_ports(virtual_ip(0), 1, Ipv4Addr::new(192, 168, 1, 1), 53, b"x");
    send(engine, &onward);
    // IGMP and all-hosts: link control stays on the link it came from.
    let mut igmp = ipv4_udp_ports(virtual_ip(0), 1, Ipv4Addr::new(224, 0, 0, 22), 1, b"igmp");
    igmp[9] = 2;
    send(engine, &igmp);
    let all_hosts = ipv4_udp_ports(virtual_ip(0), 1, Ipv4Addr::new(224, 0, 0, 1), 1, b"x");
    send(engine, &all_hosts);
    // A game's broadcast is fine.
    let broadcast = ipv4_udp_ports(virtual_ip(0), 6112, Ipv4Addr::BROADCAST, 6112, b"search");
    send(engine, &broadcast);
    let mut written = Vec::new();
    while let Some(packet) = engine.poll_tun() {
        written.push(packet);
    }
    assert_eq!(written, vec![broadcast]);
    assert_eq!(engine.dropped(DropReason::UnexpectedDestination), 1);
    assert_eq!(engine.dropped(DropReason::LocalOnly), 2);
}
