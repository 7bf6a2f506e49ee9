//! `lanrage-relay-core` decides everything the relay does with a datagram and
//! does none of it. It owns the router (`router`: registrations, handshakes,
//! routes, replies), the STUN responder (`stun`), the route table the data plane reads lock-free
//! (`route_table`), the per-source rate limits (`rate_limit`) and the relay's
//! counters (`metrics`).
//!
//! It must not do IO: no socket, no clock, no OS randomness, no syscall.
//! Time and a seed come in; verdicts, replies written into the caller's
//! buffer, and [`Command`]s for side effects (the XDP route map) go out. The
//! crate has no dependency that could do otherwise (`cargo tree -p
//! lanrage-relay-core`), so the compiler keeps that promise, not a comment.
//! The drivers live in `lanrage-relay`: the io_uring and epoll backends, and
//! the XDP map updater that applies the commands.

pub mod command;
pub mod metrics;
pub mod rate_limit;
pub mod route_table;
pub mod router;
pub mod stun;

pub use command::Command;
