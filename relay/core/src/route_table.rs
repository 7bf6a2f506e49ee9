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
//! The table is the only place routes change, so it is also where the
//! changes become [`Command`]s for a driver that keeps a copy that forwards
//! on its own (the XDP fast path's kernel map): every insert, destination
//! change, rekey and removal queues its command, in the same call. The
//! driver tells the table when its copy last forwarded on a route
//! ([`RouteTable::note_used`]), since those packets never reach userspace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lanrage_proto::PeerKey;

use crate::command::{Command, CommandQueue};

/// A transport route key: the endpoint a packet comes from and the receiver
/// index it carries. Keying by endpoint too means two clients' indices never
/// collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub src: SocketAddr,
    pub index: u32,
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
}

impl RouteTable {
    /// `base` anchors last-use times; any instant at or before the first use.
    pub fn new(base: Instant) -> Self {
        Self {
            map: papaya::HashMap::new(),
            base,
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
    pub fn insert(
        &self,
        key: RouteKey,
        route: Route,
        now: Instant,
        commands: &mut CommandQueue,
    ) -> bool {
        let entry = Entry {
            route,
            last_used: AtomicU64::new(self.nanos(now)),
        };
        let new = self.map.pin().insert(key, entry).is_none();
        commands.push(Command::InstallRoute {
            key,
            dst: route.dst,
        });
        new
    }

    /// Replaces a route's contents, keeping its last-use time (roaming).
    pub fn update(
        &self,
        key: &RouteKey,
        commands: &mut CommandQueue,
        change: impl FnOnce(&mut Route),
    ) {
        let map = self.map.pin();
        if let Some(old) = map.get(key) {
            let mut route = old.route;
            change(&mut route);
            let last_used = AtomicU64::new(old.last_used.load(Ordering::Relaxed));
            let dst_changed = route.dst != old.route.dst;
            map.insert(*key, Entry { route, last_used });
            if dst_changed {
                commands.push(Command::InstallRoute {
                    key: *key,
                    dst: route.dst,
                });
            }
        }
    }

    /// Moves a route to a new key, keeping its contents and last-use time.
    pub fn rekey(
        &self,
        old: &RouteKey,
        new: RouteKey,
        commands: &mut CommandQueue,
    ) -> Option<Route> {
        let map = self.map.pin();
        let entry = map.remove(old)?;
        let moved = Entry {
            route: entry.route,
            last_used: AtomicU64::new(entry.last_used.load(Ordering::Relaxed)),
        };
        map.insert(new, moved);
        commands.push(Command::RemoveRoute { key: *old });
        commands.push(Command::InstallRoute {
            key: new,
            dst: entry.route.dst,
        });
        Some(entry.route)
    }

    pub fn remove(&self, key: &RouteKey, commands: &mut CommandQueue) -> Option<Route> {
        let route = self.map.pin().remove(key).map(|e| e.route)?;
        commands.push(Command::RemoveRoute { key: *key });
        Some(route)
    }

    /// Marks `key`'s route used at `at`, if that is later than what the
    /// table knows: the driver's report that its own copy (the XDP map)
    /// forwarded on the route. Lock-free, like [`RouteTable::forward`].
    /// Returns whether the table holds the route.
    pub fn note_used(&self, key: &RouteKey, at: Instant) -> bool {
        let map = self.map.pin();
        let Some(entry) = map.get(key) else {
            return false;
        };
        entry.last_used.fetch_max(self.nanos(at), Ordering::Relaxed);
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Routes idle for `timeout` whose reverse direction is idle (or gone) too:
    /// a session expires as a whole, and one busy direction keeps both.
    pub fn idle_pairs(&self, now: Instant, timeout: Duration) -> Vec<RouteKey> {
        let map = self.map.pin();
        let horizon = self.nanos(now);
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle = |e: &Entry| horizon.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= limit;
        map.iter()
            .filter(|(_, e)| idle(e) && map.get(&e.route.reverse).is_none_or(idle))
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
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
        assert!(table.insert(a, route(b), t0, &mut recording()));
        assert!(table.insert(b, route(a), t0, &mut recording()));
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
        table.insert(a, route(b), t0, &mut recording());
        let moved = key(3, 10);
        assert!(table.rekey(&a, moved, &mut recording()).is_some());
        assert!(!table.contains(&a));
        table.update(&moved, &mut recording(), |r| {
            r.dst = SocketAddr::from(([192, 0, 2, 3], 4))
        });
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
                    table.insert(
                        key(1, i),
                        route(key(2, i)),
                        t0,
                        &mut CommandQueue::default(),
                    );
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

    fn recording() -> CommandQueue {
        CommandQueue::new(true)
    }

    fn taken(commands: &mut CommandQueue) -> Vec<Command> {
        let mut out = Vec::new();
        commands.drain_into(&mut out);
        out
    }

    #[test]
    fn every_change_queues_its_command() {
        let t0 = Instant::now();
        let table = RouteTable::new(t0);
        let mut commands = recording();
        let (a, b) = (key(1, 10), key(2, 20));
        let dst = route(b).dst;
        table.insert(a, route(b), t0, &mut commands);
        assert_eq!(
            taken(&mut commands),
            vec![Command::InstallRoute { key: a, dst }]
        );

        // Roaming, the responder side: same key, new destination.
        let roamed = SocketAddr::from(([192, 0, 2, 7], 7));
        table.update(&a, &mut commands, |r| r.dst = roamed);
        assert_eq!(
            taken(&mut commands),
            vec![Command::InstallRoute {
                key: a,
                dst: roamed
            }]
        );
        // An update that leaves the destination alone costs no map write.
        table.update(&a, &mut commands, |r| r.reverse = key(2, 21));
        assert_eq!(taken(&mut commands), vec![]);

        // Roaming, the initiator side: new source endpoint, same index.
        let moved = key(3, 10);
        table.rekey(&a, moved, &mut commands);
        assert_eq!(
            taken(&mut commands),
            vec![
                Command::RemoveRoute { key: a },
                Command::InstallRoute {
                    key: moved,
                    dst: roamed
                }
            ]
        );

        table.remove(&moved, &mut commands);
        assert_eq!(
            taken(&mut commands),
            vec![Command::RemoveRoute { key: moved }]
        );
        // Removing what isn't there queues nothing.
        table.remove(&moved, &mut commands);
        assert_eq!(taken(&mut commands), vec![]);
    }

    #[test]
    fn expiry_honours_the_driver_s_last_use() {
        let t0 = Instant::now();
        let table = RouteTable::new(t0);
        let mut commands = recording();
        let (a, b) = (key(1, 10), key(2, 20));
        table.insert(a, route(b), t0, &mut commands);
        table.insert(b, route(a), t0, &mut commands);
        let timeout = Duration::from_secs(180);
        let t1 = t0 + Duration::from_secs(200);

        // The kernel forwarded B→A 10 s ago: userspace never saw it.
        assert!(table.note_used(&b, t1 - Duration::from_secs(10)));
        assert!(table.idle_pairs(t1, timeout).is_empty(), "busy in XDP");
        assert!(table
            .idle_pairs(t1 + Duration::from_secs(169), timeout)
            .is_empty());
        let mut idle = table.idle_pairs(t1 + Duration::from_secs(170), timeout);
        idle.sort_by_key(|k| k.index);
        assert_eq!(idle, vec![a, b]);

        // An older report never moves a route's last use back.
        assert!(table.note_used(&b, t0));
        assert_eq!(
            table
                .idle_pairs(t1 + Duration::from_secs(169), timeout)
                .len(),
            0
        );
        // A route the table doesn't hold: nothing to mark.
        assert!(!table.note_used(&key(9, 90), t1));
    }
}
