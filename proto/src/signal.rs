//! Signaling (type 7, `docs/protocol.md` §2.10): a message from one client
//! to another that a relay forwards, unchanged, between two registered,
//! mutually consenting peers.
//!
//! Two layers. The relay checks a MAC under the sender's registration key
//! (`client_to_relay`), so nobody can make it forward in another client's
//! name, and a timestamp above the sender's last, so a captured signal
//! can't be replayed through it. The payload is sealed end to end with
//! ChaCha20-Poly1305 under a key only the two peers can compute (from the
//! X25519 of their WireGuard static keys), with the whole header as
//! associated data: the relay learns nothing and can forge nothing, and the
//! recipient rejects anything not newer than the last it opened.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

use crate::control::{header, ControlError, SessionKeys, HEADER_LEN};
use crate::key::PeerKey;
use crate::mac::{hash, mac, mac_matches};
use crate::wireguard::MAC_LEN;
use crate::x25519::{PublicKey, StaticSecret};

pub const TYPE_SIGNAL: u8 = 7;
/// Header, sender, recipient, timestamp, payload length.
pub const SIGNAL_FIXED_LEN: usize = HEADER_LEN + 32 + 32 + 8 + 2;
/// The AEAD tag at the end of the sealed payload.
pub const SEAL_TAG_LEN: usize = 16;
/// The largest plaintext a signal carries: room for a latency vector of
/// every relay and a few dozen candidates, and far below any path MTU.
pub const MAX_SIGNAL_PLAINTEXT: usize = 1024;
pub const SIGNAL_MIN_LEN: usize = SIGNAL_FIXED_LEN + SEAL_TAG_LEN + MAC_LEN;
pub const SIGNAL_MAX_LEN: usize = SIGNAL_MIN_LEN + MAX_SIGNAL_PLAINTEXT;

const LABEL_SIGNAL: &[u8] = b"lanrage signal v1";
const SENDER_AT: usize = HEADER_LEN;
const RECIPIENT_AT: usize = SENDER_AT + 32;
const TIMESTAMP_AT: usize = RECIPIENT_AT + 32;
const LENGTH_AT: usize = TIMESTAMP_AT + 8;

/// The end-to-end key for signals from `sender` to `recipient` (one per
/// direction): `HASH("lanrage signal v1" ‖ X25519 ‖ sender ‖ recipient)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignalKey([u8; 32]);

impl std::fmt::Debug for SignalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalKey(..)")
    }
}

impl SignalKey {
    /// The key for signals we send to `peer`.
    pub fn outgoing(secret: &StaticSecret, peer: &PeerKey) -> Result<Self, ControlError> {
        pair_key(LABEL_SIGNAL, secret, peer, Direction::ToPeer).map(Self)
    }

    /// The key for signals `peer` sends to us.
    pub fn incoming(secret: &StaticSecret, peer: &PeerKey) -> Result<Self, ControlError> {
        pair_key(LABEL_SIGNAL, secret, peer, Direction::FromPeer).map(Self)
    }
}

/// Which way a key between two peers works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    ToPeer,
    FromPeer,
}

/// A key only we and `peer` can compute, one per direction:
/// `HASH(label ‖ X25519(us, peer) ‖ sender ‖ recipient)`. Signals and path
/// probes each use their own label.
pub(crate) fn pair_key(
    label: &[u8],
    secret: &StaticSecret,
    peer: &PeerKey,
    direction: Direction,
) -> Result<[u8; 32], ControlError> {
    let me = PeerKey::from(&PublicKey::from(secret));
    let (sender, recipient) = match direction {
        Direction::ToPeer => (&me, peer),
        Direction::FromPeer => (peer, &me),
    };
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(ControlError::WeakKey);
    }
    Ok(hash(&[
        label,
        shared.as_bytes(),
        sender.as_bytes(),
        recipient.as_bytes(),
    ]))
}

/// A signal as its sender builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub sender: PeerKey,
    pub recipient: PeerKey,
    /// Strictly increasing per sender (Unix nanoseconds): the relay's and
    /// the recipient's replay check, and the AEAD nonce.
    pub timestamp: u64,
    pub plaintext: Vec<u8>,
}

fn nonce(timestamp: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&timestamp.to_le_bytes());
    Nonce::from(n)
}

impl Signal {
    /// Seals the payload for the recipient and MACs the whole for the relay.
    pub fn seal(&self, e2e: &SignalKey, relay: &SessionKeys) -> Result<Vec<u8>, ControlError> {
        if self.plaintext.len() > MAX_SIGNAL_PLAINTEXT {
            return Err(ControlError::SignalTooLong(self.plaintext.len()));
        }
        let sealed_len = self.plaintext.len() + SEAL_TAG_LEN;
        let mut out = Vec::with_capacity(SIGNAL_FIXED_LEN + sealed_len + MAC_LEN);
        out.extend_from_slice(&header(TYPE_SIGNAL));
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(self.recipient.as_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&(sealed_len as u16).to_be_bytes());
        let mut body = self.plaintext.clone();
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&e2e.0));
        let tag = cipher
            .encrypt_in_place_detached(&nonce(self.timestamp), &out, &mut body)
            .map_err(|_| ControlError::BadMac)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        let relay_mac = mac(relay.client_to_relay(), &[&out]);
        out.extend_from_slice(&relay_mac);
        Ok(out)
    }
}

/// A length-checked signal, neither MAC nor seal verified yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalView<'a> {
    bytes: &'a [u8],
}

impl<'a> SignalView<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        if bytes.len() < SIGNAL_MIN_LEN {
            return Err(ControlError::Truncated {
                len: bytes.len(),
                needed: SIGNAL_MIN_LEN,
            });
        }
        let sealed = usize::from(u16::from_be_bytes([bytes[LENGTH_AT], bytes[LENGTH_AT + 1]]));
        let expected = SIGNAL_FIXED_LEN + sealed + MAC_LEN;
        if !(SEAL_TAG_LEN..=MAX_SIGNAL_PLAINTEXT + SEAL_TAG_LEN).contains(&sealed)
            || bytes.len() != expected
        {
            return Err(ControlError::WrongLength {
                len: bytes.len(),
                expected,
            });
        }
        Ok(Self { bytes })
    }

    pub fn sender(&self) -> PeerKey {
        key_at(self.bytes, SENDER_AT)
    }

    pub fn recipient(&self) -> PeerKey {
        key_at(self.bytes, RECIPIENT_AT)
    }

    pub fn timestamp(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[TIMESTAMP_AT..TIMESTAMP_AT + 8]);
        u64::from_be_bytes(b)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The relay's check: made by the sender's registration key.
    pub fn verify_relay_mac(&self, sender_keys: &SessionKeys) -> Result<(), ControlError> {
        let (body, tag) = self.bytes.split_at(self.bytes.len() - MAC_LEN);
        let tag: &[u8; MAC_LEN] = tag.try_into().map_err(|_| ControlError::BadMac)?;
        if mac_matches(sender_keys.client_to_relay(), body, tag) {
            Ok(())
        } else {
            Err(ControlError::BadMac)
        }
    }

    /// The recipient's check: opens the payload sealed by the sender.
    /// (Replay is the recipient's to check, on [`SignalView::timestamp`].)
    pub fn open(&self, e2e: &SignalKey) -> Result<Vec<u8>, ControlError> {
        let end = self.bytes.len() - MAC_LEN;
        let aad = &self.bytes[..SIGNAL_FIXED_LEN];
        let (sealed, tag) =
            self.bytes[SIGNAL_FIXED_LEN..end].split_at(end - SIGNAL_FIXED_LEN - SEAL_TAG_LEN);
        let mut body = sealed.to_vec();
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&e2e.0));
        cipher
            .decrypt_in_place_detached(
                &nonce(self.timestamp()),
                aad,
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| ControlError::BadMac)?;
        Ok(body)
    }
}

fn key_at(bytes: &[u8], at: usize) -> PeerKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes[at..at + 32]);
    PeerKey(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlMessage;

    fn secret(n: u8) -> StaticSecret {
        StaticSecret::from([n; 32])
    }

    fn key(n: u8) -> PeerKey {
        PeerKey::from(&PublicKey::from(&secret(n)))
    }

    fn relay_keys(client: u8) -> SessionKeys {
        SessionKeys::for_client(&secret(client), &PublicKey::from(&secret(9))).expect("keys")
    }

    fn sealed(plaintext: &[u8], timestamp: u64) -> Vec<u8> {
        Signal {
            sender: key(1),
            recipient: key(2),
            timestamp,
            plaintext: plaintext.to_vec(),
        }
        .seal(
            &SignalKey::outgoing(&secret(1), &key(2)).expect("key"),
            &relay_keys(1),
        )
        .expect("seal")
    }

    fn view(bytes: &[u8]) -> SignalView<'_> {
        match ControlMessage::parse(bytes).expect("parses") {
            ControlMessage::Signal(v) => v,
            other => panic!("not a signal: {other:?}"),
        }
    }

    #[test]
    fn the_relay_verifies_and_the_recipient_opens() {
        let bytes = sealed(b"latency", 42);
        assert_eq!(bytes.len(), SIGNAL_MIN_LEN + 7);
        let v = view(&bytes);
        assert_eq!(
            (v.sender(), v.recipient(), v.timestamp()),
            (key(1), key(2), 42)
        );
        v.verify_relay_mac(&relay_keys(1)).expect("relay MAC");
        assert!(
            v.verify_relay_mac(&relay_keys(3)).is_err(),
            "another client's key"
        );
        let incoming = SignalKey::incoming(&secret(2), &key(1)).expect("key");
        assert_eq!(v.open(&incoming).expect("opens"), b"latency");
        // Only the recipient can open it: not the sender's other peers.
        let third = SignalKey::incoming(&secret(3), &key(1)).expect("key");
        assert!(v.open(&third).is_err());
    }

    #[test]
    fn any_changed_byte_is_refused_by_one_layer_or_the_other() {
        let bytes = sealed(b"candidates", 7);
        let incoming = SignalKey::incoming(&secret(2), &key(1)).expect("key");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let Ok(ControlMessage::Signal(v)) = ControlMessage::parse(&bad) else {
                continue; // the header or length no longer parses
            };
            let relay_ok = v.verify_relay_mac(&relay_keys(1)).is_ok();
            let opens = v.open(&incoming).is_ok();
            assert!(!(relay_ok && opens), "byte {i} changed undetected");
        }
    }

    #[test]
    fn lengths_are_checked() {
        let bytes = sealed(b"x", 1);
        assert!(ControlMessage::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes;
        longer.push(0);
        assert!(ControlMessage::parse(&longer).is_err());
        let too_big = Signal {
            sender: key(1),
            recipient: key(2),
            timestamp: 1,
            plaintext: vec![0; MAX_SIGNAL_PLAINTEXT + 1],
        }
        .seal(
            &SignalKey::outgoing(&secret(1), &key(2)).expect("key"),
            &relay_keys(1),
        );
        assert!(too_big.is_err());
    }
}
