//! The portable backend: mio (epoll) readiness plus `recvmmsg`/`sendmmsg`.
//!
//! It works wherever io_uring doesn't (old kernels, container seccomp
//! profiles). One socket, one thread. Received datagrams are answered from the
//! buffers they arrived in: a forward or reply sends the same bytes, so
//! nothing is copied between receive and send.
//!
//! Sends never block. If the socket's send buffer is full (`EAGAIN`), the rest
//! of the batch is dropped and counted as send errors: WireGuard tolerates
//! loss, and blocking would stall every other peer behind one slow path.
//! What to send, GSO grouping and what a failure means are the shared
//! [`super::transmit`] policy; this module only fills `mmsghdr`s.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, RawFd};
use std::ptr;
use std::time::Instant;

use libc::{iovec, mmsghdr, sockaddr_storage, socklen_t};
use mio::{Events, Interest, Poll, Token, Waker};

use super::metrics::{BackendMetrics, Counter};
use super::transmit::{self, Failure, Outgoing, SendPolicy};
use super::{fire_timers, gso, sockaddr, Handler, Options, StopHandle};
use std::sync::Arc;

/// Receive buffer per datagram. WireGuard over a 1500-byte path MTU sends at
/// most 1472 bytes of UDP payload; anything larger than this is not a
/// datagram the relay forwards, and arrives truncated (`MSG_TRUNC`).
pub const MAX_DATAGRAM: usize = 2048;

const WAKER: Token = Token(0);
const SOCKET: Token = Token(1);

/// `EINTR` retries per send before giving up on the batch, so a signal storm
/// can't pin the loop.
const MAX_SEND_INTERRUPTS: u32 = 8;

/// The epoll backend. Build it with [`EpollBackend::new`], then [`EpollBackend::run`].
pub struct EpollBackend {
    poll: Poll,
    socket: mio::net::UdpSocket,
    /// Whether destinations are written as `sockaddr_in6` (IPv4 as mapped).
    v6_socket: bool,
    stop: StopHandle,
    batch_size: usize,
    gso: bool,
    metrics: Arc<BackendMetrics>,
}

impl EpollBackend {
    /// Registers a non-blocking socket (from [`super::bind_udp`]) with a new
    /// poll; counts into `metrics`.
    pub fn new(
        socket: UdpSocket,
        options: Options,
        metrics: Arc<BackendMetrics>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        socket.set_nonblocking(true)?;
        let v6_socket = socket.local_addr()?.is_ipv6();
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        Ok(Self {
            poll,
            socket,
            v6_socket,
            stop: StopHandle::new(waker),
            batch_size: options.batch_size.max(1),
            gso: options.gso,
            metrics,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs until stopped. See the module docs of [`super`] for the drive order.
    pub fn run<H: Handler>(mut self, handler: &mut H) -> io::Result<()> {
        let mut events = Events::with_capacity(8);
        let fd = self.socket.as_raw_fd();
        let mut batch = Batch::new(self.batch_size, self.gso && gso::supported(fd));
        loop {
            if self.stop.is_stopped() {
                return Ok(());
            }
            let timeout = fire_timers(handler, Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // The waker needs no handling of its own: the stop flag is checked
            // at the top of the loop and between batches.
            if events.iter().any(|event| event.token() == SOCKET) {
                self.drain(fd, handler, &mut batch);
            }
        }
    }

    /// Receives and answers batches until the socket is empty. mio readiness
    /// is edge-triggered, so stopping early would leave datagrams unannounced.
    fn drain<H: Handler>(&mut self, fd: RawFd, handler: &mut H, batch: &mut Batch) {
        loop {
            if self.stop.is_stopped() {
                return;
            }
            let received = match batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Nothing fatal can come from a bound UDP socket here; the
                    // next datagram re-arms readiness, so just end this drain.
                    tracing::warn!(error = %e, "recvmmsg failed");
                    return;
                }
            };
            let now = Instant::now();
            // Under a flood the socket may never drain; timers still run.
            fire_timers(handler, now);
            batch.dispatch(received, now, handler, &self.metrics);
            batch.send(fd, self.v6_socket, &self.metrics);
        }
    }
}

/// One send header's datagrams: `segments` iovecs from `first_iov`, to `dst`.
#[derive(Debug, Clone, Copy)]
struct Run {
    first_iov: usize,
    segments: usize,
    dst: SocketAddr,
}

/// Preallocated buffers and headers for one batch.
///
/// The `iovec`/`mmsghdr` arrays hold raw pointers into `bufs` and the address
/// arrays. They are rewritten right before every system call, from fresh
/// borrows, so no pointer outlives the borrow it came from. The boxes never
/// reallocate, so the pointers stay valid for the duration of the call.
struct Batch {
    bufs: Box<[[u8; MAX_DATAGRAM]]>,
    recv_addrs: Box<[sockaddr_storage]>,
    recv_iovs: Box<[iovec]>,
    recv_hdrs: Box<[mmsghdr]>,
    /// This batch's datagrams to send; `buf` indexes `bufs`.
    outgoing: Vec<Outgoing<usize>>,
    send_addrs: Box<[sockaddr_storage]>,
    send_iovs: Box<[iovec]>,
    send_hdrs: Box<[mmsghdr]>,
    /// One `UDP_SEGMENT` control message per send header.
    send_cmsgs: Box<[gso::SegmentCmsg]>,
    /// What each send header carries (1 datagram, or a GSO run).
    send_runs: Vec<Run>,
    policy: SendPolicy,
}

impl Batch {
    /// `gso`: configured and supported by the socket.
    fn new(size: usize, gso: bool) -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
        // which all zeroes (null pointers, zero lengths) is a valid value.
        let zeroed = || unsafe { mem::zeroed::<sockaddr_storage>() };
        let iov = || iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: as above.
        let hdr = || unsafe { mem::zeroed::<mmsghdr>() };
        Self {
            bufs: vec![[0u8; MAX_DATAGRAM]; size].into_boxed_slice(),
            recv_addrs: (0..size).map(|_| zeroed()).collect(),
            recv_iovs: (0..size).map(|_| iov()).collect(),
            recv_hdrs: (0..size).map(|_| hdr()).collect(),
            outgoing: Vec::with_capacity(size),
            send_addrs: (0..size).map(|_| zeroed()).collect(),
            send_iovs: (0..size).map(|_| iov()).collect(),
            send_hdrs: (0..size).map(|_| hdr()).collect(),
            send_cmsgs: vec![gso::SegmentCmsg::default(); size].into_boxed_slice(),
            send_runs: Vec::with_capacity(size),
            policy: SendPolicy::new(gso),
        }
    }

    /// One `recvmmsg`; returns how many datagrams arrived (at least one).
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let size = self.bufs.len();
        for i in 0..size {
            self.recv_iovs[i] = iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let hdr = &mut self.recv_hdrs[i];
            hdr.msg_hdr.msg_name = ptr::from_mut(&mut self.recv_addrs[i]).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<sockaddr_storage>() as socklen_t;
            hdr.msg_hdr.msg_iov = ptr::from_mut(&mut self.recv_iovs[i]);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: `recv_hdrs` holds `size` headers, each pointing at one
        // iovec of MAX_DATAGRAM writable bytes in `bufs` and at a whole
        // sockaddr_storage, all set just above and alive for the call. The
        // kernel writes at most those lengths. No timeout pointer is passed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdrs.as_mut_ptr(),
                size as _,
                libc::MSG_DONTWAIT as _,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Hands each received datagram to the handler and queues the sends.
    fn dispatch<H: Handler>(
        &mut self,
        received: usize,
        now: Instant,
        handler: &mut H,
        metrics: &BackendMetrics,
    ) {
        self.outgoing.clear();
        for i in 0..received {
            metrics.record(Counter::Received);
            let hdr = &self.recv_hdrs[i].msg_hdr;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 {
                metrics.record(Counter::Oversized);
                tracing::trace!(max = MAX_DATAGRAM, "dropping oversized datagram");
                continue;
            }
            let Some(src) = sockaddr::to_std(&self.recv_addrs[i], hdr.msg_namelen) else {
                metrics.record(Counter::ReceiveDiscarded);
                tracing::trace!(
                    family = self.recv_addrs[i].ss_family,
                    "dropping datagram from an unsupported address family"
                );
                continue;
            };
            let len = (self.recv_hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
            let verdict = super::dispatch(handler, now, src, &mut self.bufs[i][..len]);
            if let Some(out) = verdict.and_then(|v| transmit::outgoing(v, src, i, len)) {
                self.outgoing.push(out);
            }
        }
    }

    /// Sends the queued datagrams with as few `sendmmsg` calls as the kernel
    /// allows, coalescing runs to one destination into GSO sends.
    fn send(&mut self, fd: RawFd, v6_socket: bool, metrics: &BackendMetrics) {
        self.send_runs.clear();
        let mut iovs = 0; // iovecs used, one per datagram
        let mut start = 0;
        while start < self.outgoing.len() {
            let end = self.policy.run_end(&self.outgoing, start);
            let first = self.outgoing[start];
            let count = self.send_runs.len();
            let segments = end - start;
            let Some(name_len) = self.policy.address(
                first.dst,
                v6_socket,
                &mut self.send_addrs[count],
                segments,
                metrics,
            ) else {
                start = end;
                continue;
            };
            let first_iov = iovs;
            for out in &self.outgoing[start..end] {
                self.send_iovs[iovs] = iovec {
                    iov_base: self.bufs[out.buf].as_mut_ptr().cast(),
                    iov_len: out.len,
                };
                iovs += 1;
            }
            let hdr = &mut self.send_hdrs[count];
            hdr.msg_hdr.msg_name = ptr::from_mut(&mut self.send_addrs[count]).cast();
            hdr.msg_hdr.msg_namelen = name_len;
            hdr.msg_hdr.msg_iov = ptr::from_mut(&mut self.send_iovs[first_iov]);
            hdr.msg_hdr.msg_iovlen = segments as _;
            if segments > 1 {
                // Datagrams are at most MAX_DATAGRAM (2048) bytes: fits a u16.
                let controllen = self.send_cmsgs[count].write(first.len as u16);
                hdr.msg_hdr.msg_control = self.send_cmsgs[count].as_mut_ptr();
                hdr.msg_hdr.msg_controllen = controllen as _;
            } else {
                hdr.msg_hdr.msg_control = ptr::null_mut();
                hdr.msg_hdr.msg_controllen = 0;
            }
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
            self.policy.submitted(segments, metrics);
            self.send_runs.push(Run {
                first_iov,
                segments,
                dst: first.dst,
            });
            start = end;
        }

        let count = self.send_runs.len();
        let mut sent = 0;
        let mut interrupts = 0;
        while sent < count {
            // SAFETY: headers `sent..count` were filled above from live,
            // non-reallocating buffers: each points at its iovecs (each
            // `len <= MAX_DATAGRAM` initialised bytes in `bufs`), a sockaddr of
            // `name_len` bytes, and for GSO runs a control message in
            // `send_cmsgs`. The kernel only reads them (and writes `msg_len`).
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_hdrs[sent..count].as_mut_ptr(),
                    (count - sent) as _,
                    libc::MSG_DONTWAIT as _,
                )
            };
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let errno = if n == 0 {
                0 // sendmmsg sent nothing without an error
            } else {
                io::Error::last_os_error().raw_os_error().unwrap_or(0)
            };
            match errno {
                libc::EINTR if interrupts < MAX_SEND_INTERRUPTS => interrupts += 1,
                libc::EAGAIN | libc::EINTR | 0 => {
                    // The send buffer is full: drop the rest rather than block.
                    tracing::trace!(headers = count - sent, "send buffer full");
                    for run in &self.send_runs[sent..count] {
                        self.policy.failed(run.dst, run.segments, errno, metrics);
                    }
                    return;
                }
                _ => {
                    // sendmmsg reports an error only for the first message it
                    // couldn't send (e.g. EPERM from a firewall, ENETUNREACH,
                    // a refused GSO send): deal with that one and carry on.
                    let run = self.send_runs[sent];
                    if self.policy.failed(run.dst, run.segments, errno, metrics)
                        == Failure::ResendUnsegmented
                    {
                        self.resend_unsegmented(fd, sent, metrics);
                    }
                    sent += 1;
                }
            }
        }
    }

    /// Sends the datagrams of send header `index` again, one per `sendmsg`,
    /// after the kernel refused them as one GSO send. The header is reused:
    /// same destination, one iovec at a time, no control message.
    fn resend_unsegmented(&mut self, fd: RawFd, index: usize, metrics: &BackendMetrics) {
        let run = self.send_runs[index];
        for iov in run.first_iov..run.first_iov + run.segments {
            let hdr = &mut self.send_hdrs[index].msg_hdr;
            hdr.msg_iov = ptr::from_mut(&mut self.send_iovs[iov]);
            hdr.msg_iovlen = 1;
            hdr.msg_control = ptr::null_mut();
            hdr.msg_controllen = 0;
            let mut interrupts = 0;
            loop {
                // SAFETY: the header points at the sockaddr in `send_addrs`
                // and one iovec over initialised bytes in `bufs`, as filled in
                // `send`, all alive for the call; the kernel only reads them.
                let n = unsafe { libc::sendmsg(fd, ptr::from_ref(&*hdr), libc::MSG_DONTWAIT) };
                if n >= 0 {
                    break;
                }
                let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno == libc::EINTR && interrupts < MAX_SEND_INTERRUPTS {
                    interrupts += 1;
                    continue;
                }
                self.policy.failed(run.dst, 1, errno, metrics);
                break;
            }
        }
    }
}
