//! The XDP fast path wired into the relay (feature `xdp`, `docs/xdp.md`).
//!
//! [`start`] loads the program from `lanrage-ebpf`, points it at the relay's
//! port and attaches it; [`XdpMirror`] is the [`RouteCopy`] that applies the
//! router's route commands to the kernel's route map, reports the kernel's
//! last-use times back to the router, and renders the kernel counters into
//! `/metrics`.
//!
//! This module decides nothing about routing: the router changes routes and
//! queues commands, the data-plane workers hand them here after the router's
//! lock is released. A failed map operation is counted
//! (`lanrage_relay_xdp_map_errors_total`) and logged at most every
//! [`WARN_INTERVAL`]; the route keeps working in userspace, only slower.

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lanrage_ebpf::{
    monotonic_now_ns, Counter, PinnedAttach, RouteKey as MapKey, RouteValue, XdpFastPath,
    XdpLoadConfig, XdpMode,
};

use lanrage_relay_core::metrics::MetricsSource;
use lanrage_relay_core::route_table::RouteKey;
use lanrage_relay_core::router::Router;
use lanrage_relay_core::Command;

use crate::config::{xdp_relay_addr, Limits, XdpConfig, XdpModeChoice, XDP_MAX_ROUTES_LIMIT};
use crate::worker::RouteCopy;

const _: () = assert!(XDP_MAX_ROUTES_LIMIT == lanrage_ebpf::MAX_ROUTES_LIMIT);

/// At most one warning per this interval about failed map operations.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How the program ended up attached, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub interface: String,
    pub mode: XdpModeChoice,
    /// `Some` with a pin directory: the maps and link live there.
    pub pin_path: Option<PathBuf>,
    /// With a pin directory: whether an earlier run's link was reused.
    pub pinned: Option<PinnedAttach>,
    pub max_routes: u32,
    /// Whether `bpf_fib_lookup` can resolve MACs on this interface
    /// (`net.ipv4.conf.<interface>.forwarding`); otherwise every forward
    /// swaps the MACs (`tx_fib_fallback`).
    pub fib_lookup: bool,
}

/// Loads the XDP program for a relay bound to `listen` and attaches it as
/// `config` asks. Any failure is an error: a relay asked for XDP doesn't
/// start without it.
pub fn start(
    config: &XdpConfig,
    limits: &Limits,
    listen: SocketAddr,
) -> anyhow::Result<(Arc<XdpMirror>, Attached)> {
    let relay = xdp_relay_addr(listen).with_context(|| {
        format!("xdp: the XDP program handles IPv4 only, but the relay listens on {listen}")
    })?;
    let max_routes = config.max_routes(limits);
    if let Some(dir) = &config.pin_path {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "xdp.pin_path: cannot create {} (it must be on a bpffs, e.g. under /sys/fs/bpf)",
                dir.display()
            )
        })?;
    }
    let mut fast_path = XdpFastPath::load(XdpLoadConfig {
        max_routes,
        relay,
        pin_path: config.pin_path.clone(),
    })
    .context("xdp: cannot load the XDP program")?;
    let mode = match config.mode {
        XdpModeChoice::Native => XdpMode::Native,
        XdpModeChoice::Skb => XdpMode::Skb,
    };
    let pinned = match &config.pin_path {
        Some(dir) => Some(
            fast_path
                .attach_pinned(&config.interface, mode, dir)
                .with_context(|| format!("xdp: cannot attach to {}", config.interface))?,
        ),
        None => {
            fast_path
                .attach(&config.interface, mode)
                .with_context(|| format!("xdp: cannot attach to {}", config.interface))?;
            None
        }
    };
    let fib_lookup = std::fs::read_to_string(format!(
        "/proc/sys/net/ipv4/conf/{}/forwarding",
        config.interface
    ))
    .is_ok_and(|v| v.trim() == "1");
    let attached = Attached {
        interface: config.interface.clone(),
        mode: config.mode,
        pin_path: config.pin_path.clone(),
        pinned,
        max_routes,
        fib_lookup,
    };
    Ok((Arc::new(XdpMirror::new(fast_path)), attached))
}

/// Operations on the route map, each with a failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum MapOp {
    Insert,
    Remove,
    Sweep,
    Counters,
}

impl MapOp {
    pub const ALL: [MapOp; 4] = [MapOp::Insert, MapOp::Remove, MapOp::Sweep, MapOp::Counters];

    pub fn as_str(self) -> &'static str {
        match self {
            MapOp::Insert => "insert",
            MapOp::Remove => "remove",
            MapOp::Sweep => "sweep",
            MapOp::Counters => "counters",
        }
    }
}

/// The loaded, attached fast path, as the copy of the route table that
/// forwards in the kernel.
pub struct XdpMirror {
    fast_path: Mutex<XdpFastPath>,
    /// `CLOCK_MONOTONIC` at start: routes left by an earlier run that never
    /// forwarded count as used now, so they get one full timeout.
    started_ns: u64,
    map_errors: [AtomicU64; MapOp::ALL.len()],
    skipped_ipv6: AtomicU64,
    stale_removed: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for XdpMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpMirror").finish_non_exhaustive()
    }
}

impl XdpMirror {
    /// Mirrors into an already loaded (and normally attached) fast path.
    pub fn new(fast_path: XdpFastPath) -> Self {
        Self {
            fast_path: Mutex::new(fast_path),
            started_ns: monotonic_now_ns(),
            map_errors: Default::default(),
            skipped_ipv6: AtomicU64::new(0),
            stale_removed: AtomicU64::new(0),
            last_warn: Mutex::new(None),
        }
    }

    /// The fast path, for tests and diagnostics.
    pub fn fast_path(&self) -> std::sync::MutexGuard<'_, XdpFastPath> {
        self.fast_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Failed map operations of one kind so far.
    pub fn map_errors(&self, op: MapOp) -> u64 {
        self.map_errors[op as usize].load(Ordering::Relaxed)
    }

    /// Routes not mirrored because an endpoint was IPv6.
    pub fn skipped_ipv6(&self) -> u64 {
        self.skipped_ipv6.load(Ordering::Relaxed)
    }

    /// Kernel-only routes removed by the sweep.
    pub fn stale_removed(&self) -> u64 {
        self.stale_removed.load(Ordering::Relaxed)
    }

    fn failed(&self, op: MapOp, error: &dyn std::error::Error) {
        let total = self.map_errors[op as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self
            .last_warn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
            return;
        }
        *last = Some(now);
        tracing::warn!(
            op = op.as_str(),
            total,
            error = %chain(error),
            "XDP route map operation failed; the route still works in userspace \
             (lanrage_relay_xdp_map_errors_total; at most one warning per 10 s)"
        );
    }
}

/// An error and its causes, joined by `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The map's key for a route, if the route is IPv4 (v4-mapped counts).
fn map_key(key: &RouteKey) -> Option<MapKey> {
    Some(MapKey::new(ipv4(key.src)?, key.index))
}

fn ipv4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(v4) => Some(v4),
        SocketAddr::V6(v6) => Some(SocketAddrV4::new(v6.ip().to_ipv4_mapped()?, v6.port())),
    }
}

impl XdpMirror {
    fn install(&self, fast_path: &mut XdpFastPath, key: &RouteKey, dst: SocketAddr) {
        let (Some(map_key), Some(dst)) = (map_key(key), ipv4(dst)) else {
            self.skipped_ipv6.fetch_add(1, Ordering::Relaxed);
            // A route that roamed to IPv6 must not keep its old IPv4 target.
            self.remove(fast_path, key);
            return;
        };
        if let Err(e) = fast_path.insert_route(&map_key, &RouteValue::new(dst)) {
            self.failed(MapOp::Insert, &e);
        }
    }

    fn remove(&self, fast_path: &mut XdpFastPath, key: &RouteKey) {
        let Some(map_key) = map_key(key) else { return };
        if let Err(e) = fast_path.remove_route(&map_key) {
            self.failed(MapOp::Remove, &e);
        }
    }
}

impl RouteCopy for XdpMirror {
    fn apply(&self, commands: &[Command]) {
        let mut fast_path = self.fast_path();
        for command in commands {
            match command {
                Command::InstallRoute { key, dst } => self.install(&mut fast_path, key, *dst),
                Command::RemoveRoute { key } => self.remove(&mut fast_path, key),
            }
        }
    }

    fn reconcile(&self, router: &Router, now: Instant, idle_timeout: Duration) {
        let limit = u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut fast_path = self.fast_path();
        let routes = match fast_path.routes() {
            Ok(routes) => routes,
            Err(e) => {
                drop(fast_path);
                self.failed(MapOp::Sweep, &e);
                return;
            }
        };
        let kernel_now = monotonic_now_ns();
        let mut errors = Vec::new();
        for (map_key, value) in routes {
            let v4 = map_key.src();
            let key = RouteKey {
                src: SocketAddr::V4(v4),
                index: map_key.receiver_index(),
            };
            // The table may hold a v4 peer as a v4-mapped address (dual-stack socket).
            let mapped = RouteKey {
                src: SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
                index: key.index,
            };
            let idle = kernel_now.saturating_sub(value.last_seen_ns.max(self.started_ns));
            let used = value.last_seen_ns != 0;
            let at = now.checked_sub(Duration::from_nanos(idle)).unwrap_or(now);
            // A route this run knows: tell the router when the kernel last used it.
            let known = if used {
                router.note_route_used(&key, at) || router.note_route_used(&mapped, at)
            } else {
                router.has_route(&key) || router.has_route(&mapped)
            };
            // One it doesn't (left by an earlier run, or already removed and
            // its command still on the way): removed once idle past the timeout.
            if known || idle < limit {
                continue;
            }
            match fast_path.remove_route(&map_key) {
                Ok(true) => {
                    self.stale_removed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        drop(fast_path);
        for e in errors {
            self.failed(MapOp::Sweep, &e);
        }
    }
}

impl MetricsSource for XdpMirror {
    fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_xdp_attached 1: the XDP fast path is loaded and attached."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_xdp_attached gauge");
        let _ = writeln!(out, "lanrage_relay_xdp_attached 1");
        let counters = self.fast_path().counters();
        match counters {
            Ok(counters) => {
                let _ = writeln!(
                    out,
                    "# HELP lanrage_relay_xdp_packets_total Packets seen by the XDP program, by \
                     verdict and reason (tx*: forwarded in the kernel; pass_*: handed on to the \
                     kernel stack and the userspace relay)."
                );
                let _ = writeln!(out, "# TYPE lanrage_relay_xdp_packets_total counter");
                for counter in Counter::ALL {
                    let _ = writeln!(
                        out,
                        "lanrage_relay_xdp_packets_total{{reason=\"{}\"}} {}",
                        counter.name(),
                        counters.get(counter)
                    );
                }
            }
            Err(e) => self.failed(MapOp::Counters, &e),
        }
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_xdp_map_errors_total Failed operations on the XDP maps, by \
             operation (a route that failed to mirror still works in userspace)."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_xdp_map_errors_total counter");
        for op in MapOp::ALL {
            let _ = writeln!(
                out,
                "lanrage_relay_xdp_map_errors_total{{op=\"{}\"}} {}",
                op.as_str(),
                self.map_errors(op)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_xdp_routes_skipped_total Route installs not mirrored into XDP, \
             by reason (ipv6: an endpoint is IPv6, which the program doesn't handle)."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_xdp_routes_skipped_total counter");
        let _ = writeln!(
            out,
            "lanrage_relay_xdp_routes_skipped_total{{reason=\"ipv6\"}} {}",
            self.skipped_ipv6()
        );
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_xdp_stale_routes_removed_total Kernel routes unknown to this \
             run (left by an earlier one) removed after idling past the route timeout."
        );
        let _ = writeln!(
            out,
            "# TYPE lanrage_relay_xdp_stale_routes_removed_total counter"
        );
        let _ = writeln!(
            out,
            "lanrage_relay_xdp_stale_routes_removed_total {}",
            self.stale_removed()
        );
    }
}
