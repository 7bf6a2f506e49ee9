//! Token buckets: [`Bucket`] for one budget (a registered client's own), and
//! [`RateLimiter`], per-source-IP buckets in a bounded table.
//!
//! The limiter is keyed by IP, not IP and port: a flood that sprays source
//! ports from one host still shares one bucket. The table is bounded; when it
//! is full and a new source appears, the source that entered the table first
//! is evicted to make room. Refusing newcomers instead would let anyone who
//! fills the table (110k spoofed sources did) lock every new client out; an
//! evicted source only comes back with a full bucket, which for a real client
//! is the state it would have reached by idling anyway.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket's shape: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    /// How long an empty bucket takes to fill: after that, a bucket holds no
    /// information and can be forgotten.
    fn refill_time(self) -> Duration {
        if self.per_second == 0 {
            Duration::MAX
        } else {
            Duration::from_millis(u64::from(self.burst) * 1000 / u64::from(self.per_second))
        }
    }
}

/// One token bucket. Tokens are kept in millitokens so slow refill rates stay
/// exact in integers.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    millitokens: u64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            millitokens: u64::from(limit.burst) * 1000,
            updated: now,
        }
    }

    /// Takes one token; false if there is none.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        let full = u64::from(limit.burst) * 1000;
        let elapsed = now.saturating_duration_since(self.updated);
        let refill =
            (elapsed.as_micros() as u64).saturating_mul(u64::from(limit.per_second)) / 1000;
        self.millitokens = self.millitokens.saturating_add(refill).min(full);
        self.updated = now;
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Whether `take` would succeed now (without taking).
    pub fn has_token(&self, limit: RateLimit, now: Instant) -> bool {
        let mut copy = *self;
        copy.take(limit, now)
    }
}

/// Per-source-IP buckets; see the module doc for the eviction rule.
pub struct RateLimiter {
    limit: RateLimit,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    /// Sources in the order they entered the table: the eviction order. May
    /// hold sources already forgotten (skipped when popped); rebuilt by
    /// `forget_idle` so it never outgrows the table by much.
    arrivals: VecDeque<IpAddr>,
    evictions: u64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, max_sources: usize) -> Self {
        Self {
            limit,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            arrivals: VecDeque::new(),
            evictions: 0,
        }
    }

    /// Takes one token for `source`; false if it has none left.
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        if let Some(bucket) = self.buckets.get_mut(&source) {
            return bucket.take(self.limit, now);
        }
        while self.buckets.len() >= self.max_sources {
            let Some(oldest) = self.arrivals.pop_front() else {
                break;
            };
            if self.buckets.remove(&oldest).is_some() {
                self.evictions += 1;
            }
        }
        let mut bucket = Bucket::full(self.limit, now);
        let allowed = bucket.take(self.limit, now);
        self.buckets.insert(source, bucket);
        self.arrivals.push_back(source);
        allowed
    }

    /// Forgets sources whose buckets would be full by now: they carry no state
    /// worth keeping.
    pub fn forget_idle(&mut self, now: Instant) {
        let refill_time = self.limit.refill_time();
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.updated) < refill_time);
        let buckets = &self.buckets;
        self.arrivals.retain(|ip| buckets.contains_key(ip));
    }

    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }

    /// Sources evicted because the table was full (since start).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));

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
    fn full_table_evicts_the_oldest_source_instead_of_refusing() {
        let t0 = Instant::now();
        let limit = RateLimit {
            per_second: 1,
            burst: 1,
        };
        let mut rl = RateLimiter::new(limit, 2);
        assert!(rl.allow(t0, A));
        assert!(rl.allow(t0, B));
        assert!(!rl.allow(t0, A), "A spent its token");
        assert!(rl.allow(t0, C), "a newcomer to a full table is let in");
        assert_eq!(rl.tracked_sources(), 2);
        assert_eq!(rl.evictions(), 1);
        // A, the oldest, made room; B kept its (empty) bucket.
        assert!(!rl.allow(t0, B), "B was not evicted");
    }

    #[test]
    fn idle_sources_are_swept() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            RateLimit {
                per_second: 10,
                burst: 10,
            },
            4,
        );
        assert!(rl.allow(t0, A));
        rl.forget_idle(t0 + Duration::from_millis(500));
        assert_eq!(rl.tracked_sources(), 1, "A has not refilled yet");
        rl.forget_idle(t0 + Duration::from_secs(1));
        assert_eq!(rl.tracked_sources(), 0);
        assert!(rl.arrivals.is_empty(), "the eviction order is swept too");
    }

    #[test]
    fn a_bucket_refills_but_never_past_its_burst() {
        let t0 = Instant::now();
        let limit = RateLimit {
            per_second: 1,
            burst: 2,
        };
        let mut b = Bucket::full(limit, t0);
        assert!(b.take(limit, t0) && b.take(limit, t0));
        assert!(!b.has_token(limit, t0));
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(limit, later) && b.take(limit, later));
        assert!(!b.take(limit, later));
    }
}
