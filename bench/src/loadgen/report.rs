//! The run's results: one JSON object (`--json`) or a readable table.
//!
//! Rates are over the phase's sending time: `offered_pps = sent / t`,
//! `delivered_pps = received / t`, `mbit_s` = delivered datagram bytes (the
//! outer UDP payload the relay forwards) × 8 / t, and `goodput_mbit_s` the
//! same for the measured `size` bytes only. Latencies are one-way, in µs.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::accounting::Totals;
use super::cli::{Mode, Preset, Settings};
use super::payload::wire_len;
use super::receiver::RecvCounters;
use super::sender::SendReport;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: ConfigEcho,
    pub setup: SetupReport,
    pub phases: Phases,
    /// Forwarded minus direct, per percentile; absent without a baseline.
    pub added_latency_us: Option<Percentiles>,
}

/// The settings the numbers were measured with.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigEcho {
    pub target: String,
    pub target_addr: Option<String>,
    pub preset: Option<Preset>,
    pub mode: Mode,
    pub pairs: usize,
    pub rate_per_pair: u64,
    pub size: usize,
    pub wire_bytes: usize,
    pub duration_s: f64,
    pub count_per_pair: Option<u64>,
    pub seed: u64,
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub seconds: f64,
    /// Registrations and WireGuard handshakes completed (0 for a forwarder).
    pub registrations: u64,
    pub handshakes: u64,
    /// Registration refreshes sent during the traffic phases.
    pub refreshes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    /// A sends straight to B's socket on loopback.
    pub direct: Option<PhaseReport>,
    /// Through the relay (or the forwarder).
    pub forwarded: PhaseReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub seconds: f64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub mbit_s: f64,
    pub goodput_mbit_s: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Datagrams without a stamp of this phase (late ones from before, garbage).
    pub strays: u64,
    pub send_errors: u64,
    pub undecryptable: u64,
    pub latency_us: Percentiles,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in nanoseconds; all zero if it is empty.
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        let us = |ns: u64| round3(ns as f64 / 1000.0);
        Self {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    pub fn minus(&self, other: &Self) -> Self {
        Self {
            p50: round3(self.p50 - other.p50),
            p90: round3(self.p90 - other.p90),
            p99: round3(self.p99 - other.p99),
            p999: round3(self.p999 - other.p999),
            max: round3(self.max - other.max),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl PhaseReport {
    pub fn new(
        settings: &Settings,
        sent: &SendReport,
        totals: &Totals,
        latency_ns: &Histogram<u64>,
        recv: &RecvCounters,
    ) -> Self {
        // A zero-length phase can't happen (the CLI refuses --duration 0),
        // but a rate must never divide by zero.
        let secs = sent.elapsed.as_secs_f64().max(1e-9);
        let bits = |bytes: usize| totals.received as f64 * bytes as f64 * 8.0 / secs / 1e6;
        Self {
            seconds: round3(secs),
            offered_pps: (totals.sent as f64 / secs).round(),
            delivered_pps: (totals.received as f64 / secs).round(),
            mbit_s: round3(bits(wire_len(settings.size))),
            goodput_mbit_s: round3(bits(settings.size)),
            sent: totals.sent,
            received: totals.received,
            lost: totals.lost,
            loss_ratio: if totals.sent == 0 {
                0.0
            } else {
                totals.lost as f64 / totals.sent as f64
            },
            reordered: totals.reordered,
            duplicates: totals.duplicates,
            strays: totals.strays,
            send_errors: sent.send_errors + sent.seal_errors,
            undecryptable: recv.undecryptable,
            latency_us: Percentiles::from_ns(latency_ns),
        }
    }
}

impl Report {
    /// The human-readable summary printed without `--json`.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "lanrage-loadgen: target {}{}, mode {:?}, {} pairs × {} pps ({}), {} B payload ({} B datagrams)",
            c.target,
            c.target_addr
                .as_deref()
                .map(|a| format!(" {a}"))
                .unwrap_or_default(),
            c.mode,
            c.pairs,
            c.rate_per_pair,
            if c.rate_per_pair == 0 { "max" } else { "paced" },
            c.size,
            c.wire_bytes,
        );
        let _ = writeln!(
            out,
            "setup: {:.2} s ({} registrations, {} handshakes)\n",
            self.setup.seconds, self.setup.registrations, self.setup.handshakes
        );
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>10} {:>9} {:>10} {:>8} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "phase",
            "sent",
            "received",
            "loss %",
            "deliv pps",
            "Mbit/s",
            "reord",
            "dup",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs"
        );
        let mut row = |name: &str, p: &PhaseReport| {
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>10} {:>9.4} {:>10.0} {:>8.1} {:>7} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                name,
                p.sent,
                p.received,
                p.loss_ratio * 100.0,
                p.delivered_pps,
                p.mbit_s,
                p.reordered,
                p.duplicates,
                p.latency_us.p50,
                p.latency_us.p90,
                p.latency_us.p99,
                p.latency_us.p999,
                p.latency_us.max,
            );
        };
        if let Some(direct) = &self.phases.direct {
            row("direct", direct);
        }
        row(&self.config.target, &self.phases.forwarded);
        if let Some(a) = &self.added_latency_us {
            let _ = writeln!(
                out,
                "\nadded latency (forwarded − direct): p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
                a.p50, a.p90, a.p99, a.p999
            );
        }
        out
    }
}
