//! What a signal carries (`docs/protocol.md` §2.10, "Payloads"): the first
//! plaintext byte is the kind. Decoded as strictly as any wire format: a
//! peer's bytes are checked like anyone's.

use std::net::SocketAddr;
use std::time::Duration;

use lanrage_proto::control::{decode_addr, encode_addr, ADDR_LEN};
use lanrage_proto::PeerKey;

use crate::direct::MAX_CANDIDATES;

use crate::choice::LatencyVector;

pub const KIND_LATENCY: u8 = 1;
pub const KIND_PING: u8 = 2;
pub const KIND_PONG: u8 = 3;
pub const KIND_CANDIDATES: u8 = 4;
/// Candidates flag: the sender has none of ours yet; answer with them.
const FLAG_WANT_REPLY: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The sender's RTT to each relay it can use.
    Latency(LatencyVector),
    /// `lanrage ping`: answer with a pong carrying the same id.
    Ping(u64),
    Pong(u64),
    /// The addresses the sender can be reached at directly (host and
    /// server-reflexive), for punching; `want_reply`: send yours back.
    Candidates {
        want_reply: bool,
        addrs: Vec<SocketAddr>,
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
            Payload::Candidates { want_reply, addrs } => {
                let count = addrs.len().min(MAX_CANDIDATES);
                let mut out = Vec::with_capacity(3 + count * ADDR_LEN);
                out.push(KIND_CANDIDATES);
                out.push(if *want_reply { FLAG_WANT_REPLY } else { 0 });
                out.push(count as u8);
                for addr in addrs.iter().take(count) {
                    out.extend_from_slice(&encode_addr(Some(*addr)));
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
                if flags & !FLAG_WANT_REPLY != 0
                    || count > MAX_CANDIDATES
                    || entries.len() != count * ADDR_LEN
                {
                    return None;
                }
                let addrs = entries
                    .chunks_exact(ADDR_LEN)
                    .map(|e| decode_addr(e.try_into().ok()?).ok().flatten())
                    .collect::<Option<Vec<_>>>()?;
                Some(Payload::Candidates {
                    want_reply: flags & FLAG_WANT_REPLY != 0,
                    addrs,
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
                addrs: vec![
                    "192.168.1.10:40000".parse().expect("addr"),
                    "[2001:db8::7]:51900".parse().expect("addr"),
                ],
            },
            Payload::Candidates {
                want_reply: false,
                addrs: vec!["203.0.113.9:1".parse().expect("addr")],
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
                addrs: vec![]
            })
        );
        assert_eq!(Payload::decode(&[]), None);
    }
}
