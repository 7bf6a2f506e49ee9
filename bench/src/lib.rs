//! `lanrage-bench` holds LANrage's criterion benchmarks (in `benches/`, run with
//! `cargo bench -p lanrage-bench`) and, later, the load generator. It is not a
//! library anyone depends on: nothing here is part of the relay or the client.

pub mod clientprobe;
pub mod flood;
pub mod loadgen;
#[cfg(feature = "xdp")]
pub mod xdpbench;
