//! `lanrage-relay` forwards WireGuard UDP between registered, mutually
//! consenting peers without decrypting anything. It owns the sans-IO router
//! (`router`), the relay's configuration, its metrics, and the IO backends that
//! execute the router's verdicts.
//!
//! The router must stay free of IO: backends own sockets, the clock and
//! signals, and pass time and bytes in.

pub mod backend;
pub mod cli;
pub mod config;
pub mod data_plane;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod rate_limit;
pub mod route_table;
pub mod router;
#[cfg(feature = "xdp")]
pub mod xdp;
