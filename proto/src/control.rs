//! LANrage control messages: registration, its acknowledgement, and the
//! unknown-session hint. Byte layouts are specified in `docs/protocol.md`.
//!
//! Every message starts with an 8-byte header:
//! `"LRG!" (4) | version (1) | type (1) | reserved, zero (2)`.
//! Multi-byte integers are big-endian, except WireGuard indices, which keep
//! WireGuard's little-endian form so they compare byte for byte.
//!
//! Registration proves possession of the client's WireGuard static key: it is
//! MACed under a key derived from `X25519(client_secret, relay_public)`, which the
//! relay recomputes as `X25519(relay_secret, client_public)`. Before a relay
//! binds a key to a new address it also wants proof that the source receives
//! at that address (return-routability): it answers with a [`Challenge`]
//! carrying a stateless cookie, which the client echoes inside the
//! MAC-covered registration. The relay computes no X25519 for a source that
//! has not echoed a cookie.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::key::PeerKey;
use crate::mac::{hash, mac, mac_matches};
use crate::party::{PartyMessageView, PartyRequestView, TYPE_PARTY_MESSAGE, TYPE_PARTY_REQUEST};
use crate::signal::{SignalView, MAX_SIGNAL_PLAINTEXT, TYPE_SIGNAL};
use crate::wireguard::MAC_LEN;
use crate::x25519::{PublicKey, StaticSecret};

/// The first four bytes of every control message. Byte 0 (0x4C) has top bits
/// `01`, so it is never STUN, and it is not a WireGuard type.
pub const MAGIC: [u8; 4] = *b"LRG!";
/// The protocol version this crate speaks. Version 2 added the registration
/// cookie (return-routability), the challenge, and the liveness probe.
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 8;

pub const TYPE_REGISTER: u8 = 1;
pub const TYPE_REGISTER_ACK: u8 = 2;
pub const TYPE_UNKNOWN_SESSION: u8 = 3;
pub const TYPE_CHALLENGE: u8 = 4;
pub const TYPE_PROBE: u8 = 5;
pub const TYPE_PROBE_ACK: u8 = 6;

/// The most peers a registration may consent to (a party's size limit).
pub const MAX_CONSENT: usize = 64;

/// Encoded socket address: family (0 none, 4, 6) | port (2) | address (16).
pub const ADDR_LEN: usize = 19;

/// A return-routability cookie: 16 bytes, all zero when the client has none.
pub const COOKIE_LEN: usize = 16;
/// The cookie field of a client that has not been challenged yet.
pub const NO_COOKIE: RegistrationCookie = [0; COOKIE_LEN];
/// A relay's return-routability cookie for one (source address, client key).
pub type RegistrationCookie = [u8; COOKIE_LEN];

/// Offsets inside a registration.
const REGISTER_TIMESTAMP_AT: usize = HEADER_LEN + 32;
const REGISTER_OBSERVED_AT: usize = REGISTER_TIMESTAMP_AT + 8;
const REGISTER_COOKIE_AT: usize = REGISTER_OBSERVED_AT + ADDR_LEN;
/// Fixed part of a registration before the consent keys: header, client key,
/// timestamp, observed endpoint, cookie, consent count.
const REGISTER_FIXED_LEN: usize = REGISTER_COOKIE_AT + COOKIE_LEN + 1;
/// Smallest and largest registration on the wire.
pub const REGISTER_MIN_LEN: usize = REGISTER_FIXED_LEN + MAC_LEN;
pub const REGISTER_MAX_LEN: usize = REGISTER_MIN_LEN + MAX_CONSENT * 32;
pub const REGISTER_ACK_LEN: usize = HEADER_LEN + 8 + 8 + ADDR_LEN + MAC_LEN;
pub const UNKNOWN_SESSION_LEN: usize = HEADER_LEN + 4 + 8 + 4;
pub const CHALLENGE_LEN: usize = HEADER_LEN + 8 + COOKIE_LEN;
pub const PROBE_LEN: usize = HEADER_LEN + 32 + 8 + MAC_LEN;
pub const PROBE_ACK_LEN: usize = HEADER_LEN + 8 + 8 + 4 + MAC_LEN;

/// Bit 0 of a probe ack's flags: the probing key is registered at the probe's
/// source, and the ack is authenticated. Clear: the relay does not know the
/// key there (e.g. it restarted), and the MAC field is zero.
pub const PROBE_FLAG_REGISTERED: u8 = 1;

/// Bit 0 of the unknown-session hint's flags: the source is registered, so only
/// the session is missing (re-handshake); clear means register first.
pub const HINT_FLAG_REGISTERED: u8 = 1;

const LABEL_REGISTRATION: &[u8] = b"lanrage registration v1";
const LABEL_CLIENT_TO_RELAY: &[u8] = b"client->relay";
const LABEL_RELAY_TO_CLIENT: &[u8] = b"relay->client";
const LABEL_PARTY_CLIENT_TO_RELAY: &[u8] = b"party client->relay";
const LABEL_PARTY_RELAY_TO_CLIENT: &[u8] = b"party relay->client";

/// Why a control message was refused. Each variant is a distinct drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("control message of {len} bytes is shorter than its {needed}-byte minimum")]
    Truncated { len: usize, needed: usize },
    #[error("missing the LANrage magic \"LRG!\"")]
    BadMagic,
    #[error("control protocol version {0} is not supported (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("control message type {0} is unknown")]
    UnknownType(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("message length {len} does not match its contents ({expected} expected)")]
    WrongLength { len: usize, expected: usize },
    #[error("consent list of {0} keys exceeds the maximum of {MAX_CONSENT}")]
    TooManyConsents(usize),
    #[error("address family {0} is not 0, 4 or 6")]
    BadAddressFamily(u8),
    #[error("address bytes that must be zero are not (family {0})")]
    NonCanonicalAddress(u8),
    #[error("a required address is missing (family 0)")]
    MissingAddress,
    #[error("the message authentication code does not verify")]
    BadMac,
    #[error("the peer's public key is a low-order point (no shared secret)")]
    WeakKey,
    #[error("signal payload of {0} bytes exceeds the maximum of {MAX_SIGNAL_PLAINTEXT}")]
    SignalTooLong(usize),
}

/// Any control message, parsed and length-checked but not yet authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage<'a> {
    Register(RegisterView<'a>),
    RegisterAck(RegisterAckView<'a>),
    UnknownSession(UnknownSession),
    Challenge(Challenge),
    Probe(ProbeView<'a>),
    ProbeAck(ProbeAckView<'a>),
    Signal(SignalView<'a>),
    PartyRequest(PartyRequestView<'a>),
    PartyMessage(PartyMessageView<'a>),
}

impl<'a> ControlMessage<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        let kind = parse_header(bytes)?;
        match kind {
            TYPE_REGISTER => RegisterView::parse(bytes).map(Self::Register),
            TYPE_REGISTER_ACK => RegisterAckView::parse(bytes).map(Self::RegisterAck),
            TYPE_UNKNOWN_SESSION => UnknownSession::parse(bytes).map(Self::UnknownSession),
            TYPE_CHALLENGE => Challenge::parse(bytes).map(Self::Challenge),
            TYPE_PROBE => ProbeView::parse(bytes).map(Self::Probe),
            TYPE_PROBE_ACK => ProbeAckView::parse(bytes).map(Self::ProbeAck),
            TYPE_SIGNAL => SignalView::parse(bytes).map(Self::Signal),
            TYPE_PARTY_REQUEST => PartyRequestView::parse(bytes).map(Self::PartyRequest),
            TYPE_PARTY_MESSAGE => PartyMessageView::parse(bytes).map(Self::PartyMessage),
            other => Err(ControlError::UnknownType(other)),
        }
    }
}

/// Checks magic, version and reserved bytes; returns the message type.
fn parse_header(bytes: &[u8]) -> Result<u8, ControlError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(ControlError::Truncated {
            len: bytes.len(),
            needed: HEADER_LEN,
        });
    };
    if header[..4] != MAGIC {
        return Err(ControlError::BadMagic);
    }
    if header[4] != VERSION {
        return Err(ControlError::UnsupportedVersion(header[4]));
    }
    if header[6..8] != [0, 0] {
        return Err(ControlError::ReservedNotZero);
    }
    Ok(header[5])
}

fn write_header(out: &mut Vec<u8>, kind: u8) {
    out.extend_from_slice(&header(kind));
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

fn key_at(bytes: &[u8], at: usize) -> PeerKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes[at..at + 32]);
    PeerKey(k)
}

/// Encodes an optional socket address in [`ADDR_LEN`] bytes. IPv6 flow
/// labels and scope ids are not carried: a scope id names an interface on the
/// sender's host and means nothing to the receiver.
pub fn encode_addr(addr: Option<SocketAddr>) -> [u8; ADDR_LEN] {
    let mut out = [0u8; ADDR_LEN];
    let Some(addr) = addr else {
        return out;
    };
    out[1..3].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[3..7].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[3..19].copy_from_slice(&ip.octets());
        }
    }
    out
}

/// Decodes [`encode_addr`]'s form. Unused address bytes must be zero so that
/// each address has one encoding.
pub fn decode_addr(bytes: &[u8; ADDR_LEN]) -> Result<Option<SocketAddr>, ControlError> {
    let port = u16::from_be_bytes([bytes[1], bytes[2]]);
    let ip = &bytes[3..];
    match bytes[0] {
        0 if bytes[1..].iter().all(|&b| b == 0) => Ok(None),
        4 if ip[4..].iter().all(|&b| b == 0) => {
            let v4 = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Ok(Some(SocketAddr::new(v4.into(), port)))
        }
        family @ (0 | 4) => Err(ControlError::NonCanonicalAddress(family)),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(ip);
            Ok(Some(SocketAddr::new(Ipv6Addr::from(o).into(), port)))
        }
        family => Err(ControlError::BadAddressFamily(family)),
    }
}

fn addr_at(bytes: &[u8], at: usize) -> Result<Option<SocketAddr>, ControlError> {
    let mut a = [0u8; ADDR_LEN];
    a.copy_from_slice(&bytes[at..at + ADDR_LEN]);
    decode_addr(&a)
}

/// The two MAC keys a client and a relay share, one per direction, derived from
/// their X25519 shared secret and both public keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    client_to_relay: [u8; 32],
    relay_to_client: [u8; 32],
    /// The AEAD keys of party messages (§2.12), one per direction.
    party_client_to_relay: [u8; 32],
    party_relay_to_client: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// What the client computes: `X25519(client_secret, relay_public)`.
    pub fn for_client(
        client_secret: &StaticSecret,
        relay_public: &PublicKey,
    ) -> Result<Self, ControlError> {
        let client_public = PublicKey::from(client_secret);
        let shared = client_secret.diffie_hellman(relay_public);
        Self::derive(&shared, &client_public, relay_public)
    }

    /// The client's MAC key towards the relay (signals are MACed with it too).
    pub(crate) fn client_to_relay(&self) -> &[u8; 32] {
        &self.client_to_relay
    }

    pub(crate) fn party_client_to_relay(&self) -> &[u8; 32] {
        &self.party_client_to_relay
    }

    pub(crate) fn party_relay_to_client(&self) -> &[u8; 32] {
        &self.party_relay_to_client
    }

    /// What the relay computes: `X25519(relay_secret, client_public)`.
    pub fn for_relay(
        relay_secret: &StaticSecret,
        client_public: &PublicKey,
    ) -> Result<Self, ControlError> {
        let relay_public = PublicKey::from(relay_secret);
        let shared = relay_secret.diffie_hellman(client_public);
        Self::derive(&shared, client_public, &relay_public)
    }

    fn derive(
        shared: &crate::x25519::SharedSecret,
        client: &PublicKey,
        relay: &PublicKey,
    ) -> Result<Self, ControlError> {
        // A low-order public key makes the shared secret predictable (all zero);
        // such a key proves nothing, so it is refused.
        if !shared.was_contributory() {
            return Err(ControlError::WeakKey);
        }
        let root = hash(&[
            LABEL_REGISTRATION,
            shared.as_bytes(),
            client.as_bytes(),
            relay.as_bytes(),
        ]);
        Ok(Self {
            client_to_relay: hash(&[LABEL_CLIENT_TO_RELAY, &root]),
            relay_to_client: hash(&[LABEL_RELAY_TO_CLIENT, &root]),
            party_client_to_relay: hash(&[LABEL_PARTY_CLIENT_TO_RELAY, &root]),
            party_relay_to_client: hash(&[LABEL_PARTY_RELAY_TO_CLIENT, &root]),
        })
    }
}

/// A registration, as a client builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The client's WireGuard static public key.
    pub client: PeerKey,
    /// Strictly increasing per client key; clients use Unix time in nanoseconds.
    /// The relay rejects any timestamp not above the last one it accepted.
    pub timestamp: u64,
    /// The client's own view of its endpoint (its local socket address), for
    /// diagnostics. The relay routes by the datagram's source, never this field.
    pub observed: Option<SocketAddr>,
    /// The cookie from the relay's last [`Challenge`] to this client at this
    /// address, or [`NO_COOKIE`]. Needed whenever the relay must bind the key
    /// to the source address (first registration, roaming, taking an address
    /// over); a refresh from the already bound address needs none.
    pub cookie: RegistrationCookie,
    /// The peers this client accepts traffic from (its party), at most 64.
    pub consent: Vec<PeerKey>,
}

impl Registration {
    /// Encodes and MACs the registration. Fails only on an oversized consent list.
    pub fn seal(&self, keys: &SessionKeys) -> Result<Vec<u8>, ControlError> {
        if self.consent.len() > MAX_CONSENT {
            return Err(ControlError::TooManyConsents(self.consent.len()));
        }
        let mut out = Vec::with_capacity(REGISTER_MIN_LEN + 32 * self.consent.len());
        write_header(&mut out, TYPE_REGISTER);
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&encode_addr(self.observed));
        out.extend_from_slice(&self.cookie);
        out.push(self.consent.len() as u8);
        for key in &self.consent {
            out.extend_from_slice(key.as_bytes());
        }
        let tag = mac(&keys.client_to_relay, &[&out]);
        out.extend_from_slice(&tag);
        Ok(out)
    }
}

/// A length-checked registration whose MAC is not yet verified. The relay reads
/// [`RegisterView::client`] to find (or compute) the session keys, then calls
/// [`RegisterView::verify`]; nothing else should be trusted before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterView<'a> {
    bytes: &'a [u8],
}

impl<'a> RegisterView<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        if bytes.len() < REGISTER_MIN_LEN {
            return Err(ControlError::Truncated {
                len: bytes.len(),
                needed: REGISTER_MIN_LEN,
            });
        }
        let count = usize::from(bytes[REGISTER_FIXED_LEN - 1]);
        if count > MAX_CONSENT {
            return Err(ControlError::TooManyConsents(count));
        }
        let expected = REGISTER_MIN_LEN + 32 * count;
        if bytes.len() != expected {
            return Err(ControlError::WrongLength {
                len: bytes.len(),
                expected,
            });
        }
        // Decode the address now so a verified view can't fail later.
        addr_at(bytes, REGISTER_OBSERVED_AT)?;
        Ok(Self { bytes })
    }

    /// The claimed client key (unauthenticated until `verify`).
    pub fn client(&self) -> PeerKey {
        key_at(self.bytes, HEADER_LEN)
    }

    /// The claimed timestamp (unauthenticated until `verify`): a challenge
    /// echoes it so the client can match the challenge to its registration.
    pub fn timestamp(&self) -> u64 {
        be_u64(self.bytes, REGISTER_TIMESTAMP_AT)
    }

    /// The echoed cookie (unauthenticated until `verify`). A relay checks it
    /// *before* `verify`, because a wrong cookie must cost no X25519.
    pub fn cookie(&self) -> RegistrationCookie {
        let mut c = NO_COOKIE;
        c.copy_from_slice(&self.bytes[REGISTER_COOKIE_AT..REGISTER_COOKIE_AT + COOKIE_LEN]);
        c
    }

    /// Checks the MAC under `keys` and returns the authenticated contents.
    pub fn verify(&self, keys: &SessionKeys) -> Result<Registration, ControlError> {
        let (body, tag) = self.bytes.split_at(self.bytes.len() - MAC_LEN);
        let tag: &[u8; MAC_LEN] = tag.try_into().map_err(|_| ControlError::BadMac)?;
        if !mac_matches(&keys.client_to_relay, body, tag) {
            return Err(ControlError::BadMac);
        }
        let count = usize::from(body[REGISTER_FIXED_LEN - 1]);
        let consent = (0..count)
            .map(|i| key_at(body, REGISTER_FIXED_LEN + 32 * i))
            .collect();
        Ok(Registration {
            client: self.client(),
            timestamp: be_u64(body, REGISTER_TIMESTAMP_AT),
            observed: addr_at(body, REGISTER_OBSERVED_AT)?,
            cookie: self.cookie(),
            consent,
        })
    }
}

/// The relay's acknowledgement of an accepted registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterAck {
    /// The registration's timestamp, echoed: the client's RTT sample.
    pub echoed_timestamp: u64,
    /// Changes whenever the relay restarts; a change means re-handshake.
    pub relay_epoch: u64,
    /// The registration's source address as the relay saw it.
    pub reflexive: SocketAddr,
}

impl RegisterAck {
    pub fn seal(&self, keys: &SessionKeys) -> Vec<u8> {
        let mut out = Vec::with_capacity(REGISTER_ACK_LEN);
        write_header(&mut out, TYPE_REGISTER_ACK);
        out.extend_from_slice(&self.echoed_timestamp.to_be_bytes());
        out.extend_from_slice(&self.relay_epoch.to_be_bytes());
        out.extend_from_slice(&encode_addr(Some(self.reflexive)));
        let tag = mac(&keys.relay_to_client, &[&out]);
        out.extend_from_slice(&tag);
        out
    }
}

/// A length-checked acknowledgement whose MAC is not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterAckView<'a> {
    bytes: &'a [u8],
}

impl<'a> RegisterAckView<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        exact_len(bytes, REGISTER_ACK_LEN)?;
        Ok(Self { bytes })
    }

    pub fn verify(&self, keys: &SessionKeys) -> Result<RegisterAck, ControlError> {
        let (body, tag) = self.bytes.split_at(REGISTER_ACK_LEN - MAC_LEN);
        let tag: &[u8; MAC_LEN] = tag.try_into().map_err(|_| ControlError::BadMac)?;
        if !mac_matches(&keys.relay_to_client, body, tag) {
            return Err(ControlError::BadMac);
        }
        let reflexive = addr_at(body, HEADER_LEN + 16)?.ok_or(ControlError::MissingAddress)?;
        Ok(RegisterAck {
            echoed_timestamp: be_u64(body, HEADER_LEN),
            relay_epoch: be_u64(body, HEADER_LEN + 8),
            reflexive,
        })
    }
}

/// The relay's hint that a transport message matched no route. It is not
/// authenticated (the relay may not know the source after a restart), so a
/// client treats it only as a prompt: refresh its registration if
/// [`UnknownSession::registered`] is false, then re-handshake. It is 24 bytes,
/// smaller than the smallest transport message (32), so it never amplifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownSession {
    /// The receiver index of the transport message that missed.
    pub receiver_index: u32,
    pub relay_epoch: u64,
    /// Whether the source is a registered endpoint.
    pub registered: bool,
}

impl UnknownSession {
    fn parse(bytes: &[u8]) -> Result<Self, ControlError> {
        exact_len(bytes, UNKNOWN_SESSION_LEN)?;
        let flags = bytes[HEADER_LEN + 12];
        if flags & !HINT_FLAG_REGISTERED != 0 || bytes[HEADER_LEN + 13..] != [0, 0, 0] {
            return Err(ControlError::ReservedNotZero);
        }
        let mut index = [0u8; 4];
        index.copy_from_slice(&bytes[HEADER_LEN..HEADER_LEN + 4]);
        Ok(Self {
            receiver_index: u32::from_le_bytes(index),
            relay_epoch: be_u64(bytes, HEADER_LEN + 4),
            registered: flags & HINT_FLAG_REGISTERED != 0,
        })
    }

    pub fn encode(&self) -> [u8; UNKNOWN_SESSION_LEN] {
        let mut out = [0u8; UNKNOWN_SESSION_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_UNKNOWN_SESSION));
        out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&self.receiver_index.to_le_bytes());
        out[HEADER_LEN + 4..HEADER_LEN + 12].copy_from_slice(&self.relay_epoch.to_be_bytes());
        out[HEADER_LEN + 12] = if self.registered {
            HINT_FLAG_REGISTERED
        } else {
            0
        };
        out
    }
}

/// The relay's answer to a registration that must prove its source address
/// (a new key, a new address, or an address another key holds) and carried no
/// valid cookie. Not authenticated: the relay has done no X25519 for this
/// source. A client that sent a registration with `echoed_timestamp` resends
/// it at once with `cookie`; it ignores any other challenge. At 32 bytes it is
/// smaller than the smallest registration (100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The timestamp of the registration this answers.
    pub echoed_timestamp: u64,
    /// `MAC(secret_g, C ‖ ip ‖ port)`: valid for the client key and source
    /// address of that registration, for 2–4 minutes (docs/protocol.md).
    pub cookie: RegistrationCookie,
}

impl Challenge {
    fn parse(bytes: &[u8]) -> Result<Self, ControlError> {
        exact_len(bytes, CHALLENGE_LEN)?;
        let mut cookie = NO_COOKIE;
        cookie.copy_from_slice(&bytes[HEADER_LEN + 8..]);
        Ok(Self {
            echoed_timestamp: be_u64(bytes, HEADER_LEN),
            cookie,
        })
    }

    pub fn encode(&self) -> [u8; CHALLENGE_LEN] {
        let mut out = [0u8; CHALLENGE_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_CHALLENGE));
        out[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&self.echoed_timestamp.to_be_bytes());
        out[HEADER_LEN + 8..].copy_from_slice(&self.cookie);
        out
    }
}

/// A client's liveness probe: "do you still know me, and are you the same
/// run?". Cheap for the relay (a MAC under the cached session key) and small,
/// so a client can send one every second to the relay it uses; that is how a
/// peer that only receives notices a relay restart (docs/protocol.md §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub client: PeerKey,
    /// Any value the client can match the ack to; Unix nanoseconds suggested.
    pub timestamp: u64,
}

impl Probe {
    pub fn seal(&self, keys: &SessionKeys) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_PROBE));
        out[HEADER_LEN..HEADER_LEN + 32].copy_from_slice(self.client.as_bytes());
        out[HEADER_LEN + 32..HEADER_LEN + 40].copy_from_slice(&self.timestamp.to_be_bytes());
        let tag = mac(&keys.client_to_relay, &[&out[..PROBE_LEN - MAC_LEN]]);
        out[PROBE_LEN - MAC_LEN..].copy_from_slice(&tag);
        out
    }
}

/// A length-checked probe whose MAC is not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeView<'a> {
    bytes: &'a [u8],
}

impl<'a> ProbeView<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        exact_len(bytes, PROBE_LEN)?;
        Ok(Self { bytes })
    }

    /// The claimed client key (unauthenticated until `verify`).
    pub fn client(&self) -> PeerKey {
        key_at(self.bytes, HEADER_LEN)
    }

    /// The claimed timestamp (unauthenticated until `verify`).
    pub fn timestamp(&self) -> u64 {
        be_u64(self.bytes, HEADER_LEN + 32)
    }

    pub fn verify(&self, keys: &SessionKeys) -> Result<Probe, ControlError> {
        let (body, tag) = self.bytes.split_at(PROBE_LEN - MAC_LEN);
        let tag: &[u8; MAC_LEN] = tag.try_into().map_err(|_| ControlError::BadMac)?;
        if !mac_matches(&keys.client_to_relay, body, tag) {
            return Err(ControlError::BadMac);
        }
        Ok(Probe {
            client: self.client(),
            timestamp: self.timestamp(),
        })
    }
}

/// The relay's answer to a probe. When the key is registered at the probe's
/// source the ack is MACed (`registered` true); otherwise it is not (the
/// relay does no X25519 for an unknown key) and only prompts the client to
/// register again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAck {
    pub echoed_timestamp: u64,
    pub relay_epoch: u64,
    pub registered: bool,
}

impl ProbeAck {
    fn body(&self) -> [u8; PROBE_ACK_LEN] {
        let mut out = [0u8; PROBE_ACK_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_PROBE_ACK));
        out[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&self.echoed_timestamp.to_be_bytes());
        out[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&self.relay_epoch.to_be_bytes());
        out[HEADER_LEN + 16] = if self.registered {
            PROBE_FLAG_REGISTERED
        } else {
            0
        };
        out
    }

    /// The authenticated ack for a registered client.
    pub fn seal(&self, keys: &SessionKeys) -> [u8; PROBE_ACK_LEN] {
        let mut out = ProbeAck {
            registered: true,
            ..*self
        }
        .body();
        let tag = mac(&keys.relay_to_client, &[&out[..PROBE_ACK_LEN - MAC_LEN]]);
        out[PROBE_ACK_LEN - MAC_LEN..].copy_from_slice(&tag);
        out
    }

    /// The unauthenticated "I don't know you here" ack (MAC field zero).
    pub fn not_registered(echoed_timestamp: u64, relay_epoch: u64) -> [u8; PROBE_ACK_LEN] {
        ProbeAck {
            echoed_timestamp,
            relay_epoch,
            registered: false,
        }
        .body()
    }
}

/// A length-checked probe ack. [`ProbeAckView::registered`] is readable
/// unauthenticated (a prompt only); an ack that says "registered" must
/// [`ProbeAckView::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAckView<'a> {
    bytes: &'a [u8],
}

impl<'a> ProbeAckView<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        exact_len(bytes, PROBE_ACK_LEN)?;
        let flags = bytes[HEADER_LEN + 16];
        if flags & !PROBE_FLAG_REGISTERED != 0 || bytes[HEADER_LEN + 17..HEADER_LEN + 20] != [0; 3]
        {
            return Err(ControlError::ReservedNotZero);
        }
        Ok(Self { bytes })
    }

    /// The unauthenticated contents (for a "not registered" prompt).
    pub fn unauthenticated(&self) -> ProbeAck {
        ProbeAck {
            echoed_timestamp: be_u64(self.bytes, HEADER_LEN),
            relay_epoch: be_u64(self.bytes, HEADER_LEN + 8),
            registered: self.bytes[HEADER_LEN + 16] & PROBE_FLAG_REGISTERED != 0,
        }
    }

    /// Checks the MAC of a "registered" ack.
    pub fn verify(&self, keys: &SessionKeys) -> Result<ProbeAck, ControlError> {
        let (body, tag) = self.bytes.split_at(PROBE_ACK_LEN - MAC_LEN);
        let tag: &[u8; MAC_LEN] = tag.try_into().map_err(|_| ControlError::BadMac)?;
        if !mac_matches(&keys.relay_to_client, body, tag) {
            return Err(ControlError::BadMac);
        }
        Ok(self.unauthenticated())
    }
}

pub(crate) fn header(kind: u8) -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind, 0, 0]
}

fn exact_len(bytes: &[u8], expected: usize) -> Result<(), ControlError> {
    if bytes.len() == expected {
        Ok(())
    } else if bytes.len() < expected {
        Err(ControlError::Truncated {
            len: bytes.len(),
            needed: expected,
        })
    } else {
        Err(ControlError::WrongLength {
            len: bytes.len(),
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> StaticSecret {
        StaticSecret::from([byte; 32])
    }

    fn keys(client: u8, relay: u8) -> (SessionKeys, SessionKeys, PeerKey) {
        let (c, r) = (secret(client), secret(relay));
        let client_pub = PublicKey::from(&c);
        let at_client = SessionKeys::for_client(&c, &PublicKey::from(&r)).expect("keys");
        let at_relay = SessionKeys::for_relay(&r, &client_pub).expect("keys");
        (at_client, at_relay, PeerKey::from(&client_pub))
    }

    /// A minimal registration from `client`: timestamp 1, no observed
    /// address, no cookie.
    fn minimal(client: PeerKey, consent: Vec<PeerKey>) -> Registration {
        Registration {
            client,
            timestamp: 1,
            observed: None,
            cookie: NO_COOKIE,
            consent,
        }
    }

    /// `wire` parsed as a registration (which it must be).
    fn register_view(wire: &[u8]) -> RegisterView<'_> {
        let Ok(ControlMessage::Register(view)) = ControlMessage::parse(wire) else {
            panic!("must parse as a well-formed registration");
        };
        view
    }

    #[test]
    fn both_sides_derive_the_same_keys() {
        let (a, b, _) = keys(1, 2);
        assert_eq!(a, b);
        let (c, _, _) = keys(3, 2);
        assert_ne!(a, c);
    }

    #[test]
    fn registration_round_trips_and_detects_tampering() {
        let (at_client, at_relay, me) = keys(1, 2);
        let reg = Registration {
            client: me,
            timestamp: 1_700_000_000_000_000_000,
            observed: Some("[2001:db8::1]:51820".parse().expect("literal")),
            cookie: [9; COOKIE_LEN],
            consent: vec![PeerKey([5; 32]), PeerKey([6; 32])],
        };
        let wire = reg.seal(&at_client).expect("seal");
        assert_eq!(wire.len(), REGISTER_MIN_LEN + 64);
        let view = register_view(&wire);
        assert_eq!(view.client(), me);
        assert_eq!(view.timestamp(), reg.timestamp);
        assert_eq!(view.cookie(), [9; COOKIE_LEN]);
        assert_eq!(view.verify(&at_relay), Ok(reg));

        // The cookie is MAC-covered: a relay can't be fed another address's cookie.
        let mut swapped = wire.clone();
        swapped[REGISTER_COOKIE_AT] ^= 1;
        let view = register_view(&swapped);
        assert_eq!(view.verify(&at_relay), Err(ControlError::BadMac));

        let mut tampered = wire.clone();
        tampered[HEADER_LEN + 33] ^= 1; // timestamp
        let view = register_view(&tampered);
        assert_eq!(view.verify(&at_relay), Err(ControlError::BadMac));
    }

    #[test]
    fn registration_mac_made_with_another_key_is_rejected() {
        let (_, at_relay, me) = keys(1, 2);
        let (wrong, _, _) = keys(3, 2);
        let reg = minimal(me, vec![]);
        let wire = reg.seal(&wrong).expect("seal");
        let view = register_view(&wire);
        assert_eq!(view.verify(&at_relay), Err(ControlError::BadMac));
    }

    #[test]
    fn consent_list_is_capped() {
        let (at_client, _, me) = keys(1, 2);
        let reg = Registration {
            client: me,
            timestamp: 1,
            observed: None,
            cookie: NO_COOKIE,
            consent: vec![PeerKey([1; 32]); MAX_CONSENT + 1],
        };
        assert_eq!(reg.seal(&at_client), Err(ControlError::TooManyConsents(65)));
        let mut wire = Registration {
            consent: vec![],
            ..reg
        }
        .seal(&at_client)
        .expect("seal");
        wire[REGISTER_FIXED_LEN - 1] = 65;
        assert_eq!(
            ControlMessage::parse(&wire),
            Err(ControlError::TooManyConsents(65))
        );
    }

    #[test]
    fn ack_round_trips_and_is_direction_bound() {
        let (at_client, at_relay, me) = keys(1, 2);
        let ack = RegisterAck {
            echoed_timestamp: 77,
            relay_epoch: 99,
            reflexive: "198.51.100.7:40000".parse().expect("literal"),
        };
        let wire = ack.seal(&at_relay);
        assert_eq!(wire.len(), REGISTER_ACK_LEN);
        let Ok(ControlMessage::RegisterAck(view)) = ControlMessage::parse(&wire) else {
            panic!("must parse");
        };
        assert_eq!(view.verify(&at_client), Ok(ack));
        // A registration MAC key must not verify an ack: the directions differ.
        let reg = minimal(me, vec![]).seal(&at_client).expect("seal");
        assert_ne!(&reg[reg.len() - 16..], &wire[wire.len() - 16..]);
    }

    #[test]
    fn hint_round_trips() {
        for registered in [false, true] {
            let hint = UnknownSession {
                receiver_index: 0xdead_beef,
                relay_epoch: 5,
                registered,
            };
            let wire = hint.encode();
            assert_eq!(
                ControlMessage::parse(&wire),
                Ok(ControlMessage::UnknownSession(hint))
            );
        }
    }

    #[test]
    fn header_errors_are_specific() {
        assert!(matches!(
            ControlMessage::parse(b"LRG!"),
            Err(ControlError::Truncated { .. })
        ));
        assert_eq!(
            ControlMessage::parse(b"LRX!\x01\x01\0\0"),
            Err(ControlError::BadMagic)
        );
        assert_eq!(
            ControlMessage::parse(b"LRG!\x01\x01\0\0"),
            Err(ControlError::UnsupportedVersion(1))
        );
        assert_eq!(
            ControlMessage::parse(b"LRG!\x02\x0b\0\0"),
            Err(ControlError::UnknownType(11))
        );
        assert_eq!(
            ControlMessage::parse(b"LRG!\x02\x01\0\x01"),
            Err(ControlError::ReservedNotZero)
        );
    }

    #[test]
    fn challenge_round_trips_and_is_smaller_than_any_registration() {
        let challenge = Challenge {
            echoed_timestamp: 0x0102_0304_0506_0708,
            cookie: [7; COOKIE_LEN],
        };
        let wire = challenge.encode();
        assert_eq!(wire.len(), 32);
        assert_eq!(&wire[..8], b"LRG!\x02\x04\0\0");
        assert_eq!(&wire[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            ControlMessage::parse(&wire),
            Ok(ControlMessage::Challenge(challenge))
        );
        const { assert!(CHALLENGE_LEN < REGISTER_MIN_LEN) };
        assert_eq!(REGISTER_MIN_LEN, 100);
    }

    #[test]
    fn probe_and_ack_round_trip_and_are_direction_bound() {
        let (at_client, at_relay, me) = keys(1, 2);
        let probe = Probe {
            client: me,
            timestamp: 42,
        };
        let wire = probe.seal(&at_client);
        assert_eq!(wire.len(), 64);
        let Ok(ControlMessage::Probe(view)) = ControlMessage::parse(&wire) else {
            panic!("must parse");
        };
        assert_eq!(view.client(), me);
        assert_eq!(view.verify(&at_relay), Ok(probe));
        let mut tampered = wire;
        tampered[HEADER_LEN + 39] ^= 1;
        let Ok(ControlMessage::Probe(view)) = ControlMessage::parse(&tampered) else {
            panic!("still well-formed");
        };
        assert_eq!(view.verify(&at_relay), Err(ControlError::BadMac));

        let ack = ProbeAck {
            echoed_timestamp: 42,
            relay_epoch: 7,
            registered: true,
        };
        let sealed = ack.seal(&at_relay);
        assert!(sealed.len() < wire.len(), "never larger than the probe");
        let Ok(ControlMessage::ProbeAck(view)) = ControlMessage::parse(&sealed) else {
            panic!("must parse");
        };
        assert_eq!(view.verify(&at_client), Ok(ack));

        let unknown = ProbeAck::not_registered(42, 7);
        let Ok(ControlMessage::ProbeAck(view)) = ControlMessage::parse(&unknown) else {
            panic!("must parse");
        };
        assert!(!view.unauthenticated().registered);
        assert_eq!(&unknown[PROBE_ACK_LEN - MAC_LEN..], &[0; MAC_LEN]);
        assert_eq!(view.verify(&at_client), Err(ControlError::BadMac));
    }

    #[test]
    fn low_order_client_key_is_refused() {
        let zero = PublicKey::from([0u8; 32]);
        assert_eq!(
            SessionKeys::for_relay(&secret(2), &zero),
            Err(ControlError::WeakKey)
        );
    }
}
