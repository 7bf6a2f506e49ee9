//! Registration and probe timestamps: Unix nanoseconds, derived from the
//! engine's `now` and the wall-clock time the driver gave at start, and
//! strictly increasing even if two are taken at the same `now`.

use std::time::Instant;

#[derive(Debug)]
pub struct Timestamps {
    started: Instant,
    unix_nanos_at_start: u64,
    last: u64,
}

impl Timestamps {
    pub fn new(started: Instant, unix_nanos_at_start: u64) -> Self {
        Self {
            started,
            unix_nanos_at_start,
            last: 0,
        }
    }

    /// The next timestamp at `now`: above every one handed out before.
    pub fn next(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started).as_nanos();
        let wall = self
            .unix_nanos_at_start
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        self.last = wall.max(self.last.saturating_add(1));
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn strictly_increasing_at_one_instant_and_over_time() {
        let t0 = Instant::now();
        let mut ts = Timestamps::new(t0, 1_000);
        assert_eq!(ts.next(t0), 1_000);
        assert_eq!(ts.next(t0), 1_001);
        assert_eq!(ts.next(t0 + Duration::from_nanos(500)), 1_500);
        // A `now` before the start (never given, but harmless) can't go back.
        assert_eq!(ts.next(t0), 1_501);
    }
}
