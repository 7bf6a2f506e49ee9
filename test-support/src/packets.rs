//! Inner packets for WireGuard tunnels in tests: `lanrage_proto::inner`
//! (one copy there, because the load generator, a shipped tool that may not
//! depend on this crate, builds the same packets).

pub use lanrage_proto::inner::{ipv4_packet, payload_of, DST_IP, HEADERS_LEN, PORT, SRC_IP};
