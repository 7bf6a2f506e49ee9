//! Platform drivers: each owns the UDP socket, the TUN device, the clock,
//! the control socket and the signals, and drives the engine with them.
//! Linux now; a Windows driver (wintun through tun-rs, the same quinn-udp
//! socket) sits beside it later, chosen by `cfg`.

#[cfg(target_os = "linux")]
mod capture;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod netwatch;
#[cfg(target_os = "linux")]
mod rtnl;
#[cfg(target_os = "linux")]
mod sockets;
mod state;
#[cfg(target_os = "linux")]
mod tun;
#[cfg(target_os = "linux")]
pub use linux::{run, Setup};

/// The remembered party (`state.rs`).
pub fn load_state(
    path: &std::path::Path,
) -> Result<Option<lanrage_client_core::party::Membership>, String> {
    state::load(path)
}
