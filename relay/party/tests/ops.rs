//! The party operations against a real database file: create, join, leave,
//! kick, rename, close, invite and revoke; join codes that are wrong, expired
//! or used up; rate-limited brute force; batches; address reservations.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use common::*;
use lanrage_relay_party::{
    CodeOptions, Done, JoinCode, JoinRefusal, JoinSecret, NameError, Op, OpError, PartyConfig,
    Revoke, MAX_CODES_PER_PARTY, MAX_MEMBERS,
};

#[test]
fn create_makes_the_creator_owner_with_an_address_and_a_code_naming_this_relay() {
    let mut f = Fixture::new();
    let out = f.one(create(key(1), "Friday LAN", CodeOptions::default()));
    let Ok(Done::Created { roster, code }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(roster.version, 1);
    assert_eq!(roster.name, "Friday LAN");
    assert_eq!(roster.members.len(), 1);
    let owner = &roster.members[0];
    assert_eq!(owner.key, key(1));
    assert!(owner.owner);
    assert_eq!(owner.name, "owner of Friday LAN");
    check_roster(&roster);
    // The code as text names the relay and reads back to itself.
    let text = code.to_string();
    assert!(text.ends_with("@test-relay"), "{text}");
    assert_eq!(JoinCode::parse(&text).unwrap(), code);
    assert_eq!(f.svc.party_of(&key(1)).unwrap(), Some(roster.party_id));
    assert_eq!(f.roster(roster.party_id).as_ref(), Some(&*roster));
    assert_eq!(f.svc.counters().created, 1);
}

#[test]
fn join_adds_a_member_and_bumps_the_version_and_a_retried_join_changes_nothing() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    let r = f.joined(key(2), &code);
    assert_eq!(r.party_id, party);
    assert_eq!(r.version, 2);
    assert_eq!(r.members.len(), 2);
    let m = r.member(&key(2)).unwrap();
    assert!(!m.owner);
    assert_eq!(m.name, "m0002");
    check_roster(&r);

    // The answer was lost and the client asks again: same roster, no change.
    let again = f.join(key(2), &code);
    assert_eq!(
        again,
        Ok(Done::Joined {
            roster: std::sync::Arc::new(r.clone()),
            rejoined: true
        })
    );
    assert_eq!(f.roster(party).unwrap().version, 2);
    let c = f.svc.counters();
    assert_eq!((c.joined, c.rejoined), (1, 1));
}

#[test]
fn a_key_is_in_one_party_at_a_time() {
    let mut f = Fixture::new();
    let (a, code_a) = f.create(key(1), "a");
    let (_, code_b) = f.create(key(2), "b");
    f.joined(key(3), &code_a);
    assert_eq!(
        f.join(key(3), &code_b),
        Err(OpError::AlreadyInParty { party: a })
    );
    // Creating while in a party is refused the same way.
    assert_eq!(
        f.one(create(key(3), "c", CodeOptions::default())),
        Err(OpError::AlreadyInParty { party: a })
    );
    assert!(OpError::AlreadyInParty { party: a }
        .to_string()
        .contains("leave it first"));
}

#[test]
fn wrong_expired_and_used_up_codes_get_one_answer_and_separate_counters() {
    let mut f = Fixture::new();
    let now = f.now().unix_secs;
    let (_, expiring) = f.create_with(
        key(1),
        "e",
        CodeOptions {
            expires_at: Some(now + 60),
            max_uses: None,
        },
    );
    let (_, single) = f.create_with(
        key(2),
        "s",
        CodeOptions {
            expires_at: None,
            max_uses: NonZeroU32::new(1),
        },
    );
    let wrong = JoinSecret::from_random([0x42; 10]);

    let unknown = f.one(join(key(10), &wrong));
    f.joined(key(11), &single);
    let used_up = f.join(key(12), &single);
    f.joined(key(13), &expiring);
    f.clock.advance(Duration::from_secs(60));
    let expired = f.join(key(14), &expiring);

    for answer in [&unknown, &used_up, &expired] {
        assert_eq!(answer, &Err(OpError::JoinRefused));
    }
    let c = f.svc.counters();
    assert_eq!(c.join_refused(JoinRefusal::Unknown), 1);
    assert_eq!(c.join_refused(JoinRefusal::UsedUp), 1);
    assert_eq!(c.join_refused(JoinRefusal::Expired), 1);
    let mut metrics = String::new();
    c.render_prometheus(&mut metrics);
    assert!(metrics.contains("lanrage_relay_party_join_refused_total{reason=\"used_up\"} 1"));

    // A member retrying its join after the code ran out is still answered
    // with its roster: its first join went through.
    assert!(matches!(
        f.join(key(11), &single),
        Ok(Done::Joined { rejoined: true, .. })
    ));
    assert!(matches!(
        f.join(key(13), &expiring),
        Ok(Done::Joined { rejoined: true, .. })
    ));
}

#[test]
fn code_options_in_the_past_are_refused() {
    let mut f = Fixture::new();
    let now = f.now().unix_secs;
    let out = f.one(create(
        key(1),
        "p",
        CodeOptions {
            expires_at: Some(now),
            max_uses: None,
        },
    ));
    assert!(matches!(out, Err(OpError::CodeOptions(_))), "{out:?}");
    assert!(out.unwrap_err().to_string().contains("already passed"));
}

#[test]
fn leave_and_rejoin_keeps_the_address() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    let first = f.joined(key(2), &code).member(&key(2)).unwrap().ip;
    let out = f.one(Op::Leave { key: key(2), party });
    let Ok(Done::Left {
        roster: Some(r),
        key: left,
        ..
    }) = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(left, key(2));
    assert_eq!(r.version, 3);
    assert!(r.member(&key(2)).is_none());
    assert_eq!(f.svc.party_of(&key(2)).unwrap(), None);
    // Others join in between; the address stays reserved.
    for n in 3..20 {
        f.joined(key(n), &code);
    }
    let back = f.joined(key(2), &code);
    assert_eq!(back.member(&key(2)).unwrap().ip, first);
    check_roster(&back);
    assert_eq!(
        f.one(Op::Leave {
            key: key(99),
            party
        }),
        Err(OpError::NotAMember)
    );
}

#[test]
fn the_owner_leaving_hands_the_party_on_and_the_last_one_out_closes_it() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    f.joined(key(2), &code);
    f.clock.advance(Duration::from_secs(1));
    f.joined(key(3), &code);
    let out = f.one(Op::Leave { key: key(1), party });
    let Ok(Done::Left {
        roster: Some(r), ..
    }) = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        r.owner().unwrap().key,
        key(2),
        "the longest-standing member"
    );
    check_roster(&r);
    f.one(Op::Leave { key: key(2), party }).unwrap();
    let out = f.one(Op::Leave { key: key(3), party });
    assert_eq!(
        out,
        Ok(Done::Left {
            party,
            key: key(3),
            roster: None
        })
    );
    assert_eq!(f.roster(party), None);
    assert_eq!(f.join(key(4), &code), Err(OpError::JoinRefused));
}

#[test]
fn kick_is_for_the_owner_and_not_of_itself() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    let ip2 = f.joined(key(2), &code).member(&key(2)).unwrap().ip;
    f.joined(key(3), &code);
    let kick = |owner, member| Op::Kick {
        owner: key(owner),
        party,
        member: key(member),
    };
    assert_eq!(f.one(kick(2, 3)), Err(OpError::NotOwner));
    assert_eq!(f.one(kick(1, 1)), Err(OpError::CannotKickSelf));
    assert_eq!(f.one(kick(1, 9)), Err(OpError::NoSuchMember));
    assert_eq!(f.one(kick(9, 2)), Err(OpError::NotAMember));
    let out = f.one(kick(1, 2));
    let Ok(Done::Kicked { roster, kicked }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(kicked, key(2));
    assert!(roster.member(&key(2)).is_none());
    assert_eq!(roster.version, 4);
    assert_eq!(f.svc.party_of(&key(2)).unwrap(), None);
    // Kicked is not banned: with a code it can come back, to its address.
    let back = f.joined(key(2), &code);
    assert_eq!(back.member(&key(2)).unwrap().ip, ip2);
    assert_eq!(f.svc.counters().kicked, 1);
}

#[test]
fn renames_bump_the_version_and_names_are_checked() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    f.joined(key(2), &code);
    let out = f.one(Op::RenameParty {
        owner: key(1),
        party,
        name: "Saturday".into(),
    });
    let Ok(Done::Renamed { roster }) = out else {
        panic!("{out:?}")
    };
    assert_eq!((roster.name.as_str(), roster.version), ("Saturday", 3));
    assert_eq!(
        f.one(Op::RenameParty {
            owner: key(2),
            party,
            name: "mine".into()
        }),
        Err(OpError::NotOwner)
    );
    let out = f.one(Op::SetMemberName {
        key: key(2),
        party,
        name: "Zoë".into(),
    });
    let Ok(Done::Renamed { roster }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(roster.member(&key(2)).unwrap().name, "Zoë");
    assert_eq!(roster.version, 4);
    assert_eq!(
        f.one(Op::SetMemberName {
            key: key(2),
            party,
            name: "x".repeat(33)
        }),
        Err(OpError::MemberName(NameError::TooLong { len: 33 }))
    );
    let err = f
        .one(Op::RenameParty {
            owner: key(1),
            party,
            name: "bad\u{7}".into(),
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("party name: contains a control"),
        "{err}"
    );
    assert_eq!(
        f.one(Op::SetMemberName {
            key: key(3),
            party,
            name: "x".into()
        }),
        Err(OpError::NotAMember)
    );
    let joined_badly = f.one(Op::Join {
        key: key(5),
        secret: code.secret,
        member_name: String::new(),
        source: source(1),
    });
    assert_eq!(joined_badly, Err(OpError::MemberName(NameError::Empty)));
    assert_eq!(
        f.roster(party).unwrap().version,
        4,
        "refusals change nothing"
    );
}

#[test]
fn close_is_for_the_owner_and_deletes_members_codes_and_reservations() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    f.joined(key(2), &code);
    f.joined(key(3), &code);
    f.one(Op::Leave { key: key(3), party }).unwrap();
    assert_eq!(
        f.one(Op::Close {
            owner: key(2),
            party
        }),
        Err(OpError::NotOwner)
    );
    let out = f.one(Op::Close {
        owner: key(1),
        party,
    });
    let Ok(Done::Closed { party: p, members }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(p, party);
    assert_eq!(
        members.into_iter().collect::<HashSet<_>>(),
        HashSet::from([key(1), key(2)])
    );
    assert_eq!(f.roster(party), None);
    assert_eq!(f.svc.party_of(&key(1)).unwrap(), None);
    assert_eq!(f.join(key(4), &code), Err(OpError::JoinRefused));
    // Nothing of it is left in the database.
    drop(f.svc);
    let db = rusqlite::Connection::open(f.dir.path().join("parties.db")).unwrap();
    for table in ["party", "member", "code"] {
        let n: i64 = db
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
}

#[test]
fn invite_issues_more_codes_with_limits_and_revoke_takes_them_back() {
    let mut f = Fixture::new();
    let (party, first) = f.create(key(1), "p");
    let now = f.now().unix_secs;
    let invite = |code| Op::Invite {
        owner: key(1),
        party,
        code,
    };
    let Ok(Done::Invited { code: second }) = f.one(invite(CodeOptions {
        expires_at: Some(now + 3600),
        max_uses: NonZeroU32::new(2),
    })) else {
        panic!()
    };
    assert_ne!(first, second);
    assert_eq!(
        f.one(Op::Invite {
            owner: key(2),
            party,
            code: CodeOptions::default()
        }),
        Err(OpError::NotAMember)
    );
    f.joined(key(2), &second);
    f.joined(key(3), &second);
    assert_eq!(f.join(key(4), &second), Err(OpError::JoinRefused));
    assert_eq!(
        f.one(Op::Invite {
            owner: key(2),
            party,
            code: CodeOptions::default()
        }),
        Err(OpError::NotOwner)
    );

    // Revoke one code by its secret: the other still works.
    let out = f.one(Op::RevokeCodes {
        owner: key(1),
        party,
        which: Revoke::Code(first.secret),
    });
    assert_eq!(out, Ok(Done::Revoked { codes: 1 }));
    assert_eq!(f.join(key(4), &first), Err(OpError::JoinRefused));

    // The bound: the used-up code is purged before counting.
    let mut codes = Vec::new();
    for _ in 0..MAX_CODES_PER_PARTY {
        match f.one(invite(CodeOptions::default())) {
            Ok(Done::Invited { code }) => codes.push(code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        f.one(invite(CodeOptions::default())),
        Err(OpError::TooManyCodes)
    );
    let out = f.one(Op::RevokeCodes {
        owner: key(1),
        party,
        which: Revoke::All,
    });
    assert_eq!(
        out,
        Ok(Done::Revoked {
            codes: MAX_CODES_PER_PARTY as u32
        })
    );
    assert_eq!(f.join(key(5), &codes[0]), Err(OpError::JoinRefused));
    assert!(f.one(invite(CodeOptions::default())).is_ok());
}

#[test]
fn dead_codes_are_purged() {
    let mut f = Fixture::new();
    let now = f.now().unix_secs;
    let (_, soon) = f.create_with(
        key(1),
        "a",
        CodeOptions {
            expires_at: Some(now + 10),
            max_uses: None,
        },
    );
    let (_, once) = f.create_with(
        key(2),
        "b",
        CodeOptions {
            expires_at: None,
            max_uses: NonZeroU32::new(1),
        },
    );
    let (_, forever) = f.create(key(3), "c");
    f.joined(key(4), &once);
    f.clock.advance(Duration::from_secs(10));
    let now = f.now();
    assert_eq!(f.svc.purge_dead_codes(now).unwrap(), 2);
    assert_eq!(f.svc.purge_dead_codes(now).unwrap(), 0);
    f.joined(key(5), &forever);
    assert_eq!(f.join(key(6), &soon), Err(OpError::JoinRefused));
}

#[test]
fn a_party_holds_at_most_64_members() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1000), "full");
    let ops: Vec<Op> = (1..MAX_MEMBERS as u32)
        .map(|n| join(key(n), &code.secret))
        .collect();
    let now = f.now();
    for out in f.svc.apply(&ops, now) {
        assert!(matches!(out, Ok(Done::Joined { .. })), "{out:?}");
    }
    let r = f.roster(party).unwrap();
    assert_eq!(r.members.len(), MAX_MEMBERS);
    check_roster(&r);
    assert_eq!(f.join(key(64), &code), Err(OpError::PartyFull));
    assert!(OpError::PartyFull.to_string().contains("64"));
    // Someone leaves: there is room again.
    f.one(Op::Leave { key: key(5), party }).unwrap();
    f.joined(key(64), &code);
}

#[test]
fn a_refused_op_in_a_batch_leaves_the_others_committed() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    let ops = [
        join(key(2), &code.secret),
        Op::Join {
            key: key(3),
            secret: code.secret,
            member_name: "\u{202E}evil".into(),
            source: source(1),
        },
        join(key(4), &JoinSecret::from_random([9; 10])),
        join(key(5), &code.secret),
        Op::Leave { key: key(2), party },
        Op::Kick {
            owner: key(5),
            party,
            member: key(1),
        },
    ];
    let now = f.now();
    let out = f.svc.apply(&ops, now);
    assert!(matches!(out[0], Ok(Done::Joined { .. })));
    assert!(matches!(out[1], Err(OpError::MemberName(_))));
    assert_eq!(out[2], Err(OpError::JoinRefused));
    // Both carry the roster as the batch left it (one read, shared).
    let (
        Ok(Done::Joined { roster: a, .. }),
        Ok(Done::Left {
            roster: Some(b), ..
        }),
    ) = (&out[3], &out[4])
    else {
        panic!("{out:?}")
    };
    assert_eq!(a.version, 4);
    assert!(std::sync::Arc::ptr_eq(a, b));
    assert_eq!(out[5], Err(OpError::NotOwner));
    let c = f.svc.counters();
    assert_eq!(c.batches, 2, "the create, then this batch: one commit each");
    assert_eq!(c.refused_other, 2);

    // All of it is on disk: reopen and look.
    drop(f.svc);
    let svc = lanrage_relay_party::PartyService::open(
        f.dir.path().join("parties.db"),
        config(),
        rand::rngs::OsRng,
    )
    .unwrap();
    let r = svc.roster(party).unwrap().unwrap();
    assert_eq!(r.version, 4);
    let keys: HashSet<_> = r.members.iter().map(|m| m.key).collect();
    assert_eq!(keys, HashSet::from([key(1), key(5)]));
}

/// A config whose join limits are the defaults (1/s, burst 10 per source;
/// 200/s, burst 1000 in total) and a small source table.
fn limited() -> PartyConfig {
    let mut c = PartyConfig::new(relay_name());
    c.rate_limit_sources = 256;
    c
}

#[test]
fn guessing_from_one_source_is_rate_limited_and_counted_and_says_nothing_about_codes() {
    let mut f = Fixture::with_config(limited());
    let (_, code) = f.create(key(1), "p");
    let burst = limited().join_per_source.burst as usize;
    let guesses: Vec<Op> = (0..200u32)
        .map(|n| {
            let mut b = [0u8; 10];
            b[..4].copy_from_slice(&n.to_be_bytes());
            join_from(key(100), &JoinSecret::from_random(b), source(7))
        })
        .collect();
    let now = f.now();
    let out = f.svc.apply(&guesses, now);
    assert!(out[..burst].iter().all(|o| o == &Err(OpError::JoinRefused)));
    assert!(out[burst..].iter().all(|o| o == &Err(OpError::RateLimited)));
    let c = f.svc.counters();
    assert_eq!(c.join_refused(JoinRefusal::Unknown), burst as u64);
    assert_eq!(c.join_rate_limited_source, (200 - burst) as u64);
    // The right code from the limited source gets the same RateLimited.
    assert_eq!(
        f.one(join_from(key(100), &code.secret, source(7))),
        Err(OpError::RateLimited)
    );
    // Another source is not affected, and the limited one gets a token back
    // after a second.
    assert!(f.one(join_from(key(101), &code.secret, source(8))).is_ok());
    f.clock.advance(Duration::from_secs(1));
    assert!(f.one(join_from(key(100), &code.secret, source(7))).is_ok());
    assert!(OpError::RateLimited.to_string().contains("try again"));
}

#[test]
fn guessing_from_many_sources_meets_the_total_limit_and_memory_stays_bounded() {
    let mut f = Fixture::with_config(limited());
    let (_, code) = f.create(key(1), "p");
    let total_burst = limited().join_total.burst as u64;
    let attempts = 5_000u32;
    // Spoofed sources, each new: the per-source limit never bites, the total
    // one does. Batches of 500, as a busy relay would apply them.
    let mut refused = 0u64;
    let mut limited_total = 0u64;
    for chunk in (0..attempts).collect::<Vec<_>>().chunks(500) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&n| {
                let mut b = [0u8; 10];
                b[4..8].copy_from_slice(&n.to_be_bytes());
                let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
                join_from(key(100), &JoinSecret::from_random(b), src)
            })
            .collect();
        let now = f.now();
        for o in f.svc.apply(&ops, now) {
            match o {
                Err(OpError::JoinRefused) => refused += 1,
                Err(OpError::RateLimited) => limited_total += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(refused, total_burst);
    assert_eq!(limited_total, u64::from(attempts) - total_burst);
    let c = f.svc.counters();
    assert_eq!(c.join_rate_limited_total, limited_total);
    assert_eq!(c.join_rate_limited_source, 0);
    assert_eq!(c.rate_limit_sources, 256, "the source table is bounded");
    assert_eq!(c.rate_limit_evictions, u64::from(attempts) - 256);
    // A real join still gets through once the total bucket refills.
    f.clock.advance(Duration::from_secs(1));
    assert!(f.join(key(2), &code).is_ok());
    // Idle sources are swept.
    f.clock.advance(Duration::from_secs(60));
    let now = f.now();
    f.svc.sweep(now);
    assert_eq!(f.svc.counters().rate_limit_sources, 0);
}

#[test]
fn reservations_are_bounded_per_party_and_the_oldest_goes() {
    let mut c = config();
    c.max_reservations = 2;
    let mut f = Fixture::with_config(c);
    let (party, code) = f.create(key(1), "p");
    let mut ips = Vec::new();
    for n in 2..=4 {
        ips.push(f.joined(key(n), &code).member(&key(n)).unwrap().ip);
    }
    for n in 2..=4 {
        f.clock.advance(Duration::from_secs(1));
        f.one(Op::Leave { key: key(n), party }).unwrap();
    }
    assert_eq!(f.svc.counters().reservations_evicted, 1);
    // 3 and 4 kept their reservations; 2 lost its own but, as nobody took
    // its first-choice address, gets it again anyway.
    for n in [3, 4, 2] {
        let r = f.joined(key(n), &code);
        assert_eq!(r.member(&key(n)).unwrap().ip, ips[n as usize - 2]);
    }
}

/// Two keys whose first-choice addresses are the same (found by search:
/// with 65,024 slots a few hundred keys suffice).
fn colliding_keys() -> (u32, u32) {
    let mut seen = std::collections::HashMap::new();
    for n in 0..100_000 {
        let ip = lanrage_relay_party::preferred_address(&key(n));
        if let Some(&m) = seen.get(&ip) {
            return (m, n);
        }
        seen.insert(ip, n);
    }
    panic!("no collision among 100000 keys");
}

#[test]
fn a_taken_first_choice_probes_to_the_next_free_address() {
    let (a, b) = colliding_keys();
    let mut f = Fixture::new();
    let (party, code) = f.create(key(999_999), "p");
    assert_eq!(
        f.roster(party).unwrap().members[0].ip,
        lanrage_relay_party::preferred_address(&key(999_999)),
        "a creator gets its first choice"
    );
    let ra = f.joined(key(a), &code);
    let rb = f.joined(key(b), &code);
    let ip_a = ra.member(&key(a)).unwrap().ip;
    let ip_b = rb.member(&key(b)).unwrap().ip;
    assert_ne!(ip_a, ip_b);
    let slot = |ip| lanrage_relay_party::slot_of_address(ip).unwrap();
    assert_eq!(
        slot(ip_b),
        (slot(ip_a) + 1) % lanrage_relay_party::ADDRESS_SLOTS
    );
    // a leaves; its reservation still holds its address against b's... and
    // b re-joining keeps the probed one.
    f.one(Op::Leave { key: key(a), party }).unwrap();
    f.one(Op::Leave { key: key(b), party }).unwrap();
    assert_eq!(f.joined(key(b), &code).member(&key(b)).unwrap().ip, ip_b);
    assert_eq!(f.joined(key(a), &code).member(&key(a)).unwrap().ip, ip_a);
}

#[test]
fn versions_only_grow() {
    let mut f = Fixture::new();
    let (party, code) = f.create(key(1), "p");
    let mut last = 1;
    for n in 2..30u32 {
        let v = f.joined(key(n), &code).version;
        assert!(v > last);
        last = v;
        if n % 3 == 0 {
            let Ok(Done::Left {
                roster: Some(r), ..
            }) = f.one(Op::Leave {
                key: key(n - 1),
                party,
            })
            else {
                panic!()
            };
            assert!(r.version > last);
            last = r.version;
        }
    }
}

#[test]
fn an_empty_batch_is_no_transaction() {
    let mut f = Fixture::new();
    let now = f.now();
    assert!(f.svc.apply(&[], now).is_empty());
    assert_eq!(f.svc.counters().batches, 0);
}

#[test]
fn ops_against_a_party_that_does_not_exist_say_not_a_member() {
    let mut f = Fixture::new();
    let nobody = lanrage_relay_party::PartyId(12345);
    for op in [
        Op::Leave {
            key: key(1),
            party: nobody,
        },
        Op::Close {
            owner: key(1),
            party: nobody,
        },
        Op::RenameParty {
            owner: key(1),
            party: nobody,
            name: "x".into(),
        },
    ] {
        assert_eq!(f.one(op), Err(OpError::NotAMember));
    }
    assert_eq!(f.roster(nobody), None);
}
