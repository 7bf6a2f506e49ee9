//! Peer identity: a WireGuard static public key.

use std::fmt;

/// A WireGuard static public key, the identity of a peer everywhere in LANrage.
///
/// Displayed as standard base64, like `wg pubkey` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub [u8; 32]);

impl PeerKey {
    pub const LEN: usize = 32;

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the base64 text form (44 characters, as `wg pubkey` prints).
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = base64_decode_32(text.trim())?;
        Some(Self(bytes))
    }

    pub fn to_base64(&self) -> String {
        base64_encode_32(&self.0)
    }
}

impl From<&crate::x25519::PublicKey> for PeerKey {
    fn from(key: &crate::x25519::PublicKey) -> Self {
        Self(*key.as_bytes())
    }
}

impl From<PeerKey> for crate::x25519::PublicKey {
    fn from(key: PeerKey) -> Self {
        crate::x25519::PublicKey::from(key.0)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight characters identify a key in logs without flooding them.
        write!(f, "PeerKey({}…)", &self.to_base64()[..8])
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64 of exactly 32 bytes (44 characters). Keys are the only
/// thing this crate ever prints, so a general base64 dependency isn't needed here.
pub fn base64_encode_32(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(44);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64 into exactly 32 bytes; anything else is `None`.
pub fn base64_decode_32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 44 || text[43] != b'=' || text[42] == b'=' {
        return None;
    }
    let mut out = [0u8; 33];
    let mut written = 0;
    for (chunk_index, chunk) in text.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                // Padding only as the very last character (32 bytes leave one).
                b'=' if chunk_index * 4 + i == 43 => 0,
                _ => return None,
            };
            n = (n << 6) | u32::from(v);
        }
        for shift in [16, 8, 0] {
            out[written] = (n >> shift) as u8;
            written += 1;
        }
    }
    // The last character before '=' carries 2 unused bits; they must be zero
    // so that every key has exactly one text form.
    if out[32] != 0 {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&out[..32]);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_a_known_vector() {
        let key = PeerKey([0xfb; 32]);
        let text = key.to_base64();
        assert_eq!(text, "+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/s=");
        assert_eq!(PeerKey::from_base64(&text), Some(key));
    }

    #[test]
    fn base64_rejects_wrong_lengths_and_characters() {
        assert_eq!(PeerKey::from_base64(""), None);
        assert_eq!(PeerKey::from_base64(&"A".repeat(44)), None);
        assert_eq!(
            PeerKey::from_base64("!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            None
        );
        // Padding anywhere but the end.
        assert_eq!(
            PeerKey::from_base64("=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            None
        );
        // Non-canonical: unused low bits set in the last character.
        assert_eq!(
            PeerKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="),
            None
        );
    }
}
