//! What a signal carries (`docs/protocol.md` §2.10, "Payloads"): the first
//! plaintext byte is the kind. Decoded as strictly as any wire format: a
//! peer's bytes are checked like anyone's.

use std::time::Duration;

use lanrage_proto::PeerKey;

use crate::choice::LatencyVector;

pub const KIND_LATENCY: u8 = 1;
pub const KIND_PING: u8 = 2;
pub const KIND_PONG: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The sender's RTT to each relay it can use.
    Latency(LatencyVector),
    /// `lanrage ping`: answer with a pong carrying the same id.
    Ping(u64),
    Pong(u64),
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
        assert_eq!(Payload::decode(&[]), None);
    }
}
