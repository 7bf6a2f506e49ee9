//! The client end to end, as root, in network namespaces: two relay hosts
//! and two client hosts on one segment, the real `lanrage` and
//! `lanrage-relay` binaries, real TUN devices and the system's `ping`
//! between the virtual IPs. Skips without root; fails under
//! `LANRAGE_REQUIRE_PRIVILEGED=1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lanrage_test_support::privileged::skip_or_fail;
use lanrage_tests::client_process::{
    client_binary, client_keygen, eventually, ping_lab_available, ping_replies, pinged, pinger,
    relay_keygen, start_client, Running,
};
use lanrage_tests::delay::DelayForwarder;
use lanrage_tests::netns::{lab_available, Switched};
use lanrage_tests::relay_process::{relay_binary, ScratchDir};

/// The port clients send to; a relay behind a delaying forwarder listens
/// one above it.
const RELAY_PORT: u16 = 51820;
/// [`Lab::pinger`]'s spacing: 50 pings a second.
const PING_INTERVAL: Duration = Duration::from_millis(20);

struct Lab {
    lab: Switched,
    /// Whether each relay listens behind a forwarder (on `RELAY_PORT + 1`).
    forwarded: bool,
    dir: ScratchDir,
    relay_keys: Vec<String>,
    client_keys: Vec<String>,
    /// Whether the clients list each other's endpoint (on `DIRECT_PORT`).
    endpoints: bool,
    /// Whether the clients look for direct paths (off: every test of the
    /// relays keeps its traffic on them, though the lab's hosts share a
    /// network).
    punching: bool,
}

/// The clients' `listen_port` when they list each other's endpoints.
const DIRECT_PORT: u16 = 51900;

const RELAYS: [&str; 2] = ["relay1", "relay2"];
const CLIENTS: [&str; 2] = ["alice", "bob"];

impl Lab {
    fn with_forwarders(forwarded: bool) -> Result<Self> {
        let relay_port = if forwarded {
            RELAY_PORT + 1
        } else {
            RELAY_PORT
        };
        let lab = Switched::new(&["relay1", "relay2", "alice", "bob"])?;
        let dir = ScratchDir::new("client-lab")?;
        let mut relay_keys = Vec::new();
        for name in RELAYS {
            let key_path = dir.path().join(format!("{name}.key"));
            let config = dir.path().join(format!("{name}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "listen: \"{}:{relay_port}\"\nmetrics_listen: null\nprivate_key_file: \"{}\"\nworkers: 1\n",
                    lab.host(name).addr,
                    key_path.display()
                ),
            )?;
            relay_keys.push(relay_keygen(&key_path, &config)?);
        }
        let mut client_keys = Vec::new();
        for name in CLIENTS {
            client_keys.push(client_keygen(&dir.path().join(format!("{name}.key")))?);
        }
        let this = Self {
            lab,
            forwarded,
            dir,
            relay_keys,
            client_keys,
            endpoints: false,
            punching: false,
        };
        this.write_client_configs()?;
        Ok(this)
    }

    fn client_config(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.yaml"))
    }

    fn client_yaml(&self, i: usize) -> String {
        let me = CLIENTS[i];
        let mut yaml = format!(
            "address: 10.66.0.{}\nprivate_key_file: {me}.key\ncontrol_socket: {}\nrelays:\n",
            i + 1,
            self.dir.path().join(format!("{me}.sock")).display()
        );
        if self.endpoints {
            yaml = format!("listen_port: {DIRECT_PORT}\n{yaml}");
        }
        if !self.punching {
            yaml = format!("direct_paths: false\n{yaml}");
        }
        for (r, name) in RELAYS.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{name: {name}, address: \"{}:{RELAY_PORT}\", public_key: \"{}\"}}\n",
                self.lab.host(name).addr,
                self.relay_keys[r]
            ));
        }
        yaml.push_str("peers:\n");
        for (p, name) in CLIENTS.iter().enumerate() {
            if p != i {
                let endpoint = if self.endpoints {
                    format!(", endpoint: \"{}:{DIRECT_PORT}\"", self.lab.host(name).addr)
                } else {
                    String::new()
                };
                yaml.push_str(&format!(
                    "  - {{name: {name}, public_key: \"{}\", address: 10.66.0.{}{endpoint}}}\n",
                    self.client_keys[p],
                    p + 1
                ));
            }
        }
        yaml
    }

    /// The clients list each other's endpoint from now on.
    fn use_endpoints(&mut self) -> Result<()> {
        self.endpoints = true;
        self.write_client_configs()
    }

    /// The clients look for direct paths from now on.
    fn allow_punching(&mut self) -> Result<()> {
        self.punching = true;
        self.write_client_configs()
    }

    fn write_client_configs(&self) -> Result<()> {
        for (i, name) in CLIENTS.iter().enumerate() {
            std::fs::write(self.client_config(name), self.client_yaml(i))?;
        }
        Ok(())
    }

    /// A delaying forwarder on `name`'s public port, in front of the relay.
    fn forwarder(&self, name: &str) -> Result<DelayForwarder> {
        assert!(self.forwarded, "a lab with forwarders");
        let host = self.lab.host(name);
        DelayForwarder::start(
            &host.ns,
            SocketAddr::from((host.addr, RELAY_PORT)),
            SocketAddr::from((host.addr, RELAY_PORT + 1)),
        )
    }

    fn start_relay(&self, name: &str) -> Result<Running> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        let child = self
            .lab
            .host(name)
            .ns
            .command(relay_binary())?
            .arg("--config")
            .arg(self.dir.path().join(format!("{name}.yaml")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a relay")?;
        Ok(Running(child))
    }

    fn start_client(&self, name: &str) -> Result<Running> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        start_client(&self.lab.host(name).ns, &self.client_config(name), log)
    }

    fn status(&self, name: &str) -> Result<serde_json::Value> {
        let out = Command::new(client_binary())
            .arg("--config")
            .arg(self.client_config(name))
            .args(["status", "--json"])
            .output()?;
        if !out.status.success() {
            bail!("status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `ping` from `from` to `to`'s virtual IP: `count` pings `interval` apart.
    fn ping(&self, from: &str, to: usize, count: u32, interval: &str) -> Result<Vec<u32>> {
        let out = self
            .lab
            .host(from)
            .ns
            .command("ping")?
            .args(["-n", "-c", &count.to_string(), "-i", interval, "-W", "1"])
            .arg(format!("10.66.0.{}", to + 1))
            .output()
            .context("running ping (iputils-ping)")?;
        Ok(ping_replies(&String::from_utf8_lossy(&out.stdout)))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn start_relays(&self, names: &[&str]) -> Result<Vec<Running>> {
        let relays = names.iter().map(|r| self.start_relay(r)).collect();
        std::thread::sleep(Duration::from_millis(300));
        relays
    }

    fn start_clients(&self) -> Result<Vec<Running>> {
        CLIENTS.iter().map(|c| self.start_client(c)).collect()
    }

    /// Waits (at most 10 s) until alice's ping reaches bob.
    fn wait_first_reply(&self) -> Result<()> {
        if eventually(Duration::from_secs(10), || {
            !self
                .ping("alice", 1, 1, "0.2")
                .unwrap_or_default()
                .is_empty()
        }) {
            return Ok(());
        }
        bail!(
            "no ping reply from bob\nalice:\n{}\nbob:\n{}",
            self.log("alice"),
            self.log("bob")
        )
    }

    /// `count` pings at 50/s from alice to bob, running until waited for.
    fn pinger(&self, count: u32) -> Result<Child> {
        pinger(&self.lab.host("alice").ns, count, "10.66.0.2")
    }
}

/// One lab at a time: each runs four processes that time real packets, and
/// two at once on a 2-core machine would measure each other.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_lab() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lab for `test`, one at a time (the guard), or `None` to skip (the
/// reason is printed; under `LANRAGE_REQUIRE_PRIVILEGED=1` it fails).
fn lab_for(
    test: &str,
    forwarded: bool,
) -> Result<Option<(std::sync::MutexGuard<'static, ()>, Lab)>> {
    if !lab_or_skip(test) {
        return Ok(None);
    }
    let guard = one_lab();
    Ok(Some((guard, Lab::with_forwarders(forwarded)?)))
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

fn path_of(status: &serde_json::Value) -> String {
    status["peers"][0]["path"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

/// Waits until `check` holds, for at most `limit`.
#[test]
fn two_clients_ping_through_a_relay_and_survive_its_death() -> Result<()> {
    let Some((_one, lab)) = lab_for(
        "two_clients_ping_through_a_relay_and_survive_its_death",
        false,
    )?
    else {
        return Ok(());
    };
    let mut relays: Vec<Option<Running>> =
        lab.start_relays(&RELAYS)?.into_iter().map(Some).collect();
    let started = Instant::now();
    let _clients = lab.start_clients()?;

    // Up to the first reply: ping once every 20 ms until one comes back.
    let mut first_reply = None;
    for _ in 0..100 {
        if !lab.ping("alice", 1, 1, "0.2")?.is_empty() {
            first_reply = Some(started.elapsed());
            break;
        }
    }
    let Some(first_reply) = first_reply else {
        bail!(
            "no ping reply within the bound\nalice:\n{}\nbob:\n{}",
            lab.log("alice"),
            lab.log("bob")
        );
    };
    println!("first ping reply {first_reply:?} after starting both clients");

    let alice = lab.status("alice")?;
    let path = path_of(&alice);
    assert!(path.starts_with("relay "), "{alice:#}");
    let in_use = path.trim_start_matches("relay ").to_owned();
    assert!(
        alice["relays"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["registered"] == true)),
        "{alice:#}"
    );

    // `lanrage ping`, like `tailscale ping`: the pong and its path.
    let out = Command::new(client_binary())
        .arg("--config")
        .arg(lab.client_config("alice"))
        .args(["ping", "bob", "-c", "2"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .filter(|l| l.starts_with(&format!("pong from bob via relay {in_use} in ")))
            .count()
            == 2,
        "{text}"
    );
    print!("{text}");

    // Kill the relay in use while pinging at 50/s; traffic resumes through
    // the other one.
    let victim = RELAYS
        .iter()
        .position(|r| *r == in_use)
        .context("relay name")?;
    let pinger = lab.pinger(300)?;
    std::thread::sleep(Duration::from_secs(1));
    relays[victim] = None; // dropped: SIGTERM, the relay is gone
    let (seqs, gap) = pinged(pinger, PING_INTERVAL)?;
    println!("failover gap {gap:?} ({} of 300 replies)", seqs.len());
    assert!(seqs.len() > 200, "{} replies", seqs.len());
    assert!(gap <= Duration::from_millis(2000), "failover gap {gap:?}");
    let survivor = RELAYS[1 - victim];
    assert!(
        eventually(Duration::from_secs(3), || lab
            .status("bob")
            .is_ok_and(|s| path_of(&s) == format!("relay {survivor}"))),
        "bob follows to {survivor}"
    );
    assert_eq!(path_of(&lab.status("alice")?), format!("relay {survivor}"));
    Ok(())
}

/// Clients that list each other's endpoint talk straight to each other,
/// with no relay running at all (WireGuard's `Endpoint`).
#[test]
fn clients_with_endpoints_ping_directly_without_any_relay() -> Result<()> {
    let Some((_guard, mut lab)) = lab_for("clients_with_endpoints_ping_directly", false)? else {
        return Ok(());
    };
    lab.use_endpoints()?;
    let _clients = lab.start_clients()?;
    lab.wait_first_reply()?;
    let replies = lab.ping("alice", 1, 20, "0.02")?;
    assert_eq!(replies.len(), 20, "{replies:?}\n{}", lab.log("alice"));
    for (name, peer) in [("alice", "bob"), ("bob", "alice")] {
        let status = lab.status(name)?;
        let expected = format!("direct {}:{DIRECT_PORT}", lab.lab.host(peer).addr);
        assert_eq!(path_of(&status), expected, "{status:#}");
        assert!(
            status["peers"][0]["rx_bytes"].as_u64() > Some(0),
            "{status:#}"
        );
    }
    Ok(())
}

/// Two clients on one network, no endpoints configured: traffic starts on
/// a relay, they punch a direct path to each other's host address without
/// losing a ping, and when the direct path is cut (a firewall rule) they
/// are back on the relay within 1.5 s.
#[test]
fn clients_punch_a_direct_path_and_fall_back_to_the_relay() -> Result<()> {
    let Some((_guard, mut lab)) = lab_for("clients_punch_a_direct_path", false)? else {
        return Ok(());
    };
    lab.allow_punching()?;
    let _relays = lab.start_relays(&RELAYS)?;
    let _clients = lab.start_clients()?;
    lab.wait_first_reply()?;
    let direct = |lab: &Lab, name: &str| {
        lab.status(name)
            .is_ok_and(|s| path_of(&s).starts_with("direct "))
    };
    assert!(
        eventually(Duration::from_secs(3), || direct(&lab, "alice")
            && direct(&lab, "bob")),
        "no direct path\nalice: {:#}\n{}",
        lab.status("alice")?,
        lab.log("alice")
    );
    let alice = lab.status("alice")?;
    let bob_addr = lab.lab.host("bob").addr.to_string();
    assert!(
        path_of(&alice).starts_with(&format!("direct {bob_addr}:")),
        "{alice:#}"
    );
    let replies = lab.ping("alice", 1, 50, "0.02")?;
    assert_eq!(replies.len(), 50, "{replies:?}");
    // `lanrage ping` takes the direct path too, and says so.
    let out = Command::new(client_binary())
        .arg("--config")
        .arg(lab.client_config("alice"))
        .args(["ping", "bob", "-c", "1"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("via direct {bob_addr}:")), "{text}");

    // Cut the direct path at alice: everything to bob's address is dropped
    // (the relays are elsewhere), while pinging at 50/s.
    let pinger = lab.pinger(250)?;
    std::thread::sleep(Duration::from_secs(1));
    lab.lab.host("alice").ns.nft(&format!(
        "add table inet cut\nadd chain inet cut out {{ type filter hook output priority 0; }}\n\
             add rule inet cut out ip daddr {bob_addr} drop\n"
    ))?;
    let (seqs, gap) = pinged(pinger, PING_INTERVAL)?;
    println!(
        "direct path cut: longest gap {gap:?}, {} of 250 answered",
        seqs.len()
    );
    assert!(
        gap <= Duration::from_millis(1500),
        "back on the relay after {gap:?}"
    );
    let alice = lab.status("alice")?;
    assert!(path_of(&alice).starts_with("relay "), "{alice:#}");
    Ok(())
}

#[test]
fn up_removes_its_tun_on_sigterm_and_refuses_bad_config() -> Result<()> {
    let Some((_one, lab)) = lab_for(
        "up_removes_its_tun_on_sigterm_and_refuses_bad_config",
        false,
    )?
    else {
        return Ok(());
    };
    let client = lab.start_client("alice")?;
    let ns = &lab.lab.host("alice").ns;
    let has_tun = || -> bool {
        ns.command("ip")
            .and_then(|mut c| Ok(c.args(["link", "show", "lanrage0"]).output()?))
            .is_ok_and(|o| o.status.success())
    };
    assert!(eventually(Duration::from_secs(5), has_tun), "TUN created");
    drop(client);
    assert!(!has_tun(), "TUN removed on SIGTERM");

    let bad = lab.dir.path().join("bad.yaml");
    std::fs::write(&bad, "address: 10.66.0.1\nrelays: []\ncolour: red\n")?;
    let out = Command::new(client_binary())
        .arg("--config")
        .arg(&bad)
        .arg("up")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("colour"), "{stderr}");
    let _ = Path::new(&bad);
    Ok(())
}

#[test]
fn both_clients_move_together_when_their_relay_slows_down() -> Result<()> {
    let Some((_one, lab)) = lab_for(
        "both_clients_move_together_when_their_relay_slows_down",
        true,
    )?
    else {
        return Ok(());
    };
    let forwarders: Vec<DelayForwarder> = RELAYS
        .iter()
        .map(|r| lab.forwarder(r))
        .collect::<Result<_>>()?;
    let _relays = lab.start_relays(&RELAYS)?;
    let _clients = lab.start_clients()?;
    lab.wait_first_reply()?;
    // Let the latency vectors settle on one relay for both.
    std::thread::sleep(Duration::from_secs(3));
    let path = path_of(&lab.status("alice")?);
    let in_use = path.trim_start_matches("relay ").to_owned();
    let slow = RELAYS
        .iter()
        .position(|r| *r == in_use)
        .context("relay name")?;
    let fast = RELAYS[1 - slow];
    assert_eq!(path_of(&lab.status("bob")?), path, "one relay for both");

    // 40 ms each way in front of the relay in use: both move, once, while
    // pings at 50/s keep flowing.
    let pinger = lab.pinger(500)?;
    std::thread::sleep(Duration::from_millis(500));
    let marks: Vec<usize> = CLIENTS.iter().map(|c| lab.log(c).lines().count()).collect();
    let slowed = Instant::now();
    forwarders[slow].set_delay(Duration::from_millis(40));
    let moved = eventually(Duration::from_secs(15), || {
        CLIENTS.iter().all(|c| {
            lab.status(c)
                .is_ok_and(|s| path_of(&s) == format!("relay {fast}"))
        })
    });
    let took = slowed.elapsed();
    let (seqs, _) = pinged(pinger, PING_INTERVAL)?;
    assert!(
        moved,
        "both clients moved to {fast}\nalice:\n{}",
        lab.log("alice")
    );
    println!(
        "both on the faster relay {took:?} after the slowdown; {} of 500 pings answered",
        seqs.len()
    );
    assert!(seqs.len() >= 450, "{} of 500", seqs.len());
    // Once: each client logged one path change after the slowdown.
    for (c, mark) in CLIENTS.iter().zip(marks) {
        let moves: Vec<String> = lab
            .log(c)
            .lines()
            .skip(mark)
            .filter(|l| l.contains(" path "))
            .map(str::to_owned)
            .collect();
        assert_eq!(moves.len(), 1, "{c} moved once: {moves:#?}");
        assert!(
            moves[0].contains(&format!("path=relay {fast}")),
            "{moves:?}"
        );
    }
    Ok(())
}

#[test]
fn a_relay_restart_costs_under_a_second() -> Result<()> {
    let Some((_one, lab)) = lab_for("a_relay_restart_costs_under_a_second", false)? else {
        return Ok(());
    };
    // One relay only, so the clients can't fail over: they must recover
    // through the restarted one.
    let relay = lab.start_relays(&["relay1"])?;
    let _clients = lab.start_clients()?;
    lab.wait_first_reply()?;
    let pinger = lab.pinger(250)?;
    std::thread::sleep(Duration::from_secs(1));
    drop(relay); // SIGTERM: the relay's state is gone
    let _restarted = lab.start_relay("relay1")?;
    let (seqs, gap) = pinged(pinger, PING_INTERVAL)?;
    println!("relay restart gap {gap:?} ({} of 250 replies)", seqs.len());
    assert!(gap <= Duration::from_millis(1500), "restart gap {gap:?}");
    Ok(())
}

#[test]
fn a_relay_that_answers_nonsense_never_wedges_the_client() -> Result<()> {
    let Some((_one, lab)) = lab_for(
        "a_relay_that_answers_nonsense_never_wedges_the_client",
        false,
    )?
    else {
        return Ok(());
    };
    let _relay1 = lab.start_relay("relay1")?;
    // relay2's address is held by something that answers every datagram
    // with nonsense: the datagram's own bytes mangled, truncated, grown,
    // control headers with wrong types and lengths, WireGuard-looking junk.
    let impostor = lab.lab.host("relay2").udp_socket(RELAY_PORT)?;
    impostor.set_read_timeout(Some(Duration::from_millis(100)))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let nonsense = {
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut n = 0u32;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((len, from)) = impostor.recv_from(&mut buf) else {
                    continue;
                };
                n = n.wrapping_add(1);
                let mut reply = buf[..len].to_vec();
                match n % 6 {
                    0 => reply
                        .iter_mut()
                        .for_each(|b| *b = b.wrapping_mul(31) ^ n as u8),
                    1 => reply.truncate(len / 2),
                    2 => reply.extend_from_slice(&[0xff; 300]),
                    3 => {
                        reply = [
                            b"LRG!\x02".as_slice(),
                            &[(n % 9) as u8, 0, 0],
                            &buf[..len.min(60)],
                        ]
                        .concat()
                    }
                    4 => reply = [&[4u8, 0, 0, 0][..], &buf[..len.min(100)]].concat(),
                    _ => reply[len / 3] ^= 0x40,
                }
                for _ in 0..3 {
                    let _ = impostor.send_to(&reply, from);
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let _clients = lab.start_clients()?;
    lab.wait_first_reply()?;
    let replies = lab.ping("alice", 1, 50, "0.02")?;
    assert!(replies.len() >= 45, "{} of 50", replies.len());
    let status = lab.status("alice")?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = nonsense.join();
    assert!(
        answered.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the impostor was asked"
    );
    let relay2 = status["relays"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "relay2"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(relay2["registered"], false, "{status:#}");
    assert_eq!(path_of(&status), "relay relay1");
    let dropped: u64 = status["drops"]
        .as_object()
        .map(|d| d.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    assert!(dropped > 0, "the nonsense was counted: {status:#}");
    println!("nonsense counted as drops: {}", status["drops"]);
    Ok(())
}

/// The jitter goal: ten minutes of ±20 ms on one relay, and no path moves.
/// Long, so not part of the suite: `cargo test -p lanrage-tests --test
/// client_lab -- --ignored --nocapture` (root). Its first two runs failed
/// because the delaying forwarders stopped at their own 5-minute bound (now
/// 20 minutes); see docs/client.md, "Known problems".
#[test]
#[ignore = "ten minutes; run by hand"]
fn no_flap_in_ten_minutes_of_jitter() -> Result<()> {
    let Some((_one, lab)) = lab_for("no_flap_in_ten_minutes_of_jitter", true)? else {
        return Ok(());
    };
    let forwarders: Vec<DelayForwarder> = RELAYS
        .iter()
        .map(|r| lab.forwarder(r))
        .collect::<Result<_>>()?;
    // relay1: 25 ± 20 ms each way (5 to 45 ms); relay2: a steady 30 ms.
    forwarders[0].set_delay(Duration::from_millis(5));
    forwarders[0].set_jitter(Duration::from_millis(40));
    forwarders[1].set_delay(Duration::from_millis(30));
    let _relays = lab.start_relays(&RELAYS)?;
    let _clients = lab.start_clients()?;
    lab.wait_first_reply()?;
    std::thread::sleep(Duration::from_secs(5));
    let marks: Vec<usize> = CLIENTS.iter().map(|c| lab.log(c).lines().count()).collect();
    let start = Instant::now();
    // Ten minutes at 50/s; LANRAGE_JITTER_PINGS for a shorter look.
    let pings: u32 = std::env::var("LANRAGE_JITTER_PINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let (seqs, _) = pinged(lab.pinger(pings)?, PING_INTERVAL)?;
    println!(
        "{:?} of pings at 50/s through a jittery relay: {} of {pings} answered",
        start.elapsed(),
        seqs.len()
    );
    let status = lab.status("alice")?;
    println!("alice: {status}");
    for c in CLIENTS {
        let log = lab.log(c);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        println!(
            "--- {c} log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    for (c, mark) in CLIENTS.iter().zip(marks) {
        let moves: Vec<String> = lab
            .log(c)
            .lines()
            .skip(mark)
            .filter(|l| l.contains(" path "))
            .map(str::to_owned)
            .collect();
        println!("{c}: {} path changes in ten minutes", moves.len());
        assert!(moves.is_empty(), "{c} flapped: {moves:#?}");
    }
    Ok(())
}
