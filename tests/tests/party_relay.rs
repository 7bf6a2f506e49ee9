//! Parties on a real relay, end to end over loopback (docs/parties.md,
//! docs/protocol.md §2.12): test clients register, create a party, join it
//! by its code, get every roster change pushed, leave and come back to the
//! same address; the party survives `kill -9` of the relay; a wrong code
//! gets the one refusal; an unacknowledged push is sent again; and a
//! relay whose party database is not a database refuses to start, saying
//! so.

use std::time::Duration;

use anyhow::{bail, Result};
use lanrage_proto::party::{PartyBody, PartyOp, RosterMember, Status};
use lanrage_proto::PeerKey;
use lanrage_tests::peer::TestPeer;
use lanrage_tests::relay_process::{relay_binary, RelaySetup};

const WAIT: Duration = Duration::from_secs(3);

/// Party messages as they came: (id, body).
type Messages = Vec<(u64, PartyBody)>;

fn setup() -> Result<RelaySetup> {
    // The database sits in the setup's scratch directory; the config names
    // it relative to nothing, so it is written after we know the directory.
    let setup = RelaySetup::new("")?;
    let db = setup.dir.path().join("parties.sqlite");
    let mut config = std::fs::read_to_string(&setup.config_path)?;
    config.push_str(&format!(
        "party:\n  name: lab\n  database: \"{}\"\n",
        db.display()
    ));
    std::fs::write(&setup.config_path, config)?;
    Ok(setup)
}

fn peer(setup: &RelaySetup, seed: u8) -> Result<TestPeer> {
    let mut p = TestPeer::new(setup.listen, &setup.public_key(), [seed; 32])?;
    p.register()?;
    Ok(p)
}

fn create(p: &mut TestPeer, name: &str) -> Result<(u64, [u8; 10], Messages)> {
    let (reply, pushed) = p.party_call(
        &PartyOp::Create {
            party_name: name.into(),
            member_name: "alice".into(),
            expires_in: 0,
            max_uses: 0,
        },
        WAIT,
    )?;
    match reply {
        PartyBody::Reply {
            status: Status::Ok,
            party,
            secret: Some(secret),
        } => Ok((party, secret, pushed)),
        other => bail!("create answered {other:?}"),
    }
}

fn join(p: &mut TestPeer, secret: [u8; 10], name: &str) -> Result<(Status, Messages)> {
    let (reply, pushed) = p.party_call(
        &PartyOp::Join {
            secret,
            member_name: name.into(),
        },
        WAIT,
    )?;
    let PartyBody::Reply { status, .. } = reply else {
        bail!("not a reply");
    };
    Ok((status, pushed))
}

/// The members of the newest roster among `messages` (and its version),
/// waiting up to `WAIT` more for one if none came yet.
fn roster(
    p: &mut TestPeer,
    mut messages: Vec<(u64, PartyBody)>,
) -> Result<(u64, bool, Vec<RosterMember>)> {
    if !messages
        .iter()
        .any(|(_, b)| matches!(b, PartyBody::Roster { .. }))
    {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            messages.extend(p.party_messages(Duration::from_millis(100))?);
            if messages
                .iter()
                .any(|(_, b)| matches!(b, PartyBody::Roster { .. }))
            {
                break;
            }
        }
    }
    let newest = messages
        .into_iter()
        .filter_map(|(version, body)| match body {
            PartyBody::Roster {
                removed, members, ..
            } => Some((version, removed, members)),
            PartyBody::Reply { .. } => None,
        })
        .max_by_key(|(version, _, _)| *version);
    newest.ok_or_else(|| anyhow::anyhow!("no roster pushed"))
}

fn ack(p: &mut TestPeer, party: u64, version: u64) -> Result<()> {
    p.party_request(&PartyOp::RosterAck { party, version })?;
    Ok(())
}

fn keys(members: &[RosterMember]) -> Vec<PeerKey> {
    let mut k: Vec<PeerKey> = members.iter().map(|m| m.key).collect();
    k.sort_unstable();
    k
}

#[test]
fn a_party_is_created_joined_by_code_left_rejoined_and_survives_kill_9() -> Result<()> {
    let setup = setup()?;
    let relay = setup.start()?;
    let mut alice = peer(&setup, 1)?;
    let mut bob = peer(&setup, 2)?;

    let (party, secret, pushed) = create(&mut alice, "Friday LAN")?;
    let (v1, _, members) = roster(&mut alice, pushed)?;
    assert_eq!(keys(&members), vec![alice.key]);
    assert!(members[0].owner);
    ack(&mut alice, party, v1)?;

    // A wrong code: the one refusal, and nothing pushed to anyone.
    let mut wrong = secret;
    wrong[0] ^= 0x80;
    let (status, _) = join(&mut bob, wrong, "bob")?;
    assert_eq!(status, Status::Refused);

    let (status, pushed) = join(&mut bob, secret, "bob")?;
    assert_eq!(status, Status::Ok);
    let (v2, _, members) = roster(&mut bob, pushed)?;
    assert!(v2 > v1);
    assert_eq!(keys(&members), keys_of(&[&alice, &bob]));
    let bob_ip = members
        .iter()
        .find(|m| m.key == bob.key)
        .map(|m| m.ip)
        .expect("bob listed");
    let alice_ip = members
        .iter()
        .find(|m| m.key == alice.key)
        .map(|m| m.ip)
        .expect("alice listed");
    assert_ne!(alice_ip, bob_ip);
    assert_eq!(bob_ip.octets()[..2], [10, 66]);
    ack(&mut bob, party, v2)?;
    // Alice hears of Bob without asking.
    let (v, _, members) = roster(&mut alice, Vec::new())?;
    assert_eq!((v, keys(&members)), (v2, keys_of(&[&alice, &bob])));
    ack(&mut alice, party, v2)?;

    // Bob leaves: he is told he's out, Alice that he's gone.
    let (reply, pushed) = bob.party_call(&PartyOp::Leave { party }, WAIT)?;
    assert!(matches!(
        reply,
        PartyBody::Reply {
            status: Status::Ok,
            ..
        }
    ));
    let (v3, removed, members) = roster(&mut bob, pushed)?;
    assert!(removed && members.is_empty());
    ack(&mut bob, party, v3)?;
    let (_, _, members) = roster(&mut alice, Vec::new())?;
    assert_eq!(keys(&members), vec![alice.key]);

    // Back again: the same address.
    let (status, pushed) = join(&mut bob, secret, "bob")?;
    assert_eq!(status, Status::Ok);
    let (v4, _, members) = roster(&mut bob, pushed)?;
    let again = members.iter().find(|m| m.key == bob.key).map(|m| m.ip);
    assert_eq!(again, Some(bob_ip), "stable address for a key");
    ack(&mut bob, party, v4)?;
    let _ = alice.party_messages(Duration::from_millis(300))?;

    // kill -9 and a fresh start: the party is still there, and a member
    // registering again gets its roster without asking.
    drop(relay);
    let _relay = setup.start()?;
    let mut alice = peer(&setup, 1)?;
    let (v, _, members) = roster(&mut alice, Vec::new())?;
    assert_eq!(v, v4);
    assert_eq!(keys(&members), keys_of(&[&alice, &bob]));
    let ips: Vec<_> = members.iter().map(|m| m.ip).collect();
    assert!(ips.contains(&alice_ip) && ips.contains(&bob_ip));
    Ok(())
}

fn keys_of(peers: &[&TestPeer]) -> Vec<PeerKey> {
    let mut k: Vec<PeerKey> = peers.iter().map(|p| p.key).collect();
    k.sort_unstable();
    k
}

#[test]
fn an_unacknowledged_roster_is_sent_again_and_an_acknowledged_one_is_not() -> Result<()> {
    let setup = setup()?;
    let _relay = setup.start()?;
    let mut alice = peer(&setup, 3)?;
    let (party, _, pushed) = create(&mut alice, "resend")?;
    let first = pushed
        .iter()
        .filter(|(_, b)| matches!(b, PartyBody::Roster { .. }))
        .count();
    // No ack: the roster comes again (at 250 ms, then 500 ms).
    let again = alice.party_messages(Duration::from_millis(900))?;
    let (version, _) = again.first().cloned().expect("resent");
    assert!(first + again.len() >= 2, "{first} + {again:?}");
    ack(&mut alice, party, version)?;
    // Give the ack a moment, then silence.
    let _ = alice.party_messages(Duration::from_millis(100))?;
    let after = alice.party_messages(Duration::from_millis(1200))?;
    assert!(after.is_empty(), "still resending after the ack: {after:?}");
    Ok(())
}

#[test]
fn a_party_database_that_is_not_a_database_stops_the_start_with_a_clear_error() -> Result<()> {
    let setup = setup()?;
    let db = setup.dir.path().join("parties.sqlite");
    std::fs::write(
        &db,
        b"these are not the pages you are looking for\n".repeat(200),
    )?;
    let output = std::process::Command::new(relay_binary())
        .arg("--config")
        .arg(&setup.config_path)
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("party.database") && stderr.contains(&db.display().to_string()),
        "{stderr}"
    );
    // Nothing was recreated or emptied.
    assert!(std::fs::read(&db)?.starts_with(b"these are not"));
    Ok(())
}

/// A full party: 64 members (each from its own loopback address, as 64
/// households would be), then one change by the owner. Every member must
/// get the whole new roster (four pages); how long that took is printed,
/// for docs/parties.md (goal: a second).
#[test]
fn a_roster_change_reaches_all_64_members_of_a_full_party() -> Result<()> {
    let setup = setup()?;
    let relay = setup.start_with_env(&[("RUST_LOG", "lanrage_relay::party=debug,info")])?;
    let mut members = Vec::new();
    for i in 0..64u8 {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).and_then(|_| {
            std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 1, i + 1), 0))
        })?;
        let mut p = TestPeer::with_socket(setup.listen, &setup.public_key(), [i + 10; 32], socket)?;
        p.register()?;
        members.push(p);
    }
    let (party, secret, _) = create(&mut members[0], "full")?;
    for p in members.iter_mut().skip(1) {
        let (status, _) = join(p, secret, "m")?;
        assert_eq!(status, Status::Ok);
    }
    // A 65th is refused: the party is full.
    let mut extra = TestPeer::with_socket(
        setup.listen,
        &setup.public_key(),
        [99; 32],
        std::net::UdpSocket::bind(("127.0.0.2", 0))?,
    )?;
    extra.register()?;
    assert_eq!(join(&mut extra, secret, "late")?.0, Status::PartyFull);
    // Every member acks what it has, as a client does, and the pushes of
    // the joins settle.
    for p in &mut members {
        for (version, body) in p.party_messages(Duration::from_millis(20))? {
            if matches!(body, PartyBody::Roster { .. }) {
                ack(p, party, version)?;
            }
        }
    }

    // The change, and one thread per member waiting for all its pages, as
    // 64 separate PCs would.
    let start = std::time::Instant::now();
    members[0].party_request(&PartyOp::Rename {
        party,
        name: "renamed".into(),
    })?;
    let done: Vec<Option<Duration>> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .iter_mut()
            .map(|p| {
                scope.spawn(move || -> Option<Duration> {
                    let mut got = std::collections::BTreeSet::new();
                    while start.elapsed() < Duration::from_secs(5) {
                        let Ok(messages) = p.party_messages(Duration::from_millis(5)) else {
                            return None;
                        };
                        for (version, body) in messages {
                            if let PartyBody::Roster {
                                name, page, pages, ..
                            } = body
                            {
                                if name == "renamed" {
                                    got.insert(page);
                                    if got.len() == usize::from(pages) {
                                        let at = start.elapsed();
                                        let _ = ack(p, party, version);
                                        return Some(at);
                                    }
                                }
                            }
                        }
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let mut times: Vec<Duration> = done.iter().flatten().copied().collect();
    times.sort();
    println!(
        "roster change to {} of 64 members: first {:?}, median {:?}, last {:?}",
        times.len(),
        times.first(),
        times.get(times.len() / 2),
        times.last()
    );
    if let Some(line) = relay
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("party batch applied") && l.contains("ops=1 "))
    {
        println!("the relay's side: {line}");
    }
    // Behaviour is asserted (every member, all pages, within the 5 s
    // deadline); the time is the figure docs/parties.md reports against
    // its 1 s goal, measured, not asserted (docs/testing.md).
    assert_eq!(times.len(), 64, "every member got all four pages");
    Ok(())
}
