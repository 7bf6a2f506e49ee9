//! The join gate: rate limits checked before a join touches the database.
//!
//! Two token buckets, both must have a token: one per source (in the bounded
//! table of `lanrage_relay_core::rate_limit`, the router's own), and one for
//! all joins. The per-source one makes guessing from one address slow; the
//! total one bounds the database work a flood from many (spoofable) sources
//! can cause. An IPv6 source counts by its /64, since one host usually holds
//! a whole /64 and could otherwise take a fresh bucket per address.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use lanrage_relay_core::rate_limit::{Bucket, RateLimit, RateLimiter};

use crate::PartyConfig;

/// Which limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Source,
    Total,
}

pub struct JoinGate {
    per_source: RateLimiter,
    total_limit: RateLimit,
    total: Option<Bucket>,
}

impl JoinGate {
    pub fn new(config: &PartyConfig) -> Self {
        Self {
            per_source: RateLimiter::new(config.join_per_source, config.rate_limit_sources),
            total_limit: config.join_total,
            total: None,
        }
    }

    /// Takes a token for one join attempt from `source`. The per-source
    /// bucket is asked first, so a source over its own limit spends nothing
    /// of everyone's.
    pub fn admit(&mut self, now: Instant, source: IpAddr) -> Result<(), Limited> {
        if !self.per_source.allow(now, source_key(source)) {
            return Err(Limited::Source);
        }
        let limit = self.total_limit;
        let total = self.total.get_or_insert_with(|| Bucket::full(limit, now));
        if !total.take(limit, now) {
            return Err(Limited::Total);
        }
        Ok(())
    }

    pub fn sweep(&mut self, now: Instant) {
        self.per_source.forget_idle(now);
    }

    pub fn tracked_sources(&self) -> usize {
        self.per_source.tracked_sources()
    }

    pub fn evictions(&self) -> u64 {
        self.per_source.evictions()
    }
}

/// The bucket a source counts against: IPv4 (also IPv4-mapped IPv6) by
/// address, IPv6 by /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_share_a_bucket_per_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
