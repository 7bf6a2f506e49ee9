//! `WgMessage::parse` on arbitrary datagrams: never panics, and every accessor
//! of an accepted message stays in bounds.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/wireguard_message.rs`) and the stable
//! replay test `proto/tests/fuzz_replay.rs`.

use lanrage_proto::mac::{open_cookie_reply, CookieKey, Mac1Key};
use lanrage_proto::wireguard::{
    COOKIE_REPLY_LEN, INITIATION_LEN, MAC_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN,
};
use lanrage_proto::{classify, DatagramKind, WgMessage};

pub fn check(data: &[u8]) {
    let Ok(message) = WgMessage::parse(data) else {
        return;
    };
    assert_eq!(classify(data), DatagramKind::WireGuard);
    assert_eq!(message.bytes(), data);
    match message {
        WgMessage::Initiation(h) | WgMessage::Response(h) => {
            assert!(data.len() == INITIATION_LEN || data.len() == RESPONSE_LEN);
            let _ = (h.sender_index(), h.receiver_index(), h.mac1(), h.mac2());
            assert_eq!(h.mac1_input().len() + 2 * MAC_LEN, data.len());
            assert_eq!(h.mac2_input().len() + MAC_LEN, data.len());
            let _ = Mac1Key::for_responder(&[7; 32]).verifies(&h);
        }
        WgMessage::CookieReply(c) => {
            assert_eq!(data.len(), COOKIE_REPLY_LEN);
            let _ = (c.receiver_index(), c.nonce());
            let _ = open_cookie_reply(&CookieKey::for_responder(&[7; 32]), &c, &[0; MAC_LEN]);
        }
        WgMessage::Transport(t) => {
            assert!(data.len() >= TRANSPORT_MIN_LEN);
            let _ = (t.receiver_index(), t.counter());
        }
    }
}
