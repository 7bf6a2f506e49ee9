//! `lanrage-proto` owns LANrage's wire formats and the pure logic around them:
//! classifying WireGuard messages without decrypting them, the mac1/mac2/cookie
//! machinery a relay needs to route and protect handshakes, and the LANrage
//! control messages (registration, acknowledgement, unknown-session hint), and
//! the inner IPv4/UDP packet tests and load generators tunnel (`inner`), and
//! the STUN Binding subset (RFC 8489, RFC 5780) relay and client share (`stun`),
//! and the party join codes people type (`join_code`).
//!
//! It must not do IO: no sockets, no clock, no async, no OS randomness. Callers
//! pass time, bytes and random values in. Every parser is total: any byte string
//! yields `Ok` or an error, never a panic.
//!
//! The byte-level specification lives in `docs/protocol.md`.

pub mod control;
pub mod demux;
pub mod inner;
pub mod join_code;
pub mod key;
pub mod mac;
pub mod party;
pub mod path_probe;
pub mod signal;
pub mod stun;
pub mod wireguard;

pub use control::{ControlError, ControlMessage};
pub use demux::{classify, DatagramKind};
pub use key::PeerKey;
pub use wireguard::{WgError, WgMessage};

/// The x25519 types, exactly as boringtun re-exports them
/// (`boringtun::x25519`): the same `x25519-dalek` crate and version, so keys
/// pass between this crate and boringtun's `Tunn` unchanged. Taken from
/// x25519-dalek directly so that the wire formats don't pull boringtun (and
/// its libc, nix and ring) into the relay core.
pub mod x25519 {
    pub use x25519_dalek::{
        EphemeralSecret, PublicKey, ReusableSecret, SharedSecret, StaticSecret,
    };
}
