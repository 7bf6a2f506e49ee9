//! Peer identity: a WireGuard static public key.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

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

    /// Parses the base64 text form: exactly the 44 characters `wg pubkey`
    /// prints (standard alphabet, one `=` of padding, unused bits zero), so
    /// each key has one text form. Whitespace is not trimmed; a caller
    /// reading a key from a file or a line trims first.
    pub fn from_base64(text: &str) -> Option<Self> {
        base64_decode_32(text).map(Self)
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

/// Standard padded base64 of exactly 32 bytes (44 characters).
pub fn base64_encode_32(bytes: &[u8; 32]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard padded base64 into exactly 32 bytes; anything else
/// (another length, missing or extra padding, the URL-safe alphabet, set
/// trailing bits, whitespace) is `None`. The STANDARD engine requires
/// canonical padding and rejects trailing bits.
pub fn base64_decode_32(text: &str) -> Option<[u8; 32]> {
    // 44 characters decode to at most 33 bytes; a 33-byte buffer also
    // makes a longer input fail instead of being cut.
    let mut out = [0u8; 33];
    let len = STANDARD.decode_slice(text, &mut out).ok()?;
    out[..len].try_into().ok()
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

    /// One key, one text form: surrounding whitespace (ASCII or Unicode) is
    /// not part of a key. The hand-written decoder trimmed it, so
    /// `"<key>\n"` or `"\u{3000}<key>"` parsed while the standard base64
    /// decoder refuses them; callers reading a key from a file trim first.
    #[test]
    fn base64_rejects_surrounding_whitespace() {
        let text = PeerKey([0xfb; 32]).to_base64();
        for wrapped in [
            format!("{text}\n"),
            format!(" {text}"),
            format!("\u{3000}{text}"),
            format!("{text}\u{85}"),
        ] {
            assert_eq!(PeerKey::from_base64(&wrapped), None, "{wrapped:?}");
        }
    }
}
