//! A party database survives `kill -9` of its writer mid-write with no
//! committed change lost.
//!
//! The writer is a real child process (this test binary, re-run in writer
//! mode): it applies batches in a loop and prints each op's id after the
//! batch's commit returned. The parent reads some of them, kills the child
//! with SIGKILL while it is writing, reopens the database and checks that
//! every op the child reported is there.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use lanrage_relay_party::{CodeOptions, Done, JoinCode, Op, PartyId, PartyService};

/// Set by the parent: the database the writer child writes.
const WRITER_PATH: &str = "LANRAGE_PARTY_TEST_WRITER_DB";
/// Creates per batch; as many joins ride along.
const CREATES_PER_BATCH: u32 = 8;
/// The child stops by itself after this many batches or this long.
const CHILD_MAX_BATCHES: u32 = 5_000;
const CHILD_MAX_TIME: Duration = Duration::from_secs(30);
/// Committed ops the parent waits for before it kills.
const KILL_AFTER: usize = 400;

/// Not a test on its own: the writer child of [`kill_9_mid_write_loses_no_committed_change`].
#[test]
fn writer_child() {
    let Ok(path) = std::env::var(WRITER_PATH) else {
        return;
    };
    let mut svc = PartyService::open(&path, config(), rand::rngs::OsRng).expect("writer opens");
    let clock = Clock::new();
    let started = Instant::now();
    let stdout = std::io::stdout();
    // The code of the party the next batch's joins go to.
    let mut target: Option<(PartyId, JoinCode)> = None;
    let mut joiner = 0u32;
    for batch in 0..CHILD_MAX_BATCHES {
        if started.elapsed() > CHILD_MAX_TIME {
            break;
        }
        let mut ops = Vec::new();
        for i in 0..CREATES_PER_BATCH {
            let n = batch * CREATES_PER_BATCH + i;
            ops.push(Op::Create {
                owner: key(n),
                party_name: format!("op{n}"),
                member_name: "owner".into(),
                code: CodeOptions::default(),
            });
        }
        let first_joiner = joiner;
        if let Some((_, code)) = &target {
            for _ in 0..CREATES_PER_BATCH {
                ops.push(join(key(1_000_000 + joiner), &code.secret));
                joiner += 1;
            }
        }
        let outcomes = svc.apply(&ops, clock.now());
        // Committed: report every op of the batch.
        let mut out = stdout.lock();
        let mut next_target = None;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(Done::Created { roster, code }) => {
                    let n = batch * CREATES_PER_BATCH + i as u32;
                    writeln!(out, "COMMITTED create {n} {}", roster.party_id.0).unwrap();
                    next_target.get_or_insert((roster.party_id, code));
                }
                Ok(Done::Joined { roster, .. }) => {
                    let j = first_joiner + (i as u32 - CREATES_PER_BATCH);
                    writeln!(out, "COMMITTED join {j} {}", roster.party_id.0).unwrap();
                }
                other => panic!("writer: {other:?}"),
            }
        }
        out.flush().unwrap();
        target = next_target;
    }
}

enum Committed {
    Create { n: u32, party: u64 },
    Join { j: u32, party: u64 },
}

fn parse(line: &str) -> Option<Committed> {
    let (_, rest) = line.split_once("COMMITTED ")?;
    let mut words = rest.split(' ');
    let kind = words.next()?;
    let id: u32 = words.next()?.parse().ok()?;
    let party: u64 = words.next()?.parse().ok()?;
    match kind {
        "create" => Some(Committed::Create { n: id, party }),
        "join" => Some(Committed::Join { j: id, party }),
        _ => None,
    }
}

#[test]
fn kill_9_mid_write_loses_no_committed_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parties.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
        .env(WRITER_PATH, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(c) = parse(&line) {
                if tx.send(c).is_err() {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut committed = Vec::new();
    while committed.len() < KILL_AFTER {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) => committed.push(c),
            Err(_) => panic!("the writer reported only {} ops in 60 s", committed.len()),
        }
    }
    // SIGKILL while it writes the next batches.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");
    // Whatever it printed before it died was committed too.
    reader.join().unwrap();
    committed.extend(rx.try_iter());

    let svc = PartyService::open(&path, config(), rand::rngs::OsRng)
        .expect("the killed writer's database opens (and passes its integrity check)");
    let (mut creates, mut joins) = (0, 0);
    for c in &committed {
        match *c {
            Committed::Create { n, party } => {
                let r = svc
                    .roster(PartyId(party))
                    .unwrap()
                    .unwrap_or_else(|| panic!("committed party op{n} ({party}) lost"));
                assert_eq!(r.name, format!("op{n}"));
                assert!(r.member(&key(n)).is_some_and(|m| m.owner));
                creates += 1;
            }
            Committed::Join { j, party } => {
                assert_eq!(
                    svc.party_of(&key(1_000_000 + j)).unwrap(),
                    Some(PartyId(party)),
                    "committed join {j} lost"
                );
                joins += 1;
            }
        }
    }
    assert!(creates > 0 && joins > 0, "{creates} creates, {joins} joins");
    // A batch is all or nothing: any party beyond the reported ones is whole.
    let db_parties = (0..CHILD_MAX_BATCHES * CREATES_PER_BATCH)
        .map(|n| svc.party_of(&key(n)).unwrap())
        .take_while(Option::is_some)
        .count();
    assert_eq!(
        db_parties % CREATES_PER_BATCH as usize,
        0,
        "a partial batch was stored"
    );
    assert!(db_parties >= creates);
    eprintln!(
        "{} ops reported committed, all found; {db_parties} parties stored",
        committed.len()
    );
}
