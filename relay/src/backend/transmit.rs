//! The send side both backends share: what a verdict sends, how a batch's
//! datagrams are grouped into GSO runs, and what a failed send means. The
//! backends keep only their system-call mechanics (`mmsghdr` arrays for
//! epoll, send slots and SQEs for io_uring); every decision is here, so it is
//! written and tested once.
//!
//! # GSO refusals
//!
//! The kernel refuses a `UDP_SEGMENT` send with `EIO` (the device can't
//! checksum-offload it) or `EINVAL` (segments larger than the route's MTU,
//! or no GSO on that path), and only by trying (quinn-udp's
//! `unix.rs` says the same). What is refused is a property of the route, not
//! of the socket: one relay socket serves every peer, and a peer behind a
//! tunnel or a smaller MTU must not cost GSO for the others. So, like
//! quinn-udp, a refused run is resent unsegmented (one datagram per send,
//! nothing is lost), and GSO is then kept off only for that destination IP
//! (the route depends on the address, not the port). Unlike quinn-udp, whose
//! `max_gso_segments` drops to 1 for the whole socket (a socket there is one
//! connection's path), the relay remembers up to [`REFUSED_DESTINATIONS`]
//! refused IPs per worker; once that set is full, refusals are evidently not
//! about a few routes, and GSO goes off for the whole worker, as quinn-udp
//! does. The set is never shrunk: what a device can't offload doesn't
//! change while the relay runs, and the bound keeps a lookup per run cheap.
//! GSO sends already submitted when a refusal is seen (io_uring) may be
//! refused too; each is resent the same way.

use std::net::{IpAddr, SocketAddr};

use lanrage_relay_core::router::Verdict;
use libc::{sockaddr_storage, socklen_t};

use super::metrics::{BackendMetrics, Counter};
use super::{gso, sockaddr};

/// Destination IPs a worker remembers as refusing GSO before it turns GSO
/// off altogether. A handful of odd routes fit; more means the refusal is
/// about this host's devices, not about a route.
pub const REFUSED_DESTINATIONS: usize = 64;

/// One datagram to send: a backend's handle to the buffer it lives in, how
/// many bytes of it, and where to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing<B> {
    pub buf: B,
    pub len: usize,
    pub dst: SocketAddr,
}

/// What `verdict` sends, for a datagram of `len` bytes from `src`: a forward
/// goes out unchanged, a reply goes back to `src` with the first bytes of
/// the same buffer (the router writes it in place), clamped to the request.
pub(crate) fn outgoing<B>(
    verdict: Verdict,
    src: SocketAddr,
    buf: B,
    len: usize,
) -> Option<Outgoing<B>> {
    match verdict {
        Verdict::Forward(dst) => Some(Outgoing { buf, len, dst }),
        Verdict::Reply(reply_len) => {
            // The router writes replies into the request's buffer, so they
            // can't be longer; clamp anyway rather than trust it.
            debug_assert!(reply_len <= len, "reply longer than the request");
            Some(Outgoing {
                buf,
                len: reply_len.min(len),
                dst: src,
            })
        }
        Verdict::Drop(_) | Verdict::Consumed => None,
    }
}

/// What the backend does after a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Counted; the datagrams are gone (their buffers can be reused).
    Dropped,
    /// The kernel refused GSO: send the run again, one datagram per send.
    ResendUnsegmented,
}

/// One worker's send policy: GSO on or off, and per destination.
#[derive(Debug)]
pub(crate) struct SendPolicy {
    /// GSO configured and supported by the socket.
    gso: bool,
    /// Destination IPs whose GSO sends the kernel refused, at most
    /// [`REFUSED_DESTINATIONS`].
    refused: Vec<IpAddr>,
    /// The refused set overflowed: no GSO on this worker any more.
    all_off: bool,
}

impl SendPolicy {
    /// `gso`: configured (`gso: true`) and accepted by the socket.
    pub fn new(gso: bool) -> Self {
        Self {
            gso,
            refused: Vec::new(),
            all_off: false,
        }
    }

    /// Whether sends to `dst` may be segmented.
    pub fn gso_for(&self, dst: SocketAddr) -> bool {
        self.gso && !self.all_off && !self.refused.contains(&dst.ip())
    }

    /// The end (exclusive) of the send starting at `items[start]`: a GSO run
    /// ([`gso::run_end`]) where GSO is allowed for its destination, else
    /// that one datagram.
    pub fn run_end<B>(&self, items: &[Outgoing<B>], start: usize) -> usize {
        match items.get(start) {
            Some(first) if self.gso_for(first.dst) => {
                gso::run_end(items, start, |o| o.dst, |o| o.len)
            }
            Some(_) => start + 1,
            None => start,
        }
    }

    /// Writes `dst` for a socket of the given family. `None` if the socket
    /// can't reach it (an IPv6 peer on an IPv4-only socket): the `datagrams`
    /// are counted as send errors and the backend releases their buffers.
    pub fn address(
        &self,
        dst: SocketAddr,
        v6_socket: bool,
        storage: &mut sockaddr_storage,
        datagrams: usize,
        metrics: &BackendMetrics,
    ) -> Option<socklen_t> {
        let len = sockaddr::from_std(dst, v6_socket, storage);
        if len.is_none() {
            tracing::trace!(dst = %dst, "cannot send to this address family");
            metrics.record_n(Counter::SendErrors, datagrams as u64);
        }
        len
    }

    /// A send of `datagrams` is handed to the kernel (GSO when more than one).
    pub fn submitted(&self, datagrams: usize, metrics: &BackendMetrics) {
        if datagrams > 1 {
            metrics.record(Counter::GsoSends);
        }
    }

    /// A send of `datagrams` to `dst` failed with `errno` (0 when the kernel
    /// sent nothing without saying why). A refused GSO send asks for a
    /// resend and turns GSO off for `dst` (see the module docs); anything
    /// else is counted as send errors, and as a full send buffer for
    /// `EAGAIN`/`ENOBUFS`.
    pub fn failed(
        &mut self,
        dst: SocketAddr,
        datagrams: usize,
        errno: i32,
        metrics: &BackendMetrics,
    ) -> Failure {
        if datagrams > 1 && matches!(errno, libc::EIO | libc::EINVAL) {
            metrics.record(Counter::GsoRefused);
            self.refuse(dst, errno);
            return Failure::ResendUnsegmented;
        }
        tracing::trace!(
            error = %std::io::Error::from_raw_os_error(errno),
            datagrams,
            "send failed"
        );
        if matches!(errno, libc::EAGAIN | libc::ENOBUFS) {
            // The socket send buffer (or, with ENOBUFS, a queue below it) is
            // full: shed rather than block.
            metrics.record_n(Counter::SendBufferFull, datagrams as u64);
        }
        metrics.record_n(Counter::SendErrors, datagrams as u64);
        Failure::Dropped
    }

    fn refuse(&mut self, dst: SocketAddr, errno: i32) {
        let ip = dst.ip();
        if self.all_off || self.refused.contains(&ip) {
            // A send that was already on its way when GSO went off for it.
            return;
        }
        let error = std::io::Error::from_raw_os_error(errno);
        if self.refused.len() == REFUSED_DESTINATIONS {
            self.all_off = true;
            tracing::warn!(
                %error,
                destinations = REFUSED_DESTINATIONS,
                "the kernel refused UDP GSO to too many destinations; \
                 this worker sends one datagram per call from now on"
            );
            return;
        }
        if self.refused.is_empty() {
            tracing::warn!(
                %error,
                "the kernel refused a UDP GSO send; resent unsegmented, and GSO is off \
                 for that destination from now on"
            );
        }
        tracing::debug!(dst = %dst, %error, "UDP GSO refused for this destination");
        self.refused.push(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_relay_core::metrics::DropReason;

    fn addr(i: u32, port: u16) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), port))
    }

    fn burst(dst: SocketAddr, n: usize) -> Vec<Outgoing<usize>> {
        (0..n).map(|buf| Outgoing { buf, len: 100, dst }).collect()
    }

    #[test]
    fn verdicts_become_datagrams_and_replies_are_clamped() {
        let src = addr(1, 1);
        let dst = addr(2, 2);
        let fwd = outgoing(Verdict::Forward(dst), src, 7, 300).expect("forward");
        assert_eq!((fwd.buf, fwd.len, fwd.dst), (7, 300, dst));
        let reply = outgoing(Verdict::Reply(40), src, 7, 300).expect("reply");
        assert_eq!((reply.len, reply.dst), (40, src));
        assert!(outgoing(Verdict::Drop(DropReason::NoRoute), src, 7, 300).is_none());
    }

    #[test]
    fn a_refusal_turns_gso_off_for_that_destination_only() {
        let metrics = BackendMetrics::default();
        let mut policy = SendPolicy::new(true);
        let (a, a_other_port, b) = (addr(1, 1), addr(1, 2), addr(2, 1));
        assert_eq!(policy.run_end(&burst(a, 10), 0), 10);
        assert_eq!(
            policy.failed(a, 10, libc::EINVAL, &metrics),
            Failure::ResendUnsegmented
        );
        assert_eq!(policy.run_end(&burst(a, 10), 0), 1);
        assert_eq!(policy.run_end(&burst(a_other_port, 10), 0), 1, "same IP");
        assert_eq!(policy.run_end(&burst(b, 10), 0), 10);
        // One already in flight is refused too: resent, not counted twice.
        assert_eq!(
            policy.failed(a, 10, libc::EIO, &metrics),
            Failure::ResendUnsegmented
        );
        assert_eq!(policy.refused.len(), 1);
        assert_eq!(metrics.get(Counter::GsoRefused), 2);
        assert_eq!(metrics.send_errors(), 0);
    }

    #[test]
    fn too_many_refused_destinations_turn_gso_off_for_the_worker() {
        let metrics = BackendMetrics::default();
        let mut policy = SendPolicy::new(true);
        for i in 0..REFUSED_DESTINATIONS as u32 {
            policy.failed(addr(i, 1), 2, libc::EIO, &metrics);
        }
        let fresh = addr(1000, 1);
        assert!(policy.gso_for(fresh));
        policy.failed(addr(1001, 1), 2, libc::EIO, &metrics);
        assert!(!policy.gso_for(fresh));
        assert_eq!(policy.refused.len(), REFUSED_DESTINATIONS, "bounded");
    }

    #[test]
    fn single_datagram_failures_are_counted_not_resent() {
        let metrics = BackendMetrics::default();
        let mut policy = SendPolicy::new(true);
        let dst = addr(1, 1);
        // EINVAL on a single datagram is a real refusal of that datagram.
        assert_eq!(
            policy.failed(dst, 1, libc::EINVAL, &metrics),
            Failure::Dropped
        );
        assert!(policy.gso_for(dst));
        assert_eq!(
            policy.failed(dst, 5, libc::EAGAIN, &metrics),
            Failure::Dropped
        );
        assert_eq!(metrics.send_errors(), 6);
        assert_eq!(metrics.get(Counter::SendBufferFull), 5);
        assert_eq!(metrics.get(Counter::GsoRefused), 0);
    }

    #[test]
    fn gso_off_sends_one_datagram_per_run() {
        let policy = SendPolicy::new(false);
        assert_eq!(policy.run_end(&burst(addr(1, 1), 10), 0), 1);
        assert_eq!(policy.run_end(&burst(addr(1, 1), 10), 10), 10);
    }

    #[test]
    fn unreachable_family_is_a_counted_send_error() {
        let metrics = BackendMetrics::default();
        let policy = SendPolicy::new(true);
        // SAFETY: all zeroes is a valid sockaddr_storage.
        let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
        let v6: SocketAddr = "[2001:db8::1]:9".parse().expect("addr");
        assert!(policy
            .address(v6, false, &mut storage, 3, &metrics)
            .is_none());
        assert_eq!(metrics.send_errors(), 3);
        assert!(policy
            .address(addr(1, 1), false, &mut storage, 3, &metrics)
            .is_some());
        assert_eq!(metrics.send_errors(), 3);
    }
}
