//! The inner packet the tests and the load generator put in their tunnels:
//! an IPv4/UDP packet between two party members, valid enough for
//! boringtun's checks on the receiving side (it reads the IPv4 version,
//! total length and source address). The relay never looks inside a
//! tunnel; this lives here, in the one crate every test and shipped tool
//! already depends on, so that it exists once (the dev-only
//! `lanrage-test-support` re-exports it; the load generator, a shipped
//! tool, may not depend on that crate).

/// The IPv4 source and destination of [`ipv4_packet`] (two party members).
pub const SRC_IP: [u8; 4] = [10, 66, 0, 1];
pub const DST_IP: [u8; 4] = [10, 66, 0, 2];
/// The UDP ports of [`ipv4_packet`].
pub const PORT: u16 = 4445;
/// IPv4 (20, no options) + UDP (8) header bytes before the payload.
pub const HEADERS_LEN: usize = 28;

/// An IPv4/UDP packet 10.66.0.1:4445 → 10.66.0.2:4445 carrying `payload`.
///
/// # Panics
/// If the packet would be longer than 65,535 bytes (callers build small
/// ones; the load generator's `--size` is capped well below).
pub fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let total = HEADERS_LEN + payload.len();
    let total_field = u16::try_from(total).expect("inner packet longer than IPv4 allows");
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, IHL 5 words
    p[2..4].copy_from_slice(&total_field.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&SRC_IP);
    p[16..20].copy_from_slice(&DST_IP);
    p[20..22].copy_from_slice(&PORT.to_be_bytes());
    p[22..24].copy_from_slice(&PORT.to_be_bytes());
    p[24..26].copy_from_slice(&(total_field - 20).to_be_bytes());
    p[HEADERS_LEN..].copy_from_slice(payload);
    p
}

/// The payload of a packet built by [`ipv4_packet`] (everything after the
/// 28 header bytes; empty if there are fewer).
pub fn payload_of(packet: &[u8]) -> &[u8] {
    packet.get(HEADERS_LEN..).unwrap_or(&[])
}

/// The UDP payload of any decrypted IPv4 packet (options honoured), or
/// `None` if it is not UDP or too short: for bytes from the network.
pub fn udp_payload(ip_packet: &[u8]) -> Option<&[u8]> {
    let ihl = usize::from(ip_packet.first()? & 0x0F) * 4;
    if ip_packet.get(9) != Some(&17) || ihl < 20 {
        return None;
    }
    ip_packet.get(ihl + 8..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let packet = ipv4_packet(b"hello");
        assert_eq!(packet.len(), HEADERS_LEN + 5);
        assert_eq!(&packet[2..4], &33u16.to_be_bytes());
        assert_eq!(&packet[24..26], &13u16.to_be_bytes());
        assert_eq!(payload_of(&packet), b"hello");
        assert_eq!(udp_payload(&packet), Some(&b"hello"[..]));
        assert_eq!(payload_of(&[0x45]), b"");
    }

    #[test]
    fn udp_payload_honours_options_and_refuses_other_protocols() {
        let mut with_options = ipv4_packet(b"abcdefgh");
        with_options[0] = 0x46; // IHL 6: the UDP header starts 4 bytes later
        assert_eq!(udp_payload(&with_options), Some(&b"efgh"[..]));
        let mut tcp = ipv4_packet(b"xyz");
        tcp[9] = 6;
        assert_eq!(udp_payload(&tcp), None);
        assert_eq!(udp_payload(&[0x41; 30]), None, "IHL below 5");
        assert_eq!(udp_payload(&[]), None);
    }
}
