//! `lanrage-client-core` is the LANrage client's engine: every decision the
//! client makes, and none of its IO. It registers with relays and measures
//! them, keeps one WireGuard session (boringtun) per peer, chooses the path
//! each peer's datagrams take, and moves IP packets between the TUN side
//! and the network side.
//!
//! It opens no socket, reads no clock and has no platform code: the driver
//! (`lanrage-client`) passes time and bytes in, and takes datagrams, TUN
//! packets and events out. Verbs, in the order a driver runs them:
//! 1. `handle_udp(now, from, bytes)` for each datagram from the main
//!    socket (`handle_udp_on(now, socket, from, bytes)` for one from a
//!    spray socket, see `birthday`), and `handle_tun(now, packet)` for each
//!    packet read from the TUN;
//! 2. `handle_timeout(now)` once `poll_timeout()` has passed;
//! 3. after any of those: drain `poll_transmit()` (send each to its
//!    destination from its socket, opening a spray socket on first use), `poll_tun()` (write each to the TUN) and `poll_event()`
//!    (apply or log), then sleep until `poll_timeout()` or the next input.
//!
//! The one clock reader inside is boringtun: its handshake and session
//! timers read `Instant::now()` and its ephemerals come from `OsRng`
//! (docs/client.md, "Time"). Everything of the engine's own (registration,
//! probes, relay choice, failover) runs on the `now` it is given, which the
//! tests drive virtually.

pub mod birthday;
pub mod choice;
pub mod config;
mod direct;
pub mod discovery;
pub mod engine;
mod estimator;
pub mod netcheck;
pub mod party;
mod payload;
mod peer;
mod relay;
pub mod status;
mod wall_clock;

pub use birthday::SocketId;
pub use config::{EngineConfig, PeerSpec, RelaySpec};
pub use discovery::DiscoveryConfig;
pub use engine::{CodeLimits, ConfigError, DropReason, Engine, Event, PartyError, Transmit};
pub use netcheck::NatReport;
pub use status::{PeerPath, Status};
