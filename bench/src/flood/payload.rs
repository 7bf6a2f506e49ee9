//! What each flood kind sends: the datagrams (built ahead of time where the
//! per-packet work would be a MAC or an X25519), and the spoofed sources
//! they come from.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Result};
use lanrage_proto::control::{Registration, SessionKeys, NO_COOKIE};
use lanrage_proto::mac::derive_secret;
use lanrage_proto::wireguard::{
    INITIATION_LEN, MAC_LEN, TRANSPORT_MIN_LEN, TYPE_INITIATION, TYPE_TRANSPORT,
};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;
use lanrage_tests::spoof::Loopback;
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore as _};

/// The datagrams of one flood kind.
pub enum Payloads {
    /// Sealed registrations, each under its own fresh key, sent round-robin:
    /// the MACs are valid (the attacker owns these keys), so the relay runs
    /// X25519 for each key and registers it; a key's repeat is a replay.
    Sealed { pool: Vec<Vec<u8>>, next: usize },
    /// Registration-shaped datagrams with a random MAC, claiming the keys of
    /// `templates` (one victim key, or many random ones), round-robin.
    Forged {
        templates: Vec<Vec<u8>>,
        next: usize,
    },
    /// WireGuard transport messages (32 bytes, the smallest) with random
    /// receiver indices, counters and tags.
    TransportMiss,
    /// WireGuard initiations (148 bytes) of random bytes after the header.
    Initiation,
}

impl Payloads {
    /// `count` valid registrations for fresh keys derived from `seed`, with
    /// `timestamp` and no consent (100 bytes each). Costs two X25519 per key.
    pub fn sealed(relay: &PublicKey, seed: u64, count: usize, timestamp: u64) -> Result<Self> {
        let pool = (0..count)
            .map(|i| {
                let secret = StaticSecret::from(derive_secret(
                    &seed32(seed),
                    b"lanrage flood fresh key",
                    i as u64,
                ));
                let keys = SessionKeys::for_client(&secret, relay)
                    .map_err(|e| anyhow!("registration keys for fresh key {i}: {e}"))?;
                Registration {
                    client: PeerKey::from(&PublicKey::from(&secret)),
                    timestamp,
                    observed: None,
                    // An off-path attacker never sees a challenge.
                    cookie: NO_COOKIE,
                    consent: Vec::new(),
                }
                .seal(&keys)
                .map_err(|e| anyhow!("sealing fresh key {i}: {e}"))
            })
            .collect::<Result<_>>()?;
        Ok(Self::Sealed { pool, next: 0 })
    }

    /// `count` registration templates claiming `victim` (one template then)
    /// or random keys; the MAC (the last bytes) is re-randomised per packet.
    pub fn forged(victim: Option<PeerKey>, count: usize, rng: &mut SmallRng) -> Result<Self> {
        // Any valid session keys give the layout; the MAC is overwritten.
        let a = StaticSecret::from(derive_secret(&[1; 32], b"lanrage flood junk", 0));
        let b = StaticSecret::from(derive_secret(&[1; 32], b"lanrage flood junk", 1));
        let keys = SessionKeys::for_client(&a, &PublicKey::from(&b))
            .map_err(|e| anyhow!("junk registration layout keys: {e}"))?;
        let count = if victim.is_some() { 1 } else { count };
        let templates = (0..count)
            .map(|_| {
                let client = victim.unwrap_or_else(|| PeerKey(rng.gen()));
                Registration {
                    client,
                    timestamp: rng.gen(),
                    observed: None,
                    cookie: rng.gen(),
                    consent: Vec::new(),
                }
                .seal(&keys)
                .map_err(|e| anyhow!("building a junk registration: {e}"))
            })
            .collect::<Result<_>>()?;
        Ok(Self::Forged { templates, next: 0 })
    }

    /// The length of the next datagram.
    pub fn next_len(&self) -> usize {
        match self {
            Self::Sealed { pool, next } => pool[*next].len(),
            Self::Forged { templates, next } => templates[*next].len(),
            Self::TransportMiss => TRANSPORT_MIN_LEN,
            Self::Initiation => INITIATION_LEN,
        }
    }

    /// Writes the next datagram into `buf` (exactly [`Payloads::next_len`]
    /// bytes) and moves on.
    pub fn write_next(&mut self, buf: &mut [u8], rng: &mut SmallRng) {
        match self {
            Self::Sealed { pool, next } => {
                buf.copy_from_slice(&pool[*next]);
                *next = (*next + 1) % pool.len();
            }
            Self::Forged { templates, next } => {
                buf.copy_from_slice(&templates[*next]);
                let mac_at = buf.len() - MAC_LEN;
                rng.fill_bytes(&mut buf[mac_at..]);
                *next = (*next + 1) % templates.len();
            }
            Self::TransportMiss => {
                buf[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
                rng.fill_bytes(&mut buf[4..]);
            }
            Self::Initiation => {
                buf[..4].copy_from_slice(&[TYPE_INITIATION, 0, 0, 0]);
                rng.fill_bytes(&mut buf[4..]);
            }
        }
    }
}

/// Where spoofed datagrams come from.
pub enum Sources {
    /// A fixed pool of random loopback endpoints, picked at random per packet.
    Pool(Vec<Loopback>),
    /// One IP, a random port (1024-65535) per packet.
    Ip(Ipv4Addr),
    /// One endpoint.
    One(Loopback),
}

impl Sources {
    /// `n` random endpoints `127.a.b.c:port` with c in 1..=254 and port in
    /// 1024..=65535, outside 127.0.0.0/16 (where the legitimate clients of
    /// a loopback test live: 127.0.0.1). Repeats are possible and harmless.
    pub fn random_pool(n: usize, rng: &mut SmallRng) -> Result<Self> {
        let pool = (0..n)
            .map(|_| loop {
                let (a, b) = (rng.gen::<u8>(), rng.gen::<u8>());
                if a == 0 && b == 0 {
                    continue;
                }
                let ip = Ipv4Addr::new(127, a, b, rng.gen_range(1..=254));
                break Loopback::from_parts(ip, rng.gen_range(1024..=65535));
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::Pool(pool))
    }

    pub fn next(&self, rng: &mut SmallRng) -> Loopback {
        match self {
            Self::Pool(pool) => pool[rng.gen_range(0..pool.len())],
            Self::Ip(ip) => Loopback::from_parts(*ip, rng.gen_range(1024..=65535))
                .expect("the IP was checked to be loopback when the flood was planned"),
            Self::One(src) => *src,
        }
    }
}

/// A 32-byte seed for [`derive_secret`] from the flood's `--seed`.
pub fn seed32(seed: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_proto::control::{ControlError, ControlMessage};
    use lanrage_proto::WgMessage;
    use rand::SeedableRng as _;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    fn next(p: &mut Payloads, rng: &mut SmallRng) -> Vec<u8> {
        let mut buf = vec![0u8; p.next_len()];
        p.write_next(&mut buf, rng);
        buf
    }

    #[test]
    fn fresh_registrations_verify_at_the_relay_each_under_its_own_key() {
        let relay = StaticSecret::from([9; 32]);
        let mut p = Payloads::sealed(&PublicKey::from(&relay), 3, 4, 1234).expect("pool");
        let mut rng = rng();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let bytes = next(&mut p, &mut rng);
            let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&bytes) else {
                panic!("not a registration");
            };
            let keys =
                SessionKeys::for_relay(&relay, &PublicKey::from(view.client().0)).expect("keys");
            let reg = view.verify(&keys).expect("a valid MAC");
            assert_eq!(reg.timestamp, 1234);
            clients.push(reg.client);
        }
        clients.dedup();
        assert_eq!(clients.len(), 4, "distinct keys");
        // Round-robin: the fifth is the first again.
        let again = next(&mut p, &mut rng);
        let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&again) else {
            panic!("not a registration");
        };
        assert_eq!(view.client(), clients[0]);
    }

    #[test]
    fn junk_registrations_claim_the_victim_and_fail_its_mac() {
        let relay = StaticSecret::from([9; 32]);
        let victim_secret = StaticSecret::from([5; 32]);
        let victim = PeerKey::from(&PublicKey::from(&victim_secret));
        let keys = SessionKeys::for_relay(&relay, &PublicKey::from(victim.0)).expect("keys");
        let mut rng = rng();
        let mut p = Payloads::forged(Some(victim), 100, &mut rng).expect("templates");
        let (a, b) = (next(&mut p, &mut rng), next(&mut p, &mut rng));
        assert_ne!(a, b, "a fresh MAC per packet");
        for bytes in [a, b] {
            let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&bytes) else {
                panic!("not a registration");
            };
            assert_eq!(view.client(), victim);
            assert_eq!(view.verify(&keys), Err(ControlError::BadMac));
        }
    }

    #[test]
    fn junk_without_a_victim_claims_many_keys() {
        let mut rng = rng();
        let mut p = Payloads::forged(None, 8, &mut rng).expect("templates");
        let mut clients: Vec<_> = (0..8)
            .map(|_| {
                let bytes = next(&mut p, &mut rng);
                let Ok(ControlMessage::Register(view)) = ControlMessage::parse(&bytes) else {
                    panic!("not a registration");
                };
                view.client()
            })
            .collect();
        clients.sort_by_key(|k| k.0);
        clients.dedup();
        assert_eq!(clients.len(), 8);
    }

    #[test]
    fn wireguard_kinds_parse_as_their_message_type() {
        let mut rng = rng();
        let bytes = next(&mut Payloads::TransportMiss, &mut rng);
        assert!(matches!(
            WgMessage::parse(&bytes),
            Ok(WgMessage::Transport(_))
        ));
        let other = next(&mut Payloads::TransportMiss, &mut rng);
        assert_ne!(bytes[4..8], other[4..8], "random receiver indices");
        let bytes = next(&mut Payloads::Initiation, &mut rng);
        assert_eq!(bytes.len(), 148);
        assert!(matches!(
            WgMessage::parse(&bytes),
            Ok(WgMessage::Initiation(_))
        ));
    }

    #[test]
    fn random_sources_are_loopback_outside_the_legitimate_clients_net() {
        let mut rng = rng();
        let Sources::Pool(pool) = Sources::random_pool(10_000, &mut rng).expect("pool") else {
            panic!("a pool");
        };
        for src in &pool {
            let [a, b, c, d] = src.addr().ip().octets();
            assert_eq!(a, 127);
            assert!((b, c) != (0, 0), "{src:?}");
            assert!((1..=254).contains(&d), "{src:?}");
            assert!(src.addr().port() >= 1024);
        }
        let distinct: std::collections::HashSet<_> = pool.iter().collect();
        assert!(distinct.len() > 9_900);
        let one_ip = Sources::Ip(Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(*one_ip.next(&mut rng).addr().ip(), Ipv4Addr::LOCALHOST);
    }
}
