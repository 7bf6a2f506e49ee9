//! What each data-plane worker drives: the core's [`Router`], plus the
//! driver side of its [`Command`]s.
//!
//! The router queues a command for every route change when it was asked to
//! ([`RouterConfig::route_commands`], on with the XDP fast path). After
//! every call into the router, a worker that sees commands waiting takes
//! them and applies them to the [`RouteCopy`] (the kernel's route map),
//! with the router's lock released: map syscalls never hold up the other
//! workers' registrations and handshakes. Taking and applying happen under
//! one lock of the copy's, so commands from different workers reach the
//! map in the order the router queued them.
//!
//! Worker 0 also reconciles the copy with the router every
//! [`RECONCILE_INTERVAL`]: the kernel's last-use times go to the router
//! (packets forwarded in the kernel never reach it, and expiry must not take
//! a busy route), and routes the router doesn't know are removed once idle.
//!
//! [`RouterConfig::route_commands`]: lanrage_relay_core::router::RouterConfig::route_commands

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lanrage_relay_core::router::{Decision, LocalSocket, Router};
use lanrage_relay_core::Command;

use crate::backend::Handler;
use crate::stun::StunHandoff;

/// How often worker 0 reconciles the route copy with the router, at most.
/// It walks the whole kernel map, so far less often than the router sweeps
/// its tables; and at most a third of the route idle timeout, so a route
/// busy only in the kernel is reported before userspace would expire it.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

/// A copy of the route table that forwards on its own: the XDP fast path's
/// kernel map (`crate::xdp`). It must never panic; a failure to apply a
/// command is its to count and log (the route keeps working in userspace).
pub trait RouteCopy: Send + Sync {
    /// Applies `commands`, in order.
    fn apply(&self, commands: &[Command]);
    /// Reports to `router` when the copy last forwarded on each route
    /// ([`Router::note_route_used`]), and removes the routes the router
    /// doesn't hold once they have idled for `idle_timeout` (left by an
    /// earlier run, in maps that outlived it).
    fn reconcile(&self, router: &Router, now: Instant, idle_timeout: Duration);
}

/// The route copy shared by all workers, and the lock that orders its commands.
#[derive(Clone)]
pub struct SharedCopy {
    copy: Arc<dyn RouteCopy>,
    /// Held while taking commands from the router and applying them; the
    /// buffer is reused between batches.
    apply: Arc<Mutex<Vec<Command>>>,
    idle_timeout: Duration,
}

impl SharedCopy {
    /// `idle_timeout` is the router's route idle timeout.
    pub fn new(copy: Arc<dyn RouteCopy>, idle_timeout: Duration) -> Self {
        Self {
            copy,
            apply: Arc::new(Mutex::new(Vec::new())),
            idle_timeout,
        }
    }
}

/// One worker's handler.
pub struct Worker {
    router: Router,
    copy: Option<SharedCopy>,
    /// Where STUN answers for the alternate sockets go (`crate::stun`).
    stun: Option<StunHandoff>,
    /// Worker 0's next reconcile; `None` on the others.
    next_reconcile: Option<Instant>,
}

impl Worker {
    /// Worker `index` on `router` (a handle of its own: [`Router::worker`]),
    /// applying commands to `copy` if there is one.
    pub fn new(index: usize, router: Router, copy: Option<SharedCopy>, now: Instant) -> Self {
        let next_reconcile = match &copy {
            Some(copy) if index == 0 => Some(now + reconcile_interval(copy.idle_timeout)),
            _ => None,
        };
        Self {
            router,
            copy,
            stun: None,
            next_reconcile,
        }
    }

    /// Hands STUN answers for the alternate sockets to `handoff`.
    pub fn with_stun(mut self, handoff: Option<StunHandoff>) -> Self {
        self.stun = handoff;
        self
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Applies the commands the router queued, if any (one atomic load when
    /// there are none).
    fn apply_commands(&mut self) {
        let Some(copy) = &self.copy else { return };
        if !self.router.has_commands() {
            return;
        }
        let mut batch = copy.apply.lock().unwrap_or_else(PoisonError::into_inner);
        self.router.take_commands(&mut batch);
        copy.copy.apply(&batch);
        batch.clear();
    }
}

fn reconcile_interval(idle_timeout: Duration) -> Duration {
    RECONCILE_INTERVAL
        .min(idle_timeout / 3)
        .max(Duration::from_secs(1))
}

impl Handler for Worker {
    fn handle(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8]) -> Decision {
        let decision = self.router.handle_at(now, LocalSocket::Primary, src, buf);
        self.apply_commands();
        decision
    }

    fn reply_from(&mut self, socket: LocalSocket, dst: SocketAddr, bytes: &[u8]) {
        match &self.stun {
            Some(handoff) => handoff.send(socket, dst, bytes),
            None => Handler::reply_from(&mut self.router, socket, dst, bytes),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.router.handle_timeout(now);
        self.apply_commands();
        let (Some(copy), Some(next)) = (&self.copy, self.next_reconcile) else {
            return;
        };
        if now >= next {
            copy.copy.reconcile(&self.router, now, copy.idle_timeout);
            self.next_reconcile = Some(now + reconcile_interval(copy.idle_timeout));
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let router = self.router.poll_timeout();
        match (router, self.next_reconcile) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
