//! Address slots in 10.66.0.0/16 (`docs/parties.md`, "IPAM").
//!
//! A slot is an index into the usable addresses: every 10.66.x.y with y in
//! 1..=254. Addresses ending in .0 or .255 are left out entirely, not only
//! the network (10.66.0.0) and broadcast (10.66.255.255) addresses: in a /16
//! they are valid hosts, but games and OS stacks that still think in /24s
//! treat them as network or broadcast addresses and misbehave.
//!
//! A key's first choice is a slot derived from a hash of its key, and the
//! allocator probes forward from there to the first slot no member or
//! reservation of the party holds.

use std::net::Ipv4Addr;

use blake2::{Blake2s256, Digest};

use crate::Key;

/// Usable addresses: 256 values of the third octet times 254 of the fourth.
pub const ADDRESS_SLOTS: u32 = 256 * 254;

const LABEL_SLOT: &[u8] = b"lanrage ipam slot v1\0";

/// The address of slot `slot` (taken modulo [`ADDRESS_SLOTS`]).
pub fn address_of_slot(slot: u32) -> Ipv4Addr {
    let slot = slot % ADDRESS_SLOTS;
    let third = (slot / 254) as u8;
    let fourth = (slot % 254 + 1) as u8;
    Ipv4Addr::new(10, 66, third, fourth)
}

/// The slot of an address, if it is one the allocator hands out.
pub fn slot_of_address(ip: Ipv4Addr) -> Option<u32> {
    let [a, b, c, d] = ip.octets();
    if a != 10 || b != 66 || d == 0 || d == 255 {
        return None;
    }
    Some(u32::from(c) * 254 + u32::from(d) - 1)
}

/// Where the probe for `key` starts: the same in every party, so a key that
/// lost its reservation (or joins another party) usually gets its old address
/// back anyway.
pub fn preferred_slot(key: &Key) -> u32 {
    let mut h = Blake2s256::new();
    h.update(LABEL_SLOT);
    h.update(key);
    let digest = h.finalize();
    let word = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    word % ADDRESS_SLOTS
}

/// The address `key` gets in a party where it is free: the start of its probe.
pub fn preferred_address(key: &Key) -> Ipv4Addr {
    address_of_slot(preferred_slot(key))
}

/// The slot after `slot`, wrapping.
pub fn next_slot(slot: u32) -> u32 {
    (slot + 1) % ADDRESS_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_usable_addresses_exactly() {
        let mut seen = std::collections::HashSet::new();
        for slot in 0..ADDRESS_SLOTS {
            let ip = address_of_slot(slot);
            let [a, b, _, d] = ip.octets();
            assert_eq!((a, b), (10, 66));
            assert!(d != 0 && d != 255, "{ip}");
            assert_eq!(slot_of_address(ip), Some(slot));
            assert!(seen.insert(ip));
        }
        assert_eq!(address_of_slot(0), Ipv4Addr::new(10, 66, 0, 1));
        assert_eq!(
            address_of_slot(ADDRESS_SLOTS - 1),
            Ipv4Addr::new(10, 66, 255, 254)
        );
        assert_eq!(next_slot(ADDRESS_SLOTS - 1), 0);
        for ip in [
            "10.66.0.0",
            "10.66.255.255",
            "10.66.3.0",
            "10.66.3.255",
            "10.67.0.1",
        ] {
            assert_eq!(slot_of_address(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
