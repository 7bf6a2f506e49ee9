//! What the epoll and io_uring backend tests share: a stand-in router and
//! blocking client helpers. Test-only.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Handler;
use lanrage_relay_core::metrics::{DropReason, Metrics};
use lanrage_relay_core::router::Verdict;

/// A stand-in router: `fwd…` goes to `sink`, `fw2…` to `sink2`, `reply…` is
/// answered with `ok`, anything else is dropped. Its timer is overdue until
/// fired once.
pub struct Fake {
    pub sink: SocketAddr,
    pub sink2: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub seen: Vec<(SocketAddr, Vec<u8>)>,
    pub deadline: Option<Instant>,
    pub timeouts_fired: usize,
}

impl Fake {
    pub fn new(sink: SocketAddr, sink2: SocketAddr) -> Self {
        Self {
            sink,
            sink2,
            metrics: Arc::default(),
            seen: Vec::new(),
            deadline: Some(Instant::now()),
            timeouts_fired: 0,
        }
    }
}

impl Handler for Fake {
    fn handle(&mut self, _now: Instant, src: SocketAddr, buf: &mut [u8]) -> Verdict {
        self.seen.push((src, buf.to_vec()));
        if buf.starts_with(b"fwd") {
            Verdict::Forward(self.sink)
        } else if buf.starts_with(b"fw2") {
            Verdict::Forward(self.sink2)
        } else if buf.starts_with(b"reply") {
            buf[..2].copy_from_slice(b"ok");
            Verdict::Reply(2)
        } else {
            Verdict::Drop(DropReason::UnknownProtocol)
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {
        self.timeouts_fired += 1;
        self.deadline = None;
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
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
