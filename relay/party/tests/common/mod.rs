//! Helpers shared by the party service's tests: a service on a fresh file in
//! a temporary directory, keys, a virtual clock, and one-op batches.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lanrage_relay_party::{
    CodeOptions, Done, JoinCode, JoinSecret, Key, Now, Op, Outcome, PartyConfig, PartyId,
    PartyService, RateLimit, RelayName, Roster,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The unix time tests start at (any value works; this one is readable).
pub const T0_UNIX: u64 = 1_700_000_000;

pub fn relay_name() -> RelayName {
    RelayName::new("test-relay").expect("a valid relay name")
}

/// Limits high enough that tests not about rate limiting never meet them.
pub fn config() -> PartyConfig {
    let mut c = PartyConfig::new(relay_name());
    c.join_per_source = RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    c.join_total = c.join_per_source;
    c
}

pub struct Fixture {
    pub svc: PartyService,
    pub dir: tempfile::TempDir,
    pub clock: Clock,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: PartyConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let svc = PartyService::open(
            dir.path().join("parties.db"),
            config,
            StdRng::seed_from_u64(7),
        )
        .expect("a fresh party database opens");
        Self {
            svc,
            dir,
            clock: Clock::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("parties.db")
    }

    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// One op in a batch of its own.
    pub fn one(&mut self, op: Op) -> Outcome {
        let now = self.now();
        let mut out = self.svc.apply(&[op], now);
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    /// Creates a party owned by `owner`; returns its id and code.
    pub fn create(&mut self, owner: Key, name: &str) -> (PartyId, JoinCode) {
        self.create_with(owner, name, CodeOptions::default())
    }

    pub fn create_with(
        &mut self,
        owner: Key,
        name: &str,
        code: CodeOptions,
    ) -> (PartyId, JoinCode) {
        match self.one(create(owner, name, code)) {
            Ok(Done::Created { roster, code }) => (roster.party_id, code),
            other => panic!("create: {other:?}"),
        }
    }

    pub fn join(&mut self, key: Key, code: &JoinCode) -> Outcome {
        self.one(join(key, &code.secret))
    }

    /// Joins and returns the roster; panics on refusal.
    pub fn joined(&mut self, key: Key, code: &JoinCode) -> Roster {
        match self.join(key, code) {
            Ok(Done::Joined { roster, .. }) => std::sync::Arc::unwrap_or_clone(roster),
            other => panic!("join: {other:?}"),
        }
    }

    pub fn roster(&self, party: PartyId) -> Option<Roster> {
        self.svc.roster(party).expect("roster reads")
    }
}

/// A virtual clock: unix seconds and a monotonic instant that move together.
#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
    elapsed: Duration,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    pub fn now(&self) -> Now {
        Now {
            unix_secs: T0_UNIX + self.elapsed.as_secs(),
            mono: self.start + self.elapsed,
        }
    }
}

pub fn key(n: u32) -> Key {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k[31] = 0x5a;
    k
}

pub fn source(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xC000_0200 + n))
}

pub fn create(owner: Key, name: &str, code: CodeOptions) -> Op {
    Op::Create {
        owner,
        party_name: name.into(),
        member_name: format!("owner of {name}").chars().take(32).collect(),
        code,
    }
}

pub fn join(key: Key, secret: &JoinSecret) -> Op {
    join_from(key, secret, source(1))
}

pub fn join_from(key: Key, secret: &JoinSecret, source: IpAddr) -> Op {
    Op::Join {
        key,
        secret: *secret,
        member_name: format!("m{:02x}{:02x}", key[2], key[3]),
        source,
    }
}

/// Every roster invariant that holds after any operation.
pub fn check_roster(r: &Roster) {
    let mut ips = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for m in &r.members {
        let [a, b, _, d] = m.ip.octets();
        assert_eq!((a, b), (10, 66), "{:?}", m.ip);
        assert!(
            d != 0 && d != 255,
            "{} is not a host address we hand out",
            m.ip
        );
        assert!(ips.insert(m.ip), "{} twice in {r:?}", m.ip);
        assert!(keys.insert(m.key), "a key twice in {r:?}");
    }
    assert!(r.members.len() <= lanrage_relay_party::MAX_MEMBERS);
    assert!(
        r.members.is_empty() || r.members.iter().filter(|m| m.owner).count() == 1,
        "one owner: {r:?}"
    );
}
