//! The NAT lab (`tests/src/natlab.rs`, docs/nat-lab.md) proves its own
//! routers with plain UDP sockets and no LANrage code: each [`NatKind`]
//! maps and filters as it claims (seen from a reflector on the relay host's
//! two addresses and two ports), plain hole punching between two PCs works
//! exactly where [`NatKind::direct_possible`] says, a router without an
//! inbound firewall breaks it, same-LAN PCs reach each other on their LAN,
//! and a WAN address change mid-session moves the mapping. Root; skips
//! without it and fails under `LANRAGE_REQUIRE_PRIVILEGED=1`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Result;
use lanrage_test_support::privileged::or_skip;
use lanrage_tests::natlab::{
    self, recv_within, Endpoint, Filtering, Mapping, NatKind, NatLab, PortAllocation, Reflector,
    Side,
};

const REFLECTOR_PORT: u16 = 3478;
/// How long to wait for a datagram a router should drop. The lab's round
/// trip is well under a millisecond, so this is generous.
const FILTERED_WAIT: Duration = Duration::from_millis(300);
/// How long to wait at most for a datagram that should arrive (waiting
/// ends when it does): long, since the machine may be busy.
const ARRIVAL_WAIT: Duration = Duration::from_secs(2);

fn lab_or_skip(test: &str) -> bool {
    or_skip(test, natlab::available()).is_some()
}

#[test]
fn direct_possible_is_symmetric_and_matches_the_lab_notes() {
    use NatKind::*;
    for a in NatKind::ALL {
        for b in NatKind::ALL {
            assert_eq!(
                NatKind::direct_possible(a, b),
                NatKind::direct_possible(b, a)
            );
        }
    }
    // shared/LAB.md: cone ↔ cone works; symmetric ↔ full or restricted cone
    // works; symmetric ↔ port-restricted and symmetric ↔ symmetric need the
    // relay.
    for a in [FullCone, RestrictedCone, PortRestrictedCone] {
        for b in [FullCone, RestrictedCone, PortRestrictedCone] {
            assert!(NatKind::direct_possible(a, b));
        }
    }
    assert!(NatKind::direct_possible(Symmetric, FullCone));
    assert!(NatKind::direct_possible(Symmetric, RestrictedCone));
    assert!(!NatKind::direct_possible(Symmetric, PortRestrictedCone));
    assert!(!NatKind::direct_possible(Symmetric, Symmetric));
}

// ---- mapping and filtering of each kind ----

/// The mapping of PC A's socket at all four reflector endpoints, and which
/// of them may answer after the PC has sent to the primary endpoint only.
fn check_kind(kind: NatKind) -> Result<()> {
    let lab = NatLab::builder().nat(Side::A, kind).build()?;
    let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
    let router = lab.router(Side::A);
    let wan = router.wan_addr();

    // Mapping: one socket, four destinations.
    let socket = lab.pc(Side::A).udp_socket(40000)?;
    let seen = Endpoint::ALL
        .iter()
        .map(|&e| reflector.mapped_address(&socket, e))
        .collect::<Result<Vec<SocketAddr>>>()?;
    println!("MAPPING {kind:?}: primary, primary+1, alternate, alternate+1 saw {seen:?}");
    for s in &seen {
        assert_eq!(s.ip(), wan, "{kind:?}: every mapping is on the WAN address");
    }
    assert_eq!(
        reflector.mapped_address(&socket, Endpoint::Primary)?,
        seen[0],
        "{kind:?}: the same destination keeps its mapping"
    );
    match kind.mapping() {
        Mapping::EndpointIndependent => {
            assert!(
                seen.iter().all(|s| *s == seen[0]),
                "{kind:?}: one external port for every destination: {seen:?}"
            );
            // Masquerade keeps a free source port.
            assert_eq!(seen[0].port(), 40000);
        }
        Mapping::AddressAndPortDependent => {
            // Random ports: each inequality fails by chance with p = 1/64512,
            // so two alternatives per claim (p ≈ 2.4e-10).
            assert!(
                seen[0].port() != seen[1].port() || seen[2].port() != seen[3].port(),
                "{kind:?}: another destination port gets another mapping: {seen:?}"
            );
            assert!(
                seen[0].port() != seen[2].port() || seen[1].port() != seen[3].port(),
                "{kind:?}: another destination address gets another mapping: {seen:?}"
            );
        }
    }

    // Filtering: a fresh socket that has sent to primary:P only.
    let socket = lab.pc(Side::A).udp_socket(40001)?;
    reflector.mapped_address(&socket, Endpoint::Primary)?;
    for from in Endpoint::ALL {
        let admitted = matches!(
            (kind.filtering(), from),
            (_, Endpoint::Primary)
                | (Filtering::EndpointIndependent, _)
                | (Filtering::AddressDependent, Endpoint::PrimaryOtherPort)
        );
        let before = router.unsolicited_drops()?;
        let got = if admitted {
            // Retried: nothing should be lost here, but one lost datagram
            // must not fail the claim.
            let mut got = None;
            for _ in 0..3 {
                got = reflector.reply_from(&socket, Endpoint::Primary, from, ARRIVAL_WAIT)?;
                if got.is_some() {
                    break;
                }
            }
            got
        } else {
            reflector.reply_from(&socket, Endpoint::Primary, from, FILTERED_WAIT)?
        };
        let dropped = router.unsolicited_drops()? - before;
        println!("FILTERING {kind:?}: answer from {from:?}: {got:?}, router dropped {dropped}");
        if admitted {
            assert_eq!(got, Some(reflector.addr(from)), "{kind:?} lets {from:?} in");
            assert_eq!(dropped, 0, "{kind:?}: admitted, so not counted");
        } else {
            assert_eq!(got, None, "{kind:?} must filter {from:?}");
            assert_eq!(
                dropped, 1,
                "{kind:?}: the router's inbound firewall dropped the answer from {from:?}"
            );
        }
    }
    assert_eq!(reflector.ignored(), 0);
    Ok(())
}

#[test]
fn full_cone_maps_and_filters_endpoint_independently() -> Result<()> {
    if !lab_or_skip("full_cone_maps_and_filters_endpoint_independently") {
        return Ok(());
    }
    check_kind(NatKind::FullCone)
}

#[test]
fn restricted_cone_lets_in_only_contacted_addresses() -> Result<()> {
    if !lab_or_skip("restricted_cone_lets_in_only_contacted_addresses") {
        return Ok(());
    }
    check_kind(NatKind::RestrictedCone)
}

#[test]
fn port_restricted_cone_lets_in_only_contacted_addresses_and_ports() -> Result<()> {
    if !lab_or_skip("port_restricted_cone_lets_in_only_contacted_addresses_and_ports") {
        return Ok(());
    }
    check_kind(NatKind::PortRestrictedCone)
}

#[test]
fn symmetric_maps_each_destination_to_its_own_port() -> Result<()> {
    if !lab_or_skip("symmetric_maps_each_destination_to_its_own_port") {
        return Ok(());
    }
    check_kind(NatKind::Symmetric)
}

/// The symmetric router's other port allocators: in sequence (each new
/// flow the next port, what port prediction predicts), and at random
/// within a block (what lets the birthday test succeed every time).
#[test]
fn symmetric_routers_allocate_in_sequence_or_within_a_block() -> Result<()> {
    if !lab_or_skip("symmetric_routers_allocate_in_sequence_or_within_a_block") {
        return Ok(());
    }
    for (ports, port) in [
        (PortAllocation::Sequential, 40020),
        (PortAllocation::RandomIn(20000, 20511), 40021),
    ] {
        let lab = NatLab::builder()
            .nat(Side::A, NatKind::Symmetric)
            .ports(Side::A, ports)
            .build()?;
        let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
        let socket = lab.pc(Side::A).udp_socket(port)?;
        let seen = Endpoint::ALL
            .iter()
            .map(|&e| reflector.mapped_address(&socket, e).map(|a| a.port()))
            .collect::<Result<Vec<u16>>>()?;
        println!("{ports:?}: ports {seen:?}");
        match ports {
            PortAllocation::Sequential => {
                let steps: Vec<i32> = seen
                    .windows(2)
                    .map(|w| i32::from(w[1]) - i32::from(w[0]))
                    .collect();
                assert_eq!(steps, [1, 1, 1], "one flow, the next port: {seen:?}");
            }
            PortAllocation::RandomIn(lo, hi) => {
                assert!(seen.iter().all(|p| (lo..=hi).contains(p)), "{seen:?}");
            }
            PortAllocation::Random => {}
        }
    }
    Ok(())
}

// ---- hole punching with plain UDP ----

/// What each side heard from the other, and after how many rounds.
#[derive(Debug)]
struct Punch {
    first_heard: Option<SocketAddr>,
    second_heard: Option<SocketAddr>,
    rounds: usize,
}

impl Punch {
    fn direct(&self) -> bool {
        self.first_heard.is_some() && self.second_heard.is_some()
    }
}

/// Plain-UDP hole punching, "both send at once": `first` sends to
/// `first_to` (the other side's address as the reflector saw it), and once
/// that datagram has had time to reach the other router, `second` sends to
/// `second_to`; then both keep sending, each to the address it last heard
/// the other from (the peer-reflexive address), for at most 10 rounds.
/// Sending first matters only where a router has no inbound firewall.
fn punch(
    first: &UdpSocket,
    mut first_to: SocketAddr,
    second: &UdpSocket,
    mut second_to: SocketAddr,
) -> Result<Punch> {
    let mut first_heard = None;
    let mut second_heard = None;
    for round in 0..10 {
        first.send_to(b"punch from first", first_to)?;
        if round == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        second.send_to(b"punch from second", second_to)?;
        if let Some(from) = heard(first, b"punch from second")? {
            first_heard = Some(from);
            first_to = from;
        }
        if let Some(from) = heard(second, b"punch from first")? {
            second_heard = Some(from);
            second_to = from;
        }
        if first_heard.is_some() && second_heard.is_some() {
            return Ok(Punch {
                first_heard,
                second_heard,
                rounds: round + 1,
            });
        }
    }
    Ok(Punch {
        first_heard,
        second_heard,
        rounds: 10,
    })
}

/// The source of the last `expected` datagram waiting on `socket`, reading
/// for at most 30 ms and 16 datagrams.
fn heard(socket: &UdpSocket, expected: &[u8]) -> Result<Option<SocketAddr>> {
    let deadline = Instant::now() + Duration::from_millis(30);
    let mut buf = [0u8; 64];
    let mut from = None;
    for _ in 0..16 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((n, source)) = recv_within(socket, left, &mut buf)? else {
            break;
        };
        if &buf[..n] == expected {
            from = Some(source);
        }
    }
    Ok(from)
}

/// Both PCs of `lab` learn their mapping at a reflector and punch, `first`
/// sending first; asserts that whatever was heard came from the other
/// side's WAN address.
fn punch_between(lab: &NatLab, first: Side) -> Result<Punch> {
    let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
    let second = match first {
        Side::A => Side::B,
        Side::B => Side::A,
    };
    let first_socket = lab.pc(first).udp_socket(40000)?;
    let second_socket = lab.pc(second).udp_socket(40000)?;
    let first_mapped = reflector.mapped_address(&first_socket, Endpoint::Primary)?;
    let second_mapped = reflector.mapped_address(&second_socket, Endpoint::Primary)?;
    let punch = punch(&first_socket, second_mapped, &second_socket, first_mapped)?;
    if let Some(heard) = punch.first_heard {
        assert_eq!(heard.ip(), lab.router(second).wan_addr(), "{punch:?}");
    }
    if let Some(heard) = punch.second_heard {
        assert_eq!(heard.ip(), lab.router(first).wan_addr(), "{punch:?}");
    }
    Ok(punch)
}

fn check_punching_row(a: NatKind) -> Result<()> {
    for b in NatKind::ALL {
        let lab = NatLab::builder().nat(Side::A, a).nat(Side::B, b).build()?;
        let punch = punch_between(&lab, Side::A)?;
        println!(
            "PUNCH {a:?} (first) × {b:?}: direct = {} after {} rounds ({punch:?})",
            punch.direct(),
            punch.rounds
        );
        assert_eq!(
            punch.direct(),
            NatKind::direct_possible(a, b),
            "{a:?} × {b:?}: {punch:?}"
        );
    }
    Ok(())
}

#[test]
fn punching_from_full_cone_works_to_every_kind() -> Result<()> {
    if !lab_or_skip("punching_from_full_cone_works_to_every_kind") {
        return Ok(());
    }
    check_punching_row(NatKind::FullCone)
}

#[test]
fn punching_from_restricted_cone_works_to_every_kind() -> Result<()> {
    if !lab_or_skip("punching_from_restricted_cone_works_to_every_kind") {
        return Ok(());
    }
    check_punching_row(NatKind::RestrictedCone)
}

/// Port-restricted × port-restricted connects; × symmetric does not.
#[test]
fn punching_from_port_restricted_cone_fails_only_to_symmetric() -> Result<()> {
    if !lab_or_skip("punching_from_port_restricted_cone_fails_only_to_symmetric") {
        return Ok(());
    }
    check_punching_row(NatKind::PortRestrictedCone)
}

/// Symmetric × symmetric and symmetric × port-restricted need the relay.
#[test]
fn punching_from_symmetric_works_only_to_address_filtering_cones() -> Result<()> {
    if !lab_or_skip("punching_from_symmetric_works_only_to_address_filtering_cones") {
        return Ok(());
    }
    check_punching_row(NatKind::Symmetric)
}

/// shared/LAB.md's gotcha: router B without an inbound firewall. When A's
/// first punch reaches B's router before B has sent, it leaves an UNREPLIED
/// conntrack entry there; B's own mapping towards A then collides with it
/// and masquerade gives B another port, which A's router filters: no direct
/// path (a client must use the relay). When B sends first, it works.
#[test]
fn a_router_without_inbound_firewall_breaks_punching_when_the_peer_punches_first() -> Result<()> {
    if !lab_or_skip("a_router_without_inbound_firewall_breaks_punching_when_the_peer_punches_first")
    {
        return Ok(());
    }
    let lab = NatLab::builder().inbound_firewall(Side::B, false).build()?;
    let a_drops = lab.router(Side::A).unsolicited_drops()?;
    let punch = punch_between(&lab, Side::A)?;
    let a_dropped = lab.router(Side::A).unsolicited_drops()? - a_drops;
    println!("PUNCH into no-firewall B, A first: {punch:?}; A's router dropped {a_dropped} of B's");
    assert!(!punch.direct(), "{punch:?}");
    // B's datagrams did reach A's router, from a port it never sent to.
    assert!(a_dropped >= 1, "A's router dropped {a_dropped}");
    drop(lab);

    let lab = NatLab::builder().inbound_firewall(Side::B, false).build()?;
    let punch = punch_between(&lab, Side::B)?;
    println!("PUNCH into no-firewall B, B first: {punch:?}");
    assert!(punch.direct(), "{punch:?}");
    Ok(())
}

// ---- same LAN ----

#[test]
fn same_lan_pcs_share_one_wan_address_and_reach_each_other_on_the_lan() -> Result<()> {
    if !lab_or_skip("same_lan_pcs_share_one_wan_address_and_reach_each_other_on_the_lan") {
        return Ok(());
    }
    let lab = NatLab::builder().same_lan().build()?;
    assert!(lab.is_same_lan());
    assert_eq!(lab.router(Side::A).ns.name(), lab.router(Side::B).ns.name());
    let (pc_a, pc_b) = (lab.pc(Side::A), lab.pc(Side::B));
    assert_eq!(pc_a.gateway, pc_b.gateway);
    let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
    let a = pc_a.udp_socket(40000)?;
    let b = pc_b.udp_socket(40000)?;
    let a_mapped = reflector.mapped_address(&a, Endpoint::Primary)?;
    let b_mapped = reflector.mapped_address(&b, Endpoint::Primary)?;
    println!(
        "SAME LAN: A {} is {a_mapped}, B {} is {b_mapped}",
        pc_a.addr, pc_b.addr
    );
    let wan = lab.router(Side::A).wan_addr();
    assert_eq!(a_mapped.ip(), wan);
    assert_eq!(b_mapped.ip(), wan);
    // Both used port 40000 to the same destination: the second got another.
    assert_ne!(a_mapped.port(), b_mapped.port());

    // Directly on the LAN (host candidates): no NAT in between.
    let punch = punch(
        &a,
        SocketAddr::from((pc_b.addr, 40000)),
        &b,
        SocketAddr::from((pc_a.addr, 40000)),
    )?;
    assert_eq!(
        punch.first_heard,
        Some(SocketAddr::from((pc_b.addr, 40000)))
    );
    assert_eq!(
        punch.second_heard,
        Some(SocketAddr::from((pc_a.addr, 40000)))
    );

    // The lab's routers do not hairpin: the peer's external address leads
    // nowhere from inside the LAN, so a client must try LAN addresses.
    let a2 = pc_a.udp_socket(40010)?;
    let b2 = pc_b.udp_socket(40010)?;
    let b2_mapped = reflector.mapped_address(&b2, Endpoint::Primary)?;
    for _ in 0..3 {
        a2.send_to(b"hairpin", b2_mapped)?;
    }
    let mut buf = [0u8; 64];
    let got = recv_within(&b2, FILTERED_WAIT, &mut buf)?;
    assert_eq!(got, None, "hairpinned");
    Ok(())
}

// ---- the WAN address changes mid-session ----

#[test]
fn a_wan_address_change_moves_the_mapping_and_breaks_the_direct_path_until_repunched() -> Result<()>
{
    if !lab_or_skip(
        "a_wan_address_change_moves_the_mapping_and_breaks_the_direct_path_until_repunched",
    ) {
        return Ok(());
    }
    let mut lab = NatLab::builder().build()?;
    let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
    let a = lab.pc(Side::A).udp_socket(40000)?;
    let b = lab.pc(Side::B).udp_socket(40000)?;
    let a_mapped = reflector.mapped_address(&a, Endpoint::Primary)?;
    let b_mapped = reflector.mapped_address(&b, Endpoint::Primary)?;
    assert!(punch(&a, b_mapped, &b, a_mapped)?.direct());

    let old = lab.router(Side::A).wan_addr();
    assert!(lab.router(Side::A).conntrack_count()? > 0);
    let new = lab.change_wan_address(Side::A)?;
    println!("WAN CHANGE: router A {old} -> {new}");
    assert_ne!(old, new);
    assert_eq!(lab.router(Side::A).wan_addr(), new);
    assert_eq!(
        lab.router(Side::A).conntrack_count()?,
        0,
        "the reconnect starts with an empty conntrack table"
    );

    // B still sends to A's old address: nothing arrives.
    for _ in 0..3 {
        b.send_to(b"punch from second", a_mapped)?;
    }
    std::thread::sleep(FILTERED_WAIT);
    assert_eq!(heard(&a, b"punch from second")?, None);

    // The same socket now shows the new address, and punching again works.
    let a_remapped = reflector.mapped_address(&a, Endpoint::Primary)?;
    println!("WAN CHANGE: A's socket was {a_mapped}, now {a_remapped}");
    assert_eq!(a_remapped.ip(), new);
    let punch = punch(&a, b_mapped, &b, a_remapped)?;
    assert!(punch.direct(), "{punch:?}");
    assert_eq!(punch.second_heard, Some(a_remapped));

    // Again, to check the address plan steps on.
    let newer = lab.change_wan_address(Side::A)?;
    assert_ne!(newer, new);
    assert_eq!(reflector.mapped_address(&a, Endpoint::Primary)?.ip(), newer);
    Ok(())
}

/// A full-cone router forgets its learned mappings on a WAN change, and no
/// flow keeps the old address: a stranger reaches the PC on the new address
/// only once the PC has sent again, and the PC's flow with a peer that had
/// reached it through the full-cone mapping shows the new address.
#[test]
fn a_wan_address_change_clears_full_cone_mappings_and_flows() -> Result<()> {
    if !lab_or_skip("a_wan_address_change_clears_full_cone_mappings_and_flows") {
        return Ok(());
    }
    let mut lab = NatLab::builder().nat(Side::A, NatKind::FullCone).build()?;
    let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
    let pc = lab.pc(Side::A).udp_socket(40000)?;
    // Strangers: relay-host sockets the PC never sent to.
    let relay = lab.relay();
    let (peer, other) = (
        relay.udp_socket(relay.alternate, 5000)?,
        relay.udp_socket(relay.primary, 5001)?,
    );
    let peer_addr = SocketAddr::from((relay.alternate, 5000));
    let other_addr = SocketAddr::from((relay.primary, 5001));
    let mapped = reflector.mapped_address(&pc, Endpoint::Primary)?;
    let mut buf = [0u8; 64];
    peer.send_to(b"hello", mapped)?;
    let got = recv_within(&pc, ARRIVAL_WAIT, &mut buf)?;
    assert_eq!(got, Some((5, peer_addr)), "full cone lets a stranger in");
    // The PC answers through that inbound (DNAT'd) flow.
    pc.send_to(b"answer", peer_addr)?;
    let got = recv_within(&peer, ARRIVAL_WAIT, &mut buf)?;
    assert_eq!(got, Some((6, mapped)));

    let new = lab.change_wan_address(Side::A)?;
    let moved = SocketAddr::from((new, mapped.port()));
    let drops = lab.router(Side::A).unsolicited_drops()?;
    peer.send_to(b"hello", moved)?;
    assert_eq!(
        recv_within(&pc, FILTERED_WAIT, &mut buf)?,
        None,
        "no mapping on the new address before the PC sends"
    );
    assert_eq!(lab.router(Side::A).unsolicited_drops()? - drops, 1);

    // The PC talks to the peer again: from the new address, on its own
    // port. (A conntrack entry left from before the change would still
    // translate this flow to the old address.)
    pc.send_to(b"answer", peer_addr)?;
    let got = recv_within(&peer, ARRIVAL_WAIT, &mut buf)?;
    assert_eq!(got, Some((6, moved)), "the PC's flow after the change");
    // And the new mapping is full cone again.
    other.send_to(b"hello", moved)?;
    let got = recv_within(&pc, ARRIVAL_WAIT, &mut buf)?;
    assert_eq!(got, Some((5, other_addr)));
    Ok(())
}

/// `udp_timeout` shortens the routers' conntrack timeouts and the learned
/// mappings alike: a full-cone mapping that let a stranger in is gone once
/// the PC has been quiet for longer.
#[test]
fn a_short_udp_timeout_expires_mappings() -> Result<()> {
    if !lab_or_skip("a_short_udp_timeout_expires_mappings") {
        return Ok(());
    }
    let lab = NatLab::builder()
        .nat(Side::A, NatKind::FullCone)
        .udp_timeout(Duration::from_secs(1))
        .build()?;
    let reflector = Reflector::start(lab.relay(), REFLECTOR_PORT)?;
    let pc = lab.pc(Side::A).udp_socket(40000)?;
    let stranger = lab.relay().udp_socket(lab.relay().alternate, 5000)?;
    let mapped = reflector.mapped_address(&pc, Endpoint::Primary)?;
    let mut buf = [0u8; 64];
    stranger.send_to(b"hello", mapped)?;
    assert!(recv_within(&pc, ARRIVAL_WAIT, &mut buf)?.is_some());

    // Well past the 1 s timeout, with nothing sent by the PC.
    std::thread::sleep(Duration::from_millis(2500));
    let drops = lab.router(Side::A).unsolicited_drops()?;
    stranger.send_to(b"hello", mapped)?;
    assert_eq!(recv_within(&pc, FILTERED_WAIT, &mut buf)?, None);
    assert_eq!(lab.router(Side::A).unsolicited_drops()? - drops, 1);
    Ok(())
}

// ---- the lab itself ----

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn the_lab_is_removed_on_drop_and_after_a_panic_and_stays_in_its_namespaces() -> Result<()> {
    if !lab_or_skip("the_lab_is_removed_on_drop_and_after_a_panic_and_stays_in_its_namespaces") {
        return Ok(());
    }
    let lab = NatLab::builder().build()?;
    let names = lab.namespace_names();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.iter().all(|n| netns_exists(n)), "{names:?}");
    // The host's own namespace has none of the lab's addresses.
    let host = std::process::Command::new("ip")
        .args(["-o", "addr"])
        .output()?;
    let host = String::from_utf8_lossy(&host.stdout);
    // (Only the TEST-NET ranges: a developer's host may well use 192.168.x.)
    for lab_net in ["198.51.100.", "203.0.113."] {
        assert!(
            !host.lines().any(|l| l.contains(&format!("inet {lab_net}"))),
            "the host namespace has a lab address {lab_net}x:\n{host}"
        );
    }
    drop(lab);
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind");
    }

    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = NatLab::builder().same_lan().build().expect("lab");
        names = lab.namespace_names();
        panic!("deliberate");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 5, "{names:?}");
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind after a panic");
    }
    Ok(())
}
