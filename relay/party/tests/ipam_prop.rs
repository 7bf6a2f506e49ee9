//! IPAM as a property: over random sequences of joins, leaves and kicks by
//! several keys in two parties, applied in random batches, every roster's
//! addresses are unique, never 10.66.0.0 or 10.66.255.255 (nor any .0 or
//! .255), and a key always gets back the address it first had in a party.
//! Two of the keys share a first-choice address, so the probe is exercised.
//! Every roster an outcome carries is checked (each is its party's state at
//! the end of the batch), and the stored state against the model at the end.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use common::*;
use lanrage_relay_party::{CodeOptions, Done, JoinCode, Key, Op, OpError, PartyId, Roster};
use proptest::prelude::*;

/// Owners of the two parties; they only watch.
const OWNERS: [u32; 2] = [900, 901];

#[derive(Debug, Clone, Copy)]
enum Action {
    Join { member: usize, party: usize },
    Leave { member: usize },
    Kick { member: usize },
}

fn action(members: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..members, 0..2usize).prop_map(|(member, party)| Action::Join { member, party }),
        2 => (0..members).prop_map(|member| Action::Leave { member }),
        1 => (0..members).prop_map(|member| Action::Kick { member }),
    ]
}

/// Eight ordinary keys and two whose first-choice addresses collide.
fn member_keys() -> Vec<Key> {
    let mut keys: Vec<Key> = (1..=8).map(key).collect();
    let mut seen = HashMap::new();
    for n in 10_000..200_000 {
        let ip = lanrage_relay_party::preferred_address(&key(n));
        if let Some(&m) = seen.get(&ip) {
            keys.push(key(m));
            keys.push(key(n));
            return keys;
        }
        seen.insert(ip, n);
    }
    panic!("no colliding keys found");
}

struct Model {
    parties: [PartyId; 2],
    current: HashMap<Key, usize>,
    first_ip: HashMap<(usize, Key), Ipv4Addr>,
}

impl Model {
    fn index(&self, party: PartyId) -> usize {
        self.parties
            .iter()
            .position(|&p| p == party)
            .expect("a roster of one of the two parties")
    }

    /// Checks a roster against the model and the address rules.
    fn check(&mut self, roster: &Roster) {
        check_roster(roster);
        let p = self.index(roster.party_id);
        for m in &roster.members {
            let first = *self.first_ip.entry((p, m.key)).or_insert(m.ip);
            assert_eq!(m.ip, first, "key {:?} moved in party {p}", &m.key[..4]);
        }
    }
}

fn run(actions: &[Action], batch_sizes: &[usize]) {
    let keys = member_keys();
    let mut f = Fixture::new();
    let mut codes: Vec<JoinCode> = Vec::new();
    let mut parties = Vec::new();
    for owner in OWNERS {
        let (p, c) = f.create_with(key(owner), "p", CodeOptions::default());
        parties.push(p);
        codes.push(c);
    }
    let mut model = Model {
        parties: [parties[0], parties[1]],
        current: HashMap::new(),
        first_ip: HashMap::new(),
    };
    let mut rest = actions;
    let mut sizes = batch_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("cycle of a non-empty list")).min(rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        // The ops. A leave or kick names the party the key will be in when
        // the op runs, so membership is followed through the batch.
        let mut planned = model.current.clone();
        let mut ops = Vec::new();
        for a in batch {
            let op = match *a {
                Action::Join { member, party } => {
                    planned.entry(keys[member]).or_insert(party);
                    join(keys[member], &codes[party].secret)
                }
                Action::Leave { member } => {
                    let p = planned.remove(&keys[member]).unwrap_or(0);
                    Op::Leave {
                        key: keys[member],
                        party: model.parties[p],
                    }
                }
                Action::Kick { member } => {
                    let p = planned.remove(&keys[member]).unwrap_or(0);
                    Op::Kick {
                        owner: key(OWNERS[p]),
                        party: model.parties[p],
                        member: keys[member],
                    }
                }
            };
            ops.push(op);
        }
        let now = f.now();
        let outcomes = f.svc.apply(&ops, now);
        for (a, outcome) in batch.iter().zip(outcomes) {
            match *a {
                Action::Join { member, party } => {
                    let k = keys[member];
                    match model.current.get(&k).copied() {
                        Some(p) if p == party => {
                            assert!(matches!(outcome, Ok(Done::Joined { rejoined: true, .. })))
                        }
                        Some(p) => assert_eq!(
                            outcome,
                            Err(OpError::AlreadyInParty {
                                party: model.parties[p]
                            })
                        ),
                        None => {
                            let Ok(Done::Joined { roster, rejoined }) = &outcome else {
                                panic!("{outcome:?}")
                            };
                            assert!(!rejoined);
                            // The roster is the batch's last state: k may
                            // have left again later in the batch.
                            model.current.insert(k, party);
                            model.check(roster);
                        }
                    }
                }
                Action::Leave { member } => {
                    let k = keys[member];
                    if model.current.remove(&k).is_some() {
                        let Ok(Done::Left {
                            roster: Some(r), ..
                        }) = &outcome
                        else {
                            panic!("{outcome:?}")
                        };
                        model.check(r);
                    } else {
                        assert_eq!(outcome, Err(OpError::NotAMember));
                    }
                }
                Action::Kick { member } => {
                    let k = keys[member];
                    if model.current.remove(&k).is_some() {
                        let Ok(Done::Kicked { roster, kicked }) = &outcome else {
                            panic!("{outcome:?}")
                        };
                        assert_eq!(kicked, &k);
                        model.check(roster);
                    } else {
                        assert_eq!(outcome, Err(OpError::NoSuchMember));
                    }
                }
            }
        }
    }
    // The stored state is the model's.
    for (p, party) in model.parties.into_iter().enumerate() {
        let r = f
            .svc
            .roster(party)
            .expect("roster reads")
            .expect("the owners keep both parties alive");
        model.check(&r);
        let mut stored: Vec<Key> = r
            .members
            .iter()
            .map(|m| m.key)
            .filter(|k| *k != key(OWNERS[p]))
            .collect();
        let mut expected: Vec<Key> = model
            .current
            .iter()
            .filter(|&(_, &q)| q == p)
            .map(|(k, _)| *k)
            .collect();
        stored.sort();
        expected.sort();
        assert_eq!(stored, expected, "party {p}");
    }
    for k in &keys {
        let expected = model.current.get(k).map(|&p| model.parties[p]);
        assert_eq!(f.svc.party_of(k).expect("party_of reads"), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn addresses_are_unique_valid_and_stable(
        actions in proptest::collection::vec(action(10), 1..80),
        batch_sizes in proptest::collection::vec(1usize..12, 1..6),
    ) {
        run(&actions, &batch_sizes);
    }
}

#[test]
fn the_colliding_pair_really_collides() {
    let keys = member_keys();
    assert_eq!(
        lanrage_relay_party::preferred_address(&keys[8]),
        lanrage_relay_party::preferred_address(&keys[9])
    );
}
