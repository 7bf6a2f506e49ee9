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
use crate::loadgen::payload::{wire_len, PHASE_DIRECT, PHASE_FORWARDED};
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
    /// paced (bulk at --paced-rate pps), bulkcap and gamingcap (the highest
    /// rate of bulk / the gaming mix carried with at most 0.1 % loss),
    /// bulksink and gamingsink (the same, counted and dropped at B's ingress
    /// by nftables instead of received on sockets: no latency, but the
    /// generator's CPU only sends), bulkflood (one flood phase of bulk into
    /// the sink, for profiling).
    #[arg(long, default_value = "bulk,gaming,gamingmax,paced,bulkcap")]
    workloads: String,
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Seconds of sending per measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds per trial of a capacity search (7 trials).
    #[arg(long, default_value_t = 2.0)]
    trial_secs: f64,
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
    /// Turn off bridge netfilter in the switch namespace (see
    /// `lab::Lab::new`).
    #[arg(long)]
    bridge_nf_off: bool,
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
    /// Search the highest rate with at most 0.1 % loss instead of one phase.
    search: bool,
    /// Count and drop at B's ingress (nftables) instead of receiving on B's
    /// sockets: no latency, but the generator CPU only sends.
    sink: bool,
}

impl Workload {
    fn parse(s: &str, paced_rate: u64) -> Result<Self> {
        let (pairs, rate, size, search, sink) = match s {
            "bulk" => (1, 0, 1200, false, false),
            "gaming" => (1000, 64, 100, false, false),
            "gamingmax" => (1000, 0, 100, false, false),
            "paced" => (1, paced_rate, 1200, false, false),
            "bulkcap" => (1, 0, 1200, true, false),
            "gamingcap" => (1000, 0, 100, true, false),
            "bulksink" => (1, 0, 1200, true, true),
            "gamingsink" => (1000, 0, 100, true, true),
            // One flood phase into the sink (for profiling the forwarding CPU).
            "bulkflood" => (1, 0, 1200, false, true),
            other => bail!("unknown workload {other:?}"),
        };
        Ok(Self {
            name: s.to_owned(),
            pairs,
            rate,
            size,
            search,
            sink,
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
    /// Capacity workloads: the highest rate carried with at most 0.1 % loss
    /// (the row's other fields are that trial's), and every trial.
    capacity_pps: Option<f64>,
    trials: Option<Vec<TrialSummary>>,
    /// Drop counters during the (chosen) trial.
    drops: lab::Drops,
    /// XDP cases: packets the program forwarded (`tx` + `tx_fib_fallback`),
    /// the fallback part, and everything it passed.
    xdp_tx: Option<u64>,
    xdp_tx_fib_fallback: Option<u64>,
    xdp_pass: Option<u64>,
    setup_seconds: f64,
}

pub fn main() -> ExitCode {
    crate::exit_code(run(&Args::parse()))
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
    // SIGINT/SIGTERM stop the run between measurements (each is bounded), so
    // the namespaces are deleted on the way out instead of left behind.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop))?;
    }
    let lab = Lab::new(steer, args.bridge_nf_off)?;
    let scratch = Scratch::new()?;
    eprintln!(
        "lab up: relay {} in {}, A in {}, B in {}; bridge netfilter {}; pinning {}",
        lab.relay().addr,
        lab.relay().ns.name(),
        lab.a().ns.name(),
        lab.b().ns.name(),
        if args.bridge_nf_off {
            "off"
        } else {
            "on (default)"
        },
        match steer {
            Some((g, f)) => format!("generator CPU {g}, forwarding CPU {f}"),
            None => "off".into(),
        }
    );
    for run in 1..=args.runs {
        for wl in &workloads {
            for &case in &cases {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    bail!("interrupted; namespaces removed");
                }
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
    // After the handshakes: the sink drops transport packets, and A's
    // confirming keepalive is one.
    let sink = if wl.sink {
        Some(lab::Sink::install(lab)?)
    } else {
        None
    };
    let mut rig = TrialRig {
        args,
        lab,
        sink: sink.as_ref(),
        wl,
        dest: relay_addr,
        sender: &mut sender,
        receiver: &mut receiver,
        trials: 0,
    };
    let (best, capacity, trials) = if wl.search {
        let (best, trials) = rig.capacity()?;
        (best.clone(), Some(best.report.delivered_pps), Some(trials))
    } else {
        let secs = args.duration;
        (rig.trial(wl.rate, secs)?, None, None)
    };
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
    drop(sink);
    drop(xdp);

    let report = &best.report;
    Ok(Row {
        workload: wl.name.clone(),
        case: case.name(),
        run,
        pairs: wl.pairs,
        rate_per_pair: best.rate_per_pair,
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
        fwd_cpu_busy: round3(best.fwd_busy),
        fwd_cpu_softirq: round3(best.fwd_softirq),
        gen_cpu_busy: round3(best.gen_busy),
        pps_per_fwd_core: (report.delivered_pps / best.fwd_busy.max(1e-3)).round(),
        capacity_pps: capacity,
        trials,
        drops: best.drops,
        xdp_tx,
        xdp_tx_fib_fallback: xdp_fallback,
        xdp_pass,
        setup_seconds: round3(setup_seconds),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The most loss a capacity trial may show and still pass.
const MAX_LOSS: f64 = 0.001;
/// Trials of the capacity search after the first (flood) one.
const SEARCH_STEPS: u32 = 6;

/// One traffic phase's outcome, with the CPU use during its sending window.
#[derive(Debug, Clone)]
struct Trial {
    rate_per_pair: u64,
    report: PhaseReport,
    fwd_busy: f64,
    fwd_softirq: f64,
    gen_busy: f64,
    drops: lab::Drops,
}

/// A capacity-search trial in the JSON: the rate asked for (all pairs) and
/// what happened.
#[derive(Debug, Serialize)]
struct TrialSummary {
    target_pps: u64,
    offered_pps: f64,
    delivered_pps: f64,
    loss_ratio: f64,
    pass: bool,
    drops: lab::Drops,
}

/// Sender and receiver of one (case, workload, run), reused for several
/// phases. Consecutive phases alternate between two stamp tags, so the
/// receiver counts late packets of the previous phase as strays.
struct TrialRig<'a> {
    args: &'a Args,
    lab: &'a Lab,
    sink: Option<&'a lab::Sink<'a>>,
    wl: &'a Workload,
    dest: SocketAddr,
    sender: &'a mut Sender,
    receiver: &'a mut Receiver,
    trials: u32,
}

impl TrialRig<'_> {
    fn trial(&mut self, rate_per_pair: u64, secs: f64) -> Result<Trial> {
        let settings = Settings {
            target: Target::Forwarder {
                addr: self.dest,
                sink_port: 0,
            },
            preset: None,
            pairs: self.wl.pairs,
            rate: rate_per_pair,
            size: self.wl.size,
            duration: Duration::from_secs_f64(secs),
            per_pair: None,
            seed: self.args.seed,
            mode: Mode::Prebuilt,
            baseline: false,
            json: true,
            grace: Duration::from_millis(500),
            // Unused: the lab set its peers up already (`peers::establish`).
            setup_timeout: Duration::from_secs(30),
        };
        let tag = if self.trials.is_multiple_of(2) {
            PHASE_FORWARDED
        } else {
            PHASE_DIRECT
        };
        self.trials += 1;
        let (fwd, gen) = (self.args.fwd_cpu, self.args.gen_cpu);
        let dests = vec![self.dest; settings.pairs];
        let base = Instant::now();
        let plan = Plan {
            phase: tag,
            dests: &dests,
            rate: settings.rate,
            per_pair: settings.per_pair,
            time_limit: settings.send_time_limit(),
            base,
        };
        let progress = Progress::default();
        let mut acct = Accounting::new(settings.pairs, settings.seq_limit());
        let window = Window {
            phase: tag,
            base,
            grace: settings.grace,
            hard_limit: settings.send_time_limit() + settings.grace + Duration::from_secs(1),
            progress_label: None,
        };
        let drops_before = lab::Drops::read(self.lab, gen, fwd)?;
        if let Some(sink) = self.sink {
            return self.sink_trial(sink, &settings, &plan, &progress, drops_before);
        }
        let sender = &mut *self.sender;
        let receiver = &mut *self.receiver;
        // CPU use is read around the sender's window only: the receiver's
        // grace period afterwards would dilute it.
        let (sent, recv) = std::thread::scope(|scope| {
            let sending = scope.spawn(|| -> Result<_> {
                let before = (lab::cpu_times(fwd)?, lab::cpu_times(gen)?);
                let sent = sender.run(&plan, &progress);
                let after = (lab::cpu_times(fwd)?, lab::cpu_times(gen)?);
                Ok((sent, before, after))
            });
            let recv = receiver.run(&window, &mut acct, &progress);
            (sending.join(), recv)
        });
        let (sent, before, after) =
            sent.map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
        let recv = recv?;
        let totals = acct.totals(&sent.sent_per_pair);
        let report = PhaseReport::new(&settings, &sent, &totals, acct.latency_ns(), &recv);
        let (fwd_busy, fwd_softirq) = lab::busy_between(before.0, after.0);
        let (gen_busy, _) = lab::busy_between(before.1, after.1);
        let drops = lab::Drops::read(self.lab, gen, fwd)?.since(drops_before);
        Ok(Trial {
            drops,
            rate_per_pair,
            report,
            fwd_busy,
            fwd_softirq,
            gen_busy,
        })
    }

    /// A trial whose packets are counted by the sink: the sender alone, then
    /// a short wait for queues to drain.
    fn sink_trial(
        &mut self,
        sink: &lab::Sink<'_>,
        settings: &Settings,
        plan: &Plan<'_>,
        progress: &Progress,
        drops_before: lab::Drops,
    ) -> Result<Trial> {
        let (fwd, gen) = (self.args.fwd_cpu, self.args.gen_cpu);
        let counted_before = sink.count()?;
        let before = (lab::cpu_times(fwd)?, lab::cpu_times(gen)?);
        let sent = self.sender.run(plan, progress);
        let after = (lab::cpu_times(fwd)?, lab::cpu_times(gen)?);
        std::thread::sleep(Duration::from_millis(300));
        let now = sink.count()?;
        let counted = lab::Sink::datagrams(
            (now.0 - counted_before.0, now.1 - counted_before.1),
            wire_len(settings.size),
        );
        let drops = lab::Drops::read(self.lab, gen, fwd)?.since(drops_before);
        let total: u64 = sent.sent_per_pair.iter().sum();
        let secs = sent.elapsed.as_secs_f64().max(1e-9);
        let received = counted.min(total);
        let mbit = |bytes: usize| received as f64 * bytes as f64 * 8.0 / secs / 1e6;
        let report = PhaseReport {
            seconds: round3(secs),
            offered_pps: (total as f64 / secs).round(),
            delivered_pps: (received as f64 / secs).round(),
            mbit_s: mbit(wire_len(settings.size)),
            goodput_mbit_s: mbit(settings.size),
            sent: total,
            received,
            lost: total - received,
            loss_ratio: if total == 0 {
                0.0
            } else {
                (total - received) as f64 / total as f64
            },
            reordered: 0,
            duplicates: 0,
            strays: counted.saturating_sub(total),
            send_errors: sent.send_errors,
            undecryptable: 0,
            latency_us: Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            },
        };
        let (fwd_busy, fwd_softirq) = lab::busy_between(before.0, after.0);
        let (gen_busy, _) = lab::busy_between(before.1, after.1);
        Ok(Trial {
            drops,
            rate_per_pair: settings.rate,
            report,
            fwd_busy,
            fwd_softirq,
            gen_busy,
        })
    }

    /// The highest rate carried with at most [`MAX_LOSS`] (RFC 2544-style):
    /// a flood trial first (if it passes, the generator is the limit), then
    /// a bisection between 0 and what the flood offered. Returns the best
    /// passing trial (the lowest one tried if none passed) and all trials.
    fn capacity(&mut self) -> Result<(Trial, Vec<TrialSummary>)> {
        let secs = self.args.trial_secs;
        let pairs = self.wl.pairs as u64;
        let mut summaries = Vec::new();
        let passes = |t: &Trial, target: u64| {
            t.report.loss_ratio <= MAX_LOSS
                && (target == 0 || t.report.offered_pps >= 0.97 * target as f64)
        };
        let flood = self.trial(0, secs)?;
        let pass = passes(&flood, 0);
        summaries.push(summary(&flood, 0, pass));
        if pass {
            return Ok((flood, summaries));
        }
        let (mut lo, mut hi) = (0u64, flood.report.offered_pps as u64);
        let mut best: Option<Trial> = None;
        let mut lowest = flood;
        for _ in 0..SEARCH_STEPS {
            let target = ((lo + hi) / 2).max(pairs);
            let rate = (target / pairs).max(1);
            let t = self.trial(rate, secs)?;
            let pass = passes(&t, rate * pairs);
            summaries.push(summary(&t, rate * pairs, pass));
            if pass {
                lo = rate * pairs;
                best = Some(t);
            } else {
                hi = rate * pairs;
                if t.report.offered_pps < lowest.report.offered_pps {
                    lowest = t;
                }
            }
        }
        Ok((best.unwrap_or(lowest), summaries))
    }
}

fn summary(t: &Trial, target_pps: u64, pass: bool) -> TrialSummary {
    TrialSummary {
        target_pps,
        offered_pps: t.report.offered_pps.round(),
        delivered_pps: t.report.delivered_pps.round(),
        loss_ratio: t.report.loss_ratio,
        pass,
        drops: t.drops,
    }
}
