//! mac1, mac2 and cookie replies (WireGuard paper §5.4.4 and §5.4.7).
//!
//! - `mac1 = MAC(HASH("mac1----" ‖ Spub_responder), msg[..mac1])` proves the
//!   sender knows the responder's public key, and tells a relay who a handshake
//!   is *for* without any secret.
//! - `mac2 = MAC(cookie, msg[..mac2])` proves the sender received a cookie at
//!   its source address.
//! - A cookie reply seals the cookie with XChaCha20-Poly1305 under
//!   `HASH("cookie--" ‖ Spub_responder)` with mac1 as associated data, so it can be
//!   built from the responder's public key alone.
//!
//! `MAC` is keyed BLAKE2s with a 16-byte output, `HASH` is BLAKE2s-256.

use std::net::{IpAddr, SocketAddr};

use blake2::digest::{FixedOutput, Mac as _};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::wireguard::{CookieReply, Handshake, COOKIE_REPLY_LEN, MAC_LEN, TYPE_COOKIE_REPLY};

type Blake2sMac128 = Blake2sMac<blake2::digest::consts::U16>;

const LABEL_MAC1: &[u8; 8] = b"mac1----";
const LABEL_COOKIE: &[u8; 8] = b"cookie--";

/// BLAKE2s-256 of the concatenated parts.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// Keyed BLAKE2s-128 of the concatenated parts.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut m = keyed(key);
    for part in parts {
        m.update(part);
    }
    m.finalize_fixed().into()
}

/// Constant-time check of a keyed BLAKE2s-128 tag.
pub(crate) fn mac_matches(key: &[u8], input: &[u8], tag: &[u8; MAC_LEN]) -> bool {
    let mut m = keyed(key);
    m.update(input);
    m.verify_slice(tag).is_ok()
}

fn keyed(key: &[u8]) -> Blake2sMac128 {
    // Keys here are 16 or 32 bytes; BLAKE2s accepts keys up to 32 bytes.
    <Blake2sMac128 as blake2::digest::KeyInit>::new_from_slice(key)
        .expect("BLAKE2s key of at most 32 bytes")
}

/// `HASH(label ‖ seed ‖ n)`: independent 32-byte secrets from one random seed,
/// e.g. a relay's rotating cookie secrets and its cookie-reply nonces.
pub fn derive_secret(seed: &[u8; 32], label: &[u8], n: u64) -> [u8; 32] {
    hash(&[label, seed, &n.to_le_bytes()])
}

/// The mac1 key of one responder, `HASH("mac1----" ‖ Spub)`. Precompute it once
/// per registered peer: a relay checks it against every candidate of a handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    pub fn for_responder(public_key: &[u8; 32]) -> Self {
        Self(hash(&[LABEL_MAC1, public_key]))
    }

    /// Whether `handshake` was made for this responder.
    pub fn verifies(&self, handshake: &Handshake<'_>) -> bool {
        mac_matches(&self.0, handshake.mac1_input(), handshake.mac1())
    }

    pub fn compute(&self, mac1_input: &[u8]) -> [u8; MAC_LEN] {
        mac(&self.0, &[mac1_input])
    }
}

/// The key that seals cookie replies for one responder, `HASH("cookie--" ‖ Spub)`.
#[derive(Clone, PartialEq, Eq)]
pub struct CookieKey([u8; 32]);

impl CookieKey {
    pub fn for_responder(public_key: &[u8; 32]) -> Self {
        Self(hash(&[LABEL_COOKIE, public_key]))
    }
}

/// A cookie: `MAC(secret, source address)`, 16 bytes. The secret rotates (every
/// two minutes in WireGuard), so cookies expire without any state.
pub type Cookie = [u8; MAC_LEN];

/// The cookie for `source` under `secret`. The address is encoded as the IP's
/// octets (4 or 16) followed by the big-endian port. WireGuard leaves this
/// encoding to the responder, since only the responder ever recomputes it.
pub fn cookie_for(secret: &[u8; 32], source: SocketAddr) -> Cookie {
    let port = source.port().to_be_bytes();
    match source.ip() {
        IpAddr::V4(ip) => mac(secret, &[&ip.octets(), &port]),
        IpAddr::V6(ip) => mac(secret, &[&ip.octets(), &port]),
    }
}

/// A relay's return-routability cookie for a registration of `client` from
/// `source`: `MAC(secret, C ‖ ip ‖ port)`, with the same address encoding as
/// [`cookie_for`]. Binding the key in means a cookie fetched for one key is
/// useless for another, so taking over a client's address needs a cookie
/// received at that address.
pub fn registration_cookie(secret: &[u8; 32], client: &[u8; 32], source: SocketAddr) -> Cookie {
    keyed_registration_cookie(secret, client, source)
        .finalize_fixed()
        .into()
}

/// Constant-time check that `cookie` is [`registration_cookie`]`(secret, client, source)`.
pub fn registration_cookie_matches(
    secret: &[u8; 32],
    client: &[u8; 32],
    source: SocketAddr,
    cookie: &Cookie,
) -> bool {
    keyed_registration_cookie(secret, client, source)
        .verify_slice(cookie)
        .is_ok()
}

/// Constant-time equality of two cookies (no early exit on the first
/// differing byte, so a forger learns nothing from timing).
pub fn cookies_equal(a: &Cookie, b: &Cookie) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

fn keyed_registration_cookie(
    secret: &[u8; 32],
    client: &[u8; 32],
    source: SocketAddr,
) -> Blake2sMac128 {
    let mut m = keyed(secret);
    m.update(client);
    match source.ip() {
        IpAddr::V4(ip) => m.update(&ip.octets()),
        IpAddr::V6(ip) => m.update(&ip.octets()),
    }
    m.update(&source.port().to_be_bytes());
    m
}

/// Whether the handshake's mac2 was made with `cookie`.
pub fn mac2_verifies(cookie: &Cookie, handshake: &Handshake<'_>) -> bool {
    mac_matches(cookie, handshake.mac2_input(), handshake.mac2())
}

/// `MAC(cookie, msg[..mac2])`, what an initiator holding `cookie` puts in mac2.
pub fn compute_mac2(cookie: &Cookie, mac2_input: &[u8]) -> [u8; MAC_LEN] {
    mac(cookie, &[mac2_input])
}

/// Builds a cookie reply to `handshake` on behalf of the responder whose cookie
/// key is `key`. `nonce` must never repeat under one key: take it from a CSPRNG
/// or a counter run through a keyed hash.
pub fn seal_cookie_reply(
    key: &CookieKey,
    handshake: &Handshake<'_>,
    cookie: &Cookie,
    nonce: &[u8; 24],
) -> [u8; COOKIE_REPLY_LEN] {
    let mut out = [0u8; COOKIE_REPLY_LEN];
    out[0] = TYPE_COOKIE_REPLY;
    out[4..8].copy_from_slice(&handshake.sender_index().to_le_bytes());
    out[8..32].copy_from_slice(nonce);
    let (sealed, tag_out) = out[32..].split_at_mut(MAC_LEN);
    sealed.copy_from_slice(cookie);
    let tag = XChaCha20Poly1305::new(&key.0.into())
        .encrypt_in_place_detached(XNonce::from_slice(nonce), handshake.mac1(), sealed)
        .expect("a 16-byte cookie is far below the AEAD's size limit");
    tag_out.copy_from_slice(&tag);
    out
}

/// Opens a cookie reply, as an initiator does, given the mac1 it last sent.
/// `None` if the reply was not sealed for that mac1 under `key`.
pub fn open_cookie_reply(
    key: &CookieKey,
    reply: &CookieReply<'_>,
    last_mac1: &[u8; MAC_LEN],
) -> Option<Cookie> {
    let sealed = reply.encrypted_cookie();
    let mut cookie: Cookie = sealed[..MAC_LEN].try_into().ok()?;
    XChaCha20Poly1305::new(&key.0.into())
        .decrypt_in_place_detached(
            XNonce::from_slice(reply.nonce()),
            last_mac1,
            &mut cookie,
            sealed[MAC_LEN..].into(),
        )
        .ok()?;
    Some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::{WgMessage, INITIATION_LEN};

    fn initiation_for(responder: &[u8; 32], cookie: Option<&Cookie>) -> Vec<u8> {
        let mut m = vec![0u8; INITIATION_LEN];
        m[0] = 1;
        m[4..8].copy_from_slice(&42u32.to_le_bytes());
        let mac1 = Mac1Key::for_responder(responder).compute(&m[..116]);
        m[116..132].copy_from_slice(&mac1);
        if let Some(cookie) = cookie {
            let mac2 = compute_mac2(cookie, &m[..132]);
            m[132..].copy_from_slice(&mac2);
        }
        m
    }

    fn handshake(bytes: &[u8]) -> Handshake<'_> {
        match WgMessage::parse(bytes) {
            Ok(WgMessage::Initiation(h)) => h,
            other => panic!("not an initiation: {other:?}"),
        }
    }

    #[test]
    fn mac1_identifies_the_responder() {
        let m = initiation_for(&[7; 32], None);
        assert!(Mac1Key::for_responder(&[7; 32]).verifies(&handshake(&m)));
        assert!(!Mac1Key::for_responder(&[8; 32]).verifies(&handshake(&m)));
    }

    #[test]
    fn cookie_reply_round_trip_then_mac2() {
        let responder = [9u8; 32];
        let source: SocketAddr = "192.0.2.1:5000".parse().expect("literal");
        let cookie = cookie_for(&[1; 32], source);
        let m = initiation_for(&responder, None);
        let h = handshake(&m);
        let key = CookieKey::for_responder(&responder);
        let reply = seal_cookie_reply(&key, &h, &cookie, &[3; 24]);
        let Ok(WgMessage::CookieReply(r)) = WgMessage::parse(&reply) else {
            panic!("sealed reply must parse");
        };
        assert_eq!(r.receiver_index(), 42);
        assert_eq!(open_cookie_reply(&key, &r, h.mac1()), Some(cookie));
        assert_eq!(open_cookie_reply(&key, &r, &[0; 16]), None);

        let retry = initiation_for(&responder, Some(&cookie));
        assert!(mac2_verifies(&cookie, &handshake(&retry)));
        assert!(!mac2_verifies(&cookie, &handshake(&m)));
        let other_port = cookie_for(&[1; 32], "192.0.2.1:5001".parse().expect("literal"));
        assert_ne!(cookie, other_port);
    }
}
