//! Spoofed-source UDP on loopback, for reproducing spoofed-source floods
//! against a relay on this machine.
//!
//! A [`Spoofer`] sends UDP datagrams whose IPv4 source address and port are
//! whatever the caller says, through a raw socket
//! (`socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`, so the IPv4 and UDP headers are
//! built here, checksums included). It needs root or `CAP_NET_RAW`: a test
//! skips (or fails, in CI) when [`permitted_spoofer`] answers
//! [`SpoofError::NotPermitted`].
//!
//! **Safety rule:** every source and destination is a [`Loopback`], which
//! only an address in `127.0.0.0/8` can become. Nothing built on this module
//! can put a spoofed packet on a real network.
//!
//! Datagrams are queued into a fixed batch and leave in one `sendmmsg` per
//! [`Spoofer::flush`], so a flood is not capped by one system call per packet.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

use lanrage_proto::control::REGISTER_MAX_LEN;
use socket2::SockAddr;
use thiserror::Error;

/// An IPv4 header without options (20) plus a UDP header (8).
pub const HEADERS_LEN: usize = 28;
/// The largest payload a spoofed datagram may carry: LANrage's largest
/// datagram, a registration with 64 consent keys.
pub const MAX_PAYLOAD: usize = REGISTER_MAX_LEN;
/// Datagrams per `sendmmsg`.
pub const BATCH: usize = 64;

/// Why a spoofed datagram could not be built or sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpoofError {
    #[error("{0} is outside 127.0.0.0/8: spoofed packets may only come from and go to loopback")]
    NotLoopback(SocketAddr),
    #[error("a payload of {len} bytes exceeds the spoofer's {MAX_PAYLOAD}-byte limit")]
    PayloadTooLong { len: usize },
    #[error("the batch already holds {BATCH} datagrams; flush it first")]
    BatchFull,
    #[error("opening a raw IPv4 socket needs root or CAP_NET_RAW ({0})")]
    NotPermitted(io::Error),
    #[error("opening a raw IPv4 socket: {0}")]
    Socket(io::Error),
    #[error("sending on the raw socket: {0}")]
    Send(io::Error),
}

/// An IPv4 socket address inside `127.0.0.0/8`: the only kind a [`Spoofer`]
/// sends from or to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loopback(SocketAddrV4);

impl Loopback {
    /// Refuses anything outside `127.0.0.0/8`, IPv6 included.
    pub fn new(addr: SocketAddr) -> Result<Self, SpoofError> {
        match addr {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => Ok(Self(v4)),
            other => Err(SpoofError::NotLoopback(other)),
        }
    }

    pub fn from_parts(ip: Ipv4Addr, port: u16) -> Result<Self, SpoofError> {
        Self::new(SocketAddr::new(IpAddr::V4(ip), port))
    }

    pub fn addr(self) -> SocketAddrV4 {
        self.0
    }
}

impl From<Loopback> for SocketAddr {
    fn from(l: Loopback) -> Self {
        SocketAddr::V4(l.0)
    }
}

/// A spoofer, or `Err(NotPermitted)` when this process may not open a raw
/// socket (no root or CAP_NET_RAW): the one error a test skips on, through
/// `lanrage_test_support::privileged::or_skip` (it fails the test under
/// `LANRAGE_REQUIRE_PRIVILEGED=1`). Any other error is a bug in the test
/// setup, and panics.
pub fn permitted_spoofer() -> Result<Spoofer, SpoofError> {
    match Spoofer::new() {
        Ok(s) => Ok(s),
        Err(e @ SpoofError::NotPermitted(_)) => Err(e),
        Err(e) => panic!("opening the spoofer: {e}"),
    }
}

/// A raw IPv4 socket and one batch of hand-built loopback datagrams.
pub struct Spoofer {
    fd: OwnedFd,
    /// `BATCH` slots of `HEADERS_LEN + MAX_PAYLOAD` bytes.
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    /// One per queued datagram.
    dests: Vec<SockAddr>,
    next_id: u16,
}

const SLOT: usize = HEADERS_LEN + MAX_PAYLOAD;

impl Spoofer {
    /// Opens the raw socket: [`SpoofError::NotPermitted`] without root or
    /// `CAP_NET_RAW`.
    pub fn new() -> Result<Self, SpoofError> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if raw < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => SpoofError::NotPermitted(err),
                _ => SpoofError::Socket(err),
            });
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            bufs: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            dests: Vec::with_capacity(BATCH),
            next_id: 1,
        })
    }

    /// Datagrams queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.dests.len()
    }

    pub fn is_full(&self) -> bool {
        self.dests.len() == BATCH
    }

    /// Queues a datagram `src → dst` with a `len`-byte payload that `fill`
    /// writes (into a reused buffer: bytes it leaves alone hold whatever an
    /// earlier datagram put there). Headers and checksums are written after
    /// `fill`.
    pub fn queue(
        &mut self,
        src: Loopback,
        dst: Loopback,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), SpoofError> {
        if len > MAX_PAYLOAD {
            return Err(SpoofError::PayloadTooLong { len });
        }
        if self.is_full() {
            return Err(SpoofError::BatchFull);
        }
        let k = self.dests.len();
        let packet = &mut self.bufs[k * SLOT..k * SLOT + HEADERS_LEN + len];
        fill(&mut packet[HEADERS_LEN..]);
        // A non-zero ID: the kernel would pick one for a zero ID anyway
        // (raw(7)), and with our own the header is final as built.
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        write_headers(packet, src.addr(), dst.addr(), id);
        self.lens[k] = packet.len();
        // raw(7): the port is ignored for sending and should be 0.
        self.dests
            .push(SockAddr::from(SocketAddrV4::new(*dst.addr().ip(), 0)));
        Ok(())
    }

    /// Sends everything queued in one `sendmmsg` (retried while the kernel
    /// takes part of the batch); returns how many datagrams the kernel took.
    /// After an error the rest of the batch is dropped (an error is returned
    /// only if nothing was sent). The batch is empty afterwards.
    pub fn flush(&mut self) -> Result<usize, SpoofError> {
        let sent = crate::mmsg::send_batch::<BATCH>(
            self.fd.as_fd(),
            &self.bufs,
            SLOT,
            &self.lens,
            &self.dests,
        );
        self.dests.clear();
        sent.map_err(SpoofError::Send)
    }

    /// Sends one datagram now (flushing anything queued before it).
    pub fn send_one(
        &mut self,
        src: Loopback,
        dst: Loopback,
        payload: &[u8],
    ) -> Result<(), SpoofError> {
        if self.is_full() {
            self.flush()?;
        }
        self.queue(src, dst, payload.len(), |buf| buf.copy_from_slice(payload))?;
        let expected = self.queued();
        let sent = self.flush()?;
        if sent < expected {
            return Err(SpoofError::Send(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the kernel took {sent} of {expected} datagrams"),
            )));
        }
        Ok(())
    }
}

/// Writes an IPv4 header (no options, DF set, TTL 64, identification `id`)
/// and a UDP header `src → dst`, both with their checksums, into
/// `packet[..HEADERS_LEN]`, for the payload already in
/// `packet[HEADERS_LEN..]`. `packet` must be at least [`HEADERS_LEN`] long
/// and at most 65,535 bytes.
pub fn write_headers(packet: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, id: u16) {
    assert!(
        (HEADERS_LEN..=usize::from(u16::MAX)).contains(&packet.len()),
        "an IPv4 packet of {} bytes",
        packet.len()
    );
    let total = packet.len() as u16;
    let udp_len = total - 20;
    let (ip, rest) = packet.split_at_mut(20);
    // RFC 791 §3.1.
    ip[0] = 0x45; // version 4, IHL 5 words
    ip[1] = 0; // DSCP/ECN
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let ip_check = !fold(sum_words(ip));
    ip[10..12].copy_from_slice(&ip_check.to_be_bytes());
    // RFC 768: the checksum covers a pseudo-header (addresses, protocol,
    // UDP length), the UDP header and the payload.
    rest[0..2].copy_from_slice(&src.port().to_be_bytes());
    rest[2..4].copy_from_slice(&dst.port().to_be_bytes());
    rest[4..6].copy_from_slice(&udp_len.to_be_bytes());
    rest[6..8].fill(0);
    let pseudo = sum_words(&ip[12..20]) + 17 + u64::from(udp_len);
    let udp_check = match !fold(pseudo + sum_words(rest)) {
        // A computed 0 is sent as all ones: 0 means "no checksum".
        0 => 0xffff,
        c => c,
    };
    rest[6..8].copy_from_slice(&udp_check.to_be_bytes());
}

/// The sum of `bytes` as big-endian 16-bit words (an odd last byte padded
/// with zero), not yet folded (RFC 1071).
fn sum_words(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u64 = (&mut chunks)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum into 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().expect("test address")
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in ["127.0.0.1:1", "127.3.4.5:4242", "127.255.255.254:65535"] {
            assert!(Loopback::new(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:1",
            "192.168.1.1:51888",
            "128.0.0.1:1",
            "0.0.0.0:1",
            "255.255.255.255:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            let err = Loopback::new(bad.parse().unwrap()).expect_err(bad);
            assert!(matches!(err, SpoofError::NotLoopback(_)), "{bad}");
            assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
        }
    }

    /// A spoofed datagram 127.3.4.5:4242 → 127.0.0.1:51888, ID 0x1234,
    /// payload "LANrage" (odd length, so the pad byte is exercised). Sent on
    /// `lo` through a raw socket, tcpdump (`-vv -xx`) showed these bytes with
    /// no IPv4 checksum complaint and "udp sum ok"; with the UDP checksum's
    /// last byte changed it said "bad udp cksum 0xc169 -> 0xc168", and the
    /// kernel dropped the datagram (counted in `InCsumErrors`).
    const KNOWN: [u8; 35] = [
        0x45, 0x00, 0x00, 0x23, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x26, 0x8d, 0x7f, 0x03, 0x04,
        0x05, 0x7f, 0x00, 0x00, 0x01, 0x10, 0x92, 0xca, 0xb0, 0x00, 0x0f, 0xc1, 0x68, b'L', b'A',
        b'N', b'r', b'a', b'g', b'e',
    ];

    #[test]
    fn headers_match_a_known_packet() {
        let mut packet = vec![0xAA; HEADERS_LEN];
        packet.extend_from_slice(b"LANrage");
        write_headers(
            &mut packet,
            v4("127.3.4.5:4242"),
            v4("127.0.0.1:51888"),
            0x1234,
        );
        assert_eq!(packet, KNOWN);
    }

    #[test]
    fn checksums_verify_for_every_payload_length_parity() {
        for len in [0usize, 1, 2, 31, 32, 148, 2132] {
            let mut packet = vec![0u8; HEADERS_LEN + len];
            for (i, b) in packet[HEADERS_LEN..].iter_mut().enumerate() {
                *b = (i * 7 + 3) as u8;
            }
            write_headers(&mut packet, v4("127.9.8.7:1"), v4("127.0.0.1:65535"), 9);
            // A header with a correct checksum sums to all ones (RFC 1071).
            assert_eq!(fold(sum_words(&packet[..20])), 0xffff, "ip, len {len}");
            let udp_len = (8 + len) as u64;
            let pseudo = sum_words(&packet[12..20]) + 17 + udp_len;
            assert_eq!(
                fold(pseudo + sum_words(&packet[20..])),
                0xffff,
                "udp, len {len}"
            );
        }
    }
}
