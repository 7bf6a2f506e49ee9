//! The router's side of parties (`docs/protocol.md` §2.12,
//! `docs/parties.md`): it authenticates party requests on the workers
//! (the sender registered at this source, an id above its last, a seal
//! that opens under its keys, a budget), hands them to the party service
//! through a bounded queue, tells the service when a key binds a new
//! endpoint (it may have missed roster pushes), and seals the service's
//! answers for a registered key. The service itself (SQLite, IPAM, codes)
//! lives in the relay binary's own thread: the data plane never waits on a
//! database.

use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use lanrage_proto::mac;
use lanrage_proto::party::{seal_message, PartyBody, PartyRequestView};
use lanrage_proto::PeerKey;

use super::{Core, Outcome, Router};
use crate::metrics::{DropReason, Event};
use crate::rate_limit::RateLimit;

/// A registered client's budget for party requests: a person typing
/// commands, and a roster ack per change.
pub(super) const CLIENT_PARTY_LIMIT: RateLimit = RateLimit {
    per_second: 5,
    burst: 20,
};

const PARTY_NONCE_LABEL: &[u8] = b"lanrage relay party nonce";

/// What the router hands the party service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyInbound {
    /// An authenticated request, opened.
    Request {
        client: PeerKey,
        /// The registration's source (for the service's per-source join
        /// limit).
        source: SocketAddr,
        id: u64,
        plaintext: Vec<u8>,
    },
    /// `client` bound an endpoint (its first registration in this run of
    /// the relay, or roaming): it gets its party's current roster.
    Bound { client: PeerKey },
}

impl Core {
    /// A party request from `src`, checked in order: the sender is
    /// registered at `src` (`unregistered`), the id is above its last
    /// (`party_replay`), the seal opens (`party_bad_seal`), its budget
    /// (`rate_limited`), a service to take it (`party_unavailable`) with
    /// room (`party_queue_full`). Accepted requests are answered by the
    /// service, later, so the worker sends nothing now.
    pub(super) fn party_request(
        &mut self,
        now: Instant,
        src: SocketAddr,
        view: &PartyRequestView<'_>,
    ) -> Result<Outcome, DropReason> {
        let key = view.client();
        let Some(client) = self.clients.get_mut(&key) else {
            return Err(DropReason::Unregistered);
        };
        if client.endpoint != src {
            return Err(DropReason::Unregistered);
        }
        if view.id() <= client.party_last_id {
            return Err(DropReason::PartyReplay);
        }
        let plaintext = view
            .open(&client.keys)
            .map_err(|_| DropReason::PartyBadSeal)?;
        if !client.party_budget.take(CLIENT_PARTY_LIMIT, now) {
            return Err(DropReason::RateLimited);
        }
        let Some(sink) = &self.party else {
            return Err(DropReason::PartyUnavailable);
        };
        let request = PartyInbound::Request {
            client: key,
            source: src,
            id: view.id(),
            plaintext,
        };
        match sink.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(DropReason::PartyQueueFull),
            Err(TrySendError::Disconnected(_)) => return Err(DropReason::PartyUnavailable),
        }
        client.party_last_id = view.id();
        self.metrics.record(Event::PartyRequestAccepted);
        Ok(Outcome::Consumed)
    }

    /// Tells the party service that `client` bound an endpoint. A full
    /// queue loses the news: the client asks for its roster itself after
    /// registering (`PartyOp::Sync`).
    pub(super) fn party_bound(&self, client: PeerKey) {
        if let Some(sink) = &self.party {
            let _ = sink.try_send(PartyInbound::Bound { client });
        }
    }
}

impl Router {
    /// Connects the party service: requests and bindings go to `sink`
    /// from now on. Without it, party requests are counted drops.
    pub fn attach_party_service(&self, sink: SyncSender<PartyInbound>) {
        self.core().party = Some(sink);
    }

    /// `body` sealed for `client` with `id`, and where to send it: `None`
    /// if `client` is not registered (it gets the roster when it
    /// registers). The nonce is derived from this run's random seed and a
    /// counter, so it never repeats under the client's key, which is the
    /// same in every run.
    pub fn seal_party(
        &self,
        client: &PeerKey,
        id: u64,
        body: &PartyBody,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        // Under the lock only what must be: the counter, the key and the
        // endpoint. The nonce and the seal (up to 1.2 KB of XChaCha20) run
        // outside it, so a full party's 256 pages don't hold up the
        // workers' registrations and handshakes.
        let (seed, n, keys, endpoint) = {
            let mut core = self.core();
            let target = core.clients.get(client)?;
            let (keys, endpoint) = (target.keys.clone(), target.endpoint);
            core.nonce_counter += 1;
            (core.seed, core.nonce_counter, keys, endpoint)
        };
        let material = mac::derive_secret(&seed, PARTY_NONCE_LABEL, n);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&material[..24]);
        let bytes = seal_message(&keys, id, nonce, body).ok()?;
        Some((endpoint, bytes))
    }
}
