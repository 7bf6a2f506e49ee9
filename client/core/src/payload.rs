//! What a signal carries (`docs/protocol.md` §2.10, "Payloads"): the first
//! plaintext byte is the kind. Decoded as strictly as any wire format: a
//! peer's bytes are checked like anyone's.

use std::net::SocketAddr;
use std::time::Duration;

use lanrage_proto::control::{decode_addr, encode_addr, ADDR_LEN};
use lanrage_proto::PeerKey;

use crate::direct::MAX_CANDIDATES;
use crate::netcheck::{Filtering, Mapping};

use crate::choice::LatencyVector;

pub const KIND_LATENCY: u8 = 1;
pub const KIND_PING: u8 = 2;
pub const KIND_PONG: u8 = 3;
pub const KIND_CANDIDATES: u8 = 4;
/// Candidates flag: the sender has none of ours yet; answer with them.
const FLAG_WANT_REPLY: u8 = 1;
/// Candidates flag: a NAT block (host count, NAT byte) follows the addresses.
const FLAG_NAT: u8 = 2;
/// NAT byte: bits 0–1 mapping, bits 2–3 filtering, bit 4 sequential.
const NAT_SEQUENTIAL: u8 = 1 << 4;

/// What a peer found out about its NAT (its netcheck), as much as the
/// other side needs to choose how to punch (`docs/nat-traversal.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatHint {
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
    /// Its mapping hands out ports in sequence; its candidates include the
    /// predicted ones.
    pub sequential: bool,
}

impl NatHint {
    fn encode(self) -> u8 {
        let mapping = match self.mapping {
            None => 0,
            Some(Mapping::EndpointIndependent) => 1,
            Some(Mapping::AddressDependent) => 2,
            Some(Mapping::AddressAndPortDependent) => 3,
        };
        let filtering = match self.filtering {
            None => 0,
            Some(Filtering::EndpointIndependent) => 1,
            Some(Filtering::AddressDependent) => 2,
            Some(Filtering::AddressAndPortDependent) => 3,
        };
        mapping | filtering << 2 | if self.sequential { NAT_SEQUENTIAL } else { 0 }
    }

    fn decode(byte: u8) -> Option<Self> {
        if byte & !(NAT_SEQUENTIAL | 0x0f) != 0 {
            return None;
        }
        let mapping = match byte & 3 {
            0 => None,
            1 => Some(Mapping::EndpointIndependent),
            2 => Some(Mapping::AddressDependent),
            _ => Some(Mapping::AddressAndPortDependent),
        };
        let filtering = match byte >> 2 & 3 {
            0 => None,
            1 => Some(Filtering::EndpointIndependent),
            2 => Some(Filtering::AddressDependent),
            _ => Some(Filtering::AddressAndPortDependent),
        };
        Some(Self {
            mapping,
            filtering,
            sequential: byte & NAT_SEQUENTIAL != 0,
        })
    }
}

/// A sender's candidates: host addresses first (`hosts` of them), then
/// server-reflexive and predicted ones; and what it knows of its NAT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CandidateSet {
    pub addrs: Vec<SocketAddr>,
    pub hosts: usize,
    pub nat: Option<NatHint>,
}

impl CandidateSet {
    /// The candidates that are not host addresses: what the peer's NAT
    /// shows the world.
    pub fn public(&self) -> &[SocketAddr] {
        &self.addrs[self.hosts.min(self.addrs.len())..]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The sender's RTT to each relay it can use.
    Latency(LatencyVector),
    /// `lanrage ping`: answer with a pong carrying the same id.
    Ping(u64),
    Pong(u64),
    /// The addresses the sender can be reached at directly (host,
    /// server-reflexive, predicted), for punching; `want_reply`: send
    /// yours back.
    Candidates {
        want_reply: bool,
        set: CandidateSet,
    },
}

impl Payload {
    /// Latency: a count, then per relay its 32-byte key and the RTT in
    /// microseconds (u32 BE). Ping and pong: the id (u64 BE).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Payload::Latency(vector) => {
                let count = vector.len().min(usize::from(u8::MAX));
                let mut out = Vec::with_capacity(2 + count * 36);
                out.push(KIND_LATENCY);
                out.push(count as u8);
                for (relay, rtt) in vector.iter().take(count) {
                    out.extend_from_slice(relay.as_bytes());
                    let micros = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&micros.to_be_bytes());
                }
                out
            }
            Payload::Candidates { want_reply, set } => {
                let count = set.addrs.len().min(MAX_CANDIDATES);
                let mut out = Vec::with_capacity(5 + count * ADDR_LEN);
                out.push(KIND_CANDIDATES);
                let mut flags = if *want_reply { FLAG_WANT_REPLY } else { 0 };
                if set.nat.is_some() {
                    flags |= FLAG_NAT;
                }
                out.push(flags);
                out.push(count as u8);
                for addr in set.addrs.iter().take(count) {
                    out.extend_from_slice(&encode_addr(Some(*addr)));
                }
                if let Some(nat) = set.nat {
                    out.push(set.hosts.min(count) as u8);
                    out.push(nat.encode());
                }
                out
            }
            Payload::Ping(id) => [&[KIND_PING][..], &id.to_be_bytes()].concat(),
            Payload::Pong(id) => [&[KIND_PONG][..], &id.to_be_bytes()].concat(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            KIND_LATENCY => {
                let (&count, entries) = rest.split_first()?;
                if entries.len() != usize::from(count) * 36 {
                    return None;
                }
                let vector = entries
                    .chunks_exact(36)
                    .map(|e| {
                        let mut key = [0u8; 32];
                        key.copy_from_slice(&e[..32]);
                        let micros = u32::from_be_bytes([e[32], e[33], e[34], e[35]]);
                        (PeerKey(key), Duration::from_micros(u64::from(micros)))
                    })
                    .collect();
                Some(Payload::Latency(vector))
            }
            KIND_CANDIDATES => {
                let [flags, count, entries @ ..] = rest else {
                    return None;
                };
                let count = usize::from(*count);
                let block = if flags & FLAG_NAT != 0 { 2 } else { 0 };
                if flags & !(FLAG_WANT_REPLY | FLAG_NAT) != 0
                    || count > MAX_CANDIDATES
                    || entries.len() != count * ADDR_LEN + block
                {
                    return None;
                }
                let (entries, nat_block) = entries.split_at(count * ADDR_LEN);
                let addrs = entries
                    .chunks_exact(ADDR_LEN)
                    .map(|e| decode_addr(e.try_into().ok()?).ok().flatten())
                    .collect::<Option<Vec<_>>>()?;
                let (hosts, nat) = match nat_block {
                    [] => (addrs.len(), None),
                    &[hosts, nat] if usize::from(hosts) <= count => {
                        (usize::from(hosts), Some(NatHint::decode(nat)?))
                    }
                    _ => return None,
                };
                Some(Payload::Candidates {
                    want_reply: flags & FLAG_WANT_REPLY != 0,
                    set: CandidateSet { addrs, hosts, nat },
                })
            }
            KIND_PING | KIND_PONG => {
                let id = u64::from_be_bytes(rest.try_into().ok()?);
                Some(if kind == KIND_PING {
                    Payload::Ping(id)
                } else {
                    Payload::Pong(id)
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_refused() {
        let v = vec![
            (PeerKey([1; 32]), Duration::from_millis(5)),
            (PeerKey([2; 32]), Duration::from_micros(123_456)),
        ];
        for p in [
            Payload::Latency(v),
            Payload::Ping(7),
            Payload::Pong(u64::MAX),
            Payload::Candidates {
                want_reply: true,
                set: CandidateSet {
                    addrs: vec![
                        "192.168.1.10:40000".parse().expect("addr"),
                        "[2001:db8::7]:51900".parse().expect("addr"),
                    ],
                    hosts: 2,
                    nat: None,
                },
            },
            Payload::Candidates {
                want_reply: false,
                set: CandidateSet {
                    addrs: vec![
                        "192.168.1.10:40000".parse().expect("addr"),
                        "203.0.113.9:1".parse().expect("addr"),
                    ],
                    hosts: 1,
                    nat: Some(NatHint {
                        mapping: Some(Mapping::AddressAndPortDependent),
                        filtering: Some(Filtering::AddressDependent),
                        sequential: true,
                    }),
                },
            },
            Payload::Candidates {
                want_reply: false,
                set: CandidateSet {
                    addrs: vec![],
                    hosts: 0,
                    nat: Some(NatHint::default()),
                },
            },
        ] {
            assert_eq!(Payload::decode(&p.encode()), Some(p.clone()));
            let mut short = p.encode();
            short.pop();
            assert_eq!(Payload::decode(&short), None, "{p:?} truncated");
            let mut long = p.encode();
            long.push(0);
            assert_eq!(Payload::decode(&long), None, "{p:?} extended");
        }
        assert_eq!(Payload::decode(&[9, 0]), None);
        // Candidates: unknown flags, too many, or a missing address.
        assert_eq!(Payload::decode(&[KIND_CANDIDATES, 2, 0]), None);
        let mut many = vec![KIND_CANDIDATES, 0, (MAX_CANDIDATES + 1) as u8];
        many.extend(std::iter::repeat_n(0u8, (MAX_CANDIDATES + 1) * ADDR_LEN));
        assert_eq!(Payload::decode(&many), None);
        let mut none = vec![KIND_CANDIDATES, 0, 1];
        none.extend([0u8; ADDR_LEN]);
        assert_eq!(Payload::decode(&none), None);
        assert_eq!(
            Payload::decode(&[KIND_CANDIDATES, 0, 0]),
            Some(Payload::Candidates {
                want_reply: false,
                set: CandidateSet::default(),
            })
        );
        // The NAT block: more hosts than addresses, or reserved NAT bits.
        assert_eq!(Payload::decode(&[KIND_CANDIDATES, FLAG_NAT, 0, 1, 0]), None);
        assert_eq!(
            Payload::decode(&[KIND_CANDIDATES, FLAG_NAT, 0, 0, 0x20]),
            None
        );
        assert_eq!(Payload::decode(&[KIND_CANDIDATES, FLAG_NAT, 0, 0]), None);
        // Every NAT byte that decodes encodes back to itself.
        for byte in 0..=u8::MAX {
            if let Some(hint) = NatHint::decode(byte) {
                assert_eq!(hint.encode(), byte);
            }
        }
        assert_eq!(Payload::decode(&[]), None);
    }
}
