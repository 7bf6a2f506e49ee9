//! The Linux driver: one UDP socket (quinn-udp, with GRO where the kernel
//! has it; plus the spray sockets birthday probing asks for, see
//! `sockets.rs`), one TUN device (tun-rs), the local control socket and the
//! signals, in one mio loop on one thread. It owns the clock; the engine
//! gets `Instant::now()` once per wake-up.
//!
//! Drive order per wake-up: receive every datagram (bounded per wake), read
//! every TUN packet (bounded), fire the engine's timers if due, then flush
//! its outputs (datagrams, TUN packets, events) and answer the control
//! socket; sleep until a source is readable or the engine's next deadline.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lanrage_client_core::{CodeLimits, Engine, Event, SocketId, Transmit};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::netwatch::{default_route, local_addresses, NetWatch};
use super::sockets::{Socket, SprayPool, MAX_READS_PER_WAKE, RECV_BATCH, RECV_BUF};
use super::tun::TunSlot;
use crate::control::{
    error_line, Answer, NatRow, NetcheckReply, PartyReplyRow, PartyRow, PingReply, Request, Server,
    StatusReply, NETCHECK_TIMEOUT, PARTY_TIMEOUT, PING_TIMEOUT,
};

const UDP: Token = Token(0);
const TUN: Token = Token(1);
const CONTROL: Token = Token(2);
const SIGNAL: Token = Token(3);
const NETWATCH: Token = Token(4);

/// The most bytes one GSO send carries (the kernel's limit is 64 KiB).
const MAX_GSO_BYTES: usize = 60_000;
/// While a control connection waits for its request, wake at least this often.
const CONTROL_TICK: Duration = Duration::from_millis(50);

/// What the driver needs from the config.
pub struct Setup {
    pub interface: String,
    pub listen_port: u16,
    pub control_socket: std::path::PathBuf,
    /// This PC's name in parties.
    pub member_name: String,
    /// Where the party is remembered between runs.
    pub state_file: std::path::PathBuf,
    /// Whether broadcast and multicast are routed to the TUN.
    pub lan_discovery: bool,
}

impl Setup {
    /// The journal of routes LAN discovery displaced, beside the state
    /// file (`party.json` → `party.routes.json`).
    pub fn route_journal(&self) -> std::path::PathBuf {
        self.state_file.with_extension("routes.json")
    }
}

/// Runs `engine` until SIGINT or SIGTERM. The TUN device (and with it its
/// address and route) is removed when this returns, on every path.
pub fn run(mut engine: Engine, setup: &Setup) -> anyhow::Result<()> {
    let main = Socket::bind(SocketAddr::from(([0, 0, 0, 0], setup.listen_port)))
        .with_context(|| format!("listen_port: cannot bind UDP port {}", setup.listen_port))?;
    let local = main.socket.local_addr()?;

    let mut control = Server::bind(&setup.control_socket)?;
    // Routes a crashed run displaced go back (docs/lan-discovery.md), once
    // the control socket is ours: a second `lanrage up` stops at its bind
    // and never touches the running one's journal.
    if let Err(e) = super::capture::repair(&setup.route_journal()) {
        tracing::warn!("{e:#}");
    }
    let (signal_read, signal_write) = StdUnixStream::pair()?;
    signal_read.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(signal, signal_write.try_clone()?)
            .context("cannot install signal handlers")?;
    }

    let mut poll = Poll::new()?;
    let registry = poll.registry();
    registry.register(
        &mut SourceFd(&main.socket.as_raw_fd()),
        UDP,
        Interest::READABLE,
    )?;
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
        main,
        spray: SprayPool::default(),
        registry: registry.try_clone()?,
        tun: TunSlot::new(
            &setup.interface,
            TUN,
            setup.lan_discovery.then(|| setup.route_journal()),
        ),
        recv_bufs: vec![vec![0u8; RECV_BUF]; RECV_BATCH],
        state_file: setup.state_file.clone(),
    };
    // The interface, if the engine knows our address already (configured,
    // or a remembered party): failing to make it fails the start.
    io.flush_checked(&mut engine, &mut control)?;
    let mut events = Events::with_capacity(16);
    let mut busy = false;
    let mut spray_busy: Vec<Token> = Vec::new();
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
        // Edge-triggered readiness: drain every source every time (bounded).
        busy = io.receive(now, &mut engine);
        // A spray socket stopped at the bound is read again without a new
        // readiness event.
        let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
        let again = std::mem::take(&mut spray_busy);
        for token in tokens.into_iter().chain(again) {
            if io.receive_spray(token, now, &mut engine) && !spray_busy.contains(&token) {
                spray_busy.push(token);
            }
        }
        busy |= !spray_busy.is_empty();
        busy |= io.read_tun(now, &mut engine);
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        io.flush(&mut engine, &mut control);
        control.poll(now, |request| match request {
            Request::Status => Answer::Now(
                serde_json::to_string(&StatusReply::new(engine.status(now), engine.public_key()))
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
            Request::PartyCreate {
                name,
                relay,
                expires_in,
                max_uses,
            } => party_answer(engine.party_create(
                now,
                relay.as_deref(),
                &name,
                &setup.member_name,
                CodeLimits {
                    expires_in,
                    max_uses,
                },
            )),
            Request::PartyJoin { code } => {
                party_answer(engine.party_join(now, &code, &setup.member_name))
            }
            Request::PartyLeave => party_answer(engine.party_leave(now)),
            Request::PartyInvite {
                expires_in,
                max_uses,
            } => party_answer(engine.party_invite(
                now,
                CodeLimits {
                    expires_in,
                    max_uses,
                },
            )),
            Request::PartyKick { member } => party_answer(engine.party_kick(now, &member)),
            Request::PartyMembers => match engine.membership() {
                Some(m) => Answer::Now(
                    serde_json::to_string(&PartyRow::from_membership(m, engine.public_key()))
                        .unwrap_or_else(|e| error_line(&e.to_string())),
                ),
                None => Answer::Now(error_line(
                    "not in a party (lanrage party create, or lanrage party join CODE)",
                )),
            },
        });
        // A ping sent just now goes out before the next sleep.
        io.flush(&mut engine, &mut control);
    }
    drop(signal_read);
    Ok(())
}

/// A party verb's answer: later, when the home relay replies.
fn party_answer(sent: Result<u64, lanrage_client_core::PartyError>) -> Answer {
    match sent {
        Ok(id) => Answer::Later(id, PARTY_TIMEOUT),
        Err(e) => Answer::Now(error_line(&e.to_string())),
    }
}

struct Io {
    main: Socket,
    spray: SprayPool,
    registry: Registry,
    tun: TunSlot,
    recv_bufs: Vec<Vec<u8>>,
    state_file: std::path::PathBuf,
}

impl Io {
    /// Hands every datagram waiting on the main socket to the engine,
    /// sending its answers after each batch. True if it stopped at the
    /// per-wake bound with more possibly waiting.
    fn receive(&mut self, now: Instant, engine: &mut Engine) -> bool {
        let Io {
            main,
            spray,
            registry,
            tun,
            recv_bufs,
            ..
        } = self;
        main.receive(SocketId::MAIN, now, engine, recv_bufs, &mut |engine| {
            flush_network(main, spray, registry, tun, engine)
        })
    }

    /// The same for the spray socket `token` stands for, if it is one.
    fn receive_spray(&mut self, token: Token, now: Instant, engine: &mut Engine) -> bool {
        let Some((id, socket)) = self.spray.by_token(token) else {
            return false;
        };
        let busy = socket.receive(id, now, engine, &mut self.recv_bufs, &mut |_| {});
        self.flush_network(engine);
        busy
    }

    /// Hands every waiting TUN packet to the engine (bounded, as above).
    fn read_tun(&mut self, now: Instant, engine: &mut Engine) -> bool {
        for _ in 0..MAX_READS_PER_WAKE {
            match self.tun.recv() {
                Ok(n) => engine.handle_tun(now, &self.tun.buf[..n]),
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
    /// (a pong answers the control connection waiting for it). An
    /// interface that can't be made is logged: the engine carries on, and
    /// the next address tries again.
    fn flush(&mut self, engine: &mut Engine, control: &mut Server) {
        if let Err(e) = self.flush_checked(engine, control) {
            tracing::error!("{e:#}");
        }
    }

    /// As [`Io::flush`], but the first interface error is returned.
    fn flush_checked(&mut self, engine: &mut Engine, control: &mut Server) -> anyhow::Result<()> {
        let mut result = Ok(());
        self.flush_network(engine);
        while let Some(event) = engine.poll_event() {
            match &event {
                Event::ConfigureInterface {
                    address,
                    prefix_len,
                    mtu,
                } => {
                    let made = self
                        .tun
                        .configure(*address, *prefix_len, *mtu, &self.registry);
                    if result.is_ok() {
                        result = made;
                    }
                }
                Event::RemoveInterface => self.tun.remove(&self.registry),
                Event::PartyReply {
                    id,
                    status,
                    party,
                    code,
                } => {
                    let reply = PartyReplyRow {
                        status: status
                            .map_or("the home relay did not answer", |s| s.message())
                            .to_owned(),
                        ok: *status == Some(lanrage_proto::party::Status::Ok),
                        party: *party,
                        code: code.clone(),
                    };
                    if let Ok(line) = serde_json::to_string(&reply) {
                        control.complete(*id, &line);
                    }
                }
                Event::PartyChanged { membership } => {
                    if let Err(e) = super::state::save(&self.state_file, membership.as_ref()) {
                        tracing::warn!(error = %e, path = %self.state_file.display(), "cannot remember the party");
                    }
                }
                _ => {}
            }
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
            if let Event::ReleaseSockets { keep } = &event {
                self.spray.release(keep, &self.registry);
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
        // Packets the engine produced while applying events.
        self.flush_network(engine);
        result
    }

    fn flush_network(&mut self, engine: &mut Engine) {
        flush_network(
            &self.main,
            &mut self.spray,
            &self.registry,
            &self.tun,
            engine,
        );
    }
}

/// Sends the engine's datagrams and writes its TUN packets.
/// Consecutive datagrams from one socket to one destination with one size
/// (the last may be shorter) leave as one UDP GSO send where the kernel
/// has it (quinn-udp's `max_gso_segments`; it falls back by itself when
/// the kernel refuses GSO): a bulk stream costs one send per batch, not
/// one per packet.
fn flush_network(
    main: &Socket,
    spray: &mut SprayPool,
    registry: &Registry,
    tun: &TunSlot,
    engine: &mut Engine,
) {
    let max_segments = main.state.max_gso_segments().max(1);
    let mut pending: Option<Transmit> = engine.poll_transmit();
    while let Some(first) = pending.take() {
        let size = first.payload.len();
        let mut batch = first.payload;
        let mut segments = 1;
        while segments < max_segments && batch.len() + size <= MAX_GSO_BYTES {
            match engine.poll_transmit() {
                Some(next)
                    if next.dst == first.dst
                        && next.socket == first.socket
                        && next.payload.len() <= size =>
                {
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
        let socket = if first.socket.is_main() {
            Some(main)
        } else {
            spray.get_or_open(first.socket, registry)
        };
        if let Some(socket) = socket {
            socket.send(first.dst, &batch, (segments > 1).then_some(size));
        }
        if pending.is_none() {
            pending = engine.poll_transmit();
        }
    }
    while let Some(packet) = engine.poll_tun() {
        tun.send(&packet);
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
        Event::Netcheck { .. } => {}       // the engine logged it
        Event::ReleaseSockets { .. } => {} // the pool logged it
        Event::ConfigureInterface { .. } | Event::RemoveInterface => {} // logged by TunSlot
        Event::PartyReply { status, party, .. } => {
            tracing::info!(?status, party, "party reply");
        }
        Event::PartyChanged { .. } => {} // the engine logged it
    }
}
