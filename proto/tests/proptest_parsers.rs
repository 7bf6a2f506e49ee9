//! Property tests for every parser of untrusted bytes in `lanrage-proto`.
//!
//! - Totality: arbitrary bytes, and valid encodings with a byte flipped, cut off or
//!   extended, go through every parser and accessor without a panic.
//! - Round-trips: what a sender seals or encodes, the receiver parses back
//!   unchanged, and anything a parser accepts has exactly one encoding.
//! - Tamper detection: any single-byte change to a sealed registration or
//!   acknowledgement fails to parse or fails to verify.
//! - `classify` agrees with the parsers.
//!
//! Failing cases are saved in `proptest_parsers.proptest-regressions` beside this
//! file, which is committed so that every later run replays them first.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use lanrage_proto::control::{
    decode_addr, encode_addr, RegisterAck, Registration, SessionKeys, UnknownSession, ADDR_LEN,
    CHALLENGE_LEN, HEADER_LEN, MAX_CONSENT, PROBE_ACK_LEN, PROBE_LEN, REGISTER_ACK_LEN,
    REGISTER_MIN_LEN, UNKNOWN_SESSION_LEN,
};
use lanrage_proto::mac::{open_cookie_reply, CookieKey, Mac1Key};
use lanrage_proto::wireguard::{COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, ControlError, ControlMessage, DatagramKind, PeerKey, WgMessage};
use proptest::collection::SizeRange;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

/// The largest datagram the tests feed in: above the relay's 2048-byte buffers.
const MAX_DATAGRAM: usize = 2300;

const CLIENT_SECRET: [u8; 32] = [0x11; 32];
const RELAY_SECRET: [u8; 32] = [0x22; 32];

/// Both ends' session keys for the fixed client and relay, and the client's key.
struct Fixture {
    relay_secret: StaticSecret,
    at_client: SessionKeys,
    at_relay: SessionKeys,
    client: PeerKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let client_secret = StaticSecret::from(CLIENT_SECRET);
        let relay_secret = StaticSecret::from(RELAY_SECRET);
        let client_public = PublicKey::from(&client_secret);
        let at_client = SessionKeys::for_client(&client_secret, &PublicKey::from(&relay_secret))
            .expect("fixed keys are not low-order");
        let at_relay =
            SessionKeys::for_relay(&relay_secret, &client_public).expect("fixed keys are valid");
        Fixture {
            relay_secret,
            at_client,
            at_relay,
            client: PeerKey::from(&client_public),
        }
    })
}

/// `cases` cases, with failures saved beside this file. (The default
/// persistence looks for a `lib.rs`, which an integration test does not have.)
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

fn optional_addr() -> impl Strategy<Value = Option<SocketAddr>> {
    prop_oneof![1 => Just(None), 4 => socket_addr().prop_map(Some)]
}

fn peer_key() -> impl Strategy<Value = PeerKey> {
    any::<[u8; 32]>().prop_map(PeerKey)
}

/// A registration with an arbitrary claimed client key.
fn registration() -> impl Strategy<Value = Registration> {
    (
        peer_key(),
        any::<u64>(),
        optional_addr(),
        any::<[u8; 16]>(),
        prop::collection::vec(peer_key(), 0..=MAX_CONSENT),
    )
        .prop_map(
            |(client, timestamp, observed, cookie, consent)| Registration {
                client,
                timestamp,
                observed,
                cookie,
                consent,
            },
        )
}

/// A registration from the fixture's client, as a real client would send it.
fn own_registration() -> impl Strategy<Value = Registration> {
    registration().prop_map(|reg| Registration {
        client: fixture().client,
        ..reg
    })
}

fn register_ack() -> impl Strategy<Value = RegisterAck> {
    (any::<u64>(), any::<u64>(), socket_addr()).prop_map(
        |(echoed_timestamp, relay_epoch, reflexive)| RegisterAck {
            echoed_timestamp,
            relay_epoch,
            reflexive,
        },
    )
}

fn unknown_session() -> impl Strategy<Value = UnknownSession> {
    (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
        |(receiver_index, relay_epoch, registered)| UnknownSession {
            receiver_index,
            relay_epoch,
            registered,
        },
    )
}

/// `header` followed by arbitrary bytes, as many as `body_len` allows.
fn with_header(header: [u8; 4], body_len: impl Into<SizeRange>) -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), body_len)
        .prop_map(move |body| [&header[..], &body].concat())
        .boxed()
}

/// Well-formed datagrams of every kind the shared port carries.
fn valid_datagram() -> impl Strategy<Value = Vec<u8>> {
    let fx = fixture();
    prop_oneof![
        with_header([1, 0, 0, 0], INITIATION_LEN - 4),
        with_header([2, 0, 0, 0], RESPONSE_LEN - 4),
        with_header([3, 0, 0, 0], COOKIE_REPLY_LEN - 4),
        with_header([4, 0, 0, 0], (TRANSPORT_MIN_LEN - 4)..(MAX_DATAGRAM - 4)),
        // STUN Binding request: type 0x0001, length, magic cookie, transaction id.
        with_header([0, 1, 0, 0], 16).prop_map(|mut m| {
            m[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            m
        }),
        registration().prop_map(|r| r.seal(&fx.at_client).expect("consent within limit")),
        register_ack().prop_map(|a| a.seal(&fx.at_relay)),
        unknown_session().prop_map(|h| h.encode().to_vec()),
    ]
}

/// One change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero value.
    Flip(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
}

impl Mutation {
    fn apply(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        match self {
            Self::Flip(at, x) if !bytes.is_empty() => {
                let at = at.index(bytes.len());
                bytes[at] ^= x;
            }
            Self::Flip(..) => {}
            Self::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Self::Extend(tail) => bytes.extend_from_slice(tail),
        }
        bytes
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..=u8::MAX).prop_map(|(at, x)| Mutation::Flip(at, x)),
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
    ]
}

/// Arbitrary bytes, and valid datagrams after one to three mutations.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..MAX_DATAGRAM),
        valid_datagram(),
        (valid_datagram(), prop::collection::vec(mutation(), 1..=3))
            .prop_map(|(m, ms)| ms.iter().fold(m, |m, mutation| mutation.apply(m))),
    ]
}

// ---------------------------------------------------------------------------
// Helpers that drive every accessor of whatever a parser accepted
// ---------------------------------------------------------------------------

fn exercise_wireguard(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(message) = WgMessage::parse(bytes) else {
        return Ok(());
    };
    prop_assert_eq!(message.bytes(), bytes);
    match message {
        WgMessage::Initiation(h) | WgMessage::Response(h) => {
            let expected = if matches!(message, WgMessage::Initiation(_)) {
                INITIATION_LEN
            } else {
                RESPONSE_LEN
            };
            prop_assert_eq!(bytes.len(), expected);
            let _ = (h.sender_index(), h.receiver_index(), h.mac2());
            prop_assert_eq!(h.mac1_input().len() + 32, bytes.len());
            prop_assert_eq!(h.mac2_input().len() + 16, bytes.len());
            let _ = Mac1Key::for_responder(&RELAY_SECRET).verifies(&h);
        }
        WgMessage::CookieReply(c) => {
            prop_assert_eq!(bytes.len(), COOKIE_REPLY_LEN);
            let _ = (c.receiver_index(), c.nonce());
            let opened = open_cookie_reply(&CookieKey::for_responder(&[7; 32]), &c, &[0; 16]);
            prop_assert!(opened.is_none(), "random bytes opened as a cookie reply");
        }
        WgMessage::Transport(t) => {
            prop_assert!(bytes.len() >= TRANSPORT_MIN_LEN);
            let _ = (t.receiver_index(), t.counter());
        }
    }
    Ok(())
}

fn exercise_control(bytes: &[u8]) -> Result<(), TestCaseError> {
    let fx = fixture();
    let Ok(message) = ControlMessage::parse(bytes) else {
        return Ok(());
    };
    match message {
        ControlMessage::Register(view) => {
            prop_assert!(bytes.len() >= REGISTER_MIN_LEN);
            let claimed = view.client();
            // The relay's path: derive keys for the claimed client, then verify.
            if let Ok(keys) = SessionKeys::for_relay(&fx.relay_secret, &claimed.into()) {
                let _ = view.verify(&keys);
            }
            let _ = view.verify(&fx.at_relay);
        }
        ControlMessage::RegisterAck(view) => {
            prop_assert_eq!(bytes.len(), REGISTER_ACK_LEN);
            let _ = view.verify(&fx.at_client);
        }
        ControlMessage::UnknownSession(hint) => {
            prop_assert_eq!(bytes.len(), UNKNOWN_SESSION_LEN);
            // Unauthenticated, so it must at least be canonical.
            prop_assert_eq!(&hint.encode()[..], bytes);
        }
        ControlMessage::Challenge(challenge) => {
            prop_assert_eq!(bytes.len(), CHALLENGE_LEN);
            prop_assert_eq!(&challenge.encode()[..], bytes);
        }
        ControlMessage::Probe(view) => {
            prop_assert_eq!(bytes.len(), PROBE_LEN);
            let _ = (view.client(), view.timestamp());
            let _ = view.verify(&fx.at_relay);
        }
        ControlMessage::ProbeAck(view) => {
            prop_assert_eq!(bytes.len(), PROBE_ACK_LEN);
            let _ = view.unauthenticated();
            let _ = view.verify(&fx.at_client);
        }
        ControlMessage::Signal(view) => {
            prop_assert!((lanrage_proto::signal::SIGNAL_MIN_LEN
                ..=lanrage_proto::signal::SIGNAL_MAX_LEN)
                .contains(&bytes.len()));
            prop_assert_eq!(view.len(), bytes.len());
            let _ = (view.sender(), view.recipient(), view.timestamp());
            let _ = view.verify_relay_mac(&fx.at_relay);
        }
        ControlMessage::PartyRequest(view) => {
            prop_assert!((lanrage_proto::party::REQUEST_MIN_LEN
                ..=lanrage_proto::party::REQUEST_MAX_LEN)
                .contains(&bytes.len()));
            let _ = (view.client(), view.id());
            prop_assert!(view.open(&fx.at_relay).is_err(), "random bytes opened");
        }
        ControlMessage::PartyMessage(view) => {
            prop_assert!((lanrage_proto::party::MESSAGE_MIN_LEN
                ..=lanrage_proto::party::MESSAGE_MAX_LEN)
                .contains(&bytes.len()));
            let _ = (view.kind(), view.id());
            prop_assert!(view.open(&fx.at_client).is_err(), "random bytes opened");
        }
    }
    Ok(())
}

fn exercise_addr(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut a = [0u8; ADDR_LEN];
    let n = bytes.len().min(ADDR_LEN);
    a[..n].copy_from_slice(&bytes[..n]);
    if let Ok(addr) = decode_addr(&a) {
        prop_assert_eq!(encode_addr(addr), a, "accepted a non-canonical address");
    }
    Ok(())
}

/// Whether a single-byte change to a sealed registration was caught: by the
/// parser, by key derivation for the claimed client, or by the MAC.
fn registration_change_is_caught(wire: &[u8]) -> Result<(), TestCaseError> {
    let fx = fixture();
    match ControlMessage::parse(wire) {
        Err(_) => {}
        Ok(ControlMessage::Register(view)) => {
            prop_assert!(
                view.verify(&fx.at_relay).is_err(),
                "verified under fixed keys"
            );
            if view.client() != fx.client {
                if let Ok(keys) = SessionKeys::for_relay(&fx.relay_secret, &view.client().into()) {
                    prop_assert!(view.verify(&keys).is_err(), "verified for claimed client");
                }
            }
        }
        Ok(other) => prop_assert!(false, "changed registration parsed as {other:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1024))]

    /// No parser panics, and `classify` agrees with them.
    #[test]
    fn parsers_are_total_and_agree_with_classify(bytes in datagram()) {
        let kind = classify(&bytes);
        let wg = WgMessage::parse(&bytes);
        let control = ControlMessage::parse(&bytes);
        if wg.is_ok() {
            prop_assert_eq!(kind, DatagramKind::WireGuard);
        }
        if control.is_ok() {
            prop_assert_eq!(kind, DatagramKind::Control);
        }
        if kind == DatagramKind::Stun || kind == DatagramKind::Unknown {
            prop_assert!(wg.is_err() && control.is_err());
        }
        exercise_wireguard(&bytes)?;
        exercise_control(&bytes)?;
        exercise_addr(&bytes)?;
        if let Some(tail) = bytes.get(HEADER_LEN..) {
            exercise_addr(tail)?;
        }
    }

    /// `decode_addr` on every 19-byte input; whatever it accepts re-encodes
    /// to the same bytes (one encoding per address).
    #[test]
    fn decode_addr_is_total_and_canonical(
        family in prop_oneof![Just(0u8), Just(4), Just(6), any::<u8>()],
        sparse in any::<bool>(),
        rest in any::<[u8; ADDR_LEN - 1]>(),
    ) {
        let mut a = [0u8; ADDR_LEN];
        a[0] = family;
        if sparse {
            // Mostly zero, so that the padding checks of families 0 and 4 are hit.
            a[1..3].copy_from_slice(&rest[..2]);
            a[3..7].copy_from_slice(&rest[2..6]);
        } else {
            a[1..].copy_from_slice(&rest);
        }
        exercise_addr(&a)?;
    }

    /// `encode_addr` then `decode_addr` is the identity.
    #[test]
    fn addr_round_trips(addr in optional_addr()) {
        prop_assert_eq!(decode_addr(&encode_addr(addr)), Ok(addr));
    }

    /// Seal, parse, verify gives back the registration, and the accepted
    /// bytes are exactly what sealing it again produces.
    #[test]
    fn registration_round_trips(reg in registration()) {
        let fx = fixture();
        let wire = reg.seal(&fx.at_client).expect("consent within limit");
        prop_assert_eq!(wire.len(), REGISTER_MIN_LEN + 32 * reg.consent.len());
        prop_assert_eq!(classify(&wire), DatagramKind::Control);
        let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&wire) else {
            return Err(TestCaseError::fail("sealed registration does not parse"));
        };
        prop_assert_eq!(view.client(), reg.client);
        let back = view.verify(&fx.at_relay).expect("sealed under the same keys");
        prop_assert_eq!(&back, &reg);
        prop_assert_eq!(back.seal(&fx.at_client).expect("same consent"), wire);
    }

    /// An oversized consent list is refused when sealing.
    #[test]
    fn registration_seal_refuses_oversized_consent(extra in 1usize..8) {
        let reg = Registration {
            client: fixture().client,
            timestamp: 0,
            observed: None,
            cookie: [0; 16],
            consent: vec![PeerKey([1; 32]); MAX_CONSENT + extra],
        };
        prop_assert_eq!(
            reg.seal(&fixture().at_client),
            Err(ControlError::TooManyConsents(MAX_CONSENT + extra))
        );
    }

    /// Acknowledgement seal then verify is the identity.
    #[test]
    fn register_ack_round_trips(ack in register_ack()) {
        let fx = fixture();
        let wire = ack.seal(&fx.at_relay);
        prop_assert_eq!(wire.len(), REGISTER_ACK_LEN);
        let Ok(ControlMessage::RegisterAck(view)) = ControlMessage::parse(&wire) else {
            return Err(TestCaseError::fail("sealed ack does not parse"));
        };
        prop_assert_eq!(view.verify(&fx.at_client), Ok(ack));
        prop_assert_eq!(view.verify(&fx.at_relay), Ok(ack), "both ends hold the same keys");
    }

    /// Unknown-session hint encode then parse is the identity.
    #[test]
    fn unknown_session_round_trips(hint in unknown_session()) {
        let wire = hint.encode();
        prop_assert_eq!(classify(&wire), DatagramKind::Control);
        prop_assert_eq!(
            ControlMessage::parse(&wire),
            Ok(ControlMessage::UnknownSession(hint))
        );
    }

    /// Every single-byte change to a sealed acknowledgement is caught.
    #[test]
    fn any_byte_change_to_an_ack_is_caught(
        ack in register_ack(),
        xor in prop::collection::vec(1..=u8::MAX, 16),
    ) {
        let fx = fixture();
        let wire = ack.seal(&fx.at_relay);
        for at in 0..wire.len() {
            let mut changed = wire.clone();
            changed[at] ^= xor[at % xor.len()];
            match ControlMessage::parse(&changed) {
                Err(_) => {}
                Ok(ControlMessage::RegisterAck(view)) => {
                    prop_assert!(view.verify(&fx.at_client).is_err(), "byte {} changed", at);
                }
                Ok(other) => prop_assert!(false, "changed ack parsed as {:?}", other),
            }
        }
    }

    /// `PeerKey`'s base64 parser is total on arbitrary text.
    #[test]
    fn peer_key_from_base64_is_total(text in ".{0,60}") {
        if let Some(key) = PeerKey::from_base64(&text) {
            let _ = format!("{key:?} {key}");
        }
    }

    /// `PeerKey` base64 round-trips.
    #[test]
    fn peer_key_base64_round_trips(key in peer_key()) {
        prop_assert_eq!(PeerKey::from_base64(&key.to_base64()), Some(key));
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Every single-byte change to a sealed registration is caught.
    /// Each case sweeps every position of one registration with a random XOR, so
    /// few cases are needed: a 64-key registration has 2132 positions.
    #[test]
    fn any_byte_change_to_a_registration_is_caught(
        reg in own_registration(),
        xor in prop::collection::vec(1..=u8::MAX, 16),
    ) {
        let wire = reg.seal(&fixture().at_client).expect("consent within limit");
        for at in 0..wire.len() {
            let mut changed = wire.clone();
            changed[at] ^= xor[at % xor.len()];
            registration_change_is_caught(&changed)?;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// `PeerKey::from_base64` accepts each key in one text form only (its doc
    /// comment promises this): whatever it accepts, `to_base64` prints back.
    #[test]
    fn peer_key_base64_is_canonical(
        key in peer_key(),
        at in 0usize..44,
        c in prop::sample::select(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=".to_vec()
        ),
    ) {
        let mut text = key.to_base64().into_bytes();
        text[at] = c;
        let text = String::from_utf8(text).expect("ASCII");
        if let Some(parsed) = PeerKey::from_base64(&text) {
            prop_assert_eq!(parsed.to_base64(), text);
        }
    }
}
