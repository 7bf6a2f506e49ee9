//! The XDP fast path on a real topology: three namespaces (relay, peer A,
//! peer B) on one bridged segment, the LANrage XDP program attached to the
//! relay's `eth0`, and two boringtun peers with a real handshake.
//!
//! `xdp_*_forwards_a_boringtun_session_*` need only `lanrage-ebpf`, not the
//! relay's wiring: a blind userspace forwarder on the relay's port carries the
//! handshake (XDP passes it), the test installs the pair's two routes by hand
//! from the indices it saw, and then every transport packet must be forwarded
//! by XDP: the XDP `tx` counter equals the packets sent, and the userspace
//! forwarder sees none of them.
//!
//! `relay_*` (ignored until the relay's `xdp:` config exists) run the real
//! relay binary with XDP inside the relay namespace; [`contract`] names what
//! they expect of it.
//!
//! Needs root, iproute2 and the `xdp` feature (clang); skips with a notice
//! otherwise, or fails under `LANRAGE_REQUIRE_PRIVILEGED=1`. All traffic stays
//! in the test's namespaces, which are deleted on drop.
#![cfg(feature = "xdp")]

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lanrage_ebpf::{Counter, RouteKey, RouteValue, XdpFastPath, XdpLoadConfig, XdpMode};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_tests::gate::skip_or_fail;
use lanrage_tests::netns::{lab_available, Host, Switched};
use lanrage_tests::peer::{ipv4_packet, payload_of};
use lanrage_tests::{Incoming, TestPeer};

const RELAY_PORT: u16 = 51820;
const PEER_PORT: u16 = 40000;
/// Transport packets sent each way through XDP.
const PACKETS: u32 = 500;

// ------------------------------------------------- XDP without the relay

#[test]
fn xdp_native_forwards_a_boringtun_session_between_namespaces() -> Result<()> {
    xdp_forwards_a_session(
        "xdp_native_forwards_a_boringtun_session_between_namespaces",
        XdpMode::Native,
    )
}

#[test]
fn xdp_skb_forwards_a_boringtun_session_between_namespaces() -> Result<()> {
    xdp_forwards_a_session(
        "xdp_skb_forwards_a_boringtun_session_between_namespaces",
        XdpMode::Skb,
    )
}

fn xdp_forwards_a_session(test: &str, mode: XdpMode) -> Result<()> {
    if let Err(why) = lab_available() {
        skip_or_fail(test, &why);
        return Ok(());
    }
    let lab = Switched::new(&["relay", "a", "b"])?;
    let (relay, a, b) = (lab.host("relay"), lab.host("a"), lab.host("b"));
    let relay_ep = SocketAddrV4::new(relay.addr, RELAY_PORT);
    let (a_ep, b_ep) = (
        SocketAddrV4::new(a.addr, PEER_PORT),
        SocketAddrV4::new(b.addr, PEER_PORT),
    );
    let _pass = prepare_relay_host(&lab, relay, mode)?;
    let mut xdp = relay.ns.run(|| -> Result<XdpFastPath> {
        let mut xdp = XdpFastPath::load(XdpLoadConfig {
            max_routes: 64,
            relay: relay_ep,
            pin_path: None,
        })?;
        xdp.attach(&relay.iface, mode)?;
        Ok(xdp)
    })??;

    // Handshake through the userspace forwarder (XDP passes handshakes).
    let forwarder = Forwarder::start(relay.udp_socket(RELAY_PORT)?, a_ep, b_ep)?;
    let relay_public = PublicKey::from(&StaticSecret::from([7; 32]));
    let mut pa = TestPeer::with_socket(
        relay_ep.into(),
        &relay_public,
        [11; 32],
        a.udp_socket(PEER_PORT)?,
    )?;
    let mut pb = TestPeer::with_socket(
        relay_ep.into(),
        &relay_public,
        [12; 32],
        b.udp_socket(PEER_PORT)?,
    )?;
    pa.tunnel_to(pb.key, 1);
    pb.tunnel_to(pa.key, 2);
    establish(&mut pa, &mut pb)?;
    let before = forwarder.seen();
    let (Some(a_index), Some(b_index)) = (before.initiator_index, before.responder_index) else {
        bail!("the forwarder saw no complete handshake: {before:?}");
    };
    assert!(
        before.transport >= 1,
        "without routes, A's confirming keepalive goes through userspace: {before:?}"
    );

    // The pair's routes, as the relay will install them: A's packets carry
    // B's index, and B's carry A's.
    xdp.insert_route(&RouteKey::new(a_ep, b_index), &RouteValue::new(b_ep))?;
    xdp.insert_route(&RouteKey::new(b_ep, a_index), &RouteValue::new(a_ep))?;

    let started = Instant::now();
    transfer(&mut pa, &mut pb, PACKETS, 0xA)?;
    transfer(&mut pb, &mut pa, PACKETS, 0xB)?;
    let elapsed = started.elapsed();

    let after = forwarder.stop()?;
    let counters = xdp.counters()?;
    eprintln!(
        "{test}: {} packets through XDP ({mode:?}) in {elapsed:?}; counters {:?}",
        2 * PACKETS,
        counters.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>()
    );
    assert_eq!(
        after.transport, before.transport,
        "no transport packet reached userspace once the routes were in"
    );
    assert_eq!(
        counters.get(Counter::Tx),
        u64::from(2 * PACKETS),
        "every transport packet forwarded by XDP with FIB-resolved MACs: {counters:?}"
    );
    assert_eq!(counters.get(Counter::TxFibFallback), 0, "{counters:?}");
    assert!(counters.get(Counter::PassHandshake) >= 2, "{counters:?}");
    for key in [RouteKey::new(a_ep, b_index), RouteKey::new(b_ep, a_index)] {
        let seen = xdp.route_last_seen(&key)?.context("route vanished")?;
        assert!(seen > 0, "route {key:?} never marked as used");
    }
    Ok(())
}

/// What native XDP_TX and `bpf_fib_lookup` need on the relay's host
/// (shared/LAB.md, docs/xdp.md): forwarding on the XDP interface so the FIB
/// lookup answers with MACs, and, in native mode, an XDP program on the veth
/// peer (the bridge port) or XDP_TX frames are dropped. The returned program
/// (the LANrage one with no routes: it passes everything) stays attached
/// while the value lives.
fn prepare_relay_host(lab: &Switched, relay: &Host, mode: XdpMode) -> Result<Option<XdpFastPath>> {
    relay
        .ns
        .sysctl(&format!("net.ipv4.conf.{}.forwarding", relay.iface), "1")?;
    if mode == XdpMode::Skb {
        return Ok(None);
    }
    let pass = lab.switch.run(|| -> Result<XdpFastPath> {
        let mut pass = XdpFastPath::load(XdpLoadConfig {
            max_routes: 1,
            relay: SocketAddrV4::new(relay.addr, RELAY_PORT),
            pin_path: None,
        })?;
        pass.attach(&relay.port, XdpMode::Native)?;
        Ok(pass)
    })??;
    Ok(Some(pass))
}

// ------------------------------------------------- a blind forwarder

/// What the userspace forwarder saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    handshakes: u64,
    /// WireGuard transport messages (type 4) it forwarded.
    transport: u64,
    /// The sender index of the last initiation.
    initiator_index: Option<u32>,
    /// The sender index of the last response.
    responder_index: Option<u32>,
}

/// A blind relay for exactly two endpoints: what one sends to the relay's
/// port goes to the other. It plays the userspace relay's part for
/// handshakes and counts every transport message that reaches it.
struct Forwarder {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Forwarder {
    /// Longest life of the thread, whatever the test does.
    const LIMIT: Duration = Duration::from_secs(120);

    fn start(socket: UdpSocket, a: SocketAddrV4, b: SocketAddrV4) -> Result<Self> {
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || -> Result<()> {
                let deadline = Instant::now() + Self::LIMIT;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (len, from) = match socket.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let to = match from {
                        SocketAddr::V4(f) if f == a => b,
                        SocketAddr::V4(f) if f == b => a,
                        _ => continue,
                    };
                    let msg = &buf[..len];
                    let index_at = |at: usize| {
                        msg.get(at..at + 4)
                            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    };
                    {
                        let mut seen = seen.lock().expect("forwarder state");
                        match msg.first() {
                            Some(1) => {
                                seen.handshakes += 1;
                                seen.initiator_index = index_at(4);
                            }
                            Some(2) => {
                                seen.handshakes += 1;
                                seen.responder_index = index_at(4);
                            }
                            Some(4) => seen.transport += 1,
                            _ => {}
                        }
                    }
                    socket.send_to(msg, to)?;
                }
                Ok(())
            })
        };
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    fn seen(&self) -> Seen {
        self.seen.lock().expect("forwarder state").clone()
    }

    fn stop(mut self) -> Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("forwarder panicked"))??;
        }
        Ok(self.seen())
    }
}

impl Drop for Forwarder {
    /// A failing test still ends the thread promptly.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ------------------------------------------------- peers

/// Runs the handshake (A initiates) and waits for the session to carry data.
fn establish(a: &mut TestPeer, b: &mut TestPeer) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    // The first initiation may be lost while ARP resolves; retry a few times.
    let mut a_done = false;
    for _ in 0..5 {
        a.initiate()?;
        let round = (Instant::now() + Duration::from_secs(1)).min(deadline);
        while !a_done && Instant::now() < round {
            let _ = b.recv(Duration::from_millis(20))?;
            a_done = matches!(a.recv(Duration::from_millis(20))?, Some(Incoming::Handled));
        }
        if a_done {
            break;
        }
    }
    if !a_done {
        bail!("handshake did not complete through the relay");
    }
    // B consumes A's confirming keepalive so later counts see only data.
    while Instant::now() < deadline {
        if let Some(Incoming::Handled) = b.recv(Duration::from_millis(50))? {
            return Ok(());
        }
    }
    bail!("B never saw A's confirming keepalive")
}

/// Sends `count` packets from `from` to `to` in windows, verifying every
/// payload byte for byte.
fn transfer(from: &mut TestPeer, to: &mut TestPeer, count: u32, tag: u8) -> Result<()> {
    const WINDOW: u32 = 32;
    let mut next = 0;
    while next < count {
        let end = (next + WINDOW).min(count);
        for seq in next..end {
            from.send_packet(&ipv4_packet(&payload_for(tag, seq)))?;
        }
        let mut expected: BTreeSet<u32> = (next..end).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !expected.is_empty() && Instant::now() < deadline {
            if let Some(Incoming::Packet(packet)) = to.recv(Duration::from_millis(100))? {
                let seq = check_payload(payload_of(&packet), tag)?;
                expected.remove(&seq);
            }
        }
        if !expected.is_empty() {
            bail!("{} packets never arrived: {expected:?}", expected.len());
        }
        next = end;
    }
    Ok(())
}

/// 64–319 bytes: the tag, the sequence number, then a pattern of both.
fn payload_for(tag: u8, seq: u32) -> Vec<u8> {
    let len = 64 + (seq as usize * 7) % 256;
    let mut p = vec![tag];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((5..len).map(|i| (i as u32 ^ seq) as u8 ^ tag));
    p
}

/// The sequence number of a payload, after checking every byte of it.
fn check_payload(payload: &[u8], tag: u8) -> Result<u32> {
    let seq = payload
        .get(1..5)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .context("payload too short")?;
    if payload != payload_for(tag, seq).as_slice() {
        bail!("payload {seq} (tag {tag:#x}) corrupted in transit");
    }
    Ok(seq)
}
