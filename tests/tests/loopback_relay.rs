//! End-to-end tests against the real relay binary on loopback, with real
//! boringtun peers. Every wait is bounded; nothing leaves 127.0.0.1.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lanrage_proto::control::{ControlMessage, Registration, SessionKeys, NO_COOKIE};
use lanrage_proto::inner::ipv4_packet;
use lanrage_proto::x25519::StaticSecret;
use lanrage_tests::session::{
    assert_nothing_arrives, drain, establish, pair, payload_for, transfer,
};
use lanrage_tests::{Backend, Incoming, RelaySetup, TestPeer};

/// Every end-to-end test runs once per relay backend.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod epoll {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    super::$test(lanrage_tests::Backend::Epoll)
                }
            )*
        }
        mod io_uring {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    match lanrage_test_support::privileged::or_skip(
                        stringify!($test),
                        lanrage_tests::Backend::IoUring.available(),
                    ) {
                        Some(backend) => super::$test(backend),
                        None => Ok(()),
                    }
                }
            )*
        }
    };
}

on_every_backend!(
    two_peers_exchange_a_thousand_packets_each_way,
    tunnel_recovers_after_a_relay_restart,
    a_peer_that_only_receives_notices_a_restart_by_probing,
    unregistered_source_gets_nothing_forwarded,
    forged_and_replayed_registrations_are_rejected,
    a_peer_outside_the_consent_list_is_unreachable,
    malformed_packets_are_dropped_counted_and_never_amplified,
    kernel_receive_drops_are_counted_per_worker,
);

fn two_peers_exchange_a_thousand_packets_each_way(backend: Backend) -> Result<()> {
    let setup = RelaySetup::new(backend.yaml())?;
    let relay = setup.start()?;
    let (mut a, mut b) = pair(&setup)?;
    establish(&mut a, &mut b)?;
    transfer(&mut a, &mut b, 1000, 0xA0)?;
    transfer(&mut b, &mut a, 1000, 0xB0)?;
    let forwarded = relay.metric("lanrage_relay_forwarded_total{kind=\"transport\"}")?;
    assert!(
        forwarded >= 2000,
        "relay counted {forwarded} transport packets"
    );
    assert_eq!(relay.metric("lanrage_relay_routes")?, 2);
    let log = relay.log();
    let data_plane = data_plane_line(&log)?;
    assert!(
        data_plane.contains(backend.name()),
        "asked for {backend:?}, got: {data_plane}"
    );
    assert_eq!(relay.stop()?, 0, "SIGTERM is a clean shutdown");
    Ok(())
}

fn tunnel_recovers_after_a_relay_restart(backend: Backend) -> Result<()> {
    let debug = std::env::var_os("LANRAGE_DEBUG_RECOVERY").is_some();
    let log = if debug {
        "log: \"lanrage_relay=trace\"\n"
    } else {
        ""
    };
    let setup = RelaySetup::new(&format!("{}{log}", backend.yaml()))?;
    let relay = setup.start()?;
    let (mut a, mut b) = pair(&setup)?;
    establish(&mut a, &mut b)?;
    transfer(&mut a, &mut b, 50, 1)?;

    relay.stop()?;
    let relay = setup.start()?;
    let restarted = Instant::now();

    // Both sides keep sending, as game traffic does. The new relay knows
    // nobody: each side gets a hint, re-registers, and re-handshakes.
    let deadline = restarted + Duration::from_secs(10);
    let mut seq = 0u32;
    let (mut a_got, mut b_got) = (None, None);
    while (a_got.is_none() || b_got.is_none()) && Instant::now() < deadline {
        seq += 1;
        a.send_packet(&ipv4_packet(&payload_for(2, seq)))?;
        b.send_packet(&ipv4_packet(&payload_for(3, seq)))?;
        for _ in 0..8 {
            if let Some(Incoming::Packet(_)) = b.recv(Duration::from_micros(500))? {
                b_got.get_or_insert_with(|| restarted.elapsed());
            }
            if let Some(Incoming::Packet(_)) = a.recv(Duration::from_micros(500))? {
                a_got.get_or_insert_with(|| restarted.elapsed());
            }
        }
        a.tick()?;
        b.tick()?;
    }
    let (Some(to_b), Some(to_a)) = (b_got, a_got) else {
        bail!(
            "tunnel did not recover within 10 s (a hints {}, b hints {}): {}",
            a.hints_received,
            b.hints_received,
            relay.log()
        );
    };
    let recovery = to_b.max(to_a);
    if std::env::var_os("LANRAGE_DEBUG_RECOVERY").is_some() {
        eprintln!("{}", relay.log());
    }
    println!(
        "RECOVERY after relay restart: {:.1} ms (A->B {:.1} ms, B->A {:.1} ms, hints A {} B {})",
        recovery.as_secs_f64() * 1e3,
        to_b.as_secs_f64() * 1e3,
        to_a.as_secs_f64() * 1e3,
        a.hints_received,
        b.hints_received
    );
    assert!(
        a.hints_received > 0 && b.hints_received > 0,
        "recovery came from hints"
    );
    // The recovered tunnel carries a full, verified transfer.
    transfer(&mut a, &mut b, 200, 4)?;
    transfer(&mut b, &mut a, 200, 5)?;
    Ok(())
}

/// B only receives. After a relay restart it hears no hint (it sends
/// nothing), so without probes it stayed unregistered until its next
/// refresh (up to 25 s) and A's packets went nowhere. B's probe (1/s in a
/// real client) gets "not registered"; B re-registers at once, and A's
/// next handshake reaches it.
fn a_peer_that_only_receives_notices_a_restart_by_probing(backend: Backend) -> Result<()> {
    let setup = RelaySetup::new(backend.yaml())?;
    let relay = setup.start()?;
    let (mut a, mut b) = pair(&setup)?;
    establish(&mut a, &mut b)?;
    b.probe()?;
    let before = loop {
        match b.recv(Duration::from_secs(2))? {
            Some(Incoming::ProbeAck(ack)) => break ack,
            Some(_) => continue,
            None => bail!("no probe ack from the running relay"),
        }
    };
    assert!(before.registered, "B is registered before the restart");

    relay.stop()?;
    let _relay = setup.start()?;
    let restarted = Instant::now();
    // A sends (and recovers through hints); B only receives, and probes
    // every 100 ms here (a client probes every second).
    let deadline = restarted + Duration::from_secs(10);
    let mut seq = 0u32;
    let mut b_got = None;
    let mut last_probe = Instant::now() - Duration::from_secs(1);
    let mut b_learned_restart = false;
    while b_got.is_none() && Instant::now() < deadline {
        seq += 1;
        a.send_packet(&ipv4_packet(&payload_for(6, seq)))?;
        if last_probe.elapsed() >= Duration::from_millis(100) {
            b.probe()?;
            last_probe = Instant::now();
        }
        for _ in 0..8 {
            match b.recv(Duration::from_micros(500))? {
                Some(Incoming::Packet(_)) => {
                    b_got.get_or_insert_with(|| restarted.elapsed());
                }
                Some(Incoming::ProbeAck(ack)) if !ack.registered => {
                    assert_ne!(ack.relay_epoch, before.relay_epoch, "a new run");
                    b_learned_restart = true;
                }
                _ => {}
            }
            let _ = a.recv(Duration::from_micros(500))?;
        }
        a.tick()?;
        b.tick()?;
    }
    let Some(to_b) = b_got else {
        bail!("A's packets never reached B again within 10 s");
    };
    assert!(b_learned_restart, "B learned of the restart from a probe");
    assert_eq!(b.hints_received, 0, "B sent nothing, so it got no hint");
    println!(
        "RECOVERY of a receive-only peer after a relay restart: {:.1} ms",
        to_b.as_secs_f64() * 1e3
    );
    transfer(&mut a, &mut b, 50, 7)?;
    Ok(())
}

fn unregistered_source_gets_nothing_forwarded(backend: Backend) -> Result<()> {
    let setup = RelaySetup::new(backend.yaml())?;
    let relay = setup.start()?;
    let (mut a, mut b) = pair(&setup)?;
    establish(&mut a, &mut b)?;

    // A stranger that never registered sends a valid initiation for B, and a
    // transport-shaped packet. None of it may reach B.
    let mut stranger = TestPeer::new(setup.listen, &setup.public_key(), [13; 32])?;
    stranger.auto_recover = false;
    stranger.tunnel_to(b.key, 77);
    stranger.initiate()?;
    stranger
        .socket
        .send_to(&transport_shaped(0x0100, 64), setup.listen)?;
    assert_nothing_arrives(&mut b, Duration::from_millis(300))?;
    assert_eq!(relay.dropped("unregistered")?, 1);
    assert_eq!(relay.dropped("no_route")?, 1);
    Ok(())
}

fn forged_and_replayed_registrations_are_rejected(backend: Backend) -> Result<()> {
    let setup = RelaySetup::new(backend.yaml())?;
    let relay = setup.start()?;
    let (mut a, _b) = pair(&setup)?;

    // Claims A's key, sealed with keys derived from a different secret. The
    // attacker answers the relay's challenge at its own address, as it can.
    let wrong = SessionKeys::for_client(&StaticSecret::from([99; 32]), &setup.public_key())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let forged = |cookie| {
        Registration {
            client: a.key,
            timestamp: u64::MAX,
            observed: None,
            cookie,
            consent: vec![],
        }
        .seal(&wrong)
        .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0")?;
    attacker.set_read_timeout(Some(Duration::from_millis(300)))?;
    attacker.send_to(&forged(NO_COOKIE)?, setup.listen)?;
    let mut buf = [0u8; 2048];
    let (len, _) = attacker.recv_from(&mut buf)?;
    let Ok(ControlMessage::Challenge(challenge)) = ControlMessage::parse(&buf[..len]) else {
        anyhow::bail!("an unproven registration gets a challenge, got {len} bytes");
    };
    attacker.send_to(&forged(challenge.cookie)?, setup.listen)?;
    assert!(
        attacker.recv_from(&mut buf).is_err(),
        "no ack for a forgery"
    );
    assert_eq!(relay.dropped("registration_bad_mac")?, 1);

    // A genuine registration, captured and replayed from the attacker's
    // socket: rejected, and A's endpoint is not hijacked.
    let genuine = a.registration();
    a.socket.send_to(&genuine, setup.listen)?;
    let ack = a.recv(Duration::from_secs(2))?;
    assert!(
        matches!(ack, Some(Incoming::Ack(_))),
        "genuine registration acked"
    );
    // From elsewhere, its cookie (for A's address) proves nothing: challenged.
    attacker.send_to(&genuine, setup.listen)?;
    let (len, _) = attacker.recv_from(&mut buf)?;
    assert!(
        matches!(
            ControlMessage::parse(&buf[..len]),
            Ok(ControlMessage::Challenge(_))
        ),
        "a replay from elsewhere is only challenged"
    );
    // From A's own address (spoofed, or a duplicate): too old.
    a.socket.send_to(&genuine, setup.listen)?;
    assert_nothing_arrives(&mut a, Duration::from_millis(300))?;
    assert_eq!(relay.dropped("registration_replay")?, 1);
    let ack = a.register()?;
    assert_eq!(ack.reflexive, a.local_addr(), "A still owns its endpoint");
    Ok(())
}

fn a_peer_outside_the_consent_list_is_unreachable(backend: Backend) -> Result<()> {
    let setup = RelaySetup::new(backend.yaml())?;
    let relay = setup.start()?;
    let (mut a, mut b) = pair(&setup)?;
    // C consents to A, but A never listed C.
    let mut c = TestPeer::new(setup.listen, &setup.public_key(), [14; 32])?;
    c.set_consent(&[a.key]);
    c.register()?;
    c.tunnel_to(a.key, 5);
    c.initiate()?;
    assert_nothing_arrives(&mut a, Duration::from_millis(300))?;
    assert_eq!(relay.dropped("no_consenting_responder")?, 1);
    // A and B still work.
    establish(&mut a, &mut b)?;
    transfer(&mut a, &mut b, 10, 9)?;
    Ok(())
}

/// Truncated, oversized and corrupted messages of every type, from a
/// registered endpoint and from a stranger: each is dropped and counted, and no
/// reply to anything is larger than what provoked it.
fn malformed_packets_are_dropped_counted_and_never_amplified(backend: Backend) -> Result<()> {
    let setup = RelaySetup::new(backend.yaml())?;
    let relay = setup.start()?;
    let (mut a, mut b) = pair(&setup)?;
    establish(&mut a, &mut b)?;
    let registration = a.registration();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_wireguard", wg(1, 147)),
        ("malformed_wireguard", wg(1, 149)),
        ("malformed_wireguard", wg(2, 91)),
        ("malformed_wireguard", wg(2, 93)),
        ("malformed_wireguard", wg(3, 63)),
        ("malformed_wireguard", wg(3, 65)),
        ("malformed_wireguard", wg(4, 31)),
        ("unknown_protocol", vec![1, 0, 0]),
        ("unknown_protocol", vec![1, 0, 1, 0, 0, 0, 0, 0]),
        ("unknown_protocol", vec![5, 0, 0, 0, 0, 0, 0, 0]),
        ("unknown_protocol", vec![]),
        ("unknown_protocol", vec![0xEE; 1200]),
        ("malformed_control", b"LRG!".to_vec()),
        (
            "malformed_control",
            registration[..registration.len() - 1].to_vec(),
        ),
        ("malformed_control", [&registration[..], &[0][..]].concat()),
        ("malformed_control", b"LRG!\x02\x01\x00\x01".to_vec()),
        ("unsupported_version", b"LRG!\x01\x01\x00\x00".to_vec()),
        ("unknown_control_type", b"LRG!\x02\x63\x00\x00".to_vec()),
        ("unexpected_control", {
            let mut hint = vec![0u8; 24];
            hint[..8].copy_from_slice(b"LRG!\x02\x03\x00\x00");
            hint
        }),
        // A bare Binding request: even XOR-MAPPED-ADDRESS (32 bytes) would
        // be larger than it.
        ("stun_request_too_short", {
            let mut stun = vec![0u8; 20];
            stun[1] = 1;
            stun[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            stun
        }),
        // Its header says 0 bytes follow; 4 do.
        ("stun_malformed", {
            let mut stun = vec![0u8; 24];
            stun[1] = 1;
            stun[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            stun
        }),
        // Well-formed but unauthenticated: the relay must not act on them.
        ("no_pending_handshake", wg(2, 92)),
        ("no_pending_handshake", wg(3, 64)),
        ("no_consenting_responder", wg(1, 148)),
    ];
    let mut corrupt = registration;
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    cases.push(("registration_bad_mac", corrupt));

    let stranger = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut expected: std::collections::HashMap<&str, u64> = Default::default();
    for (reason, bytes) in &cases {
        // Authenticated-path cases must come from A's registered endpoint.
        let from_a = matches!(
            *reason,
            "no_pending_handshake" | "no_consenting_responder" | "registration_bad_mac"
        );
        let socket = if from_a { &a.socket } else { &stranger };
        socket.send_to(bytes, setup.listen)?;
        *expected.entry(reason).or_default() += 1;
        let replies = drain(socket, Duration::from_millis(30))?;
        for reply in replies {
            assert!(
                reply.len() <= bytes.len(),
                "{reason}: reply of {} bytes to a {}-byte request",
                reply.len(),
                bytes.len()
            );
        }
    }
    for (reason, count) in expected {
        assert_eq!(relay.dropped(reason)?, count, "drop counter {reason}");
    }
    assert_nothing_arrives(&mut b, Duration::from_millis(100))?;
    assert_eq!(relay.dropped("reply_larger_than_request")?, 0);
    // The relay is still healthy and the session still works.
    transfer(&mut a, &mut b, 10, 7)?;
    Ok(())
}

/// A burst while the relay can't read (SIGSTOP) overflows its smallest
/// allowed receive buffers. The kernel drops the excess, which the relay never
/// sees; `lanrage_relay_socket_receive_drops_total{worker}` must show exactly
/// the kernel's per-socket counts (`/proc/net/udp`), and every datagram sent
/// is either received by the relay or counted there.
fn kernel_receive_drops_are_counted_per_worker(backend: Backend) -> Result<()> {
    /// Datagrams per sending socket, from 4 sockets (so both workers
    /// probably get some). 400 in all: far more than two 8 KiB buffers
    /// hold, and below the kernel's input backlog (netdev_max_backlog,
    /// 1000), so none are lost before reaching a socket.
    const PER_SENDER: usize = 100;
    const SENDERS: usize = 4;
    const WORKERS: usize = 2;
    let setup = RelaySetup::new(&format!(
        "{}workers: {WORKERS}\nsocket:\n  recv_buffer_bytes: 4096\n",
        backend.yaml()
    ))?;
    let relay = setup.start()?;
    let port = setup.listen.port();
    assert_eq!(worker_drops(&relay, WORKERS)?, vec![0; WORKERS]);
    let kernel = lanrage_tests::relay_process::udp_socket_drops(port)?;
    assert_eq!(
        kernel,
        vec![0; WORKERS],
        "the relay's sockets in /proc/net/udp"
    );

    let senders = (0..SENDERS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    relay.pause()?;
    let sent = (|| -> Result<()> {
        for i in 0..PER_SENDER {
            for sender in &senders {
                // Junk the router drops as unknown_protocol once it reads it.
                sender.send_to(&[0xEE, i as u8, 0, 0, 0, 0, 0, 0], setup.listen)?;
            }
        }
        Ok(())
    })();
    relay.resume()?;
    sent?;
    let total = (PER_SENDER * SENDERS) as u64;

    // The workers drain what their buffers held; wait (bounded) until every
    // datagram is accounted for as received or dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (received, per_worker) = loop {
        let received = relay.metric("lanrage_relay_received_total")?;
        let per_worker = worker_drops(&relay, WORKERS)?;
        if received + per_worker.iter().sum::<u64>() >= total || Instant::now() > deadline {
            break (received, per_worker);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let dropped: u64 = per_worker.iter().sum();
    println!(
        "KERNEL DROPS {backend:?}: sent {total}, received {received}, dropped per worker {per_worker:?}"
    );
    assert!(dropped > 0, "no drops counted: {per_worker:?}");
    assert_eq!(
        received + dropped,
        total,
        "received {received} + dropped {per_worker:?} != sent {total}"
    );
    // Nothing is sent any more, so the kernel's counts are final: the
    // metric's workers are the kernel's sockets, one for one.
    let mut kernel = lanrage_tests::relay_process::udp_socket_drops(port)?;
    let mut ours = per_worker;
    kernel.sort_unstable();
    ours.sort_unstable();
    assert_eq!(ours, kernel, "relay metric vs /proc/net/udp drops");
    assert_eq!(relay.dropped("unknown_protocol")?, received);
    for w in 0..WORKERS {
        let queued = relay.metric(&format!(
            "lanrage_relay_socket_receive_queue_bytes{{worker=\"{w}\"}}"
        ))?;
        assert_eq!(queued, 0, "worker {w} drained its socket");
    }
    assert_eq!(relay.stop()?, 0, "clean shutdown after SIGSTOP/SIGCONT");
    Ok(())
}

/// `lanrage_relay_socket_receive_drops_total` of workers `0..workers`.
fn worker_drops(relay: &lanrage_tests::RelayProcess, workers: usize) -> Result<Vec<u64>> {
    (0..workers)
        .map(|w| {
            relay.metric(&format!(
                "lanrage_relay_socket_receive_drops_total{{worker=\"{w}\"}}"
            ))
        })
        .collect()
}

#[test]
fn bad_config_exits_nonzero_naming_the_field() -> Result<()> {
    let setup = RelaySetup::new("limits:\n  max_routes: 0\n")?;
    let out = std::process::Command::new(lanrage_tests::relay_process::relay_binary())
        .arg("--config")
        .arg(&setup.config_path)
        .output()
        .context("running the relay")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "relay accepted max_routes: 0");
    assert!(stderr.contains("limits.max_routes"), "stderr: {stderr}");

    let setup = RelaySetup::new("max_routez: 5\n")?;
    let out = std::process::Command::new(lanrage_tests::relay_process::relay_binary())
        .arg("--config")
        .arg(&setup.config_path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "relay accepted an unknown field");
    assert!(stderr.contains("max_routez"), "stderr: {stderr}");
    Ok(())
}

/// `backend: auto` runs epoll (measured faster, `docs/data-plane.md`) and
/// logs why io_uring isn't used: the probe's reason when it fails (forced
/// here, so this runs on every kernel), or that it was passed over.
#[test]
fn auto_backend_runs_epoll_and_says_why_not_io_uring() -> Result<()> {
    let setup = RelaySetup::new("backend: auto\n")?;
    let relay = setup.start_with_env(&[(FORCE_PROBE_FAIL, "1")])?;
    let (mut a, mut b) = pair(&setup)?;
    establish(&mut a, &mut b)?;
    transfer(&mut a, &mut b, 10, 9)?;
    let log = relay.log();
    assert!(
        log.contains("io_uring is not available") && log.contains(FORCE_PROBE_FAIL),
        "the probe's reason is not logged:\n{log}"
    );
    assert!(
        data_plane_line(&log)?.contains("epoll"),
        "not on epoll:\n{log}"
    );
    drop(relay);

    let relay = setup.start()?;
    let log = relay.log();
    let line = data_plane_line(&log)?;
    assert!(line.contains("epoll"), "auto did not choose epoll: {line}");
    let said_why = match lanrage_relay::backend::io_uring_available() {
        Ok(()) => log.contains("io_uring is available here"),
        Err(_) => log.contains("io_uring is not available"),
    };
    assert!(
        said_why,
        "auto did not say why it passed over io_uring:\n{log}"
    );
    Ok(())
}

/// The relay's "data plane" log line, which names the backend that runs.
fn data_plane_line(log: &str) -> Result<&str> {
    log.lines()
        .find(|line| line.contains("data plane"))
        .with_context(|| format!("no data plane line in:\n{log}"))
}

/// `backend: io_uring` never falls back: if the probe fails, the relay exits
/// non-zero naming the field.
#[test]
fn io_uring_backend_refuses_to_start_when_the_probe_fails() -> Result<()> {
    let setup = RelaySetup::new("backend: io_uring\n")?;
    let out = std::process::Command::new(lanrage_tests::relay_process::relay_binary())
        .arg("--config")
        .arg(&setup.config_path)
        .env(FORCE_PROBE_FAIL, "1")
        .output()
        .context("running the relay")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "relay started without io_uring");
    assert!(stderr.contains("backend"), "stderr: {stderr}");
    assert!(stderr.contains(FORCE_PROBE_FAIL), "stderr: {stderr}");
    Ok(())
}

const FORCE_PROBE_FAIL: &str = lanrage_relay::backend::uring::FORCE_PROBE_FAIL_ENV;

/// A WireGuard-typed message of `len` bytes with a plausible header.
fn wg(kind: u8, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    if let Some(first) = m.first_mut() {
        *first = kind;
    }
    if len >= 8 {
        m[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    }
    m
}

fn transport_shaped(index: u32, len: usize) -> Vec<u8> {
    let mut m = wg(4, len);
    m[4..8].copy_from_slice(&index.to_le_bytes());
    m
}
