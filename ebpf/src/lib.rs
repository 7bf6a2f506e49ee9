//! The LANrage XDP fast path: the C XDP program (`bpf/lanrage_xdp.c`), the Rust
//! mirror of its shared map layouts (`bpf/lanrage_xdp.h`), and, with the `xdp`
//! feature, the aya loader that sizes, loads, fills and reads its maps.
//!
//! This crate owns the kernel side only. It makes no routing decisions: the
//! relay's router decides which sessions exist, and mirrors them here with
//! [`XdpFastPath::insert_route`] / [`XdpFastPath::remove_route`] (through the
//! relay's `RouteMirror`, `relay/src/xdp.rs`; see `docs/xdp.md`). Without the `xdp` feature it builds no
//! BPF and needs no clang; only the layout types remain.

mod layout;
#[cfg(feature = "xdp")]
mod loader;

pub use layout::{Config, Counter, RouteKey, RouteValue};
#[cfg(feature = "xdp")]
pub use loader::{
    monotonic_now_ns, Counters, PinnedAttach, TestRun, XdpError, XdpFastPath, XdpLoadConfig,
    XdpMode, MAX_ROUTES_LIMIT,
};
