//! Which concurrent map should hold the route table? Data-plane workers read
//! it on every transport packet while the slow path writes at handshake rates.
//! This bench measures the per-lookup cost for 1 and 2 reader threads with a
//! writer inserting and removing routes at a steady 10,000 writes/s, for:
//!
//! - `papaya`: lock-free reads (what `RouteTable` uses),
//! - `rwlock`: `std::sync::RwLock<HashMap>` (readers share a lock word),
//! - `dashmap`: a sharded map of `RwLock`s,
//! - `mutex`: `std::sync::Mutex<HashMap>`, the naive baseline.
//!
//! Every candidate does what the relay does per transport packet: find the
//! destination and mark the route used (an atomic in the entry, stored only
//! when it moved by more than 1 ms, as `RouteTable::forward` does), with
//! `now` read once per 64 lookups, as a worker reads it once per batch.
//!
//! 100,000 routes; keys visited in a scrambled order. Results and the choice
//! are in `docs/benchmarks.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lanrage_proto::PeerKey;
use lanrage_relay_core::command::CommandQueue;
use lanrage_relay_core::route_table::{Route, RouteKey, RouteTable};

const ROUTES: u32 = 100_000;
const WRITES_PER_SECOND: u64 = 10_000;

fn key(i: u32) -> RouteKey {
    let mixed = i.wrapping_mul(0x9E37_79B9);
    RouteKey {
        src: SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(0x7F00_0000 | (mixed >> 8)),
            1024 + (i % 60_000) as u16,
        )),
        index: i,
    }
}

fn route(i: u32) -> Route {
    Route {
        dst: key(i ^ 1).src,
        from: PeerKey([1; 32]),
        to: PeerKey([2; 32]),
        reverse: key(i ^ 1),
    }
}

/// The operations every candidate offers.
trait Table: Send + Sync + 'static {
    fn lookup(&self, key: &RouteKey, now: Instant) -> Option<SocketAddr>;
    fn insert(&self, key: RouteKey, route: Route);
    fn remove(&self, key: &RouteKey);
}

impl Table for RouteTable {
    fn lookup(&self, key: &RouteKey, now: Instant) -> Option<SocketAddr> {
        self.forward(key, now)
    }
    fn insert(&self, key: RouteKey, route: Route) {
        RouteTable::insert(
            self,
            key,
            route,
            Instant::now(),
            &mut CommandQueue::default(),
        );
    }
    fn remove(&self, key: &RouteKey) {
        RouteTable::remove(self, key, &mut CommandQueue::default());
    }
}

/// A route with its last-use time, as `RouteTable` keeps it.
struct Timed {
    route: Route,
    last_used: AtomicU64,
}

/// The clock base of every `Timed` entry.
static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn nanos(now: Instant) -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

impl Timed {
    fn new(route: Route) -> Self {
        Self {
            route,
            last_used: AtomicU64::new(nanos(Instant::now())),
        }
    }

    /// `RouteTable::forward`'s work once the entry is found.
    fn touch(&self, now: Instant) -> SocketAddr {
        let stamp = nanos(now);
        if stamp.saturating_sub(self.last_used.load(Ordering::Relaxed)) > 1_000_000 {
            self.last_used.store(stamp, Ordering::Relaxed);
        }
        self.route.dst
    }
}

impl Table for RwLock<HashMap<RouteKey, Timed>> {
    fn lookup(&self, key: &RouteKey, now: Instant) -> Option<SocketAddr> {
        self.read().ok()?.get(key).map(|e| e.touch(now))
    }
    fn insert(&self, key: RouteKey, route: Route) {
        if let Ok(mut map) = self.write() {
            map.insert(key, Timed::new(route));
        }
    }
    fn remove(&self, key: &RouteKey) {
        if let Ok(mut map) = self.write() {
            map.remove(key);
        }
    }
}

impl Table for Mutex<HashMap<RouteKey, Timed>> {
    fn lookup(&self, key: &RouteKey, now: Instant) -> Option<SocketAddr> {
        self.lock().ok()?.get(key).map(|e| e.touch(now))
    }
    fn insert(&self, key: RouteKey, route: Route) {
        if let Ok(mut map) = self.lock() {
            map.insert(key, Timed::new(route));
        }
    }
    fn remove(&self, key: &RouteKey) {
        if let Ok(mut map) = self.lock() {
            map.remove(key);
        }
    }
}

impl Table for dashmap::DashMap<RouteKey, Timed> {
    fn lookup(&self, key: &RouteKey, now: Instant) -> Option<SocketAddr> {
        self.get(key).map(|e| e.touch(now))
    }
    fn insert(&self, key: RouteKey, route: Route) {
        dashmap::DashMap::insert(self, key, Timed::new(route));
    }
    fn remove(&self, key: &RouteKey) {
        dashmap::DashMap::remove(self, key);
    }
}

fn filled<T: Table>(table: T) -> Arc<T> {
    for i in 0..ROUTES {
        table.insert(key(i), route(i));
    }
    Arc::new(table)
}

/// `readers` threads each do `iters` lookups while a writer churns routes
/// above the read range; returns the slowest reader's time, so the figure is
/// per lookup per thread.
fn run<T: Table>(table: &Arc<T>, readers: usize, iters: u64) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (table, stop) = (Arc::clone(table), Arc::clone(&stop));
        std::thread::spawn(move || {
            let period = Duration::from_nanos(1_000_000_000 / WRITES_PER_SECOND);
            let mut next = Instant::now();
            let mut i = ROUTES;
            while !stop.load(Ordering::Relaxed) {
                table.insert(key(i), route(i));
                table.remove(&key(i));
                i = i.wrapping_add(1).max(ROUTES);
                next += period;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    let start = Arc::new(Barrier::new(readers));
    let threads: Vec<_> = (0..readers)
        .map(|r| {
            let (table, start) = (Arc::clone(table), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                let mut i = (r as u32).wrapping_mul(7_919);
                let mut now = Instant::now();
                for n in 0..iters {
                    if n % 64 == 0 {
                        now = Instant::now();
                    }
                    i = i.wrapping_add(7_919) % ROUTES;
                    black_box(table.lookup(&key(i), now));
                }
                began.elapsed()
            })
        })
        .collect();
    let slowest = threads
        .into_iter()
        .map(|t| t.join().expect("reader"))
        .max()
        .unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    slowest
}

fn concurrent_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_table_concurrent_lookup");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    let papaya = filled(RouteTable::new(Instant::now()));
    let rwlock = filled(RwLock::new(HashMap::<RouteKey, Timed>::new()));
    let mutex = filled(Mutex::new(HashMap::<RouteKey, Timed>::new()));
    let dashmap = filled(dashmap::DashMap::<RouteKey, Timed>::new());
    for readers in [1usize, 2] {
        group.bench_with_input(BenchmarkId::new("papaya", readers), &readers, |b, &r| {
            b.iter_custom(|iters| run(&papaya, r, iters))
        });
        group.bench_with_input(BenchmarkId::new("rwlock", readers), &readers, |b, &r| {
            b.iter_custom(|iters| run(&rwlock, r, iters))
        });
        group.bench_with_input(BenchmarkId::new("dashmap", readers), &readers, |b, &r| {
            b.iter_custom(|iters| run(&dashmap, r, iters))
        });
        group.bench_with_input(BenchmarkId::new("mutex", readers), &readers, |b, &r| {
            b.iter_custom(|iters| run(&mutex, r, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, concurrent_lookup);
criterion_main!(benches);
