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
//! `relay_*` run the real relay binary with XDP inside the relay namespace;
//! [`contract`] names what they expect of it (config, metric names).
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
use lanrage_proto::inner::{ipv4_packet, payload_of};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_test_support::privileged::or_skip;
use lanrage_tests::netns::{lab_available, Host, Switched};
use lanrage_tests::session::{check_payload, establish_retrying, payload_for, transfer};
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
    if or_skip(test, lab_available()).is_none() {
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
    establish_retrying(&mut pa, &mut pb, 5, Duration::from_secs(1))?;
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

// ------------------------------------------------- the real relay with XDP

/// What the end-to-end tests expect of the relay's XDP wiring (issue 5,
/// docs/xdp.md). Adjust these when the wiring names things differently.
mod contract {
    use std::path::Path;

    /// The relay config block that turns XDP on (`mode`: `native` | `skb`).
    pub fn xdp_yaml(interface: &str, mode: &str, pin_path: &Path) -> String {
        format!(
            "xdp:\n  interface: {interface}\n  mode: {mode}\n  pin_path: \"{}\"\n",
            pin_path.display()
        )
    }

    /// Transport packets XDP forwarded with FIB-resolved MACs (the XDP
    /// counter `tx`; the test enables forwarding on the relay interface).
    pub const XDP_TX: &str = "lanrage_relay_xdp_packets_total{reason=\"tx\"}";

    /// Transport packets the userspace data plane forwarded.
    pub const USERSPACE_TRANSPORT: &str = "lanrage_relay_forwarded_total{kind=\"transport\"}";

    /// Transport packets userspace may still see: the initiator's confirming
    /// keepalive can race the route install into the XDP map.
    pub const USERSPACE_TRANSPORT_SLACK: u64 = 2;
}

/// XDP asked for but impossible (here: an interface that doesn't exist in
/// the relay's namespace) is a failed start naming the cause, not a relay
/// that runs without its fast path.
#[test]
fn relay_exits_with_the_reason_when_xdp_cannot_attach() -> Result<()> {
    let test = "relay_exits_with_the_reason_when_xdp_cannot_attach";
    let Some(e2e) = E2e::new(test, "skb")? else {
        return Ok(());
    };
    let iface = &e2e.lab.host("relay").iface;
    let config = std::fs::read_to_string(&e2e.config)?
        .replace(&format!("interface: {iface}"), "interface: lrgnothere0");
    std::fs::write(&e2e.config, config)?;
    let stderr_path = e2e.dir.path().join("refused.log");
    let mut child = e2e
        .lab
        .host("relay")
        .ns
        .command(lanrage_tests::relay_process::relay_binary())?
        .arg("--config")
        .arg(&e2e.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .context("spawning the relay in its namespace")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the relay kept running without its XDP fast path");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path)?;
    assert!(!status.success(), "relay started anyway: {stderr}");
    assert!(
        stderr.contains("lrgnothere0") && stderr.to_lowercase().contains("xdp"),
        "the reason doesn't name XDP and the interface: {stderr}"
    );
    Ok(())
}

const E2E_PACKETS: u32 = 200;
/// Packets in the restart test's stream, one every millisecond.
const STREAM: u32 = 3_000;

#[test]
fn relay_native_xdp_forwards_transport_in_the_kernel() -> Result<()> {
    relay_forwards_through_xdp(
        "relay_native_xdp_forwards_transport_in_the_kernel",
        "native",
    )
}

#[test]
fn relay_skb_xdp_forwards_transport_in_the_kernel() -> Result<()> {
    relay_forwards_through_xdp("relay_skb_xdp_forwards_transport_in_the_kernel", "skb")
}

fn relay_forwards_through_xdp(test: &str, mode: &str) -> Result<()> {
    let Some(e2e) = E2e::new(test, mode)? else {
        return Ok(());
    };
    let relay = e2e.start_relay()?;
    let (mut pa, mut pb) = e2e.registered_pair()?;
    establish_retrying(&mut pa, &mut pb, 5, Duration::from_secs(1))?;
    transfer(&mut pa, &mut pb, E2E_PACKETS, 0xA)?;
    transfer(&mut pb, &mut pa, E2E_PACKETS, 0xB)?;
    stun_with_xdp_attached(&e2e)?;
    assert_eq!(
        relay.metric("lanrage_relay_stun_responses_total{kind=\"success\"}")?,
        2
    );
    let xdp_tx = relay.metric(contract::XDP_TX)?;
    let userspace = relay.metric(contract::USERSPACE_TRANSPORT)?;
    eprintln!("{test}: xdp tx {xdp_tx}, userspace transport {userspace}");
    assert!(
        xdp_tx >= u64::from(2 * E2E_PACKETS),
        "XDP forwarded {xdp_tx} of {} transport packets",
        2 * E2E_PACKETS
    );
    assert!(
        userspace <= contract::USERSPACE_TRANSPORT_SLACK,
        "userspace forwarded {userspace} transport packets; XDP should carry them"
    );
    relay.stop()?;
    Ok(())
}

/// The relay's alternate STUN port in the XDP labs.
const STUN_ALTERNATE_PORT: u16 = RELAY_PORT + 1;

/// STUN while XDP is attached: the program passes it (it is not transport,
/// and the alternate port is not the relay's), and the relay answers a
/// padded Binding with host A's address, and a change-port request from
/// the alternate port.
fn stun_with_xdp_attached(e2e: &E2e) -> Result<()> {
    use lanrage_proto::stun::{BindingResponse, ChangeRequest, RequestBuilder, MAX_RESPONSE_LEN};
    let relay = e2e.lab.host("relay");
    let listen = SocketAddr::from((relay.addr, RELAY_PORT));
    let alternate = SocketAddr::from((relay.addr, STUN_ALTERNATE_PORT));
    let socket = e2e.lab.host("a").udp_socket(PEER_PORT + 1)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let me = socket.local_addr()?;
    let change_port = Some(ChangeRequest {
        change_ip: false,
        change_port: true,
    });
    for (txid, change, from) in [(1u8, None, listen), (2, change_port, alternate)] {
        let request = RequestBuilder {
            change,
            pad_to: MAX_RESPONSE_LEN,
            ..RequestBuilder::new([txid; 12])
        };
        let mut buf = [0u8; 256];
        let len = request.encode(&mut buf)?;
        let mut answer = [0u8; 512];
        // Three tries, as a STUN client retransmits.
        let mut got = None;
        for _ in 0..3 {
            socket.send_to(&buf[..len], listen)?;
            if let Ok(received) = socket.recv_from(&mut answer) {
                got = Some(received);
                break;
            }
        }
        let (n, came_from) = got.context("no STUN answer with XDP attached")?;
        assert_eq!(came_from, from, "request {txid}");
        assert!(n <= len, "a {n}-byte answer to {len} bytes");
        let BindingResponse::Success(s) = BindingResponse::parse(&answer[..n])? else {
            bail!("STUN error response with XDP attached");
        };
        assert_eq!(s.transaction_id, [txid; 12]);
        assert_eq!(
            s.xor_mapped,
            Some(me),
            "XOR-MAPPED-ADDRESS with XDP attached"
        );
    }
    Ok(())
}

#[test]
fn relay_restart_loses_no_transport_packet_with_pinned_xdp() -> Result<()> {
    let test = "relay_restart_loses_no_transport_packet_with_pinned_xdp";
    let Some(e2e) = E2e::new(test, "native")? else {
        return Ok(());
    };
    let relay = e2e.start_relay()?;
    let (mut pa, mut pb) = e2e.registered_pair()?;
    establish_retrying(&mut pa, &mut pb, 5, Duration::from_secs(1))?;
    transfer(&mut pa, &mut pb, 32, 0xA)?;

    // A steady stream A→B on its own thread; B collects on another.
    let received = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sender = std::thread::spawn(move || -> Result<TestPeer> {
        for seq in 0..STREAM {
            pa.send_packet(&ipv4_packet(&payload_for(0xC, seq)))?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(pa)
    });
    let receiver = {
        let received = received.clone();
        std::thread::spawn(move || -> Result<BTreeSet<u32>> {
            let mut missing: BTreeSet<u32> = (0..STREAM).collect();
            // The stream takes a few seconds; the deadline bounds the wait.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !missing.is_empty() && Instant::now() < deadline {
                if let Some(Incoming::Packet(p)) = pb.recv(Duration::from_millis(100))? {
                    missing.remove(&check_payload(payload_of(&p), 0xC)?);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(missing)
        })
    };

    // Restart the relay a third of the way into the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < STREAM / 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let down = Instant::now();
    let code = relay.stop()?;
    assert_eq!(code, 0, "the relay exits cleanly on SIGTERM");
    let relay = e2e.start_relay()?;
    eprintln!("{test}: relay down for {:?}", down.elapsed());

    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let missing = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert!(
        missing.is_empty(),
        "{} of {STREAM} packets lost across the restart: {:?}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    let userspace = relay.metric(contract::USERSPACE_TRANSPORT)?;
    assert!(
        userspace <= contract::USERSPACE_TRANSPORT_SLACK,
        "the restarted relay forwarded {userspace} transport packets in userspace"
    );
    relay.stop()?;
    Ok(())
}

/// The lab for the end-to-end tests: namespaces, a private bpffs for the pin
/// path, and the relay's config.
struct E2e {
    // Drop order: the bpffs is unmounted before the namespaces go.
    _bpffs: BpfFs,
    config: std::path::PathBuf,
    relay_public: PublicKey,
    dir: lanrage_tests::relay_process::ScratchDir,
    lab: Switched,
    _pass: Option<XdpFastPath>,
}

/// Where the relay serves metrics inside its namespace (its own loopback).
const METRICS: &str = "127.0.0.1:9100";

impl E2e {
    fn new(test: &str, mode: &str) -> Result<Option<Self>> {
        if or_skip(test, lab_available()).is_none() {
            return Ok(None);
        }
        let lab = Switched::new(&["relay", "a", "b"])?;
        let xdp_mode = if mode == "skb" {
            XdpMode::Skb
        } else {
            XdpMode::Native
        };
        let pass = prepare_relay_host(&lab, lab.host("relay"), xdp_mode)?;
        let dir = lanrage_tests::relay_process::ScratchDir::new("xdp-e2e")?;
        let bpffs = BpfFs::mount(&dir.path().join("bpffs"))?;
        let secret = StaticSecret::from([5; 32]);
        let key_path = dir.path().join("private.key");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)?;
            writeln!(
                file,
                "{}",
                lanrage_proto::key::base64_encode_32(&secret.to_bytes())
            )?;
        }
        let relay = lab.host("relay");
        let config = dir.path().join("relay.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"{}:{RELAY_PORT}\"\nmetrics_listen: \"{METRICS}\"\nprivate_key_file: \"{}\"\n\
                 stun:\n  alternate_port: {STUN_ALTERNATE_PORT}\n{}",
                relay.addr,
                key_path.display(),
                contract::xdp_yaml(&relay.iface, mode, &bpffs.path.join("lanrage")),
            ),
        )?;
        Ok(Some(Self {
            _bpffs: bpffs,
            config,
            relay_public: PublicKey::from(&secret),
            dir,
            lab,
            _pass: pass,
        }))
    }

    fn start_relay(&self) -> Result<NsRelay<'_>> {
        let host = self.lab.host("relay");
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log = self.dir.path().join(format!(
            "relay-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = host
            .ns
            .command(lanrage_tests::relay_process::relay_binary())?
            .arg("--config")
            .arg(&self.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning the relay in its namespace")?;
        let mut relay = NsRelay {
            host,
            child: Some(child),
            log,
        };
        relay.wait_ready(Duration::from_secs(20))?;
        Ok(relay)
    }

    /// Two registered, mutually consenting peers with tunnels to each other.
    fn registered_pair(&self) -> Result<(TestPeer, TestPeer)> {
        let relay = self.lab.host("relay");
        let relay_ep = SocketAddr::from((relay.addr, RELAY_PORT));
        let (a, b) = (self.lab.host("a"), self.lab.host("b"));
        let mut pa = TestPeer::with_socket(
            relay_ep,
            &self.relay_public,
            [11; 32],
            a.udp_socket(PEER_PORT)?,
        )?;
        let mut pb = TestPeer::with_socket(
            relay_ep,
            &self.relay_public,
            [12; 32],
            b.udp_socket(PEER_PORT)?,
        )?;
        pa.set_consent(&[pb.key]);
        pb.set_consent(&[pa.key]);
        pa.register()?;
        pb.register()?;
        pa.tunnel_to(pb.key, 1);
        pb.tunnel_to(pa.key, 2);
        Ok((pa, pb))
    }
}

/// The relay binary running inside the relay namespace; killed on drop.
struct NsRelay<'a> {
    host: &'a Host,
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
}

impl NsRelay<'_> {
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("relay exited early ({status}): {}", self.log());
            }
            if self.get("/health").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("relay not ready within {limit:?}: {}", self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An HTTP GET to the metrics port, from inside the relay namespace.
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let metrics: SocketAddr = METRICS.parse()?;
        self.host
            .ns
            .run(|| lanrage_tests::relay_process::http_get(metrics, path))?
    }

    fn metric(&self, name: &str) -> Result<u64> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            bail!("metrics endpoint answered {code}");
        }
        lanrage_tests::relay_process::metric_value(&body, name)
            .with_context(|| format!("metric {name} not found in:\n{body}"))
    }

    /// SIGTERM, then wait (at most 10 s) for the exit code.
    fn stop(mut self) -> Result<i32> {
        let mut child = self.child.take().context("already stopped")?;
        lanrage_tests::relay_process::terminate(&mut child).with_context(|| self.log())
    }
}

impl Drop for NsRelay<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A private bpffs instance (its own superblock: pins made here are seen
/// nowhere else), unmounted on drop, which frees whatever was pinned in it.
struct BpfFs {
    path: std::path::PathBuf,
}

impl BpfFs {
    fn mount(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::ffi::OsStrExt as _;
        std::fs::create_dir_all(path)?;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c_path.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mounting a bpffs on {}", path.display()));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt as _;
        if let Ok(c_path) = std::ffi::CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
            unsafe {
                libc::umount2(c_path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
