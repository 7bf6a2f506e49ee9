//! The route table: `(source endpoint, receiver index) → destination`.
//!
//! It is the interface between the slow path (handshakes install and remove
//! routes, under the router core's lock) and the per-packet path (one lookup
//! per transport message, from every data-plane worker at once). Readers take
//! no lock: the table is a `papaya` hash map (lock-free reads, epoch-based
//! reclamation), chosen by measurement against `RwLock<HashMap>` and a sharded
//! map (`bench/benches/route_table.rs`, `docs/benchmarks.md`). A route's
//! last-use time is an atomic in the entry, so forwarding writes nothing shared
//! but that one word.
//!
//! All writes happen under the router core's mutex, so there is never more
//! than one writer; the table itself would tolerate several.
//!
//! The table is the only place routes change, so it is also where they are
//! copied to a [`RouteMirror`] (the XDP fast path's kernel map): every insert,
//! update, rekey and removal here is repeated there, by the same call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanrage_proto::PeerKey;

/// A transport route key: the endpoint a packet comes from and the receiver
/// index it carries. Keying by endpoint too means two clients' indices never
/// collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub src: SocketAddr,
    pub index: u32,
}

/// A copy of the route table kept somewhere else that forwards on its own:
/// the XDP fast path's kernel map (`crate::xdp`).
///
/// [`RouteTable`] calls it on every change, from its single writer. A mirror
/// must never panic and should not block for long. A failure to copy a route
/// is the mirror's to count and log: the route keeps working in userspace.
pub trait RouteMirror: Send + Sync {
    /// `key`'s route now leads to `dst` (new, or changed by roaming).
    fn install(&self, key: &RouteKey, dst: SocketAddr);
    /// `key`'s route is gone.
    fn remove(&self, key: &RouteKey);
    /// How long ago the mirror itself last forwarded a packet on `key`'s
    /// route; `None` if it never did (or doesn't hold the route). Packets it
    /// forwards never reach userspace, so expiry must ask.
    fn idle_for(&self, key: &RouteKey) -> Option<Duration>;
    /// Removes routes the mirror holds but `known` doesn't (left by an
    /// earlier run of the relay, in maps that outlived it) once they have
    /// been idle for `timeout`, so nothing lives in the mirror forever.
    fn sweep(&self, timeout: Duration, known: &dyn Fn(&RouteKey) -> bool);
}

/// One direction of a relayed WireGuard session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: SocketAddr,
    /// The peer that sends on this route, and the one it reaches.
    pub from: PeerKey,
    pub to: PeerKey,
    /// The opposite direction of the same session.
    pub reverse: RouteKey,
}

#[derive(Debug)]
struct Entry {
    route: Route,
    /// Nanoseconds since the table's base instant.
    last_used: AtomicU64,
}

#[derive(Debug)]
pub struct RouteTable {
    map: papaya::HashMap<RouteKey, Entry>,
    base: Instant,
    mirror: Option<Arc<dyn RouteMirror>>,
}

impl std::fmt::Debug for dyn RouteMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMirror")
    }
}

impl RouteTable {
    /// `base` anchors last-use times; any instant at or before the first use.
    pub fn new(base: Instant) -> Self {
        Self::with_mirror(base, None)
    }

    /// A table whose changes are copied to `mirror`.
    pub fn with_mirror(base: Instant, mirror: Option<Arc<dyn RouteMirror>>) -> Self {
        Self {
            map: papaya::HashMap::new(),
            base,
            mirror,
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The per-packet operation: the destination for `key`, marking the route
    /// used at `now`. Lock-free; safe from any number of threads.
    #[inline]
    pub fn forward(&self, key: &RouteKey, now: Instant) -> Option<SocketAddr> {
        let map = self.map.pin();
        let entry = map.get(key)?;
        // Skip the store when the value would not change much: a busy route is
        // read far more often than its idle timer needs updating.
        let stamp = self.nanos(now);
        if stamp.saturating_sub(entry.last_used.load(Ordering::Relaxed)) > 1_000_000 {
            entry.last_used.store(stamp, Ordering::Relaxed);
        }
        Some(entry.route.dst)
    }

    pub fn get(&self, key: &RouteKey) -> Option<Route> {
        self.map.pin().get(key).map(|e| e.route)
    }

    pub fn contains(&self, key: &RouteKey) -> bool {
        self.map.pin().contains_key(key)
    }

    /// Inserts or replaces; returns whether the key was new.
    pub fn insert(&self, key: RouteKey, route: Route, now: Instant) -> bool {
        let entry = Entry {
            route,
            last_used: AtomicU64::new(self.nanos(now)),
        };
        let new = self.map.pin().insert(key, entry).is_none();
        if let Some(mirror) = &self.mirror {
            mirror.install(&key, route.dst);
        }
        new
    }

    /// Replaces a route's contents, keeping its last-use time (roaming).
    pub fn update(&self, key: &RouteKey, change: impl FnOnce(&mut Route)) {
        let map = self.map.pin();
        if let Some(old) = map.get(key) {
            let mut route = old.route;
            change(&mut route);
            let last_used = AtomicU64::new(old.last_used.load(Ordering::Relaxed));
            let dst_changed = route.dst != old.route.dst;
            map.insert(*key, Entry { route, last_used });
            if let (Some(mirror), true) = (&self.mirror, dst_changed) {
                mirror.install(key, route.dst);
            }
        }
    }

    /// Moves a route to a new key, keeping its contents and last-use time.
    pub fn rekey(&self, old: &RouteKey, new: RouteKey) -> Option<Route> {
        let map = self.map.pin();
        let entry = map.remove(old)?;
        let moved = Entry {
            route: entry.route,
            last_used: AtomicU64::new(entry.last_used.load(Ordering::Relaxed)),
        };
        map.insert(new, moved);
        if let Some(mirror) = &self.mirror {
            mirror.remove(old);
            mirror.install(&new, entry.route.dst);
        }
        Some(entry.route)
    }

    pub fn remove(&self, key: &RouteKey) -> Option<Route> {
        let route = self.map.pin().remove(key).map(|e| e.route)?;
        if let Some(mirror) = &self.mirror {
            mirror.remove(key);
        }
        Some(route)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Routes idle for `timeout` whose reverse direction is idle (or gone) too:
    /// a session expires as a whole, and one busy direction keeps both.
    ///
    /// With a mirror, a route is used at the later of its userspace last use
    /// and the mirror's (packets the XDP fast path forwards never reach
    /// userspace). The mirror is asked only about routes idle in userspace,
    /// and a newer time it reports is stored, so a route busy in the kernel
    /// costs one lookup per `timeout`, not one per sweep.
    pub fn idle_pairs(&self, now: Instant, timeout: Duration) -> Vec<RouteKey> {
        let map = self.map.pin();
        let horizon = self.nanos(now);
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle = |key: &RouteKey, e: &Entry| {
            if horizon.saturating_sub(e.last_used.load(Ordering::Relaxed)) < limit {
                return false;
            }
            let Some(kernel_idle) = self.mirror.as_ref().and_then(|m| m.idle_for(key)) else {
                return true;
            };
            let kernel_idle = u64::try_from(kernel_idle.as_nanos()).unwrap_or(u64::MAX);
            if kernel_idle >= limit {
                return true;
            }
            e.last_used
                .fetch_max(horizon.saturating_sub(kernel_idle), Ordering::Relaxed);
            false
        };
        map.iter()
            .filter(|(k, e)| {
                idle(k, e)
                    && map
                        .get(&e.route.reverse)
                        .is_none_or(|r| idle(&e.route.reverse, r))
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Lets the mirror drop routes that this table doesn't hold (see
    /// [`RouteMirror::sweep`]). A no-op without a mirror.
    pub fn sweep_mirror(&self, timeout: Duration) {
        let Some(mirror) = &self.mirror else { return };
        mirror.sweep(timeout, &|key| {
            // The mirror speaks IPv4; the table may hold a v4-mapped address.
            let mapped = match key.src {
                SocketAddr::V4(v4) => Some(RouteKey {
                    src: SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
                    index: key.index,
                }),
                SocketAddr::V6(_) => None,
            };
            self.contains(key) || mapped.is_some_and(|m| self.contains(&m))
        });
    }
}

/// A [`RouteMirror`] test double: it holds the mirrored routes in a map,
/// logs every call, and reports the kernel idle times a test sets.
#[cfg(test)]
pub(crate) mod recording {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Install(RouteKey, SocketAddr),
        Remove(RouteKey),
    }

    #[derive(Debug, Default)]
    pub struct RecordingMirror {
        pub routes: Mutex<HashMap<RouteKey, SocketAddr>>,
        pub calls: Mutex<Vec<Call>>,
        /// What `idle_for` answers, per key (absent: `None`).
        pub idle: Mutex<HashMap<RouteKey, Duration>>,
        pub sweeps: Mutex<usize>,
    }

    impl RecordingMirror {
        pub fn routes(&self) -> HashMap<RouteKey, SocketAddr> {
            self.routes.lock().expect("lock").clone()
        }
        pub fn take_calls(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().expect("lock"))
        }
        pub fn set_idle(&self, key: RouteKey, idle: Duration) {
            self.idle.lock().expect("lock").insert(key, idle);
        }
    }

    impl RouteMirror for RecordingMirror {
        fn install(&self, key: &RouteKey, dst: SocketAddr) {
            self.routes.lock().expect("lock").insert(*key, dst);
            self.calls
                .lock()
                .expect("lock")
                .push(Call::Install(*key, dst));
        }
        fn remove(&self, key: &RouteKey) {
            self.routes.lock().expect("lock").remove(key);
            self.calls.lock().expect("lock").push(Call::Remove(*key));
        }
        fn idle_for(&self, key: &RouteKey) -> Option<Duration> {
            self.idle.lock().expect("lock").get(key).copied()
        }
        fn sweep(&self, timeout: Duration, known: &dyn Fn(&RouteKey) -> bool) {
            *self.sweeps.lock().expect("lock") += 1;
            let idle = self.idle.lock().expect("lock").clone();
            self.routes
                .lock()
                .expect("lock")
                .retain(|k, _| known(k) || idle.get(k).is_some_and(|d| *d < timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::recording::{Call, RecordingMirror};
    use super::*;

    fn key(port: u16, index: u32) -> RouteKey {
        RouteKey {
            src: SocketAddr::from(([192, 0, 2, 1], port)),
            index,
        }
    }

    fn route(reverse: RouteKey) -> Route {
        Route {
            dst: SocketAddr::from(([192, 0, 2, 2], 9)),
            from: PeerKey([1; 32]),
            to: PeerKey([2; 32]),
            reverse,
        }
    }

    #[test]
    fn forward_marks_use_and_pairs_expire_together() {
        let t0 = Instant::now();
        let table = RouteTable::new(t0);
        let (a, b) = (key(1, 10), key(2, 20));
        assert!(table.insert(a, route(b), t0));
        assert!(table.insert(b, route(a), t0));
        let t1 = t0 + Duration::from_secs(100);
        assert!(table.forward(&a, t1).is_some());
        let t2 = t0 + Duration::from_secs(200);
        assert!(table.idle_pairs(t2, Duration::from_secs(180)).is_empty());
        let t3 = t1 + Duration::from_secs(180);
        let mut idle = table.idle_pairs(t3, Duration::from_secs(180));
        idle.sort_by_key(|k| k.index);
        assert_eq!(idle, vec![a, b]);
    }

    #[test]
    fn rekey_and_update_keep_last_use() {
        let t0 = Instant::now();
        let table = RouteTable::new(t0);
        let (a, b) = (key(1, 10), key(2, 20));
        table.insert(a, route(b), t0);
        let moved = key(3, 10);
        assert!(table.rekey(&a, moved).is_some());
        assert!(!table.contains(&a));
        table.update(&moved, |r| r.dst = SocketAddr::from(([192, 0, 2, 3], 4)));
        assert_eq!(
            table.forward(&moved, t0).map(|d| d.port()),
            Some(4),
            "updated destination"
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn readers_on_many_threads_see_a_writer_s_routes() {
        let t0 = Instant::now();
        let table = std::sync::Arc::new(RouteTable::new(t0));
        let writer = {
            let table = std::sync::Arc::clone(&table);
            std::thread::spawn(move || {
                for i in 0..1000u32 {
                    table.insert(key(1, i), route(key(2, i)), t0);
                }
            })
        };
        writer.join().expect("writer");
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let table = std::sync::Arc::clone(&table);
                std::thread::spawn(move || {
                    (0..1000u32)
                        .filter(|i| table.forward(&key(1, *i), t0).is_some())
                        .count()
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().expect("reader"), 1000);
        }
    }

    fn mirrored(t0: Instant) -> (RouteTable, Arc<RecordingMirror>) {
        let mirror = Arc::new(RecordingMirror::default());
        let dyn_mirror: Arc<dyn RouteMirror> = mirror.clone();
        (RouteTable::with_mirror(t0, Some(dyn_mirror)), mirror)
    }

    #[test]
    fn every_change_reaches_the_mirror() {
        let t0 = Instant::now();
        let (table, mirror) = mirrored(t0);
        let (a, b) = (key(1, 10), key(2, 20));
        let dst = route(b).dst;
        table.insert(a, route(b), t0);
        assert_eq!(mirror.take_calls(), vec![Call::Install(a, dst)]);

        // Roaming, the responder side: same key, new destination.
        let roamed = SocketAddr::from(([192, 0, 2, 7], 7));
        table.update(&a, |r| r.dst = roamed);
        assert_eq!(mirror.take_calls(), vec![Call::Install(a, roamed)]);
        // An update that leaves the destination alone costs no map write.
        table.update(&a, |r| r.reverse = key(2, 21));
        assert_eq!(mirror.take_calls(), vec![]);

        // Roaming, the initiator side: new source endpoint, same index.
        let moved = key(3, 10);
        table.rekey(&a, moved);
        assert_eq!(
            mirror.take_calls(),
            vec![Call::Remove(a), Call::Install(moved, roamed)]
        );

        table.remove(&moved);
        assert_eq!(mirror.take_calls(), vec![Call::Remove(moved)]);
        // Removing what isn't there doesn't bother the mirror.
        table.remove(&moved);
        assert_eq!(mirror.take_calls(), vec![]);
        assert!(mirror.routes().is_empty());
    }

    #[test]
    fn expiry_honours_the_mirror_s_last_use() {
        let t0 = Instant::now();
        let (table, mirror) = mirrored(t0);
        let (a, b) = (key(1, 10), key(2, 20));
        table.insert(a, route(b), t0);
        table.insert(b, route(a), t0);
        let timeout = Duration::from_secs(180);
        let t1 = t0 + Duration::from_secs(200);

        // The kernel forwarded B→A 10 s ago: userspace never saw it.
        mirror.set_idle(b, Duration::from_secs(10));
        assert!(table.idle_pairs(t1, timeout).is_empty(), "busy in XDP");
        // The kernel's time was adopted: 170 s later the pair is still live,
        // and the mirror was not asked again for b (only a's `None`).
        mirror.idle.lock().expect("lock").clear();
        assert!(table
            .idle_pairs(t1 + Duration::from_secs(169), timeout)
            .is_empty());
        let mut idle = table.idle_pairs(t1 + Duration::from_secs(170), timeout);
        idle.sort_by_key(|k| k.index);
        assert_eq!(idle, vec![a, b]);

        // A kernel time older than the timeout doesn't keep anything.
        mirror.set_idle(a, Duration::from_secs(500));
        mirror.set_idle(b, Duration::from_secs(180));
        assert_eq!(
            table
                .idle_pairs(t1 + Duration::from_secs(170), timeout)
                .len(),
            2
        );
    }

    #[test]
    fn mirror_sweep_keeps_known_routes_in_either_address_form() {
        let t0 = Instant::now();
        let (table, mirror) = mirrored(t0);
        let v4 = key(1, 10);
        let mapped = RouteKey {
            src: SocketAddr::from(([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0202], 5)),
            index: 11,
        };
        table.insert(v4, route(key(2, 20)), t0);
        table.insert(mapped, route(key(2, 21)), t0);
        let dst = route(v4).dst;
        let (orphan, busy_orphan) = (key(8, 80), key(9, 90));
        let mapped_as_v4 = RouteKey {
            src: SocketAddr::from(([192, 0, 2, 2], 5)),
            index: 11,
        };
        for k in [orphan, busy_orphan, mapped_as_v4] {
            mirror.routes.lock().expect("lock").insert(k, dst);
            mirror.set_idle(k, Duration::from_secs(1000));
        }
        mirror.set_idle(busy_orphan, Duration::from_secs(1));
        table.sweep_mirror(Duration::from_secs(180));
        let left = mirror.routes();
        assert!(left.contains_key(&v4));
        assert!(left.contains_key(&mapped_as_v4), "known as v4-mapped");
        assert!(left.contains_key(&busy_orphan), "still forwarding in XDP");
        assert!(!left.contains_key(&orphan), "idle and unknown");
    }
}
