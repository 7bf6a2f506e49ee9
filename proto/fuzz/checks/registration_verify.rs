//! Registrations, two ways. Raw bytes: parse, then verify under fixed keys,
//! never panicking. Structured (via `arbitrary`): seal, parse and verify must give
//! the registration back, and flipping any one byte must make parse or verify fail.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/registration_verify.rs`) and the stable
//! replay test `proto/tests/fuzz_replay.rs`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use lanrage_proto::control::{Registration, SessionKeys, MAX_CONSENT};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{ControlMessage, PeerKey};

#[derive(Debug, Arbitrary)]
pub enum Input<'a> {
    Raw(&'a [u8]),
    Sealed {
        client: [u8; 32],
        timestamp: u64,
        observed: Option<Addr>,
        cookie: [u8; 16],
        consent: Vec<[u8; 32]>,
        /// Position (modulo the length) and non-zero XOR of one changed byte.
        flip: (u16, u8),
    },
}

#[derive(Debug, Arbitrary)]
pub enum Addr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl Addr {
    fn socket_addr(&self) -> SocketAddr {
        match *self {
            Self::V4(ip, port) => SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            Self::V6(ip, port) => SocketAddr::new(Ipv6Addr::from(ip).into(), port),
        }
    }
}

fn keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let client = PublicKey::from(&StaticSecret::from([0x11; 32]));
        SessionKeys::for_relay(&StaticSecret::from([0x22; 32]), &client).expect("valid keys")
    })
}

pub fn check(input: Input<'_>) {
    match input {
        Input::Raw(data) => {
            if let Ok(ControlMessage::Register(view)) = ControlMessage::parse(data) {
                let _ = view.client();
                let _ = view.verify(keys());
            }
        }
        Input::Sealed {
            client,
            timestamp,
            observed,
            cookie,
            mut consent,
            flip: (at, xor),
        } => {
            consent.truncate(MAX_CONSENT);
            let reg = Registration {
                client: PeerKey(client),
                timestamp,
                observed: observed.as_ref().map(Addr::socket_addr),
                cookie,
                consent: consent.into_iter().map(PeerKey).collect(),
            };
            let mut wire = reg.seal(keys()).expect("consent truncated to the cap");
            let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&wire) else {
                panic!("a sealed registration must parse: {wire:?}");
            };
            assert_eq!(view.verify(keys()), Ok(reg));

            if xor != 0 {
                let at = usize::from(at) % wire.len();
                wire[at] ^= xor;
                if let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&wire) {
                    assert!(view.verify(keys()).is_err(), "byte {at} ^ {xor} verified");
                }
            }
        }
    }
}
