use super::probe::{forced_failure, probe_kernel};
use super::*;
use crate::backend::bind_udp;
use crate::backend::test_support::{client, recv, Fake};
use crate::config::SocketConfig;
use std::ffi::OsStr;
use std::thread;

/// Whether this machine runs io_uring. Skips (with the reason printed)
/// where it doesn't, unless `LANRAGE_REQUIRE_PRIVILEGED=1` (CI) makes
/// that a failure. Uses the kernel probe, not [`probe`], so a
/// `LANRAGE_FORCE_URING_PROBE_FAIL` meant for backend selection doesn't
/// silently skip the backend's own tests.
fn uring_available(test: &str) -> bool {
    match probe_kernel() {
        Ok(()) => true,
        Err(reason) => {
            let required = std::env::var_os("LANRAGE_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1");
            assert!(!required, "{test}: io_uring unavailable: {reason}");
            eprintln!("skipping {test}: io_uring unavailable: {reason}");
            false
        }
    }
}

/// `fwd`/`fw2` prefix, a sequence number, then filler up to `len` bytes.
fn datagram(prefix: &[u8; 3], seq: u16, len: usize) -> Vec<u8> {
    let mut d = prefix.to_vec();
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend((0..len.saturating_sub(5)).map(|i| (i as u8) ^ (seq as u8)));
    d.truncate(len);
    d
}

struct Running {
    relay: SocketAddr,
    stop: StopHandle,
    stats: Arc<UringStats>,
    thread: thread::JoinHandle<Fake>,
}

impl Running {
    fn finish(self) -> (Fake, UringStatsSnapshot) {
        self.stop.stop();
        let fake = self.thread.join().expect("backend thread");
        (fake, self.stats.snapshot())
    }
}

/// Binds a backend on `listen`, lets `before_run` queue datagrams at it
/// (so they arrive as one burst), then runs it with a [`Fake`] in a thread.
fn start(
    listen: &str,
    fake: Fake,
    batch_size: usize,
    entries: u16,
    before_run: impl FnOnce(SocketAddr, &UdpSocket),
) -> io::Result<Running> {
    let socket = bind_udp(listen.parse().expect("addr"), &SocketConfig::default())?;
    before_run(socket.local_addr()?, &socket);
    let backend = UringBackend::with_ring_entries(
        socket,
        Options {
            batch_size,
            gso: true,
        },
        entries,
    )?;
    let relay = backend.local_addr()?;
    let stop = backend.stop_handle();
    let stats = backend.stats();
    let mut fake = fake;
    let thread = thread::spawn(move || {
        backend.run(&mut fake).expect("run");
        fake
    });
    Ok(Running {
        relay,
        stop,
        stats,
        thread,
    })
}

#[test]
fn forwards_replies_drops_and_stops() {
    if !uring_available("forwards_replies_drops_and_stops") {
        return;
    }
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let fake = Fake::new(sink_addr, sink_addr);
    let running = start("127.0.0.1:0", fake, 4, DEFAULT_RING_ENTRIES, |_, _| {}).expect("start");
    let relay = running.relay;

    peer.send_to(b"reply-me", relay).expect("send");
    assert_eq!(recv(&peer), (b"ok".to_vec(), relay));

    // More than one batch (4) of forwards, all arrive unchanged.
    for i in 0..10u8 {
        peer.send_to(&[b'f', b'w', b'd', i], relay).expect("send");
    }
    for i in 0..10u8 {
        assert_eq!(recv(&sink), (vec![b'f', b'w', b'd', i], relay));
    }

    // Oversized: never reaches the handler. A datagram of exactly
    // MAX_DATAGRAM still does. The next datagram still works.
    peer.send_to(&[b'f'; MAX_DATAGRAM + 100], relay)
        .expect("send");
    peer.send_to(&datagram(b"fwd", 99, MAX_DATAGRAM), relay)
        .expect("send");
    assert_eq!(recv(&sink).0, datagram(b"fwd", 99, MAX_DATAGRAM));
    peer.send_to(b"junk", relay).expect("send");
    peer.send_to(b"reply-again", relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");

    let (fake, _) = running.finish();
    assert_eq!(
        fake.seen.len(),
        14,
        "oversized datagram must not be handled"
    );
    let peer_addr = peer.local_addr().expect("addr");
    assert!(fake.seen.iter().all(|(src, _)| *src == peer_addr));
    assert_eq!(fake.seen[13].1, b"reply-again");
    assert_eq!(fake.timeouts_fired, 1);
    assert_eq!(fake.metrics.dropped(DropReason::Oversized), 1);
    let text = fake.metrics.render_prometheus();
    assert!(text.contains("lanrage_relay_received_total 15"), "{text}");
    assert!(text.contains("lanrage_relay_send_errors_total 0"), "{text}");
}

#[test]
fn stop_wakes_an_idle_ring_at_once() {
    if !uring_available("stop_wakes_an_idle_ring_at_once") {
        return;
    }
    let peer = client("127.0.0.1:0");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut fake = Fake::new(nowhere, nowhere);
    fake.deadline = None;
    let running = start("127.0.0.1:0", fake, 4, 64, |_, _| {}).expect("start");
    // Proves the loop is up and waiting.
    peer.send_to(b"reply", running.relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");
    let asked = Instant::now();
    running.finish();
    // MAX_WAIT is 500 ms: returning well before shows the stop poll woke the ring.
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "took {:?}",
        asked.elapsed()
    );
}

#[test]
fn unreachable_family_counts_a_send_error() {
    if !uring_available("unreachable_family_counts_a_send_error") {
        return;
    }
    let peer = client("127.0.0.1:0");
    let v6_sink: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
    let running =
        start("127.0.0.1:0", Fake::new(v6_sink, v6_sink), 4, 64, |_, _| {}).expect("start");
    peer.send_to(b"fwd", running.relay).expect("send");
    peer.send_to(b"reply", running.relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");
    let (fake, _) = running.finish();
    assert!(fake
        .metrics
        .render_prometheus()
        .contains("lanrage_relay_send_errors_total 1"));
}

#[test]
fn dual_stack_socket_sees_ipv4_peers_as_ipv4() {
    if !uring_available("dual_stack_socket_sees_ipv4_peers_as_ipv4") {
        return;
    }
    let sink = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let peer = client("127.0.0.1:0");
    // A burst from an IPv4 peer, forwarded to an IPv4 sink through the
    // IPv6 socket (as mapped addresses), with GSO.
    let burst: Vec<Vec<u8>> = (0..10).map(|i| datagram(b"fwd", i, 700)).collect();
    let Ok(running) = start(
        "[::]:0",
        Fake::new(sink_addr, sink_addr),
        16,
        64,
        |relay, _| {
            let relay_v4 = SocketAddr::from(([127, 0, 0, 1], relay.port()));
            for d in &burst {
                peer.send_to(d, relay_v4).expect("send");
            }
        },
    ) else {
        eprintln!("skipping dual_stack_socket_sees_ipv4_peers_as_ipv4: IPv6 unavailable");
        return;
    };
    let relay_v4 = SocketAddr::from(([127, 0, 0, 1], running.relay.port()));
    for d in &burst {
        assert_eq!(recv(&sink), (d.clone(), relay_v4));
    }
    peer.send_to(b"reply", relay_v4).expect("send");
    assert_eq!(recv(&peer), (b"ok".to_vec(), relay_v4));

    let v6_peer = UdpSocket::bind("[::1]:0").ok();
    if let Some(v6_peer) = &v6_peer {
        v6_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let relay_v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, running.relay.port()));
        v6_peer.send_to(b"reply", relay_v6).expect("send");
        assert_eq!(recv(v6_peer).0, b"ok");
    }
    let (fake, stats) = running.finish();
    let peer_addr = peer.local_addr().expect("addr");
    assert!(fake.seen[..11].iter().all(|(src, _)| *src == peer_addr));
    if let Some(v6_peer) = v6_peer {
        assert_eq!(fake.seen[11].0, v6_peer.local_addr().expect("addr"));
    }
    assert_eq!(stats.gso_fallbacks, 0, "{stats:?}");
    assert!(fake
        .metrics
        .render_prometheus()
        .contains("lanrage_relay_send_errors_total 0"));
}

#[test]
fn stop_before_run_returns_at_once() {
    if !uring_available("stop_before_run_returns_at_once") {
        return;
    }
    let socket = bind_udp(
        "127.0.0.1:0".parse().expect("addr"),
        &SocketConfig::default(),
    )
    .expect("bind");
    let backend = UringBackend::new(
        socket,
        Options {
            batch_size: 1,
            gso: true,
        },
    )
    .expect("backend");
    backend.stop_handle().stop();
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    backend.run(&mut Fake::new(nowhere, nowhere)).expect("run");
}

#[test]
fn equal_sized_burst_goes_out_with_gso_and_arrives_as_datagrams() {
    if !uring_available("equal_sized_burst_goes_out_with_gso_and_arrives_as_datagrams") {
        return;
    }
    // A plain socket has UDP_GRO off, so it sees every segment on its own.
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let sent: Vec<Vec<u8>> = (0..40).map(|i| datagram(b"fwd", i, 1200)).collect();
    let running = start(
        "127.0.0.1:0",
        Fake::new(sink_addr, sink_addr),
        64,
        DEFAULT_RING_ENTRIES,
        |relay, _| {
            for d in &sent {
                peer.send_to(d, relay).expect("send");
            }
        },
    )
    .expect("start");
    for d in &sent {
        assert_eq!(&recv(&sink), &(d.clone(), running.relay));
    }
    let (fake, stats) = running.finish();
    assert_eq!(fake.seen.len(), 40);
    assert!(stats.gso_sends >= 1, "{stats:?}");
    assert!(stats.sends < 40, "burst was not coalesced: {stats:?}");
    assert_eq!(stats.gso_fallbacks, 0, "{stats:?}");
    assert!(fake
        .metrics
        .render_prometheus()
        .contains("lanrage_relay_send_errors_total 0"));
}

#[test]
fn mixed_burst_keeps_every_datagram_and_its_order() {
    if !uring_available("mixed_burst_keeps_every_datagram_and_its_order") {
        return;
    }
    let sink = client("127.0.0.1:0");
    let sink2 = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let fake = Fake::new(
        sink.local_addr().expect("addr"),
        sink2.local_addr().expect("addr"),
    );
    // Runs that must split groups: a shorter datagram (closes a group),
    // a longer one (starts a new one), another destination, a reply and
    // a drop in between, more than 64 equal ones, and an empty-payload
    // tail. (prefix, length) in send order:
    let mut plan: Vec<(&[u8; 3], usize)> = Vec::new();
    plan.extend([(b"fwd", 500); 5]);
    plan.push((b"fwd", 300));
    plan.extend([(b"fwd", 500); 3]);
    plan.extend([(b"fw2", 500); 2]);
    plan.push((b"fwd", 600));
    plan.extend([(b"fwd", 200); 4]);
    plan.push((b"xxx", 200));
    plan.extend([(b"fwd", 200); 2]);
    plan.extend([(b"fw2", 100); 70]);
    plan.extend([(b"fwd", 1400); 50]);
    plan.push((b"fwd", 5));
    let sent: Vec<Vec<u8>> = plan
        .iter()
        .enumerate()
        .map(|(i, (prefix, len))| datagram(prefix, i as u16, *len))
        .collect();
    let running = start(
        "127.0.0.1:0",
        fake,
        256,
        DEFAULT_RING_ENTRIES,
        |relay, _| {
            for d in &sent {
                peer.send_to(d, relay).expect("send");
            }
            peer.send_to(b"reply", relay).expect("send");
        },
    )
    .expect("start");
    for d in sent.iter().filter(|d| d.starts_with(b"fwd")) {
        assert_eq!(recv(&sink).0, *d);
    }
    for d in sent.iter().filter(|d| d.starts_with(b"fw2")) {
        assert_eq!(recv(&sink2).0, *d);
    }
    assert_eq!(recv(&peer).0, b"ok");
    let (fake, stats) = running.finish();
    assert_eq!(fake.seen.len(), sent.len() + 1);
    assert!(stats.gso_sends >= 1, "{stats:?}");
    assert!(fake
        .metrics
        .render_prometheus()
        .contains("lanrage_relay_send_errors_total 0"));
}

#[test]
fn running_out_of_buffers_recovers() {
    if !uring_available("running_out_of_buffers_recovers") {
        return;
    }
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let early: Vec<Vec<u8>> = (0..100).map(|i| datagram(b"fwd", i, 64)).collect();
    // 8 buffers for a burst of 100: the multishot receive must end with
    // ENOBUFS and be armed again, repeatedly.
    let running = start(
        "127.0.0.1:0",
        Fake::new(sink_addr, sink_addr),
        4,
        8,
        |relay, _| {
            for d in &early {
                peer.send_to(d, relay).expect("send");
            }
        },
    )
    .expect("start");
    for d in &early {
        assert_eq!(recv(&sink).0, *d);
    }
    for i in 100..110 {
        let d = datagram(b"fwd", i, 64);
        peer.send_to(&d, running.relay).expect("send");
        assert_eq!(recv(&sink).0, d);
    }
    let (fake, stats) = running.finish();
    assert_eq!(fake.seen.len(), 110);
    assert!(stats.recv_enobufs >= 1, "{stats:?}");
    assert!(stats.recv_rearms >= stats.recv_enobufs, "{stats:?}");
}

#[test]
fn refused_gso_falls_back_to_single_sends() {
    if !uring_available("refused_gso_falls_back_to_single_sends") {
        return;
    }
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let sent: Vec<Vec<u8>> = (0..20).map(|i| datagram(b"fwd", i, 300)).collect();
    let running = start(
        "127.0.0.1:0",
        Fake::new(sink_addr, sink_addr),
        64,
        64,
        |relay, socket| {
            // The kernel refuses GSO (EINVAL) on a socket without UDP
            // checksums, as it would on a device that can't offload them.
            const SO_NO_CHECK: libc::c_int = 11;
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option value of the stated size.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NO_CHECK,
                    ptr::from_ref(&one).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
            for d in &sent {
                peer.send_to(d, relay).expect("send");
            }
        },
    )
    .expect("start");
    for d in &sent {
        assert_eq!(recv(&sink).0, *d);
    }
    let later = datagram(b"fwd", 20, 300);
    peer.send_to(&later, running.relay).expect("send");
    assert_eq!(recv(&sink).0, later);
    let (fake, stats) = running.finish();
    assert!(stats.gso_fallbacks >= 1, "{stats:?}");
    assert!(fake
        .metrics
        .render_prometheus()
        .contains("lanrage_relay_send_errors_total 0"));
}

#[test]
fn recvmsg_out_header_layout() {
    // What the kernel writes at the start of a buffer: io_uring_recvmsg_out.
    let mut buf = vec![0u8; BUF_SIZE];
    buf[0..4].copy_from_slice(&16u32.to_ne_bytes()); // namelen
    buf[8..12].copy_from_slice(&3u32.to_ne_bytes()); // payloadlen
    buf[RECVMSG_OUT_LEN + NAME_LEN..][..3].copy_from_slice(b"abc");
    // SAFETY: all zeroes is a valid msghdr.
    let mut hdr: msghdr = unsafe { mem::zeroed() };
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    let used = RECVMSG_OUT_LEN + NAME_LEN + 3;
    let msg = types::RecvMsgOut::parse(&buf[..used], &hdr).expect("parse");
    assert_eq!(msg.payload_data(), b"abc");
    assert_eq!(msg.name_data().len(), 16);
    assert_eq!(BUF_SIZE % 16, 0);
}

#[test]
fn lost_completions_do_not_end_the_loop() {
    assert!(is_transient_enter_error(&io::Error::from_raw_os_error(
        libc::EBADR
    )));
    assert!(!is_transient_enter_error(&io::Error::from_raw_os_error(
        libc::EBADF
    )));
}

#[test]
fn force_variable_values() {
    assert!(forced_failure(Some(OsStr::new("1"))));
    assert!(forced_failure(Some(OsStr::new("yes"))));
    assert!(!forced_failure(Some(OsStr::new("0"))));
    assert!(!forced_failure(Some(OsStr::new(""))));
    assert!(!forced_failure(None));
}

/// Runs this test binary again with the variable set (setting it here
/// would race with the other tests), and checks `probe` fails there.
#[test]
fn probe_fails_when_forced_by_the_environment() {
    if std::env::var_os(FORCE_PROBE_FAIL_ENV).is_some() {
        // The child, or a run with the variable set.
        assert_eq!(probe(), Err(format!("forced by {FORCE_PROBE_FAIL_ENV}")));
        return;
    }
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::probe_fails_when_forced_by_the_environment");
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1"])
        .env(FORCE_PROBE_FAIL_ENV, "1")
        .output()
        .expect("rerun the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
