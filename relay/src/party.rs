//! The party thread (`docs/parties.md`): the relay's party service
//! (`lanrage-relay-party`: SQLite, IPAM, join codes) driven by the
//! requests the router authenticated (`docs/protocol.md` §2.12).
//!
//! One thread, so the data plane never waits on the database. It takes
//! requests from the router's queue in batches (one transaction, so one
//! fsync, per batch: group commit), answers each request after its
//! batch commits, and pushes every changed roster to every member of the
//! party (and to a member who just left or was removed). Pushes are
//! resent until the member acks that version (at 250 ms, then doubling,
//! five times); a member that was offline gets the current roster when it
//! registers (the router tells us of every new binding) or asks (sync).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lanrage_proto::party::{PartyBody, PartyOp, RosterMember, Status, ROSTER_PAGE_MEMBERS};
use lanrage_proto::PeerKey;
use lanrage_relay_core::metrics::MetricsSource;
use lanrage_relay_core::router::{PartyInbound, Router};
use lanrage_relay_party::{CodeOptions, Done, Now, Op, OpError, PartyId, PartyService, Roster};

/// Requests applied in one transaction at most.
const MAX_BATCH: usize = 64;
/// A roster push unacknowledged this long is sent again, the wait doubling
/// each time, [`PUSH_TRIES`] times in all.
const FIRST_RESEND: Duration = Duration::from_millis(250);
const PUSH_TRIES: u32 = 5;
/// How often dead join codes are purged and idle rate-limit state swept.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// The version of a removal from a party that is gone (closed, or its
/// last member left): no roster of it can come later.
const PARTY_GONE: u64 = u64::MAX;
/// Longest code lifetime a create or invite may ask for (a year).
const MAX_CODE_LIFETIME: u32 = 366 * 24 * 3600;

/// The running party thread.
pub struct PartyThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    counters: Arc<PartyMetrics>,
}

impl PartyThread {
    /// Starts serving `inbox` (the router's queue, attached by the caller)
    /// with `service`, sending from `socket` (a handle on the relay's
    /// listening socket, so answers leave from its address).
    pub fn spawn(
        service: PartyService,
        router: Router,
        inbox: Receiver<PartyInbound>,
        socket: UdpSocket,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(PartyMetrics::default());
        let mut state = PartyLoop {
            service,
            router,
            socket,
            pending: HashMap::new(),
            counters: Arc::clone(&counters),
        };
        let stopping = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("relay-party".into())
            .spawn(move || state.run(&inbox, &stopping))?;
        Ok(Self {
            stop,
            handle: Some(handle),
            counters,
        })
    }

    /// The thread's counters, for the metrics endpoint.
    pub fn metrics(&self) -> Arc<PartyMetrics> {
        Arc::clone(&self.counters)
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// What the party thread counts (the service counts its own: joins
/// refused by reason, rate limits).
#[derive(Default)]
pub struct PartyMetrics {
    pub operations: AtomicU64,
    pub batches: AtomicU64,
    pub malformed: AtomicU64,
    pub pushes: AtomicU64,
    pub resends: AtomicU64,
    pub abandoned: AtomicU64,
    pub storage_errors: AtomicU64,
    /// The service's own counters, rendered as of the last batch.
    service: std::sync::Mutex<String>,
}

impl MetricsSource for PartyMetrics {
    fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let rows = [
            (
                "lanrage_relay_party_operations_total",
                "Party operations applied (each answered after its commit).",
                &self.operations,
            ),
            (
                "lanrage_relay_party_batches_total",
                "Transactions (one commit each) the party operations were applied in.",
                &self.batches,
            ),
            (
                "lanrage_relay_party_malformed_total",
                "Authenticated party requests whose plaintext did not decode (not answered).",
                &self.malformed,
            ),
            (
                "lanrage_relay_party_roster_pushes_total",
                "Roster pages sent to members.",
                &self.pushes,
            ),
            (
                "lanrage_relay_party_roster_resends_total",
                "Roster pages sent again for want of an ack.",
                &self.resends,
            ),
            (
                "lanrage_relay_party_roster_abandoned_total",
                "Roster pushes given up unacknowledged (the member syncs when it registers).",
                &self.abandoned,
            ),
            (
                "lanrage_relay_party_storage_errors_total",
                "Party operations refused because the database failed.",
                &self.storage_errors,
            ),
        ];
        for (name, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        if let Ok(service) = self.service.lock() {
            out.push_str(&service);
        }
    }
}

/// A roster push waiting for its ack.
struct Pending {
    party: PartyId,
    version: u64,
    pages: Vec<PartyBody>,
    next: Instant,
    tries: u32,
}

struct PartyLoop {
    service: PartyService,
    router: Router,
    socket: UdpSocket,
    /// Per member key: the last roster pushed to it and not yet acked.
    pending: HashMap<PeerKey, Pending>,
    counters: Arc<PartyMetrics>,
}

/// A request as the batch holds it: who asked, with which id, and the
/// operation (or the answer already decided without the database).
struct Asked {
    client: PeerKey,
    id: u64,
    op: Option<Op>,
}

impl PartyLoop {
    fn run(&mut self, inbox: &Receiver<PartyInbound>, stop: &AtomicBool) {
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wake = self
                .pending
                .values()
                .map(|p| p.next)
                .chain([next_housekeeping, now + Duration::from_millis(200)])
                .min()
                .unwrap_or(now);
            let first = match inbox.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<PartyInbound> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.handle_batch(batch);
            }
            self.resend_due(Instant::now());
            if Instant::now() >= next_housekeeping {
                next_housekeeping = Instant::now() + HOUSEKEEPING;
                let now = clock();
                let _ = self.service.purge_dead_codes(now);
                self.service.sweep(now);
            }
        }
    }

    fn handle_batch(&mut self, batch: Vec<PartyInbound>) {
        let mut asked = Vec::new();
        let mut bound = Vec::new();
        for item in batch {
            match item {
                PartyInbound::Bound { client } => bound.push(client),
                PartyInbound::Request {
                    client,
                    source,
                    id,
                    plaintext,
                } => match PartyOp::decode(&plaintext) {
                    Ok(op) => {
                        if let Some(a) = self.translate(client, source, id, op) {
                            asked.push(a);
                        }
                    }
                    Err(_) => {
                        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                },
            }
        }
        let ops: Vec<Op> = asked.iter().filter_map(|a| a.op.clone()).collect();
        if !ops.is_empty() {
            let started = Instant::now();
            let pushes_before = self.counters.pushes.load(Ordering::Relaxed);
            let outcomes = self.service.apply(&ops, clock());
            self.counters
                .operations
                .fetch_add(ops.len() as u64, Ordering::Relaxed);
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            let mut outcomes = outcomes.into_iter();
            for a in asked.iter().filter(|a| a.op.is_some()) {
                let Some(outcome) = outcomes.next() else {
                    break;
                };
                self.answer(a.client, a.id, outcome);
            }
            self.refresh_service_metrics();
            tracing::debug!(
                ops = ops.len(),
                pages_pushed = self.counters.pushes.load(Ordering::Relaxed) - pushes_before,
                micros = started.elapsed().as_micros() as u64,
                "party batch applied, answered and pushed"
            );
        }
        for client in bound {
            self.sync(client);
        }
    }

    /// The service's operation for a request, or `None` for one answered
    /// here (sync, roster acks, bad options: no database write needed).
    fn translate(
        &mut self,
        client: PeerKey,
        source: SocketAddr,
        id: u64,
        op: PartyOp,
    ) -> Option<Asked> {
        let key = client.0;
        let asked = |op| {
            Some(Asked {
                client,
                id,
                op: Some(op),
            })
        };
        match op {
            PartyOp::Create {
                party_name,
                member_name,
                expires_in,
                max_uses,
            } => match code_options(expires_in, max_uses) {
                Some(code) => asked(Op::Create {
                    owner: key,
                    party_name,
                    member_name,
                    code,
                }),
                None => {
                    self.reply(client, id, Status::BadCodeOptions, 0, None);
                    None
                }
            },
            PartyOp::Join {
                secret,
                member_name,
            } => match lanrage_relay_party::JoinSecret::from_bytes(secret) {
                Some(secret) => asked(Op::Join {
                    key,
                    secret,
                    member_name,
                    source: source.ip(),
                }),
                // Not a secret any code could have: the same answer as a
                // wrong one.
                None => {
                    self.reply(client, id, Status::Refused, 0, None);
                    None
                }
            },
            PartyOp::Leave { party } => asked(Op::Leave {
                key,
                party: PartyId(party),
            }),
            PartyOp::Kick { party, member } => asked(Op::Kick {
                owner: key,
                party: PartyId(party),
                member: member.0,
            }),
            PartyOp::Rename { party, name } => asked(Op::RenameParty {
                owner: key,
                party: PartyId(party),
                name,
            }),
            PartyOp::SetName { party, name } => asked(Op::SetMemberName {
                key,
                party: PartyId(party),
                name,
            }),
            PartyOp::Invite {
                party,
                expires_in,
                max_uses,
            } => match code_options(expires_in, max_uses) {
                Some(code) => asked(Op::Invite {
                    owner: key,
                    party: PartyId(party),
                    code,
                }),
                None => {
                    self.reply(client, id, Status::BadCodeOptions, party, None);
                    None
                }
            },
            PartyOp::Close { party } => asked(Op::Close {
                owner: key,
                party: PartyId(party),
            }),
            PartyOp::Sync => {
                let party = self.service.party_of(&key).ok().flatten();
                self.reply(client, id, Status::Ok, party.map_or(0, |p| p.0), None);
                self.sync(client);
                None
            }
            PartyOp::RosterAck { party, version } => {
                if self
                    .pending
                    .get(&client)
                    .is_some_and(|p| p.party.0 == party && p.version <= version)
                {
                    self.pending.remove(&client);
                }
                None
            }
        }
    }

    /// Answers one applied operation, and pushes what it changed.
    fn answer(&mut self, client: PeerKey, id: u64, outcome: lanrage_relay_party::Outcome) {
        match outcome {
            // The roster goes before the reply, so that a client that
            // reports "joined" has its peers already (datagrams may still
            // reorder; the client waits a moment for the roster too).
            Ok(Done::Created { roster, code }) => {
                self.push_roster(&roster);
                let secret = Some(code.secret.to_bytes());
                self.reply(client, id, Status::Ok, roster.party_id.0, secret);
            }
            Ok(Done::Joined { roster, rejoined }) => {
                if rejoined {
                    self.push_to(client, &roster, false);
                } else {
                    self.push_roster(&roster);
                }
                self.reply(client, id, Status::Ok, roster.party_id.0, None);
            }
            Ok(Done::Left { party, key, roster }) => {
                self.reply(client, id, Status::Ok, party.0, None);
                let version = roster.as_ref().map_or(PARTY_GONE, |r| r.version);
                self.push_removed(PeerKey(key), party, version);
                if let Some(roster) = roster {
                    self.push_roster(&roster);
                }
            }
            Ok(Done::Kicked { roster, kicked }) => {
                self.reply(client, id, Status::Ok, roster.party_id.0, None);
                self.push_removed(PeerKey(kicked), roster.party_id, roster.version);
                self.push_roster(&roster);
            }
            Ok(Done::Renamed { roster }) => {
                self.reply(client, id, Status::Ok, roster.party_id.0, None);
                self.push_roster(&roster);
            }
            Ok(Done::Closed { party, members }) => {
                self.reply(client, id, Status::Ok, party.0, None);
                for member in members {
                    self.push_removed(PeerKey(member), party, PARTY_GONE);
                }
            }
            Ok(Done::Invited { code }) => {
                let party = self.service.party_of(&client.0).ok().flatten();
                let secret = Some(code.secret.to_bytes());
                self.reply(client, id, Status::Ok, party.map_or(0, |p| p.0), secret);
            }
            Ok(Done::Revoked { .. }) => {
                self.reply(client, id, Status::Ok, 0, None);
            }
            Err(e) => {
                if matches!(e, OpError::Storage(_)) {
                    self.counters.storage_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "party operation failed in the database");
                }
                self.reply(client, id, status_of(&e), 0, None);
            }
        }
    }

    /// Sends `client` the current roster of its party, if it has one.
    fn sync(&mut self, client: PeerKey) {
        let Ok(Some(party)) = self.service.party_of(&client.0) else {
            return;
        };
        if let Ok(Some(roster)) = self.service.roster(party) {
            self.push_to(client, &roster, false);
        }
    }

    fn reply(
        &mut self,
        client: PeerKey,
        id: u64,
        status: Status,
        party: u64,
        secret: Option<[u8; 10]>,
    ) {
        let body = PartyBody::Reply {
            status,
            party,
            secret,
        };
        if let Some((to, bytes)) = self.router.seal_party(&client, id, &body) {
            self.send(to, &bytes);
        }
    }

    /// Pushes `roster` to each of its members.
    fn push_roster(&mut self, roster: &Roster) {
        for member in roster.members.iter().map(|m| PeerKey(m.key)) {
            self.push_to(member, roster, false);
        }
    }

    /// Tells `key` it is no longer in `party` (left, kicked, closed), as of
    /// `version`.
    fn push_removed(&mut self, key: PeerKey, party: PartyId, version: u64) {
        let empty = Roster {
            party_id: party,
            version,
            name: String::new(),
            members: Vec::new(),
        };
        self.push_to(key, &empty, true);
    }

    fn push_to(&mut self, key: PeerKey, roster: &Roster, removed: bool) {
        let pages = pages_of(roster, removed);
        let pending = Pending {
            party: roster.party_id,
            version: roster.version,
            pages,
            next: Instant::now() + FIRST_RESEND,
            tries: 1,
        };
        self.send_pages(key, &pending);
        self.counters
            .pushes
            .fetch_add(pending.pages.len() as u64, Ordering::Relaxed);
        self.pending.insert(key, pending);
    }

    fn send_pages(&self, key: PeerKey, pending: &Pending) {
        for page in &pending.pages {
            if let Some((to, bytes)) = self.router.seal_party(&key, pending.version, page) {
                self.send(to, &bytes);
            }
        }
    }

    fn resend_due(&mut self, now: Instant) {
        let due: Vec<PeerKey> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(mut pending) = self.pending.remove(&key) else {
                continue;
            };
            if pending.tries >= PUSH_TRIES {
                self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.send_pages(key, &pending);
            self.counters
                .resends
                .fetch_add(pending.pages.len() as u64, Ordering::Relaxed);
            pending.next = now + FIRST_RESEND * 2u32.pow(pending.tries);
            pending.tries += 1;
            self.pending.insert(key, pending);
        }
    }

    fn send(&self, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.socket.send_to(bytes, to) {
            tracing::debug!(error = %e, %to, "party message not sent");
        }
    }

    fn refresh_service_metrics(&self) {
        let mut text = String::new();
        self.service.counters().render_prometheus(&mut text);
        if let Ok(mut service) = self.counters.service.lock() {
            *service = text;
        }
    }
}

/// A roster as the pages a member receives (a removal is one empty page).
fn pages_of(roster: &Roster, removed: bool) -> Vec<PartyBody> {
    let members: Vec<RosterMember> = roster
        .members
        .iter()
        .map(|m| RosterMember {
            key: PeerKey(m.key),
            ip: m.ip,
            owner: m.owner,
            name: m.name.clone(),
        })
        .collect();
    let chunks: Vec<&[RosterMember]> = if members.is_empty() {
        vec![&[]]
    } else {
        members.chunks(ROSTER_PAGE_MEMBERS).collect()
    };
    let pages = chunks.len() as u8;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| PartyBody::Roster {
            party: roster.party_id.0,
            page: i as u8,
            pages,
            removed,
            name: roster.name.clone(),
            members: chunk.to_vec(),
        })
        .collect()
}

/// A code's limits from the wire's (0: none), or `None` if out of range.
fn code_options(expires_in: u32, max_uses: u16) -> Option<CodeOptions> {
    if expires_in > MAX_CODE_LIFETIME {
        return None;
    }
    let expires_at = (expires_in > 0).then(|| clock().unix_secs + u64::from(expires_in));
    Some(CodeOptions {
        expires_at,
        max_uses: NonZeroU32::new(u32::from(max_uses)),
    })
}

fn status_of(e: &OpError) -> Status {
    match e {
        OpError::JoinRefused => Status::Refused,
        OpError::RateLimited => Status::RateLimited,
        OpError::AlreadyInParty { .. } => Status::InAnotherParty,
        OpError::PartyFull => Status::PartyFull,
        OpError::NotAMember => Status::NotAMember,
        OpError::NotOwner => Status::NotOwner,
        OpError::CannotKickSelf => Status::CannotKickSelf,
        OpError::NoSuchMember => Status::NoSuchMember,
        OpError::PartyName(_) | OpError::MemberName(_) => Status::BadName,
        OpError::CodeOptions(_) => Status::BadCodeOptions,
        OpError::TooManyCodes => Status::TooManyCodes,
        _ => Status::Unavailable,
    }
}

fn clock() -> Now {
    Now {
        unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        mono: Instant::now(),
    }
}
