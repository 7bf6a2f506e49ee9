//! The receiving side: a mio `Poll` over the B sockets (or the one sink
//! socket of forwarder mode), draining every readable socket, opening or
//! parsing each datagram, and feeding its stamp to the phase's
//! [`Accounting`].
//!
//! A phase ends when the sender is done and either every sent packet has
//! arrived or the grace period has passed; a hard deadline bounds it anyway.
//! Each socket is drained at most [`DRAIN_BUDGET`] datagrams at a time and
//! then requeued, so one busy socket can't starve the others or the clock
//! checks (mio is edge-triggered, so requeueing is what keeps it correct).
//! Sockets are read with `recvmmsg`, up to 64 datagrams per system call.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use boringtun::noise::{Tunn, TunnResult};
use lanrage_proto::{classify, DatagramKind};
use mio::{Events, Interest, Poll, Token};

use super::accounting::Accounting;
use super::payload::{inner_udp_payload, Stamp, TRANSPORT_HEADER_LEN};
use super::sender::{nanos_since, Progress};
use super::setup::BUF_LEN;

/// Datagrams read from one socket before giving the others a turn.
const DRAIN_BUDGET: usize = 1024;

/// How received datagrams are opened.
pub enum Opener {
    /// B's tunnel per pair decrypts and verifies (socket `i` is pair `i`).
    Sealed(Vec<Tunn>),
    /// Socket `i` is pair `i`; the stamp follows the transport header in clear.
    PerPairClear,
    /// One sink socket for all pairs; the stamp names the pair.
    SinkClear,
}

/// Counters beside the accounting, for diagnosis.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecvCounters {
    /// Registration acks and other control messages (expected, ignored).
    pub control: u64,
    /// Sealed datagrams boringtun refused.
    pub undecryptable: u64,
    pub elapsed: Duration,
}

pub struct Receiver {
    poll: Poll,
    events: Events,
    sockets: Vec<mio::net::UdpSocket>,
    opener: Opener,
    batch: RecvBatch,
    out: Vec<u8>,
}

/// When and how a phase's receiving ends, and what it prints meanwhile.
pub struct Window<'a> {
    pub phase: u32,
    pub base: Instant,
    pub grace: Duration,
    pub hard_limit: Duration,
    /// Label for a progress line on stderr once per second; `None` = quiet.
    pub progress_label: Option<&'a str>,
}

impl Receiver {
    pub fn new(sockets: Vec<UdpSocket>, opener: Opener) -> Result<Self> {
        let poll = Poll::new().context("cannot create the receiver's poll")?;
        let mut mio_sockets = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let mut socket = mio::net::UdpSocket::from_std(socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)
                .context("cannot register a receive socket")?;
            mio_sockets.push(socket);
        }
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            sockets: mio_sockets,
            opener,
            batch: RecvBatch::new(),
            out: vec![0u8; BUF_LEN],
        })
    }

    /// Receives one phase into `acct` until the sender is done and the
    /// window closes.
    pub fn run(
        &mut self,
        window: &Window<'_>,
        acct: &mut Accounting,
        progress: &Progress,
    ) -> Result<RecvCounters> {
        let start = Instant::now();
        let hard_deadline = start + window.hard_limit;
        let mut counters = RecvCounters::default();
        let mut grace_deadline: Option<Instant> = None;
        // Every socket may hold leftovers from setup (keepalives, acks): look
        // at all of them once, since edge-triggered readiness already fired.
        let mut ready: VecDeque<usize> = (0..self.sockets.len()).collect();
        let mut next_report = start + Duration::from_secs(1);
        let mut last_received = 0u64;
        loop {
            let now = Instant::now();
            if now >= hard_deadline {
                break;
            }
            if grace_deadline.is_none() && progress.done.load(Ordering::Acquire) {
                grace_deadline = Some(now + window.grace);
            }
            if let Some(deadline) = grace_deadline {
                let sent = progress.sent.load(Ordering::Relaxed);
                if now >= deadline || acct.unique_received() >= sent {
                    break;
                }
            }
            if let (Some(label), true) = (window.progress_label, now >= next_report) {
                let received = acct.unique_received();
                eprintln!(
                    "[{label}] {:>5.1} s: sent {} received {} ({} pps)",
                    now.duration_since(start).as_secs_f64(),
                    progress.sent.load(Ordering::Relaxed),
                    received,
                    received - last_received,
                );
                last_received = received;
                next_report += Duration::from_secs(1);
            }

            let timeout = if ready.is_empty() {
                Some(Duration::from_millis(10))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiver poll failed"),
            }
            for event in &self.events {
                ready.push_back(event.token().0);
            }
            for _ in 0..ready.len() {
                let Some(i) = ready.pop_front() else { break };
                if !self.drain(i, window, acct, &mut counters) {
                    ready.push_back(i);
                }
            }
        }
        counters.elapsed = start.elapsed();
        Ok(counters)
    }

    /// Reads up to [`DRAIN_BUDGET`] datagrams from socket `i`; true if it is empty.
    fn drain(
        &mut self,
        i: usize,
        window: &Window<'_>,
        acct: &mut Accounting,
        counters: &mut RecvCounters,
    ) -> bool {
        let Some(socket) = self.sockets.get(i) else {
            return true;
        };
        let fd = socket.as_raw_fd();
        let mut read = 0;
        while read < DRAIN_BUDGET {
            let n = match self.batch.recv(fd) {
                Ok(0) => return true,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP errors surface here on some kernels; the datagram is gone.
                Err(_) => return true,
            };
            read += n;
            // A short batch means the queue was empty when the call returned.
            // Anything arriving later raises a fresh edge-triggered event, so
            // skipping the confirming EAGAIN call is safe, and it halves the
            // system calls when 1000 B sockets each hold one datagram.
            let drained = n < BATCH;
            // One clock read per batch: the datagrams were all queued already.
            let received_ns = nanos_since(window.base);
            for k in 0..n {
                let datagram = self.batch.datagram(k);
                let stamp = match open(&mut self.opener, i, datagram, &mut self.out, counters) {
                    Opened::Stamp(stamp) => stamp,
                    Opened::Control => continue,
                    Opened::Stray => {
                        acct.stray();
                        continue;
                    }
                };
                let pair_ok = matches!(self.opener, Opener::SinkClear) || stamp.pair as usize == i;
                if stamp.phase != window.phase || !pair_ok {
                    acct.stray();
                    continue;
                }
                acct.record(stamp.pair, stamp.seq, stamp.sent_ns, received_ns);
            }
            if drained {
                return true;
            }
        }
        false
    }
}

enum Opened {
    Stamp(Stamp),
    /// A registration ack or other control message (expected, ignored).
    Control,
    Stray,
}

/// Decrypts or parses one datagram received on socket `i`.
fn open(
    opener: &mut Opener,
    i: usize,
    datagram: &[u8],
    out: &mut [u8],
    counters: &mut RecvCounters,
) -> Opened {
    if classify(datagram) == DatagramKind::Control {
        counters.control += 1;
        return Opened::Control;
    }
    let stamp = match opener {
        Opener::Sealed(tunns) => {
            let Some(tunn) = tunns.get_mut(i) else {
                return Opened::Stray;
            };
            match tunn.decapsulate(None, datagram, out) {
                TunnResult::WriteToTunnelV4(packet, _) => {
                    inner_udp_payload(packet).and_then(Stamp::read)
                }
                TunnResult::Err(_) => {
                    counters.undecryptable += 1;
                    None
                }
                _ => None,
            }
        }
        Opener::PerPairClear | Opener::SinkClear => datagram
            .get(TRANSPORT_HEADER_LEN..)
            .filter(|_| datagram.first() == Some(&4))
            .and_then(Stamp::read),
    };
    stamp.map_or(Opened::Stray, Opened::Stamp)
}

/// Datagrams per `recvmmsg` call.
const BATCH: usize = 64;

/// Buffers and headers for `recvmmsg`: one system call reads up to
/// [`BATCH`] datagrams, which keeps the receiver ahead of a relay that
/// delivers with `sendmmsg` bursts.
struct RecvBatch {
    bufs: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> Self {
        // SAFETY: mmsghdr and iovec are plain C structs; all-zero is a valid
        // (empty) value, and `recv` fills in the pointers before every use.
        let headers = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let iovecs = (0..BATCH)
            .map(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })
            .collect();
        Self {
            bufs: vec![0u8; BATCH * BUF_LEN],
            iovecs,
            headers,
        }
    }

    /// One non-blocking `recvmmsg`; the number of datagrams read.
    fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        // The vectors never grow, but the pointers are re-derived on every
        // call anyway so no stale pointer can outlive a (future) resize.
        for k in 0..BATCH {
            self.iovecs[k] = libc::iovec {
                iov_base: self.bufs[k * BUF_LEN..].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            let h = &mut self.headers[k];
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.iovecs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: `headers` holds BATCH initialised mmsghdrs whose iovecs
        // point into `bufs`, each BUF_LEN bytes, all alive and not otherwise
        // borrowed for the duration of the call; the kernel writes only there.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The `k`-th datagram of the last `recv` (empty if it was truncated:
    /// nothing this generator sends exceeds [`BUF_LEN`]).
    fn datagram(&self, k: usize) -> &[u8] {
        let h = &self.headers[k];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return &[];
        }
        let len = (h.msg_len as usize).min(BUF_LEN);
        &self.bufs[k * BUF_LEN..k * BUF_LEN + len]
    }
}
