//! `classify` on arbitrary datagrams: never panics, and agrees with the parsers.
#![no_main]

use lanrage_proto::{classify, ControlMessage, DatagramKind, WgMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
