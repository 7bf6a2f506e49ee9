//! The operations, each run in its own savepoint of the batch's transaction.

use std::collections::HashMap;
use std::sync::Arc;

use blake2::{Blake2s256, Digest};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::counters::{JoinRefusal, PartyCounters};
use crate::gate::Limited;
use crate::ipam::{self, address_of_slot, ADDRESS_SLOTS};
use crate::names;
use crate::{
    CodeOptions, Done, JoinCode, JoinSecret, Key, Member, Now, Op, OpError, Outcome, PartyConfig,
    PartyId, PartyService, Revoke, Roster, SecretRng, MAX_CODES_PER_PARTY, MAX_MEMBERS,
};

/// Domain of the stored hash of a join secret.
const LABEL_CODE: &[u8] = b"lanrage join code v1\0";
/// Bytes of the hash stored per code: 128 bits keep lookups collision-free
/// among any number of codes a relay will hold, at half the space of 256.
const CODE_HASH_LEN: usize = 16;

/// How a join secret is stored and looked up: `BLAKE2s-256("lanrage join code
/// v1\0" ‖ secret's 10 wire bytes)`, first 16 bytes. A fast hash is enough: the
/// secret has 75 random bits, so there is no dictionary to try.
pub fn code_hash(secret: &JoinSecret) -> [u8; CODE_HASH_LEN] {
    let mut h = Blake2s256::new();
    h.update(LABEL_CODE);
    h.update(secret.to_bytes());
    let digest = h.finalize();
    let mut out = [0u8; CODE_HASH_LEN];
    out.copy_from_slice(&digest[..CODE_HASH_LEN]);
    out
}

pub(crate) fn storage(e: rusqlite::Error) -> OpError {
    OpError::Storage(e.to_string())
}

/// What an op needs besides the database.
struct Env<'a> {
    config: &'a PartyConfig,
    rng: &'a mut dyn SecretRng,
    /// Counted only if the batch commits.
    tally: PartyCounters,
    /// Outcomes (by index) waiting for their party's roster.
    waiting: HashMap<PartyId, Vec<usize>>,
    /// Outcomes whose roster was read (before their party was deleted).
    filled: Vec<(usize, Arc<Roster>)>,
}

/// What an op did, before rosters are read: each party's roster is read
/// once per batch, after its last change (or just before it is deleted), not
/// once per op. A batch of 63 joins into one party reads one roster, not 63.
enum Step {
    Final(Done),
    Roster(PartyId, Shape),
}

/// The [`Done`] variants that carry a roster, without it.
enum Shape {
    Created(JoinCode),
    Joined { rejoined: bool },
    Left(Key),
    Kicked(Key),
    Renamed,
}

impl Shape {
    fn done(self, roster: Arc<Roster>) -> Done {
        match self {
            Shape::Created(code) => Done::Created { roster, code },
            Shape::Joined { rejoined } => Done::Joined { roster, rejoined },
            Shape::Left(key) => Done::Left {
                party: roster.party_id,
                key,
                roster: Some(roster),
            },
            Shape::Kicked(kicked) => Done::Kicked { roster, kicked },
            Shape::Renamed => Done::Renamed { roster },
        }
    }
}

enum Slot {
    Ready(Outcome),
    Waiting(Shape),
}

pub(crate) fn apply(svc: &mut PartyService, ops: &[Op], now: Now) -> Vec<Outcome> {
    if ops.is_empty() {
        return Vec::new();
    }
    let PartyService {
        conn,
        config,
        gate,
        rng,
        counters,
        ..
    } = svc;
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            counters.commit_failures += 1;
            tracing::warn!(error = %e, "party batch could not start a transaction");
            return vec![Err(storage(e)); ops.len()];
        }
    };
    let mut env = Env {
        config,
        rng: rng.as_mut(),
        tally: PartyCounters::default(),
        waiting: HashMap::new(),
        filled: Vec::new(),
    };
    let mut slots: Vec<Slot> = Vec::with_capacity(ops.len());
    for op in ops {
        // The rate limit comes before any database work, and before the code
        // is looked at: being limited says nothing about the code.
        if let Op::Join { source, .. } = op {
            if let Err(limited) = gate.admit(now.mono, *source) {
                match limited {
                    Limited::Source => counters.join_rate_limited_source += 1,
                    Limited::Total => counters.join_rate_limited_total += 1,
                }
                slots.push(Slot::Ready(Err(OpError::RateLimited)));
                continue;
            }
        }
        let index = slots.len();
        let outcome = match tx.savepoint() {
            Ok(sp) => {
                let result = execute(&sp, &mut env, op, now);
                match result {
                    Ok(step) => sp.commit().map(|()| step).map_err(storage),
                    // Dropping the savepoint rolls this op back alone.
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(storage(e)),
        };
        let outcome = match outcome {
            Ok(Step::Final(done)) => Ok(done),
            Ok(Step::Roster(party, shape)) => {
                env.waiting.entry(party).or_default().push(index);
                slots.push(Slot::Waiting(shape));
                continue;
            }
            Err(e) => Err(e),
        };
        if let Err(e @ OpError::Storage(_)) = &outcome {
            // The database itself failed (I/O, disk full): a savepoint's
            // rollback may have failed too, so nothing of this batch is
            // trusted to commit. The whole transaction is rolled back.
            tracing::warn!(error = %e, ops = ops.len(), "party batch failed in the database");
            let e = e.clone();
            drop(tx);
            counters.commit_failures += 1;
            return fail_all(&slots, ops.len(), e);
        }
        if outcome.is_err() && !matches!(outcome, Err(OpError::JoinRefused)) {
            env.tally.refused_other += 1;
        }
        slots.push(Slot::Ready(outcome));
    }
    // Each changed party's roster, once, as the batch leaves it.
    for (party, indices) in std::mem::take(&mut env.waiting) {
        match roster_of(&tx, party) {
            Ok(roster) => {
                let roster = Arc::new(roster);
                env.filled
                    .extend(indices.into_iter().map(|i| (i, Arc::clone(&roster))));
            }
            Err(e) => {
                tracing::warn!(error = %e, "party batch could not read a roster");
                drop(tx);
                counters.commit_failures += 1;
                return fail_all(&slots, ops.len(), e);
            }
        }
    }
    let mut rosters: HashMap<usize, Arc<Roster>> = env.filled.drain(..).collect();
    let outcomes: Vec<Outcome> = slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| match slot {
            Slot::Ready(outcome) => outcome,
            Slot::Waiting(shape) => match rosters.remove(&i) {
                Some(roster) => Ok(shape.done(roster)),
                None => Err(OpError::Storage("a roster went missing".into())),
            },
        })
        .collect();
    let tally = env.tally;
    match tx.commit() {
        Ok(()) => {
            counters.batches += 1;
            add(counters, &tally);
            outcomes
        }
        Err(e) => {
            counters.commit_failures += 1;
            tracing::warn!(error = %e, ops = ops.len(), "party batch commit failed");
            let err = storage(e);
            outcomes
                .into_iter()
                .map(|o| match o {
                    Err(OpError::RateLimited) => o,
                    _ => Err(err.clone()),
                })
                .collect()
        }
    }
}

/// Every op of a batch the database failed answers `err`, except joins the
/// rate limit refused (they never reached the database).
fn fail_all(slots: &[Slot], ops: usize, err: OpError) -> Vec<Outcome> {
    (0..ops)
        .map(|i| match slots.get(i) {
            Some(Slot::Ready(Err(OpError::RateLimited))) => Err(OpError::RateLimited),
            _ => Err(err.clone()),
        })
        .collect()
}

fn add(total: &mut PartyCounters, d: &PartyCounters) {
    total.created += d.created;
    total.joined += d.joined;
    total.rejoined += d.rejoined;
    total.left += d.left;
    total.kicked += d.kicked;
    total.renamed += d.renamed;
    total.closed += d.closed;
    total.invited += d.invited;
    total.revoked += d.revoked;
    total.refused_other += d.refused_other;
    total.reservations_evicted += d.reservations_evicted;
    for (t, x) in total.join_refused.iter_mut().zip(d.join_refused) {
        *t += x;
    }
}

fn execute(c: &Connection, env: &mut Env<'_>, op: &Op, now: Now) -> Result<Step, OpError> {
    match op {
        Op::Create {
            owner,
            party_name,
            member_name,
            code,
        } => create(c, env, owner, party_name, member_name, *code, now),
        Op::Join {
            key,
            secret,
            member_name,
            ..
        } => join(c, env, key, secret, member_name, now),
        Op::Leave { key, party } => leave(c, env, key, *party, now),
        Op::Kick {
            owner,
            party,
            member,
        } => kick(c, env, owner, *party, member, now),
        Op::RenameParty { owner, party, name } => {
            names::check(name).map_err(OpError::PartyName)?;
            owner_of(c, owner, *party)?;
            c.prepare_cached("UPDATE party SET name = ?2, version = version + 1 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id(*party), name]))
                .map_err(storage)?;
            env.tally.renamed += 1;
            Ok(Step::Roster(*party, Shape::Renamed))
        }
        Op::SetMemberName { key, party, name } => {
            names::check(name).map_err(OpError::MemberName)?;
            member_of(c, key, *party)?;
            c.prepare_cached("UPDATE member SET name = ?3 WHERE party = ?1 AND key = ?2")
                .and_then(|mut s| s.execute(params![id(*party), &key[..], name]))
                .map_err(storage)?;
            bump(c, *party, 0, 0)?;
            env.tally.renamed += 1;
            Ok(Step::Roster(*party, Shape::Renamed))
        }
        Op::Close { owner, party } => {
            owner_of(c, owner, *party)?;
            let members = roster_of(c, *party)?
                .members
                .into_iter()
                .map(|m| m.key)
                .collect();
            delete_party(c, env, *party)?;
            env.tally.closed += 1;
            Ok(Step::Final(Done::Closed {
                party: *party,
                members,
            }))
        }
        Op::Invite { owner, party, code } => {
            owner_of(c, owner, *party)?;
            check_options(code, now)?;
            purge_party_codes(c, *party, now.unix_secs).map_err(storage)?;
            let count: i64 = c
                .prepare_cached("SELECT count(*) FROM code WHERE party = ?1")
                .and_then(|mut s| s.query_row([id(*party)], |r| r.get(0)))
                .map_err(storage)?;
            if count >= MAX_CODES_PER_PARTY as i64 {
                return Err(OpError::TooManyCodes);
            }
            let code = new_code(c, env, *party, code, now)?;
            env.tally.invited += 1;
            Ok(Step::Final(Done::Invited { code }))
        }
        Op::RevokeCodes {
            owner,
            party,
            which,
        } => {
            owner_of(c, owner, *party)?;
            let deleted = match which {
                Revoke::All => c
                    .prepare_cached("DELETE FROM code WHERE party = ?1")
                    .and_then(|mut s| s.execute([id(*party)])),
                Revoke::Code(secret) => c
                    .prepare_cached("DELETE FROM code WHERE hash = ?2 AND party = ?1")
                    .and_then(|mut s| s.execute(params![id(*party), &code_hash(secret)[..]])),
            }
            .map_err(storage)?;
            let codes = u32::try_from(deleted).unwrap_or(u32::MAX);
            env.tally.revoked += u64::from(codes);
            Ok(Step::Final(Done::Revoked { codes }))
        }
    }
}

fn create(
    c: &Connection,
    env: &mut Env<'_>,
    owner: &Key,
    party_name: &str,
    member_name: &str,
    options: CodeOptions,
    now: Now,
) -> Result<Step, OpError> {
    names::check(party_name).map_err(OpError::PartyName)?;
    names::check(member_name).map_err(OpError::MemberName)?;
    check_options(&options, now)?;
    if let Some(party) = party_of(c, owner).map_err(storage)? {
        return Err(OpError::AlreadyInParty { party });
    }
    let t = secs(now.unix_secs);
    c.prepare_cached(
        "INSERT INTO party (name, owner, version, members, reserved, created_at)
         VALUES (?1, ?2, 1, 1, 0, ?3)",
    )
    .and_then(|mut s| s.execute(params![party_name, &owner[..], t]))
    .map_err(storage)?;
    let party = PartyId(c.last_insert_rowid() as u64);
    // A new party holds no slot: the owner gets its first choice.
    c.prepare_cached(
        "INSERT INTO member (party, key, slot, name, joined_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id(party),
            &owner[..],
            ipam::preferred_slot(owner),
            member_name,
            t
        ])
    })
    .map_err(storage)?;
    let code = new_code(c, env, party, &options, now)?;
    env.tally.created += 1;
    Ok(Step::Roster(party, Shape::Created(code)))
}

/// A code row, as a join finds it.
struct CodeRow {
    party: PartyId,
    expires_at: Option<i64>,
    uses_left: Option<i64>,
}

fn join(
    c: &Connection,
    env: &mut Env<'_>,
    key: &Key,
    secret: &JoinSecret,
    member_name: &str,
    now: Now,
) -> Result<Step, OpError> {
    names::check(member_name).map_err(OpError::MemberName)?;
    // Every attempt does the same two lookups, by key and by the secret's
    // hash, before anything depends on what they found: a wrong code costs
    // what an expired or used-up one does. There is no lookup by party.
    let current = party_of(c, key).map_err(storage)?;
    let hash = code_hash(secret);
    let code = c
        .prepare_cached("SELECT party, expires_at, uses_left FROM code WHERE hash = ?1")
        .and_then(|mut s| {
            s.query_row([&hash[..]], |r| {
                Ok(CodeRow {
                    party: PartyId(r.get::<_, i64>(0)? as u64),
                    expires_at: r.get(1)?,
                    uses_left: r.get(2)?,
                })
            })
            .optional()
        })
        .map_err(storage)?;
    let Some(code) = code else {
        return refuse(env, JoinRefusal::Unknown);
    };
    // A retried join (its answer was lost) finds the member in: answer it
    // the same, even if the retry found the code expired or used up.
    if current == Some(code.party) {
        env.tally.rejoined += 1;
        return Ok(Step::Roster(code.party, Shape::Joined { rejoined: true }));
    }
    if code.expires_at.is_some_and(|t| secs(now.unix_secs) >= t) {
        return refuse(env, JoinRefusal::Expired);
    }
    if code.uses_left.is_some_and(|n| n <= 0) {
        return refuse(env, JoinRefusal::UsedUp);
    }
    if let Some(party) = current {
        return Err(OpError::AlreadyInParty { party });
    }
    let party = code.party;
    let Some(row) = party_row(c, party)? else {
        // The foreign key makes this impossible; refuse like a wrong code.
        return refuse(env, JoinRefusal::Unknown);
    };
    if row.members as usize >= MAX_MEMBERS {
        return Err(OpError::PartyFull);
    }
    let t = secs(now.unix_secs);
    // A former member has its reservation: its old address, kept.
    let reserved = c
        .prepare_cached("SELECT slot FROM member WHERE party = ?1 AND key = ?2")
        .and_then(|mut s| {
            s.query_row(params![id(party), &key[..]], |r| r.get::<_, u32>(0))
                .optional()
        })
        .map_err(storage)?;
    let reserved_delta = if reserved.is_some() {
        c.prepare_cached(
            "UPDATE member SET name = ?3, joined_at = ?4, left_at = NULL
             WHERE party = ?1 AND key = ?2",
        )
        .and_then(|mut s| s.execute(params![id(party), &key[..], member_name, t]))
        .map_err(storage)?;
        -1
    } else {
        let limit = u64::from(row.members) + u64::from(row.reserved) + 1;
        let slot = free_slot(c, party, ipam::preferred_slot(key), limit)?;
        c.prepare_cached(
            "INSERT INTO member (party, key, slot, name, joined_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![id(party), &key[..], slot, member_name, t]))
        .map_err(storage)?;
        0
    };
    if code.uses_left.is_some() {
        c.prepare_cached("UPDATE code SET uses_left = uses_left - 1 WHERE hash = ?1")
            .and_then(|mut s| s.execute([&hash[..]]))
            .map_err(storage)?;
    }
    bump(c, party, 1, reserved_delta)?;
    env.tally.joined += 1;
    Ok(Step::Roster(party, Shape::Joined { rejoined: false }))
}

fn refuse(env: &mut Env<'_>, reason: JoinRefusal) -> Result<Step, OpError> {
    env.tally.count_refusal(reason);
    Err(OpError::JoinRefused)
}

/// The first slot from `start` on that no member or reservation of the party
/// holds. The party holds fewer than `limit` slots, so at most `limit` probes.
fn free_slot(c: &Connection, party: PartyId, start: u32, limit: u64) -> Result<u32, OpError> {
    let mut stmt = c
        .prepare_cached("SELECT 1 FROM member WHERE party = ?1 AND slot = ?2")
        .map_err(storage)?;
    let mut slot = start % ADDRESS_SLOTS;
    for _ in 0..limit.min(u64::from(ADDRESS_SLOTS)) {
        let taken = stmt
            .query_row(params![id(party), slot], |_| Ok(()))
            .optional()
            .map_err(storage)?
            .is_some();
        if !taken {
            return Ok(slot);
        }
        slot = ipam::next_slot(slot);
    }
    Err(OpError::Storage(format!(
        "party {party}: no free address found in {limit} probes (counts out of step with rows?)"
    )))
}

fn leave(
    c: &Connection,
    env: &mut Env<'_>,
    key: &Key,
    party: PartyId,
    now: Now,
) -> Result<Step, OpError> {
    let row = member_of(c, key, party)?;
    if row.members <= 1 {
        // The last member out closes the party: nobody would be left to
        // manage it, and its codes would admit strangers into an empty room.
        delete_party(c, env, party)?;
        env.tally.left += 1;
        env.tally.closed += 1;
        return Ok(Step::Final(Done::Left {
            party,
            key: *key,
            roster: None,
        }));
    }
    if row.owner == *key {
        // Ownership passes to the member who has been in longest.
        c.prepare_cached(
            "UPDATE party SET owner = (
                 SELECT key FROM member WHERE party = ?1 AND left_at IS NULL AND key != ?2
                 ORDER BY joined_at, slot LIMIT 1)
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id(party), &key[..]]))
        .map_err(storage)?;
    }
    retire(c, env, party, key, &row, now)?;
    env.tally.left += 1;
    Ok(Step::Roster(party, Shape::Left(*key)))
}

fn kick(
    c: &Connection,
    env: &mut Env<'_>,
    owner: &Key,
    party: PartyId,
    member: &Key,
    now: Now,
) -> Result<Step, OpError> {
    let row = owner_of(c, owner, party)?;
    if member == owner {
        return Err(OpError::CannotKickSelf);
    }
    if !is_member(c, member, party)? {
        return Err(OpError::NoSuchMember);
    }
    retire(c, env, party, member, &row, now)?;
    env.tally.kicked += 1;
    Ok(Step::Roster(party, Shape::Kicked(*member)))
}

/// A member becomes a former member: its row stays as the reservation of its
/// address, and the oldest reservation goes if the party has too many.
fn retire(
    c: &Connection,
    env: &mut Env<'_>,
    party: PartyId,
    key: &Key,
    row: &PartyRow,
    now: Now,
) -> Result<(), OpError> {
    c.prepare_cached("UPDATE member SET left_at = ?3 WHERE party = ?1 AND key = ?2")
        .and_then(|mut s| s.execute(params![id(party), &key[..], secs(now.unix_secs)]))
        .map_err(storage)?;
    let max = env
        .config
        .max_reservations
        .min(ADDRESS_SLOTS - MAX_MEMBERS as u32);
    let mut reserved_delta = 1;
    if row.reserved + 1 > max {
        // Scans the party's rows (at most 64 members and the reservations):
        // only at the bound.
        let evicted = c
            .prepare_cached(
                "DELETE FROM member WHERE party = ?1 AND key = (
                     SELECT key FROM member WHERE party = ?1 AND left_at IS NOT NULL
                     ORDER BY left_at, key LIMIT 1)",
            )
            .and_then(|mut s| s.execute([id(party)]))
            .map_err(storage)?;
        reserved_delta -= evicted as i64;
        env.tally.reservations_evicted += evicted as u64;
    }
    bump(c, party, -1, reserved_delta)
}

fn delete_party(c: &Connection, env: &mut Env<'_>, party: PartyId) -> Result<(), OpError> {
    // Earlier ops of the batch changed this party: their outcomes get its
    // roster as it is now, its last state.
    if let Some(indices) = env.waiting.remove(&party) {
        let roster = Arc::new(roster_of(c, party)?);
        env.filled
            .extend(indices.into_iter().map(|i| (i, Arc::clone(&roster))));
    }
    // Members, reservations and codes go with it (ON DELETE CASCADE).
    c.prepare_cached("DELETE FROM party WHERE id = ?1")
        .and_then(|mut s| s.execute([id(party)]))
        .map_err(storage)?;
    Ok(())
}

fn new_code(
    c: &Connection,
    env: &mut Env<'_>,
    party: PartyId,
    options: &CodeOptions,
    now: Now,
) -> Result<JoinCode, OpError> {
    let mut stmt = c
        .prepare_cached(
            "INSERT INTO code (hash, party, expires_at, uses_left, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )
        .map_err(storage)?;
    // A 128-bit hash collision is not going to happen; the loop is only so
    // that one could not make a code admit two parties.
    for _ in 0..4 {
        let mut bytes = [0u8; lanrage_proto::join_code::RANDOM_BYTES];
        env.rng.fill_bytes(&mut bytes);
        let secret = JoinSecret::from_random(bytes);
        let inserted = stmt
            .execute(params![
                &code_hash(&secret)[..],
                id(party),
                options.expires_at.map(secs),
                options.max_uses.map(|n| i64::from(n.get())),
                secs(now.unix_secs),
            ])
            .map_err(storage)?;
        if inserted == 1 {
            return Ok(JoinCode::new(secret, env.config.relay_name.clone()));
        }
    }
    Err(OpError::Storage(
        "could not draw an unused join code (is the RNG broken?)".into(),
    ))
}

fn check_options(options: &CodeOptions, now: Now) -> Result<(), OpError> {
    if options.expires_at.is_some_and(|t| t <= now.unix_secs) {
        return Err(OpError::CodeOptions("the expiry time has already passed"));
    }
    Ok(())
}

pub(crate) fn purge_dead_codes(c: &Connection, now: u64) -> rusqlite::Result<usize> {
    c.prepare_cached("DELETE FROM code WHERE expires_at <= ?1 OR uses_left <= 0")?
        .execute([secs(now)])
}

fn purge_party_codes(c: &Connection, party: PartyId, now: u64) -> rusqlite::Result<usize> {
    c.prepare_cached("DELETE FROM code WHERE party = ?1 AND (expires_at <= ?2 OR uses_left <= 0)")?
        .execute(params![id(party), secs(now)])
}

/// The party's row, as the ops need it.
struct PartyRow {
    owner: Key,
    members: u32,
    reserved: u32,
}

fn party_row(c: &Connection, party: PartyId) -> Result<Option<PartyRow>, OpError> {
    c.prepare_cached("SELECT owner, members, reserved FROM party WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id(party)], |r| {
                Ok(PartyRow {
                    owner: r.get(0)?,
                    members: r.get(1)?,
                    reserved: r.get(2)?,
                })
            })
            .optional()
        })
        .map_err(storage)
}

fn is_member(c: &Connection, key: &Key, party: PartyId) -> Result<bool, OpError> {
    c.prepare_cached("SELECT 1 FROM member WHERE party = ?1 AND key = ?2 AND left_at IS NULL")
        .and_then(|mut s| {
            s.query_row(params![id(party), &key[..]], |_| Ok(()))
                .optional()
        })
        .map(|found| found.is_some())
        .map_err(storage)
}

/// The party's row if `key` is a current member of it; one answer
/// ([`OpError::NotAMember`]) whether the party exists or not.
fn member_of(c: &Connection, key: &Key, party: PartyId) -> Result<PartyRow, OpError> {
    let row = party_row(c, party)?.ok_or(OpError::NotAMember)?;
    if !is_member(c, key, party)? {
        return Err(OpError::NotAMember);
    }
    Ok(row)
}

fn owner_of(c: &Connection, key: &Key, party: PartyId) -> Result<PartyRow, OpError> {
    let row = member_of(c, key, party)?;
    if row.owner != *key {
        return Err(OpError::NotOwner);
    }
    Ok(row)
}

/// One more change: the version goes up, and the counts follow the rows.
fn bump(c: &Connection, party: PartyId, members: i64, reserved: i64) -> Result<(), OpError> {
    c.prepare_cached(
        "UPDATE party SET version = version + 1, members = members + ?2,
                          reserved = reserved + ?3
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id(party), members, reserved]))
    .map_err(storage)?;
    Ok(())
}

pub(crate) fn party_of(c: &Connection, key: &Key) -> rusqlite::Result<Option<PartyId>> {
    c.prepare_cached("SELECT party FROM member WHERE key = ?1 AND left_at IS NULL")?
        .query_row([&key[..]], |r| r.get::<_, i64>(0))
        .optional()
        .map(|p| p.map(|p| PartyId(p as u64)))
}

fn roster_of(c: &Connection, party: PartyId) -> Result<Roster, OpError> {
    read_roster(c, party)
        .map_err(storage)?
        .ok_or_else(|| OpError::Storage(format!("party {party} vanished mid-operation")))
}

pub(crate) fn read_roster(c: &Connection, party: PartyId) -> rusqlite::Result<Option<Roster>> {
    let head = c
        .prepare_cached("SELECT name, version, owner FROM party WHERE id = ?1")?
        .query_row([id(party)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Key>(2)?,
            ))
        })
        .optional()?;
    let Some((name, version, owner)) = head else {
        return Ok(None);
    };
    let mut stmt = c.prepare_cached(
        "SELECT key, name, slot FROM member WHERE party = ?1 AND left_at IS NULL ORDER BY slot",
    )?;
    let members = stmt
        .query_map([id(party)], |r| {
            let key: Key = r.get(0)?;
            Ok(Member {
                key,
                name: r.get(1)?,
                ip: address_of_slot(r.get(2)?),
                owner: key == owner,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Roster {
        party_id: party,
        version: version as u64,
        name,
        members,
    }))
}

/// SQLite integers are i64; party ids come from it and fit.
fn id(party: PartyId) -> i64 {
    party.0 as i64
}

/// Unix seconds as SQLite stores them; the far future saturates.
fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}
