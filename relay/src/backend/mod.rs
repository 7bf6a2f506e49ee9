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
mod sockaddr;
pub mod socket_stats;
#[cfg(test)]
mod test_support;
pub mod uring;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{BackendChoice, SocketConfig};
use crate::metrics::Metrics;
use crate::router::{Router, Verdict};

/// What a backend drives: the sans-IO router, or a test double.
pub trait Handler {
    /// One received datagram; `buf` is exactly its bytes and may be rewritten
    /// in place for a [`Verdict::Reply`].
    fn handle(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Verdict;
    /// Called once `poll_timeout` has passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The next instant `handle_timeout` wants to run, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Counters the backend updates: received datagrams and failed sends.
    fn metrics(&self) -> &Metrics;
}

impl Handler for Router {
    fn handle(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Verdict {
        Router::handle(self, now, src, buf)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Router::handle_timeout(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Router::poll_timeout(self)
    }
    fn metrics(&self) -> &Metrics {
        Router::metrics(self)
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
    /// don't repeat the probe.
    pub fn new(socket: UdpSocket, options: Options, choice: BackendChoice) -> io::Result<Self> {
        let inner = match resolve(choice) {
            BackendChoice::IoUring => {
                Inner::Uring(Box::new(uring::UringBackend::new(socket, options)?))
            }
            BackendChoice::Epoll | BackendChoice::Auto => {
                Inner::Epoll(epoll::EpollBackend::new(socket, options)?)
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

/// Opens the relay's UDP socket: non-blocking, `SO_REUSEPORT` (so more
/// workers can later bind the same port), the configured buffer sizes, and
/// dual-stack when bound to an IPv6 address (IPv4 peers then appear as IPv4
/// addresses, see `sockaddr`).
///
/// Because of `SO_REUSEPORT`, a second relay started by the same user on the
/// same port does not fail to bind; the kernel splits traffic between them.
pub fn bind_udp(addr: SocketAddr, config: &SocketConfig) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Explicit, so behaviour doesn't depend on the net.ipv6.bindv6only sysctl.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
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
    socket.bind(&addr.into())?;
    Ok(socket.into())
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
