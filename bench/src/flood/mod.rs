//! `lanrage-flood`: spoofed-source floods against a relay on loopback, for
//! measuring what an attacker who can forge source addresses costs the
//! relay and its legitimate clients (`bench/flood.sh` runs one beside the
//! load generator).
//!
//! Datagrams leave through [`lanrage_tests::spoof::Spoofer`] (a raw socket,
//! so it needs root or `CAP_NET_RAW`), in `sendmmsg` batches. Hard bounds:
//! the relay and every source are in `127.0.0.0/8` (the spoofer refuses
//! anything else), and a run lasts `--duration` seconds, at most
//! [`MAX_DURATION_SECS`]. At the end one JSON line goes to stdout:
//! `{"kind", "sent", "seconds", "pps", …}`.
//!
//! Kinds (`--kind`):
//! - `register-fresh`: valid registrations for fresh keys (the attacker owns
//!   them, so it can MAC them), [`--keys`](Args::keys) precomputed and sent
//!   round-robin, from random spoofed sources. Each new key costs the relay
//!   an X25519 and a registration slot; a repeat is a replay.
//! - `register-junk`: registrations with random MACs claiming `--victim-key`
//!   (or random keys: an X25519 each, as the relay caches session keys only
//!   for registered clients), from random ports of `--src-ip` or from random
//!   sources. Drains the per-IP handshake/registration bucket of `--src-ip`.
//! - `transport-miss`: 32-byte transport messages with random receiver
//!   indices from random sources: route misses that fill per-source tables
//!   such as the hint rate limiter.
//! - `initiation`: 148-byte initiations of random bytes from `--src`, a
//!   registered client's endpoint (`--register-victim` registers one there
//!   first): charges that client's IP bucket and the consent check.

mod payload;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use lanrage_proto::mac::derive_secret;
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;
use lanrage_tests::spoof::{Loopback, SpoofError, Spoofer};
use rand::rngs::SmallRng;
use rand::SeedableRng as _;
use serde::Serialize;

use crate::loadgen::setup::{register, RegState, BUF_LEN};
pub use payload::{Payloads, Sources};

/// The longest flood a run may send.
pub const MAX_DURATION_SECS: f64 = 600.0;
/// Default size of the random source pool.
pub const DEFAULT_SOURCES: usize = 65_536;
/// Default number of precomputed registrations (register-fresh) or claimed
/// random keys (register-junk without a victim).
pub const DEFAULT_KEYS: usize = 4096;
/// How often `--register-victim` refreshes the victim's registrations
/// (clients refresh every 20-25 s; a registration lives 90 s).
const VICTIM_REFRESH: Duration = Duration::from_secs(20);

/// Spoofed-source flood generator for a LANrage relay on loopback.
///
/// Sends one kind of hostile traffic from forged 127.0.0.0/8 sources
/// through a raw socket (needs root or CAP_NET_RAW) for --duration seconds,
/// then prints one JSON line: kind, packets sent, seconds, achieved pps.
/// Refuses any relay or source outside 127.0.0.0/8.
#[derive(Debug, Clone, Parser)]
#[command(name = "lanrage-flood", version)]
pub struct Args {
    /// What to send (see the kinds in docs/load-generator.md).
    #[arg(long, value_enum)]
    pub kind: Kind,

    /// The relay's UDP address; must be in 127.0.0.0/8.
    #[arg(long, value_name = "ADDR")]
    pub relay: SocketAddr,

    /// The relay's public key (base64), for register-fresh (the attacker
    /// seals registrations for its own keys) and --register-victim.
    #[arg(long, value_name = "BASE64", env = "LANRAGE_RELAY_PUBLIC_KEY")]
    pub relay_public_key: Option<String>,

    /// Packets per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,

    /// Seconds to flood (more than 0, at most 600).
    #[arg(long)]
    pub duration: f64,

    /// Size of the random source pool (127.a.b.c:port outside 127.0.0.0/16),
    /// for register-fresh, transport-miss and register-junk without
    /// --src-ip. Default 65536.
    #[arg(long, value_name = "N")]
    pub sources: Option<usize>,

    /// register-fresh: registrations precomputed (one fresh key each, 1 to
    /// 65536). register-junk without --victim-key: random keys claimed.
    /// Default 4096.
    #[arg(long, value_name = "N")]
    pub keys: Option<usize>,

    /// Seed for keys, sources and random bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// register-junk: the key every forged registration claims (base64).
    /// Without it, each claims one of --keys random keys.
    #[arg(long, value_name = "BASE64")]
    pub victim_key: Option<String>,

    /// register-junk: spoof this IP (random ports) instead of random sources.
    #[arg(long, value_name = "IP")]
    pub src_ip: Option<Ipv4Addr>,

    /// initiation: the spoofed source, a registered client's endpoint.
    /// With --register-victim, port 0 means an ephemeral port.
    #[arg(long, value_name = "ADDR")]
    pub src: Option<SocketAddr>,

    /// initiation: first register a victim client (and a consenting partner)
    /// from real sockets on --src, refreshed every 20 s, and flood from the
    /// victim's endpoint. Needs --relay-public-key.
    #[arg(long)]
    pub register_victim: bool,
}

/// A flood kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    RegisterFresh,
    RegisterJunk,
    TransportMiss,
    Initiation,
}

/// The one JSON line a run prints.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub kind: Kind,
    pub relay: String,
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams the kernel refused (e.g. no buffer space); not retried.
    pub send_errors: u64,
    pub seconds: f64,
    /// sent / seconds.
    pub pps: f64,
    /// The requested rate (0: as fast as possible).
    pub rate: u64,
    pub sources: Option<usize>,
    pub seed: u64,
    /// initiation with --register-victim: the endpoint flooded from.
    pub victim: Option<String>,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(outcome) => match serde_json::to_string(&outcome) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: encoding the result: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a flood needs, checked.
pub struct Plan {
    pub kind: Kind,
    pub relay: Loopback,
    pub rate: u64,
    pub duration: Duration,
    pub seed: u64,
    pub sources: usize,
    pub keys: usize,
    pub relay_public: Option<PublicKey>,
    pub victim_key: Option<PeerKey>,
    pub src_ip: Option<Ipv4Addr>,
    pub src: Option<SocketAddr>,
    pub register_victim: bool,
}

impl Plan {
    /// Checks the arguments; errors name the flag.
    pub fn new(args: &Args) -> Result<Self> {
        if !(args.duration > 0.0 && args.duration <= MAX_DURATION_SECS) {
            bail!(
                "--duration must be more than 0 and at most {MAX_DURATION_SECS} seconds, got {}",
                args.duration
            );
        }
        let relay = Loopback::new(args.relay).context("--relay")?;
        let kind = args.kind;
        let only_for = |set: bool, flag: &str, kinds: &[Kind]| -> Result<()> {
            if set && !kinds.contains(&kind) {
                bail!("{flag} does not apply to --kind {}", kind_name(kind));
            }
            Ok(())
        };
        use Kind::*;
        only_for(args.victim_key.is_some(), "--victim-key", &[RegisterJunk])?;
        only_for(args.src_ip.is_some(), "--src-ip", &[RegisterJunk])?;
        only_for(args.src.is_some(), "--src", &[Initiation])?;
        only_for(args.register_victim, "--register-victim", &[Initiation])?;
        only_for(
            args.keys.is_some(),
            "--keys",
            &[RegisterFresh, RegisterJunk],
        )?;
        let pool_kinds: &[Kind] = if args.src_ip.is_some() {
            &[RegisterFresh, TransportMiss]
        } else {
            &[RegisterFresh, TransportMiss, RegisterJunk]
        };
        only_for(args.sources.is_some(), "--sources", pool_kinds)?;

        let sources = args.sources.unwrap_or(DEFAULT_SOURCES);
        if !(1..=10_000_000).contains(&sources) {
            bail!("--sources must be between 1 and 10000000, got {sources}");
        }
        let keys = args.keys.unwrap_or(DEFAULT_KEYS);
        if !(1..=65_536).contains(&keys) {
            bail!("--keys must be between 1 and 65536, got {keys}");
        }
        let relay_public = args
            .relay_public_key
            .as_deref()
            .map(|text| {
                PeerKey::from_base64(text.trim())
                    .map(|k| PublicKey::from(k.0))
                    .with_context(|| {
                        format!("--relay-public-key {text:?} is not a base64 32-byte key")
                    })
            })
            .transpose()?;
        if relay_public.is_none() && (kind == RegisterFresh || args.register_victim) {
            bail!(
                "--kind {} needs --relay-public-key (the relay logs it at start: \
                 `relay ready ... public_key=`)",
                kind_name(kind)
            );
        }
        let victim_key = args
            .victim_key
            .as_deref()
            .map(|text| {
                PeerKey::from_base64(text.trim())
                    .with_context(|| format!("--victim-key {text:?} is not a base64 32-byte key"))
            })
            .transpose()?;
        if let Some(ip) = args.src_ip {
            Loopback::from_parts(ip, 1).context("--src-ip")?;
        }
        let src = match (kind, args.src) {
            (Initiation, None) => bail!("--kind initiation needs --src (a client's endpoint)"),
            (_, Some(src)) => {
                Loopback::new(src).context("--src")?;
                if src.port() == 0 && !args.register_victim {
                    bail!("--src port 0 needs --register-victim (which picks the port)");
                }
                Some(src)
            }
            (_, None) => None,
        };
        Ok(Self {
            kind,
            relay,
            rate: args.rate,
            duration: Duration::from_secs_f64(args.duration),
            seed: args.seed,
            sources,
            keys,
            relay_public,
            victim_key,
            src_ip: args.src_ip,
            src,
            register_victim: args.register_victim,
        })
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::RegisterFresh => "register-fresh",
        Kind::RegisterJunk => "register-junk",
        Kind::TransportMiss => "transport-miss",
        Kind::Initiation => "initiation",
    }
}

/// Plans, prepares (keys, sources, a victim) and floods.
pub fn run(args: &Args) -> Result<Outcome> {
    let plan = Plan::new(args)?;
    let mut spoofer = Spoofer::new().context("lanrage-flood sends spoofed packets")?;
    let mut rng = SmallRng::seed_from_u64(plan.seed);

    let pool = |rng: &mut SmallRng| Sources::random_pool(plan.sources, rng);
    let mut victim = None;
    let (mut payloads, sources, pool_size) = match plan.kind {
        Kind::RegisterFresh => {
            let relay = plan.relay_public.as_ref().context("checked in Plan::new")?;
            let payloads = Payloads::sealed(relay, plan.seed, plan.keys, unix_nanos())?;
            (payloads, pool(&mut rng)?, Some(plan.sources))
        }
        Kind::RegisterJunk => {
            let payloads = Payloads::forged(plan.victim_key, plan.keys, &mut rng)?;
            match plan.src_ip {
                Some(ip) => (payloads, Sources::Ip(ip), None),
                None => (payloads, pool(&mut rng)?, Some(plan.sources)),
            }
        }
        Kind::TransportMiss => (Payloads::TransportMiss, pool(&mut rng)?, Some(plan.sources)),
        Kind::Initiation => {
            let src = plan.src.context("checked in Plan::new")?;
            let src = if plan.register_victim {
                let relay = plan.relay_public.as_ref().context("checked in Plan::new")?;
                let v = Victim::register(src, plan.relay.into(), relay, plan.seed)?;
                let at = v.endpoint()?;
                victim = Some(v);
                at
            } else {
                src
            };
            let src = Loopback::new(src).context("--src")?;
            (Payloads::Initiation, Sources::One(src), None)
        }
    };
    let victim_endpoint = victim.as_ref().map(Victim::endpoint).transpose()?;
    eprintln!(
        "lanrage-flood: {} at {} for {:?}, rate {}{}",
        kind_name(plan.kind),
        plan.relay.addr(),
        plan.duration,
        if plan.rate == 0 {
            "max".to_owned()
        } else {
            format!("{} pps", plan.rate)
        },
        victim_endpoint
            .map(|v| format!(", from the registered victim {v}"))
            .unwrap_or_default()
    );

    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut next_refresh = start + VICTIM_REFRESH;
    let (mut queued, mut sent, mut errors) = (0u64, 0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(v) = victim.as_mut() {
            if now >= next_refresh {
                v.refresh(plan.relay.into())?;
                next_refresh += VICTIM_REFRESH;
            }
        }
        let want = match plan.rate {
            0 => lanrage_tests::spoof::BATCH,
            rate => {
                let due = (rate as f64 * now.duration_since(start).as_secs_f64()) as u64;
                let owed = due.saturating_sub(queued);
                if owed == 0 {
                    let next_due =
                        start + Duration::from_secs_f64((queued + 1) as f64 / rate as f64);
                    let nap = next_due.saturating_duration_since(now);
                    std::thread::sleep(nap.min(Duration::from_millis(1)));
                    continue;
                }
                owed.min(lanrage_tests::spoof::BATCH as u64) as usize
            }
        };
        for _ in 0..want {
            let src = sources.next(&mut rng);
            let len = payloads.next_len();
            spoofer.queue(src, plan.relay, len, |buf| {
                payloads.write_next(buf, &mut rng)
            })?;
        }
        queued += want as u64;
        match spoofer.flush() {
            Ok(n) => {
                sent += n as u64;
                errors += (want - n) as u64;
            }
            Err(SpoofError::Send(e)) if is_transient(&e) => {
                errors += want as u64;
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => return Err(e).context("sending the flood"),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Outcome {
        kind: plan.kind,
        relay: plan.relay.addr().to_string(),
        sent,
        send_errors: errors,
        seconds,
        pps: sent as f64 / seconds,
        rate: plan.rate,
        sources: pool_size,
        seed: plan.seed,
        victim: victim_endpoint.map(|v| v.to_string()),
    })
}

/// Kernel refusals worth riding out: a full queue or no memory for a packet.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS | libc::EAGAIN | libc::ENOMEM)
    )
}

/// A client registered from real sockets (with a consenting partner, so
/// the relay has a responder to check each initiation's mac1 against),
/// whose endpoint the initiation flood then spoofs.
struct Victim {
    sockets: [UdpSocket; 2],
    regs: [RegState; 2],
}

impl Victim {
    fn register(
        at: SocketAddr,
        relay: SocketAddr,
        relay_public: &PublicKey,
        seed: u64,
    ) -> Result<Self> {
        let secret = |n| {
            StaticSecret::from(derive_secret(
                &payload::seed32(seed),
                b"lanrage flood victim key",
                n,
            ))
        };
        let (a, b) = (secret(0), secret(1));
        let key = |s: &StaticSecret| PeerKey::from(&PublicKey::from(s));
        let mut regs = [
            RegState::new(&a, relay_public, key(&b))?,
            RegState::new(&b, relay_public, key(&a))?,
        ];
        let partner_at = SocketAddr::new(at.ip(), 0);
        let sockets = [
            UdpSocket::bind(at).with_context(|| format!("binding the victim's socket on {at}"))?,
            UdpSocket::bind(partner_at)
                .with_context(|| format!("binding the partner's socket on {partner_at}"))?,
        ];
        let mut buf = [0u8; BUF_LEN];
        for (socket, reg) in sockets.iter().zip(regs.iter_mut()) {
            register(socket, relay, reg, &mut buf)
                .with_context(|| format!("registering the victim from {at}"))?;
        }
        Ok(Self { sockets, regs })
    }

    fn endpoint(&self) -> Result<SocketAddr> {
        Ok(self.sockets[0].local_addr()?)
    }

    /// Sends fresh registrations without waiting for acks (the flood may
    /// have drained this IP's bucket; a lost refresh is part of the result).
    fn refresh(&mut self, relay: SocketAddr) -> Result<()> {
        for (socket, reg) in self.sockets.iter().zip(self.regs.iter_mut()) {
            let msg = reg.registration(socket.local_addr().ok());
            socket.send_to(&msg, relay)?;
        }
        Ok(())
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan> {
        let mut argv = vec!["lanrage-flood"];
        argv.extend_from_slice(args);
        Plan::new(&Args::try_parse_from(argv)?)
    }

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn err(args: &[&str]) -> String {
        match plan(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// `--kind KIND --relay RELAY --duration 1` and `extra`.
    fn args<'a>(kind: &'a str, relay: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--kind", kind, "--relay", relay, "--duration", "1"];
        args.extend_from_slice(extra);
        args
    }

    #[test]
    fn a_relay_or_source_off_loopback_is_refused() {
        let e = err(&args("transport-miss", "10.0.0.1:51888", &[]));
        assert!(e.contains("--relay") && e.contains("127.0.0.0/8"), "{e}");
        let e = err(&args(
            "initiation",
            "127.0.0.1:1",
            &["--src", "192.168.1.2:4000"],
        ));
        assert!(e.contains("--src") && e.contains("127.0.0.0/8"), "{e}");
        let e = err(&args(
            "register-junk",
            "127.0.0.1:1",
            &["--src-ip", "8.8.8.8"],
        ));
        assert!(e.contains("--src-ip") && e.contains("127.0.0.0/8"), "{e}");
        let e = err(&args("transport-miss", "[::1]:1", &[]));
        assert!(e.contains("127.0.0.0/8"), "{e}");
    }

    #[test]
    fn the_duration_is_required_and_bounded() {
        let base = ["--kind", "transport-miss", "--relay", "127.0.0.1:1"];
        assert!(plan(&base).is_err(), "no --duration");
        for bad in ["0", "-1", "600.5", "NaN", "inf"] {
            let mut args = base.to_vec();
            args.extend(["--duration", bad]);
            let e = err(&args);
            assert!(e.contains("--duration"), "{bad}: {e}");
        }
        let mut args = base.to_vec();
        args.extend(["--duration", "600"]);
        assert_eq!(
            plan(&args).expect("600 s").duration,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn each_kind_requires_its_inputs_and_refuses_others() {
        let e = err(&args("register-fresh", "127.0.0.1:1", &[]));
        assert!(e.contains("--relay-public-key"), "{e}");
        let e = err(&args("initiation", "127.0.0.1:1", &[]));
        assert!(e.contains("--src"), "{e}");
        let e = err(&args(
            "initiation",
            "127.0.0.1:1",
            &["--src", "127.0.0.1:0"],
        ));
        assert!(e.contains("--register-victim"), "{e}");
        let e = err(&args(
            "transport-miss",
            "127.0.0.1:1",
            &["--victim-key", KEY],
        ));
        assert!(e.contains("--victim-key does not apply"), "{e}");
        let e = err(&args(
            "register-junk",
            "127.0.0.1:1",
            &["--src-ip", "127.0.0.1", "--sources", "5"],
        ));
        assert!(e.contains("--sources does not apply"), "{e}");
        let e = err(&args(
            "register-junk",
            "127.0.0.1:1",
            &["--victim-key", "short"],
        ));
        assert!(e.contains("--victim-key"), "{e}");
        let ok = plan(&args(
            "register-fresh",
            "127.0.0.1:1",
            &[
                "--relay-public-key",
                KEY,
                "--keys",
                "16",
                "--sources",
                "100",
            ],
        ))
        .expect("valid");
        assert_eq!((ok.keys, ok.sources), (16, 100));
    }
}
