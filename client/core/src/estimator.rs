//! RTT, jitter and loss of a path, from probes that carry their send time.
//!
//! RTT is smoothed as TCP does (RFC 6298: SRTT with α = 1/8); jitter is the
//! smoothed difference between consecutive samples (RFC 3550 §6.4.1, gain
//! 1/16); loss is the share of the last [`WINDOW`] probes that got no answer
//! within [`ANSWER_WITHIN`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Probes the loss figure looks back over.
pub const WINDOW: usize = 20;
/// A probe unanswered this long counts as lost.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone)]
pub struct Estimator {
    srtt: Option<Duration>,
    last: Option<Duration>,
    jitter: Duration,
    /// Probes in flight and recent outcomes: (sent at, answered).
    window: VecDeque<(Instant, bool)>,
}

impl Estimator {
    pub fn sent(&mut self, at: Instant) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((at, false));
    }

    /// An answer to the probe sent at `sent`, arriving at `now`. Answers to
    /// probes no longer in the window still give an RTT sample.
    pub fn answered(&mut self, sent: Instant, now: Instant) {
        let rtt = now.saturating_duration_since(sent);
        if let Some(entry) = self.window.iter_mut().find(|(at, _)| *at == sent) {
            entry.1 = true;
        }
        self.sample(rtt);
    }

    /// An RTT measured some other way (a registration's echoed timestamp).
    pub fn sample(&mut self, rtt: Duration) {
        if let Some(last) = self.last {
            let delta = rtt.abs_diff(last);
            self.jitter = self.jitter + delta / 16 - self.jitter / 16;
        }
        self.last = Some(rtt);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(srtt) => srtt - srtt / 8 + rtt / 8,
        });
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// Loss over the probes whose answer is no longer awaited, 0.0 to 1.0.
    pub fn loss(&self, now: Instant) -> f64 {
        let decided: Vec<bool> = self
            .window
            .iter()
            .filter(|(at, answered)| {
                *answered || now.saturating_duration_since(*at) >= ANSWER_WITHIN
            })
            .map(|(_, answered)| *answered)
            .collect();
        if decided.is_empty() {
            return 0.0;
        }
        decided.iter().filter(|a| !**a).count() as f64 / decided.len() as f64
    }

    /// How many of the most recent probes, older than `grace`, went
    /// unanswered in a row: the death detector's input.
    pub fn unanswered_in_a_row(&self, now: Instant, grace: Duration) -> usize {
        self.window
            .iter()
            .rev()
            .skip_while(|(at, answered)| !answered && now.saturating_duration_since(*at) < grace)
            .take_while(|(_, answered)| !answered)
            .count()
    }

    /// Forgets everything (a relay restart: old samples say nothing).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rtt_smooths_and_jitter_follows_variation() {
        let t0 = Instant::now();
        let mut e = Estimator::default();
        e.sample(ms(40));
        assert_eq!(e.rtt(), Some(ms(40)));
        assert_eq!(e.jitter(), Duration::ZERO);
        for i in 0..200 {
            e.sample(if i % 2 == 0 { ms(30) } else { ms(50) });
        }
        let rtt = e.rtt().expect("rtt");
        assert!(rtt > ms(35) && rtt < ms(45), "{rtt:?}");
        assert!(e.jitter() > ms(15), "{:?}", e.jitter());
        assert_eq!(e.loss(t0), 0.0);
    }

    #[test]
    fn loss_counts_only_decided_probes() {
        let t0 = Instant::now();
        let mut e = Estimator::default();
        for i in 0..10u64 {
            let at = t0 + ms(100 * i);
            e.sent(at);
            if i % 2 == 0 {
                e.answered(at, at + ms(10));
            }
        }
        // At 1.85 s the last one (sent at 900 ms) is still awaited: 4 lost
        // of 9 decided.
        let loss = e.loss(t0 + ms(1850));
        assert!((loss - 4.0 / 9.0).abs() < 1e-9, "{loss}");
        assert_eq!(e.unanswered_in_a_row(t0 + ms(1850), ms(300)), 1);
        assert_eq!(e.unanswered_in_a_row(t0 + ms(1000), ms(300)), 0);
        assert!((e.loss(t0 + ms(5000)) - 0.5).abs() < 1e-9);
    }
}
