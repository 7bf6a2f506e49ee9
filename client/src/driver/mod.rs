//! Platform drivers: each owns the UDP socket, the TUN device, the clock,
//! the control socket and the signals, and drives the engine with them.
//! Linux now; a Windows driver (wintun through tun-rs, the same quinn-udp
//! socket) sits beside it later, chosen by `cfg`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
mod netwatch;
#[cfg(target_os = "linux")]
mod sockets;
#[cfg(target_os = "linux")]
pub use linux::{run, Setup};
