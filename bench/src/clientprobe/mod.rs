//! `lanrage-clientprobe`: how legitimate clients fare against a relay,
//! one operation at a time, for measuring a relay under a flood
//! (`bench/flood.sh`).
//!
//! For `--duration` seconds it cycles through fresh client pairs on
//! loopback. Each cycle does what a real client does and times each step:
//! 1. **register** A, then B (the v2 challenge round trip included): from the
//!    first send to the authenticated ack;
//! 2. **handshake**: a real boringtun handshake A → B through the relay, up
//!    to B's receipt of A's confirming keepalive;
//! 3. **refresh** A and B from their bound endpoints (one packet each).
//!
//! Every step is the load generator's own (`loadgen::setup`), with its
//! retries: 3 tries of 500 ms. A step that still fails is counted as failed
//! and the cycle moves on. It prints one JSON line: per step, attempts,
//! successes and latency percentiles (µs) of the successful ones.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use boringtun::noise::Tunn;
use clap::Parser;
use hdrhistogram::Histogram;
use lanrage_proto::x25519::PublicKey;
use lanrage_proto::PeerKey;
use serde::Serialize;

use crate::loadgen::setup::{bind_loopback, handshake, peer_secret, register, RegState, BUF_LEN};

/// Legitimate clients' registrations, handshakes and refreshes against a
/// relay, timed one by one.
#[derive(Debug, Parser)]
#[command(name = "lanrage-clientprobe")]
pub struct Args {
    /// The relay, e.g. 127.0.0.1:51888 (loopback only).
    #[arg(long)]
    pub relay: SocketAddr,
    /// The relay's public key (base64), as `lanrage-relay public-key` prints it.
    #[arg(long)]
    pub relay_public_key: String,
    /// How long to keep cycling pairs, in seconds (1 to 600).
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Seeds the clients' keys; runs with one seed reuse keys.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub attempts: u64,
    pub succeeded: u64,
    pub success_ratio: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub pairs: u64,
    pub register: StepReport,
    pub handshake: StepReport,
    pub refresh: StepReport,
}

struct Step {
    attempts: u64,
    latencies: Histogram<u64>,
}

impl Step {
    fn new() -> Self {
        Self {
            attempts: 0,
            latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    fn time(&mut self, f: impl FnOnce() -> Result<()>) -> bool {
        self.attempts += 1;
        let started = Instant::now();
        let ok = f().is_ok();
        if ok {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = self.latencies.record(us.clamp(1, 60_000_000));
        }
        ok
    }

    fn report(&self) -> StepReport {
        let succeeded = self.latencies.len();
        let q = |q| {
            if succeeded == 0 {
                0
            } else {
                self.latencies.value_at_quantile(q)
            }
        };
        StepReport {
            attempts: self.attempts,
            succeeded,
            success_ratio: if self.attempts == 0 {
                0.0
            } else {
                succeeded as f64 / self.attempts as f64
            },
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: self.latencies.max(),
        }
    }
}

pub fn run(args: &Args) -> Result<Report> {
    if !args.relay.ip().is_loopback() {
        bail!("--relay must be a loopback address, got {}", args.relay);
    }
    if !(1..=600).contains(&args.duration) {
        bail!("--duration must be 1 to 600 seconds, got {}", args.duration);
    }
    let relay_public = PublicKey::from(
        PeerKey::from_base64(&args.relay_public_key)
            .ok_or_else(|| anyhow::anyhow!("--relay-public-key is not a base64 WireGuard key"))?,
    );
    let (mut register_step, mut handshake_step, mut refresh_step) =
        (Step::new(), Step::new(), Step::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut buf = [0u8; BUF_LEN];
    let mut pairs = 0u64;
    // Bounded by time, and by count as a second guard.
    while Instant::now() < deadline && pairs < 100_000 {
        let pair = pairs as usize;
        pairs += 1;
        let (sa, sb) = (
            peer_secret(args.seed, pair, 0),
            peer_secret(args.seed, pair, 1),
        );
        let (ka, kb) = (
            PeerKey::from(&PublicKey::from(&sa)),
            PeerKey::from(&PublicKey::from(&sb)),
        );
        let mut reg_a = RegState::new(&sa, &relay_public, kb)?;
        let mut reg_b = RegState::new(&sb, &relay_public, ka)?;
        let (a, b) = (bind_loopback()?, bind_loopback()?);
        let ok_a = register_step.time(|| register(&a, args.relay, &mut reg_a, &mut buf));
        let ok_b = register_step.time(|| register(&b, args.relay, &mut reg_b, &mut buf));
        if !(ok_a && ok_b) {
            continue;
        }
        let index = (pair as u32) & 0x00FF_FFFF;
        let mut tunn_a = Tunn::new(sa, PublicKey::from(kb), None, None, index, None);
        let mut tunn_b = Tunn::new(sb, PublicKey::from(ka), None, None, index, None);
        handshake_step
            .time(|| handshake(&a, &b, args.relay, &mut tunn_a, &mut tunn_b, &mut buf).map(|_| ()));
        refresh_step.time(|| register(&a, args.relay, &mut reg_a, &mut buf));
        refresh_step.time(|| register(&b, args.relay, &mut reg_b, &mut buf));
    }
    Ok(Report {
        seconds: started.elapsed().as_secs_f64(),
        pairs,
        register: register_step.report(),
        handshake: handshake_step.report(),
        refresh: refresh_step.report(),
    })
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("the report serialises")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
