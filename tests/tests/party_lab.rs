//! Parties end to end, as root, in network namespaces (docs/parties.md):
//! the real relay with a party database, four real clients with nothing
//! configured but the relay list. One creates a party, three join by its
//! code; every pair pings between the addresses the relay gave them; a
//! member that leaves can reach no one and no one lists it; the home relay
//! restarts and the party is there with the same addresses; a client that
//! restarts remembers its party; a one-use code admits once; the owner
//! kicks. Skips without root; fails under
//! `LANRAGE_REQUIRE_PRIVILEGED=1`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use lanrage_test_support::privileged::skip_or_fail;
use lanrage_tests::client_process::{eventually, ping_lab_available, Running};
use lanrage_tests::netns::lab_available;
use lanrage_tests::party_lab::PartyLab;

const CLIENTS: [&str; 4] = ["ada", "bo", "cy", "di"];

fn lab_or_skip(test: &str) -> bool {
    match ping_lab_available(lab_available()) {
        Ok(()) => true,
        Err(why) => {
            skip_or_fail(test, &why);
            false
        }
    }
}

#[test]
fn four_clients_join_by_code_ping_each_other_and_a_leaver_is_cut_off() -> Result<()> {
    if !lab_or_skip("four_clients_join_by_code_ping_each_other_and_a_leaver_is_cut_off") {
        return Ok(());
    }
    let lab = PartyLab::new(&CLIENTS, |_| String::new())?;
    let mut relay = lab.start_relay()?;
    let mut clients: BTreeMap<&str, Running> = BTreeMap::new();
    for name in CLIENTS {
        clients.insert(name, lab.start_client(name)?);
    }
    for name in CLIENTS {
        if !eventually(Duration::from_secs(10), || lab.registered(name)) {
            bail!("{name} never registered:\n{}", lab.log(name));
        }
    }
    // Nothing configured: no address, no peers, no party.
    assert_eq!(lab.status("ada")?["address"], "none");

    let code = lab.lanrage("ada", &["party", "create", "--name", "LAN"])?;
    let code = code.trim().to_owned();
    assert!(code.ends_with("@lab"), "{code}");
    let ada_ip = lab.members("ada")?["ada"].clone();

    // Each joiner: from `party join` to a ping answered by every member
    // already there.
    let mut join_times = Vec::new();
    for (i, name) in CLIENTS.iter().enumerate().skip(1) {
        let start = Instant::now();
        lab.lanrage(name, &["party", "join", &code])?;
        let members = lab.members(name)?;
        assert_eq!(members.len(), i + 1, "{members:?}");
        let mut slowest = Duration::ZERO;
        for (other, ip) in &members {
            if other == name {
                continue;
            }
            match lab.first_reply(name, ip, Duration::from_secs(5))? {
                Some(_) => slowest = slowest.max(start.elapsed()),
                None => bail!(
                    "{name} can't reach {other} at {ip}\n{name}:\n{}\n{other}:\n{}",
                    lab.log(name),
                    lab.log(other)
                ),
            }
        }
        join_times.push(slowest);
    }
    println!("from party join to a reply from every member: {join_times:?}");

    // Every member sees the same roster; every pair pings.
    let roster = lab.members("ada")?;
    assert_eq!(roster.len(), 4);
    let ips: std::collections::BTreeSet<&String> = roster.values().collect();
    assert_eq!(ips.len(), 4, "unique addresses: {roster:?}");
    for name in CLIENTS {
        assert_eq!(lab.members(name)?, roster, "{name}'s view");
        for (other, ip) in &roster {
            if other != name {
                let answered = lab.ping(name, ip, 3)?;
                assert!(answered >= 2, "{name} → {other}: {answered}/3");
            }
        }
    }

    // di leaves: cut off both ways, and no one lists it.
    let di_ip = roster["di"].clone();
    lab.lanrage("di", &["party", "leave"])?;
    for name in ["ada", "bo", "cy"] {
        assert!(
            eventually(Duration::from_secs(3), || lab
                .peers(name)
                .is_ok_and(|p| !p.iter().any(|n| n == "di"))),
            "{name} still lists di"
        );
        assert_eq!(lab.ping(name, &di_ip, 3)?, 0, "{name} still reaches di");
        assert_eq!(
            lab.ping("di", &roster[name], 3)?,
            0,
            "di still reaches {name}"
        );
    }
    assert_eq!(lab.status("di")?["address"], "none");

    // The relay restarts (kill -9): the party is there, same addresses.
    drop(relay);
    relay = lab.start_relay()?;
    let back = eventually(Duration::from_secs(15), || {
        lab.ping("bo", &ada_ip, 1).is_ok_and(|n| n == 1)
    });
    assert!(
        back,
        "bo can't reach ada after the relay restart\n{}",
        lab.log("bo")
    );
    let after: BTreeMap<String, String> = lab.members("cy")?;
    assert_eq!(after.get("ada"), roster.get("ada"));
    assert_eq!(after.get("bo"), roster.get("bo"));
    assert_eq!(after.get("cy"), roster.get("cy"));

    // A client restart remembers its party.
    drop(clients.remove("cy"));
    std::thread::sleep(Duration::from_millis(300));
    clients.insert("cy", lab.start_client("cy")?);
    let again = eventually(Duration::from_secs(10), || {
        lab.ping("cy", &ada_ip, 1).is_ok_and(|n| n == 1)
    });
    assert!(again, "cy forgot its party\n{}", lab.log("cy"));
    assert_eq!(lab.members("cy")?.get("cy"), roster.get("cy"));

    // A one-use code lets di back in once; the owner kicks it; the used-up
    // code gets the one refusal.
    let once = lab.lanrage("ada", &["party", "invite", "--max-uses", "1"])?;
    let once = once.trim().to_owned();
    lab.lanrage("di", &["party", "join", &once])?;
    assert_eq!(
        lab.members("di")?.get("di"),
        Some(&di_ip),
        "same address again"
    );
    assert!(lab
        .first_reply("di", &ada_ip, Duration::from_secs(5))?
        .is_some());
    lab.lanrage("ada", &["party", "kick", "di"])?;
    assert!(
        eventually(Duration::from_secs(3), || lab
            .status("di")
            .is_ok_and(|s| s["address"] == "none")),
        "di still in after the kick"
    );
    let again = lab.lanrage("di", &["party", "join", &once]);
    let refused = again.expect_err("a used-up code");
    assert!(refused.to_string().contains("does not work"), "{refused:#}");
    drop(relay);
    Ok(())
}
