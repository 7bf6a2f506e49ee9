//! `ControlMessage::parse` on arbitrary datagrams, then `verify` of whatever
//! parsed, under fixed session keys: never panics, and an accepted unknown-session
//! hint re-encodes to the same bytes.
#![no_main]

use std::sync::OnceLock;

use lanrage_proto::control::SessionKeys;
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, ControlMessage, DatagramKind};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let client = PublicKey::from(&StaticSecret::from([0x11; 32]));
        SessionKeys::for_relay(&StaticSecret::from([0x22; 32]), &client).expect("valid keys")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ControlMessage::parse(data) else {
        return;
    };
    assert_eq!(classify(data), DatagramKind::Control);
    match message {
        ControlMessage::Register(view) => {
            let _ = view.client();
            if let Ok(reg) = view.verify(keys()) {
                assert_eq!(reg.seal(keys()).expect("parsed consent is capped"), data);
            }
        }
        ControlMessage::RegisterAck(view) => {
            if let Ok(ack) = view.verify(keys()) {
                assert_eq!(ack.seal(keys()), data);
            }
        }
        ControlMessage::UnknownSession(hint) => assert_eq!(&hint.encode()[..], data),
    }
});
