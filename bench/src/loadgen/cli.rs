//! The command line of `lanrage-loadgen`, its presets, and the resolved
//! [`Settings`] a run works from. Explicit flags override preset values.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use lanrage_proto::x25519::PublicKey;
use lanrage_proto::PeerKey;
use serde::Serialize;

use super::payload::STAMP_LEN;

/// Load generator for the LANrage relay: N peer pairs with real WireGuard
/// keys register, handshake through the relay, then send A→B traffic that
/// carries a sequence number and a timestamp, so loss, reordering and one-way
/// latency are measured, not guessed. A direct loopback baseline runs first.
///
/// Exactly one target: `--relay` with `--relay-public-key`, `--embedded`, or
/// `--forwarder` with `--sink-port` (a plain UDP forwarder, for baselines).
#[derive(Debug, Clone, Parser)]
#[command(name = "lanrage-loadgen", version)]
pub struct Args {
    /// Address of a running relay (e.g. 127.0.0.1:51888). Its
    /// handshake_rate_limit must allow 4 handshakes/registrations per pair
    /// from one IP, plus one refresh per peer every 20 s.
    #[arg(long, value_name = "ADDR", requires = "relay_public_key")]
    pub relay: Option<SocketAddr>,

    /// The relay's public key (base64), as `lanrage-relay public-key` prints it.
    #[arg(long, value_name = "BASE64", env = "LANRAGE_RELAY_PUBLIC_KEY")]
    pub relay_public_key: Option<String>,

    /// Start a relay inside this process on 127.0.0.1 (an ephemeral port),
    /// with rate limits raised so one IP can register thousands of peers.
    #[arg(long, conflicts_with_all = ["relay", "forwarder"])]
    pub embedded: bool,

    /// A plain UDP forwarder (no registration, no handshake) to send through:
    /// e.g. `naive-forwarder` or an nginx UDP proxy, delivering to --sink-port.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "sink_port",
        conflicts_with = "relay"
    )]
    pub forwarder: Option<SocketAddr>,

    /// With --forwarder: the loopback port this generator receives on (the
    /// forwarder's destination).
    #[arg(long, value_name = "PORT")]
    pub sink_port: Option<u16>,

    /// A named workload; explicit flags override its values.
    /// gaming: 1000 pairs, 100-byte payloads, 64 packets/s each.
    /// bulk: 1 pair, 1200-byte payloads, as fast as possible.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,

    /// Peer pairs (A sends to B). Default 1, or the preset's.
    #[arg(long)]
    pub pairs: Option<usize>,

    /// Packets per second per pair; 0 sends as fast as possible.
    /// Default 1000, or the preset's.
    #[arg(long)]
    pub rate: Option<u64>,

    /// Measured UDP payload bytes per packet (>= 24, the stamp).
    /// The datagram on the wire is size + 60 (see docs/benchmarks.md).
    /// Default 100, or the preset's.
    #[arg(long)]
    pub size: Option<usize>,

    /// Seconds of traffic per phase. With a non-zero --rate, every pair sends
    /// exactly rate × duration packets. Default 5.
    #[arg(long)]
    pub duration: Option<f64>,

    /// Send exactly this many packets per pair (overrides rate × duration;
    /// with --rate 0 still bounded by --duration).
    #[arg(long)]
    pub count: Option<u64>,

    /// Seed for the peers' WireGuard keys (and the embedded relay's key).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// sealed: real boringtun encryption end to end; prebuilt: valid transport
    /// headers with the payload in clear (relay throughput, cheap generator).
    #[arg(long, value_enum, default_value_t = Mode::Sealed)]
    pub mode: Mode,

    /// Skip the direct loopback baseline phase.
    #[arg(long)]
    pub no_baseline: bool,

    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// How long to keep receiving after sending stops, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub grace_ms: u64,

    /// Give up registering and handshaking the pairs after this many
    /// seconds. Default 30 plus 0.02 per pair.
    #[arg(long, value_name = "SECS")]
    pub setup_timeout: Option<f64>,

    /// Instead of sending traffic: install this many routes in an in-process
    /// router (through `Router::handle`, no sockets) and report the RSS cost
    /// per route and per registration.
    #[arg(long, value_name = "ROUTES", conflicts_with_all = ["relay", "embedded", "forwarder"])]
    pub route_memory: Option<usize>,
}

/// A named workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Gaming,
    Bulk,
}

/// How transport packets are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sealed,
    Prebuilt,
}

/// Where the traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Relay { addr: SocketAddr, public: PeerKey },
    Embedded,
    Forwarder { addr: SocketAddr, sink_port: u16 },
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Relay { .. } => "relay",
            Target::Embedded => "embedded",
            Target::Forwarder { .. } => "forwarder",
        }
    }
}

/// A run's settings after presets, defaults and validation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub preset: Option<Preset>,
    pub pairs: usize,
    /// Packets per second per pair; 0 = as fast as possible.
    pub rate: u64,
    pub size: usize,
    /// Nominal sending time per phase.
    pub duration: Duration,
    /// Exact packets per pair, when known in advance.
    pub per_pair: Option<u64>,
    pub seed: u64,
    pub mode: Mode,
    pub baseline: bool,
    pub json: bool,
    pub grace: Duration,
    /// The bound on registering and handshaking every pair.
    pub setup_timeout: Duration,
}

/// The largest payload: the inner packet must fit WireGuard's 1420-byte MTU.
pub const MAX_SIZE: usize = 1420 - 28;
/// Sockets are two per pair; keep well inside common descriptor limits.
pub const MAX_PAIRS: usize = 50_000;
/// boringtun sessions are rejected after 180 s (REJECT_AFTER_TIME) and rekey
/// at 120 s; a sealed phase stays below the rekey so no handshake interferes.
const MAX_SEALED_SECS: f64 = 110.0;

impl Settings {
    pub fn from_args(args: &Args) -> Result<Self> {
        let (pairs, rate, size) = match args.preset {
            Some(Preset::Gaming) => (1000, 64, 100),
            Some(Preset::Bulk) => (1, 0, 1200),
            None => (1, 1000, 100),
        };
        let pairs = args.pairs.unwrap_or(pairs);
        let rate = args.rate.unwrap_or(rate);
        let size = args.size.unwrap_or(size);
        let duration_secs = args.duration.unwrap_or(5.0);

        let target = if args.embedded {
            Target::Embedded
        } else if let Some(addr) = args.relay {
            let text = args
                .relay_public_key
                .as_deref()
                .context("--relay needs --relay-public-key")?;
            let public = PeerKey::from_base64(text.trim()).with_context(|| {
                format!("--relay-public-key {text:?} is not a base64 32-byte key")
            })?;
            Target::Relay { addr, public }
        } else if let Some(addr) = args.forwarder {
            let sink_port = args.sink_port.context("--forwarder needs --sink-port")?;
            Target::Forwarder { addr, sink_port }
        } else {
            bail!(
                "choose a target: --relay ADDR, --embedded, or --forwarder ADDR --sink-port PORT"
            );
        };

        if !(1..=MAX_PAIRS).contains(&pairs) {
            bail!("--pairs must be between 1 and {MAX_PAIRS}, got {pairs}");
        }
        if !(STAMP_LEN..=MAX_SIZE).contains(&size) {
            bail!("--size must be between {STAMP_LEN} and {MAX_SIZE} bytes, got {size}");
        }
        if !(duration_secs.is_finite() && duration_secs > 0.0 && duration_secs <= 3600.0) {
            bail!("--duration must be between 0 and 3600 seconds, got {duration_secs}");
        }
        if rate > 1_000_000 {
            bail!("--rate must be at most 1000000 packets/s per pair, got {rate}");
        }
        if args.mode == Mode::Sealed && matches!(target, Target::Forwarder { .. }) {
            bail!("--mode sealed needs WireGuard sessions; use --mode prebuilt with --forwarder");
        }
        let per_pair = match (args.count, rate) {
            (Some(0), _) => bail!("--count must be at least 1"),
            (Some(n), _) => Some(n),
            (None, 0) => None,
            (None, r) => Some(((r as f64) * duration_secs).round().max(1.0) as u64),
        };
        let nominal = match (per_pair, rate) {
            (Some(n), r) if r > 0 => n as f64 / r as f64,
            _ => duration_secs,
        };
        if args.mode == Mode::Sealed && nominal > MAX_SEALED_SECS {
            bail!(
                "--mode sealed phases are limited to {MAX_SEALED_SECS} s (boringtun rekeys at \
                 120 s); use --mode prebuilt for longer runs"
            );
        }
        if args.grace_ms > 10_000 {
            bail!("--grace-ms must be at most 10000, got {}", args.grace_ms);
        }
        let setup_timeout = match args.setup_timeout {
            None => super::setup_progress::default_timeout(pairs),
            Some(secs) if secs.is_finite() && (1.0..=86_400.0).contains(&secs) => {
                Duration::from_secs_f64(secs)
            }
            Some(secs) => bail!("--setup-timeout must be between 1 and 86400 seconds, got {secs}"),
        };
        Ok(Self {
            target,
            preset: args.preset,
            pairs,
            rate,
            size,
            duration: Duration::from_secs_f64(nominal),
            per_pair,
            seed: args.seed,
            mode: args.mode,
            baseline: !args.no_baseline,
            json: args.json,
            grace: Duration::from_millis(args.grace_ms),
            setup_timeout,
        })
    }

    /// The hard bound on one phase's sending time: the nominal time plus
    /// slack for a sender that falls behind its schedule.
    pub fn send_time_limit(&self) -> Duration {
        if self.per_pair.is_some() && self.rate > 0 {
            self.duration + self.duration / 2 + Duration::from_secs(2)
        } else {
            self.duration
        }
    }

    /// An upper bound on any sequence number this run's sender uses (for the
    /// receiver's bitmap): a million packets per second per pair is more than
    /// one core can send.
    pub fn seq_limit(&self) -> u64 {
        match self.per_pair {
            Some(n) => n,
            None => (self.duration.as_secs_f64() * 2_000_000.0) as u64 + 1024,
        }
    }
}

/// The relay public key of `--relay-public-key`, as an x25519 key.
pub fn relay_public(key: &PeerKey) -> PublicKey {
    PublicKey::from(*key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn settings(args: &[&str]) -> Result<Settings> {
        let mut full = vec!["lanrage-loadgen"];
        full.extend_from_slice(args);
        Settings::from_args(&Args::try_parse_from(full)?)
    }

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn presets_fill_in_and_flags_override() {
        let s = settings(&["--embedded", "--preset", "gaming"]).expect("gaming");
        assert_eq!((s.pairs, s.rate, s.size), (1000, 64, 100));
        assert_eq!(s.per_pair, Some(320));
        let s = settings(&["--embedded", "--preset", "gaming", "--pairs", "3"]).expect("override");
        assert_eq!((s.pairs, s.rate), (3, 64));
        let s = settings(&["--embedded", "--preset", "bulk", "--mode", "prebuilt"]).expect("bulk");
        assert_eq!((s.pairs, s.rate, s.size, s.per_pair), (1, 0, 1200, None));
    }

    #[test]
    fn count_is_exact_and_sets_the_duration() {
        let s = settings(&["--embedded", "--rate", "100", "--count", "50"]).expect("count");
        assert_eq!(s.per_pair, Some(50));
        assert_eq!(s.duration, Duration::from_millis(500));
    }

    #[test]
    fn invalid_combinations_are_refused() {
        assert!(settings(&[]).is_err(), "no target");
        assert!(settings(&["--embedded", "--size", "10"]).is_err());
        assert!(settings(&["--forwarder", "127.0.0.1:9", "--sink-port", "9"]).is_err());
        assert!(settings(&["--relay", "127.0.0.1:9"]).is_err());
        assert!(settings(&["--embedded", "--duration", "300"]).is_err());
    }
}
