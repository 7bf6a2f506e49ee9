//! `lanrage-relay-party` owns the home relay's parties: who is in which
//! party, their names and virtual IPs (IPAM), and the join codes that let a
//! friend in. The state lives in an embedded SQLite database (WAL, `synchronous
//! = FULL`), so a relay restart or a `kill -9` loses no committed change.
//!
//! It must not touch the network: the relay decodes party control messages
//! from a registration's session, hands them here as [`Op`]s, and pushes the
//! [`Roster`]s that come back. It reads no clock (time comes in as [`Now`]) and
//! takes its randomness (for join codes) from the RNG it was opened with.
//!
//! # Driving it
//!
//! One thread owns the [`PartyService`]. It collects the operations that
//! arrived since its last turn and gives them to [`PartyService::apply`] as
//! one batch: one transaction, one commit, one fsync for all of them (group
//! commit), which is what makes thousands of durable operations per second
//! possible on one core. Every outcome is returned only after that commit; an
//! operation that fails is rolled back alone (each runs in its own
//! savepoint) and the others in the batch still commit.
//!
//! ```text
//! loop {
//!     ops = drain what arrived (bounded)
//!     outcomes = service.apply(&ops, now)   // committed when it returns
//!     answer each op; push each changed roster to its members
//!     every minute or so: service.sweep(now), service.purge_dead_codes(now)
//! }
//! ```
//!
//! See `docs/parties.md` for the storage layout, IPAM and the join-code
//! grammar.

mod counters;
mod gate;
mod ipam;
mod names;
mod ops;
mod store;

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{CryptoRng, RngCore};
use rusqlite::Connection;

pub use counters::{JoinRefusal, PartyCounters};
pub use ipam::{address_of_slot, preferred_address, slot_of_address, ADDRESS_SLOTS};
pub use lanrage_proto::join_code::{JoinCode, JoinSecret, RelayName};
pub use lanrage_relay_core::rate_limit::RateLimit;
pub use names::{NameError, MAX_NAME_BYTES};
pub use store::{OpenError, OpenErrorKind, SCHEMA_VERSION};

/// Members a party can have: the consent list's bound (`docs/parties.md`).
pub const MAX_MEMBERS: usize = 64;
/// Join codes a party can have at once (live ones: expired and used-up codes
/// are purged before counting), so one owner can't fill the database.
pub const MAX_CODES_PER_PARTY: usize = 16;

/// A WireGuard static public key: a member's identity.
pub type Key = [u8; 32];

/// A party's id on its home relay. Ids are never reused (SQLite
/// `AUTOINCREMENT`), so `(party, version)` names one roster forever, even
/// after the party is closed and another created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartyId(pub u64);

impl std::fmt::Display for PartyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The time an operation happens at, as the caller's clock reads it: unix
/// seconds for what is stored (code expiry, join and leave times), and a
/// monotonic instant for the join rate limits.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub unix_secs: u64,
    pub mono: Instant,
}

/// What a join code allows: until when, and how many joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeOptions {
    /// Unix seconds from which the code no longer works; `None`: never
    /// expires. Must be later than now.
    pub expires_at: Option<u64>,
    /// Joins the code admits; `None`: unlimited. A member re-joining its own
    /// party (a retried join) uses none.
    pub max_uses: Option<NonZeroU32>,
}

/// One party operation. Each names the acting member's key, which the relay
/// took from the authenticated registration session the message came on.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new party with `owner` as its first member and owner, and a first
    /// join code.
    Create {
        owner: Key,
        party_name: String,
        member_name: String,
        code: CodeOptions,
    },
    /// Join the party a code belongs to. `source` is the address the request
    /// came from (for the per-source rate limit).
    Join {
        key: Key,
        secret: JoinSecret,
        member_name: String,
        source: IpAddr,
    },
    /// Leave a party. The owner leaving hands ownership to the longest-standing
    /// member; the last member leaving closes the party.
    Leave { key: Key, party: PartyId },
    /// The owner removes a member (not itself: that is [`Op::Leave`]).
    Kick {
        owner: Key,
        party: PartyId,
        member: Key,
    },
    /// The owner renames the party.
    RenameParty {
        owner: Key,
        party: PartyId,
        name: String,
    },
    /// A member sets its own name.
    SetMemberName {
        key: Key,
        party: PartyId,
        name: String,
    },
    /// The owner ends the party: its members, codes and address reservations
    /// are deleted.
    Close { owner: Key, party: PartyId },
    /// The owner issues another join code.
    Invite {
        owner: Key,
        party: PartyId,
        code: CodeOptions,
    },
    /// The owner revokes one code (by its secret) or all of them.
    RevokeCodes {
        owner: Key,
        party: PartyId,
        which: Revoke,
    },
}

/// Which codes [`Op::RevokeCodes`] revokes.
#[derive(Debug, Clone, Copy)]
pub enum Revoke {
    All,
    Code(JoinSecret),
}

/// The result of one [`Op`], returned after its commit.
pub type Outcome = Result<Done, OpError>;

/// What a successful operation did. Every variant that changed the roster
/// carries the party's roster as the batch left it (read once per party per
/// batch and shared: its version is this op's or a later op's in the same
/// batch). The caller pushes each changed party's roster once per batch to
/// its members, and tells a member that left or was kicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Created {
        roster: Arc<Roster>,
        code: JoinCode,
    },
    /// `rejoined`: the key was already a member of this party (a retried
    /// join); nothing changed and the version is the current one.
    Joined {
        roster: Arc<Roster>,
        rejoined: bool,
    },
    /// `roster` is `None` when the last member left and the party is gone.
    Left {
        party: PartyId,
        key: Key,
        roster: Option<Arc<Roster>>,
    },
    Kicked {
        roster: Arc<Roster>,
        kicked: Key,
    },
    /// A rename of the party or of a member.
    Renamed {
        roster: Arc<Roster>,
    },
    /// The party is gone; `members` were in it (to tell them).
    Closed {
        party: PartyId,
        members: Vec<Key>,
    },
    Invited {
        code: JoinCode,
    },
    Revoked {
        codes: u32,
    },
}

/// Why an operation was refused. Messages are for the member who asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The one answer to a join code that is wrong, unknown, expired or used
    /// up: which of these it was is never told (only counted, in
    /// [`PartyCounters::join_refused`]), so answers can't be used to probe
    /// for codes.
    #[error("that join code does not work (wrong, expired or used up); ask the party's owner for a new one")]
    JoinRefused,
    /// Too many join attempts from this source or in total; try again later.
    /// Decided before the code is looked at, so it says nothing about it.
    #[error("too many join attempts; wait a few seconds and try again")]
    RateLimited,
    #[error("you are already a member of party {party} on this relay; leave it first")]
    AlreadyInParty { party: PartyId },
    #[error("the party is full ({MAX_MEMBERS} members)")]
    PartyFull,
    /// Not a member of that party (or no such party: the two are one answer).
    #[error("you are not a member of that party")]
    NotAMember,
    #[error("only the party's owner can do that")]
    NotOwner,
    #[error("the owner cannot kick itself; leave the party instead")]
    CannotKickSelf,
    #[error("that key is not a member of the party")]
    NoSuchMember,
    #[error("party name: {0}")]
    PartyName(NameError),
    #[error("member name: {0}")]
    MemberName(NameError),
    #[error("join code options: {0}")]
    CodeOptions(&'static str),
    #[error("the party already has {MAX_CODES_PER_PARTY} join codes; revoke one first")]
    TooManyCodes,
    /// The database failed (disk full, I/O error); nothing of this operation
    /// was committed.
    #[error("party database error: {0}")]
    Storage(String),
}

/// A party as its members see it. Pushed on every change; `version` grows by
/// one with each change and never goes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub party_id: PartyId,
    pub version: u64,
    pub name: String,
    /// In address order.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Key,
    pub name: String,
    pub ip: Ipv4Addr,
    pub owner: bool,
}

impl Roster {
    pub fn member(&self, key: &Key) -> Option<&Member> {
        self.members.iter().find(|m| &m.key == key)
    }

    pub fn owner(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.owner)
    }
}

/// The service's limits and names. [`PartyConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct PartyConfig {
    /// This relay's name, written into every join code it issues.
    pub relay_name: RelayName,
    /// Join attempts per source (IPv4 address, or IPv6 /64). Default 1/s,
    /// burst 10: a household behind one NAT can all join at once, and a
    /// guesser gets one try a second.
    pub join_per_source: RateLimit,
    /// Join attempts in total. Default 200/s, burst 1000.
    pub join_total: RateLimit,
    /// Sources the per-source table tracks (default 4096); when full, the
    /// source that entered first is forgotten, so a spoofed-source flood
    /// can't grow memory (the total limit still holds it).
    pub rate_limit_sources: usize,
    /// Address reservations of former members kept per party (default
    /// 1024); past it the oldest is dropped (`docs/parties.md`, "IPAM").
    pub max_reservations: u32,
}

impl PartyConfig {
    pub fn new(relay_name: RelayName) -> Self {
        Self {
            relay_name,
            join_per_source: RateLimit {
                per_second: 1,
                burst: 10,
            },
            join_total: RateLimit {
                per_second: 200,
                burst: 1000,
            },
            rate_limit_sources: 4096,
            max_reservations: 1024,
        }
    }
}

/// The RNG join secrets come from: a CSPRNG (the relay passes `OsRng`).
pub trait SecretRng: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> SecretRng for T {}

/// The party service of one relay: see the crate doc for how to drive it.
pub struct PartyService {
    conn: Connection,
    path: PathBuf,
    config: PartyConfig,
    gate: gate::JoinGate,
    rng: Box<dyn SecretRng>,
    counters: PartyCounters,
}

impl PartyService {
    /// Opens (or creates) the party database at `path`, migrating its schema
    /// to [`SCHEMA_VERSION`] in one transaction. Refuses, with an error that
    /// names the path and says what is wrong, a file that is not a database,
    /// is corrupt, belongs to another program, was written by a newer relay,
    /// is locked by another process, or can't be written. It never recreates
    /// or empties an existing file.
    pub fn open(
        path: impl AsRef<Path>,
        config: PartyConfig,
        rng: impl SecretRng + 'static,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let conn = store::open(&path)?;
        Ok(Self::with_connection(conn, path, config, Box::new(rng)))
    }

    /// A service on a private in-memory database: for callers' tests that
    /// don't care about durability. Same schema and behaviour otherwise.
    pub fn open_in_memory(config: PartyConfig, rng: impl SecretRng + 'static) -> Self {
        let conn = store::open_in_memory();
        Self::with_connection(conn, PathBuf::from(":memory:"), config, Box::new(rng))
    }

    fn with_connection(
        conn: Connection,
        path: PathBuf,
        config: PartyConfig,
        rng: Box<dyn SecretRng>,
    ) -> Self {
        let gate = gate::JoinGate::new(&config);
        Self {
            conn,
            path,
            config,
            gate,
            rng,
            counters: PartyCounters::default(),
        }
    }

    /// Applies `ops` in order in one transaction and returns one outcome per
    /// op, after the commit. A refused op changes nothing and doesn't affect
    /// the others. If the database fails (an I/O error under an op, or at the
    /// commit), the whole batch is rolled back and every op's outcome is
    /// [`OpError::Storage`], except joins the rate limit had already refused.
    pub fn apply(&mut self, ops: &[Op], now: Now) -> Vec<Outcome> {
        ops::apply(self, ops, now)
    }

    /// The current roster of `party`, or `None` if there is no such party.
    pub fn roster(&self, party: PartyId) -> Result<Option<Roster>, OpError> {
        ops::read_roster(&self.conn, party).map_err(ops::storage)
    }

    /// The party `key` is a member of, if any: for a member that registers
    /// (again) and needs its current roster.
    pub fn party_of(&self, key: &Key) -> Result<Option<PartyId>, OpError> {
        ops::party_of(&self.conn, key).map_err(ops::storage)
    }

    /// Deletes join codes that can no longer admit anyone (expired, or used
    /// up), returning how many. Refused attempts never delete (a refusal must
    /// cost what any other refusal costs), so the relay calls this now and
    /// then.
    pub fn purge_dead_codes(&mut self, now: Now) -> Result<usize, OpError> {
        ops::purge_dead_codes(&self.conn, now.unix_secs).map_err(ops::storage)
    }

    /// Forgets rate-limit state of sources idle long enough to have a full
    /// bucket again (it holds nothing then). The table is bounded anyway;
    /// this keeps it small.
    pub fn sweep(&mut self, now: Now) {
        self.gate.sweep(now.mono);
    }

    pub fn counters(&self) -> PartyCounters {
        let mut c = self.counters.clone();
        c.rate_limit_sources = self.gate.tracked_sources() as u64;
        c.rate_limit_evictions = self.gate.evictions();
        c
    }

    pub fn config(&self) -> &PartyConfig {
        &self.config
    }

    /// The database's path, for messages (`:memory:` for an in-memory one).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the database holds (pages in use), after writing the WAL back
    /// into the main file. For size reports and tests.
    pub fn database_bytes(&self) -> Result<u64, OpError> {
        store::database_bytes(&self.conn).map_err(ops::storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn now() -> Now {
        Now {
            unix_secs: 1_700_000_000,
            mono: Instant::now(),
        }
    }

    fn create(n: u32) -> Op {
        let mut owner = [0u8; 32];
        owner[..4].copy_from_slice(&n.to_be_bytes());
        Op::Create {
            owner,
            party_name: format!("party {n}"),
            member_name: "owner".into(),
            code: CodeOptions::default(),
        }
    }

    /// A full disk under one op of a batch: the whole batch is rolled back
    /// and answered `Storage`, and the service works again once there is room.
    #[test]
    fn a_database_failure_rolls_the_whole_batch_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = PartyConfig::new(RelayName::new("r").unwrap());
        let mut svc = PartyService::open(
            dir.path().join("p.db"),
            config,
            rand::rngs::StdRng::seed_from_u64(1),
        )
        .unwrap();
        assert!(svc.apply(&[create(0)], now())[0].is_ok());
        // No room to grow: the first ops fit in pages the file has, a later
        // one needs a new page and fails with SQLITE_FULL.
        let pages: i64 = svc
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        svc.conn
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let batch: Vec<Op> = (1..500).map(create).collect();
        let out = svc.apply(&batch, now());
        assert_eq!(out.len(), batch.len());
        assert!(
            out.iter().all(|o| matches!(o, Err(OpError::Storage(_)))),
            "{:?}",
            out.iter().find(|o| !matches!(o, Err(OpError::Storage(_))))
        );
        assert_eq!(svc.counters().commit_failures, 1);
        let mut first = [0u8; 32];
        first[..4].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            svc.party_of(&first).unwrap(),
            None,
            "nothing of the batch is stored"
        );

        svc.conn
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        assert!(svc.apply(&batch, now()).iter().all(Result::is_ok));
        assert!(svc.party_of(&first).unwrap().is_some());
    }
}
