//! The relay's YAML configuration: typed, defaulted, validated.
//!
//! Every field has a default, so an empty file (or no file) is a working relay.
//! Unknown fields are rejected so a typo never silently falls back to a default.
//! After parsing, [`Config::validate`] checks every range and names the field
//! path in its error (`limits.max_routes must be between …`).
//!
//! `docs/configuration.md` and `systemd/relay.example.yaml` mirror this file;
//! a test keeps the example equal to [`Config::default`].

use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::router::{RateLimit, RouterConfig};

/// Errors from [`Config::load`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// serde_norway's message names unknown fields, wrong types and the line and column.
    #[error("config file {}: {source}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: InvalidField,
    },
}

/// A value outside its allowed range. Displays as `<field path> <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct InvalidField {
    /// The dotted path of the field in the YAML file, e.g. `limits.max_routes`.
    pub field: &'static str,
    pub reason: String,
}

/// The relay's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address for WireGuard, STUN and LANrage control traffic. An IP
    /// literal and port; `[::]:PORT` serves IPv4 and IPv6 on one socket.
    /// Port 0 picks a free port (logged at startup; for tests).
    /// Default `0.0.0.0:51888`.
    pub listen: SocketAddr,
    /// The relay's X25519 private key (base64, one line, as `wg genkey` prints).
    /// Generated with mode 0600 if missing. An absolute path is used as
    /// written; a relative one is resolved against `--state-dir` if given,
    /// else the working directory. Absent or `null`: `private.key` in
    /// `--state-dir`, else [`DEFAULT_PRIVATE_KEY_FILE`]
    /// (`/var/lib/lanrage-relay/private.key`). Default `null`.
    pub private_key_file: Option<PathBuf>,
    /// TCP address of the Prometheus `/metrics` and `/health` endpoint; `null`
    /// disables it. Default `127.0.0.1:9588`.
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter in tracing `EnvFilter` syntax (`info`,
    /// `lanrage_relay=debug,info`, …). `RUST_LOG` overrides it. Default `info`.
    pub log: String,
    /// UDP socket options.
    pub socket: SocketConfig,
    /// Datagrams received (and sent) per system call. 1..=1024. Default 64.
    pub batch_size: usize,
    /// Data-plane backend: `auto` (the one measured fastest that this kernel
    /// offers, epoll for now; the choice and the reason are logged),
    /// `io_uring` (fail at start without it), or `epoll`. Default `auto`.
    pub backend: BackendChoice,
    /// Coalesce consecutive datagrams to one destination with one size into a
    /// single UDP GSO send (`UDP_SEGMENT`, Linux ≥ 4.18; ignored where the
    /// kernel lacks it). Default `true`.
    pub gso: bool,
    /// Data-plane worker threads, each with its own `SO_REUSEPORT` socket.
    /// 0 means one per CPU core. 0..=256. Default 0.
    pub workers: usize,
    /// Table sizes; memory use is bounded by these.
    pub limits: Limits,
    /// Expiry of soft state.
    pub timeouts: Timeouts,
    /// Handshakes plus registrations accepted per source IP address.
    /// Default `{ per_second: 20, burst: 50 }`.
    pub handshake_rate_limit: HandshakeRateLimit,
    /// "Unknown session" hints sent per source IP address.
    /// Default `{ per_second: 2, burst: 4 }`.
    pub hint_rate_limit: HintRateLimit,
    /// Handshake initiations per second (whole relay) above which initiations
    /// must carry a valid mac2, i.e. the relay answers with cookie replies, as
    /// WireGuard responders do under load. 0 means always demand cookies.
    /// 0..=10000000. Default 5000.
    pub under_load_handshakes_per_second: u32,
    /// The XDP fast path (Linux; a binary built with the `xdp` feature):
    /// established sessions forwarded inside the kernel. Absent or `null`:
    /// off. Default `null`.
    pub xdp: Option<XdpConfig>,
}

/// The XDP fast path (`docs/xdp.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// The network interface the relay's traffic arrives on (e.g. `eth0`).
    /// Required.
    pub interface: String,
    /// `native` (in the driver; fails the start where the driver lacks XDP)
    /// or `skb` (generic XDP: any interface, slower). Default `native`.
    #[serde(default)]
    pub mode: XdpModeChoice,
    /// A directory on a bpffs (e.g. `/sys/fs/bpf/lanrage`): pin the maps and
    /// the program's link there, so established sessions keep flowing through
    /// XDP while the relay restarts. `null`: nothing pinned, the program is
    /// detached when the relay stops. Absolute path. Default `null`.
    #[serde(default)]
    pub pin_path: Option<PathBuf>,
    /// Size of the kernel route map (entries; two per session).
    /// 1..=1048576. Default: `limits.max_routes`, capped at 1048576.
    #[serde(default)]
    pub max_routes: Option<u32>,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpModeChoice {
    #[default]
    Native,
    Skb,
}

impl XdpModeChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpModeChoice::Native => "native",
            XdpModeChoice::Skb => "skb",
        }
    }
}

/// The largest `xdp.max_routes` (the kernel map is preallocated: about 100
/// bytes an entry). Equal to `lanrage_ebpf::MAX_ROUTES_LIMIT`.
pub const XDP_MAX_ROUTES_LIMIT: u32 = 1 << 20;

impl XdpConfig {
    /// `max_routes`, or its default for these limits.
    pub fn max_routes(&self, limits: &Limits) -> u32 {
        self.max_routes.unwrap_or_else(|| {
            u32::try_from(limits.max_routes)
                .unwrap_or(u32::MAX)
                .min(XDP_MAX_ROUTES_LIMIT)
        })
    }

    fn validate(&self, listen: SocketAddr) -> Result<(), InvalidField> {
        // IFNAMSIZ is 16 with the terminating NUL.
        let name_ok = !self.interface.is_empty()
            && self.interface.len() <= 15
            && !self
                .interface
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !name_ok {
            return Err(InvalidField {
                field: "xdp.interface",
                reason: format!(
                    "must be a network interface name (1 to 15 characters, no '/', ':' or spaces), got {:?}",
                    self.interface
                ),
            });
        }
        if let Some(path) = &self.pin_path {
            if !path.is_absolute() {
                return Err(InvalidField {
                    field: "xdp.pin_path",
                    reason: format!(
                        "must be an absolute path on a bpffs (e.g. /sys/fs/bpf/lanrage), got {:?}",
                        path.display().to_string()
                    ),
                });
            }
        }
        if let Some(n) = self.max_routes {
            in_range("xdp.max_routes", n, 1..=XDP_MAX_ROUTES_LIMIT)?;
        }
        if xdp_relay_addr(listen).is_none() {
            return Err(InvalidField {
                field: "listen",
                reason: format!(
                    "must be an IPv4 address or \"[::]:PORT\" when xdp is set (the XDP program handles IPv4 only), got {listen}"
                ),
            });
        }
        Ok(())
    }
}

/// The IPv4 endpoint the XDP program answers for, given the bound `listen`
/// address: the address itself, `0.0.0.0` for a dual-stack `[::]`, the IPv4
/// address of a v4-mapped one; `None` for a specific IPv6 address.
pub fn xdp_relay_addr(listen: SocketAddr) -> Option<std::net::SocketAddrV4> {
    let ip = match listen {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => Ipv4Addr::UNSPECIFIED,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped()?,
    };
    Some(std::net::SocketAddrV4::new(ip, listen.port()))
}

/// Which data-plane backend runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    Auto,
    #[serde(rename = "io_uring")]
    IoUring,
    Epoll,
}

/// UDP socket options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// `SO_RCVBUF` in bytes. The kernel caps it at `net.core.rmem_max`; the
    /// relay logs a warning when it got less. 4096..=1073741824. Default 4194304 (4 MiB).
    pub recv_buffer_bytes: usize,
    /// `SO_SNDBUF` in bytes, capped at `net.core.wmem_max`.
    /// 4096..=1073741824. Default 4194304 (4 MiB).
    pub send_buffer_bytes: usize,
}

/// Table sizes. When a table is full, new entries are refused (and counted),
/// existing ones keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Registered clients. 1..=10000000. Default 100000.
    pub max_registrations: usize,
    /// Transport routes (two per WireGuard session). 1..=100000000. Default 1000000.
    pub max_routes: usize,
    /// Initiations awaiting a response. 1..=10000000. Default 100000.
    pub max_pending_handshakes: usize,
    /// Source addresses tracked by the rate limiters. 1..=10000000. Default 100000.
    pub max_rate_limited_sources: usize,
}

/// Expiry of soft state, in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// A route unused this long is removed. WireGuard rekeys every 120 s and
    /// rejects sessions older than 180 s (WireGuard paper §6.1,
    /// `Reject-After-Time`), so 180 s outlives every session. 10..=3600. Default 180.
    pub route_idle_secs: u64,
    /// A registration not refreshed this long is removed. Clients refresh every
    /// 20–25 s. 10..=3600. Default 90.
    pub registration_secs: u64,
    /// An initiation not answered this long is forgotten. WireGuard retries an
    /// initiation after 5 s (`Rekey-Timeout`). 1..=300. Default 10.
    pub pending_handshake_secs: u64,
}

/// A per-source token bucket for handshakes and registrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandshakeRateLimit {
    /// Tokens added per second. 1..=1000000. Default 20.
    pub per_second: u32,
    /// Bucket size: how many may arrive at once. 1..=1000000. Default 50.
    pub burst: u32,
}

/// A per-source token bucket for "unknown session" hints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HintRateLimit {
    /// Tokens added per second. 1..=1000000. Default 2.
    pub per_second: u32,
    /// Bucket size. 1..=1000000. Default 4.
    pub burst: u32,
}

/// The default `listen` port.
pub const DEFAULT_PORT: u16 = 51888;
/// The key file when `private_key_file` is not set and there is no `--state-dir`.
pub const DEFAULT_PRIVATE_KEY_FILE: &str = "/var/lib/lanrage-relay/private.key";
/// The key file's name in `--state-dir` when `private_key_file` is not set.
pub const DEFAULT_PRIVATE_KEY_NAME: &str = "private.key";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            private_key_file: None,
            metrics_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9588))),
            log: "info".to_owned(),
            socket: SocketConfig::default(),
            batch_size: 64,
            backend: BackendChoice::Auto,
            gso: true,
            workers: 0,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            handshake_rate_limit: HandshakeRateLimit::default(),
            hint_rate_limit: HintRateLimit::default(),
            under_load_handshakes_per_second: 5000,
            xdp: None,
        }
    }
}

impl Config {
    /// The worker count to run: `workers`, or one per available core for 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            recv_buffer_bytes: 4 << 20,
            send_buffer_bytes: 4 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_registrations: 100_000,
            max_routes: 1_000_000,
            max_pending_handshakes: 100_000,
            max_rate_limited_sources: 100_000,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            route_idle_secs: 180,
            registration_secs: 90,
            pending_handshake_secs: 10,
        }
    }
}

impl Default for HandshakeRateLimit {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 50,
        }
    }
}

impl Default for HintRateLimit {
    fn default() -> Self {
        Self {
            per_second: 2,
            burst: 4,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        // A file of only comments is an empty document; serde_norway would
        // call that "EOF while parsing", but it means "all defaults".
        let config = if is_blank_yaml(text) {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
                path: origin.to_owned(),
                source,
            })?
        };
        config.validate().map_err(|source| ConfigError::Invalid {
            path: origin.to_owned(),
            source,
        })?;
        Ok(config)
    }

    /// Checks every range; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self
            .private_key_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(InvalidField {
                field: "private_key_file",
                reason: "must not be empty".to_owned(),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(InvalidField {
                field: "log",
                reason: format!("is not a valid tracing filter ({e}), got {:?}", self.log),
            });
        }
        const BUFFER: RangeInclusive<usize> = 4096..=1 << 30;
        in_range(
            "socket.recv_buffer_bytes",
            self.socket.recv_buffer_bytes,
            BUFFER,
        )?;
        in_range(
            "socket.send_buffer_bytes",
            self.socket.send_buffer_bytes,
            BUFFER,
        )?;
        in_range("batch_size", self.batch_size, 1..=1024)?;
        in_range("workers", self.workers, 0..=256)?;

        let l = &self.limits;
        in_range(
            "limits.max_registrations",
            l.max_registrations,
            1..=10_000_000,
        )?;
        in_range("limits.max_routes", l.max_routes, 1..=100_000_000)?;
        in_range(
            "limits.max_pending_handshakes",
            l.max_pending_handshakes,
            1..=10_000_000,
        )?;
        in_range(
            "limits.max_rate_limited_sources",
            l.max_rate_limited_sources,
            1..=10_000_000,
        )?;

        let t = &self.timeouts;
        in_range("timeouts.route_idle_secs", t.route_idle_secs, 10..=3600)?;
        in_range("timeouts.registration_secs", t.registration_secs, 10..=3600)?;
        in_range(
            "timeouts.pending_handshake_secs",
            t.pending_handshake_secs,
            1..=300,
        )?;

        const RATE: RangeInclusive<u32> = 1..=1_000_000;
        let h = &self.handshake_rate_limit;
        in_range("handshake_rate_limit.per_second", h.per_second, RATE)?;
        in_range("handshake_rate_limit.burst", h.burst, RATE)?;
        let h = &self.hint_rate_limit;
        in_range("hint_rate_limit.per_second", h.per_second, RATE)?;
        in_range("hint_rate_limit.burst", h.burst, RATE)?;
        in_range(
            "under_load_handshakes_per_second",
            self.under_load_handshakes_per_second,
            0..=10_000_000,
        )?;
        if let Some(xdp) = &self.xdp {
            xdp.validate(self.listen)?;
        }
        Ok(())
    }

    /// The router's view of this configuration.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            route_idle_timeout: Duration::from_secs(self.timeouts.route_idle_secs),
            registration_timeout: Duration::from_secs(self.timeouts.registration_secs),
            pending_handshake_timeout: Duration::from_secs(self.timeouts.pending_handshake_secs),
            max_registrations: self.limits.max_registrations,
            max_routes: self.limits.max_routes,
            max_pending_handshakes: self.limits.max_pending_handshakes,
            handshake_rate_limit: RateLimit {
                per_second: self.handshake_rate_limit.per_second,
                burst: self.handshake_rate_limit.burst,
            },
            max_rate_limited_sources: self.limits.max_rate_limited_sources,
            under_load_handshakes_per_second: self.under_load_handshakes_per_second,
            hint_rate_limit: RateLimit {
                per_second: self.hint_rate_limit.per_second,
                burst: self.hint_rate_limit.burst,
            },
        }
    }

    /// Where the private key lives, after applying `--state-dir`.
    ///
    /// An absolute `private_key_file` is the operator's choice and stays as
    /// written, even if it names the default path. `state_dir` is the base of
    /// a relative one, and holds `private.key` when the field is not set.
    pub fn private_key_path(&self, state_dir: Option<&Path>) -> PathBuf {
        match (&self.private_key_file, state_dir) {
            (Some(file), Some(dir)) if file.is_relative() => dir.join(file),
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => dir.join(DEFAULT_PRIVATE_KEY_NAME),
            (None, None) => PathBuf::from(DEFAULT_PRIVATE_KEY_FILE),
        }
    }
}

fn in_range<T: PartialOrd + Display>(
    field: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), InvalidField> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(InvalidField {
        field,
        reason: format!(
            "must be between {} and {}, got {value}",
            range.start(),
            range.end()
        ),
    })
}

/// True if the text holds no YAML content: only blank lines, comments and
/// document markers.
fn is_blank_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#') || line == "---" || line == "...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("test.yaml"))
    }

    fn invalid_field(text: &str) -> &'static str {
        match parse(text) {
            Err(ConfigError::Invalid { source, .. }) => source.field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_round_trip_through_yaml() {
        let text = serde_yaml::to_string(&Config::default()).expect("serialize");
        assert_eq!(parse(&text).expect("parse"), Config::default());
    }

    #[test]
    fn empty_and_comment_only_files_are_defaults() {
        assert_eq!(parse("").expect("empty"), Config::default());
        assert_eq!(parse("# nothing\n\n").expect("comments"), Config::default());
        assert_eq!(parse("{}").expect("empty map"), Config::default());
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let text = include_str!("../../systemd/relay.example.yaml");
        assert_eq!(parse(text).expect("example parses"), Config::default());
        // Every field is spelled out in the example, so it documents them all.
        let defaults = serde_yaml::to_string(&Config::default()).expect("serialize");
        for line in defaults.lines() {
            let key = line.trim().split(':').next().unwrap_or_default();
            assert!(text.contains(&format!("{key}:")), "example lacks {key}");
        }
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = parse(
            "listen: \"[::]:4000\"\nlimits:\n  max_routes: 5\nhint_rate_limit:\n  per_second: 7\n",
        )
        .expect("parse");
        assert_eq!(config.listen, "[::]:4000".parse().expect("addr"));
        assert_eq!(config.limits.max_routes, 5);
        assert_eq!(config.limits.max_registrations, 100_000);
        assert_eq!(
            config.hint_rate_limit,
            HintRateLimit {
                per_second: 7,
                burst: 4
            }
        );
        assert_eq!(config.handshake_rate_limit, HandshakeRateLimit::default());
    }

    #[test]
    fn null_metrics_listen_disables_metrics() {
        let config = parse("metrics_listen: null\n").expect("parse");
        assert_eq!(config.metrics_listen, None);
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = parse("listen_addr: 0.0.0.0:1\n").expect_err("top level");
        let text = err.to_string();
        assert!(text.contains("listen_addr"), "{text}");
        assert!(text.contains("test.yaml"), "{text}");

        let err = parse("limits:\n  max_routs: 3\n").expect_err("nested");
        let text = err.to_string();
        assert!(text.contains("max_routs"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        let err = parse("batch_size: lots\n").expect_err("type");
        assert!(err.to_string().contains("batch_size"), "{err}");
        let err = parse("listen: localhost:80\n").expect_err("hostname");
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err}");
    }

    #[test]
    fn every_range_names_its_field() {
        let cases = [
            ("private_key_file: \"\"", "private_key_file"),
            ("log: \"foo=bar=baz\"", "log"),
            (
                "socket: { recv_buffer_bytes: 10 }",
                "socket.recv_buffer_bytes",
            ),
            (
                "socket: { send_buffer_bytes: 2147483648 }",
                "socket.send_buffer_bytes",
            ),
            ("batch_size: 0", "batch_size"),
            ("batch_size: 1025", "batch_size"),
            (
                "limits: { max_registrations: 0 }",
                "limits.max_registrations",
            ),
            ("limits: { max_routes: 0 }", "limits.max_routes"),
            (
                "limits: { max_pending_handshakes: 0 }",
                "limits.max_pending_handshakes",
            ),
            (
                "limits: { max_rate_limited_sources: 0 }",
                "limits.max_rate_limited_sources",
            ),
            (
                "timeouts: { route_idle_secs: 5 }",
                "timeouts.route_idle_secs",
            ),
            (
                "timeouts: { registration_secs: 4000 }",
                "timeouts.registration_secs",
            ),
            (
                "timeouts: { pending_handshake_secs: 0 }",
                "timeouts.pending_handshake_secs",
            ),
            (
                "handshake_rate_limit: { per_second: 0 }",
                "handshake_rate_limit.per_second",
            ),
            (
                "handshake_rate_limit: { burst: 0 }",
                "handshake_rate_limit.burst",
            ),
            (
                "hint_rate_limit: { per_second: 0 }",
                "hint_rate_limit.per_second",
            ),
            (
                "hint_rate_limit: { burst: 2000000 }",
                "hint_rate_limit.burst",
            ),
            (
                "under_load_handshakes_per_second: 10000001",
                "under_load_handshakes_per_second",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(invalid_field(text), field, "{text}");
        }
    }

    #[test]
    fn validation_message_has_range_and_value() {
        let err = parse("limits:\n  max_routes: 0\n").expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "config file test.yaml: limits.max_routes must be between 1 and 100000000, got 0"
        );
    }

    #[test]
    fn xdp_section_parses_with_defaults() {
        let config = parse("xdp:\n  interface: eth0\n").expect("parse");
        let xdp = config.xdp.expect("xdp set");
        assert_eq!(xdp.interface, "eth0");
        assert_eq!(xdp.mode, XdpModeChoice::Native);
        assert_eq!(xdp.pin_path, None);
        assert_eq!(xdp.max_routes, None);
        assert_eq!(xdp.max_routes(&Limits::default()), 1_000_000);
        let big = Limits {
            max_routes: 5_000_000,
            ..Limits::default()
        };
        assert_eq!(xdp.max_routes(&big), XDP_MAX_ROUTES_LIMIT);
        let small = Limits {
            max_routes: 5000,
            ..Limits::default()
        };
        assert_eq!(xdp.max_routes(&small), 5000);

        let config = parse(
            "listen: \"[::]:4000\"\nxdp: { interface: veth0, mode: skb, pin_path: /sys/fs/bpf/lr, max_routes: 64 }\n",
        )
        .expect("parse");
        let xdp = config.xdp.expect("xdp set");
        assert_eq!(xdp.mode, XdpModeChoice::Skb);
        assert_eq!(xdp.pin_path.as_deref(), Some(Path::new("/sys/fs/bpf/lr")));
        assert_eq!(xdp.max_routes(&Limits::default()), 64);
        assert_eq!(parse("xdp: null\n").expect("null").xdp, None);
    }

    #[test]
    fn xdp_errors_name_the_field() {
        let err = parse("xdp: { mode: skb }\n").expect_err("no interface");
        assert!(err.to_string().contains("interface"), "{err}");
        let err = parse("xdp: { interface: eth0, mode: turbo }\n").expect_err("mode");
        assert!(err.to_string().contains("turbo"), "{err}");
        let err = parse("xdp: { interface: eth0, pinpath: /x }\n").expect_err("unknown");
        assert!(err.to_string().contains("pinpath"), "{err}");

        let cases = [
            ("xdp: { interface: \"\" }", "xdp.interface"),
            ("xdp: { interface: averyveryverylongname }", "xdp.interface"),
            ("xdp: { interface: \"a/b\" }", "xdp.interface"),
            ("xdp: { interface: eth0, pin_path: bpf/lr }", "xdp.pin_path"),
            ("xdp: { interface: eth0, max_routes: 0 }", "xdp.max_routes"),
            (
                "xdp: { interface: eth0, max_routes: 1048577 }",
                "xdp.max_routes",
            ),
            (
                "listen: \"[2001:db8::1]:51888\"\nxdp: { interface: eth0 }",
                "listen",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(invalid_field(text), field, "{text}");
        }
        let err = parse("xdp: { interface: eth0, max_routes: 0 }").expect_err("range");
        assert_eq!(
            err.to_string(),
            "config file test.yaml: xdp.max_routes must be between 1 and 1048576, got 0"
        );
    }

    #[test]
    fn xdp_relay_addr_maps_listen_to_ipv4() {
        let addr = |s: &str| xdp_relay_addr(s.parse().expect("addr")).map(|a| a.to_string());
        assert_eq!(addr("0.0.0.0:1"), Some("0.0.0.0:1".to_owned()));
        assert_eq!(addr("192.0.2.1:2"), Some("192.0.2.1:2".to_owned()));
        assert_eq!(addr("[::]:3"), Some("0.0.0.0:3".to_owned()));
        assert_eq!(addr("[::ffff:192.0.2.9]:4"), Some("192.0.2.9:4".to_owned()));
        assert_eq!(addr("[2001:db8::1]:5"), None);
    }

    #[test]
    fn zero_under_load_threshold_is_allowed() {
        let config = parse("under_load_handshakes_per_second: 0").expect("parse");
        assert_eq!(config.router_config().under_load_handshakes_per_second, 0);
    }

    #[test]
    fn router_config_maps_every_field() {
        let config = Config::default();
        let r = config.router_config();
        assert_eq!(r.route_idle_timeout, Duration::from_secs(180));
        assert_eq!(r.registration_timeout, Duration::from_secs(90));
        assert_eq!(r.pending_handshake_timeout, Duration::from_secs(10));
        assert_eq!(r.max_registrations, 100_000);
        assert_eq!(r.max_routes, 1_000_000);
        assert_eq!(r.max_pending_handshakes, 100_000);
        assert_eq!(r.max_rate_limited_sources, 100_000);
        assert_eq!(
            r.handshake_rate_limit,
            RateLimit {
                per_second: 20,
                burst: 50
            }
        );
        assert_eq!(
            r.hint_rate_limit,
            RateLimit {
                per_second: 2,
                burst: 4
            }
        );
        assert_eq!(r.under_load_handshakes_per_second, 5000);
    }

    /// `private_key_file` spelled out as the default path is still an
    /// explicit absolute path: `--state-dir` leaves it alone.
    #[test]
    fn state_dir_keeps_an_explicit_absolute_key_path_even_the_default_one() {
        let dir = Path::new("/tmp/state");
        for path in [DEFAULT_PRIVATE_KEY_FILE, "/etc/lanrage/relay.key"] {
            let config = parse(&format!("private_key_file: \"{path}\"\n")).expect("parse");
            assert_eq!(config.private_key_path(Some(dir)), Path::new(path));
            assert_eq!(config.private_key_path(None), Path::new(path));
        }
        let config = parse("private_key_file: keys/relay.key\n").expect("parse");
        assert_eq!(
            config.private_key_path(Some(dir)),
            dir.join("keys/relay.key")
        );
        for text in ["", "private_key_file: null\n"] {
            let config = parse(text).expect("parse");
            assert_eq!(config.private_key_path(Some(dir)), dir.join("private.key"));
            assert_eq!(
                config.private_key_path(None),
                Path::new(DEFAULT_PRIVATE_KEY_FILE)
            );
        }
    }

    #[test]
    fn state_dir_moves_default_and_relative_key_paths_only() {
        let dir = Path::new("/tmp/state");
        let mut config = Config::default();
        assert_eq!(
            config.private_key_path(None),
            Path::new(DEFAULT_PRIVATE_KEY_FILE)
        );
        assert_eq!(config.private_key_path(Some(dir)), dir.join("private.key"));
        config.private_key_file = Some(PathBuf::from("keys/relay.key"));
        assert_eq!(
            config.private_key_path(Some(dir)),
            dir.join("keys/relay.key")
        );
        assert_eq!(config.private_key_path(None), Path::new("keys/relay.key"));
        config.private_key_file = Some(PathBuf::from("/etc/lanrage/relay.key"));
        assert_eq!(
            config.private_key_path(Some(dir)),
            Path::new("/etc/lanrage/relay.key")
        );
    }
}
