//! Helpers shared by LANrage's tests and benches, so that each exists once:
//! packets a WireGuard peer accepts (`packets`), the skip-or-fail rule for
//! tests that need root or kernel features (`privileged`), and real
//! boringtun peers that drive the core's router in memory, on a virtual
//! clock (`router_peers`), and what the fuzz targets' stable replays share
//! (`fuzz_replay`).
//!
//! Dev-only: a dev-dependency of the crates whose tests use it, never a
//! dependency of anything shipped, and never of `lanrage-relay-core` (whose
//! dependency tree must stay free of IO crates, boringtun included).

pub mod fuzz_replay;
pub mod packets;
pub mod privileged;
pub mod router_peers;
