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

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, RawFd};
use std::ptr;
use std::time::Instant;

use libc::{iovec, mmsghdr, sockaddr_storage, socklen_t};
use mio::{Events, Interest, Poll, Token, Waker};

use super::{fire_timers, gso, sockaddr, Handler, Options, StopHandle};
use lanrage_relay_core::metrics::{DropReason, Event};
use lanrage_relay_core::router::Verdict;

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
}

impl EpollBackend {
    /// Registers a non-blocking socket (from [`super::bind_udp`]) with a new poll.
    pub fn new(socket: UdpSocket, options: Options) -> io::Result<Self> {
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
        let mut batch = Batch::new(self.batch_size);
        let fd = self.socket.as_raw_fd();
        batch.gso = self.gso && gso::supported(fd);
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
            batch.dispatch(received, now, handler);
            batch.send(fd, self.v6_socket, handler);
        }
    }
}

/// One datagram to send, from a receive buffer.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    buf: usize,
    len: usize,
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
    outgoing: Vec<Outgoing>,
    send_addrs: Box<[sockaddr_storage]>,
    send_iovs: Box<[iovec]>,
    send_hdrs: Box<[mmsghdr]>,
    /// One `UDP_SEGMENT` control message per send header.
    send_cmsgs: Box<[gso::SegmentCmsg]>,
    /// How many datagrams each send header carries (1, or a GSO run).
    send_segments: Box<[usize]>,
    /// Whether to coalesce runs with GSO; cleared if the kernel refuses it.
    gso: bool,
}

impl Batch {
    fn new(size: usize) -> Self {
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
            send_segments: vec![0; size].into_boxed_slice(),
            gso: false,
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
    fn dispatch<H: Handler>(&mut self, received: usize, now: Instant, handler: &mut H) {
        self.outgoing.clear();
        for i in 0..received {
            handler.metrics().record_received();
            let hdr = &self.recv_hdrs[i].msg_hdr;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 {
                handler.metrics().record_drop(DropReason::Oversized);
                tracing::trace!(max = MAX_DATAGRAM, "dropping oversized datagram");
                continue;
            }
            let Some(src) = sockaddr::to_std(&self.recv_addrs[i], hdr.msg_namelen) else {
                handler.metrics().record(Event::ReceiveDiscarded);
                tracing::trace!(
                    family = self.recv_addrs[i].ss_family,
                    "dropping datagram from an unsupported address family"
                );
                continue;
            };
            let len = (self.recv_hdrs[i].msg_len as usize).min(MAX_DATAGRAM);
            match handler.handle(now, src, &mut self.bufs[i][..len]) {
                Verdict::Forward(dst) => self.outgoing.push(Outgoing { buf: i, len, dst }),
                Verdict::Reply(reply_len) => {
                    // The router writes replies into the request's buffer, so
                    // they can't be longer; clamp anyway rather than trust it.
                    debug_assert!(reply_len <= len, "reply longer than the request");
                    self.outgoing.push(Outgoing {
                        buf: i,
                        len: reply_len.min(len),
                        dst: src,
                    });
                }
                Verdict::Drop(_) => {}
            }
        }
    }

    /// Sends the queued datagrams with as few `sendmmsg` calls as the kernel
    /// allows, coalescing runs to one destination into GSO sends.
    fn send<H: Handler>(&mut self, fd: RawFd, v6_socket: bool, handler: &H) {
        let mut count = 0; // send headers
        let mut iovs = 0; // iovecs used, one per datagram
        let mut start = 0;
        while start < self.outgoing.len() {
            let end = if self.gso {
                gso::run_end(&self.outgoing, start, |o| o.dst, |o| o.len)
            } else {
                start + 1
            };
            let first = self.outgoing[start];
            let Some(name_len) =
                sockaddr::from_std(first.dst, v6_socket, &mut self.send_addrs[count])
            else {
                // An IPv6 peer on an IPv4-only socket: unreachable from here.
                tracing::trace!(dst = %first.dst, "cannot send to this address family");
                for _ in start..end {
                    handler.metrics().record_send_error();
                }
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
            let segments = end - start;
            let hdr = &mut self.send_hdrs[count];
            hdr.msg_hdr.msg_name = ptr::from_mut(&mut self.send_addrs[count]).cast();
            hdr.msg_hdr.msg_namelen = name_len;
            hdr.msg_hdr.msg_iov = ptr::from_mut(&mut self.send_iovs[first_iov]);
            hdr.msg_hdr.msg_iovlen = segments as _;
            if segments > 1 {
                handler.metrics().record(Event::GsoSend);
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
            self.send_segments[count] = segments;
            count += 1;
            start = end;
        }

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
            let err = if n == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing")
            } else {
                io::Error::last_os_error()
            };
            let datagrams =
                |range: std::ops::Range<usize>| -> usize { self.send_segments[range].iter().sum() };
            match err.kind() {
                io::ErrorKind::Interrupted if interrupts < MAX_SEND_INTERRUPTS => {
                    interrupts += 1;
                }
                io::ErrorKind::WouldBlock
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WriteZero => {
                    // The send buffer is full: drop the rest rather than block.
                    let dropped = datagrams(sent..count);
                    tracing::trace!(dropped, "send buffer full");
                    if err.kind() == io::ErrorKind::WouldBlock {
                        handler
                            .metrics()
                            .record_n(Event::SendBufferFull, dropped as u64);
                    }
                    for _ in 0..dropped {
                        handler.metrics().record_send_error();
                    }
                    return;
                }
                _ => {
                    // sendmmsg reports an error only for the first message it
                    // couldn't send (e.g. EPERM from a firewall, ENETUNREACH):
                    // skip that one and carry on with the rest.
                    let segments = self.send_segments[sent];
                    if segments > 1 && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL))
                    {
                        // The device or kernel refuses GSO: stop using it.
                        tracing::warn!(error = %err, "UDP GSO send refused; sending datagrams one by one from now on");
                        handler.metrics().record(Event::GsoRefused);
                        self.gso = false;
                    }
                    tracing::trace!(error = %err, "send failed");
                    if err.raw_os_error() == Some(libc::ENOBUFS) {
                        // A queue below the socket is full (only reported
                        // with IP_RECVERR; otherwise the kernel counts it in
                        // UdpSndbufErrors and returns success).
                        handler
                            .metrics()
                            .record_n(Event::SendBufferFull, segments as u64);
                    }
                    for _ in 0..segments {
                        handler.metrics().record_send_error();
                    }
                    sent += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::test_support::{client, recv, Fake};
    use crate::backend::{bind_udp, Backend};
    use crate::config::{BackendChoice, SocketConfig};
    use std::thread;
    use std::time::Duration;

    /// Starts a backend on `listen` with a [`Fake`] handler in a thread.
    fn start(
        listen: &str,
        sink: SocketAddr,
    ) -> io::Result<(SocketAddr, StopHandle, thread::JoinHandle<Fake>)> {
        start_with(listen, sink, 4)
    }

    fn start_with(
        listen: &str,
        sink: SocketAddr,
        batch_size: usize,
    ) -> io::Result<(SocketAddr, StopHandle, thread::JoinHandle<Fake>)> {
        let socket = bind_udp(listen.parse().expect("addr"), &SocketConfig::default())?;
        let backend = Backend::new(
            socket,
            Options {
                batch_size,
                gso: true,
            },
            BackendChoice::Epoll,
        )?;
        let addr = backend.local_addr()?;
        let stop = backend.stop_handle();
        let mut fake = Fake::new(sink, sink);
        let thread = thread::spawn(move || {
            backend.run(&mut fake).expect("run");
            fake
        });
        Ok((addr, stop, thread))
    }

    /// Bursts of equal and mixed sizes to one destination (coalesced into GSO
    /// sends where a batch holds several) arrive as the original datagrams,
    /// in order, byte for byte.
    #[test]
    fn gso_runs_arrive_as_the_original_datagrams() {
        let sink = client("127.0.0.1:0");
        let peer = client("127.0.0.1:0");
        let (relay, stop, thread) =
            start_with("127.0.0.1:0", sink.local_addr().expect("addr"), 64).expect("start");
        let datagram = |i: usize| {
            // 40 of 300 bytes, then sizes that close and restart runs.
            let len = if i < 40 { 300 } else { 100 + (i % 3) * 150 };
            let mut d = vec![i as u8; len];
            d[..3].copy_from_slice(b"fwd");
            d
        };
        for i in 0..60 {
            peer.send_to(&datagram(i), relay).expect("send");
        }
        for i in 0..60 {
            assert_eq!(recv(&sink), (datagram(i), relay), "datagram {i}");
        }
        stop.stop();
        let fake = thread.join().expect("backend thread");
        assert!(fake
            .metrics
            .render_prometheus()
            .contains("lanrage_relay_send_errors_total 0"));
    }

    #[test]
    fn forwards_replies_drops_and_stops() {
        let sink = client("127.0.0.1:0");
        let peer = client("127.0.0.1:0");
        let (relay, stop, thread) =
            start("127.0.0.1:0", sink.local_addr().expect("addr")).expect("start");

        peer.send_to(b"reply-me", relay).expect("send");
        assert_eq!(recv(&peer), (b"ok".to_vec(), relay));

        // More than one batch (4) of forwards, all arrive unchanged.
        for i in 0..10u8 {
            peer.send_to(&[b'f', b'w', b'd', i], relay).expect("send");
        }
        for i in 0..10u8 {
            assert_eq!(recv(&sink), (vec![b'f', b'w', b'd', i], relay));
        }

        // Oversized: never reaches the handler. The next datagram still works.
        peer.send_to(&[b'f'; MAX_DATAGRAM + 100], relay)
            .expect("send");
        peer.send_to(b"junk", relay).expect("send");
        peer.send_to(b"reply-again", relay).expect("send");
        assert_eq!(recv(&peer).0, b"ok");

        stop.stop();
        let fake = thread.join().expect("backend thread");
        assert_eq!(
            fake.seen.len(),
            13,
            "oversized datagram must not be handled"
        );
        assert!(fake
            .seen
            .iter()
            .all(|(src, _)| *src == peer.local_addr().expect("addr")));
        assert_eq!(fake.seen[12].1, b"reply-again");
        assert_eq!(fake.timeouts_fired, 1);
        let text = fake.metrics.render_prometheus();
        assert!(text.contains("lanrage_relay_received_total 14"), "{text}");
        assert!(text.contains("lanrage_relay_send_errors_total 0"), "{text}");
    }

    #[test]
    fn unreachable_family_counts_a_send_error() {
        let peer = client("127.0.0.1:0");
        let v6_sink: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        let (relay, stop, thread) = start("127.0.0.1:0", v6_sink).expect("start");
        peer.send_to(b"fwd", relay).expect("send");
        peer.send_to(b"reply", relay).expect("send");
        assert_eq!(recv(&peer).0, b"ok");
        stop.stop();
        let fake = thread.join().expect("backend thread");
        assert!(fake
            .metrics
            .render_prometheus()
            .contains("lanrage_relay_send_errors_total 1"));
    }

    #[test]
    fn dual_stack_socket_sees_ipv4_peers_as_ipv4() {
        let sink = client("127.0.0.1:0");
        let Ok((relay, stop, thread)) = start("[::]:0", sink.local_addr().expect("addr")) else {
            eprintln!("skipping dual_stack_socket_sees_ipv4_peers_as_ipv4: IPv6 unavailable");
            return;
        };
        let relay_v4 = SocketAddr::from(([127, 0, 0, 1], relay.port()));
        let peer = client("127.0.0.1:0");
        peer.send_to(b"reply", relay_v4).expect("send");
        assert_eq!(recv(&peer), (b"ok".to_vec(), relay_v4));
        peer.send_to(b"fwd4", relay_v4).expect("send");
        assert_eq!(recv(&sink), (b"fwd4".to_vec(), relay_v4));

        let v6_peer = UdpSocket::bind("[::1]:0").ok();
        if let Some(v6_peer) = &v6_peer {
            v6_peer
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let relay_v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, relay.port()));
            v6_peer.send_to(b"reply", relay_v6).expect("send");
            assert_eq!(recv(v6_peer).0, b"ok");
        }
        stop.stop();
        let fake = thread.join().expect("backend thread");
        assert_eq!(fake.seen[0].0, peer.local_addr().expect("addr"));
        if let Some(v6_peer) = v6_peer {
            assert_eq!(fake.seen[2].0, v6_peer.local_addr().expect("addr"));
        }
    }

    #[test]
    fn stop_before_run_returns_at_once() {
        let socket = bind_udp(
            "127.0.0.1:0".parse().expect("addr"),
            &SocketConfig::default(),
        )
        .expect("bind");
        let backend = Backend::new(
            socket,
            Options {
                batch_size: 1,
                gso: true,
            },
            BackendChoice::Epoll,
        )
        .expect("backend");
        backend.stop_handle().stop();
        let nowhere = "127.0.0.1:9".parse().expect("addr");
        let mut fake = Fake::new(nowhere, nowhere);
        fake.deadline = None;
        backend.run(&mut fake).expect("run");
    }
}
