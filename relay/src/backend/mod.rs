//! IO backends: they own the UDP socket and the clock, feed every datagram to
//! a [`Handler`] (the router), and execute its [`Verdict`]s.
//!
//! Backends know nothing about WireGuard. They see a [`Handler`], so the
//! io_uring backend ([`uring`]), the epoll backend ([`epoll`]) and the tests
//! drive the same router code. Drive order per wake-up: fire due timers
//! (`handle_timeout`), receive a batch, call `handle` for each datagram with
//! one `now` per batch, send the batch of verdicts, repeat until the socket is
//! drained, then sleep until readiness, the next `poll_timeout`, or a stop.
//!
//! Linux only: `recvmmsg`/`sendmmsg` and io_uring.

pub mod epoll;
pub mod gso;
pub mod metrics;
mod sockaddr;
pub mod socket_stats;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod transmit;
pub mod uring;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{BackendChoice, SocketConfig};
use lanrage_relay_core::metrics::DropReason;
use lanrage_relay_core::router::{Decision, LocalSocket, Router, Verdict};
pub use metrics::BackendMetrics;

/// What a backend drives: the sans-IO router, or a test double.
pub trait Handler {
    /// One received datagram; `buf` is exactly its bytes and may be rewritten
    /// in place for a [`Verdict::Reply`] or a [`Decision::ReplyFrom`].
    fn handle(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Decision;
    /// A STUN answer `bytes` for `dst` that must leave from another of the
    /// relay's sockets ([`Decision::ReplyFrom`]): the handler hands it to
    /// whoever owns that socket (`crate::stun`); the backend sends nothing.
    fn reply_from(&mut self, socket: LocalSocket, dst: SocketAddr, bytes: &[u8]);
    /// Called once `poll_timeout` has passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The next instant `handle_timeout` wants to run, if any.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// A bare router has no alternate sockets: a hand-off is a counted drop
/// (it only happens if its config names alternates anyway).
impl Handler for Router {
    fn handle(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Decision {
        Router::handle_at(self, now, LocalSocket::Primary, src, buf)
    }
    fn reply_from(&mut self, _socket: LocalSocket, _dst: SocketAddr, _bytes: &[u8]) {
        self.metrics()
            .record_drop(DropReason::StunNoAlternateSocket);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Router::handle_timeout(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Router::poll_timeout(self)
    }
}

/// Tuning shared by all backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Datagrams per receive and send system call.
    pub batch_size: usize,
    /// Coalesce consecutive same-destination, same-size sends into one UDP
    /// GSO send (where the kernel supports `UDP_SEGMENT`).
    pub gso: bool,
}

/// A bound backend, ready to run. Creating it is separate from running it so
/// the caller can wire signals to a [`StopHandle`] and announce readiness
/// before traffic flows.
pub struct Backend {
    inner: Inner,
}

enum Inner {
    Epoll(epoll::EpollBackend),
    Uring(Box<uring::UringBackend>),
}

impl Backend {
    /// Takes over a socket from [`bind_udp`] with the backend `choice` asks
    /// for; `auto` is settled by [`resolve`]. `io_uring` is taken as checked:
    /// whoever chose it probed once (the CLI does, at start), so workers
    /// don't repeat the probe. The backend counts into `metrics`, which
    /// all of a relay's workers share (register it once with the router's
    /// `Metrics::add_source`).
    pub fn new(
        socket: UdpSocket,
        options: Options,
        choice: BackendChoice,
        metrics: Arc<BackendMetrics>,
    ) -> io::Result<Self> {
        let inner = match resolve(choice) {
            BackendChoice::IoUring => Inner::Uring(Box::new(uring::UringBackend::new(
                socket, options, metrics,
            )?)),
            BackendChoice::Epoll | BackendChoice::Auto => {
                Inner::Epoll(epoll::EpollBackend::new(socket, options, metrics)?)
            }
        };
        Ok(Self { inner })
    }

    /// The backend's name for logs and metrics: `epoll` or `io_uring`.
    pub fn name(&self) -> &'static str {
        match &self.inner {
            Inner::Epoll(_) => "epoll",
            Inner::Uring(_) => "io_uring",
        }
    }

    /// The socket's bound address (with the real port if the config asked for 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Inner::Epoll(b) => b.local_addr(),
            Inner::Uring(b) => b.local_addr(),
        }
    }

    /// A handle that makes [`Backend::run`] return, from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        match &self.inner {
            Inner::Epoll(b) => b.stop_handle(),
            Inner::Uring(b) => b.stop_handle(),
        }
    }

    /// Runs until [`StopHandle::stop`]. Errors only if polling itself fails;
    /// per-datagram failures are counted and logged, never fatal.
    pub fn run<H: Handler>(self, handler: &mut H) -> io::Result<()> {
        match self.inner {
            Inner::Epoll(b) => b.run(handler),
            Inner::Uring(b) => b.run(handler),
        }
    }
}

/// What `auto` runs where io_uring is available. Epoll, because it forwarded
/// more than io_uring in every side-by-side run so far (both with GSO; see
/// `docs/benchmarks.md`, "Backends", for the figures and the profile: the
/// per-datagram kernel work dominates, and io_uring's receive path paid more
/// of it). Flip this when a measurement says otherwise.
const AUTO_PREFERS: BackendChoice = BackendChoice::Epoll;

/// Settles `auto` into a concrete backend, and logs what it chose and why;
/// other choices are returned as they are. Call it once per relay (the data
/// plane does) so the probe and the log line happen once.
pub fn resolve(choice: BackendChoice) -> BackendChoice {
    if choice != BackendChoice::Auto {
        return choice;
    }
    // Operators and the e2e tests read these lines.
    match io_uring_available() {
        Ok(()) if AUTO_PREFERS == BackendChoice::IoUring => BackendChoice::IoUring,
        Ok(()) => {
            tracing::info!(
                "backend auto: epoll, measured faster than io_uring (docs/benchmarks.md); \
                 io_uring is available here, set backend: io_uring to use it"
            );
            BackendChoice::Epoll
        }
        Err(why) => {
            tracing::info!(reason = %why, "io_uring is not available; using the epoll backend");
            BackendChoice::Epoll
        }
    }
}

/// Whether the io_uring backend can run here, or why not (see [`uring::probe`]).
pub fn io_uring_available() -> Result<(), String> {
    uring::probe()
}

/// Runs `handler` on one datagram, handing a STUN answer for another socket
/// back to it ([`Handler::reply_from`]). Returns the verdict this backend
/// executes, `None` when it has nothing to send. Both backends call it, so
/// the hand-off is one piece of code.
pub(crate) fn dispatch<H: Handler>(
    handler: &mut H,
    now: Instant,
    src: SocketAddr,
    buf: &mut [u8],
) -> Option<Verdict> {
    match handler.handle(now, src, buf) {
        Decision::Verdict(verdict) => Some(verdict),
        Decision::ReplyFrom { socket, len } => {
            let len = len.min(buf.len());
            handler.reply_from(socket, src, &buf[..len]);
            None
        }
    }
}

/// How long to wait when a handler's deadline is still in the past right
/// after `handle_timeout`: a guard against spinning, not a timer resolution.
const OVERDUE_TIMER_BACKOFF: Duration = Duration::from_millis(1);

/// Runs `handle_timeout` if due, and returns how long the backend may sleep
/// before the next timer. Both backends call it at the top of every wake-up
/// and once per receive batch.
pub(crate) fn fire_timers<H: Handler>(handler: &mut H, now: Instant) -> Option<Duration> {
    let deadline = handler.poll_timeout()?;
    if deadline > now {
        return Some(deadline - now);
    }
    handler.handle_timeout(now);
    match handler.poll_timeout() {
        None => None,
        Some(next) if next > now => Some(next - now),
        Some(_) => Some(OVERDUE_TIMER_BACKOFF),
    }
}

/// Stops a running backend: sets a flag and wakes its poll.
#[derive(Clone)]
pub struct StopHandle {
    stopped: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
}

impl StopHandle {
    pub(crate) fn new(waker: mio::Waker) -> Self {
        Self {
            stopped: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(waker),
        }
    }

    /// Asks the backend to return from `run` after the batch in hand.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            // The backend still sees the flag at its next wake-up (a datagram or timer).
            tracing::warn!(error = %e, "cannot wake the relay loop to stop it");
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Opens a UDP socket on `addr` with `SO_REUSEPORT` set, so more sockets can
/// share the port: non-blocking, the configured buffer sizes, and dual-stack
/// when bound to an IPv6 address (IPv4 peers then appear as IPv4 addresses,
/// see `sockaddr`).
///
/// This does not notice another process on the port if that one set
/// `SO_REUSEPORT` too (same user): the kernel would split the traffic between
/// them. The relay binds its workers with [`bind_udp_exclusive`] instead.
pub fn bind_udp(addr: SocketAddr, config: &SocketConfig) -> io::Result<UdpSocket> {
    let socket = udp_socket(addr, config)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Opens `count` (at least one) UDP sockets on `addr`, like [`bind_udp`],
/// but only if no other socket is bound to that address: the first one is
/// bound *without* `SO_REUSEPORT`, which the kernel refuses (`EADDRINUSE`)
/// while any socket, with or without `SO_REUSEPORT`, holds the port. Only
/// then is `SO_REUSEPORT` switched on for it (Linux lets a bound socket
/// join a reuseport group that way) and the others bound to its address.
///
/// A probe socket closed before the real bind would leave a window in which
/// a second relay passes its probe too; here the port is held from the first
/// check on, so two relays can't both start. For one socket, `SO_REUSEPORT`
/// stays off, so nothing can join it later either.
///
/// `EADDRINUSE` comes back as an error that says another process is bound
/// to `addr`.
pub fn bind_udp_exclusive(
    addr: SocketAddr,
    config: &SocketConfig,
    count: usize,
) -> io::Result<Vec<UdpSocket>> {
    let first = udp_socket(addr, config)?;
    first.bind(&addr.into()).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is already bound to UDP {addr} (another relay?); \
                 stop it or choose another port ({e})"
            ),
        ),
        _ => e,
    })?;
    if count <= 1 {
        return Ok(vec![first.into()]);
    }
    first.set_reuse_port(true)?;
    // With port 0 the kernel picked one; the others join that.
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a UDP socket has no IP address"))?;
    let mut sockets = vec![UdpSocket::from(first)];
    for _ in 1..count {
        sockets.push(bind_udp(bound, config)?);
    }
    Ok(sockets)
}

/// A new UDP socket for `addr` with the relay's options, not yet bound and
/// without `SO_REUSEPORT`.
fn udp_socket(addr: SocketAddr, config: &SocketConfig) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Explicit, so behaviour doesn't depend on the net.ipv6.bindv6only sysctl.
        socket.set_only_v6(false)?;
    }
    socket.set_recv_buffer_size(config.recv_buffer_bytes)?;
    socket.set_send_buffer_size(config.send_buffer_bytes)?;
    warn_if_capped(
        "SO_RCVBUF",
        "net.core.rmem_max",
        config.recv_buffer_bytes,
        socket.recv_buffer_size(),
    );
    warn_if_capped(
        "SO_SNDBUF",
        "net.core.wmem_max",
        config.send_buffer_bytes,
        socket.send_buffer_size(),
    );
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The kernel silently caps buffer sizes for unprivileged processes; say so,
/// because a small receive buffer shows up as unexplained loss under bursts.
fn warn_if_capped(option: &str, sysctl: &str, wanted: usize, got: io::Result<usize>) {
    // Linux reports twice the requested size (it reserves room for bookkeeping).
    match got {
        Ok(got) if got / 2 < wanted => tracing::warn!(
            option,
            wanted,
            got = got / 2,
            "socket buffer smaller than configured; raise the {sysctl} sysctl"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(option, error = %e, "cannot read back socket buffer size"),
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;
    use std::collections::HashSet;

    const LOOPBACK: &str = "127.0.0.1:0";

    #[test]
    fn exclusive_bind_refuses_a_port_held_with_or_without_reuseport() {
        let config = SocketConfig::default();
        let held = bind_udp_exclusive(LOOPBACK.parse().expect("addr"), &config, 2).expect("bind");
        let addr = held[0].local_addr().expect("addr");
        assert_eq!(held[1].local_addr().expect("addr"), addr);
        let err = bind_udp_exclusive(addr, &config, 2).expect_err("second group");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let text = err.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("another process"),
            "{text}"
        );
        // A plain socket holding the port is refused too.
        let plain = UdpSocket::bind(LOOPBACK).expect("plain");
        let addr = plain.local_addr().expect("addr");
        let err = bind_udp_exclusive(addr, &config, 1).expect_err("plain holder");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // And a group holding the port keeps out a one-socket relay.
        let err = bind_udp_exclusive(held[0].local_addr().expect("addr"), &config, 1)
            .expect_err("single after group");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    /// The first socket joins the reuseport group although it was bound
    /// before `SO_REUSEPORT` was set: the kernel spreads sources over all.
    #[test]
    fn every_socket_of_an_exclusive_group_receives() {
        let config = SocketConfig::default();
        let group = bind_udp_exclusive(LOOPBACK.parse().expect("addr"), &config, 2).expect("bind");
        let addr = group[0].local_addr().expect("addr");
        // 64 sources: the chance that the hash sends them all to one of two
        // sockets is 2^-63.
        let clients: Vec<UdpSocket> = (0..64)
            .map(|_| UdpSocket::bind(LOOPBACK).expect("client"))
            .collect();
        for client in &clients {
            client.send_to(b"x", addr).expect("send");
        }
        let mut sources = HashSet::new();
        let mut per_socket = [0usize; 2];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 16];
        while sources.len() < clients.len() && Instant::now() < deadline {
            let mut idle = true;
            for (i, socket) in group.iter().enumerate() {
                // Non-blocking sockets: drain what has arrived.
                while let Ok((_, src)) = socket.recv_from(&mut buf) {
                    idle = false;
                    per_socket[i] += 1;
                    sources.insert(src);
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(sources.len(), clients.len(), "datagrams lost on loopback");
        assert!(
            per_socket.iter().all(|&n| n > 0),
            "one socket got nothing: {per_socket:?}"
        );
    }
}
