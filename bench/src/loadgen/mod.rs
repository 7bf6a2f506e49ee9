//! `lanrage-loadgen`: the load generator behind every performance claim.
//!
//! A run is: resolve the settings ([`cli`]), start or find the target
//! ([`embedded`]), set up the peers ([`setup`]: keys, sockets, registration,
//! one real WireGuard handshake per pair), then up to two traffic phases with
//! the same sender ([`sender`]) and receiver ([`receiver`], [`accounting`]):
//! a **direct** loopback baseline (A sends straight to B's socket) and the
//! **forwarded** phase through the relay or forwarder. [`report`] turns both
//! into JSON or a table. [`route_memory`] is a separate measurement (RSS per
//! route) that sends no traffic.
//!
//! Threads: the sender runs in a scoped thread while the receiver runs on the
//! calling thread; an embedded relay has its own thread. On a 2-core machine
//! these compete for the CPU, and the numbers say so: compare phases and
//! targets measured in the same run, not absolute numbers across machines.
//!
//! Traffic goes only where the command line points; nothing here binds
//! anything but 127.0.0.1.

pub mod accounting;
pub mod cli;
pub mod embedded;
pub mod payload;
pub mod receiver;
pub mod report;
pub mod route_memory;
pub mod send_batch;
pub mod sender;
pub mod setup;
pub mod setup_progress;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser as _;

use accounting::Accounting;
use cli::{Args, Mode, Settings, Target};
use payload::{wire_len, PHASE_DIRECT, PHASE_FORWARDED};
use receiver::{Opener, Receiver, Window};
use report::{ConfigEcho, PhaseReport, Phases, Report, SetupReport};
use sender::{Packets, Plan, Progress, Refresher, Sender};
use setup_progress::SetupProgress;

/// The binary's entry point: `error: …` on stderr and exit code 1 on failure.
pub fn main() -> ExitCode {
    crate::exit_code(run_cli(&Args::parse()))
}

fn run_cli(args: &Args) -> Result<()> {
    if let Some(routes) = args.route_memory {
        let report = route_memory::measure(routes, args.seed)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        return Ok(());
    }
    let settings = Settings::from_args(args)?;
    let report = run(&settings)?;
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Everything a traffic phase needs besides the plan.
struct Rig {
    sender: Sender,
    receiver: Receiver,
    /// Per pair: where the forwarded phase sends, and where the direct one does.
    forwarded_dests: Vec<SocketAddr>,
    direct_dests: Vec<SocketAddr>,
}

/// Runs a load test with resolved settings.
pub fn run(settings: &Settings) -> Result<Report> {
    let fd_limit = setup::raise_fd_limit().context("cannot raise RLIMIT_NOFILE")?;
    let needed = 2 * settings.pairs as u64 + 64;
    if fd_limit < needed {
        anyhow::bail!(
            "{} pairs need about {needed} file descriptors, but RLIMIT_NOFILE is {fd_limit}",
            settings.pairs
        );
    }
    let embedded = match settings.target {
        Target::Embedded => Some(embedded::EmbeddedRelay::start(settings.seed)?),
        _ => None,
    };
    let setup_started = Instant::now();
    let (mut rig, registrations, handshakes, target_addr) = match &settings.target {
        Target::Forwarder { addr, sink_port } => {
            (forwarder_rig(settings, *addr, *sink_port)?, 0, 0, *addr)
        }
        Target::Relay { addr, public } => {
            let public = cli::relay_public(public);
            (
                relay_rig(settings, *addr, &public)?,
                2 * settings.pairs as u64,
                settings.pairs as u64,
                *addr,
            )
        }
        Target::Embedded => {
            let relay = embedded.as_ref().context("embedded relay not started")?;
            (
                relay_rig(settings, relay.addr, &relay.public)?,
                2 * settings.pairs as u64,
                settings.pairs as u64,
                relay.addr,
            )
        }
    };
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    if !settings.json {
        eprintln!(
            "setup: {} pairs ready in {setup_seconds:.2} s",
            settings.pairs
        );
    }

    let base = Instant::now();
    let direct = if settings.baseline {
        let dests = rig.direct_dests.clone();
        Some(phase(
            settings,
            &mut rig,
            PHASE_DIRECT,
            &dests,
            base,
            "direct",
        )?)
    } else {
        None
    };
    let dests = rig.forwarded_dests.clone();
    let forwarded = phase(
        settings,
        &mut rig,
        PHASE_FORWARDED,
        &dests,
        base,
        settings.target.name(),
    )?;
    let added = direct
        .as_ref()
        .map(|d| forwarded.latency_us.minus(&d.latency_us));
    drop(embedded);

    Ok(Report {
        config: ConfigEcho {
            target: settings.target.name().to_owned(),
            target_addr: Some(target_addr.to_string()),
            preset: settings.preset,
            mode: settings.mode,
            pairs: settings.pairs,
            rate_per_pair: settings.rate,
            size: settings.size,
            wire_bytes: wire_len(settings.size),
            duration_s: settings.duration.as_secs_f64(),
            count_per_pair: settings.per_pair,
            seed: settings.seed,
            grace_ms: settings.grace.as_millis() as u64,
        },
        setup: SetupReport {
            seconds: (setup_seconds * 1000.0).round() / 1000.0,
            registrations,
            handshakes,
            refreshes: rig.sender.refresher.as_ref().map_or(0, Refresher::sent),
        },
        phases: Phases { direct, forwarded },
        added_latency_us: added,
    })
}

/// Registers and handshakes every pair, then wires sender and receiver.
fn relay_rig(
    settings: &Settings,
    relay: SocketAddr,
    relay_public: &lanrage_proto::x25519::PublicKey,
) -> Result<Rig> {
    let est = establish_reporting(settings, relay, relay_public)?;
    let direct_dests = est
        .b_sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    // The refresher sends from clones of the peers' own sockets, so each
    // refresh comes from the endpoint the relay has on file.
    let mut peers = Vec::with_capacity(est.registrations.len());
    for (i, reg) in est.registrations.into_iter().enumerate() {
        let socket = if i % 2 == 0 {
            &est.a_sockets[i / 2]
        } else {
            &est.b_sockets[i / 2]
        };
        peers.push((socket.try_clone()?, reg));
    }
    let refresher = Refresher::new(relay, peers, Instant::now());
    let (packets, opener) = match settings.mode {
        Mode::Sealed => (
            Packets::sealed(est.a_tunns, settings.size),
            Opener::Sealed(est.b_tunns),
        ),
        Mode::Prebuilt => (Packets::prebuilt(est.b_indices), Opener::PerPairClear),
    };
    Ok(Rig {
        sender: Sender {
            sockets: est.a_sockets,
            packets,
            refresher: Some(refresher),
            size: settings.size,
        },
        receiver: Receiver::new(est.b_sockets, opener)?,
        forwarded_dests: vec![relay; settings.pairs],
        direct_dests,
    })
}

/// [`setup::establish`] with a reporter thread saying what it waits for, and
/// the likely cause added to a failure after slow (retried) steps.
fn establish_reporting(
    settings: &Settings,
    relay: SocketAddr,
    relay_public: &lanrage_proto::x25519::PublicKey,
) -> Result<setup::Established> {
    let progress = SetupProgress::new(
        settings.pairs,
        // The peers' sockets are on 127.0.0.1 (`setup::bind_loopback`).
        Ipv4Addr::LOCALHOST.into(),
        setup::STEP_TIMEOUT,
        settings.setup_timeout,
        Instant::now(),
    );
    let result = std::thread::scope(|scope| {
        scope.spawn(|| progress.report_until_done());
        let result = setup::establish(
            relay,
            relay_public,
            settings.pairs,
            settings.seed,
            &progress,
        );
        progress.finish();
        result
    });
    result.map_err(|e| match progress.explain_failure() {
        Some(why) if !e.to_string().starts_with("setup gave up") => {
            e.context(format!("setup failed: {why}"))
        }
        _ => e,
    })
}

/// N sender sockets and one sink; no registration, no handshake.
fn forwarder_rig(settings: &Settings, forwarder: SocketAddr, sink_port: u16) -> Result<Rig> {
    let sink_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, sink_port));
    let sink = setup::bind_with_buffers(sink_addr).context("--sink-port")?;
    let sockets = (0..settings.pairs)
        .map(|_| setup::bind_loopback())
        .collect::<Result<Vec<_>>>()?;
    // The pair id doubles as the receiver index; a forwarder doesn't look.
    let indices = (0..settings.pairs as u32).collect();
    Ok(Rig {
        sender: Sender {
            sockets,
            packets: Packets::prebuilt(indices),
            refresher: None,
            size: settings.size,
        },
        receiver: Receiver::new(vec![sink], Opener::SinkClear)?,
        forwarded_dests: vec![forwarder; settings.pairs],
        direct_dests: vec![sink_addr; settings.pairs],
    })
}

/// One traffic phase: the sender in a scoped thread, the receiver here.
fn phase(
    settings: &Settings,
    rig: &mut Rig,
    phase: u32,
    dests: &[SocketAddr],
    base: Instant,
    label: &str,
) -> Result<PhaseReport> {
    let plan = Plan {
        phase,
        dests,
        rate: settings.rate,
        per_pair: settings.per_pair,
        time_limit: settings.send_time_limit(),
        base,
    };
    let progress = Progress::default();
    let mut acct = Accounting::new(settings.pairs, settings.seq_limit());
    let window = Window {
        phase,
        base,
        grace: settings.grace,
        hard_limit: settings.send_time_limit() + settings.grace + Duration::from_secs(1),
        progress_label: (settings.duration > Duration::from_secs(2)).then_some(label),
    };
    let Rig {
        sender, receiver, ..
    } = rig;
    let (sent, recv) = std::thread::scope(|scope| {
        let sending = scope.spawn(|| sender.run(&plan, &progress));
        let recv = receiver.run(&window, &mut acct, &progress);
        // If receiving failed, the sender still stops at its own time limit.
        let sent = sending.join();
        (sent, recv)
    });
    let sent = sent.map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    let recv = recv?;
    let totals = acct.totals(&sent.sent_per_pair);
    Ok(PhaseReport::new(
        settings,
        &sent,
        &totals,
        acct.latency_ns(),
        &recv,
    ))
}
