//! Per-source-IP token buckets with a bounded table.
//!
//! Keyed by IP, not IP and port: a flood that sprays source ports from one host
//! still shares one bucket. The table is bounded; when it is full and a new
//! source appears, the newcomer is refused (counted by the caller) until the
//! periodic sweep forgets sources whose buckets have refilled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in millitokens, so slow refill rates stay exact in integers.
    millitokens: u64,
    updated: Instant,
}

pub struct RateLimiter {
    limit: RateLimit,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, max_sources: usize) -> Self {
        Self {
            limit,
            max_sources,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `source`; false if it has none left.
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        let full = u64::from(self.limit.burst) * 1000;
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            return false;
        }
        let per_second = u64::from(self.limit.per_second);
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            millitokens: full,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated);
        let refill = (elapsed.as_micros() as u64).saturating_mul(per_second) / 1000;
        bucket.millitokens = bucket.millitokens.saturating_add(refill).min(full);
        bucket.updated = now;
        if bucket.millitokens >= 1000 {
            bucket.millitokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose buckets would be full by now: they carry no state
    /// worth keeping.
    pub fn forget_idle(&mut self, now: Instant) {
        let limit = self.limit;
        let refill_time = if limit.per_second == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(u64::from(limit.burst) * 1000 / u64::from(limit.per_second))
        };
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.updated) < refill_time);
    }

    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            RateLimit {
                per_second: 2,
                burst: 3,
            },
            10,
        );
        assert!((0..3).all(|_| rl.allow(t0, A)));
        assert!(!rl.allow(t0, A));
        assert!(rl.allow(t0, B), "buckets are per source");
        assert!(!rl.allow(t0 + Duration::from_millis(400), A));
        assert!(rl.allow(t0 + Duration::from_millis(500), A));
    }

    #[test]
    fn table_is_bounded_and_swept() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            RateLimit {
                per_second: 10,
                burst: 10,
            },
            1,
        );
        assert!(rl.allow(t0, A));
        assert!(!rl.allow(t0, B), "full table refuses newcomers");
        rl.forget_idle(t0 + Duration::from_millis(500));
        assert_eq!(rl.tracked_sources(), 1, "A has not refilled yet");
        rl.forget_idle(t0 + Duration::from_secs(1));
        assert_eq!(rl.tracked_sources(), 0);
        assert!(rl.allow(t0 + Duration::from_secs(1), B));
    }
}
