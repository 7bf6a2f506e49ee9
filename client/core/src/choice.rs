//! Which relay a pair of peers uses: the one minimising `rtt(A,R) +
//! rtt(R,B)`, from the latency vectors the two exchange over signaling.
//!
//! Both sides compute it from the same two vectors (each side's vector *as
//! it last sent it*, not its fresher local figures), so both arrive at the
//! same relay without negotiating; ties go to the lower relay key. A path
//! moves off the current relay only when another is clearly better
//! ([`clearly_better`]) on [`CONFIRMATIONS`] evaluations in a row, so
//! jitter never flaps it.

use std::time::Duration;

use lanrage_proto::PeerKey;

/// One side's measured RTT to each relay it is registered with and can reach.
pub type LatencyVector = Vec<(PeerKey, Duration)>;

/// Evaluations in a row a better relay must win before the path moves.
pub const CONFIRMATIONS: u32 = 3;
/// The least improvement worth a move (a handshake and a route change).
pub const MIN_GAIN: Duration = Duration::from_millis(5);

/// The relay both peers reach, cheapest first by total RTT, then key.
pub fn best(mine: &LatencyVector, theirs: &LatencyVector) -> Option<(PeerKey, Duration)> {
    mine.iter()
        .filter_map(|(relay, a)| {
            let (_, b) = theirs.iter().find(|(r, _)| r == relay)?;
            Some((*relay, *a + *b))
        })
        .min_by_key(|(relay, cost)| (*cost, relay.0))
}

/// The total RTT through `relay`, if both peers reach it.
pub fn cost(mine: &LatencyVector, theirs: &LatencyVector, relay: &PeerKey) -> Option<Duration> {
    let (_, a) = mine.iter().find(|(r, _)| r == relay)?;
    let (_, b) = theirs.iter().find(|(r, _)| r == relay)?;
    Some(*a + *b)
}

/// Whether `candidate` beats `current` by enough to move: by [`MIN_GAIN`]
/// and by a fifth of the current cost, whichever is more.
pub fn clearly_better(candidate: Duration, current: Duration) -> bool {
    let margin = MIN_GAIN.max(current / 5);
    candidate + margin < current
}

/// Encodes a vector as a signal payload: kind 1, a count, then per relay
/// its 32-byte key and the RTT in microseconds (big-endian u32).
pub fn encode(vector: &LatencyVector) -> Vec<u8> {
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

/// Signal payload kinds.
pub const KIND_LATENCY: u8 = 1;

/// Decodes a payload written by [`encode`]; `None` if it is anything else
/// or malformed (a peer's bytes are checked like anyone's).
pub fn decode(payload: &[u8]) -> Option<LatencyVector> {
    let (&kind, rest) = payload.split_first()?;
    if kind != KIND_LATENCY {
        return None;
    }
    let (&count, entries) = rest.split_first()?;
    if entries.len() != usize::from(count) * 36 {
        return None;
    }
    Some(
        entries
            .chunks_exact(36)
            .map(|e| {
                let mut key = [0u8; 32];
                key.copy_from_slice(&e[..32]);
                let micros = u32::from_be_bytes([e[32], e[33], e[34], e[35]]);
                (PeerKey(key), Duration::from_micros(u64::from(micros)))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn relay(n: u8) -> PeerKey {
        PeerKey([n; 32])
    }

    #[test]
    fn the_cheapest_total_wins_and_both_sides_agree() {
        // A is near relay 1, B near relay 2; relay 3 is in the middle.
        let a = vec![(relay(1), ms(5)), (relay(2), ms(60)), (relay(3), ms(20))];
        let b = vec![(relay(1), ms(60)), (relay(2), ms(5)), (relay(3), ms(20))];
        assert_eq!(best(&a, &b), Some((relay(3), ms(40))));
        assert_eq!(best(&b, &a), best(&a, &b), "symmetric");
        // A relay only one side reaches is never chosen.
        let b_without_3 = vec![(relay(1), ms(60)), (relay(2), ms(5))];
        assert_eq!(best(&a, &b_without_3), Some((relay(1), ms(65))));
        assert_eq!(best(&a, &vec![]), None);
    }

    #[test]
    fn ties_go_to_the_lower_key() {
        let a = vec![(relay(9), ms(10)), (relay(4), ms(10))];
        assert_eq!(best(&a, &a).map(|(r, _)| r), Some(relay(4)));
    }

    #[test]
    fn small_gains_do_not_count() {
        assert!(!clearly_better(ms(38), ms(40)), "5 ms minimum");
        assert!(clearly_better(ms(30), ms(40)));
        assert!(!clearly_better(ms(170), ms(200)), "a fifth of 200 ms is 40");
        assert!(clearly_better(ms(150), ms(200)));
    }

    #[test]
    fn vectors_round_trip_and_junk_is_refused() {
        let v = vec![
            (relay(1), ms(5)),
            (relay(2), Duration::from_micros(123_456)),
        ];
        assert_eq!(decode(&encode(&v)), Some(v.clone()));
        let mut bad = encode(&v);
        bad.pop();
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&[2, 0]), None);
        assert_eq!(decode(&[]), None);
    }
}
