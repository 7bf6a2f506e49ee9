//! What the epoll and io_uring backend tests share: a stand-in router, a
//! way to start either backend on it, and blocking client helpers. Test-only.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::metrics::{BackendMetrics, Counter};
use super::{bind_udp, epoll, uring, Backend, Handler, Inner, Options, StopHandle};
use crate::config::SocketConfig;
use lanrage_relay_core::metrics::DropReason;
use lanrage_relay_core::router::{Decision, LocalSocket, Verdict};
use lanrage_test_support::privileged::skip_or_fail;

/// Which backend a shared test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Epoll,
    Uring,
}

impl Kind {
    /// Whether this machine runs the backend. io_uring may be missing (old
    /// kernel, sysctl, seccomp): the test then skips and says why, or fails
    /// under `LANRAGE_REQUIRE_PRIVILEGED=1` (CI). Uses the kernel probe, not
    /// [`uring::probe`], so a `LANRAGE_FORCE_URING_PROBE_FAIL` meant for
    /// backend selection doesn't silently skip the backend's own tests.
    pub fn available(self, test: &str) -> bool {
        match self {
            Self::Epoll => true,
            Self::Uring => match uring::probe_kernel() {
                Ok(()) => true,
                Err(reason) => {
                    skip_or_fail(test, &format!("io_uring unavailable: {reason}"));
                    false
                }
            },
        }
    }
}

/// A backend running a [`Fake`] on a thread of its own.
pub struct Running {
    pub relay: SocketAddr,
    pub metrics: Arc<BackendMetrics>,
    stop: StopHandle,
    thread: thread::JoinHandle<Fake>,
}

/// What a stopped backend leaves: the handler, and the counters.
pub struct Finished {
    pub fake: Fake,
    pub metrics: Arc<BackendMetrics>,
}

impl Finished {
    pub fn received(&self) -> u64 {
        self.metrics.get(Counter::Received)
    }
    pub fn send_errors(&self) -> u64 {
        self.metrics.get(Counter::SendErrors)
    }
    pub fn oversized(&self) -> u64 {
        self.metrics.get(Counter::Oversized)
    }
    pub fn gso_sends(&self) -> u64 {
        self.metrics.get(Counter::GsoSends)
    }
    pub fn gso_refused(&self) -> u64 {
        self.metrics.get(Counter::GsoRefused)
    }
    pub fn recv_buffers_exhausted(&self) -> u64 {
        self.metrics.get(Counter::UringRecvBuffersExhausted)
    }
    pub fn recv_rearms(&self) -> u64 {
        self.metrics.get(Counter::UringRecvRearms)
    }
}

impl Running {
    /// Stops the backend and waits for it.
    pub fn finish(self) -> Finished {
        self.stop.stop();
        let fake = self.thread.join().expect("backend thread");
        Finished {
            fake,
            metrics: self.metrics,
        }
    }
}

/// Knobs of [`start`] beyond the backend kind.
pub struct Setup {
    pub listen: &'static str,
    pub batch_size: usize,
    /// io_uring: receive buffers in the ring.
    pub ring_entries: u16,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0",
            batch_size: 64,
            ring_entries: uring::DEFAULT_RING_ENTRIES,
        }
    }
}

/// Binds a `kind` backend, lets `before_run` queue datagrams at it (so they
/// arrive as one burst) or set socket options, then runs it with `fake` in
/// a thread. GSO is on.
pub fn start(
    kind: Kind,
    setup: Setup,
    fake: Fake,
    before_run: impl FnOnce(SocketAddr, &UdpSocket),
) -> io::Result<Running> {
    let socket = bind_udp(
        setup.listen.parse().expect("addr"),
        &SocketConfig::default(),
    )?;
    before_run(socket.local_addr()?, &socket);
    let options = Options {
        batch_size: setup.batch_size,
        gso: true,
    };
    let metrics = Arc::new(BackendMetrics::default());
    let backend = backend(
        kind,
        socket,
        options,
        setup.ring_entries,
        Arc::clone(&metrics),
    )?;
    let relay = backend.local_addr()?;
    let stop = backend.stop_handle();
    let mut fake = fake;
    let thread = thread::spawn(move || {
        backend.run(&mut fake).expect("run");
        fake
    });
    Ok(Running {
        relay,
        metrics,
        stop,
        thread,
    })
}

/// A `kind` backend on `socket`; io_uring with `ring_entries` receive buffers.
pub fn backend(
    kind: Kind,
    socket: UdpSocket,
    options: Options,
    ring_entries: u16,
    metrics: Arc<BackendMetrics>,
) -> io::Result<Backend> {
    let inner = match kind {
        Kind::Epoll => Inner::Epoll(epoll::EpollBackend::new(socket, options, metrics)?),
        Kind::Uring => Inner::Uring(Box::new(uring::UringBackend::with_ring_entries(
            socket,
            options,
            ring_entries,
            metrics,
        )?)),
    };
    Ok(Backend { inner })
}

/// Makes the kernel refuse GSO sends on `socket` (`EINVAL`): a socket
/// without UDP checksums, as on a device that can't offload them.
pub fn refuse_gso(socket: &UdpSocket) {
    const SO_NO_CHECK: libc::c_int = 11;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NO_CHECK,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
}

/// `fwd`/`fw2` prefix, a sequence number, then filler up to `len` bytes.
pub fn datagram(prefix: &[u8; 3], seq: u16, len: usize) -> Vec<u8> {
    let mut d = prefix.to_vec();
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend((0..len.saturating_sub(5)).map(|i| (i as u8) ^ (seq as u8)));
    d.truncate(len);
    d
}

/// A stand-in router: `fwd…` goes to `sink`, `fw2…` to `sink2`, `reply…` is
/// answered with `ok`, anything else is dropped. Its timer is overdue until
/// fired once.
pub struct Fake {
    pub sink: SocketAddr,
    pub sink2: SocketAddr,
    pub seen: Vec<(SocketAddr, Vec<u8>)>,
    /// What `reply_from` was given: `alt…` datagrams, answered `ok` from
    /// the alternate port.
    pub handed_off: Vec<(LocalSocket, SocketAddr, Vec<u8>)>,
    pub deadline: Option<Instant>,
    pub timeouts_fired: usize,
}

impl Fake {
    pub fn new(sink: SocketAddr, sink2: SocketAddr) -> Self {
        Self {
            sink,
            sink2,
            seen: Vec::new(),
            handed_off: Vec::new(),
            deadline: Some(Instant::now()),
            timeouts_fired: 0,
        }
    }
}

impl Handler for Fake {
    fn handle(&mut self, _now: Instant, src: SocketAddr, buf: &mut [u8]) -> Decision {
        self.seen.push((src, buf.to_vec()));
        if buf.starts_with(b"alt") {
            buf[..2].copy_from_slice(b"ok");
            return Decision::ReplyFrom {
                socket: LocalSocket::AltPort,
                len: 2,
            };
        }
        Decision::Verdict(if buf.starts_with(b"fwd") {
            Verdict::Forward(self.sink)
        } else if buf.starts_with(b"fw2") {
            Verdict::Forward(self.sink2)
        } else if buf.starts_with(b"reply") {
            buf[..2].copy_from_slice(b"ok");
            Verdict::Reply(2)
        } else {
            Verdict::Drop(DropReason::UnknownProtocol)
        })
    }
    fn reply_from(&mut self, socket: LocalSocket, dst: SocketAddr, bytes: &[u8]) {
        self.handed_off.push((socket, dst, bytes.to_vec()));
    }
    fn handle_timeout(&mut self, _now: Instant) {
        self.timeouts_fired += 1;
        self.deadline = None;
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A loopback client socket with a 5 s receive timeout.
pub fn client(addr: &str) -> UdpSocket {
    let socket = UdpSocket::bind(addr).expect("bind client");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    socket
}

/// Waits up to 5 s for a datagram. Retries `EINTR`: a thread that created
/// or used an io_uring (the probe, `UringBackend::new`) gets task work from
/// the kernel when that ring is torn down, which ends a blocking `recvfrom`
/// with a receive timeout early.
pub fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => return (buf[..len].to_vec(), from),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no datagram within 5 s: {e}"),
        }
    }
    panic!("recv_from interrupted 100 times");
}
