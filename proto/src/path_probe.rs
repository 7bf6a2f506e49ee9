//! Path probes (type 8, `docs/protocol.md` §2.11): the pings and pongs two
//! clients send each other *directly*, to every candidate address, to find
//! and then watch a direct path. No relay carries them (a relay counts one
//! as an unknown control type).
//!
//! A probe is MACed under a key only the two peers can compute (from the
//! X25519 of their WireGuard static keys, one key per direction, as for
//! signals but with a label of its own), so a third party can neither forge
//! one nor make a pong seem to come from elsewhere. A pong echoes the ping's
//! transaction id and tells the pinger the address the ping came from (its
//! address as the peer sees it: a peer-reflexive candidate). A ping and its
//! pong are the same size, so an answer is never larger than what provoked
//! it; the recipient refuses a timestamp it has seen or one far older than
//! the newest (a captured probe can't be replayed to make it answer).

use std::net::SocketAddr;

use crate::control::{decode_addr, encode_addr, header, ControlError, ADDR_LEN, HEADER_LEN};
use crate::control::{MAGIC, VERSION};
use crate::key::PeerKey;
use crate::mac::{mac, mac_matches};
use crate::signal::{pair_key, Direction};
use crate::wireguard::MAC_LEN;
use crate::x25519::StaticSecret;

pub const TYPE_PATH_PROBE: u8 = 8;
/// Every probe, ping or pong, has this length.
pub const PATH_PROBE_LEN: usize = HEADER_LEN + 32 + 32 + 8 + 1 + 8 + ADDR_LEN + MAC_LEN;

const LABEL_PATH_PROBE: &[u8] = b"lanrage path probe v1";
const SENDER_AT: usize = HEADER_LEN;
const RECIPIENT_AT: usize = SENDER_AT + 32;
const TIMESTAMP_AT: usize = RECIPIENT_AT + 32;
const KIND_AT: usize = TIMESTAMP_AT + 8;
const TXID_AT: usize = KIND_AT + 1;
const OBSERVED_AT: usize = TXID_AT + 8;
const MAC_AT: usize = OBSERVED_AT + ADDR_LEN;

const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;

/// The MAC key for probes from `sender` to `recipient`:
/// `HASH("lanrage path probe v1" ‖ X25519 ‖ sender ‖ recipient)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PathKey([u8; 32]);

impl std::fmt::Debug for PathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathKey(..)")
    }
}

impl PathKey {
    /// The key for probes we send to `peer`.
    pub fn outgoing(secret: &StaticSecret, peer: &PeerKey) -> Result<Self, ControlError> {
        pair_key(LABEL_PATH_PROBE, secret, peer, Direction::ToPeer).map(Self)
    }

    /// The key for probes `peer` sends to us.
    pub fn incoming(secret: &StaticSecret, peer: &PeerKey) -> Result<Self, ControlError> {
        pair_key(LABEL_PATH_PROBE, secret, peer, Direction::FromPeer).map(Self)
    }
}

/// What a probe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Ping,
    /// The answer to the ping with the same transaction id, which came
    /// from `observed`.
    Pong {
        observed: SocketAddr,
    },
}

/// A probe as its sender builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathProbe {
    pub sender: PeerKey,
    pub recipient: PeerKey,
    /// Strictly increasing per sender (Unix nanoseconds): the replay check.
    pub timestamp: u64,
    pub txid: u64,
    pub kind: ProbeKind,
}

impl PathProbe {
    pub fn encode(&self, key: &PathKey) -> [u8; PATH_PROBE_LEN] {
        let mut out = [0u8; PATH_PROBE_LEN];
        out[..HEADER_LEN].copy_from_slice(&header(TYPE_PATH_PROBE));
        out[SENDER_AT..RECIPIENT_AT].copy_from_slice(self.sender.as_bytes());
        out[RECIPIENT_AT..TIMESTAMP_AT].copy_from_slice(self.recipient.as_bytes());
        out[TIMESTAMP_AT..KIND_AT].copy_from_slice(&self.timestamp.to_be_bytes());
        out[TXID_AT..OBSERVED_AT].copy_from_slice(&self.txid.to_be_bytes());
        match self.kind {
            ProbeKind::Ping => out[KIND_AT] = KIND_PING,
            ProbeKind::Pong { observed } => {
                out[KIND_AT] = KIND_PONG;
                out[OBSERVED_AT..MAC_AT].copy_from_slice(&encode_addr(Some(observed)));
            }
        }
        let tag = mac(&key.0, &[&out[..MAC_AT]]);
        out[MAC_AT..].copy_from_slice(&tag);
        out
    }
}

/// A length- and header-checked probe, its MAC not verified yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathProbeView<'a> {
    bytes: &'a [u8; PATH_PROBE_LEN],
}

impl<'a> PathProbeView<'a> {
    /// Whether `bytes` claims to be a path probe (a LANrage header of type
    /// 8); [`PathProbeView::parse`] then says whether it is well formed.
    pub fn is_path_probe(bytes: &[u8]) -> bool {
        bytes.len() >= HEADER_LEN && bytes[..4] == MAGIC && bytes[5] == TYPE_PATH_PROBE
    }

    pub fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        let bytes: &[u8; PATH_PROBE_LEN] = match bytes.try_into() {
            Ok(b) => b,
            Err(_) if bytes.len() < PATH_PROBE_LEN => {
                return Err(ControlError::Truncated {
                    len: bytes.len(),
                    needed: PATH_PROBE_LEN,
                })
            }
            Err(_) => {
                return Err(ControlError::WrongLength {
                    len: bytes.len(),
                    expected: PATH_PROBE_LEN,
                })
            }
        };
        if bytes[..4] != MAGIC {
            return Err(ControlError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(ControlError::UnsupportedVersion(bytes[4]));
        }
        if bytes[5] != TYPE_PATH_PROBE {
            return Err(ControlError::UnknownType(bytes[5]));
        }
        if bytes[6..8] != [0, 0] {
            return Err(ControlError::ReservedNotZero);
        }
        let view = Self { bytes };
        // The kind and the observed address must agree: a ping carries none.
        let observed = view.observed()?;
        match (bytes[KIND_AT], observed) {
            (KIND_PING, None) | (KIND_PONG, Some(_)) => Ok(view),
            (KIND_PONG, None) => Err(ControlError::MissingAddress),
            (KIND_PING, Some(_)) => Err(ControlError::NonCanonicalAddress(bytes[OBSERVED_AT])),
            (other, _) => Err(ControlError::UnknownType(other)),
        }
    }

    pub fn sender(&self) -> PeerKey {
        key_at(self.bytes, SENDER_AT)
    }

    pub fn recipient(&self) -> PeerKey {
        key_at(self.bytes, RECIPIENT_AT)
    }

    fn observed(&self) -> Result<Option<SocketAddr>, ControlError> {
        let mut a = [0u8; ADDR_LEN];
        a.copy_from_slice(&self.bytes[OBSERVED_AT..MAC_AT]);
        decode_addr(&a)
    }

    /// The probe, if `key` (the sender's [`PathKey`] towards us) made it.
    /// Replay is the recipient's to check, on the timestamp
    /// ([`ReplayWindow`]).
    pub fn verify(&self, key: &PathKey) -> Result<PathProbe, ControlError> {
        let mut tag = [0u8; MAC_LEN];
        tag.copy_from_slice(&self.bytes[MAC_AT..]);
        if !mac_matches(&key.0, &self.bytes[..MAC_AT], &tag) {
            return Err(ControlError::BadMac);
        }
        let kind = match self.observed()? {
            None => ProbeKind::Ping,
            Some(observed) => ProbeKind::Pong { observed },
        };
        Ok(PathProbe {
            sender: self.sender(),
            recipient: self.recipient(),
            timestamp: be_u64(self.bytes, TIMESTAMP_AT),
            txid: be_u64(self.bytes, TXID_AT),
            kind,
        })
    }
}

/// The recipient's replay check for one sender's probes. Probes to several
/// candidates may arrive out of order, so this is a window, not "newer than
/// the last": a timestamp is accepted once, and only within
/// [`ReplayWindow::SPAN_NANOS`] of the newest seen.
///
/// `N` accepted timestamps are remembered: 256 by default (a sender probes
/// at most a few hundred candidates per attempt, spread over time, so that
/// covers a window's worth); a relay, which keeps one window per
/// registered client for signals, keeps 8.
#[derive(Debug, Clone)]
pub struct ReplayWindow<const N: usize = 256> {
    newest: u64,
    /// The most recent accepted timestamps (a ring).
    seen: [u64; N],
    next: usize,
}

impl<const N: usize> Default for ReplayWindow<N> {
    fn default() -> Self {
        Self {
            newest: 0,
            seen: [0; N],
            next: 0,
        }
    }
}

impl<const N: usize> ReplayWindow<N> {
    /// Older than the newest by more than this: refused (2 s).
    pub const SPAN_NANOS: u64 = 2_000_000_000;
    /// How many accepted timestamps are remembered.
    pub const REMEMBERED: usize = N;

    /// Whether `timestamp` would be accepted (nothing is recorded).
    pub fn check(&self, timestamp: u64) -> bool {
        if timestamp == 0 || timestamp.saturating_add(Self::SPAN_NANOS) < self.newest {
            return false;
        }
        if self.seen.contains(&timestamp) {
            return false;
        }
        // Anything older than the oldest remembered could be a replay the
        // ring forgot: refuse it too.
        !(self.seen[self.next] != 0 && timestamp < self.seen[self.next])
    }

    /// Accepts `timestamp` (and records it) if it is new and recent enough.
    pub fn accept(&mut self, timestamp: u64) -> bool {
        if !self.check(timestamp) {
            return false;
        }
        self.seen[self.next] = timestamp;
        self.next = (self.next + 1) % Self::REMEMBERED;
        self.newest = self.newest.max(timestamp);
        true
    }
}

fn key_at(bytes: &[u8], at: usize) -> PeerKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes[at..at + 32]);
    PeerKey(k)
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlMessage;
    use crate::x25519::PublicKey;
    use proptest::prelude::*;

    fn secret(n: u8) -> StaticSecret {
        StaticSecret::from([n; 32])
    }

    fn key(n: u8) -> PeerKey {
        PeerKey::from(&PublicKey::from(&secret(n)))
    }

    fn probe(kind: ProbeKind) -> PathProbe {
        PathProbe {
            sender: key(1),
            recipient: key(2),
            timestamp: 1_700_000_000_000_000_000,
            txid: 0x0102_0304_0506_0708,
            kind,
        }
    }

    fn out_key() -> PathKey {
        PathKey::outgoing(&secret(1), &key(2)).expect("key")
    }

    fn in_key() -> PathKey {
        PathKey::incoming(&secret(2), &key(1)).expect("key")
    }

    #[test]
    fn pings_and_pongs_round_trip_at_one_size() {
        let observed: SocketAddr = "198.51.100.7:40001".parse().expect("addr");
        for kind in [ProbeKind::Ping, ProbeKind::Pong { observed }] {
            let bytes = probe(kind).encode(&out_key());
            assert_eq!(bytes.len(), PATH_PROBE_LEN);
            assert!(PathProbeView::is_path_probe(&bytes));
            let view = PathProbeView::parse(&bytes).expect("parses");
            assert_eq!((view.sender(), view.recipient()), (key(1), key(2)));
            assert_eq!(view.verify(&in_key()).expect("verifies"), probe(kind));
            // Only the recipient's key verifies it: not a third peer's.
            let third = PathKey::incoming(&secret(3), &key(1)).expect("key");
            assert_eq!(view.verify(&third), Err(ControlError::BadMac));
            // The reverse direction's key doesn't either.
            let reverse = PathKey::outgoing(&secret(2), &key(1)).expect("key");
            assert_eq!(view.verify(&reverse), Err(ControlError::BadMac));
        }
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let observed: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        let bytes = probe(ProbeKind::Pong { observed }).encode(&out_key());
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            if let Ok(view) = PathProbeView::parse(&bad) {
                assert!(
                    view.verify(&in_key()).is_err(),
                    "byte {i} changed undetected"
                );
            }
        }
    }

    #[test]
    fn a_relay_sees_an_unknown_control_type() {
        let bytes = probe(ProbeKind::Ping).encode(&out_key());
        assert_eq!(
            ControlMessage::parse(&bytes),
            Err(ControlError::UnknownType(TYPE_PATH_PROBE))
        );
    }

    #[test]
    fn lengths_and_kinds_are_checked() {
        let bytes = probe(ProbeKind::Ping).encode(&out_key());
        assert!(matches!(
            PathProbeView::parse(&bytes[..PATH_PROBE_LEN - 1]),
            Err(ControlError::Truncated { .. })
        ));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            PathProbeView::parse(&longer),
            Err(ControlError::WrongLength { .. })
        ));
        let mut pong_without_address = bytes;
        pong_without_address[KIND_AT] = KIND_PONG;
        assert_eq!(
            PathProbeView::parse(&pong_without_address),
            Err(ControlError::MissingAddress)
        );
        let mut unknown = bytes;
        unknown[KIND_AT] = 9;
        assert!(PathProbeView::parse(&unknown).is_err());
    }

    #[test]
    fn the_replay_window_accepts_each_timestamp_once_and_only_recent_ones() {
        let mut w = ReplayWindow::<256>::default();
        let t = 10_000_000_000;
        assert!(w.accept(t));
        assert!(!w.accept(t), "a replay");
        assert!(w.accept(t + 5), "newer");
        assert!(w.accept(t + 3), "reordered, within the window");
        assert!(!w.accept(t + 3));
        assert!(w.accept(t + 3 * ReplayWindow::<256>::SPAN_NANOS));
        assert!(!w.accept(t + 1), "far older than the newest");
        assert!(!w.accept(0));
        // Once the ring has wrapped, what it forgot is refused.
        let mut w = ReplayWindow::<8>::default();
        for i in 0..ReplayWindow::<8>::REMEMBERED as u64 + 10 {
            assert!(w.accept(t + 10 * i));
        }
        assert!(!w.accept(t + 15), "older than the oldest remembered");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(view) = PathProbeView::parse(&bytes) {
                let _ = view.verify(&in_key());
            }
        }
    }
}
