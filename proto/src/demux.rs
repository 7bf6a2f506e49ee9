//! One UDP port carries WireGuard, STUN and LANrage control. The first bytes tell
//! them apart, and the three patterns cannot overlap:
//!
//! - WireGuard: byte 0 is a message type 1–4, bytes 1–3 are zero.
//! - STUN (RFC 8489 §5): the two top bits of byte 0 are zero and bytes 4–7 are the
//!   magic cookie `0x2112A442`. WireGuard is checked first; the only STUN headers it
//!   could shadow are message types `0x0100`–`0x0400` with length 0, which are not
//!   Binding messages and so never STUN the relay answers.
//! - LANrage control: starts with the 4-byte magic `"LRG!"` (byte 0 = 0x4C, whose
//!   top bits are `01`, so never STUN; and never a WireGuard type).

use crate::control::MAGIC;

/// What a datagram on the shared port is, from its first bytes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    WireGuard,
    Stun,
    Control,
    Unknown,
}

/// STUN magic cookie, RFC 8489 §6.
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// A STUN message header is 20 bytes (RFC 8489 §5).
const STUN_HEADER_LEN: usize = 20;

/// Classifies a datagram by its first bytes. Total: any input gives a kind.
pub fn classify(bytes: &[u8]) -> DatagramKind {
    match bytes {
        [1..=4, 0, 0, 0, ..] => DatagramKind::WireGuard,
        [a, b, c, d, ..] if [*a, *b, *c, *d] == MAGIC => DatagramKind::Control,
        _ if bytes.len() >= STUN_HEADER_LEN
            && bytes[0] & 0xC0 == 0
            && bytes[4..8] == STUN_MAGIC_COOKIE =>
        {
            DatagramKind::Stun
        }
        _ => DatagramKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_recognised() {
        assert_eq!(classify(&[4, 0, 0, 0, 1, 2, 3, 4]), DatagramKind::WireGuard);
        assert_eq!(classify(b"LRG!\x01\x01\0\0"), DatagramKind::Control);
        let mut stun = [0u8; 20];
        stun[1] = 1; // binding request
        stun[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
        assert_eq!(classify(&stun), DatagramKind::Stun);
        assert_eq!(classify(&stun[..19]), DatagramKind::Unknown);
        assert_eq!(classify(&[5, 0, 0, 0]), DatagramKind::Unknown);
        assert_eq!(classify(&[1, 0, 0, 1]), DatagramKind::Unknown);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }
}
