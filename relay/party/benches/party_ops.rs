//! Party operations per second from one thread, durability on (WAL,
//! `synchronous = FULL`: every batch's commit waits for its fsync), on a real
//! file in the temporary directory.
//!
//! - `join_or_leave/63`: a batch of 63 joins into one party, then a batch of
//!   the same 63 leaving, alternately (rejoins reuse the reservations);
//! - `set_name/64`: a batch of 64 renames in a full party;
//! - `join_or_leave/1`: the same with one op per batch, to show what group
//!   commit buys (one fsync per op).
//!
//! Run briefly on a shared machine:
//! `cargo bench -p lanrage-relay-party --bench party_ops -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lanrage_relay_party::{
    CodeOptions, Done, JoinCode, Key, Now, Op, PartyConfig, PartyId, PartyService, RateLimit,
    RelayName, MAX_MEMBERS,
};

fn key(n: u32) -> Key {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k
}

struct Setup {
    svc: PartyService,
    party: PartyId,
    code: JoinCode,
    _dir: tempfile::TempDir,
    start: Instant,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = PartyConfig::new(RelayName::new("bench").expect("a relay name"));
        // The rate limits are not what is measured.
        let unlimited = RateLimit {
            per_second: u32::MAX,
            burst: u32::MAX,
        };
        config.join_per_source = unlimited;
        config.join_total = unlimited;
        let mut svc = PartyService::open(dir.path().join("bench.db"), config, rand::rngs::OsRng)
            .expect("the bench database opens");
        let start = Instant::now();
        let now = Now {
            unix_secs: 1_700_000_000,
            mono: start,
        };
        let created = svc.apply(
            &[Op::Create {
                owner: key(u32::MAX),
                party_name: "bench".into(),
                member_name: "owner".into(),
                code: CodeOptions::default(),
            }],
            now,
        );
        let Some(Ok(Done::Created { roster, code })) = created.into_iter().next() else {
            panic!("create failed");
        };
        Self {
            svc,
            party: roster.party_id,
            code,
            _dir: dir,
            start,
        }
    }

    fn now(&self) -> Now {
        let elapsed = self.start.elapsed();
        Now {
            unix_secs: 1_700_000_000 + elapsed.as_secs(),
            mono: self.start + elapsed,
        }
    }

    fn joins(&self, keys: std::ops::Range<u32>) -> Vec<Op> {
        keys.map(|n| Op::Join {
            key: key(n),
            secret: self.code.secret,
            member_name: format!("player {n}"),
            source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, (n % 250) as u8 + 1)),
        })
        .collect()
    }

    fn leaves(&self, keys: std::ops::Range<u32>) -> Vec<Op> {
        keys.map(|n| Op::Leave {
            key: key(n),
            party: self.party,
        })
        .collect()
    }
}

fn join_or_leave(c: &mut Criterion) {
    let mut group = c.benchmark_group("join_or_leave");
    for batch in [MAX_MEMBERS as u32 - 1, 1] {
        let mut s = Setup::new();
        let joins = s.joins(0..batch);
        let leaves = s.leaves(0..batch);
        let mut joining = true;
        group.throughput(Throughput::Elements(u64::from(batch)));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| {
                let ops = if joining { &joins } else { &leaves };
                joining = !joining;
                let now = s.now();
                let out = s.svc.apply(ops, now);
                assert!(out.iter().all(Result::is_ok), "{:?}", out.first());
                black_box(out)
            })
        });
    }
    group.finish();
}

fn set_name(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_name");
    let mut s = Setup::new();
    let now = s.now();
    let joins = s.joins(0..MAX_MEMBERS as u32 - 1);
    assert!(s.svc.apply(&joins, now).iter().all(Result::is_ok));
    let mut round = 0u64;
    group.throughput(Throughput::Elements(MAX_MEMBERS as u64));
    group.bench_function(BenchmarkId::from_parameter(MAX_MEMBERS), |b| {
        b.iter(|| {
            round += 1;
            let ops: Vec<Op> = (0..MAX_MEMBERS as u32 - 1)
                .map(|n| Op::SetMemberName {
                    key: key(n),
                    party: s.party,
                    name: format!("p{n} r{round}"),
                })
                .chain(std::iter::once(Op::RenameParty {
                    owner: key(u32::MAX),
                    party: s.party,
                    name: format!("round {round}"),
                }))
                .collect();
            let now = s.now();
            let out = s.svc.apply(&ops, now);
            assert!(out.iter().all(Result::is_ok));
            black_box(out)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = join_or_leave, set_name
}
criterion_main!(benches);
