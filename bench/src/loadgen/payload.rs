//! The measurement stamp every load-generator datagram carries, and the packet
//! layouts around it.
//!
//! A stamp is 24 bytes: `phase` (u32 LE, doubles as a magic so strays from an
//! earlier phase or from elsewhere are recognised), `pair` (u32 LE), `seq`
//! (u64 LE, per pair and phase, from 0) and `sent_ns` (u64 LE, nanoseconds
//! since the run's shared `Instant` base). Sender and receiver run in one
//! process, so one-way latency is `received − sent` on one monotonic clock.
//!
//! Wire layouts (`size` = the measured UDP payload, at least [`STAMP_LEN`]):
//! - `sealed`: a WireGuard transport message sealing an IPv4/UDP packet whose
//!   UDP payload is `size` bytes starting with the stamp. boringtun does not
//!   pad, so the datagram is `16 + 28 + size + 16` bytes.
//! - `prebuilt`: a 16-byte transport header followed by the stamp in clear and
//!   zeros up to the **same length as `sealed`**, so the relay sees identical
//!   datagram sizes in both modes and only the generator's cost differs.

use lanrage_proto::inner;

/// Bytes of the stamp at the start of every measured payload.
pub const STAMP_LEN: usize = 24;
/// WireGuard transport header: type, reserved, receiver index, counter.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// ChaCha20-Poly1305 tag after the sealed data.
pub const TAG_LEN: usize = 16;
/// IPv4 (no options) plus UDP header of the inner packet.
pub const INNER_HEADERS_LEN: usize = inner::HEADERS_LEN;

/// The phase tag of the direct loopback baseline.
pub const PHASE_DIRECT: u32 = 0x4C47_0001;
/// The phase tag of traffic through the relay or forwarder under test.
pub const PHASE_FORWARDED: u32 = 0x4C47_0002;

/// The length of one load datagram on the wire (the outer UDP payload).
pub fn wire_len(size: usize) -> usize {
    TRANSPORT_HEADER_LEN + INNER_HEADERS_LEN + size + TAG_LEN
}

/// What a receiver learns from one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub phase: u32,
    pub pair: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than [`STAMP_LEN`]; callers size buffers from a
    /// validated `--size`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.phase.to_le_bytes());
        out[4..8].copy_from_slice(&self.pair.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Reads a stamp from untrusted bytes; `None` if too short or not a known phase.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..STAMP_LEN)?;
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let phase = u32_at(0);
        if phase != PHASE_DIRECT && phase != PHASE_FORWARDED {
            return None;
        }
        Some(Self {
            phase,
            pair: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

/// An IPv4/UDP packet 10.66.0.1:4445 → 10.66.0.2:4445 with a zeroed UDP
/// payload of `size` bytes ([`lanrage_proto::inner::ipv4_packet`]). The
/// sender writes the stamp at [`INNER_HEADERS_LEN`] before each seal.
pub fn ipv4_udp_template(size: usize) -> Vec<u8> {
    inner::ipv4_packet(&vec![0; size])
}

/// The UDP payload of a decrypted inner IPv4 packet (options honoured).
pub use inner::udp_payload as inner_udp_payload;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_strays() {
        let stamp = Stamp {
            phase: PHASE_FORWARDED,
            pair: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = [0u8; 40];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(Stamp::read(&buf[..STAMP_LEN - 1]), None);
        buf[0] ^= 0xFF;
        assert_eq!(Stamp::read(&buf), None);
    }

    #[test]
    fn template_payload_is_found_again() {
        let mut packet = ipv4_udp_template(100);
        packet[INNER_HEADERS_LEN] = 0xAB;
        let payload = inner_udp_payload(&packet).expect("udp");
        assert_eq!(payload.len(), 100);
        assert_eq!(payload[0], 0xAB);
        assert_eq!(wire_len(100), 160);
    }
}
