//! The relay's alternate STUN sockets (RFC 5780 behaviour discovery) and
//! the thread that serves them.
//!
//! The data plane's workers answer STUN on `listen` themselves (the core's
//! responder, through [`Router::handle_at`]). The alternate sockets (the
//! alternate port on `listen`'s address, and with `stun.alternate_address`
//! both ports on that address) carry only STUN, at a few requests per
//! client, so one thread owns them all: it reads them, asks the router, and
//! sends the answers. It also owns a send-only clone of worker 0's socket,
//! for answers that must leave from `listen` (a "change port" request that
//! arrived on the alternate port).
//!
//! A CHANGE-REQUEST that arrives on `listen` is decided by a worker, whose
//! answer must leave from an alternate socket: the worker hands it over
//! with [`StunHandoff::send`], a bounded queue to this thread (full:
//! `stun_handoff_full`, counted, nothing sent) and a wake-up.
//!
//! Loop order per wake-up: the hand-off queue (at most its capacity), then
//! each socket (at most [`BATCH`] datagrams each; a socket with more is read
//! again at once, without sleeping), then sleep until a socket is readable,
//! a hand-off or a stop wakes it.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lanrage_relay_core::metrics::{self, DropReason, Metrics};
use lanrage_relay_core::router::{Decision, LocalSocket, Router, StunSockets, Verdict};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::backend::bind_udp_exclusive;
use crate::config::{SocketConfig, StunSettings};

/// Answers waiting for the alternate sockets' thread, at most. Hand-offs
/// are rate-limited STUN answers, so a full queue means a burst far above
/// the limits; the excess is counted and dropped.
pub const HANDOFF_CAPACITY: usize = 1024;
/// Datagrams read from one socket per wake-up before the others get a turn.
pub const BATCH: usize = 64;
/// The largest datagram read (as the data plane's buffers).
const MAX_DATAGRAM: usize = crate::backend::epoll::MAX_DATAGRAM;
const WAKER: Token = Token(usize::MAX);

/// The relay's STUN sockets, bound: the primary's address and, if
/// configured, the alternate sockets.
pub struct StunSide {
    addresses: StunSockets,
    alternates: Vec<(LocalSocket, UdpSocket)>,
    /// A clone of worker 0's socket, for answers that leave from `listen`.
    primary: UdpSocket,
}

impl StunSide {
    /// Binds the alternate sockets `settings` asks for, around the data
    /// plane bound at `primary_addr` (its real port) whose socket
    /// `primary` is a clone of. Errors name the config field.
    pub fn bind(
        settings: &StunSettings,
        socket_config: &SocketConfig,
        primary_addr: SocketAddr,
        primary: UdpSocket,
    ) -> io::Result<Self> {
        let mut addresses = StunSockets {
            primary: Some(primary_addr),
            alternate_port: None,
            alternate_ip: None,
        };
        let mut alternates = Vec::new();
        if let Some(port) = settings.alternate_port {
            let addr = SocketAddr::new(primary_addr.ip(), port);
            let socket = bind_one(addr, socket_config, "stun.alternate_port")?;
            let port = socket.local_addr()?.port();
            addresses.alternate_port = Some(port);
            alternates.push((LocalSocket::AltPort, socket));
            if let Some(ip) = settings.alternate_address {
                let ip = match (ip, primary_addr.ip()) {
                    // A v4 alternate beside a v4-mapped listen address.
                    (IpAddr::V4(v4), IpAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
                    (ip, _) => ip,
                };
                for (kind, port) in [
                    (LocalSocket::AltAddress, primary_addr.port()),
                    (LocalSocket::AltBoth, port),
                ] {
                    let addr = SocketAddr::new(ip, port);
                    alternates.push((
                        kind,
                        bind_one(addr, socket_config, "stun.alternate_address")?,
                    ));
                }
                addresses.alternate_ip = Some(ip);
            }
        }
        Ok(Self {
            addresses,
            alternates,
            primary,
        })
    }

    /// Where the sockets are, for [`lanrage_relay_core::router::RouterConfig::stun`].
    pub fn addresses(&self) -> StunSockets {
        self.addresses
    }

    /// Starts the thread serving the alternate sockets, with `router` (a
    /// handle of its own) recording into counter shard `shard`. `None`
    /// without alternates: nothing to serve, and workers have no hand-off.
    pub fn spawn(self, router: Router, shard: usize) -> io::Result<Option<StunService>> {
        if self.alternates.is_empty() {
            return Ok(None);
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::sync_channel(HANDOFF_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let mut sockets = Vec::with_capacity(self.alternates.len());
        for (i, (kind, socket)) in self.alternates.into_iter().enumerate() {
            let mut socket = mio::net::UdpSocket::from_std(socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            sockets.push((kind, socket));
        }
        let metrics = Arc::clone(router.metrics());
        let mut server = Server {
            poll,
            sockets,
            primary: self.primary,
            router,
            handoffs: rx,
            stop: Arc::clone(&stop),
        };
        let thread = thread::Builder::new()
            .name("relay-stun".to_owned())
            .spawn(move || {
                metrics::bind_thread_to_shard(shard);
                server.run();
            })?;
        Ok(Some(StunService {
            thread: Some(thread),
            stop,
            handoff: StunHandoff {
                tx,
                waker: Arc::clone(&waker),
                metrics,
            },
            waker,
        }))
    }
}

fn bind_one(addr: SocketAddr, config: &SocketConfig, field: &str) -> io::Result<UdpSocket> {
    let sockets = bind_udp_exclusive(addr, config, 1).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrNotAvailable {
            " (is it an address of this host?)"
        } else {
            ""
        };
        io::Error::new(
            e.kind(),
            format!("cannot bind the STUN socket on {addr} ({field}){hint}: {e}"),
        )
    })?;
    sockets
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no STUN socket bound"))
}

/// The running alternate sockets' thread. Dropping it stops it.
pub struct StunService {
    thread: Option<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    handoff: StunHandoff,
}

impl StunService {
    /// What the workers hand answers for the alternate sockets to.
    pub fn handoff(&self) -> StunHandoff {
        self.handoff.clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "cannot wake the STUN thread to stop it");
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the STUN thread panicked");
            }
        }
    }
}

impl Drop for StunService {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A worker's way to the alternate sockets: a bounded queue and a wake-up.
#[derive(Clone)]
pub struct StunHandoff {
    tx: SyncSender<Handoff>,
    waker: Arc<Waker>,
    metrics: Arc<Metrics>,
}

struct Handoff {
    from: LocalSocket,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

impl StunHandoff {
    /// Queues `bytes` for `dst`, to leave from `from`; a full queue is a
    /// counted drop (`stun_handoff_full`).
    pub fn send(&self, from: LocalSocket, dst: SocketAddr, bytes: &[u8]) {
        let handoff = Handoff {
            from,
            dst,
            bytes: bytes.to_vec(),
        };
        match self.tx.try_send(handoff) {
            Ok(()) => {
                if let Err(e) = self.waker.wake() {
                    tracing::debug!(error = %e, "cannot wake the STUN thread");
                }
            }
            Err(TrySendError::Full(_)) => self.metrics.record_drop(DropReason::StunHandoffFull),
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.record_drop(DropReason::StunNoAlternateSocket)
            }
        }
    }
}

struct Server {
    poll: Poll,
    sockets: Vec<(LocalSocket, mio::net::UdpSocket)>,
    primary: UdpSocket,
    router: Router,
    handoffs: Receiver<Handoff>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn run(&mut self) {
        let mut events = Events::with_capacity(16);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut more = true;
        while !self.stop.load(Ordering::Acquire) {
            // A socket that had more than a batch is read again at once:
            // mio reports readiness once per edge.
            let timeout = if more { Some(Duration::ZERO) } else { None };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "the STUN thread cannot poll; alternate sockets stop");
                    return;
                }
            }
            for _ in 0..HANDOFF_CAPACITY {
                let Ok(h) = self.handoffs.try_recv() else {
                    break;
                };
                self.send(h.from, h.dst, &h.bytes);
            }
            more = false;
            for i in 0..self.sockets.len() {
                more |= self.read(i, &mut buf);
            }
        }
    }

    /// Reads up to [`BATCH`] datagrams from socket `i`; true if it may have more.
    fn read(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let kind = self.sockets[i].0;
        for _ in 0..BATCH {
            let (len, src) = match self.sockets[i].1.recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(socket = kind.as_str(), error = %e, "STUN receive failed");
                    return false;
                }
            };
            // Oversized datagrams were cut to the buffer: not STUN worth answering.
            if len >= buf.len() {
                continue;
            }
            let src = canonical(src);
            let request = &mut buf[..len];
            match self.router.handle_at(Instant::now(), kind, src, request) {
                Decision::Verdict(Verdict::Reply(n)) => {
                    let n = n.min(len);
                    self.send(kind, src, &request[..n]);
                }
                Decision::ReplyFrom { socket, len: n } => {
                    let n = n.min(len);
                    self.send(socket, src, &request[..n]);
                }
                // The router forwards nothing from an alternate socket.
                Decision::Verdict(Verdict::Forward(_) | Verdict::Drop(_) | Verdict::Consumed) => {}
            }
        }
        true
    }

    fn send(&self, from: LocalSocket, dst: SocketAddr, bytes: &[u8]) {
        let result = match from {
            LocalSocket::Primary => {
                let v6 = self.primary.local_addr().is_ok_and(|a| a.is_ipv6());
                self.primary.send_to(bytes, for_family(dst, v6))
            }
            other => match self.sockets.iter().find(|(kind, _)| *kind == other) {
                Some((_, socket)) => {
                    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
                    socket.send_to(bytes, for_family(dst, v6))
                }
                None => {
                    self.router
                        .metrics()
                        .record_drop(DropReason::StunNoAlternateSocket);
                    return;
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(from = from.as_str(), error = %e, "STUN send failed");
        }
    }
}

/// IPv4 peers as IPv4 (a dual-stack socket reports them v4-mapped).
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(IpAddr::V4(v4), v6.port())),
        SocketAddr::V4(_) => addr,
    }
}

/// `dst` as a socket of that family can send to it: v4-mapped from an IPv6 socket.
fn for_family(dst: SocketAddr, v6_socket: bool) -> SocketAddr {
    match dst {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}
