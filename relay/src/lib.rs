//! `lanrage-relay` is the relay appliance around `lanrage-relay-core`: it
//! forwards WireGuard UDP between registered, mutually consenting peers
//! without decrypting anything. This crate owns everything that does IO:
//! the configuration, keys on disk, the metrics endpoint, the IO backends
//! (io_uring and epoll) that feed datagrams to the core's router and
//! execute its verdicts, the alternate STUN sockets' thread (`stun`), and the
//! XDP map updater that applies its commands.
//!
//! Decisions belong in the core. Backends own sockets, the clock and
//! signals, and pass time and bytes in.

pub mod backend;
pub mod cli;
pub mod config;
pub mod data_plane;
pub mod http;
pub mod party;
pub mod stun;
pub mod worker;
#[cfg(feature = "xdp")]
pub mod xdp;
