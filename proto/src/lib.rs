//! `lanrage-proto` owns LANrage's wire formats and the pure logic around them:
//! classifying WireGuard messages without decrypting them, the mac1/mac2/cookie
//! machinery a relay needs to route and protect handshakes, and the LANrage
//! control messages (registration, acknowledgement, unknown-session hint).
//!
//! It must not do IO: no sockets, no clock, no async, no OS randomness. Callers
//! pass time, bytes and random values in. Every parser is total: any byte string
//! yields `Ok` or an error, never a panic.
//!
//! The byte-level specification lives in `docs/protocol.md`.

pub mod control;
pub mod demux;
pub mod key;
pub mod mac;
pub mod wireguard;

pub use control::{ControlError, ControlMessage};
pub use demux::{classify, DatagramKind};
pub use key::PeerKey;
pub use wireguard::{WgError, WgMessage};

/// Re-exported so that every crate uses the same x25519 types as boringtun.
pub use boringtun::x25519;
