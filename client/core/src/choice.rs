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
}
