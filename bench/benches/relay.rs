//! Per-packet costs of the relay's router: route table lookups at 1k, 100k and
//! 1M routes, and `Router::handle` on the forwarding path (a transport message
//! of an established session, and a miss that earns a hint). Sessions are set
//! up with real registrations and real boringtun handshakes. Results live in
//! `docs/benchmarks.md`.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lanrage_proto::control::{ControlMessage, Registration, SessionKeys, NO_COOKIE};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;
use lanrage_relay_core::command::CommandQueue;
use lanrage_relay_core::route_table::{Route, RouteKey, RouteTable};
use lanrage_relay_core::router::{Router, RouterConfig, Verdict};

const RELAY_SECRET: [u8; 32] = [0x33; 32];

/// A distinct, deterministic loopback endpoint per route, spread the way many
/// clients behind NATs would be: varied addresses and ports.
fn endpoint(i: u32) -> SocketAddr {
    let mixed = i.wrapping_mul(0x9E37_79B9);
    let ip = Ipv4Addr::from(0x7F00_0000 | (mixed >> 8));
    SocketAddr::V4(SocketAddrV4::new(ip, 1024 + (i % 60_000) as u16))
}

fn table_with(routes: u32, now: Instant) -> (RouteTable, Vec<RouteKey>) {
    let table = RouteTable::new(now);
    let mut keys = Vec::with_capacity(routes as usize);
    for i in 0..routes {
        let key = RouteKey {
            src: endpoint(i),
            index: i.wrapping_mul(2_654_435_761),
        };
        let reverse = RouteKey {
            src: endpoint(i ^ 1),
            index: !key.index,
        };
        table.insert(
            key,
            Route {
                dst: endpoint(i ^ 1),
                from: PeerKey([i as u8; 32]),
                to: PeerKey([(i ^ 1) as u8; 32]),
                reverse,
            },
            now,
            &mut CommandQueue::default(),
        );
        keys.push(key);
    }
    (table, keys)
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    for routes in [1_000u32, 100_000, 1_000_000] {
        let (table, keys) = table_with(routes, now);
        // Visit keys in a scrambled order so large tables pay their cache misses.
        let order: Vec<usize> = (0..keys.len())
            .map(|i| (i.wrapping_mul(7_919)) % keys.len())
            .collect();
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("hit", routes), &routes, |b, _| {
            b.iter(|| {
                next = (next + 1) % order.len();
                black_box(table.forward(&keys[order[next]], now))
            })
        });
        let missing = RouteKey {
            src: endpoint(u32::MAX),
            index: 7,
        };
        group.bench_with_input(BenchmarkId::new("miss", routes), &routes, |b, _| {
            b.iter(|| black_box(table.forward(black_box(&missing), now)))
        });
    }
    group.finish();
}

/// A client: static key, endpoint, registration keys.
struct Client {
    secret: StaticSecret,
    key: PeerKey,
    endpoint: SocketAddr,
    keys: SessionKeys,
}

impl Client {
    fn new(n: u32) -> Self {
        let mut seed = [0x55u8; 32];
        // Not bytes 0..4: X25519 clamps byte 0's low bits, so n and n + 1
        // would make the same key there.
        seed[4..8].copy_from_slice(&n.to_le_bytes());
        let secret = StaticSecret::from(seed);
        let relay = PublicKey::from(&StaticSecret::from(RELAY_SECRET));
        Self {
            key: PeerKey::from(&PublicKey::from(&secret)),
            keys: SessionKeys::for_client(&secret, &relay).expect("non-weak keys"),
            secret,
            endpoint: endpoint(n),
        }
    }

    /// Registers, answering the relay's return-routability challenge.
    fn register(&self, router: &mut Router, now: Instant, peer: PeerKey) {
        let mut cookie = NO_COOKIE;
        for timestamp in 1..=2 {
            let mut msg = Registration {
                client: self.key,
                timestamp,
                observed: None,
                cookie,
                consent: vec![peer],
            }
            .seal(&self.keys)
            .expect("one consent key");
            let verdict = router.handle(now, self.endpoint, &mut msg);
            let Verdict::Reply(len) = verdict else {
                panic!("registration answered: {verdict:?}");
            };
            match ControlMessage::parse(&msg[..len]) {
                Ok(ControlMessage::Challenge(c)) => cookie = c.cookie,
                Ok(ControlMessage::RegisterAck(_)) => return,
                other => panic!("unexpected reply {other:?}"),
            }
        }
        panic!("registration not acknowledged after answering the challenge");
    }
}

fn wire(result: TunnResult<'_>) -> Vec<u8> {
    match result {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("expected a datagram, got {other:?}"),
    }
}

/// `pairs` sessions established through `router`; returns one transport
/// message of the first pair (A → B) and A's endpoint.
fn router_with_sessions(pairs: u32, now: Instant) -> (Router, Vec<u8>, SocketAddr) {
    let config = RouterConfig {
        handshake_rate_limit: lanrage_relay_core::router::RateLimit {
            per_second: 1_000_000,
            burst: 1_000_000,
        },
        ..RouterConfig::default()
    };
    let mut router = Router::new(config, StaticSecret::from(RELAY_SECRET), 1, [7; 32], now);
    let mut first = None;
    for p in 0..pairs {
        let (a, b) = (Client::new(2 * p), Client::new(2 * p + 1));
        a.register(&mut router, now, b.key);
        b.register(&mut router, now, a.key);
        let mut ab = Tunn::new(
            a.secret.clone(),
            PublicKey::from(b.key),
            None,
            None,
            p,
            None,
        );
        let mut ba = Tunn::new(
            b.secret.clone(),
            PublicKey::from(a.key),
            None,
            None,
            p,
            None,
        );
        let mut buf = vec![0u8; 2048];
        let mut init = wire(ab.format_handshake_initiation(&mut buf, false));
        assert_eq!(
            router.handle(now, a.endpoint, &mut init),
            Verdict::Forward(b.endpoint)
        );
        let mut response = wire(ba.decapsulate(None, &init, &mut buf));
        assert_eq!(
            router.handle(now, b.endpoint, &mut response),
            Verdict::Forward(a.endpoint)
        );
        let _ = ab.decapsulate(None, &response, &mut buf);
        if first.is_none() {
            // A 100-byte game packet inside a minimal IPv4 header.
            let mut packet = vec![0u8; 128];
            packet[0] = 0x45;
            packet[2..4].copy_from_slice(&128u16.to_be_bytes());
            first = Some((wire(ab.encapsulate(&packet, &mut buf)), a.endpoint));
        }
    }
    let (transport, src) = first.expect("at least one pair");
    (router, transport, src)
}

fn router_handle(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_handle");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    for pairs in [1u32, 1_000] {
        let (mut router, mut transport, src) = router_with_sessions(pairs, now);
        group.bench_with_input(
            BenchmarkId::new("transport_forward", pairs),
            &pairs,
            |b, _| b.iter(|| black_box(router.handle(now, src, black_box(&mut transport)))),
        );
    }
    // A miss from an unknown source: classification, lookup, rate-limited hint.
    let (mut router, transport, _) = router_with_sessions(1, now);
    let stranger = endpoint(u32::MAX - 1);
    let mut packet = transport.clone();
    group.bench_function("transport_miss", |b| {
        b.iter(|| {
            // A hint overwrites the buffer's head; restore it (a 160-byte copy).
            packet.copy_from_slice(&transport);
            black_box(router.handle(now, stranger, &mut packet))
        })
    });
    group.finish();
}

criterion_group!(benches, route_lookup, router_handle);
criterion_main!(benches);
