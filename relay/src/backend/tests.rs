//! The backend suite, run over both backends: every test here is a function
//! of the [`Kind`] and runs once per backend (`epoll::…`, `io_uring::…`), so
//! the two can't drift apart in what they promise. io_uring variants skip
//! where io_uring is unavailable, or fail under `LANRAGE_REQUIRE_PRIVILEGED=1`.
//! Tests of one backend's own mechanics live beside it (`uring/tests.rs`).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use super::test_support::{client, datagram, recv, refuse_gso, start, Fake, Kind, Setup};
use super::{bind_udp, epoll::MAX_DATAGRAM};
use crate::config::SocketConfig;
use lanrage_relay_core::router::LocalSocket;

/// Generates `epoll::$test` and `io_uring::$test` for each shared test.
macro_rules! over_both_backends {
    ($($test:ident),* $(,)?) => {
        mod epoll {
            $(
                #[test]
                fn $test() {
                    super::$test(super::Kind::Epoll);
                }
            )*
        }
        mod io_uring {
            $(
                #[test]
                fn $test() {
                    if super::Kind::Uring.available(stringify!($test)) {
                        super::$test(super::Kind::Uring);
                    }
                }
            )*
        }
    };
}

over_both_backends!(
    forwards_replies_drops_and_stops,
    oversized_datagrams_are_dropped_unread,
    unreachable_family_counts_a_send_error,
    dual_stack_socket_sees_ipv4_peers_as_ipv4,
    stop_before_run_returns_at_once,
    equal_sized_burst_goes_out_with_gso_and_arrives_as_datagrams,
    mixed_burst_keeps_every_datagram_and_its_order,
    refused_gso_resends_every_datagram,
    an_answer_for_another_socket_goes_to_the_handler_not_the_wire,
    stun_binding_and_change_requests_over_real_sockets,
);

fn forwards_replies_drops_and_stops(kind: Kind) {
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let setup = Setup {
        batch_size: 4,
        ..Setup::default()
    };
    let running = start(kind, setup, Fake::new(sink_addr, sink_addr), |_, _| {}).expect("start");
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
    // Dropped by the handler; the next datagram still works.
    peer.send_to(b"junk", relay).expect("send");
    peer.send_to(b"reply-again", relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");

    let done = running.finish();
    let peer_addr = peer.local_addr().expect("addr");
    assert_eq!(done.fake.seen.len(), 13);
    assert!(done.fake.seen.iter().all(|(src, _)| *src == peer_addr));
    assert_eq!(done.fake.seen[12].1, b"reply-again");
    assert_eq!(done.fake.timeouts_fired, 1);
    assert_eq!(done.received(), 13);
    assert_eq!(done.send_errors(), 0);
}

/// A datagram larger than the receive buffer never reaches the handler and
/// is counted; one of exactly `MAX_DATAGRAM` bytes is forwarded whole.
fn oversized_datagrams_are_dropped_unread(kind: Kind) {
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let running = start(
        kind,
        Setup::default(),
        Fake::new(sink_addr, sink_addr),
        |_, _| {},
    )
    .expect("start");
    let relay = running.relay;
    peer.send_to(&[b'f'; MAX_DATAGRAM + 100], relay)
        .expect("send");
    let largest = datagram(b"fwd", 99, MAX_DATAGRAM);
    peer.send_to(&largest, relay).expect("send");
    assert_eq!(recv(&sink).0, largest);
    peer.send_to(b"reply", relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");

    let done = running.finish();
    assert_eq!(
        done.fake.seen.len(),
        2,
        "oversized datagram must not be handled"
    );
    assert_eq!(done.oversized(), 1);
    assert_eq!(done.received(), 3);
    assert_eq!(done.send_errors(), 0);
}

/// An IPv6 destination from an IPv4-only socket: a counted send error,
/// and the worker carries on.
fn unreachable_family_counts_a_send_error(kind: Kind) {
    let peer = client("127.0.0.1:0");
    let v6_sink: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
    let setup = Setup {
        batch_size: 4,
        ..Setup::default()
    };
    let running = start(kind, setup, Fake::new(v6_sink, v6_sink), |_, _| {}).expect("start");
    peer.send_to(b"fwd", running.relay).expect("send");
    peer.send_to(b"reply", running.relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");
    let done = running.finish();
    assert_eq!(done.send_errors(), 1);
}

fn dual_stack_socket_sees_ipv4_peers_as_ipv4(kind: Kind) {
    let sink = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let peer = client("127.0.0.1:0");
    // A burst from an IPv4 peer, forwarded to an IPv4 sink through the
    // IPv6 socket (as mapped addresses), with GSO.
    let burst: Vec<Vec<u8>> = (0..10).map(|i| datagram(b"fwd", i, 700)).collect();
    let setup = Setup {
        listen: "[::]:0",
        batch_size: 16,
        ..Setup::default()
    };
    let Ok(running) = start(kind, setup, Fake::new(sink_addr, sink_addr), |relay, _| {
        let relay_v4 = SocketAddr::from(([127, 0, 0, 1], relay.port()));
        for d in &burst {
            peer.send_to(d, relay_v4).expect("send");
        }
    }) else {
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
    let done = running.finish();
    let peer_addr = peer.local_addr().expect("addr");
    assert!(done.fake.seen[..11]
        .iter()
        .all(|(src, _)| *src == peer_addr));
    if let Some(v6_peer) = v6_peer {
        assert_eq!(done.fake.seen[11].0, v6_peer.local_addr().expect("addr"));
    }
    assert_eq!(done.gso_refused(), 0);
    assert_eq!(done.send_errors(), 0);
}

fn stop_before_run_returns_at_once(kind: Kind) {
    let socket = bind_udp(
        "127.0.0.1:0".parse().expect("addr"),
        &SocketConfig::default(),
    )
    .expect("bind");
    let options = super::Options {
        batch_size: 1,
        gso: true,
    };
    let metrics = std::sync::Arc::default();
    let backend =
        super::test_support::backend(kind, socket, options, 64, metrics).expect("backend");
    backend.stop_handle().stop();
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut fake = Fake::new(nowhere, nowhere);
    fake.deadline = None;
    backend.run(&mut fake).expect("run");
}

fn equal_sized_burst_goes_out_with_gso_and_arrives_as_datagrams(kind: Kind) {
    // A plain socket has UDP_GRO off, so it sees every segment on its own.
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let sent: Vec<Vec<u8>> = (0..40).map(|i| datagram(b"fwd", i, 1200)).collect();
    let running = start(
        kind,
        Setup::default(),
        Fake::new(sink_addr, sink_addr),
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
    let done = running.finish();
    assert_eq!(done.fake.seen.len(), 40);
    assert!(done.gso_sends() >= 1, "burst was not coalesced");
    assert_eq!(done.gso_refused(), 0);
    assert_eq!(done.send_errors(), 0);
}

/// Runs that must split groups: a shorter datagram (closes a group), a
/// longer one (starts a new one), another destination, a reply and a drop
/// in between, more than 64 equal ones, and an empty-payload tail. Every
/// datagram arrives, byte for byte, in order per destination.
fn mixed_burst_keeps_every_datagram_and_its_order(kind: Kind) {
    let sink = client("127.0.0.1:0");
    let sink2 = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let fake = Fake::new(
        sink.local_addr().expect("addr"),
        sink2.local_addr().expect("addr"),
    );
    // (prefix, length) in send order:
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
    let setup = Setup {
        batch_size: 256,
        ..Setup::default()
    };
    let running = start(kind, setup, fake, |relay, _| {
        for d in &sent {
            peer.send_to(d, relay).expect("send");
        }
        peer.send_to(b"reply", relay).expect("send");
    })
    .expect("start");
    for d in sent.iter().filter(|d| d.starts_with(b"fwd")) {
        assert_eq!(recv(&sink).0, *d);
    }
    for d in sent.iter().filter(|d| d.starts_with(b"fw2")) {
        assert_eq!(recv(&sink2).0, *d);
    }
    assert_eq!(recv(&peer).0, b"ok");
    let done = running.finish();
    assert_eq!(done.fake.seen.len(), sent.len() + 1);
    assert!(done.gso_sends() >= 1);
    assert_eq!(done.send_errors(), 0);
}

/// The kernel refuses GSO on this socket: every datagram of the refused
/// burst is resent on its own and arrives, in order; later sends to that
/// destination go out unsegmented without another refusal.
fn refused_gso_resends_every_datagram(kind: Kind) {
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let sent: Vec<Vec<u8>> = (0..20).map(|i| datagram(b"fwd", i, 300)).collect();
    let setup = Setup {
        ring_entries: 64,
        ..Setup::default()
    };
    let running = start(
        kind,
        setup,
        Fake::new(sink_addr, sink_addr),
        |relay, socket| {
            refuse_gso(socket);
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
    let done = running.finish();
    assert!(done.gso_refused() >= 1);
    assert_eq!(done.send_errors(), 0);
}

/// A [`Decision::ReplyFrom`] is the handler's to send (`reply_from`): the
/// backend sends nothing for it and carries on.
fn an_answer_for_another_socket_goes_to_the_handler_not_the_wire(kind: Kind) {
    let peer = client("127.0.0.1:0");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let running = start(
        kind,
        Setup::default(),
        Fake::new(nowhere, nowhere),
        |_, _| {},
    )
    .expect("start");
    peer.send_to(b"alt-me", running.relay).expect("send");
    peer.send_to(b"reply-me", running.relay).expect("send");
    // Had the backend sent the hand-off's `ok` itself, it would come first.
    assert_eq!(recv(&peer), (b"ok".to_vec(), running.relay));
    let done = running.finish();
    let peer_addr = peer.local_addr().expect("addr");
    assert_eq!(
        done.fake.handed_off,
        vec![(LocalSocket::AltPort, peer_addr, b"ok".to_vec())]
    );
    assert_eq!(done.fake.seen.len(), 2);
}

/// The real router and the alternate sockets' thread behind a backend, on
/// loopback: a padded Binding is answered with the client's address; a
/// "change port" request on `listen` is answered from the alternate port
/// (handed off by the worker), and one on the alternate port from
/// `listen`; a bare 20-byte request gets nothing, counted.
fn stun_binding_and_change_requests_over_real_sockets(kind: Kind) {
    use crate::config::StunSettings;
    use crate::stun::StunSide;
    use crate::worker::Worker;
    use lanrage_proto::stun::{BindingResponse, ChangeRequest, RequestBuilder, MAX_RESPONSE_LEN};
    use lanrage_relay_core::metrics::DropReason;
    use lanrage_relay_core::router::{Router, RouterConfig};
    use std::time::Instant;

    let socket = bind_udp(
        "127.0.0.1:0".parse().expect("addr"),
        &SocketConfig::default(),
    )
    .expect("bind");
    let listen = socket.local_addr().expect("addr");
    let settings = StunSettings {
        alternate_port: Some(0),
        ..StunSettings::default()
    };
    let side = StunSide::bind(
        &settings,
        &SocketConfig::default(),
        listen,
        socket.try_clone().expect("clone"),
    )
    .expect("alternate port");
    let sockets = side.addresses();
    let alternate = SocketAddr::new(listen.ip(), sockets.alternate_port.expect("bound"));
    let mut config = RouterConfig::default();
    config.stun.sockets = sockets;
    let secret = lanrage_proto::x25519::StaticSecret::from([7u8; 32]);
    let router = Router::new(config, secret, 1, [3; 32], Instant::now());
    let metrics = std::sync::Arc::clone(router.metrics());
    let service = side
        .spawn(router.worker(), 1)
        .expect("spawn")
        .expect("alternates to serve");
    let mut worker =
        Worker::new(0, router, None, Instant::now()).with_stun(Some(service.handoff()));
    let options = super::Options {
        batch_size: 8,
        gso: true,
    };
    let backend =
        super::test_support::backend(kind, socket, options, 64, std::sync::Arc::default())
            .expect("backend");
    let stop = backend.stop_handle();
    let thread = std::thread::spawn(move || backend.run(&mut worker).expect("run"));

    let peer = client("127.0.0.1:0");
    let me = peer.local_addr().expect("addr");
    let ask = |to: SocketAddr, change: Option<ChangeRequest>, txid: u8| {
        let request = RequestBuilder {
            change,
            pad_to: MAX_RESPONSE_LEN,
            ..RequestBuilder::new([txid; 12])
        };
        let mut buf = [0u8; 256];
        let len = request.encode(&mut buf).expect("encode");
        peer.send_to(&buf[..len], to).expect("send");
        let (answer, from) = recv(&peer);
        assert!(answer.len() <= len, "answer larger than the request");
        let BindingResponse::Success(s) = BindingResponse::parse(&answer).expect("a STUN response")
        else {
            panic!("an error response");
        };
        assert_eq!(s.transaction_id, [txid; 12]);
        (s, from)
    };
    let (s, from) = ask(listen, None, 1);
    assert_eq!((s.xor_mapped, from), (Some(me), listen));
    assert_eq!(s.other, Some(alternate));
    assert_eq!(s.origin, Some(listen));
    let port = Some(ChangeRequest {
        change_ip: false,
        change_port: true,
    });
    let (s, from) = ask(listen, port, 2);
    assert_eq!(
        (s.xor_mapped, from, s.origin),
        (Some(me), alternate, Some(alternate))
    );
    let (s, from) = ask(alternate, port, 3);
    assert_eq!(
        (s.xor_mapped, from, s.other),
        (Some(me), listen, Some(listen))
    );
    // A bare header: nothing fits. The next answer proves it was handled.
    let mut bare = [0u8; 20];
    let len = RequestBuilder {
        fingerprint: false,
        ..RequestBuilder::new([4; 12])
    }
    .encode(&mut bare)
    .expect("encode");
    peer.send_to(&bare[..len], listen).expect("send");
    let (s, _) = ask(listen, None, 5);
    assert_eq!(s.transaction_id, [5; 12]);
    assert_eq!(metrics.dropped(DropReason::StunRequestTooShort), 1);
    stop.stop();
    thread.join().expect("backend thread");
    service.stop();
}
