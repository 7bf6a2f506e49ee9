//! Per-phase accounting of received stamps: exact loss, reordering,
//! duplicates, and a one-way latency histogram.
//!
//! Every pair keeps a bitmap of the sequence numbers it has seen, so loss is
//! exact (`sent − unique received`), a duplicate is a sequence number seen
//! twice, and a datagram is *reordered* when it arrives with a sequence number
//! below the highest one already seen for its pair (duplicates are not also
//! counted as reordered). Sequence numbers at or above the limit given at
//! construction can't come from this run's sender and count as strays, which
//! also bounds the bitmap's memory against garbage from the network.

use hdrhistogram::Histogram;

/// Latencies are recorded in nanoseconds with 3 significant digits, up to 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Totals of one phase, after [`Accounting::totals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub strays: u64,
}

/// How one recorded datagram was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    Reordered,
    Duplicate,
    Stray,
}

#[derive(Debug, Default, Clone)]
struct PairState {
    highest: Option<u64>,
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
}

/// The receiver's books for one phase.
#[derive(Debug, Clone)]
pub struct Accounting {
    pairs: Vec<PairState>,
    seq_limit: u64,
    strays: u64,
    unique: u64,
    latency_ns: Histogram<u64>,
}

impl Accounting {
    /// Books for `pairs` pairs whose sequence numbers stay below `seq_limit`.
    pub fn new(pairs: usize, seq_limit: u64) -> Self {
        Self {
            pairs: vec![PairState::default(); pairs],
            seq_limit,
            strays: 0,
            unique: 0,
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one datagram of `pair` with sequence number `seq`, sent and
    /// received at the given nanoseconds since the shared base.
    pub fn record(&mut self, pair: u32, seq: u64, sent_ns: u64, received_ns: u64) -> Arrival {
        let Some(state) = usize::try_from(pair)
            .ok()
            .and_then(|p| self.pairs.get_mut(p))
        else {
            self.strays += 1;
            return Arrival::Stray;
        };
        if seq >= self.seq_limit {
            self.strays += 1;
            return Arrival::Stray;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if state.seen.len() <= word {
            // Grow geometrically: a bulk pair sees millions of sequence numbers.
            state.seen.resize((word + 1).max(state.seen.len() * 2), 0);
        }
        if state.seen[word] & (1 << bit) != 0 {
            state.duplicates += 1;
            return Arrival::Duplicate;
        }
        state.seen[word] |= 1 << bit;
        state.unique += 1;
        self.unique += 1;
        // Clamp to the histogram's range: 0 ns can't be recorded, and a stamp
        // claiming to come from the future is recorded as the minimum.
        let latency = received_ns.saturating_sub(sent_ns).clamp(1, MAX_LATENCY_NS);
        self.latency_ns.saturating_record(latency);
        match state.highest {
            Some(h) if seq < h => {
                state.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                state.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }

    /// A datagram that carried no usable stamp (or wasn't ours).
    pub fn stray(&mut self) {
        self.strays += 1;
    }

    /// Unique datagrams received so far, over all pairs.
    pub fn unique_received(&self) -> u64 {
        self.unique
    }

    /// Totals given what the sender says it sent per pair.
    pub fn totals(&self, sent_per_pair: &[u64]) -> Totals {
        let mut t = Totals {
            sent: sent_per_pair.iter().sum(),
            received: self.unique,
            lost: 0,
            reordered: 0,
            duplicates: 0,
            strays: self.strays,
        };
        for (i, state) in self.pairs.iter().enumerate() {
            let sent = sent_per_pair.get(i).copied().unwrap_or(0);
            t.lost += sent.saturating_sub(state.unique);
            t.reordered += state.reordered;
            t.duplicates += state.duplicates;
        }
        t
    }

    /// One-way latency in nanoseconds.
    pub fn latency_ns(&self) -> &Histogram<u64> {
        &self.latency_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(acct: &mut Accounting, pair: u32, seqs: &[u64]) -> Vec<Arrival> {
        seqs.iter()
            .map(|&s| acct.record(pair, s, 1_000, 1_000 + 10_000 * (s + 1)))
            .collect()
    }

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut acct = Accounting::new(1, 1000);
        let arrivals = feed(&mut acct, 0, &[0, 1, 2, 3, 4]);
        assert!(arrivals.iter().all(|a| *a == Arrival::InOrder));
        let t = acct.totals(&[5]);
        assert_eq!((t.sent, t.received, t.lost), (5, 5, 0));
        assert_eq!((t.reordered, t.duplicates, t.strays), (0, 0, 0));
    }

    #[test]
    fn loss_reordering_and_duplicates_are_counted_exactly() {
        let mut acct = Accounting::new(2, 1000);
        // Pair 0: 10 sent; 3 and 7 lost; 5 arrives after 6 (reordered) and 2
        // arrives twice (duplicate, not reordered again).
        let arrivals = feed(&mut acct, 0, &[0, 1, 2, 4, 6, 5, 2, 8, 9]);
        assert_eq!(arrivals[5], Arrival::Reordered);
        assert_eq!(arrivals[6], Arrival::Duplicate);
        // Pair 1: everything late but nothing lost: 1 then 0 is one reordering.
        feed(&mut acct, 1, &[1, 0]);
        let t = acct.totals(&[10, 2]);
        assert_eq!(t.sent, 12);
        assert_eq!(t.received, 10);
        assert_eq!(t.lost, 2);
        assert_eq!(t.reordered, 2);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.strays, 0);
    }

    #[test]
    fn unknown_pairs_and_impossible_sequence_numbers_are_strays() {
        let mut acct = Accounting::new(1, 100);
        assert_eq!(acct.record(5, 0, 0, 1), Arrival::Stray);
        assert_eq!(acct.record(0, 100, 0, 1), Arrival::Stray);
        assert_eq!(acct.record(0, u64::MAX, 0, 1), Arrival::Stray);
        acct.stray();
        let t = acct.totals(&[1]);
        assert_eq!((t.received, t.lost, t.strays), (0, 1, 4));
    }

    #[test]
    fn latency_histogram_records_each_unique_arrival() {
        let mut acct = Accounting::new(1, 1 << 20);
        feed(&mut acct, 0, &[0, 1, 1, 2, 70_000]);
        let h = acct.latency_ns();
        assert_eq!(h.len(), 4);
        assert!(h.min() >= 10_000 && h.value_at_quantile(0.5) <= h.max());
    }

    #[test]
    fn clock_going_backwards_is_clamped_not_panicking() {
        let mut acct = Accounting::new(1, 10);
        assert_eq!(acct.record(0, 0, 500, 100), Arrival::InOrder);
        assert_eq!(acct.latency_ns().min(), 1);
    }
}
