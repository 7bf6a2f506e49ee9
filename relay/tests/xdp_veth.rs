//! The relay's XDP driver on a real kernel map, as root: the XDP setup
//! attached to a veth in a private network namespace, and the router's
//! route commands applied to the map by the data plane's [`Worker`].
//! Skips without root, fails under `LANRAGE_REQUIRE_PRIVILEGED=1`.
#![cfg(feature = "xdp")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_ebpf::{Counter, RouteKey as MapKey, RouteValue};
use lanrage_proto::x25519::StaticSecret;
use lanrage_relay::backend::Handler as _;
use lanrage_relay::config::{Limits, XdpConfig, XdpModeChoice};
use lanrage_relay::worker::{SharedCopy, Worker};
use lanrage_relay::xdp::{self, MapOp};
use lanrage_relay_core::router::{Router, RouterConfig};
use lanrage_test_support::privileged::{is_root, skip_or_fail};
use lanrage_test_support::router_peers::*;

/// The real thing, as root: the relay's XDP setup attached to a veth in a
/// private network namespace, routes installed and roamed by the router land
/// in the kernel map, the program forwards on them, the kernel's last use
/// keeps a session alive that userspace never saw a packet of, and expiry
/// empties the map. Skips without root, fails under
/// `LANRAGE_REQUIRE_PRIVILEGED=1`.
#[test]
fn xdp_map_follows_the_router_on_a_veth() {
    const TEST: &str = "xdp_map_follows_the_router_on_a_veth";
    if !is_root() {
        skip_or_fail(
            TEST,
            "needs root (CAP_BPF, CAP_NET_ADMIN, a network namespace)",
        );
        return;
    }
    let thread = std::thread::spawn(|| -> Result<(), String> {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network
        // namespace; it dies with the thread (and the veth with it).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        xdp_on_veth_body()
    });
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => skip_or_fail(TEST, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn xdp_on_veth_body() -> Result<(), String> {
    for args in [
        &["link", "add", "xv0", "type", "veth", "peer", "name", "xv1"][..],
        &["link", "set", "xv0", "up"],
        &["link", "set", "xv1", "up"],
    ] {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let config = XdpConfig {
        interface: "xv0".to_owned(),
        mode: XdpModeChoice::Skb,
        pin_path: None,
        max_routes: Some(64),
    };
    let (mirror, attached) = match xdp::start(&config, &Limits::default(), addr("0.0.0.0:51888")) {
        Ok(started) => started,
        Err(e) if format!("{e:#}").contains("Operation not permitted") => {
            return Err(format!("BPF not permitted here: {e:#}"));
        }
        Err(e) => panic!("starting XDP: {e:#}"),
    };
    assert_eq!(attached.max_routes, 64);
    let link = std::process::Command::new("ip")
        .args(["link", "show", "xv0"])
        .output()
        .expect("ip link show");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("xdpgeneric"), "attached in skb mode: {link}");

    let now = Instant::now();
    let config = RouterConfig {
        route_commands: true,
        ..RouterConfig::default()
    };
    let idle_timeout = config.route_idle_timeout;
    let mut router = Router::new(config, StaticSecret::from(RELAY_SECRET), 7, [9; 32], now);
    router.metrics().add_source(mirror.clone());
    // The data plane's driver: applies the router's commands to the map
    // after each call, and reconciles with the kernel's last-use times.
    let copy = SharedCopy::new(mirror.clone(), idle_timeout);
    let mut worker = Worker::new(0, router.worker(), Some(copy), now);
    let (mut a, mut b) = registered_pair(
        &mut router,
        now,
        (1, "198.51.100.1:40001"),
        (2, "198.51.100.2:40002"),
    );
    let (a_view, b_view) = (a.view(), b.view());
    let mut ab = a.tunnel_to(&b, 1);
    let mut ba = b.tunnel_to(&a, 2);
    handshake(&mut router, now, &a, &b, &mut ab, &mut ba);
    assert!(router.has_commands(), "installs queued, not yet applied");
    assert!(mirror.fast_path().routes().expect("list").is_empty());
    worker.handle_timeout(now);

    let v4 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!("IPv4 test endpoints"),
    };
    let kernel = mirror.fast_path().routes().expect("list the kernel routes");
    assert_eq!(kernel.len(), 2, "both directions in the kernel: {kernel:?}");
    let (a_key, a_route) = *kernel
        .iter()
        .find(|(k, _)| k.src() == v4(a.endpoint))
        .expect("A's route in the kernel");
    assert_eq!(a_route.peer(), v4(b.endpoint));

    // Roaming: the kernel follows (old key gone, new key, B's route re-aimed).
    a.endpoint = addr("198.51.100.1:50000");
    register(&mut router, now, &mut a, &[&b_view]);
    worker.handle_timeout(now);
    let moved = MapKey::new(v4(a.endpoint), a_key.receiver_index());
    let fast = mirror.fast_path();
    assert_eq!(fast.route(&a_key).expect("lookup"), None);
    assert_eq!(
        fast.route(&moved).expect("lookup").map(|v| v.peer()),
        Some(v4(b.endpoint))
    );
    let kernel = fast.routes().expect("list");
    assert!(kernel
        .iter()
        .any(|(k, v)| k.src() == v4(b.endpoint) && v.peer() == v4(a.endpoint)));

    // The program forwards A's transport on the mirrored route.
    let wire = encapsulate(&mut ab, &ipv4_packet(&[7; 64]));
    let frame = udp_frame(v4(a.endpoint), addr_v4("203.0.113.1:51888"), &wire);
    let run = fast.test_run(&frame, None).expect("BPF_PROG_TEST_RUN");
    assert_eq!(run.action, 3, "XDP_TX");
    let counters = fast.counters().expect("counters");
    assert_eq!(counters.forwarded(), 1);
    drop(fast);
    let text = router.metrics().render_prometheus();
    let sent = counters.get(Counter::Tx) + counters.get(Counter::TxFibFallback);
    assert_eq!(sent, 1);
    assert!(
        text.contains("lanrage_relay_xdp_packets_total{reason=\"tx_fib_fallback\"} 1")
            || text.contains("lanrage_relay_xdp_packets_total{reason=\"tx\"} 1"),
        "{text}"
    );
    assert!(text.contains("lanrage_relay_xdp_map_errors_total{op=\"insert\"} 0"));

    // Userspace never saw a transport packet; past the idle timeout the
    // kernel's last use, reported by the worker's reconcile, keeps the
    // session. (The virtual clock runs ahead of the kernel's: to the kernel
    // the forward above happened a moment ago, at every reconcile.)
    let mut t = now;
    for _ in 0..7 {
        t += Duration::from_secs(30);
        register(&mut router, t, &mut a, &[&b_view]);
        register(&mut router, t, &mut b, &[&a_view]);
        worker.handle_timeout(t);
    }
    assert_eq!(router.route_count(), 2, "kept alive by XDP");
    assert_eq!(mirror.fast_path().routes().expect("list").len(), 2);

    // Registrations lapse: their routes go, from the kernel too.
    worker.handle_timeout(t + Duration::from_secs(120));
    assert_eq!(router.route_count(), 0);
    assert!(mirror.fast_path().routes().expect("list").is_empty());
    assert_eq!(mirror.map_errors(MapOp::Remove), 0);

    // A route only the kernel holds (left by an earlier run) goes once it
    // has idled past the timeout; a reconcile before that keeps it.
    let orphan = MapKey::new(addr_v4("198.51.100.9:9"), 99);
    mirror
        .fast_path()
        .insert_route(&orphan, &RouteValue::new(addr_v4("198.51.100.8:8")))
        .expect("insert an orphan");
    let mut fresh = Worker::new(
        0,
        router.worker(),
        Some(SharedCopy::new(mirror.clone(), Duration::from_secs(3))),
        now,
    );
    fresh.handle_timeout(now + Duration::from_secs(1));
    assert!(
        mirror.fast_path().route(&orphan).expect("lookup").is_some(),
        "not idle long enough yet"
    );
    std::thread::sleep(Duration::from_millis(3100));
    fresh.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(mirror.fast_path().route(&orphan).expect("lookup"), None);
    assert_eq!(mirror.stale_removed(), 1);
    Ok(())
}

fn addr_v4(text: &str) -> std::net::SocketAddrV4 {
    text.parse().expect("test address literal")
}

/// Ethernet + IPv4 + UDP around `payload`, as the XDP program sees a frame.
fn udp_frame(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}
