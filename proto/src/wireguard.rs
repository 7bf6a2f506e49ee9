//! WireGuard message framing, parsed without any key (WireGuard paper §5.4).
//!
//! The relay never decrypts. It needs only the message type, the indices, and
//! the byte ranges that mac1 and mac2 cover. All four message types begin with
//! `type, 0, 0, 0`; indices are 32-bit little-endian.

use thiserror::Error;

/// Message type numbers (WireGuard paper §5.4.2–§5.4.7).
pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_COOKIE_REPLY: u8 = 3;
pub const TYPE_TRANSPORT: u8 = 4;

/// Exact sizes of the fixed-size messages, and the transport minimum
/// (16-byte header + 16-byte Poly1305 tag; a keepalive is exactly this).
pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const TRANSPORT_MIN_LEN: usize = 32;

/// mac1 and mac2 are the last 32 bytes of initiations and responses.
pub const MAC_LEN: usize = 16;

/// Why a datagram is not a well-formed WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WgError {
    #[error("datagram of {len} bytes is too short for a WireGuard header (4 bytes)")]
    TooShort { len: usize },
    #[error("byte 0 is {0}, not a WireGuard message type (1-4)")]
    UnknownType(u8),
    #[error("reserved bytes 1-3 are not zero")]
    ReservedNotZero,
    #[error("message type {kind} must be exactly {expected} bytes, got {len}")]
    WrongLength {
        kind: u8,
        expected: usize,
        len: usize,
    },
    #[error("transport message of {len} bytes is shorter than the 32-byte minimum")]
    TransportTooShort { len: usize },
}

/// A checked view of a WireGuard message. Once built, every accessor is in bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgMessage<'a> {
    Initiation(Handshake<'a>),
    Response(Handshake<'a>),
    CookieReply(CookieReply<'a>),
    Transport(Transport<'a>),
}

impl<'a> WgMessage<'a> {
    /// Validates the header and the exact length for the type.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WgError> {
        let [kind, r1, r2, r3, ..] = *bytes else {
            return Err(WgError::TooShort { len: bytes.len() });
        };
        if !(TYPE_INITIATION..=TYPE_TRANSPORT).contains(&kind) {
            return Err(WgError::UnknownType(kind));
        }
        if (r1, r2, r3) != (0, 0, 0) {
            return Err(WgError::ReservedNotZero);
        }
        let exact = |expected: usize| {
            if bytes.len() == expected {
                Ok(())
            } else {
                Err(WgError::WrongLength {
                    kind,
                    expected,
                    len: bytes.len(),
                })
            }
        };
        match kind {
            TYPE_INITIATION => {
                exact(INITIATION_LEN).map(|()| Self::Initiation(Handshake { bytes }))
            }
            TYPE_RESPONSE => exact(RESPONSE_LEN).map(|()| Self::Response(Handshake { bytes })),
            TYPE_COOKIE_REPLY => {
                exact(COOKIE_REPLY_LEN).map(|()| Self::CookieReply(CookieReply { bytes }))
            }
            _ if bytes.len() < TRANSPORT_MIN_LEN => {
                Err(WgError::TransportTooShort { len: bytes.len() })
            }
            _ => Ok(Self::Transport(Transport { bytes })),
        }
    }

    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        match self {
            Self::Initiation(h) | Self::Response(h) => h.bytes,
            Self::CookieReply(c) => c.bytes,
            Self::Transport(t) => t.bytes,
        }
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// An initiation (148 B) or a response (92 B). Both carry mac1 and mac2 last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake<'a> {
    bytes: &'a [u8],
}

impl<'a> Handshake<'a> {
    /// The sender's index, chosen by the sender for this handshake (offset 4).
    pub fn sender_index(&self) -> u32 {
        le_u32(self.bytes, 4)
    }

    /// For a response, the initiator's sender index it answers (offset 8).
    /// For an initiation this is part of the ephemeral key and meaningless.
    pub fn receiver_index(&self) -> u32 {
        le_u32(self.bytes, 8)
    }

    /// The bytes mac1 covers: everything before mac1.
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.bytes[..self.bytes.len() - 2 * MAC_LEN]
    }

    /// The bytes mac2 covers: everything before mac2 (mac1 included).
    pub fn mac2_input(&self) -> &'a [u8] {
        &self.bytes[..self.bytes.len() - MAC_LEN]
    }

    pub fn mac1(&self) -> &'a [u8; MAC_LEN] {
        let at = self.bytes.len() - 2 * MAC_LEN;
        self.bytes[at..at + MAC_LEN]
            .try_into()
            .expect("length checked in parse")
    }

    pub fn mac2(&self) -> &'a [u8; MAC_LEN] {
        let at = self.bytes.len() - MAC_LEN;
        self.bytes[at..]
            .try_into()
            .expect("length checked in parse")
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// A cookie reply (64 B): receiver index, 24-byte nonce, 32-byte sealed cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReply<'a> {
    bytes: &'a [u8],
}

impl<'a> CookieReply<'a> {
    /// The sender index of the handshake message this reply answers.
    pub fn receiver_index(&self) -> u32 {
        le_u32(self.bytes, 4)
    }

    pub fn nonce(&self) -> &'a [u8; 24] {
        self.bytes[8..32]
            .try_into()
            .expect("length checked in parse")
    }

    pub fn encrypted_cookie(&self) -> &'a [u8; 32] {
        self.bytes[32..64]
            .try_into()
            .expect("length checked in parse")
    }
}

/// A transport data message: receiver index, counter, ciphertext and tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport<'a> {
    bytes: &'a [u8],
}

impl<'a> Transport<'a> {
    /// The receiving peer's index for this session (offset 4).
    pub fn receiver_index(&self) -> u32 {
        le_u32(self.bytes, 4)
    }

    /// The nonce counter (offset 8, little-endian u64).
    pub fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[8..16]);
        u64::from_le_bytes(b)
    }
}

/// Writes the 16-byte transport header (type 4, receiver index, counter) into
/// `out`. Used by load generators that build valid-looking transport messages
/// without a WireGuard session.
pub fn write_transport_header(out: &mut [u8; 16], receiver_index: u32, counter: u64) {
    out[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
    out[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0] = kind;
        m[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        m
    }

    #[test]
    fn each_type_parses_at_its_exact_length_only() {
        for (kind, len) in [
            (1, INITIATION_LEN),
            (2, RESPONSE_LEN),
            (3, COOKIE_REPLY_LEN),
        ] {
            assert!(WgMessage::parse(&message(kind, len)).is_ok());
            assert!(matches!(
                WgMessage::parse(&message(kind, len - 1)),
                Err(WgError::WrongLength { .. })
            ));
            assert!(matches!(
                WgMessage::parse(&message(kind, len + 1)),
                Err(WgError::WrongLength { .. })
            ));
        }
        assert!(matches!(
            WgMessage::parse(&message(4, 31)),
            Err(WgError::TransportTooShort { len: 31 })
        ));
        let keepalive = message(4, 32);
        let Ok(WgMessage::Transport(t)) = WgMessage::parse(&keepalive) else {
            panic!("a 32-byte transport message is a keepalive");
        };
        assert_eq!(t.receiver_index(), 0x0102_0304);
    }

    #[test]
    fn header_errors_are_specific() {
        assert_eq!(
            WgMessage::parse(&[1, 0, 0]),
            Err(WgError::TooShort { len: 3 })
        );
        assert_eq!(
            WgMessage::parse(&[9, 0, 0, 0]),
            Err(WgError::UnknownType(9))
        );
        let mut m = message(1, INITIATION_LEN);
        m[2] = 1;
        assert_eq!(WgMessage::parse(&m), Err(WgError::ReservedNotZero));
    }

    #[test]
    fn handshake_fields_come_from_their_offsets() {
        let mut m = message(2, RESPONSE_LEN);
        m[8..12].copy_from_slice(&7u32.to_le_bytes());
        m[60..76].copy_from_slice(&[0xAA; 16]);
        m[76..92].copy_from_slice(&[0xBB; 16]);
        let Ok(WgMessage::Response(h)) = WgMessage::parse(&m) else {
            panic!("valid response");
        };
        assert_eq!(h.sender_index(), 0x0102_0304);
        assert_eq!(h.receiver_index(), 7);
        assert_eq!(h.mac1(), &[0xAA; 16]);
        assert_eq!(h.mac2(), &[0xBB; 16]);
        assert_eq!(h.mac1_input().len(), 60);
        assert_eq!(h.mac2_input().len(), 76);
    }
}
