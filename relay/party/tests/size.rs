//! What a member costs on disk: the goal is at most 1 KB per member
//! (issue 12), for a full 64-member party and for many small parties.
//! Run with `--nocapture` to see the figures.

mod common;

use common::*;
use lanrage_relay_party::{CodeOptions, Done, Op, MAX_MEMBERS};

const GOAL_BYTES_PER_MEMBER: u64 = 1024;

#[test]
fn full_parties_cost_at_most_1_kb_per_member() {
    // One full party fits in the pages an empty database already has (its
    // file is 32 KB either way), so the cost is measured over 50 of them.
    const PARTIES: u32 = 50;
    let mut f = Fixture::new();
    let empty = f.svc.database_bytes().unwrap();
    for p in 0..PARTIES {
        let base = p * 1000;
        let (_, code) = f.create(key(base), &format!("full party {p}"));
        let ops: Vec<Op> = (1..MAX_MEMBERS as u32)
            .map(|n| join(key(base + n), &code.secret))
            .collect();
        let now = f.now();
        assert!(f.svc.apply(&ops, now).iter().all(Result::is_ok));
        if p == 0 {
            let one = f.svc.database_bytes().unwrap();
            eprintln!("one full party: {one} bytes in all ({empty} when empty)");
        }
    }
    let members = u64::from(PARTIES) * MAX_MEMBERS as u64;
    let bytes = f.svc.database_bytes().unwrap();
    let per_member = bytes / members;
    eprintln!(
        "{PARTIES} full parties: {bytes} bytes, {per_member} bytes per member (party rows and codes included)"
    );
    assert!(per_member <= GOAL_BYTES_PER_MEMBER, "{per_member}");
}

#[test]
fn many_small_parties_cost_at_most_1_kb_per_member() {
    const PARTIES: u32 = 1000;
    const SIZE: u32 = 4;
    let mut f = Fixture::new();
    let creates: Vec<Op> = (0..PARTIES)
        .map(|p| Op::Create {
            owner: key(p * SIZE),
            party_name: format!("party number {p}"),
            member_name: format!("player {}", p * SIZE),
            code: CodeOptions::default(),
        })
        .collect();
    let now = f.now();
    let codes: Vec<_> = f
        .svc
        .apply(&creates, now)
        .into_iter()
        .map(|o| match o {
            Ok(Done::Created { code, .. }) => code,
            other => panic!("{other:?}"),
        })
        .collect();
    let joins: Vec<Op> = (0..PARTIES)
        .flat_map(|p| (1..SIZE).map(move |m| (p, p * SIZE + m)))
        .map(|(p, n)| Op::Join {
            key: key(n),
            secret: codes[p as usize].secret,
            member_name: format!("player {n}"),
            source: source(1),
        })
        .collect();
    for chunk in joins.chunks(256) {
        let now = f.now();
        assert!(f.svc.apply(chunk, now).iter().all(Result::is_ok));
    }
    let members = u64::from(PARTIES * SIZE);
    let bytes = f.svc.database_bytes().unwrap();
    let per_member = bytes / members;
    eprintln!(
        "{PARTIES} parties of {SIZE}: {bytes} bytes, {per_member} bytes per member (party rows and codes included)"
    );
    assert!(per_member <= GOAL_BYTES_PER_MEMBER, "{per_member}");
}
