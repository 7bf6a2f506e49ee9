//! The XDP program on crafted packets through `BPF_PROG_TEST_RUN`: hits are
//! rewritten and sent back (`XDP_TX`), everything else passes untouched and
//! is counted under its reason. Checksums of rewritten packets are verified
//! here with this file's own code.
//!
//! Each test runs in a fresh network namespace of its own thread, so
//! `bpf_fib_lookup` sees a known, empty (or test-built) routing table.
//! Needs root and the `xdp` feature; skips with a notice when not root unless
//! `LANRAGE_REQUIRE_PRIVILEGED=1`, where it fails instead.
#![cfg(feature = "xdp")]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use lanrage_ebpf::{
    monotonic_now_ns, Counter, Counters, PinnedAttach, RouteKey, RouteValue, XdpError, XdpFastPath,
    XdpLoadConfig, XdpMode,
};
use lanrage_test_support::privileged::skip_or_fail;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const RELAY_PORT: u16 = 51820;
const RELAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

fn relay() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), RELAY_PORT)
}
fn alice() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40001)
}
fn bob() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 50002)
}
const BOB_INDEX: u32 = 0xA1B2_C3D4;

// ---------------------------------------------------------------- the tests

#[test]
fn hit_is_rewritten_to_the_peer_and_sent_back() {
    in_new_netns("hit_is_rewritten_to_the_peer_and_sent_back", |mut xdp| {
        let key = RouteKey::new(alice(), BOB_INDEX);
        xdp.insert_route(&key, &RouteValue::new(bob())).unwrap();
        assert_eq!(xdp.route_last_seen(&key).unwrap(), Some(0));

        let input = Frame::udp(alice(), relay(), transport(BOB_INDEX, 64)).build();
        let before = monotonic_now_ns();
        let run = xdp.test_run(&input, None).unwrap();
        let after = monotonic_now_ns();

        assert_eq!(run.action, XDP_TX);
        assert_eq!(run.packet.len(), input.len());
        let out = Parsed::new(&run.packet);
        assert_eq!(out.src(), relay(), "source becomes the relay");
        assert_eq!(out.dst(), bob(), "destination becomes the peer");
        assert_eq!(out.ttl(), 64);
        assert!(ipv4_header_checksum_ok(&run.packet), "IPv4 header checksum");
        assert!(udp_checksum_ok(&run.packet), "UDP checksum valid or absent");
        assert_eq!(out.udp_checksum(), 0, "documented choice: zeroed");
        assert_eq!(&run.packet[42..], &input[42..], "payload untouched");
        // The loopback device of a fresh namespace has no route to the peer:
        // the documented fallback swaps the MACs.
        assert_eq!(&run.packet[0..6], &UPSTREAM_MAC);
        assert_eq!(&run.packet[6..12], &RELAY_MAC);

        let seen = xdp.route_last_seen(&key).unwrap().unwrap();
        assert!(
            (before..=after).contains(&seen),
            "last seen {seen} within [{before}, {after}]"
        );
        assert_only(&xdp.counters().unwrap(), Counter::TxFibFallback, 1);
    });
}

#[test]
fn hit_takes_macs_from_the_fib() {
    let test = "hit_takes_macs_from_the_fib";
    // The relay address is unspecified here: the packet's own destination
    // becomes the source.
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, RELAY_PORT);
    in_new_netns_with(test, any, 64, |mut xdp| {
        // lrg0: 10.99.0.1/24, MAC ..:0a, a permanent neighbour for the peer.
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 50002);
        let peer_mac = [0x02, 0, 0, 0, 0, 0x0b];
        for cmd in [
            "link add lrg0 address 02:00:00:00:00:0a type veth peer name lrg1",
            "link set lrg0 up",
            "link set lrg1 up",
            "addr add 10.99.0.1/24 dev lrg0",
            "neigh replace 10.99.0.2 lladdr 02:00:00:00:00:0b dev lrg0 nud permanent",
        ] {
            ip(&cmd.split(' ').collect::<Vec<_>>());
        }
        let ifindex = ifindex("lrg0");
        xdp.insert_route(&RouteKey::new(alice(), BOB_INDEX), &RouteValue::new(peer))
            .unwrap();
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), RELAY_PORT);
        let input = Frame::udp(alice(), local, transport(BOB_INDEX, 100)).build();

        // bpf_fib_lookup answers FWD_DISABLED while forwarding is off on the
        // ingress interface (the default), so the MAC swap is used.
        let run = xdp.test_run(&input, Some(ifindex)).unwrap();
        assert_eq!(run.action, XDP_TX);
        assert_eq!(&run.packet[0..6], &UPSTREAM_MAC);
        assert_only(&xdp.counters().unwrap(), Counter::TxFibFallback, 1);

        // /proc/sys/net shows this thread's namespace.
        std::fs::write("/proc/sys/net/ipv4/conf/lrg0/forwarding", "1")
            .expect("enable forwarding on lrg0");
        let run = xdp.test_run(&input, Some(ifindex)).unwrap();
        assert_eq!(run.action, XDP_TX);
        let out = Parsed::new(&run.packet);
        assert_eq!(out.src(), local);
        assert_eq!(out.dst(), peer);
        assert_eq!(&run.packet[0..6], &peer_mac, "neighbour's MAC");
        assert_eq!(&run.packet[6..12], &[2, 0, 0, 0, 0, 0x0a], "lrg0's MAC");
        assert!(ipv4_header_checksum_ok(&run.packet));
        assert!(udp_checksum_ok(&run.packet));
        let counters = xdp.counters().unwrap();
        assert_eq!(counters.get(Counter::Tx), 1, "{counters:?}");
        assert_eq!(counters.forwarded(), 2, "{counters:?}");
    });
}

#[test]
fn miss_passes_untouched_and_counts() {
    in_new_netns("miss_passes_untouched_and_counts", |mut xdp| {
        let key = RouteKey::new(alice(), BOB_INDEX);
        xdp.insert_route(&key, &RouteValue::new(bob())).unwrap();
        for (i, input) in [
            // Unknown index from a known source.
            Frame::udp(alice(), relay(), transport(BOB_INDEX ^ 1, 64)).build(),
            // Known index from another source port (a NAT rebinding).
            Frame::udp(
                SocketAddrV4::new(*alice().ip(), alice().port() + 1),
                relay(),
                transport(BOB_INDEX, 64),
            )
            .build(),
        ]
        .iter()
        .enumerate()
        {
            let run = xdp.test_run(input, None).unwrap();
            assert_eq!(run.action, XDP_PASS, "case {i}");
            assert_eq!(&run.packet, input, "case {i}: untouched");
        }
        assert_only(&xdp.counters().unwrap(), Counter::PassRouteMiss, 2);
        assert_eq!(
            xdp.route_last_seen(&key).unwrap(),
            Some(0),
            "a miss is not a use"
        );

        // Removing the route turns hits into misses.
        let hit = Frame::udp(alice(), relay(), transport(BOB_INDEX, 64)).build();
        assert_eq!(xdp.test_run(&hit, None).unwrap().action, XDP_TX);
        assert!(xdp.remove_route(&key).unwrap());
        assert!(!xdp.remove_route(&key).unwrap(), "already gone");
        assert_eq!(xdp.test_run(&hit, None).unwrap().action, XDP_PASS);
        assert_eq!(xdp.counters().unwrap().get(Counter::PassRouteMiss), 3);
    });
}

#[test]
fn every_pass_reason_passes_untouched_under_its_counter() {
    let test = "every_pass_reason_passes_untouched_under_its_counter";
    in_new_netns(test, |mut xdp| {
        // A route exists for the sender, so only the reason under test can
        // make these pass.
        xdp.insert_route(&RouteKey::new(alice(), BOB_INDEX), &RouteValue::new(bob()))
            .unwrap();
        let udp = |payload: Vec<u8>| Frame::udp(alice(), relay(), payload);
        let mut initiation = vec![0u8; 148];
        initiation[0] = 1;
        initiation[4..8].copy_from_slice(&BOB_INDEX.to_le_bytes());
        let mut response = vec![0u8; 92];
        response[0] = 2;
        let mut cookie = vec![0u8; 64];
        cookie[0] = 3;
        let mut control = b"LRG!\x01\x01\0\0".to_vec();
        control.extend_from_slice(&[0x55; 40]);
        // RFC 8489 binding request: type 0x0001, length 0, magic cookie, txid.
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        let mut bad_reserved = transport(BOB_INDEX, 64);
        bad_reserved[2] = 1;

        let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
            (
                "handshake initiation",
                udp(initiation).build(),
                Counter::PassHandshake,
            ),
            (
                "handshake response",
                udp(response).build(),
                Counter::PassHandshake,
            ),
            ("cookie reply", udp(cookie).build(), Counter::PassHandshake),
            (
                "control message",
                udp(control).build(),
                Counter::PassNotTransport,
            ),
            (
                "STUN binding request",
                udp(stun).build(),
                Counter::PassNotTransport,
            ),
            (
                "type 4 with nonzero reserved byte",
                udp(bad_reserved).build(),
                Counter::PassNotTransport,
            ),
            (
                "3-byte datagram",
                udp(vec![4, 0, 0]).build(),
                Counter::PassNotTransport,
            ),
            (
                "empty datagram",
                udp(vec![]).build(),
                Counter::PassNotTransport,
            ),
            (
                "transport shorter than 32 bytes",
                udp(transport(BOB_INDEX, 31)).build(),
                Counter::PassShort,
            ),
            (
                "wrong port",
                Frame::udp(
                    alice(),
                    SocketAddrV4::new(*relay().ip(), 53),
                    transport(BOB_INDEX, 64),
                )
                .build(),
                Counter::PassWrongPort,
            ),
            (
                "wrong address",
                Frame::udp(
                    alice(),
                    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), RELAY_PORT),
                    transport(BOB_INDEX, 64),
                )
                .build(),
                Counter::PassWrongPort,
            ),
            (
                "IP options",
                Frame {
                    options: true,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassIpOptions,
            ),
            (
                "first fragment (MF)",
                Frame {
                    frag_off: 0x2000,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassIpFragment,
            ),
            (
                "later fragment (offset)",
                Frame {
                    frag_off: 0x0010,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassIpFragment,
            ),
            (
                "TCP",
                Frame {
                    protocol: 6,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassNotUdp,
            ),
            (
                "IPv6 ethertype",
                Frame {
                    ethertype: 0x86DD,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassNotIpv4,
            ),
            (
                "ARP ethertype",
                Frame {
                    ethertype: 0x0806,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassNotIpv4,
            ),
            (
                "truncated IPv4 header",
                truncate(udp(transport(BOB_INDEX, 64)).build(), 14 + 12),
                Counter::PassMalformed,
            ),
            (
                "truncated UDP header",
                truncate(udp(transport(BOB_INDEX, 64)).build(), 14 + 20 + 4),
                Counter::PassMalformed,
            ),
            (
                "truncated payload",
                truncate(udp(transport(BOB_INDEX, 64)).build(), 14 + 20 + 8 + 40),
                Counter::PassMalformed,
            ),
            (
                "UDP length disagrees with IPv4",
                Frame {
                    udp_len_delta: -2,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassMalformed,
            ),
            (
                "IPv4 version 6 in an IPv4 frame",
                Frame {
                    version: 6,
                    ..udp(transport(BOB_INDEX, 64))
                }
                .build(),
                Counter::PassMalformed,
            ),
        ];
        for (name, input, reason) in cases {
            let before = xdp.counters().unwrap();
            let run = xdp.test_run(&input, None).unwrap();
            let after = xdp.counters().unwrap();
            assert_eq!(run.action, XDP_PASS, "{name}: verdict");
            assert_eq!(run.packet, input, "{name}: packet untouched");
            let delta: Vec<(Counter, u64)> = after
                .iter()
                .zip(before.iter())
                .filter(|((_, a), (_, b))| a != b)
                .map(|((c, a), (_, b))| (c, a - b))
                .collect();
            assert_eq!(
                delta,
                vec![(reason, 1)],
                "{name}: counted once under {reason:?}"
            );
        }
        // Ethernet padding after the IP packet is fine: still a hit.
        let mut padded = udp(transport(BOB_INDEX, 32)).build();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(xdp.test_run(&padded, None).unwrap().action, XDP_TX);
    });
}

#[test]
fn route_map_is_bounded_by_max_routes() {
    in_new_netns_with(
        "route_map_is_bounded_by_max_routes",
        relay(),
        4,
        |mut xdp| {
            for i in 0..4 {
                xdp.insert_route(&RouteKey::new(alice(), i), &RouteValue::new(bob()))
                    .unwrap();
            }
            let err = xdp
                .insert_route(&RouteKey::new(alice(), 99), &RouteValue::new(bob()))
                .expect_err("a fifth route exceeds max_routes = 4");
            assert!(err.to_string().contains("lrg_routes"), "{err}");
            // Replacing an existing route (roaming) still works when full.
            let moved = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 50003);
            xdp.insert_route(&RouteKey::new(alice(), 2), &RouteValue::new(moved))
                .unwrap();
            let value = xdp.route(&RouteKey::new(alice(), 2)).unwrap().unwrap();
            assert_eq!(value.peer(), moved);
        },
    );
}

#[test]
fn load_rejects_bad_config_before_touching_the_kernel() {
    let err = XdpFastPath::load(XdpLoadConfig {
        max_routes: 0,
        relay: relay(),
        pin_path: None,
    })
    .unwrap_err();
    assert!(matches!(err, XdpError::InvalidMaxRoutes(0)), "{err}");
    let err = XdpFastPath::load(XdpLoadConfig {
        max_routes: 16,
        relay: SocketAddrV4::new(*relay().ip(), 0),
        pin_path: None,
    })
    .unwrap_err();
    assert!(matches!(err, XdpError::ZeroRelayPort(_)), "{err}");
}

// ---------------------------------------------------------------- harness

/// Runs `body` with a freshly loaded program (relay 203.0.113.1:51820, 64
/// routes) in a new network namespace on its own thread; skips (or fails)
/// when that's not possible here.
fn in_new_netns(test: &'static str, body: impl FnOnce(XdpFastPath) + Send + 'static) {
    in_new_netns_with(test, relay(), 64, body)
}

fn in_new_netns_with(
    test: &'static str,
    relay: SocketAddrV4,
    max_routes: u32,
    body: impl FnOnce(XdpFastPath) + Send + 'static,
) {
    own_thread_as_root(
        test,
        "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for a netns)",
        move || {
            // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network
            // namespace; the namespace dies with the thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "unshare(CLONE_NEWNET): {}",
                    io::Error::last_os_error()
                ));
            }
            let xdp = match XdpFastPath::load(XdpLoadConfig {
                max_routes,
                relay,
                pin_path: None,
            }) {
                Ok(xdp) => xdp,
                Err(e) if is_eperm(&e) => {
                    return Err(format!("BPF not permitted here: {}", chain(&e)))
                }
                Err(e) => panic!("loading the XDP program: {}", chain(&e)),
            };
            body(xdp);
            Ok(())
        },
    );
}

/// Runs `body` on a thread of its own (namespaces it enters go with the
/// thread) if this process is root. Not root (`needs` says why root) or an
/// `Err` from `body` (the kernel refused a namespace or BPF) skips `test`, or
/// fails it under `LANRAGE_REQUIRE_PRIVILEGED=1`; a panic in `body` fails it.
fn own_thread_as_root(
    test: &str,
    needs: &str,
    body: impl FnOnce() -> Result<(), String> + Send + 'static,
) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail(test, needs);
        return;
    }
    match std::thread::spawn(body).join() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => skip_or_fail(test, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A bpffs of the calling thread's own, at a fresh directory, in a new
/// private mount namespace of that thread (and a new network namespace
/// with `new_netns`): nothing pinned there is visible elsewhere, and all of
/// it goes with the thread. Unmounted and its directory removed on drop.
struct PrivateBpffs {
    dir: std::path::PathBuf,
    c_dir: std::ffi::CString,
}

impl PrivateBpffs {
    fn mount(name: &str, new_netns: bool) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .expect("a temp path has no NUL");
        let bpffs = Self { dir, c_dir };
        let (flags, what) = if new_netns {
            (
                libc::CLONE_NEWNS | libc::CLONE_NEWNET,
                "CLONE_NEWNS | CLONE_NEWNET",
            )
        } else {
            (libc::CLONE_NEWNS, "CLONE_NEWNS")
        };
        // SAFETY: plain syscalls on valid NUL-terminated strings; they affect
        // only this thread's (new) namespaces.
        unsafe {
            if libc::unshare(flags) != 0 {
                return Err(format!("unshare({what}): {}", io::Error::last_os_error()));
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(format!(
                    "making mounts private: {}",
                    io::Error::last_os_error()
                ));
            }
            if libc::mount(
                c"bpf".as_ptr(),
                bpffs.c_dir.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
            {
                return Err(format!("mounting bpffs: {}", io::Error::last_os_error()));
            }
        }
        Ok(bpffs)
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        // SAFETY: a valid NUL-terminated path in this thread's mount
        // namespace (a failure, nothing mounted, is harmless).
        unsafe { libc::umount2(self.c_dir.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn is_eperm(e: &XdpError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("an interface name has no NUL byte");
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(
        index,
        0,
        "if_nametoindex({name}): {}",
        io::Error::last_os_error()
    );
    index
}

fn assert_only(counters: &Counters, counter: Counter, n: u64) {
    for (c, v) in counters.iter() {
        let want = if c == counter { n } else { 0 };
        assert_eq!(v, want, "counter {c:?} in {counters:?}");
    }
}

// ---------------------------------------------------------------- packets

/// A WireGuard transport message of `len` bytes (>= 16) for `index`.
fn transport(index: u32, len: usize) -> Vec<u8> {
    let mut msg = vec![0u8; len];
    msg[0] = 4;
    msg[4..8].copy_from_slice(&index.to_le_bytes());
    msg[8..16].copy_from_slice(&7u64.to_le_bytes()); // counter
    for (i, b) in msg.iter_mut().enumerate().skip(16) {
        *b = i as u8; // "ciphertext"
    }
    msg.truncate(len);
    msg
}

fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// An Ethernet + IPv4 + UDP frame, with knobs for the malformed variants.
#[derive(Clone)]
struct Frame {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
    ethertype: u16,
    version: u8,
    options: bool,
    frag_off: u16,
    protocol: u8,
    udp_len_delta: i32,
}

impl Frame {
    fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            payload,
            ethertype: 0x0800,
            version: 4,
            options: false,
            frag_off: 0x4000, // DF, as WireGuard implementations send
            protocol: 17,
            udp_len_delta: 0,
        }
    }

    fn build(&self) -> Vec<u8> {
        let options: &[u8] = if self.options { &[1, 1, 1, 0] } else { &[] };
        let ihl = 20 + options.len();
        let udp_len = 8 + self.payload.len();
        let mut f = Vec::new();
        f.extend_from_slice(&RELAY_MAC);
        f.extend_from_slice(&UPSTREAM_MAC);
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        let ip_start = f.len();
        f.push((self.version << 4) | (ihl / 4) as u8);
        f.push(0); // TOS
        f.extend_from_slice(&((ihl + udp_len) as u16).to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        f.extend_from_slice(&self.frag_off.to_be_bytes());
        f.push(17); // TTL as received after some hops
        f.push(self.protocol);
        f.extend_from_slice(&[0, 0]); // checksum, below
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        f.extend_from_slice(options);
        let check = !ones_sum(&f[ip_start..ip_start + ihl]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&check.to_be_bytes());
        let udp_start = f.len();
        f.extend_from_slice(&self.src.port().to_be_bytes());
        f.extend_from_slice(&self.dst.port().to_be_bytes());
        f.extend_from_slice(&((udp_len as i32 + self.udp_len_delta) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.payload);
        // A real (nonzero) UDP checksum on the input, so zeroing it is visible.
        let mut sum = pseudo_header_sum(&f[ip_start + 12..ip_start + 20], &f[udp_start..]);
        if sum == 0 {
            sum = 0xffff;
        }
        f[udp_start + 6..udp_start + 8].copy_from_slice(&sum.to_be_bytes());
        f
    }
}

/// Field access into a rewritten option-less frame.
struct Parsed<'a>(&'a [u8]);

impl<'a> Parsed<'a> {
    fn new(frame: &'a [u8]) -> Self {
        assert!(frame.len() >= 42, "frame too short: {}", frame.len());
        assert_eq!(frame[14], 0x45);
        Self(frame)
    }
    fn addr(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3])
    }
    fn port(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    fn src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr(26), self.port(34))
    }
    fn dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr(30), self.port(36))
    }
    fn ttl(&self) -> u8 {
        self.0[22]
    }
    fn udp_checksum(&self) -> u16 {
        self.port(40)
    }
}

/// RFC 1071 one's-complement sum of big-endian 16-bit words (odd byte padded).
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The UDP checksum (RFC 768) of `udp` (header with zero checksum + payload)
/// between the 8 address bytes `addrs` (source then destination).
fn pseudo_header_sum(addrs: &[u8], udp: &[u8]) -> u16 {
    let mut pseudo = addrs.to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    !ones_sum(&pseudo)
}

/// The IPv4 header sums to 0xffff including its checksum field (RFC 1071).
fn ipv4_header_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    ones_sum(&frame[14..14 + ihl]) == 0xffff
}

/// The UDP checksum is absent (0, legal over IPv4) or verifies over the
/// pseudo-header, header and payload.
fn udp_checksum_ok(frame: &[u8]) -> bool {
    let udp_len = usize::from(u16::from_be_bytes([frame[38], frame[39]]));
    let udp = &frame[34..34 + udp_len];
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    if check == 0 {
        return true;
    }
    let mut pseudo = frame[26..34].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    ones_sum(&pseudo) == 0xffff
}

#[test]
fn pinned_maps_survive_a_reload() {
    let test = "pinned_maps_survive_a_reload";
    own_thread_as_root(
        test,
        "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN to mount bpffs)",
        || {
            let bpffs = PrivateBpffs::mount("lanrage-bpffs", false)?;
            let pins = bpffs.dir.join("lanrage");
            std::fs::create_dir(&pins).expect("create a pin directory on bpffs");
            let config = XdpLoadConfig {
                max_routes: 8,
                relay: relay(),
                pin_path: Some(pins.clone()),
            };
            let key = RouteKey::new(alice(), BOB_INDEX);
            let hit = Frame::udp(alice(), relay(), transport(BOB_INDEX, 64)).build();
            {
                let mut first = XdpFastPath::load(config.clone()).expect("load with pinned maps");
                first.insert_route(&key, &RouteValue::new(bob())).unwrap();
                assert_eq!(first.test_run(&hit, None).unwrap().action, XDP_TX);
            }
            for map in ["lrg_routes", "lrg_counters", "lrg_config"] {
                assert!(pins.join(map).exists(), "{map} is pinned");
            }
            // A second load (a restarted relay) finds the route and the counters.
            let second = XdpFastPath::load(config).expect("reload with pinned maps");
            assert_eq!(second.route(&key).unwrap().map(|v| v.peer()), Some(bob()));
            assert_ne!(second.route_last_seen(&key).unwrap(), Some(0));
            assert_eq!(second.test_run(&hit, None).unwrap().action, XDP_TX);
            assert_eq!(second.counters().unwrap().forwarded(), 2);
            Ok(())
        },
    );
}

/// `attach_pinned`: the program stays attached to the interface after its
/// `XdpFastPath` is gone (a relay that exited), a second `attach_pinned`
/// re-points the same link at its own program (a restart: the interface
/// never runs without one), and a different mode replaces the stale link.
/// On a veth in a private network namespace, with a private bpffs.
#[test]
fn pinned_link_keeps_the_program_attached_across_a_restart() {
    let test = "pinned_link_keeps_the_program_attached_across_a_restart";
    own_thread_as_root(
        test,
        "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for bpffs and a netns)",
        || {
            let bpffs = PrivateBpffs::mount("lanrage-bpffs-link", true)?;
            ip(&["link", "add", "xl0", "type", "veth", "peer", "name", "xl1"]);
            ip(&["link", "set", "xl0", "up"]);
            ip(&["link", "set", "xl1", "up"]);
            let pins = bpffs.dir.join("lanrage");
            std::fs::create_dir(&pins).expect("create a pin directory on bpffs");
            let config = XdpLoadConfig {
                max_routes: 8,
                relay: relay(),
                pin_path: Some(pins.clone()),
            };
            let key = RouteKey::new(alice(), BOB_INDEX);

            let first_id = {
                let mut first = XdpFastPath::load(config.clone()).expect("load with pinned maps");
                first.insert_route(&key, &RouteValue::new(bob())).unwrap();
                let how = first
                    .attach_pinned("xl0", XdpMode::Skb, &pins)
                    .expect("attach through a pinned link");
                assert_eq!(how, PinnedAttach::Attached);
                xdp_prog_id("xl0").expect("attached")
            };
            assert!(pins.join("link_xl0_skb").exists());
            assert_eq!(
                xdp_prog_id("xl0"),
                Some(first_id),
                "still attached after the loader is gone"
            );

            let mut second = XdpFastPath::load(config.clone()).expect("reload");
            let how = second
                .attach_pinned("xl0", XdpMode::Skb, &pins)
                .expect("reuse the pinned link");
            assert_eq!(how, PinnedAttach::Replaced);
            let second_id = xdp_prog_id("xl0").expect("attached");
            assert_ne!(second_id, first_id, "the new program runs in the old link");
            assert_eq!(second.route(&key).unwrap().map(|v| v.peer()), Some(bob()));
            drop(second);
            assert_eq!(xdp_prog_id("xl0"), Some(second_id));

            // Another mode: the stale link goes, a new one is pinned.
            let mut third = XdpFastPath::load(config).expect("reload");
            let how = third
                .attach_pinned("xl0", XdpMode::Native, &pins)
                .expect("attach natively after removing the skb link");
            assert_eq!(how, PinnedAttach::Attached);
            assert!(!pins.join("link_xl0_skb").exists());
            assert!(pins.join("link_xl0_native").exists());
            drop(third);
            // Unpinning is how an operator detaches for good.
            std::fs::remove_file(pins.join("link_xl0_native")).expect("unpin");
            assert_eq!(xdp_prog_id("xl0"), None, "detached once unpinned");
            Ok(())
        },
    );
}

/// The id of the XDP program attached to `dev`, from `ip link show`.
fn xdp_prog_id(dev: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["link", "show", dev])
        .output()
        .expect("run `ip`");
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
