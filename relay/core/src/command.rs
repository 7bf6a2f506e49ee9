//! Side effects the core asks its driver to carry out, firezone-relay style:
//! the core queues them under its lock and the driver applies them after
//! the lock is released, so no syscall ever runs while the router is held.
//!
//! Today every command is a change to the route table, for drivers that
//! keep a copy of it that forwards on its own (the XDP fast path's kernel
//! map). The core queues them only when the driver asked for them
//! ([`crate::router::RouterConfig::route_commands`]); a driver that asked
//! must drain them ([`crate::router::Router::take_commands`]) and apply them
//! in the order they came out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::route_table::RouteKey;

/// One side effect for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `key`'s route now leads to `dst`: a new route, or one whose
    /// destination roamed.
    InstallRoute { key: RouteKey, dst: SocketAddr },
    /// `key`'s route is gone (expired, replaced, its client gone or roamed
    /// to a new source endpoint).
    RemoveRoute { key: RouteKey },
}

/// Commands not yet taken by the driver, in order. Disabled, it records
/// nothing: without a driver to drain it, it would only grow.
#[derive(Debug, Default)]
pub struct CommandQueue {
    enabled: bool,
    queue: VecDeque<Command>,
    /// Whether `queue` is non-empty, readable without the lock that guards
    /// the queue (see [`CommandQueue::signal`]).
    queued: Arc<AtomicBool>,
}

impl CommandQueue {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// A flag that is set while commands wait: a driver reads it after
    /// every datagram, without taking the lock around the queue.
    pub fn signal(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.queued)
    }

    /// Queues `command` if the driver asked for commands.
    pub fn push(&mut self, command: Command) {
        if self.enabled {
            self.queue.push_back(command);
            self.queued.store(true, Ordering::Release);
        }
    }

    /// Moves every queued command to the end of `out`, oldest first.
    pub fn drain_into(&mut self, out: &mut Vec<Command>) {
        out.extend(self.queue.drain(..));
        self.queued.store(false, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32) -> RouteKey {
        RouteKey {
            src: SocketAddr::from(([192, 0, 2, 1], 1000)),
            index,
        }
    }

    #[test]
    fn a_disabled_queue_records_nothing() {
        let mut queue = CommandQueue::new(false);
        queue.push(Command::RemoveRoute { key: key(1) });
        assert!(queue.is_empty());
        assert!(!queue.signal().load(Ordering::Acquire));
    }

    #[test]
    fn commands_come_out_in_order_and_once() {
        let mut queue = CommandQueue::new(true);
        let signal = queue.signal();
        let dst = SocketAddr::from(([192, 0, 2, 2], 2000));
        queue.push(Command::InstallRoute { key: key(1), dst });
        queue.push(Command::RemoveRoute { key: key(1) });
        assert!(signal.load(Ordering::Acquire));
        let mut out = Vec::new();
        queue.drain_into(&mut out);
        assert!(!signal.load(Ordering::Acquire));
        assert_eq!(
            out,
            [
                Command::InstallRoute { key: key(1), dst },
                Command::RemoveRoute { key: key(1) }
            ]
        );
        queue.drain_into(&mut out);
        assert_eq!(out.len(), 2, "drained commands are gone");
    }
}
