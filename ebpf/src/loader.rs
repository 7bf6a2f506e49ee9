//! The aya loader: sizes the maps, loads the program, fills the route map and
//! reads the counters. Attaching is separate ([`XdpFastPath::attach`]) so the
//! program can be exercised with `BPF_PROG_TEST_RUN` ([`XdpFastPath::test_run`])
//! without touching any interface.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::PathBuf;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpFlags};
use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::layout::{Config, Counter, RouteKey, RouteValue};

/// The program object with private maps.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lanrage_xdp.o"));
/// The same program with its maps pinned by name under `pin_path`.
static OBJECT_PINNED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lanrage_xdp_pinned.o"));

const PROGRAM: &str = "lanrage_xdp";
const MAP_ROUTES: &str = "lrg_routes";
const MAP_COUNTERS: &str = "lrg_counters";
const MAP_CONFIG: &str = "lrg_config";

/// The largest route map [`XdpLoadConfig::max_routes`] may ask for. The hash
/// map is preallocated (about 100 bytes an entry), so this caps it near 100 MiB.
pub const MAX_ROUTES_LIMIT: u32 = 1 << 20;

/// What [`XdpFastPath::load`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpLoadConfig {
    /// Route map capacity, 1..=[`MAX_ROUTES_LIMIT`]. Inserts beyond it fail.
    pub max_routes: u32,
    /// The relay's UDP endpoint. The port must not be 0. An unspecified
    /// address (`0.0.0.0`) matches any destination address and replies from
    /// the address each packet was sent to.
    pub relay: SocketAddrV4,
    /// Pin the maps under this directory (on a bpffs, e.g.
    /// `/sys/fs/bpf/lanrage`) and reuse maps already pinned there, so routes
    /// and counters survive a userspace restart. Reused maps keep the size
    /// they were created with. `None`: private maps, gone with this value.
    pub pin_path: Option<PathBuf>,
}

/// How [`XdpFastPath::attach`] attaches the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): fast, needs driver support.
    Native,
    /// Generic XDP (`XDP_FLAGS_SKB_MODE`): works on any interface, slower.
    Skb,
}

impl XdpMode {
    /// `native` or `skb`, as in the relay's config.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        }
    }
}

/// Failures of the XDP fast path, each naming what failed and on what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// `max_routes` out of range.
    #[error("xdp max_routes must be between 1 and {MAX_ROUTES_LIMIT}, got {0}")]
    InvalidMaxRoutes(u32),
    /// The relay port was 0.
    #[error("xdp relay endpoint {0} has port 0; give the relay's UDP port")]
    ZeroRelayPort(SocketAddrV4),
    /// Creating the maps or parsing the object failed.
    #[error("loading the LANrage XDP object{} failed (needs root or CAP_BPF + CAP_NET_ADMIN)", pin_note(.pin_path))]
    Load {
        /// The pin directory, if any.
        pin_path: Option<PathBuf>,
        /// What aya reported.
        #[source]
        source: Box<EbpfError>,
    },
    /// The object lacks a map or program this loader expects (a build bug).
    #[error("the LANrage XDP object has no {kind} named {name:?}, or it has the wrong type")]
    Missing {
        /// "map" or "program".
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// The kernel rejected the program (the verifier log is in the source).
    #[error("the kernel rejected the LANrage XDP program {PROGRAM:?}")]
    ProgramLoad(#[source] Box<ProgramError>),
    /// A map operation failed.
    #[error("{op} on XDP map {map:?} failed")]
    Map {
        /// What was attempted.
        op: &'static str,
        /// The map's name.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: Box<MapError>,
    },
    /// Attaching failed.
    #[error("attaching the XDP program to {interface:?} in {} mode failed", .mode.as_str())]
    Attach {
        /// The interface name.
        interface: String,
        /// The mode asked for.
        mode: XdpMode,
        /// What aya reported.
        #[source]
        source: Box<ProgramError>,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN on the XDP program failed")]
    TestRun(#[source] io::Error),
    /// Pinning, reusing or removing a pinned XDP link failed.
    #[error("{op} the pinned XDP link {} failed", .path.display())]
    Link {
        /// What was attempted.
        op: &'static str,
        /// The link's pin file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What [`XdpFastPath::attach_pinned`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedAttach {
    /// No link was pinned for this interface and mode: the program was
    /// attached and its link pinned.
    Attached,
    /// A link left pinned by an earlier run now runs this program (an atomic
    /// `bpf_link_update`: no packet sees the interface without a program).
    Replaced,
}

impl PinnedAttach {
    /// `attached` or `replaced`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PinnedAttach::Attached => "attached",
            PinnedAttach::Replaced => "replaced",
        }
    }
}

fn pin_note(pin_path: &Option<PathBuf>) -> String {
    match pin_path {
        Some(path) => format!(" with maps pinned under {}", path.display()),
        None => String::new(),
    }
}

/// Per-reason packet counts, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters([u64; Counter::ALL.len()]);

impl Counters {
    /// The count of one slot.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Every slot with its count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.0[c as usize]))
    }

    /// Packets forwarded inside the kernel.
    pub fn forwarded(&self) -> u64 {
        self.iter()
            .filter(|(c, _)| c.is_forwarded())
            .map(|(_, n)| n)
            .sum()
    }
}

/// The result of one [`XdpFastPath::test_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, ...).
    pub action: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// The loaded (not necessarily attached) XDP fast path and its maps.
pub struct XdpFastPath {
    // Dropping `ebpf` detaches and unloads the program; the typed maps hold
    // their own fds. A link pinned by `attach_pinned` outlives it.
    ebpf: Ebpf,
    pinned_link: Option<PinnedLink>,
    routes: HashMap<MapData, RouteKey, RouteValue>,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for XdpFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpFastPath").finish_non_exhaustive()
    }
}

impl XdpFastPath {
    /// Sizes the maps, loads the program into the kernel and writes the
    /// relay endpoint into its config map.
    pub fn load(config: XdpLoadConfig) -> Result<Self, XdpError> {
        if config.max_routes == 0 || config.max_routes > MAX_ROUTES_LIMIT {
            return Err(XdpError::InvalidMaxRoutes(config.max_routes));
        }
        if config.relay.port() == 0 {
            return Err(XdpError::ZeroRelayPort(config.relay));
        }
        let mut loader = EbpfLoader::new();
        loader.set_max_entries(MAP_ROUTES, config.max_routes);
        let object = match &config.pin_path {
            Some(path) => {
                loader.map_pin_path(path);
                OBJECT_PINNED
            }
            None => OBJECT,
        };
        let mut ebpf = loader.load(object).map_err(|source| XdpError::Load {
            pin_path: config.pin_path.clone(),
            source: Box::new(source),
        })?;

        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(XdpError::Missing {
                kind: "program",
                name: PROGRAM,
            })?;
        program
            .load()
            .map_err(|e| XdpError::ProgramLoad(Box::new(e)))?;

        let routes = HashMap::try_from(take_map(&mut ebpf, MAP_ROUTES)?).map_err(|source| {
            XdpError::Map {
                op: "opening",
                map: MAP_ROUTES,
                source: Box::new(source),
            }
        })?;
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, MAP_COUNTERS)?).map_err(|source| {
                XdpError::Map {
                    op: "opening",
                    map: MAP_COUNTERS,
                    source: Box::new(source),
                }
            })?;
        let mut config_map: Array<MapData, Config> =
            Array::try_from(take_map(&mut ebpf, MAP_CONFIG)?).map_err(|source| XdpError::Map {
                op: "opening",
                map: MAP_CONFIG,
                source: Box::new(source),
            })?;
        config_map
            .set(0, Config::new(config.relay), 0)
            .map_err(|source| XdpError::Map {
                op: "writing the relay endpoint",
                map: MAP_CONFIG,
                source: Box::new(source),
            })?;

        Ok(Self {
            ebpf,
            pinned_link: None,
            routes,
            counters,
        })
    }

    /// Installs or replaces (roaming) a route. `value.last_seen_ns` is
    /// written as given; the program refreshes it on every forward.
    pub fn insert_route(&mut self, key: &RouteKey, value: &RouteValue) -> Result<(), XdpError> {
        self.routes
            .insert(key, value, 0)
            .map_err(|source| XdpError::Map {
                op: "inserting a route",
                map: MAP_ROUTES,
                source: Box::new(source),
            })
    }

    /// Removes a route; `false` if there was none.
    pub fn remove_route(&mut self, key: &RouteKey) -> Result<bool, XdpError> {
        match self.routes.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(XdpError::Map {
                op: "removing a route",
                map: MAP_ROUTES,
                source: Box::new(source),
            }),
        }
    }

    /// The route for `key`, with the kernel's last-seen time.
    pub fn route(&self, key: &RouteKey) -> Result<Option<RouteValue>, XdpError> {
        match self.routes.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(XdpError::Map {
                op: "looking up a route",
                map: MAP_ROUTES,
                source: Box::new(source),
            }),
        }
    }

    /// When XDP last forwarded a packet on `key`'s route, in
    /// `CLOCK_MONOTONIC` nanoseconds (compare with [`monotonic_now_ns`]).
    /// `Ok(None)`: no such route; `Ok(Some(0))`: never forwarded by XDP.
    pub fn route_last_seen(&self, key: &RouteKey) -> Result<Option<u64>, XdpError> {
        Ok(self.route(key)?.map(|v| v.last_seen_ns))
    }

    /// Every route in the map with its value (a snapshot; the map may change
    /// while it is read, so an entry can be missing or appear twice).
    pub fn routes(&self) -> Result<Vec<(RouteKey, RouteValue)>, XdpError> {
        self.routes
            .iter()
            .filter_map(|entry| match entry {
                // Deleted between reading its key and its value.
                Err(MapError::KeyNotFound) => None,
                other => Some(other),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| XdpError::Map {
                op: "listing routes",
                map: MAP_ROUTES,
                source: Box::new(source),
            })
    }

    /// The per-reason counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut out = Counters::default();
        for counter in Counter::ALL {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| XdpError::Map {
                        op: "reading counters",
                        map: MAP_COUNTERS,
                        source: Box::new(source),
                    })?;
            out.0[counter as usize] = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(out)
    }

    /// Attaches the program to `interface`. It stays attached until this
    /// value is dropped.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), XdpError> {
        let flags = match mode {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Skb => XdpFlags::SKB_MODE,
        };
        self.program_mut()?
            .attach(interface, flags)
            .map(|_link| ())
            .map_err(|source| XdpError::Attach {
                interface: interface.to_owned(),
                mode,
                source: Box::new(source),
            })
    }

    /// Attaches the program to `interface` through a BPF link pinned under
    /// `pin_dir` (file `link_<interface>_<mode>`), so it **stays attached
    /// after this process exits**, and the maps pinned there keep serving
    /// established sessions while userspace restarts.
    ///
    /// If an earlier run left that link pinned, this program replaces the
    /// old one inside it atomically (`bpf_link_update`). Links pinned there
    /// for another interface or mode are removed first (which detaches
    /// them), so a config change doesn't leave a program behind.
    /// To detach for good, stop the relay and delete the `link_*` files.
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        mode: XdpMode,
        pin_dir: &std::path::Path,
    ) -> Result<PinnedAttach, XdpError> {
        let name = format!("link_{interface}_{}", mode.as_str());
        let path = pin_dir.join(&name);
        remove_stale_links(pin_dir, &name)?;
        let link_error = |op: &'static str| {
            let path = path.clone();
            move |source: Box<dyn std::error::Error + Send + Sync>| XdpError::Link {
                op,
                path,
                source,
            }
        };
        if path.exists() {
            let pinned =
                PinnedLink::from_pin(&path).map_err(|e| link_error("opening")(Box::new(e)))?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .map_err(|e| link_error("opening")(Box::new(e)))?;
            self.program_mut()?
                .attach_to_link(link)
                .map_err(|e| link_error("replacing the program in")(Box::new(e)))?;
            return Ok(PinnedAttach::Replaced);
        }
        let flags = match mode {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Skb => XdpFlags::SKB_MODE,
        };
        let program = self.program_mut()?;
        let id = program
            .attach(interface, flags)
            .map_err(|source| XdpError::Attach {
                interface: interface.to_owned(),
                mode,
                source: Box::new(source),
            })?;
        let link = program
            .take_link(id)
            .map_err(|e| link_error("taking")(Box::new(e)))?;
        // Kernels before 5.9 attach through netlink, which has no link to pin.
        let fd_link = FdLink::try_from(link).map_err(|e| {
            link_error("creating (needs Linux 5.9 or newer for BPF links)")(Box::new(e))
        })?;
        let pinned = fd_link
            .pin(&path)
            .map_err(|e| link_error("pinning")(Box::new(e)))?;
        self.pinned_link = Some(pinned);
        Ok(PinnedAttach::Attached)
    }

    /// Runs the program once on `packet` with `BPF_PROG_TEST_RUN`, as if it
    /// arrived on `ingress_ifindex` (the current network namespace's
    /// loopback device when `None`). Nothing is transmitted.
    pub fn test_run(
        &self,
        packet: &[u8],
        ingress_ifindex: Option<u32>,
    ) -> Result<TestRun, XdpError> {
        let fd = self
            .ebpf
            .program(PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .ok_or(XdpError::Missing {
                kind: "program",
                name: PROGRAM,
            })?
            .fd()
            .map_err(|e| XdpError::ProgramLoad(Box::new(e)))?;
        let len = u32::try_from(packet.len())
            .map_err(|_| XdpError::TestRun(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // XDP_TX never grows the packet here; leave room anyway.
        let mut out = vec![0u8; packet.len() + 256];
        let ctx = XdpMd {
            data: 0,
            data_end: len,
            ingress_ifindex: ingress_ifindex.unwrap_or(0),
            ..XdpMd::default()
        };
        let mut attr = TestRunAttr {
            prog_fd: fd.as_fd().as_raw_fd() as u32,
            data_size_in: len,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        if ingress_ifindex.is_some() {
            attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
            attr.ctx_in = &ctx as *const XdpMd as u64;
        }
        // SAFETY: `attr` is the BPF_PROG_TEST_RUN member of `union bpf_attr`
        // (zeroed tail); the kernel reads `packet` and `ctx` and writes at most
        // `data_size_out` bytes into `out`, all of which outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if rc < 0 {
            return Err(XdpError::TestRun(io::Error::last_os_error()));
        }
        out.truncate(attr.data_size_out as usize);
        Ok(TestRun {
            action: attr.retval,
            packet: out,
        })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(XdpError::Missing {
                kind: "program",
                name: PROGRAM,
            })
    }
}

/// Now on `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns` and so of
/// [`RouteValue::last_seen_ns`].
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC always exists on Linux");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Unpins (and so detaches, once nothing else holds them) the links under
/// `pin_dir` other than `keep`.
fn remove_stale_links(pin_dir: &std::path::Path, keep: &str) -> Result<(), XdpError> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(XdpError::Link {
                op: "listing",
                path: pin_dir.to_owned(),
                source: Box::new(e),
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("link_") || name == keep {
            continue;
        }
        let path = entry.path();
        let pinned = PinnedLink::from_pin(&path).map_err(|e| XdpError::Link {
            op: "opening a stale",
            path: path.clone(),
            source: Box::new(e),
        })?;
        pinned.unpin().map_err(|e| XdpError::Link {
            op: "removing a stale",
            path,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, XdpError> {
    ebpf.take_map(name)
        .ok_or(XdpError::Missing { kind: "map", name })
}

/// `BPF_PROG_TEST_RUN` from `enum bpf_cmd` (linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (linux/bpf.h), as of Linux 5.10.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` (linux/bpf.h): the context `BPF_PROG_TEST_RUN` accepts.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}
