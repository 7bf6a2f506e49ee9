//! `classify` on arbitrary datagrams: never panics, and agrees with the parsers.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/demux_classify.rs`) and the stable
//! replay test `proto/tests/fuzz_replay.rs`.

use lanrage_proto::{classify, ControlMessage, DatagramKind, WgMessage};

pub fn check(data: &[u8]) {
    let kind = classify(data);
    let wg = WgMessage::parse(data).is_ok();
    let control = ControlMessage::parse(data).is_ok();
    assert!(!(wg && control), "both a WireGuard and a control message");
    if wg {
        assert_eq!(kind, DatagramKind::WireGuard);
    }
    if control {
        assert_eq!(kind, DatagramKind::Control);
    }
    if kind == DatagramKind::Stun {
        // STUN never shadows the other two (demux.rs module doc).
        assert!(!wg && !control);
        assert!(data.len() >= 20 && data[0] & 0xC0 == 0);
    }
}
