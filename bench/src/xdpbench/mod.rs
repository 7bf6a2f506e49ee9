//! `lanrage-xdpbench` (feature `xdp`): the userspace relay (epoll, io_uring)
//! against the XDP fast path (native, generic/skb) on one veth topology, in
//! one run, with the load generator's sender, receiver and accounting.
//!
//! One process builds the topology ([`lab`]) once and measures every
//! (run, workload, case) in turn, cases interleaved within a run so machine
//! noise hits all of them alike. Each measurement prints one JSON line on
//! stdout; `bench/xdp_compare.sh` turns them into the table.
//!
//! - **epoll / io_uring**: the real relay binary (`--relay-bin`) in the relay
//!   namespace with `workers: 1`, pinned to the forwarding CPU. Every pair
//!   registers and completes a real boringtun handshake through it, then A
//!   sends prebuilt transport packets (valid header, B's receiver index,
//!   stamp in clear) as in `lanrage-loadgen --mode prebuilt`.
//! - **xdp-native / xdp-skb**: no relay process. The LANrage XDP program is
//!   attached to the relay's `eth0` and the routes `(A ip, A port, index) → B`
//!   are installed by hand with `XdpFastPath::insert_route` (the relay's own
//!   XDP wiring is not merged yet), then the same sender and receiver run.
//!
//! Traffic stays inside the namespaces this process creates; they are
//! deleted when it exits (also on error or panic). Every wait is bounded.

mod lab;
mod peers;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use lanrage_ebpf::{Counter, RouteKey, RouteValue, XdpMode};
use lanrage_proto::x25519::PublicKey;
use lanrage_proto::PeerKey;
use lanrage_tests::netns::Netns;
use serde::Serialize;

use crate::loadgen::accounting::Accounting;
use crate::loadgen::cli::{Mode, Settings, Target};
use crate::loadgen::payload::{wire_len, PHASE_FORWARDED};
use crate::loadgen::receiver::{Opener, Receiver, Window};
use crate::loadgen::report::{Percentiles, PhaseReport};
use crate::loadgen::sender::{Packets, Plan, Progress, Refresher, Sender};
use crate::loadgen::setup::{bind_with_buffers, raise_fd_limit, relay_secret};

use lab::{Lab, RELAY_PORT};

#[derive(Debug, Parser)]
#[command(
    name = "lanrage-xdpbench",
    about = "Userspace relay (epoll, io_uring) vs XDP (native, skb) on one veth topology"
)]
pub struct Args {
    /// The relay binary for the userspace cases.
    #[arg(long, default_value = "target/release/lanrage-relay")]
    relay_bin: PathBuf,
    /// Cases, comma-separated: epoll, io_uring, xdp-native, xdp-skb.
    #[arg(long, default_value = "epoll,io_uring,xdp-native,xdp-skb")]
    cases: String,
    /// Workloads, comma-separated: bulk (1 pair, 1200-byte payloads, as fast
    /// as possible), gaming (1000 pairs x 64 pps, 100-byte payloads),
    /// gamingmax (1000 pairs, 100-byte payloads, as fast as possible),
    /// paced (bulk at --paced-rate pps).
    #[arg(long, default_value = "bulk,gaming,gamingmax")]
    workloads: String,
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Seconds of sending per measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Packets per second of the paced workload.
    #[arg(long, default_value_t = 100_000)]
    paced_rate: u64,
    /// CPU of the generator (sender and receiver threads, B's receive path).
    #[arg(long, default_value_t = 0)]
    gen_cpu: usize,
    /// CPU of the forwarding work (relay process; A's frames from the
    /// bridge on, via RPS).
    #[arg(long, default_value_t = 1)]
    fwd_cpu: usize,
    /// No pinning and no RPS steering: the kernel decides.
    #[arg(long)]
    no_pin: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Lines appended to the userspace relay's config.
    #[arg(long, default_value = "")]
    relay_extra_yaml: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Epoll,
    IoUring,
    XdpNative,
    XdpSkb,
}

impl Case {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "epoll" => Self::Epoll,
            "io_uring" | "uring" => Self::IoUring,
            "xdp-native" | "native" => Self::XdpNative,
            "xdp-skb" | "skb" | "generic" => Self::XdpSkb,
            other => bail!("unknown case {other:?}"),
        })
    }
    fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::IoUring => "io_uring",
            Self::XdpNative => "xdp-native",
            Self::XdpSkb => "xdp-skb",
        }
    }
}

#[derive(Debug, Clone)]
struct Workload {
    name: String,
    pairs: usize,
    /// Packets per second per pair; 0 = as fast as possible.
    rate: u64,
    size: usize,
}

impl Workload {
    fn parse(s: &str, paced_rate: u64) -> Result<Self> {
        let (pairs, rate, size) = match s {
            "bulk" => (1, 0, 1200),
            "gaming" => (1000, 64, 100),
            "gamingmax" => (1000, 0, 100),
            "paced" => (1, paced_rate, 1200),
            other => bail!("unknown workload {other:?}"),
        };
        Ok(Self {
            name: s.to_owned(),
            pairs,
            rate,
            size,
        })
    }
}

/// One measurement, one JSON line.
#[derive(Debug, Serialize)]
struct Row {
    workload: String,
    case: &'static str,
    run: u32,
    pairs: usize,
    rate_per_pair: u64,
    wire_bytes: usize,
    seconds: f64,
    offered_pps: f64,
    delivered_pps: f64,
    sent: u64,
    received: u64,
    loss_ratio: f64,
    reordered: u64,
    strays: u64,
    send_errors: u64,
    latency_us: Percentiles,
    /// Busy fraction of the forwarding CPU during the phase (all work on it,
    /// including softirq), and the softirq part of it.
    fwd_cpu_busy: f64,
    fwd_cpu_softirq: f64,
    gen_cpu_busy: f64,
    /// delivered pps / fwd_cpu_busy: packets per second of forwarding-CPU
    /// time (the capacity of one forwarding core if it scaled linearly).
    pps_per_fwd_core: f64,
    /// XDP cases: packets the program forwarded (`tx` + `tx_fib_fallback`),
    /// the fallback part, and everything it passed.
    xdp_tx: Option<u64>,
    xdp_tx_fib_fallback: Option<u64>,
    xdp_pass: Option<u64>,
    setup_seconds: f64,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    lanrage_tests::netns::lab_available().map_err(|why| anyhow::anyhow!(why))?;
    let cases = args
        .cases
        .split(',')
        .map(|s| Case::parse(s.trim()))
        .collect::<Result<Vec<_>>>()?;
    let workloads = args
        .workloads
        .split(',')
        .map(|s| Workload::parse(s.trim(), args.paced_rate))
        .collect::<Result<Vec<_>>>()?;
    if !(0.5..=120.0).contains(&args.duration) {
        bail!("--duration must be within 0.5..=120 s");
    }
    if cases
        .iter()
        .any(|c| matches!(c, Case::Epoll | Case::IoUring))
        && !args.relay_bin.exists()
    {
        bail!("relay binary {} not found", args.relay_bin.display());
    }
    let max_pairs = workloads.iter().map(|w| w.pairs).max().unwrap_or(1) as u64;
    let fds = raise_fd_limit()?;
    if fds < 4 * max_pairs + 64 {
        bail!("RLIMIT_NOFILE {fds} is too low for {max_pairs} pairs");
    }
    let steer = (!args.no_pin).then_some((args.gen_cpu, args.fwd_cpu));
    if let Some((gen, _)) = steer {
        // Before any thread exists: every thread of this process inherits it.
        lab::pin_current_thread(gen)?;
    }
    let lab = Lab::new(steer)?;
    let scratch = Scratch::new()?;
    eprintln!(
        "lab up: relay {} in {}, A in {}, B in {}; pinning {}",
        lab.relay().addr,
        lab.relay().ns.name(),
        lab.a().ns.name(),
        lab.b().ns.name(),
        match steer {
            Some((g, f)) => format!("generator CPU {g}, forwarding CPU {f}"),
            None => "off".into(),
        }
    );
    for run in 1..=args.runs {
        for wl in &workloads {
            for &case in &cases {
                eprintln!(
                    "run {run}/{}: {} through {}",
                    args.runs,
                    wl.name,
                    case.name()
                );
                match measure(args, &lab, &scratch, case, wl, run) {
                    Ok(row) => println!("{}", serde_json::to_string(&row)?),
                    Err(e) => eprintln!("FAILED {} {} run {run}: {e:#}", wl.name, case.name()),
                }
            }
        }
    }
    Ok(())
}

/// A private directory for relay configs, keys and logs; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lanrage-xdpbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The relay process; SIGTERM (then SIGKILL) on drop.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child, which we have not
        // reaped yet, so the pid can't have been reused.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(args: &Args, lab: &Lab, scratch: &Scratch, backend: &str) -> Result<RelayProcess> {
    let relay = lab.relay();
    let dir = &scratch.0;
    let key_file = dir.join("relay.key");
    std::fs::write(
        &key_file,
        format!(
            "{}\n",
            PeerKey(relay_secret(args.seed).to_bytes()).to_base64()
        ),
    )?;
    let config = dir.join(format!("relay-{backend}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: \"{}:{RELAY_PORT}\"\n\
             metrics_listen: null\n\
             private_key_file: \"{}\"\n\
             log: warn\n\
             handshake_rate_limit: {{ per_second: 1000000, burst: 1000000 }}\n\
             under_load_handshakes_per_second: 10000000\n\
             backend: {backend}\n\
             workers: 1\n\
             {}\n",
            relay.addr,
            key_file.display(),
            args.relay_extra_yaml
        ),
    )?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("relay.log"))?;
    let mut cmd = if args.no_pin {
        relay.ns.command(&args.relay_bin)?
    } else {
        let mut c = relay.ns.command("taskset")?;
        c.args(["-c", &args.fwd_cpu.to_string()])
            .arg(&args.relay_bin);
        c
    };
    let child = cmd
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the relay")?;
    let mut process = RelayProcess(child);
    // Ready when its socket is bound (at most 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = process.0.try_wait()? {
            let log = std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default();
            bail!("the relay exited with {status}: {log}");
        }
        let out = relay
            .ns
            .command("ss")?
            .args(["-Hlun", &format!("sport = :{RELAY_PORT}")])
            .output()?;
        if !out.stdout.is_empty() {
            return Ok(process);
        }
        if Instant::now() >= deadline {
            bail!("the relay did not bind {RELAY_PORT} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` UDP sockets on ephemeral ports of `addr`, inside `ns`.
fn bind_many(ns: &Netns, addr: Ipv4Addr, n: usize) -> Result<Vec<UdpSocket>> {
    ns.run(|| {
        (0..n)
            .map(|_| bind_with_buffers(SocketAddr::from((addr, 0))))
            .collect::<Result<Vec<_>>>()
    })?
}

fn v4(addr: SocketAddr) -> Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => bail!("unexpected IPv6 address {a}"),
    }
}

fn measure(
    args: &Args,
    lab: &Lab,
    scratch: &Scratch,
    case: Case,
    wl: &Workload,
    run: u32,
) -> Result<Row> {
    let relay_addr = SocketAddr::from((lab.relay().addr, RELAY_PORT));
    let setup_started = Instant::now();
    let a_sockets = bind_many(&lab.a().ns, lab.a().addr, wl.pairs)?;
    let b_sockets = bind_many(&lab.b().ns, lab.b().addr, wl.pairs)?;

    // Whatever must stay alive during the phase (relay process or XDP).
    let mut _relay = None;
    let mut xdp = None;
    let (indices, refresher) = match case {
        Case::Epoll | Case::IoUring => {
            let backend = if case == Case::Epoll {
                "epoll"
            } else {
                "io_uring"
            };
            _relay = Some(start_relay(args, lab, scratch, backend)?);
            let relay_public = PublicKey::from(&relay_secret(args.seed));
            let est =
                peers::establish(relay_addr, &relay_public, &a_sockets, &b_sockets, args.seed)?;
            let mut regs = Vec::with_capacity(est.registrations.len());
            for (i, reg) in est.registrations.into_iter().enumerate() {
                let socket = if i % 2 == 0 {
                    &a_sockets[i / 2]
                } else {
                    &b_sockets[i / 2]
                };
                regs.push((socket.try_clone()?, reg));
            }
            (
                est.b_indices,
                Some(Refresher::new(relay_addr, regs, Instant::now())),
            )
        }
        Case::XdpNative | Case::XdpSkb => {
            let mode = if case == Case::XdpNative {
                XdpMode::Native
            } else {
                XdpMode::Skb
            };
            let (mut fast, pass) = lab.attach_xdp(mode, (2 * wl.pairs + 16) as u32)?;
            // Any receiver index works: XDP matches (source, index) only.
            let indices: Vec<u32> = (0..wl.pairs as u32).map(|p| 0x0100_0000 | p).collect();
            for ((a, b), &index) in a_sockets.iter().zip(&b_sockets).zip(&indices) {
                fast.insert_route(
                    &RouteKey::new(v4(a.local_addr()?)?, index),
                    &RouteValue::new(v4(b.local_addr()?)?),
                )?;
            }
            xdp = Some((fast, pass));
            (indices, None)
        }
    };
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let settings = Settings {
        target: Target::Forwarder {
            addr: relay_addr,
            sink_port: 0,
        },
        preset: None,
        pairs: wl.pairs,
        rate: wl.rate,
        size: wl.size,
        duration: Duration::from_secs_f64(args.duration),
        per_pair: None,
        seed: args.seed,
        mode: Mode::Prebuilt,
        baseline: false,
        json: true,
        grace: Duration::from_millis(500),
    };
    let mut sender = Sender {
        sockets: a_sockets,
        packets: Packets::prebuilt(indices),
        refresher,
        size: wl.size,
    };
    let mut receiver = Receiver::new(b_sockets, Opener::PerPairClear)?;
    let xdp_before = match &xdp {
        Some((fast, _)) => Some(fast.counters()?),
        None => None,
    };
    let fwd_before = lab::cpu_times(args.fwd_cpu)?;
    let gen_before = lab::cpu_times(args.gen_cpu)?;
    let report = phase(&settings, &mut sender, &mut receiver, relay_addr)?;
    let (fwd_busy, fwd_soft) = lab::busy_between(fwd_before, lab::cpu_times(args.fwd_cpu)?);
    let (gen_busy, _) = lab::busy_between(gen_before, lab::cpu_times(args.gen_cpu)?);
    let (mut xdp_tx, mut xdp_fallback, mut xdp_pass) = (None, None, None);
    if let (Some((fast, _)), Some(before)) = (&xdp, xdp_before) {
        let after = fast.counters()?;
        let delta = |c: Counter| after.get(c).wrapping_sub(before.get(c));
        let tx = delta(Counter::Tx) + delta(Counter::TxFibFallback);
        let all: u64 = Counter::ALL.iter().map(|&c| delta(c)).sum();
        xdp_tx = Some(tx);
        xdp_fallback = Some(delta(Counter::TxFibFallback));
        xdp_pass = Some(all - tx);
    }
    drop(xdp);

    Ok(Row {
        workload: wl.name.clone(),
        case: case.name(),
        run,
        pairs: wl.pairs,
        rate_per_pair: wl.rate,
        wire_bytes: wire_len(wl.size),
        seconds: report.seconds,
        offered_pps: report.offered_pps,
        delivered_pps: report.delivered_pps,
        sent: report.sent,
        received: report.received,
        loss_ratio: report.loss_ratio,
        reordered: report.reordered,
        strays: report.strays,
        send_errors: report.send_errors,
        latency_us: report.latency_us,
        fwd_cpu_busy: round3(fwd_busy),
        fwd_cpu_softirq: round3(fwd_soft),
        gen_cpu_busy: round3(gen_busy),
        pps_per_fwd_core: (report.delivered_pps / fwd_busy.max(1e-3)).round(),
        xdp_tx,
        xdp_tx_fib_fallback: xdp_fallback,
        xdp_pass,
        setup_seconds: round3(setup_seconds),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One traffic phase, as `loadgen::phase`: the sender in a scoped thread,
/// the receiver on this one.
fn phase(
    settings: &Settings,
    sender: &mut Sender,
    receiver: &mut Receiver,
    dest: SocketAddr,
) -> Result<PhaseReport> {
    let dests = vec![dest; settings.pairs];
    let base = Instant::now();
    let plan = Plan {
        phase: PHASE_FORWARDED,
        dests: &dests,
        rate: settings.rate,
        per_pair: settings.per_pair,
        time_limit: settings.send_time_limit(),
        base,
    };
    let progress = Progress::default();
    let mut acct = Accounting::new(settings.pairs, settings.seq_limit());
    let window = Window {
        phase: PHASE_FORWARDED,
        base,
        grace: settings.grace,
        hard_limit: settings.send_time_limit() + settings.grace + Duration::from_secs(1),
        progress_label: None,
    };
    let (sent, recv) = std::thread::scope(|scope| {
        let sending = scope.spawn(|| sender.run(&plan, &progress));
        let recv = receiver.run(&window, &mut acct, &progress);
        (sending.join(), recv)
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
