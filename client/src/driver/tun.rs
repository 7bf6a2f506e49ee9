//! The TUN device, which exists while this PC has an address on the
//! virtual LAN: made when the engine first gives one (at start with a
//! configured address or a remembered party; on joining a party), made
//! anew when the address changes, and removed when the party is left.
//! The device (and its address and route) goes away with the process on
//! every path: the kernel removes a TUN device whose last file closes.
//!
//! With LAN discovery on, the device also gets the subnet's broadcast
//! address and the broadcast and multicast routes (`capture.rs`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;

use anyhow::Context as _;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tun_rs::SyncDevice;

use super::capture::Capture;

pub struct TunSlot {
    name: String,
    token: Token,
    /// Declared before the device: dropped first, while the device exists.
    capture: Option<Capture>,
    device: Option<SyncDevice>,
    /// LAN discovery: broadcast and multicast routed here while up, the
    /// displaced routes' journal.
    discovery: Option<std::path::PathBuf>,
    pub buf: Vec<u8>,
}

impl TunSlot {
    /// `discovery`: the route journal, when LAN discovery is on.
    pub fn new(name: &str, token: Token, discovery: Option<std::path::PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            token,
            capture: None,
            device: None,
            discovery,
            buf: Vec::new(),
        }
    }

    /// Makes the device with this address (replacing one with another).
    pub fn configure(
        &mut self,
        address: Ipv4Addr,
        prefix_len: u8,
        mtu: u16,
        registry: &Registry,
    ) -> anyhow::Result<()> {
        self.remove(registry);
        let device = tun_rs::DeviceBuilder::new()
            .name(&self.name)
            .ipv4(address, prefix_len, None)
            .mtu(mtu)
            .build_sync()
            .with_context(|| {
                format!(
                    "interface: cannot create TUN device {} (needs root or CAP_NET_ADMIN, and /dev/net/tun)",
                    self.name
                )
            })?;
        device.set_nonblocking(true)?;
        registry.register(
            &mut SourceFd(&device.as_raw_fd()),
            self.token,
            Interest::READABLE,
        )?;
        self.buf = vec![0u8; usize::from(mtu) + 64];
        tracing::info!(interface = %self.name, %address, prefix_len, mtu, "interface up");
        if let Some(journal) = &self.discovery {
            // Without these the virtual LAN still carries unicast: a
            // failure is logged, not fatal.
            if let Some(broadcast) =
                lanrage_client_core::discovery::subnet_broadcast(address, prefix_len)
            {
                if let Err(e) = device.set_broadcast(broadcast.into()) {
                    tracing::error!(interface = %self.name, error = %e, "cannot set the broadcast address; subnet broadcast won't reach this PC");
                }
            }
            match Capture::install(&self.name, journal) {
                Ok(capture) => self.capture = Some(capture),
                Err(e) => tracing::error!("LAN discovery off: {e:#}"),
            }
        }
        self.device = Some(device);
        Ok(())
    }

    pub fn remove(&mut self, registry: &Registry) {
        if let Some(capture) = self.capture.take() {
            capture.remove();
        }
        if let Some(device) = self.device.take() {
            let _ = registry.deregister(&mut SourceFd(&device.as_raw_fd()));
            tracing::info!(interface = %self.name, "interface down");
        }
    }

    pub fn recv(&mut self) -> io::Result<usize> {
        match &self.device {
            Some(device) => device.recv(&mut self.buf),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes a packet; without a device it is dropped (nothing to give
    /// it to).
    pub fn send(&self, packet: &[u8]) {
        if let Some(device) = &self.device {
            if let Err(e) = device.send(packet) {
                tracing::trace!(error = %e, "TUN write failed");
            }
        }
    }
}
