//! The route table: `(source endpoint, receiver index) → destination`.
//!
//! It is the interface between the slow path (handshakes install and remove
//! routes) and the per-packet path (one lookup per transport message). The
//! router owns it; its own module keeps the per-packet operation (`forward`)
//! small enough to benchmark and replace (a concurrent table for multi-worker
//! backends, a BPF map mirror for XDP) without touching routing logic.

use std::collections::HashMap;
use std::net::SocketAddr;
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

/// One direction of a relayed WireGuard session.
#[derive(Debug, Clone)]
pub struct Route {
    pub dst: SocketAddr,
    /// The peer that sends on this route, and the one it reaches.
    pub from: PeerKey,
    pub to: PeerKey,
    /// The opposite direction of the same session.
    pub reverse: RouteKey,
    pub last_used: Instant,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<RouteKey, Route>,
}

impl RouteTable {
    /// The per-packet operation: the destination for `key`, marking the route
    /// used at `now`.
    #[inline]
    pub fn forward(&mut self, key: &RouteKey, now: Instant) -> Option<SocketAddr> {
        let route = self.routes.get_mut(key)?;
        route.last_used = now;
        Some(route.dst)
    }

    pub fn get(&self, key: &RouteKey) -> Option<&Route> {
        self.routes.get(key)
    }

    pub fn get_mut(&mut self, key: &RouteKey) -> Option<&mut Route> {
        self.routes.get_mut(key)
    }

    pub fn contains(&self, key: &RouteKey) -> bool {
        self.routes.contains_key(key)
    }

    /// Inserts or replaces; returns the replaced route.
    pub fn insert(&mut self, key: RouteKey, route: Route) -> Option<Route> {
        self.routes.insert(key, route)
    }

    pub fn remove(&mut self, key: &RouteKey) -> Option<Route> {
        self.routes.remove(key)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Routes idle for `timeout` whose reverse direction is idle (or gone) too:
    /// a session expires as a whole, and one busy direction keeps both.
    pub fn idle_pairs(&self, now: Instant, timeout: Duration) -> Vec<RouteKey> {
        let idle = |r: &Route| now.saturating_duration_since(r.last_used) >= timeout;
        self.routes
            .iter()
            .filter(|(_, r)| idle(r) && self.routes.get(&r.reverse).is_none_or(idle))
            .map(|(k, _)| *k)
            .collect()
    }
}
