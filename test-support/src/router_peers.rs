//! Real boringtun peers driving the core's [`Router`] in memory: no socket,
//! a virtual clock, and verdicts that say where each datagram would go.
//! Used by the router's tests (relay/tests/router.rs) and the XDP test that
//! drives the router's commands into a kernel map (relay/tests/xdp_veth.rs).

use std::net::SocketAddr;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use lanrage_proto::control::{
    ControlMessage, Registration, RegistrationCookie, SessionKeys, NO_COOKIE,
};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;
use lanrage_relay_core::router::{Router, RouterConfig, Verdict};

pub use crate::packets::ipv4_packet;

pub const RELAY_SECRET: [u8; 32] = [0x42; 32];

pub fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address literal")
}

pub fn relay_ip() -> Option<std::net::IpAddr> {
    Some(addr("203.0.113.1:51888").ip())
}

/// One simulated client: a WireGuard static key, an endpoint, and a `Tunn`
/// per remote peer.
pub struct Peer {
    pub secret: StaticSecret,
    pub key: PeerKey,
    pub endpoint: SocketAddr,
    pub keys: SessionKeys,
    pub timestamp: u64,
    /// The cookie of the relay's last challenge to this peer.
    pub cookie: RegistrationCookie,
    /// The last registration it sent.
    pub last_sent: Vec<u8>,
}

impl Peer {
    pub fn new(seed: u8, endpoint: &str) -> Self {
        let secret = StaticSecret::from([seed; 32]);
        let public = PublicKey::from(&secret);
        let relay_public = PublicKey::from(&StaticSecret::from(RELAY_SECRET));
        let keys = SessionKeys::for_client(&secret, &relay_public).expect("keys");
        Self {
            key: PeerKey::from(&public),
            secret,
            endpoint: addr(endpoint),
            keys,
            timestamp: 1_000,
            cookie: NO_COOKIE,
            last_sent: Vec::new(),
        }
    }

    /// Another handle on the same key (for consent lists), never registered.
    pub fn view(&self) -> Peer {
        let mut view = Peer::new(0, "0.0.0.0:1");
        view.key = self.key;
        view
    }

    pub fn tunnel_to(&self, other: &Peer, index: u32) -> Tunn {
        Tunn::new(
            self.secret.clone(),
            PublicKey::from(other.key),
            None,
            None,
            index,
            None,
        )
    }

    /// The registration it would send with its current timestamp (the last
    /// one sent, byte for byte, since sealing is deterministic).
    pub fn registration_sent(&self) -> Vec<u8> {
        self.last_sent.clone()
    }

    pub fn registration(&mut self, consent: &[&Peer]) -> Vec<u8> {
        self.timestamp += 1;
        let wire = Registration {
            client: self.key,
            timestamp: self.timestamp,
            observed: None,
            cookie: self.cookie,
            consent: consent.iter().map(|p| p.key).collect(),
        }
        .seal(&self.keys)
        .expect("seal");
        self.last_sent.clone_from(&wire);
        wire
    }
}

pub fn router_with(config: RouterConfig, now: Instant) -> Router {
    Router::new(config, StaticSecret::from(RELAY_SECRET), 7, [9; 32], now)
}

pub fn router(now: Instant) -> Router {
    router_with(RouterConfig::default(), now)
}

/// Sends one registration from the peer's endpoint; if the relay challenges
/// it, takes the cookie (as a client receiving at that address would) and
/// returns the challenge's verdict. Asserts a challenge echoes the timestamp
/// and is smaller than the registration.
pub fn send_registration(
    router: &mut Router,
    now: Instant,
    peer: &mut Peer,
    consent: &[&Peer],
) -> (Vec<u8>, Verdict) {
    let sent = peer.registration(consent);
    let mut msg = sent.clone();
    let verdict = router.handle(now, peer.endpoint, &mut msg);
    if let Verdict::Reply(len) = verdict {
        if let Ok(ControlMessage::Challenge(challenge)) = ControlMessage::parse(&msg[..len]) {
            assert_eq!(challenge.echoed_timestamp, peer.timestamp);
            assert!(len < sent.len());
            peer.cookie = challenge.cookie;
        }
    }
    msg.truncate(match verdict {
        Verdict::Reply(len) => len,
        _ => msg.len(),
    });
    (msg, verdict)
}

pub fn is_challenge(reply: &[u8]) -> bool {
    matches!(
        ControlMessage::parse(reply),
        Ok(ControlMessage::Challenge(_))
    )
}

/// Registers `peer` with `consent`, answering a challenge if the relay sends
/// one; asserts the ack authenticates. Returns the accepted registration.
pub fn register(router: &mut Router, now: Instant, peer: &mut Peer, consent: &[&Peer]) -> Vec<u8> {
    let (mut reply, mut verdict) = send_registration(router, now, peer, consent);
    let mut accepted = peer.registration_sent();
    if matches!(verdict, Verdict::Reply(_)) && is_challenge(&reply) {
        (reply, verdict) = send_registration(router, now, peer, consent);
        accepted = peer.registration_sent();
    }
    let Verdict::Reply(_) = verdict else {
        panic!("registration not acknowledged: {verdict:?}");
    };
    let Ok(ControlMessage::RegisterAck(ack)) = ControlMessage::parse(&reply) else {
        panic!("reply is not an ack");
    };
    let ack = ack
        .verify(&peer.keys)
        .expect("ack MAC verifies with the client's keys");
    assert_eq!(ack.echoed_timestamp, peer.timestamp);
    assert_eq!(ack.reflexive, peer.endpoint);
    assert_eq!(ack.relay_epoch, 7);
    accepted
}

/// Two peers registered with consent to each other.
pub fn registered_pair(
    router: &mut Router,
    now: Instant,
    a: (u8, &str),
    b: (u8, &str),
) -> (Peer, Peer) {
    let (mut pa, mut pb) = (Peer::new(a.0, a.1), Peer::new(b.0, b.1));
    let (a_view, b_view) = (Peer::new(a.0, "0.0.0.0:1"), Peer::new(b.0, "0.0.0.0:1"));
    register(router, now, &mut pa, &[&b_view]);
    register(router, now, &mut pb, &[&a_view]);
    (pa, pb)
}

pub fn initiation(tunn: &mut Tunn) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    match tunn.format_handshake_initiation(&mut out, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

/// Feeds a datagram to a tunnel; returns what it wants to send back, if anything.
pub fn deliver(tunn: &mut Tunn, datagram: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 2048];
    match tunn.decapsulate(relay_ip(), datagram, &mut out) {
        TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
        TunnResult::Done => None,
        TunnResult::WriteToTunnelV4(p, _) => Some(p.to_vec()),
        other => panic!("tunnel refused datagram: {other:?}"),
    }
}

pub fn encapsulate(tunn: &mut Tunn, packet: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    match tunn.encapsulate(packet, &mut out) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no transport packet: {other:?}"),
    }
}

/// The seed and endpoint of the usual pair's A and B.
pub const A: (u8, &str) = (1, "198.51.100.1:40001");
pub const B: (u8, &str) = (2, "198.51.100.2:40002");

/// [`A`] and [`B`] registered on `router` with consent to each other.
pub fn pair(router: &mut Router, now: Instant) -> (Peer, Peer) {
    registered_pair(router, now, A, B)
}

/// A and B registered with mutual consent and a completed handshake through
/// the router. Returns their tunnels (A's to B, B's to A).
pub struct Session {
    pub router: Router,
    pub now: Instant,
    pub a: Peer,
    pub b: Peer,
    pub ab: Tunn,
    pub ba: Tunn,
}

/// A [`Session`] on a router with the default config.
pub fn session() -> Session {
    let now = Instant::now();
    session_on(router(now), now)
}

/// A [`Session`] on `router` (A's tunnel index 1, B's 2).
pub fn session_on(mut router: Router, now: Instant) -> Session {
    let (a, b) = pair(&mut router, now);
    let mut ab = a.tunnel_to(&b, 1);
    let mut ba = b.tunnel_to(&a, 2);
    handshake(&mut router, now, &a, &b, &mut ab, &mut ba);
    Session {
        router,
        now,
        a,
        b,
        ab,
        ba,
    }
}

pub fn handshake(
    router: &mut Router,
    now: Instant,
    a: &Peer,
    b: &Peer,
    ab: &mut Tunn,
    ba: &mut Tunn,
) {
    let mut init = initiation(ab);
    assert_eq!(
        router.handle(now, a.endpoint, &mut init),
        Verdict::Forward(b.endpoint)
    );
    let mut response = deliver(ba, &init).expect("B answers the initiation");
    assert_eq!(
        router.handle(now, b.endpoint, &mut response),
        Verdict::Forward(a.endpoint)
    );
    // A completes the handshake (and may send a keepalive).
    let _ = deliver(ab, &response);
}
