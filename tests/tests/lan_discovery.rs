//! LAN game discovery end to end, as root, in network namespaces
//! (docs/lan-discovery.md): the real relay with parties, real clients, and
//! processes that send and listen exactly as the games do
//! (`lanrage-gamesim`: real sockets, the games' packet formats, bound the
//! way the games bind). Minecraft's announcement, Warcraft III's search
//! and answer, subnet broadcast, mDNS (multicast and legacy unicast),
//! SSDP and Quake 3 cross the virtual LAN with the sender's virtual
//! address; a PC outside the party sees none of it; in a party of eight a
//! 1,000 pps broadcast storm is capped at the configured rate, counted,
//! arrives exactly once everywhere, and the others' game traffic flows.
//!
//! The lab's hosts share one Ethernet segment for their underlay, so
//! every assertion on a received packet checks its source is a virtual
//! (10.66/16) address: a copy that leaked over the underlay would come
//! from 10.77/24. Skips without root; fails under
//! `LANRAGE_REQUIRE_PRIVILEGED=1`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lanrage_test_support::privileged::skip_or_fail;
use lanrage_tests::client_process::{eventually, ping_lab_available};
use lanrage_tests::netns::lab_available;
use lanrage_tests::party_lab::{party_of, PartyLab};
use serde_json::Value;

fn gamesim() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lanrage-gamesim"))
}

fn lab_or_skip(test: &str) -> bool {
    match ping_lab_available(lab_available()) {
        Ok(()) => true,
        Err(why) => {
            skip_or_fail(test, &why);
            false
        }
    }
}

/// A game process running on one host of the lab.
struct Game {
    what: String,
    child: Child,
}

impl Game {
    fn start(lab: &PartyLab, host: &str, args: &[&str]) -> Result<Self> {
        let child = lab
            .lab
            .host(host)
            .ns
            .command(gamesim())?
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting lanrage-gamesim {args:?} on {host}"))?;
        Ok(Self {
            what: format!("{host}: {}", args.join(" ")),
            child,
        })
    }

    /// The same game on each of `hosts`.
    fn on_each<'a>(
        lab: &PartyLab,
        hosts: &[&'a str],
        args: &[&str],
    ) -> Result<Vec<(&'a str, Self)>> {
        hosts
            .iter()
            .map(|h| Ok((*h, Self::start(lab, h, args)?)))
            .collect()
    }

    /// Its JSON lines once it exits (every subcommand exits by its
    /// `--seconds`; a kill after 5 s more bounds a stuck one).
    fn finish(mut self) -> Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.what,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", self.what)))
            .collect()
    }
}

fn summary(lines: &[Value]) -> Value {
    lines
        .iter()
        .rev()
        .find_map(|l| l.get("summary").cloned())
        .unwrap_or(Value::Null)
}

fn events<'a>(lines: &'a [Value], key: &str) -> Vec<&'a Value> {
    lines.iter().filter_map(|l| l.get(key)).collect()
}

/// The IP of an `"ip:port"` string.
fn ip_of(addr: &Value) -> String {
    addr.as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
}

/// The IPs a `udp-listen` summary heard from.
fn source_ips(summary: &Value) -> Vec<String> {
    summary["sources"]
        .as_object()
        .map(|o| o.keys().map(|a| ip_of(&Value::from(a.as_str()))).collect())
        .unwrap_or_default()
}

/// Lets listeners bind and join their groups before a sender starts (a
/// process start in a namespace takes tens of ms; this leaves room for a
/// busy CI machine).
fn settle() {
    std::thread::sleep(Duration::from_millis(600));
}

#[test]
fn lan_games_discover_each_other_across_the_virtual_lan() -> Result<()> {
    if !lab_or_skip("lan_games_discover_each_other_across_the_virtual_lan") {
        return Ok(());
    }
    let lab = PartyLab::new(&["ada", "bo", "cy", "out"], |_| String::new())?;
    let (_relay, _clients, roster) = party_of(&lab, &["ada", "bo", "cy"])?;
    // "out" is registered at the same relay, in a party of its own, so it
    // has a virtual LAN interface and routes of its own.
    let _out = lab.start_client("out")?;
    if !eventually(Duration::from_secs(10), || lab.registered("out")) {
        bail!("out never registered:\n{}", lab.log("out"));
    }
    lab.lanrage("out", &["party", "create", "--name", "other"])?;
    let ip = |name: &str| roster[name].clone();

    // Minecraft Java: ada opens its world to LAN; the others' server lists
    // show it, with ada's virtual address.
    let listen = ["minecraft-listen", "--seconds", "4", "--count", "2"];
    let listeners = Game::on_each(&lab, &["bo", "cy", "out"], &listen)?;
    settle();
    let announcer = Game::start(
        &lab,
        "ada",
        &[
            "minecraft-announce",
            "--motd",
            "ada - New World",
            "--port",
            "25565",
            "--seconds",
            "2",
        ],
    )?;
    let announced = summary(&announcer.finish()?)["sent"].as_u64().unwrap_or(0);
    assert!(announced >= 2, "{announced} announcements");
    for (host, game) in listeners {
        let lines = game.finish()?;
        let seen = events(&lines, "from");
        if host == "out" {
            assert!(seen.is_empty(), "out saw {seen:?}");
            continue;
        }
        assert!(!seen.is_empty(), "{host} saw no announcement: {lines:?}");
        for from in &seen {
            assert_eq!(ip_of(from), ip("ada"), "{host}: {lines:?}");
        }
        let motd: Vec<&Value> = lines.iter().filter_map(|l| l.get("motd")).collect();
        assert_eq!(motd[0], "ada - New World");
    }

    // Warcraft III: bo hosts; cy's LAN screen searches by broadcast to
    // 255.255.255.255:6112 from port 6112 and gets bo's answer from 6112,
    // then joins over TCP. out's search finds nothing.
    let host = Game::start(
        &lab,
        "bo",
        &["wc3-host", "--seconds", "4", "--game", "bo's game"],
    )?;
    settle();
    let search = Game::start(&lab, "cy", &["wc3-search", "--seconds", "3", "--connect"])?;
    let outsider = Game::start(&lab, "out", &["wc3-search", "--seconds", "2"])?;
    let found = search.finish()?;
    let info = events(&found, "gameinfo_from");
    assert_eq!(info.len(), 1, "{found:?}");
    assert_eq!(ip_of(info[0]), ip("bo"));
    assert_eq!(port_of(info[0]), Some(6112), "the host's source port");
    assert!(!events(&found, "tcp_connected").is_empty(), "{found:?}");
    let hosted = host.finish()?;
    let searches = events(&hosted, "search_from");
    assert!(!searches.is_empty(), "{hosted:?}");
    for from in &searches {
        assert_eq!(ip_of(from), ip("cy"));
        assert_eq!(port_of(from), Some(6112), "the searcher's source port");
    }
    let lonely = outsider.finish()?;
    assert!(events(&lonely, "gameinfo_from").is_empty(), "{lonely:?}");
    assert!(events(&lonely, "broadcast_from").is_empty(), "{lonely:?}");

    // Subnet broadcast (10.66.255.255): bo sends 20, ada and cy get each
    // once, out none.
    let listen = ["udp-listen", "--port", "27961", "--seconds", "2"];
    let listeners = Game::on_each(&lab, &["ada", "cy", "out"], &listen)?;
    settle();
    let sender = Game::start(
        &lab,
        "bo",
        &[
            "udp-send",
            "--to",
            "10.66.255.255:27961",
            "--broadcast",
            "--count",
            "20",
            "--rate",
            "50",
        ],
    )?;
    assert_eq!(summary(&sender.finish()?)["sent"], 20);
    for (host, game) in listeners {
        let got = summary(&game.finish()?);
        if host == "out" {
            assert_eq!(got["received"], 0, "out: {got}");
            continue;
        }
        assert_eq!(got["unique"], 20, "{host}: {got}");
        assert_eq!(got["duplicates"], 0, "{host}: {got}");
        assert_eq!(source_ips(&got), [ip("bo")], "{host}: {got}");
    }

    // mDNS: cy answers for cy-game.local. ada asks the RFC 6762 way (from
    // 5353, answered by multicast), bo the one-shot way (from an ephemeral
    // port, answered by unicast); out gets no answer.
    let cy_ip = ip("cy");
    let responder = Game::start(
        &lab,
        "cy",
        &[
            "mdns-responder",
            "--name",
            "cy-game.local",
            "--address",
            &cy_ip,
            "--seconds",
            "4",
        ],
    )?;
    settle();
    let full = Game::start(
        &lab,
        "ada",
        &["mdns-query", "--name", "cy-game.local", "--seconds", "3"],
    )?;
    let legacy = Game::start(
        &lab,
        "bo",
        &[
            "mdns-query",
            "--name",
            "cy-game.local",
            "--seconds",
            "3",
            "--legacy",
        ],
    )?;
    let stranger = Game::start(
        &lab,
        "out",
        &["mdns-query", "--name", "cy-game.local", "--seconds", "2"],
    )?;
    for (who, game) in [("ada", full), ("bo", legacy)] {
        let lines = game.finish()?;
        let answers = events(&lines, "answer");
        assert_eq!(
            answers.first().and_then(|a| a.as_str()),
            Some(cy_ip.as_str()),
            "{who}: {lines:?}"
        );
        let from = events(&lines, "from");
        assert_eq!(ip_of(from[0]), cy_ip, "{who}: {lines:?}");
    }
    let none = stranger.finish()?;
    assert_eq!(summary(&none)["answered"], false, "{none:?}");
    let answered = summary(&responder.finish()?);
    assert!(answered["answers"].as_u64() >= Some(2), "{answered}");

    // SSDP: a UPnP control point on ada finds bo's device by multicast
    // M-SEARCH; the answer comes back unicast.
    let device = Game::start(
        &lab,
        "bo",
        &[
            "ssdp-device",
            "--seconds",
            "3",
            "--location",
            "http://bo/desc.xml",
        ],
    )?;
    settle();
    let search = Game::start(&lab, "ada", &["ssdp-search", "--seconds", "2"])?;
    let found = search.finish()?;
    let responses = events(&found, "response_from");
    assert!(!responses.is_empty(), "{found:?}");
    assert_eq!(ip_of(responses[0]), ip("bo"));
    device.finish()?;

    // Quake 3: cy's server browser broadcasts getinfo to ports
    // 27960-27963; ada's server answers.
    let server = Game::start(&lab, "ada", &["quake3-server", "--seconds", "3"])?;
    settle();
    let browser = Game::start(&lab, "cy", &["quake3-getinfo", "--seconds", "2"])?;
    let found = browser.finish()?;
    let infos = events(&found, "info_from");
    assert!(!infos.is_empty(), "{found:?}");
    assert_eq!(ip_of(infos[0]), ip("ada"));
    server.finish()?;

    // Per-peer counts in `lanrage status`: ada sent discovery to bo and cy
    // (Minecraft, mDNS, SSDP) and got some from each; out none.
    let status = lab.status("ada")?;
    for row in status["peers"].as_array().cloned().unwrap_or_default() {
        assert!(row["discovery_sent"].as_u64() > Some(0), "{row}");
        assert!(row["discovery_received"].as_u64() > Some(0), "{row}");
    }
    let table = lab.lanrage("ada", &["status"])?;
    assert!(table.contains("LAN OUT/IN"), "{table}");
    let out = lab.status("out")?;
    assert_eq!(out["peers"].as_array().map(Vec::len), Some(0), "{out}");
    // bo's Minecraft listener joined 224.0.2.60 on the TUN: its kernel's
    // IGMP report (to 224.0.0.22) came out of the TUN and stayed home.
    let bo = lab.status("bo")?;
    assert!(bo["drops"]["local_only"].as_u64() >= Some(1), "{bo}");
    println!("ada's status:\n{table}");
    Ok(())
}

/// The eight members; the second half reach each other and the first half
/// only through the relay (direct paths off), the first half directly.
const EIGHT: [&str; 8] = ["ada", "bo", "cy", "di", "ed", "flo", "gus", "hal"];
const STORM_RATE: u64 = 200;
const STORM_BURST: u64 = 50;

#[test]
fn a_party_of_eight_under_a_broadcast_storm() -> Result<()> {
    if !lab_or_skip("a_party_of_eight_under_a_broadcast_storm") {
        return Ok(());
    }
    let lab = PartyLab::new(&EIGHT, |name| {
        let relayed = EIGHT[4..].contains(&name);
        format!(
            "lan_discovery: {{packets_per_second: {STORM_RATE}, burst: {STORM_BURST}}}\n{}",
            if relayed { "direct_paths: false\n" } else { "" }
        )
    })?;
    let (_relay, _clients, roster) = party_of(&lab, &EIGHT)?;
    // Every pair has a session before timing anything (a first packet
    // waits for its handshake).
    for name in EIGHT {
        for (other, ip) in &roster {
            if other != name && lab.first_reply(name, ip, Duration::from_secs(5))?.is_none() {
                bail!("{name} can't reach {other}\n{}", lab.log(name));
            }
        }
    }
    let paths: BTreeMap<String, String> = lab.status("ada")?["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    println!("ada's paths: {paths:?}");

    // One-way delay of a broadcast from ada to each member, against a
    // unicast datagram to the same member over the same path, side by
    // side: the broadcast to port 40000 and the unicasts to 40001 at once.
    let others = &EIGHT[1..];
    let mut listeners = Vec::new();
    for h in others {
        for port in ["40000", "40001"] {
            let game = Game::start(&lab, h, &["udp-listen", "--port", port, "--seconds", "6"])?;
            listeners.push((*h, port, game));
        }
    }
    settle();
    let mut senders = vec![Game::start(
        &lab,
        "ada",
        &[
            "udp-send",
            "--to",
            "255.255.255.255:40000",
            "--broadcast",
            "--count",
            "40",
            "--rate",
            "20",
        ],
    )?];
    for h in others {
        let to = format!("{}:40001", roster[*h]);
        senders.push(Game::start(
            &lab,
            "ada",
            &["udp-send", "--to", &to, "--count", "40", "--rate", "20"],
        )?);
    }
    for s in senders {
        s.finish()?;
    }
    let mut delays = BTreeMap::new();
    for (host, port, game) in listeners {
        let got = summary(&game.finish()?);
        assert_eq!(got["unique"], 40, "port {port} on {host}: {got}");
        assert_eq!(got["duplicates"], 0, "port {port} on {host}: {got}");
        let median = got["delay_us"]["median"].as_f64().unwrap_or(f64::NAN);
        delays.insert((host, port), median);
    }
    for host in others {
        let (broadcast, unicast) = (delays[&(*host, "40000")], delays[&(*host, "40001")]);
        println!(
            "ada → {host} ({}): broadcast median {broadcast:.0} µs, unicast {unicast:.0} µs, extra {:.0} µs",
            paths.get(*host).map_or("?", String::as_str),
            broadcast - unicast
        );
    }

    // The storm: ada broadcasts 1,000 a second for 3 s. Meanwhile bo
    // sends cy game traffic (unicast, 50/s), and di announces a Minecraft
    // world that ed looks for.
    let before = lab.status("ada")?;
    let listen = ["udp-listen", "--port", "40002", "--seconds", "6"];
    let listeners = Game::on_each(&lab, &EIGHT, &listen)?;
    // Game traffic: bo → cy direct, ed → flo through the relay the storm's
    // copies take too, and hal → ada into the member that storms.
    let flows = [("bo", "cy"), ("ed", "flo"), ("hal", "ada")];
    let receivers: Vec<&str> = flows.iter().map(|(_, to)| *to).collect();
    let listen = ["udp-listen", "--port", "40003", "--seconds", "6"];
    let game_rx = Game::on_each(&lab, &receivers, &listen)?;
    let minecraft_rx = Game::start(
        &lab,
        "ed",
        &["minecraft-listen", "--seconds", "6", "--count", "2"],
    )?;
    settle();
    let started = Instant::now();
    let storm = Game::start(
        &lab,
        "ada",
        &[
            "udp-send",
            "--to",
            "255.255.255.255:40002",
            "--broadcast",
            "--count",
            "3000",
            "--rate",
            "1000",
        ],
    )?;
    let game_tx: Vec<Game> = flows
        .iter()
        .map(|(from, to)| {
            let dst = format!("{}:40003", roster[*to]);
            Game::start(
                &lab,
                from,
                &["udp-send", "--to", &dst, "--count", "150", "--rate", "50"],
            )
        })
        .collect::<Result<_>>()?;
    let minecraft = Game::start(
        &lab,
        "di",
        &[
            "minecraft-announce",
            "--motd",
            "di's world",
            "--port",
            "25565",
            "--seconds",
            "3",
        ],
    )?;
    let stormed = summary(&storm.finish()?);
    let storm_time = started.elapsed().as_secs_f64();
    assert_eq!(stormed["sent"], 3000, "{stormed}");
    for game in game_tx {
        game.finish()?;
    }
    minecraft.finish()?;

    // Every receiver: each copy once, from ada only, at most the burst
    // plus the rate over the storm's time.
    // The sender paces to a schedule, so the storm lasts at least 3 s; the
    // floor leaves a second of slack for a busy machine.
    let cap = STORM_BURST + (STORM_RATE as f64 * storm_time).ceil() as u64 + 1;
    let floor = STORM_BURST + STORM_RATE * 2;
    let mut admitted = Vec::new();
    for (host, game) in listeners {
        let got = summary(&game.finish()?);
        assert_eq!(got["duplicates"], 0, "{host}: {got}");
        assert_eq!(source_ips(&got), [roster["ada"].clone()], "{host}: {got}");
        let unique = got["unique"].as_u64().unwrap_or(0);
        if host == "ada" {
            // ada's own copies, from the kernel's local loopback: all of
            // them, and none came back through the tunnel.
            assert_eq!(unique, 3000, "{got}");
            continue;
        }
        assert!(
            (floor..=cap).contains(&unique),
            "{host}: {unique} not in {floor}..={cap}"
        );
        admitted.push(unique);
    }
    let after = lab.status("ada")?;
    let drops = |s: &Value| s["drops"]["discovery_rate_limited"].as_u64().unwrap_or(0);
    let limited = drops(&after) - drops(&before);
    let sent_to = |s: &Value, peer: &str| {
        s["peers"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == peer))
            .and_then(|r| r["discovery_sent"].as_u64())
            .unwrap_or(0)
    };
    let passed = sent_to(&after, "bo") - sent_to(&before, "bo");
    // A packet the kernel dropped at ada's TUN queue (the client stalled
    // for half a second) never reached the engine: counted there instead.
    let tun_dropped = tun_tx_dropped(&lab, "ada")?;
    assert_eq!(
        limited + passed + tun_dropped,
        3000,
        "counted drops + copies + TUN queue drops"
    );
    // No loops: no one but ada and di (Minecraft) sent a single copy.
    for name in EIGHT {
        if name == "ada" || name == "di" {
            continue;
        }
        let status = lab.status(name)?;
        let sent: u64 = status["peers"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r["discovery_sent"].as_u64())
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(sent, 0, "{name} sent copies on: {status}");
    }
    // The others' traffic flowed through the storm.
    let mut game_got = Vec::new();
    for ((from, to), (_, game)) in flows.iter().zip(game_rx) {
        let got = summary(&game.finish()?);
        assert!(
            got["unique"].as_u64() >= Some(147),
            "{from} → {to} game traffic: {got}"
        );
        game_got.push(format!("{from} → {to} {}", got["unique"]));
    }
    let seen = minecraft_rx.finish()?;
    assert!(
        !events(&seen, "from").is_empty(),
        "ed missed di's world: {seen:?}"
    );
    println!(
        "storm: 3000 sent in {storm_time:.2} s; each member admitted {admitted:?} (cap {cap}); \
         ada counted {limited} discovery_rate_limited ({tun_dropped} lost at its TUN queue); \
         game traffic of 150: {}",
        game_got.join(", ")
    );
    Ok(())
}

/// Packets the kernel dropped leaving `host`'s TUN (its queue full: the
/// client wasn't reading), from `ip -s link`.
fn tun_tx_dropped(lab: &PartyLab, host: &str) -> Result<u64> {
    let out = lab
        .lab
        .host(host)
        .ns
        .command("ip")?
        .args(["-s", "link", "show", "lanrage0"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "TX:  bytes packets errors dropped carrier collsns", then the numbers.
    let numbers = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("TX:"))
        .nth(1)
        .context("no TX line in ip -s link")?;
    numbers
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("ip -s link: {text}"))
}

/// `ip -4 route` in `host`'s namespace, one route per line.
fn routes(lab: &PartyLab, host: &str) -> Result<String> {
    let out = lab
        .lab
        .host(host)
        .ns
        .command("ip")?
        .args(["-4", "route", "show", "table", "main"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_displaced_route_is_put_back_after_a_crash() -> Result<()> {
    if !lab_or_skip("a_displaced_route_is_put_back_after_a_crash") {
        return Ok(());
    }
    let lab = PartyLab::new(&["solo"], |_| String::new())?;
    // The user's own multicast routes, as some guides have people add:
    // two in one slot (appended), one on a link without carrier, which the
    // kernel flags linkdown and would refuse to take back as dumped.
    let ns = &lab.lab.host("solo").ns;
    ns.ip("link add wl0 type veth peer name wl1")?;
    ns.ip("link set wl0 up")?;
    ns.ip("route add 224.0.0.0/4 dev eth0")?;
    ns.ip("route append 224.0.0.0/4 dev wl0")?;
    let theirs = "224.0.0.0/4 dev eth0 scope link";
    let unplugged = "224.0.0.0/4 dev wl0 scope link linkdown";
    let before = routes(&lab, "solo")?;
    assert!(before.contains(unplugged), "{before}");
    let journal = lab.dir.path().join("solo.party.routes.json");
    let (relay, mut clients, _) = party_of(&lab, &["solo"])?;
    let up = routes(&lab, "solo")?;
    assert!(up.contains("224.0.0.0/4 dev lanrage0 proto 76"), "{up}");
    assert!(up.contains("255.255.255.255 dev lanrage0 proto 76"), "{up}");
    assert!(!up.contains(theirs), "{up}");
    assert!(journal.exists(), "the displaced route is journalled first");

    // A crash: the TUN and our routes go with the process; theirs is
    // still missing, and the journal says so.
    let mut crashed = clients.remove(0);
    crashed.0.kill()?;
    crashed.0.wait()?;
    let after_crash = routes(&lab, "solo")?;
    assert!(!after_crash.contains("224.0.0.0/4"), "{after_crash}");
    assert!(journal.exists());

    // The next start puts it back, then (remembering its party) displaces
    // it again; a clean stop puts it back for good.
    let restarted = lab.start_client("solo")?;
    let again = eventually(Duration::from_secs(10), || {
        routes(&lab, "solo").is_ok_and(|r| r.contains("224.0.0.0/4 dev lanrage0"))
    });
    assert!(again, "{}", lab.log("solo"));
    assert!(
        lab.log("solo").contains("route put back"),
        "{}",
        lab.log("solo")
    );
    assert!(!routes(&lab, "solo")?.contains(theirs));
    // Leaving the party takes the interface down: theirs is back.
    lab.lanrage("solo", &["party", "leave"])?;
    let left = routes(&lab, "solo")?;
    assert!(left.contains(theirs), "{left}");
    assert!(left.contains(unplugged), "{left}");
    assert!(!left.contains("proto 76"), "{left}");
    assert!(!journal.exists(), "the journal is gone with the routes");
    drop(restarted);
    let down = routes(&lab, "solo")?;
    assert!(down.contains(theirs), "{down}");
    assert!(down.contains(unplugged), "{down}");
    assert!(!down.contains("proto 76"), "{down}");
    assert!(!journal.exists(), "the journal is gone with the routes");
    drop(relay);
    Ok(())
}
