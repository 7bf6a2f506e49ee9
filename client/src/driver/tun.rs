//! The TUN device, which exists while this PC has an address on the
//! virtual LAN: made when the engine first gives one (at start with a
//! configured address or a remembered party; on joining a party), made
//! anew when the address changes, and removed when the party is left.
//! The device (and its address and route) goes away with the process on
//! every path: the kernel removes a TUN device whose last file closes.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;

use anyhow::Context as _;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tun_rs::SyncDevice;

pub struct TunSlot {
    name: String,
    token: Token,
    device: Option<SyncDevice>,
    pub buf: Vec<u8>,
}

impl TunSlot {
    pub fn new(name: &str, token: Token) -> Self {
        Self {
            name: name.to_owned(),
            token,
            device: None,
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
        self.device = Some(device);
        tracing::info!(interface = %self.name, %address, prefix_len, mtu, "interface up");
        Ok(())
    }

    pub fn remove(&mut self, registry: &Registry) {
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
