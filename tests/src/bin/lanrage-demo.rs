//! `lanrage-demo`: LANrage's main job in one command. In network namespaces
//! it builds a small internet: a relay host, two home routers (a
//! port-restricted cone and a symmetric NAT, nftables, inbound firewall on)
//! and three gamer PCs (two behind the first router, one behind the
//! second). It starts the real relay (with parties) and a real `lanrage`
//! client on each PC, creates a party on the first, joins the other two by
//! its code, and prints each client's `lanrage status` and a ping matrix
//! between the virtual IPs the relay assigned. Then ada opens a Minecraft
//! world to LAN, and bo's and cy's server lists find it (LAN discovery:
//! Minecraft's own multicast announcement, carried across the virtual LAN).
//! Everything is torn down at the end, on an error, or on Ctrl-C.
//!
//! It needs root (namespaces, veth links, nftables, TUN devices), iproute2,
//! nftables and iputils-ping. The relay and the clients are this same
//! binary, run again inside each namespace with `LANRAGE_DEMO_ROLE` set.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lanrage_tests::client_process::Running;
use lanrage_tests::natlab::{self, NatKind, NatLab, Side, RELAY_ALTERNATE, RELAY_PRIMARY};

const ROLE: &str = "LANRAGE_DEMO_ROLE";
const RELAY_PORT: u16 = 51820;
const NAMES: [&str; 3] = ["ada", "bo", "cy"];

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("relay") => return lanrage_relay::cli::main(),
        Ok("client") => return lanrage_client::cli::main(),
        Ok("game") => return lanrage_tests::gamesim::main(),
        _ => {}
    }
    if let Err(why) = natlab::available() {
        eprintln!(
            "lanrage-demo: {why}.\n\
             It builds network namespaces, veth links, nftables NAT rules and TUN \
             devices, so it needs root, iproute2, nftables and iputils-ping:\n  \
             sudo apt-get install iproute2 nftables iputils-ping\n  \
             cargo build --release -p lanrage-tests --bin lanrage-demo && sudo target/release/lanrage-demo"
        );
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if signal_hook::flag::register(signal, Arc::clone(&stop)).is_err() {
            eprintln!("lanrage-demo: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    }
    match run(&stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanrage-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted; tearing down");
    }
    Ok(())
}

fn run(stop: &AtomicBool) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = Scratch(std::env::temp_dir().join(format!("lanrage-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let d = dir.0.as_path();

    println!("building the lab: a relay host, two home routers (port-restricted cone, symmetric), three PCs");
    let lab = NatLab::builder()
        .nat(Side::A, NatKind::PortRestrictedCone)
        .nat(Side::B, NatKind::Symmetric)
        .extra_pc(Side::A)
        .build()?;
    // The lab's PCs: ada and cy behind router A, bo behind router B.
    let pcs = [&lab.pcs()[0], &lab.pcs()[1], &lab.pcs()[2]];
    check(stop)?;

    let relay_config = d.join("relay.yaml");
    std::fs::write(
        &relay_config,
        format!(
            "listen: \"{RELAY_PRIMARY}:{RELAY_PORT}\"\nmetrics_listen: null\n\
             private_key_file: \"{}\"\nworkers: 1\n\
             stun: {{alternate_port: {}, alternate_address: \"{RELAY_ALTERNATE}\"}}\n\
             party: {{name: demo, database: \"{}\"}}\n",
            d.join("relay.key").display(),
            RELAY_PORT + 1,
            d.join("parties.sqlite").display()
        ),
    )?;
    let secret = capture(Command::new(&exe).env(ROLE, "relay").arg("keygen"))?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(d.join("relay.key"))?
            .write_all(secret.as_bytes())?;
    }
    let relay_key = capture(
        Command::new(&exe)
            .env(ROLE, "relay")
            .args(["--config"])
            .arg(&relay_config)
            .arg("public-key"),
    )?;
    let relay_key = relay_key.trim().to_owned();
    let _relay = Running(
        lab.relay()
            .ns
            .command(&exe)?
            .env(ROLE, "relay")
            .arg("--config")
            .arg(&relay_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("relay.log"))?)
            .spawn()
            .context("starting the relay")?,
    );
    println!("relay up at {RELAY_PRIMARY}:{RELAY_PORT} (key {relay_key})");

    let mut clients = Vec::new();
    for (name, pc) in NAMES.iter().zip(pcs) {
        let config = d.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "name: {name}\nprivate_key_file: {name}.key\nstate_file: {name}.party.json\n\
                 control_socket: \"{}\"\nrelays:\n  - {{name: demo, address: \"{RELAY_PRIMARY}:{RELAY_PORT}\", public_key: \"{relay_key}\"}}\n",
                d.join(format!("{name}.sock")).display()
            ),
        )?;
        let key = d.join(format!("{name}.key"));
        capture(client(&exe, &config).arg("keygen").arg("--key").arg(&key))?;
        clients.push(Running(
            pc.ns
                .command(&exe)?
                .env(ROLE, "client")
                .arg("--config")
                .arg(&config)
                .arg("up")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("{name}.log")))?)
                .spawn()
                .context("starting a client")?,
        ));
        println!(
            "{name}: lanrage up on {} (behind router {})",
            pc.addr, pc.gateway
        );
    }
    for name in NAMES {
        wait_for(stop, Duration::from_secs(10), || {
            lanrage(&exe, d, name, &["status", "--json"])
                .is_ok_and(|s| s.contains("\"registered\": true"))
        })
        .with_context(|| format!("{name} did not register with the relay:\n{}", log(d, name)))?;
    }

    println!("\n$ ada: lanrage party create --name \"Friday LAN\"");
    let code = lanrage(&exe, d, "ada", &["party", "create", "--name", "Friday LAN"])?;
    let code = code.trim().to_owned();
    println!("{code}");
    for name in &NAMES[1..] {
        check(stop)?;
        println!("$ {name}: lanrage party join {code}");
        lanrage(&exe, d, name, &["party", "join", &code])?;
    }
    // Direct paths: the two PCs behind router A find each other on their
    // LAN; bo's symmetric NAT against router A's port-restricted one needs
    // birthday probing, which works about 70 % of the time (else the relay).
    std::thread::sleep(Duration::from_secs(2));
    check(stop)?;

    let members = lanrage(&exe, d, "ada", &["party", "members"])?;
    println!("\n$ ada: lanrage party members\n{members}");
    let mut ips = Vec::new();
    for name in NAMES {
        let row = lanrage(&exe, d, name, &["party", "members", "--json"])?;
        ips.push(member_ip(&row, name).unwrap_or_default());
    }
    for name in NAMES {
        println!("$ {name}: lanrage status");
        println!("{}", lanrage(&exe, d, name, &["status"])?);
    }

    println!("ping matrix (5 pings each, average round trip):");
    print!("{:>8}", "");
    for to in NAMES {
        print!("{to:>18}");
    }
    println!();
    let mut unreachable = Vec::new();
    for (i, from) in NAMES.iter().enumerate() {
        check(stop)?;
        print!("{from:>8}");
        for (j, to) in NAMES.iter().enumerate() {
            if i == j {
                print!("{:>18}", "-");
                continue;
            }
            let (text, received) = ping(pcs[i], &ips[j])?;
            if received == 0 {
                unreachable.push(format!("{from} → {to}"));
            }
            print!("{text:>18}");
        }
        println!();
    }
    check(stop)?;
    let unseen = minecraft(&exe, &pcs)?;

    println!("\ntearing down (processes, namespaces, {})", d.display());
    drop(clients);
    if !unreachable.is_empty() {
        bail!("no ping answered: {}", unreachable.join(", "));
    }
    if !unseen.is_empty() {
        bail!("the Minecraft world was not found on {}", unseen.join(", "));
    }
    Ok(())
}

/// LAN discovery: ada opens a Minecraft world to LAN (Minecraft's own
/// announcement, multicast to 224.0.2.60:4445 every 1.5 s), and bo's and
/// cy's multiplayer screens list it. Returns who didn't see it.
fn minecraft(exe: &Path, pcs: &[&natlab::Pc; 3]) -> Result<Vec<String>> {
    println!("\n$ ada: Open to LAN (Minecraft Java: announces to 224.0.2.60:4445)");
    let game = |pc: &natlab::Pc, args: &[&str]| -> Result<std::process::Child> {
        Ok(pc
            .ns
            .command(exe)?
            .env(ROLE, "game")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let listen = ["minecraft-listen", "--seconds", "4", "--count", "1"];
    let listeners = [game(pcs[1], &listen)?, game(pcs[2], &listen)?];
    // The listeners join the group before the first announcement.
    std::thread::sleep(Duration::from_millis(400));
    let announce = [
        "minecraft-announce",
        "--motd",
        "ada - Friday LAN world",
        "--port",
        "25565",
        "--seconds",
        "2",
    ];
    game(pcs[0], &announce)?.wait_with_output()?;
    let mut unseen = Vec::new();
    for (name, listener) in NAMES[1..].iter().zip(listeners) {
        let out = listener.wait_with_output()?;
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l.get("motd").is_some());
        match found {
            Some(world) => {
                let from = world["from"].as_str().unwrap_or("?");
                let host = from.split(':').next().unwrap_or(from);
                println!(
                    "{name}: multiplayer screen lists {} at {host}:{}",
                    world["motd"], world["port"]
                );
            }
            None => {
                println!("{name}: nothing found");
                unseen.push((*name).to_owned());
            }
        }
    }
    Ok(unseen)
}

fn client(exe: &Path, config: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env(ROLE, "client").arg("--config").arg(config);
    c
}

fn lanrage(exe: &Path, dir: &Path, name: &str, args: &[&str]) -> Result<String> {
    capture(client(exe, &dir.join(format!("{name}.yaml"))).args(args))
        .with_context(|| format!("{name}: lanrage {}", args.join(" ")))
}

fn capture(command: &mut Command) -> Result<String> {
    let out = command.output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `name`'s address in a `party members --json` answer.
fn member_ip(json: &str, name: &str) -> Option<String> {
    let start = json.find(&format!("\"name\": \"{name}\""))?;
    let rest = &json[start..];
    let at = rest.find("\"address\": \"")? + "\"address\": \"".len();
    Some(rest[at..].split('"').next()?.to_owned())
}

/// Five pings: "received/5 avg ms", and how many were answered.
fn ping(from: &natlab::Pc, ip: &str) -> Result<(String, u32)> {
    let out = from
        .ns
        .command("ping")?
        .args(["-n", "-q", "-c", "5", "-i", "0.2", "-W", "1", ip])
        .output()
        .context("running ping (iputils-ping)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .unwrap_or("0")
        .trim()
        .to_owned();
    let avg = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .map(|v| format!("{v} ms"));
    let count = received.parse().unwrap_or(0);
    Ok((
        match avg {
            Some(avg) => format!("{received}/5 {avg}"),
            None => format!("{received}/5"),
        },
        count,
    ))
}

fn wait_for(stop: &AtomicBool, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        check(stop)?;
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not within {limit:?}")
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}
