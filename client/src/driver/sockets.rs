//! The driver's UDP sockets: the main one (relays, STUN, WireGuard) and
//! the spray pool birthday probing asks for (`docs/nat-traversal.md`,
//! "Hard NATs"). A spray socket is opened the first time the engine sends
//! from it and closed when the engine releases it; each is a quinn-udp
//! socket like the main one, since a punched path may carry a game's whole
//! stream through it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::Instant;

use lanrage_client_core::birthday::SPRAY_SOCKETS;
use lanrage_client_core::{Engine, SocketId};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};

/// Datagrams per receive call, each buffer big enough for a GRO batch.
pub const RECV_BATCH: usize = 8;
pub const RECV_BUF: usize = 64 * 1024;
/// Reads per socket per wake-up, so no source starves the others.
pub const MAX_READS_PER_WAKE: usize = 256;
/// Spray socket `n` is polled under token `SPRAY_TOKEN_BASE + n`.
pub const SPRAY_TOKEN_BASE: usize = 1000;

/// One UDP socket and its quinn-udp state.
pub struct Socket {
    pub socket: UdpSocket,
    pub state: UdpSocketState,
}

impl Socket {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self { socket, state })
    }

    /// Hands every waiting datagram to the engine, as arriving on `id`,
    /// calling `after_batch` after each receive call (the driver flushes
    /// the engine's answers there). True if it stopped at the per-wake
    /// bound with more possibly waiting.
    pub fn receive(
        &self,
        id: SocketId,
        now: Instant,
        engine: &mut Engine,
        bufs: &mut [Vec<u8>],
        after_batch: &mut dyn FnMut(&mut Engine),
    ) -> bool {
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        for _ in 0..MAX_READS_PER_WAKE {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let count = match self
                .state
                .recv((&self.socket).into(), &mut slices, &mut meta)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED from a dead
                    // relay): nothing to do but read on.
                    tracing::trace!(error = %e, "UDP receive error");
                    continue;
                }
            };
            drop(slices);
            for (m, buf) in meta.iter().zip(bufs.iter()).take(count) {
                let stride = m.stride.max(1);
                for datagram in buf[..m.len].chunks(stride) {
                    engine.handle_udp_on(now, id, m.addr, datagram);
                }
            }
            after_batch(engine);
        }
        true
    }

    /// Sends `contents` (one datagram, or a GSO run of `segment_size`).
    pub fn send(&self, dst: SocketAddr, contents: &[u8], segment_size: Option<usize>) {
        let transmit = UdpTransmit {
            destination: dst,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        if let Err(e) = self.state.try_send((&self.socket).into(), &transmit) {
            // WireGuard tolerates loss; never block the loop on a send.
            tracing::trace!(error = %e, %dst, "UDP send failed");
        }
    }
}

/// The spray sockets that are open.
#[derive(Default)]
pub struct SprayPool {
    open: HashMap<SocketId, Socket>,
}

impl SprayPool {
    /// Spray socket `id`, opened (on an ephemeral port, all addresses) and
    /// registered on first use. `None` for an id outside the pool or a
    /// socket the system refused (the probe is lost, like any datagram).
    pub fn get_or_open(&mut self, id: SocketId, registry: &Registry) -> Option<&Socket> {
        if id.is_main() || id.0 > SPRAY_SOCKETS {
            return None;
        }
        match self.open.entry(id) {
            Entry::Occupied(open) => Some(open.into_mut()),
            Entry::Vacant(slot) => {
                let socket = match Socket::bind(SocketAddr::from(([0, 0, 0, 0], 0))) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, socket = id.0, "cannot open a spray socket");
                        return None;
                    }
                };
                let token = Token(SPRAY_TOKEN_BASE + usize::from(id.0));
                let fd = socket.socket.as_raw_fd();
                if let Err(e) = registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
                    tracing::debug!(error = %e, "cannot poll a spray socket");
                    return None;
                }
                Some(slot.insert(socket))
            }
        }
    }

    /// The open spray socket polled under `token`, if it is one.
    pub fn by_token(&self, token: Token) -> Option<(SocketId, &Socket)> {
        let n = u16::try_from(token.0.checked_sub(SPRAY_TOKEN_BASE)?).ok()?;
        let id = SocketId(n);
        self.open.get(&id).map(|s| (id, s))
    }

    /// Closes every spray socket but `keep`.
    pub fn release(&mut self, keep: &[SocketId], registry: &Registry) {
        self.open.retain(|id, socket| {
            let kept = keep.contains(id);
            if !kept {
                let fd = socket.socket.as_raw_fd();
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            kept
        });
        tracing::debug!(open = self.open.len(), "spray sockets released");
    }
}
