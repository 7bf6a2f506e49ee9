//! `ControlMessage::parse` on arbitrary datagrams, then `verify` of whatever
//! parsed, under fixed session keys: never panics; whatever verifies re-seals,
//! and an accepted unknown-session hint, challenge or unauthenticated probe
//! ack re-encodes, to the same bytes; a signal that passes both the relay's
//! MAC and the end-to-end seal re-seals to the same bytes, and so does a
//! party request that opens and decodes.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/control_message.rs`) and the stable
//! replay test `proto/tests/fuzz_replay.rs`.

use std::sync::OnceLock;

use lanrage_proto::control::{Probe, ProbeAck, SessionKeys, PROBE_ACK_LEN};
use lanrage_proto::party::{seal_request, PartyOp};
use lanrage_proto::signal::{Signal, SignalKey};
use lanrage_proto::wireguard::MAC_LEN;
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, ControlMessage, DatagramKind, PeerKey};

fn keys() -> &'static SessionKeys {
    static KEYS: OnceLock<SessionKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let client = PublicKey::from(&StaticSecret::from([0x11; 32]));
        SessionKeys::for_relay(&StaticSecret::from([0x22; 32]), &client).expect("valid keys")
    })
}

pub fn check(data: &[u8]) {
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
        ControlMessage::Challenge(challenge) => assert_eq!(&challenge.encode()[..], data),
        ControlMessage::Probe(view) => {
            let (client, timestamp) = (view.client(), view.timestamp());
            if view.verify(keys()).is_ok() {
                assert_eq!(&Probe { client, timestamp }.seal(keys())[..], data);
            }
        }
        ControlMessage::ProbeAck(view) => {
            let ack = view.unauthenticated();
            if !ack.registered && data[PROBE_ACK_LEN - MAC_LEN..] == [0; MAC_LEN] {
                let encoded = ProbeAck::not_registered(ack.echoed_timestamp, ack.relay_epoch);
                assert_eq!(&encoded[..], data);
            }
            if let Ok(verified) = view.verify(keys()) {
                assert_eq!(verified, ack);
                if ack.registered {
                    assert_eq!(&verified.seal(keys())[..], data);
                }
            }
        }
        ControlMessage::Signal(view) => {
            let (sender, recipient, timestamp) =
                (view.sender(), view.recipient(), view.timestamp());
            let relay_ok = view.verify_relay_mac(keys()).is_ok();
            if let (true, Ok(plaintext)) = (relay_ok, view.open(signal_key())) {
                let signal = Signal {
                    sender,
                    recipient,
                    timestamp,
                    plaintext,
                };
                let resealed = signal
                    .seal(signal_key(), keys())
                    .expect("parsed length is capped");
                assert_eq!(resealed, data);
            }
        }
        ControlMessage::PartyRequest(view) => {
            // Whatever opens re-seals to the same bytes (the nonce is the id).
            if let Ok(plaintext) = view.open(keys()) {
                if let Ok(op) = PartyOp::decode(&plaintext) {
                    let resealed = seal_request(keys(), view.client(), view.id(), &op)
                        .expect("parsed length is capped");
                    assert_eq!(resealed, data);
                }
            }
        }
        ControlMessage::PartyMessage(view) => {
            // Opening decodes strictly, or fails: never panics.
            let _ = (view.kind(), view.id(), view.open(keys()));
        }
    }
}

fn signal_key() -> &'static SignalKey {
    static KEY: OnceLock<SignalKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let peer = PeerKey::from(&PublicKey::from(&StaticSecret::from([0x33; 32])));
        SignalKey::outgoing(&StaticSecret::from([0x11; 32]), &peer).expect("valid keys")
    })
}
