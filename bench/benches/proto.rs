//! Per-datagram costs of `lanrage-proto` on the relay's hot paths: classifying and
//! parsing, matching a handshake's mac1 against candidate responders, verifying
//! registrations, and sealing cookie replies. Results live in `docs/benchmarks.md`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lanrage_proto::control::{Registration, SessionKeys};
use lanrage_proto::mac::{cookie_for, seal_cookie_reply, CookieKey, Mac1Key};
use lanrage_proto::wireguard::{write_transport_header, Handshake};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, ControlMessage, PeerKey, WgMessage};

/// Fixed secrets, so that every run measures the same keys.
const INITIATOR_SECRET: [u8; 32] = [0x11; 32];
const RESPONDER_SECRET: [u8; 32] = [0x22; 32];
const RELAY_SECRET: [u8; 32] = [0x33; 32];

/// A transport message carrying a 1420-byte inner packet (WireGuard's default MTU).
fn transport_packet() -> Vec<u8> {
    let mut packet = vec![0xA5; 16 + 1420 + 16];
    let mut header = [0u8; 16];
    write_transport_header(&mut header, 0x1234_5678, 42);
    packet[..16].copy_from_slice(&header);
    packet
}

/// A real handshake initiation from boringtun, for the responder's public key.
fn initiation(responder: &PublicKey) -> Vec<u8> {
    let mut tunn = Tunn::new(
        StaticSecret::from(INITIATOR_SECRET),
        *responder,
        None,
        None,
        0,
        None,
    );
    let mut buf = [0u8; 2048];
    match tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(bytes) => bytes.to_vec(),
        _ => panic!("a fresh tunnel must write an initiation"),
    }
}

fn handshake(bytes: &[u8]) -> Handshake<'_> {
    match WgMessage::parse(bytes) {
        Ok(WgMessage::Initiation(h)) => h,
        other => panic!("not an initiation: {other:?}"),
    }
}

fn responder_public() -> PublicKey {
    PublicKey::from(&StaticSecret::from(RESPONDER_SECRET))
}

fn demux(c: &mut Criterion) {
    let transport = transport_packet();
    let initiation = initiation(&responder_public());
    let mut group = c.benchmark_group("demux");
    for (name, packet) in [("transport", &transport), ("initiation", &initiation)] {
        group.bench_function(BenchmarkId::new("classify", name), |b| {
            b.iter(|| classify(black_box(packet)))
        });
        group.bench_function(BenchmarkId::new("wg_parse", name), |b| {
            b.iter(|| WgMessage::parse(black_box(packet)).is_ok())
        });
    }
    group.finish();
}

/// mac1 against `n` candidate responders where only the last one matches: the
/// worst case of a relay that must find who a handshake is for.
fn mac1(c: &mut Criterion) {
    let responder = responder_public();
    let bytes = initiation(&responder);
    let h = handshake(&bytes);
    let mut group = c.benchmark_group("mac1_candidates");
    for n in [1usize, 16, 64] {
        let mut candidates: Vec<Mac1Key> = (1..n)
            .map(|i| Mac1Key::for_responder(&[i as u8; 32]))
            .collect();
        candidates.push(Mac1Key::for_responder(responder.as_bytes()));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &candidates, |b, keys| {
            b.iter(|| {
                let found = keys.iter().position(|k| k.verifies(black_box(&h)));
                assert_eq!(found, Some(n - 1));
                found
            })
        });
    }
    group.finish();
}

/// Registration check on the relay: with the session keys computed from scratch
/// (X25519 + derivation + MAC) versus cached per client key (MAC only).
fn registration(c: &mut Criterion) {
    let client_secret = StaticSecret::from(INITIATOR_SECRET);
    let relay_secret = StaticSecret::from(RELAY_SECRET);
    let client_public = PublicKey::from(&client_secret);
    let at_client =
        SessionKeys::for_client(&client_secret, &PublicKey::from(&relay_secret)).expect("keys");
    let cached = SessionKeys::for_relay(&relay_secret, &client_public).expect("keys");
    let observed: SocketAddr = "192.0.2.10:51820".parse().expect("literal");

    let mut group = c.benchmark_group("registration_verify");
    for consent in [0usize, 64] {
        let wire = Registration {
            client: PeerKey::from(&client_public),
            timestamp: 1_700_000_000_000_000_000,
            observed: Some(observed),
            cookie: [0x11; 16],
            consent: (0..consent).map(|i| PeerKey([i as u8; 32])).collect(),
        }
        .seal(&at_client)
        .expect("consent within the cap");

        group.bench_with_input(BenchmarkId::new("full", consent), &wire, |b, wire| {
            b.iter(|| {
                let Ok(ControlMessage::Register(view)) = ControlMessage::parse(black_box(wire))
                else {
                    panic!("sealed registration must parse");
                };
                let keys =
                    SessionKeys::for_relay(&relay_secret, &view.client().into()).expect("keys");
                view.verify(&keys).expect("verifies")
            })
        });
        group.bench_with_input(BenchmarkId::new("cached", consent), &wire, |b, wire| {
            b.iter(|| {
                let Ok(ControlMessage::Register(view)) = ControlMessage::parse(black_box(wire))
                else {
                    panic!("sealed registration must parse");
                };
                view.verify(black_box(&cached)).expect("verifies")
            })
        });
    }
    group.finish();
}

/// Building a cookie reply under load: the cookie for the source, then sealing.
fn cookie_reply(c: &mut Criterion) {
    let responder = responder_public();
    let bytes = initiation(&responder);
    let h = handshake(&bytes);
    let key = CookieKey::for_responder(responder.as_bytes());
    let secret = [0x44; 32];
    let source: SocketAddr = "198.51.100.7:40000".parse().expect("literal");
    let cookie = cookie_for(&secret, source);

    let mut group = c.benchmark_group("cookie_reply");
    group.bench_function("cookie_for", |b| {
        b.iter(|| cookie_for(black_box(&secret), black_box(source)))
    });
    group.bench_function("seal", |b| {
        b.iter(|| seal_cookie_reply(&key, black_box(&h), black_box(&cookie), &[7; 24]))
    });
    group.finish();
}

fn config() -> Criterion {
    // The whole suite must run in well under two minutes on a shared machine.
    // Bootstrap resampling and plotting took longer than measuring, so both shrink.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .nresamples(10_000)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = demux, mac1, registration, cookie_reply
}
criterion_main!(benches);
