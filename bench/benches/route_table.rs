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
//! 100,000 routes; keys visited in a scrambled order. Results and the choice
//! are in `docs/benchmarks.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lanrage_proto::PeerKey;
use lanrage_relay::route_table::{Route, RouteKey, RouteTable};

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
    fn lookup(&self, key: &RouteKey) -> Option<SocketAddr>;
    fn insert(&self, key: RouteKey, route: Route);
    fn remove(&self, key: &RouteKey);
}

impl Table for RouteTable {
    fn lookup(&self, key: &RouteKey) -> Option<SocketAddr> {
        self.forward(key, Instant::now())
    }
    fn insert(&self, key: RouteKey, route: Route) {
        RouteTable::insert(self, key, route, Instant::now());
    }
    fn remove(&self, key: &RouteKey) {
        RouteTable::remove(self, key);
    }
}

impl Table for RwLock<HashMap<RouteKey, Route>> {
    fn lookup(&self, key: &RouteKey) -> Option<SocketAddr> {
        self.read().ok()?.get(key).map(|r| r.dst)
    }
    fn insert(&self, key: RouteKey, route: Route) {
        if let Ok(mut map) = self.write() {
            map.insert(key, route);
        }
    }
    fn remove(&self, key: &RouteKey) {
        if let Ok(mut map) = self.write() {
            map.remove(key);
        }
    }
}

impl Table for Mutex<HashMap<RouteKey, Route>> {
    fn lookup(&self, key: &RouteKey) -> Option<SocketAddr> {
        self.lock().ok()?.get(key).map(|r| r.dst)
    }
    fn insert(&self, key: RouteKey, route: Route) {
        if let Ok(mut map) = self.lock() {
            map.insert(key, route);
        }
    }
    fn remove(&self, key: &RouteKey) {
        if let Ok(mut map) = self.lock() {
            map.remove(key);
        }
    }
}

impl Table for dashmap::DashMap<RouteKey, Route> {
    fn lookup(&self, key: &RouteKey) -> Option<SocketAddr> {
        self.get(key).map(|r| r.dst)
    }
    fn insert(&self, key: RouteKey, route: Route) {
        dashmap::DashMap::insert(self, key, route);
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
                for _ in 0..iters {
                    i = i.wrapping_add(7_919) % ROUTES;
                    black_box(table.lookup(&key(i)));
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
    let rwlock = filled(RwLock::new(HashMap::new()));
    let mutex = filled(Mutex::new(HashMap::new()));
    let dashmap = filled(dashmap::DashMap::new());
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
