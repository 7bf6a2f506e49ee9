//! The Linux driver: one UDP socket (quinn-udp, with GRO where the kernel
//! has it), one TUN device (tun-rs), the local control socket and the
//! signals, in one mio loop on one thread. It owns the clock; the engine
//! gets `Instant::now()` once per wake-up.
//!
//! Drive order per wake-up: receive every datagram (bounded per wake), read
//! every TUN packet (bounded), fire the engine's timers if due, then flush
//! its outputs (datagrams, TUN packets, events) and answer the control
//! socket; sleep until a source is readable or the engine's next deadline.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lanrage_client_core::{Engine, Event};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use tun_rs::SyncDevice;

use super::netwatch::{default_route, local_addresses, NetWatch};
use crate::control::{
    error_line, Answer, NatRow, NetcheckReply, PingReply, Request, Server, StatusReply,
    NETCHECK_TIMEOUT, PING_TIMEOUT,
};

const UDP: Token = Token(0);
const TUN: Token = Token(1);
const CONTROL: Token = Token(2);
const SIGNAL: Token = Token(3);
const NETWATCH: Token = Token(4);

/// Datagrams per receive call, each buffer big enough for a GRO batch.
const RECV_BATCH: usize = 8;
const RECV_BUF: usize = 64 * 1024;
/// The most bytes one GSO send carries (the kernel's limit is 64 KiB).
const MAX_GSO_BYTES: usize = 60_000;
/// Reads per source per wake-up, so neither side starves the other.
const MAX_READS_PER_WAKE: usize = 256;
/// While a control connection waits for its request, wake at least this often.
const CONTROL_TICK: Duration = Duration::from_millis(50);

/// What the driver needs from the config.
pub struct Setup {
    pub interface: String,
    pub listen_port: u16,
    pub control_socket: std::path::PathBuf,
}

/// Runs `engine` until SIGINT or SIGTERM. The TUN device (and with it its
/// address and route) is removed when this returns, on every path.
pub fn run(mut engine: Engine, setup: &Setup) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], setup.listen_port)))
        .with_context(|| format!("listen_port: cannot bind UDP port {}", setup.listen_port))?;
    socket.set_nonblocking(true)?;
    let udp_state =
        UdpSocketState::new((&socket).into()).context("cannot set up the UDP socket")?;
    let local = socket.local_addr()?;

    // The engine's first event says how to configure the interface.
    let Some(Event::ConfigureInterface {
        address,
        prefix_len,
        mtu,
    }) = engine.poll_event()
    else {
        anyhow::bail!("the engine did not ask for an interface");
    };
    let tun = tun_rs::DeviceBuilder::new()
        .name(&setup.interface)
        .ipv4(address, prefix_len, None)
        .mtu(mtu)
        .build_sync()
        .with_context(|| {
            format!(
                "interface: cannot create TUN device {} (needs root or CAP_NET_ADMIN, and /dev/net/tun)",
                setup.interface
            )
        })?;
    tun.set_nonblocking(true)?;
    tracing::info!(interface = %setup.interface, %address, prefix_len, mtu, "interface up");

    let mut control = Server::bind(&setup.control_socket)?;
    let (signal_read, signal_write) = StdUnixStream::pair()?;
    signal_read.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(signal, signal_write.try_clone()?)
            .context("cannot install signal handlers")?;
    }

    let mut poll = Poll::new()?;
    let registry = poll.registry();
    registry.register(&mut SourceFd(&socket.as_raw_fd()), UDP, Interest::READABLE)?;
    registry.register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
    registry.register(&mut control.listener, CONTROL, Interest::READABLE)?;
    registry.register(
        &mut SourceFd(&signal_read.as_raw_fd()),
        SIGNAL,
        Interest::READABLE,
    )?;
    // Host candidates now, and again whenever addresses or routes change.
    let netwatch = NetWatch::new().context("cannot watch the network (netlink)")?;
    registry.register(
        &mut SourceFd(&netwatch.as_raw_fd()),
        NETWATCH,
        Interest::READABLE,
    )?;
    let mut host_addrs = local_addresses(local.port(), &setup.interface);
    let mut route = default_route();
    engine.set_local_addresses(Instant::now(), &host_addrs);
    tracing::info!(%local, public_key = %engine.public_key(), control = %setup.control_socket.display(), "lanrage up");

    let mut io = Io {
        socket,
        udp_state,
        tun,
        recv_bufs: vec![vec![0u8; RECV_BUF]; RECV_BATCH],
        tun_buf: vec![0u8; usize::from(mtu) + 64],
    };
    let mut events = Events::with_capacity(16);
    let mut busy = false;
    loop {
        let now = Instant::now();
        let mut timeout = engine
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now));
        if busy {
            timeout = Some(Duration::ZERO);
        }
        if control.has_pending() {
            timeout = Some(timeout.map_or(CONTROL_TICK, |t| t.min(CONTROL_TICK)));
        }
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("poll failed"),
        }
        if events.iter().any(|e| e.token() == SIGNAL) {
            tracing::info!("stopping");
            break;
        }
        let now = Instant::now();
        if events.iter().any(|e| e.token() == NETWATCH) && netwatch.drain() {
            let addrs = local_addresses(local.port(), &setup.interface);
            let new_route = default_route();
            if addrs != host_addrs {
                tracing::debug!(?addrs, "addresses changed");
                engine.set_local_addresses(now, &addrs);
            } else if new_route != route {
                tracing::debug!(?new_route, "default route changed");
                engine.network_changed(now);
            }
            (host_addrs, route) = (addrs, new_route);
        }
        // Edge-triggered readiness: drain both every time (bounded).
        busy = io.receive(now, &mut engine);
        busy |= io.read_tun(now, &mut engine);
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        io.flush(&mut engine, &mut control);
        control.poll(now, |request| match request {
            Request::Status => Answer::Now(
                serde_json::to_string(&StatusReply::from(engine.status(now)))
                    .unwrap_or_else(|e| error_line(&e.to_string())),
            ),
            Request::Ping { peer } => match engine.ping(now, &peer) {
                Some(id) => Answer::Later(id, PING_TIMEOUT),
                None => Answer::Now(error_line(&format!(
                    "no peer called {peer:?}, or no relay to reach it through"
                ))),
            },
            Request::Netcheck => match engine.netcheck(now) {
                Some(id) => Answer::Later(id, NETCHECK_TIMEOUT),
                None => Answer::Now(error_line(
                    "no relay is registered yet to run STUN against; try again in a moment",
                )),
            },
        });
        // A ping sent just now goes out before the next sleep.
        io.flush(&mut engine, &mut control);
    }
    drop(signal_read);
    Ok(())
}

struct Io {
    socket: UdpSocket,
    udp_state: UdpSocketState,
    tun: SyncDevice,
    recv_bufs: Vec<Vec<u8>>,
    tun_buf: Vec<u8>,
}

impl Io {
    /// Hands every waiting datagram to the engine. True if it stopped at
    /// the per-wake bound with more possibly waiting.
    fn receive(&mut self, now: Instant, engine: &mut Engine) -> bool {
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        for _ in 0..MAX_READS_PER_WAKE {
            let mut slices: Vec<IoSliceMut<'_>> = self
                .recv_bufs
                .iter_mut()
                .map(|b| IoSliceMut::new(b))
                .collect();
            let count = match self
                .udp_state
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
            for (m, buf) in meta.iter().zip(&self.recv_bufs).take(count) {
                let stride = m.stride.max(1);
                for datagram in buf[..m.len].chunks(stride) {
                    engine.handle_udp(now, m.addr, datagram);
                }
            }
            self.flush_network(engine);
        }
        true
    }

    /// Hands every waiting TUN packet to the engine (bounded, as above).
    fn read_tun(&mut self, now: Instant, engine: &mut Engine) -> bool {
        for _ in 0..MAX_READS_PER_WAKE {
            match self.tun.recv(&mut self.tun_buf) {
                Ok(n) => engine.handle_tun(now, &self.tun_buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "TUN read failed");
                    return false;
                }
            }
        }
        true
    }

    /// Sends and writes what the engine produced, and applies its events
    /// (a pong answers the control connection waiting for it).
    fn flush(&mut self, engine: &mut Engine, control: &mut Server) {
        self.flush_network(engine);
        while let Some(event) = engine.poll_event() {
            if let Event::Pong {
                peer,
                id,
                rtt,
                path,
            } = &event
            {
                let reply = PingReply {
                    peer: peer.clone(),
                    path: path.to_string(),
                    rtt_ms: rtt.as_secs_f64() * 1000.0,
                };
                if let Ok(line) = serde_json::to_string(&reply) {
                    control.complete(*id, &line);
                }
            }
            if let Event::Netcheck { ids, report } = &event {
                let reply = NetcheckReply {
                    nat: NatRow::from(report),
                    relays: StatusReply::from(engine.status(Instant::now())).relays,
                };
                if let Ok(line) = serde_json::to_string(&reply) {
                    for id in ids {
                        control.complete(*id, &line);
                    }
                }
            }
            log_event(&event);
        }
    }

    /// Sends the engine's datagrams and writes its TUN packets.
    /// Consecutive datagrams to one destination with one size (the last
    /// may be shorter) leave as one UDP GSO send where the kernel has it
    /// (quinn-udp's `max_gso_segments`; it falls back by itself when the
    /// kernel refuses GSO): a bulk stream costs one send per batch, not one
    /// per packet.
    fn flush_network(&mut self, engine: &mut Engine) {
        let max_segments = self.udp_state.max_gso_segments().max(1);
        let mut pending = engine.poll_transmit();
        while let Some(first) = pending.take() {
            let size = first.payload.len();
            let mut batch = first.payload;
            let mut segments = 1;
            while segments < max_segments && batch.len() + size <= MAX_GSO_BYTES {
                match engine.poll_transmit() {
                    Some(next) if next.dst == first.dst && next.payload.len() <= size => {
                        let last = next.payload.len() < size;
                        batch.extend_from_slice(&next.payload);
                        segments += 1;
                        if last {
                            break;
                        }
                    }
                    other => {
                        pending = other;
                        break;
                    }
                }
            }
            let transmit = UdpTransmit {
                destination: first.dst,
                ecn: None,
                contents: &batch,
                segment_size: (segments > 1).then_some(size),
                src_ip: None,
            };
            if let Err(e) = self.udp_state.try_send((&self.socket).into(), &transmit) {
                // WireGuard tolerates loss; never block the loop on a send.
                tracing::trace!(error = %e, dst = %first.dst, segments, "UDP send failed");
            }
            if pending.is_none() {
                pending = engine.poll_transmit();
            }
        }
        while let Some(packet) = engine.poll_tun() {
            if let Err(e) = self.tun.send(&packet) {
                tracing::trace!(error = %e, "TUN write failed");
            }
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::RelayRegistered { relay, reflexive } => {
            tracing::info!(%relay, reflexive = ?reflexive, "registered with relay");
        }
        Event::RelayUnreachable { relay } => tracing::warn!(%relay, "relay unreachable"),
        Event::RelayRestarted { relay } => tracing::info!(%relay, "relay restarted"),
        Event::PathChanged { peer, path } => tracing::info!(%peer, %path, "path"),
        Event::Pong {
            peer, rtt, path, ..
        } => {
            tracing::debug!(%peer, %path, rtt_ms = rtt.as_secs_f64() * 1000.0, "pong");
        }
        Event::Netcheck { .. } => {} // the engine logged it
        Event::ConfigureInterface { .. } => {
            tracing::warn!("the engine asked for the interface again; ignored");
        }
    }
}
