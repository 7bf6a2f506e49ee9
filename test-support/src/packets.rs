//! Inner packets for WireGuard tunnels in tests.

/// The IPv4 source and destination of [`ipv4_packet`] (two party members).
pub const SRC_IP: [u8; 4] = [10, 66, 0, 1];
pub const DST_IP: [u8; 4] = [10, 66, 0, 2];
/// The UDP ports of [`ipv4_packet`].
pub const PORT: u16 = 4445;
/// IPv4 (20) + UDP (8) header bytes before the payload.
pub const HEADERS_LEN: usize = 28;

/// An IPv4/UDP packet 10.66.0.1 → 10.66.0.2 carrying `payload`: valid
/// enough for boringtun's checks on the receiving side (it reads the IPv4
/// version, total length and source address).
pub fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let total = HEADERS_LEN + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&SRC_IP);
    p[16..20].copy_from_slice(&DST_IP);
    p[20..22].copy_from_slice(&PORT.to_be_bytes());
    p[22..24].copy_from_slice(&PORT.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[HEADERS_LEN..].copy_from_slice(payload);
    p
}

/// The payload of a packet built by [`ipv4_packet`].
pub fn payload_of(packet: &[u8]) -> &[u8] {
    packet.get(HEADERS_LEN..).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let packet = ipv4_packet(b"hello");
        assert_eq!(packet.len(), HEADERS_LEN + 5);
        assert_eq!(payload_of(&packet), b"hello");
        assert_eq!(payload_of(&[0x45]), b"");
    }
}
