//! The io_uring backend: one multishot `RecvMsg` into a provided-buffer ring,
//! sends straight from the buffers the datagrams arrived in, and UDP GSO to
//! send a run of same-destination datagrams as one `SendMsg`.
//!
//! It exists only because it batches. On this machine kind a plain io_uring
//! loop forwarded ~15% *less* than `recvmmsg`/`sendmmsg` (the kernel's
//! per-datagram send path dominates), while coalescing same-destination
//! datagrams into one `UDP_SEGMENT` send forwarded 2.2× more (see
//! `DESIGN.md`, "The relay's data plane"). So a round is: one `io_uring_enter`
//! that submits the previous batch's sends and waits; every receive
//! completion in the completion queue (up to `batch_size`) handled with one
//! `now`; the verdicts grouped into as few sends as GSO allows.
//!
//! Buffers: every buffer is either in the kernel's buffer ring, or held by
//! this loop between the receive completion that handed it over and the send
//! completion (or drop verdict) that gives it back. Nothing is copied between
//! receive and send. If every buffer is held when datagrams arrive, the
//! multishot receive ends with `ENOBUFS`; it is counted and armed again once
//! buffers come back (the datagrams wait in the socket meanwhile).
//!
//! Sends never block, like the epoll backend's: they carry `MSG_DONTWAIT`, so
//! a full socket send buffer fails them (counted as send errors) instead of
//! parking buffers in the kernel behind one slow path.
//!
//! Stopping: [`StopHandle`] wakes a `mio::Waker` (an eventfd registered with
//! an epoll instance). The ring polls that epoll instance's fd, so a stop
//! completes a `PollAdd` and ends the wait at once; no timeout polling.
//!
//! Linux 6.0 or later (multishot `RecvMsg`); [`probe`] says whether this
//! kernel, its sysctls and the seccomp profile allow it.

mod buf_ring;
mod probe;
mod send_slots;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, RawFd};
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use libc::{iovec, msghdr, sockaddr_storage};
use mio::{Poll, Token, Waker};

use super::metrics::{BackendMetrics, Counter};
use super::transmit::{self, Failure, SendPolicy};
use super::{fire_timers, gso, sockaddr, Handler, Options, StopHandle};
use buf_ring::BufRing;
#[cfg(test)]
pub(crate) use probe::probe_kernel;
pub use probe::{probe, FORCE_PROBE_FAIL_ENV};
use send_slots::{sockaddr_dst, SendSlots};

/// Largest datagram handled, as in the epoll backend: larger ones arrive
/// truncated (`MSG_TRUNC`) and are dropped as [`Counter::Oversized`].
pub const MAX_DATAGRAM: usize = super::epoll::MAX_DATAGRAM;

/// Provided buffers in the receive ring by default. Each holds one datagram
/// until its send completes, so this bounds datagrams in flight. 4096 ×
/// [`BUF_SIZE`] is about 9 MiB per worker.
pub const DEFAULT_RING_ENTRIES: u16 = 4096;

/// Registers the kernel must be able to take at once.
const SQ_ENTRIES: u32 = 1024;

/// The `struct io_uring_recvmsg_out` header the kernel writes at the start of
/// every multishot `RecvMsg` buffer (four `u32`s: name, control and payload
/// lengths, flags). `io_uring::sys` is private, so it is spelled out here and
/// checked by a test against [`types::RecvMsgOut::parse`].
const RECVMSG_OUT_LEN: usize = 16;

/// Room reserved for the source address in every buffer: a whole
/// `sockaddr_storage`, as the epoll backend passes to `recvmmsg`.
const NAME_LEN: usize = mem::size_of::<sockaddr_storage>();

/// One provided buffer: header, address, then a [`MAX_DATAGRAM`] payload, so
/// that a datagram of exactly `MAX_DATAGRAM` bytes fits and anything larger
/// is truncated, as in the epoll backend. 16 + 128 + 2048 = 2192, a multiple
/// of 16, so every buffer stays 16-byte aligned.
const BUF_SIZE: usize = RECVMSG_OUT_LEN + NAME_LEN + MAX_DATAGRAM;

/// The buffer group id of the receive ring; one group per ring.
const BUF_GROUP: u16 = 0;

/// Completion tags, in the top byte of `user_data`; the rest is an index.
const TAG_SHIFT: u32 = 56;
const TAG_RECV: u64 = 1 << TAG_SHIFT;
const TAG_SEND: u64 = 2 << TAG_SHIFT;
const TAG_STOP: u64 = 3 << TAG_SHIFT;
const TAG_CANCEL: u64 = 4 << TAG_SHIFT;
const INDEX_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// Longest single wait. Stops and timers wake the ring by themselves; this
/// only bounds how long an unforeseen missed wake-up could stall the loop.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Receive batches handled per wake-up before looking at the stop flag and
/// timers from the top of the loop again.
const MAX_BATCHES_PER_WAKE: usize = 256;

/// How long `run` waits, on its way out, for in-flight operations to finish
/// before the buffer memory may be released.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(2);

const STOP_TOKEN: Token = Token(0);

/// The io_uring backend. Build it with [`UringBackend::new`] (after
/// [`probe`] succeeded), then [`UringBackend::run`] it on the thread that
/// will own it.
pub struct UringBackend {
    // Field order is drop order: the ring (and with it every kernel
    // reference to the buffers) goes before the buffer memory.
    ring: IoUring,
    bufs: BufRing,
    /// The msghdr the multishot receive was prepared with; only its name and
    /// control lengths matter. Boxed so its address is stable.
    recv_hdr: RecvHdr,
    slots: SendSlots,
    /// Sends that did not fit the submission queue, in order. Bounded
    /// without a cap, so nothing is ever shed from it: every send holds at
    /// least one receive buffer until it completes, so there are at most as
    /// many sends as buffers, plus the receive and the stop poll.
    backlog: VecDeque<squeue::Entry>,
    /// Completions of the current batch, copied out of the completion queue.
    cqes: Vec<Completion>,
    /// Datagrams of the current batch to send.
    outgoing: Vec<Outgoing>,
    socket: UdpSocket,
    fd: RawFd,
    /// Whether destinations are written as `sockaddr_in6` (IPv4 as mapped).
    v6_socket: bool,
    /// The epoll instance the stop waker is registered with; the ring polls its fd.
    stop_poll: Poll,
    stop: StopHandle,
    batch_size: usize,
    recv_armed: bool,
    stop_poll_armed: bool,
    /// `SendMsg`s in the submission queue or in the kernel, not yet completed.
    sends_in_flight: usize,
    /// GSO grouping and what a failed send means, shared with epoll.
    policy: SendPolicy,
    metrics: Arc<BackendMetrics>,
    /// The ring's completion-queue overflow count (the kernel's, wrapping)
    /// when last read; what it grew by since is counted.
    cq_overflow_seen: u32,
}

impl UringBackend {
    /// Sets up a ring and its receive buffers for a socket from
    /// [`super::bind_udp`]. Fails if the kernel refuses io_uring; call
    /// [`probe`] first to choose a backend. Counts into `metrics`.
    pub fn new(
        socket: UdpSocket,
        options: Options,
        metrics: Arc<BackendMetrics>,
    ) -> io::Result<Self> {
        Self::with_ring_entries(socket, options, DEFAULT_RING_ENTRIES, metrics)
    }

    /// As [`UringBackend::new`], with `entries` receive buffers (a power of
    /// two, at most 32768).
    pub fn with_ring_entries(
        socket: UdpSocket,
        options: Options,
        entries: u16,
        metrics: Arc<BackendMetrics>,
    ) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 1 << 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("io_uring buffer ring size {entries} must be a power of two up to 32768"),
            ));
        }
        socket.set_nonblocking(true)?;
        let v6_socket = socket.local_addr()?.is_ipv6();
        let fd = socket.as_raw_fd();

        let ring = build_ring(u32::from(entries))?;
        let mut bufs = BufRing::new(entries)?;
        // SAFETY: the ring entries live in `bufs`' mapping until `bufs` is
        // dropped, which happens after the ring (field order), and `run`
        // unregisters the group before returning.
        unsafe { bufs.register(&ring)? };
        bufs.publish();

        let stop_poll = Poll::new()?;
        let waker = Waker::new(stop_poll.registry(), STOP_TOKEN)?;

        // SAFETY: msghdr is a plain C struct; all zeroes (null pointers, zero
        // lengths) is a valid value.
        let mut recv_hdr = RecvHdr(Box::new(unsafe { mem::zeroed() }));
        recv_hdr.0.msg_namelen = NAME_LEN as libc::socklen_t;

        let batch_size = options.batch_size.max(1);
        Ok(Self {
            ring,
            bufs,
            recv_hdr,
            slots: SendSlots::default(),
            backlog: VecDeque::new(),
            cqes: Vec::with_capacity(batch_size * 2),
            outgoing: Vec::with_capacity(batch_size),
            socket,
            fd,
            v6_socket,
            stop_poll,
            stop: StopHandle::new(waker),
            batch_size,
            recv_armed: false,
            stop_poll_armed: false,
            sends_in_flight: 0,
            policy: SendPolicy::new(options.gso && gso::supported(fd)),
            metrics,
            cq_overflow_seen: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs until stopped, on the calling thread (the ring is created
    /// disabled and bound to the thread that runs it, which lets the kernel
    /// skip cross-thread synchronisation). See [`super`] for the drive order.
    /// Errors only if the ring itself fails.
    pub fn run<H: Handler>(mut self, handler: &mut H) -> io::Result<()> {
        if self.stop.is_stopped() {
            return Ok(());
        }
        self.ring.submitter().register_enable_rings()?;
        let result = self.serve(handler);
        self.quiesce();
        result
    }

    fn serve<H: Handler>(&mut self, handler: &mut H) -> io::Result<()> {
        loop {
            if self.stop.is_stopped() {
                return Ok(());
            }
            let timeout = fire_timers(handler, Instant::now());
            if !self.stop_poll_armed {
                self.arm_stop_poll();
            }
            self.arm_recv_if_possible();
            self.flush_backlog()?;
            self.wait(timeout)?;
            self.drain(handler)?;
        }
    }

    /// Submits what is queued and sleeps until a completion, the timeout or
    /// `MAX_WAIT`. Returns at once if completions are already waiting.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if !self.ring.completion().is_empty() {
            return self.submit();
        }
        let wait = timeout.map_or(MAX_WAIT, |t| t.min(MAX_WAIT));
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if is_transient_enter_error(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits queued entries without waiting.
    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if is_transient_enter_error(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Handles completions batch by batch until the completion queue is empty.
    fn drain<H: Handler>(&mut self, handler: &mut H) -> io::Result<()> {
        for _ in 0..MAX_BATCHES_PER_WAKE {
            self.take_batch();
            if self.cqes.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            // Under a flood the completion queue may never empty; timers still run.
            fire_timers(handler, now);
            self.handle_batch(now, handler);
            self.bufs.publish();
            self.arm_recv_if_possible();
            if self.stop.is_stopped() {
                return Ok(());
            }
            // With more completions waiting, send this batch now; otherwise
            // the next wait submits it in the same system call.
            if !self.ring.completion().is_empty() {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// Copies completions out of the queue: everything there, but at most
    /// `batch_size` receives (sends and other completions are cheap).
    fn take_batch(&mut self) {
        self.cqes.clear();
        let mut receives = 0;
        let limit = self.batch_size;
        for cqe in self.ring.completion() {
            let completion = Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            };
            self.cqes.push(completion);
            if completion.user_data & !INDEX_MASK == TAG_RECV {
                receives += 1;
                if receives == limit {
                    break;
                }
            }
        }
    }

    fn handle_batch<H: Handler>(&mut self, now: Instant, handler: &mut H) {
        self.outgoing.clear();
        for i in 0..self.cqes.len() {
            let cqe = self.cqes[i];
            let index = cqe.user_data & INDEX_MASK;
            match cqe.user_data & !INDEX_MASK {
                TAG_RECV => self.on_recv(cqe, now, handler),
                TAG_SEND => self.on_send(index as usize, cqe.result),
                TAG_STOP => self.on_stop_poll(),
                TAG_CANCEL => {}
                other => {
                    tracing::warn!(user_data = other | index, "unexpected io_uring completion")
                }
            }
        }
        let outgoing = mem::take(&mut self.outgoing);
        self.send_grouped(&outgoing);
        self.outgoing = outgoing;
        // The completion queue is sized so that it can't overflow (see
        // `build_ring`); if it still does, the kernel counts the completions
        // it had to drop, and each lost receive is a datagram lost unseen.
        let overflow = self.ring.completion().overflow();
        if overflow != self.cq_overflow_seen {
            let lost = overflow.wrapping_sub(self.cq_overflow_seen);
            self.metrics
                .record_n(Counter::UringCqOverflow, u64::from(lost));
            self.cq_overflow_seen = overflow;
        }
    }

    /// One receive completion: a datagram in a provided buffer, or the end
    /// of the multishot receive.
    fn on_recv<H: Handler>(&mut self, cqe: Completion, now: Instant, handler: &mut H) {
        if !cqueue::more(cqe.flags) {
            // Armed again after this batch, once buffers are available.
            self.recv_armed = false;
            self.metrics.record(Counter::UringRecvRearms);
            if cqe.result == -libc::ENOBUFS {
                self.metrics.record(Counter::UringRecvBuffersExhausted);
                tracing::debug!(
                    held = self.bufs.held,
                    "multishot receive ran out of buffers; re-arming"
                );
            } else if cqe.result < 0 {
                tracing::debug!(
                    error = %io::Error::from_raw_os_error(-cqe.result),
                    "multishot receive ended; re-arming"
                );
            }
        }
        let bid = cqueue::buffer_select(cqe.flags);
        let Ok(len) = usize::try_from(cqe.result) else {
            if let Some(bid) = bid {
                // Not expected with an error, but a buffer reported is a buffer held.
                if self.bufs.take(bid) {
                    self.bufs.recycle(bid);
                }
            }
            return;
        };
        let Some(bid) = bid else {
            self.metrics.record(Counter::ReceiveDiscarded);
            tracing::warn!("receive completion without a buffer");
            return;
        };
        if !self.bufs.take(bid) {
            self.metrics.record(Counter::ReceiveDiscarded);
            tracing::warn!(bid, "kernel returned a buffer it does not own; ignored");
            return;
        }
        self.metrics.record(Counter::Received);
        match self.parse(bid, len) {
            Ok((src, offset, payload_len)) => {
                // SAFETY: `bid` is held by this loop (taken above): the kernel
                // will not write it until it is recycled, and no other
                // reference to it exists. `offset + payload_len <= len <=
                // BUF_SIZE` was checked by `parse`.
                let payload = unsafe { self.bufs.slice_mut(bid, offset, payload_len) };
                let verdict = super::dispatch(handler, now, src, payload);
                let held = Held { bid, offset };
                match verdict.and_then(|v| transmit::outgoing(v, src, held, payload_len)) {
                    Some(out) => self.outgoing.push(out),
                    None => self.bufs.recycle(bid),
                }
            }
            Err(counter) => {
                self.metrics.record(counter);
                self.bufs.recycle(bid);
            }
        }
    }

    /// Reads the source address and locates the payload in a held buffer.
    /// The error is the counter of why not: oversized, or discarded (an
    /// unusable receive: another address family, a bad header).
    fn parse(&self, bid: u16, len: usize) -> Result<(SocketAddr, usize, usize), Counter> {
        if len > BUF_SIZE {
            return Err(Counter::ReceiveDiscarded);
        }
        // SAFETY: `bid` is held by this loop, and the kernel wrote its first
        // `len <= BUF_SIZE` bytes before posting the completion.
        let buf = unsafe { self.bufs.slice(bid, 0, len) };
        let Ok(msg) = types::RecvMsgOut::parse(buf, &self.recv_hdr.0) else {
            tracing::trace!(len, "dropping a receive with a malformed header");
            return Err(Counter::ReceiveDiscarded);
        };
        if msg.is_payload_truncated() {
            tracing::trace!(max = MAX_DATAGRAM, "dropping oversized datagram");
            return Err(Counter::Oversized);
        }
        if msg.is_name_data_truncated() {
            return Err(Counter::ReceiveDiscarded);
        }
        // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
        let mut storage: sockaddr_storage = unsafe { mem::zeroed() };
        let name = msg.name_data();
        // SAFETY: `name` is at most NAME_LEN (= size of sockaddr_storage)
        // bytes, because the name field is that size and `parse` clamps to
        // it; the regions don't overlap.
        unsafe {
            ptr::copy_nonoverlapping(
                name.as_ptr(),
                ptr::from_mut(&mut storage).cast::<u8>(),
                name.len().min(NAME_LEN),
            );
        }
        let Some(src) = sockaddr::to_std(&storage, name.len() as libc::socklen_t) else {
            tracing::trace!(
                family = storage.ss_family,
                "dropping datagram from an unsupported address family"
            );
            return Err(Counter::ReceiveDiscarded);
        };
        let payload = msg.payload_data();
        let offset = payload.as_ptr() as usize - buf.as_ptr() as usize;
        Ok((src, offset, payload.len()))
    }

    /// Groups the batch's datagrams into sends as the shared policy says
    /// ([`SendPolicy::run_end`]): a GSO send per run to one destination.
    fn send_grouped(&mut self, outgoing: &[Outgoing]) {
        let mut start = 0;
        while start < outgoing.len() {
            let end = self.policy.run_end(outgoing, start);
            self.send(&outgoing[start..end]);
            start = end;
        }
    }

    /// Queues one `SendMsg` for `group` (one destination, GSO if more than one).
    fn send(&mut self, group: &[Outgoing]) {
        let Some(first) = group.first() else {
            return;
        };
        let index = self.slots.alloc();
        let slot = self.slots.get_mut(index);
        let Some(name_len) = self.policy.address(
            first.dst,
            self.v6_socket,
            &mut slot.addr,
            group.len(),
            &self.metrics,
        ) else {
            self.slots.free(index);
            for out in group {
                self.bufs.recycle(out.buf.bid);
            }
            return;
        };
        slot.count = group.len();
        for (i, out) in group.iter().enumerate() {
            slot.bids[i] = out.buf.bid;
            slot.offsets[i] = out.buf.offset as u16;
            slot.iovs[i] = iovec {
                // Points into the held buffer; see `SendSlot`.
                iov_base: self.bufs.ptr(out.buf.bid, out.buf.offset).cast(),
                iov_len: out.len,
            };
        }
        slot.hdr.msg_name = ptr::from_mut(&mut slot.addr).cast();
        slot.hdr.msg_namelen = name_len;
        slot.hdr.msg_iov = slot.iovs.as_mut_ptr();
        slot.hdr.msg_iovlen = group.len();
        slot.hdr.msg_flags = 0;
        slot.gso = group.len() > 1;
        if slot.gso {
            slot.write_segment_cmsg(first.len as u16);
        } else {
            slot.hdr.msg_control = ptr::null_mut();
            slot.hdr.msg_controllen = 0;
        }
        self.policy.submitted(group.len(), &self.metrics);
        let entry = opcode::SendMsg::new(types::Fd(self.fd), ptr::from_ref(&slot.hdr))
            .flags(libc::MSG_DONTWAIT as u32)
            .build()
            .user_data(TAG_SEND | index as u64);
        self.sends_in_flight += 1;
        self.push(entry);
    }

    /// A send completed: give its buffers back, or count the failure the
    /// shared policy's way, and resend one by one if the kernel refused GSO.
    fn on_send(&mut self, index: usize, result: i32) {
        let Some(slot) = self.slots.get_live(index) else {
            tracing::warn!(index, "completion for an unknown send slot");
            return;
        };
        self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
        let count = slot.count;
        let failure = (result < 0).then(|| {
            self.policy
                .failed(sockaddr_dst(slot), count, -result, &self.metrics)
        });
        if failure == Some(Failure::ResendUnsegmented) {
            // Each datagram alone, from the same held buffers.
            let dst = sockaddr_dst(slot);
            let singles: Vec<Outgoing> = (0..count)
                .map(|i| Outgoing {
                    buf: Held {
                        bid: slot.bids[i],
                        offset: usize::from(slot.offsets[i]),
                    },
                    len: slot.iovs[i].iov_len,
                    dst,
                })
                .collect();
            self.slots.free(index);
            for single in &singles {
                self.send(std::slice::from_ref(single));
            }
            return;
        }
        for i in 0..count {
            let bid = slot.bids[i];
            self.bufs.recycle(bid);
        }
        self.slots.free(index);
    }

    fn on_stop_poll(&mut self) {
        self.stop_poll_armed = false;
        if !self.stop.is_stopped() {
            // Not a stop (nothing else is registered, so this is not
            // expected): consume the readiness so the re-armed poll sleeps.
            let mut events = mio::Events::with_capacity(4);
            if let Err(e) = self.stop_poll.poll(&mut events, Some(Duration::ZERO)) {
                tracing::debug!(error = %e, "cannot drain the stop poll");
            }
        }
    }

    fn arm_stop_poll(&mut self) {
        let entry =
            opcode::PollAdd::new(types::Fd(self.stop_poll.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(TAG_STOP);
        self.stop_poll_armed = true;
        self.push(entry);
    }

    /// Arms the multishot receive unless it is armed or every buffer is held
    /// (then it would end at once with `ENOBUFS`; a send completion will
    /// return buffers and the next batch arms it).
    fn arm_recv_if_possible(&mut self) {
        if self.recv_armed || self.bufs.held >= usize::from(self.bufs.entries) {
            return;
        }
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.fd),
            ptr::from_ref(&*self.recv_hdr.0),
            BUF_GROUP,
        )
        .build()
        .user_data(TAG_RECV);
        self.recv_armed = true;
        self.push(entry);
    }

    /// Queues an entry, submitting early if the submission queue is full and
    /// keeping it in the backlog if even that doesn't make room.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        if self.try_push(&entry) {
            return;
        }
        self.metrics.record(Counter::UringSqFull);
        if let Err(e) = self.submit() {
            tracing::warn!(error = %e, "io_uring submit failed");
        }
        if !self.try_push(&entry) {
            self.backlog.push_back(entry);
        }
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry built here points only at memory that outlives
        // the operation: the socket and stop-poll fds (owned by `self`,
        // which `run` keeps until every operation completed), `recv_hdr`
        // (boxed, never moved or freed before the ring), a send slot (boxed,
        // freed only on its completion) and held buffers (in the `BufRing`
        // mapping, recycled only on completion).
        unsafe { self.ring.submission().push(entry).is_ok() }
    }

    /// Moves backlogged entries into the submission queue, submitting as it fills.
    fn flush_backlog(&mut self) -> io::Result<()> {
        while let Some(entry) = self.backlog.front() {
            let entry = entry.clone();
            if !self.try_push(&entry) {
                self.submit()?;
                if !self.try_push(&entry) {
                    // The kernel took nothing: try again after the next wait.
                    return Ok(());
                }
            }
            self.backlog.pop_front();
        }
        Ok(())
    }

    /// On the way out: cancels the receive and the stop poll and waits for
    /// every operation to complete, so no kernel write can land in the
    /// buffers after they are freed. If that doesn't happen in time, the
    /// buffer memory is leaked rather than freed under the kernel's feet.
    fn quiesce(&mut self) {
        // Backlogged entries were never seen by the kernel.
        for entry in mem::take(&mut self.backlog) {
            if entry.get_user_data() & !INDEX_MASK == TAG_SEND {
                self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
            }
        }
        let mut cancels = Vec::with_capacity(2);
        if self.recv_armed {
            cancels.push(TAG_RECV);
        }
        if self.stop_poll_armed {
            cancels.push(TAG_STOP);
        }
        for target in cancels {
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(TAG_CANCEL);
            if !self.try_push(&entry) {
                let _ = self.submit();
                let _ = self.try_push(&entry);
            }
        }
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        let ts = types::Timespec::from(Duration::from_millis(20));
        while self.recv_armed || self.stop_poll_armed || self.sends_in_flight > 0 {
            if Instant::now() >= deadline {
                break;
            }
            let args = types::SubmitArgs::new().timespec(&ts);
            if let Err(e) = self.ring.submitter().submit_with_args(1, &args) {
                if !is_transient_enter_error(&e) {
                    break;
                }
            }
            for cqe in self.ring.completion() {
                let user_data = cqe.user_data();
                match user_data & !INDEX_MASK {
                    TAG_RECV if !cqueue::more(cqe.flags()) => self.recv_armed = false,
                    TAG_STOP => self.stop_poll_armed = false,
                    TAG_SEND => self.sends_in_flight = self.sends_in_flight.saturating_sub(1),
                    _ => {}
                }
            }
        }
        if self.recv_armed || self.stop_poll_armed || self.sends_in_flight > 0 {
            tracing::warn!(
                recv_armed = self.recv_armed,
                sends_in_flight = self.sends_in_flight,
                "io_uring operations still in flight at shutdown; leaking their buffers"
            );
            self.bufs.leak();
            return;
        }
        if let Err(e) = self.ring.submitter().unregister_buf_ring(BUF_GROUP) {
            tracing::debug!(error = %e, "cannot unregister the buffer ring");
        }
    }
}

/// Wait errors that only mean "nothing (more) to do now". `EBADR` says,
/// once, that the kernel dropped completions (it could not allocate room for
/// an overflowing one); the loss is counted from the ring's overflow counter
/// (`lanrage_relay_uring_cq_overflow_total`) and the worker carries on rather
/// than dying with its socket unread.
fn is_transient_enter_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::EBADR)
    )
}

/// Sets up the data-plane ring, disabled until `run` enables it on its own
/// thread. Prefers single-issuer + deferred task work (completions are
/// processed only when the loop asks, in one go), then cooperative task
/// work, then plain.
fn build_ring(buffers: u32) -> io::Result<IoUring> {
    // Room for a completion per provided buffer plus one per send, so a
    // burst never overflows the completion queue (which would end the
    // multishot receive).
    let cq_entries = (buffers + SQ_ENTRIES).next_power_of_two();
    let tuned = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    let error = match tuned {
        Ok(ring) => return Ok(ring),
        Err(e) => e,
    };
    tracing::debug!(error = %error, "io_uring single-issuer/defer-taskrun setup refused; trying coop-taskrun");
    let coop = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_r_disabled()
        .setup_coop_taskrun()
        .build(SQ_ENTRIES);
    let error = match coop {
        Ok(ring) => return Ok(ring),
        Err(e) => e,
    };
    tracing::debug!(error = %error, "io_uring coop-taskrun setup refused; using plain setup");
    IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_r_disabled()
        .build(SQ_ENTRIES)
}

/// The msghdr the multishot receive was prepared with. It holds only null
/// pointers and lengths, but `msghdr` has pointer fields, so it isn't `Send`
/// by itself.
struct RecvHdr(Box<msghdr>);

// SAFETY: its pointers are all null; nothing is shared through it.
unsafe impl Send for RecvHdr {}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

/// Where a datagram to send lives: a held buffer, from `offset` on.
#[derive(Debug, Clone, Copy)]
struct Held {
    bid: u16,
    offset: usize,
}

/// One datagram to send, from a held buffer.
type Outgoing = transmit::Outgoing<Held>;
