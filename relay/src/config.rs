//! The relay's YAML configuration: typed, defaulted, validated.
//!
//! Every field has a default, so an empty file (or no file) is a working relay.
//! Unknown fields are rejected so a typo never silently falls back to a default.
//! Every error names the field by its dotted path, says what is allowed in
//! words, and gives the line: `limits.max_routes must be a whole number from
//! 1 to 100000000, got 0 at line 2 column 15`. The fields are read by the
//! checking deserializers of `config/de.rs`, which share each rule with
//! [`Config::validate`] (for configs built in code).
//!
//! `docs/configuration.md` and `systemd/relay.example.yaml` mirror this file;
//! a test keeps the example equal to [`Config::default`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lanrage_relay_core::router::{RateLimit, RouterConfig, StunConfig, StunSockets};

mod de;

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
    /// A syntax error, an unknown or missing field, or a value the field
    /// does not allow; `message` names the field path and the location.
    #[error("config file {}: {message}", path.display())]
    Yaml {
        path: PathBuf,
        message: String,
        /// Line and column (from 1), when the parser knows them.
        location: Option<(usize, usize)>,
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
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of relay settings such as `listen: \"0.0.0.0:51888\"` (docs/configuration.md)"
)]
pub struct Config {
    /// UDP address for WireGuard, STUN and LANrage control traffic. An IP
    /// literal and port; `[::]:PORT` serves IPv4 and IPv6 on one socket.
    /// Port 0 picks a free port (logged at startup; for tests).
    /// Default `0.0.0.0:51888`.
    #[serde(deserialize_with = "de::address")]
    pub listen: SocketAddr,
    /// The relay's X25519 private key (base64, one line, as `wg genkey` prints).
    /// Generated with mode 0600 if missing. An absolute path is used as
    /// written; a relative one is resolved against `--state-dir` if given,
    /// else the working directory. Absent or `null`: `private.key` in
    /// `--state-dir`, else [`DEFAULT_PRIVATE_KEY_FILE`]
    /// (`/var/lib/lanrage-relay/private.key`). Default `null`.
    #[serde(deserialize_with = "field::private_key_file")]
    pub private_key_file: Option<PathBuf>,
    /// TCP address of the Prometheus `/metrics` and `/health` endpoint; `null`
    /// disables it. Default `127.0.0.1:9588`.
    #[serde(deserialize_with = "de::optional_address")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter in tracing `EnvFilter` syntax (`info`,
    /// `lanrage_relay=debug,info`, …). `RUST_LOG` overrides it. Default `info`.
    #[serde(deserialize_with = "field::log")]
    pub log: String,
    /// UDP socket options.
    pub socket: SocketConfig,
    /// Datagrams received (and sent) per system call. 1..=1024. Default 64.
    #[serde(deserialize_with = "field::batch_size")]
    pub batch_size: usize,
    /// Data-plane backend: `auto` (the one measured fastest that this kernel
    /// offers, epoll for now; the choice and the reason are logged),
    /// `io_uring` (fail at start without it), or `epoll`. Default `auto`.
    #[serde(deserialize_with = "field::backend")]
    pub backend: BackendChoice,
    /// Coalesce consecutive datagrams to one destination with one size into a
    /// single UDP GSO send (`UDP_SEGMENT`, Linux ≥ 4.18; ignored where the
    /// kernel lacks it). Default `true`.
    #[serde(deserialize_with = "de::boolean")]
    pub gso: bool,
    /// Data-plane worker threads, each with its own `SO_REUSEPORT` socket.
    /// 0 means one per CPU core. 0..=256. Default 0.
    #[serde(deserialize_with = "field::workers")]
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
    #[serde(deserialize_with = "field::under_load")]
    pub under_load_handshakes_per_second: u32,
    /// The XDP fast path (Linux; a binary built with the `xdp` feature):
    /// established sessions forwarded inside the kernel. Absent or `null`:
    /// off. Default `null`.
    pub xdp: Option<XdpConfig>,
    /// STUN: Binding requests on `listen` are always answered (RFC 8489);
    /// RFC 5780 behaviour discovery needs an alternate port, and for its
    /// change-address tests an alternate address too. `docs/protocol.md`
    /// ("STUN") has the rules.
    pub stun: StunSettings,
    /// Parties (`docs/parties.md`): this relay hosts the parties created
    /// through it, in a SQLite database, and answers party requests.
    /// Absent or `null`: no parties (party requests are counted drops).
    /// Default `null`.
    pub party: Option<PartySettings>,
}

/// The `party` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with name (required) and database, or null"
)]
pub struct PartySettings {
    /// This relay's name, written into every join code it issues
    /// (`CODE@name`): clients find the party's home relay by it, so it
    /// must be the name their relay list gives this relay. 1 to 63 of
    /// `a-z`, `0-9` and `-`, not starting or ending with `-`. Required.
    #[serde(deserialize_with = "field::relay_name")]
    pub name: String,
    /// The party database (SQLite, created if missing; never recreated or
    /// emptied). A relative path is resolved against `--state-dir` if
    /// given, else the working directory. Absent or `null`:
    /// `parties.sqlite` in `--state-dir`, else
    /// `/var/lib/lanrage-relay/parties.sqlite`. Default `null`.
    #[serde(default, deserialize_with = "field::party_database")]
    pub database: Option<PathBuf>,
}

/// The party database's file name in the state directory.
pub const DEFAULT_PARTY_DATABASE_NAME: &str = "parties.sqlite";
pub const DEFAULT_PARTY_DATABASE: &str = "/var/lib/lanrage-relay/parties.sqlite";

impl PartySettings {
    /// Where the database is, as [`Config::private_key_path`] resolves the key.
    pub fn database_path(&self, state_dir: Option<&Path>) -> PathBuf {
        match (&self.database, state_dir) {
            (Some(file), Some(dir)) if file.is_relative() => dir.join(file),
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => dir.join(DEFAULT_PARTY_DATABASE_NAME),
            (None, None) => PathBuf::from(DEFAULT_PARTY_DATABASE),
        }
    }
}

/// The `stun` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with alternate_port, alternate_address and rate_limit"
)]
pub struct StunSettings {
    /// A second UDP port for RFC 5780 behaviour discovery: the relay
    /// answers STUN there, names it in OTHER-ADDRESS, and answers
    /// "change port" requests from it (coturn's `alt-listening-port`; open
    /// it in the firewall too). Bound on `listen`'s address (and on
    /// `alternate_address`). `null`: no behaviour discovery. 0 picks a
    /// free port (logged at startup; for tests). 0..=65535, not `listen`'s
    /// port. Default `null`.
    #[serde(deserialize_with = "field::optional_port")]
    pub alternate_port: Option<u16>,
    /// A second IP address of this host, for RFC 5780's "change address"
    /// tests (NAT mapping and filtering behaviour): the relay answers there
    /// at `listen`'s port and at `alternate_port`. Needs `alternate_port`,
    /// and `listen` naming one address (not `0.0.0.0` or `[::]`) of the
    /// same family. `null`: none. Default `null`.
    #[serde(deserialize_with = "field::optional_ip")]
    pub alternate_address: Option<IpAddr>,
    /// STUN answers per source IP address (token bucket).
    /// Default `{ per_second: 20, burst: 100 }`.
    pub rate_limit: StunRateLimit,
}

/// A per-source token bucket for STUN answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with per_second and burst"
)]
pub struct StunRateLimit {
    /// Tokens added per second. 1..=1000000. Default 20.
    #[serde(deserialize_with = "field::rate")]
    pub per_second: u32,
    /// Bucket size. 1..=1000000. Default 100.
    #[serde(deserialize_with = "field::rate")]
    pub burst: u32,
}

impl Default for StunRateLimit {
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 100,
        }
    }
}

impl StunSettings {
    fn validate(&self, listen: SocketAddr) -> Result<(), InvalidField> {
        let rate = field::RATE;
        check(
            "stun.rate_limit.per_second",
            rate.check_number(self.rate_limit.per_second),
        )?;
        check(
            "stun.rate_limit.burst",
            rate.check_number(self.rate_limit.burst),
        )?;
        if let Some(port) = self.alternate_port {
            if port != 0 && port == listen.port() {
                return Err(InvalidField {
                    field: "stun.alternate_port",
                    reason: format!("must differ from the port of listen ({listen}), got {port}"),
                });
            }
        }
        let Some(ip) = self.alternate_address else {
            return Ok(());
        };
        let invalid = |reason: String| InvalidField {
            field: "stun.alternate_address",
            reason,
        };
        if self.alternate_port.is_none() {
            return Err(invalid(format!(
                "needs stun.alternate_port too: RFC 5780 tests use the alternate address \
                 at both ports (got {ip} without an alternate_port)"
            )));
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid(format!(
                "must be one IP address of this host, got {ip}"
            )));
        }
        if listen.ip().is_unspecified() {
            return Err(invalid(format!(
                "needs listen to name one address, not {}: the relay answers change-address \
                 requests from the other address, so it must know which one is primary",
                listen.ip()
            )));
        }
        if ip.is_ipv4() != canonical_ip(listen.ip()).is_ipv4() {
            return Err(invalid(format!(
                "must be of the same IP family as listen ({}), got {ip}",
                listen.ip()
            )));
        }
        if ip == canonical_ip(listen.ip()) {
            return Err(invalid(format!(
                "must differ from the address of listen, got {ip}"
            )));
        }
        Ok(())
    }

    /// The responder's view, before the sockets are bound: the primary's
    /// address and the real ports come from [`crate::stun`] after binding.
    pub fn stun_config(&self) -> StunConfig {
        StunConfig {
            sockets: StunSockets::default(),
            rate_limit: RateLimit {
                per_second: self.rate_limit.per_second,
                burst: self.rate_limit.burst,
            },
        }
    }
}

/// An IPv4 address in its IPv4 form, also when written v4-mapped.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The XDP fast path (`docs/xdp.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with interface (required), mode, pin_path and max_routes, or null"
)]
pub struct XdpConfig {
    /// The network interface the relay's traffic arrives on (e.g. `eth0`).
    /// Required.
    #[serde(deserialize_with = "field::interface")]
    pub interface: String,
    /// `native` (in the driver; fails the start where the driver lacks XDP)
    /// or `skb` (generic XDP: any interface, slower). Default `native`.
    #[serde(default, deserialize_with = "field::xdp_mode")]
    pub mode: XdpModeChoice,
    /// A directory on a bpffs (e.g. `/sys/fs/bpf/lanrage`): pin the maps and
    /// the program's link there, so established sessions keep flowing through
    /// XDP while the relay restarts. `null`: nothing pinned, the program is
    /// detached when the relay stops. Absolute path. Default `null`.
    #[serde(default, deserialize_with = "field::pin_path")]
    pub pin_path: Option<PathBuf>,
    /// Size of the kernel route map (entries; two per session).
    /// 1..=1048576. Default: `limits.max_routes`, capped at 1048576.
    #[serde(default, deserialize_with = "field::xdp_max_routes")]
    pub max_routes: Option<u32>,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
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
        check("xdp.interface", field::check_interface(&self.interface))?;
        if let Some(path) = &self.pin_path {
            check(
                "xdp.pin_path",
                field::check_pin_path(&path.display().to_string()),
            )?;
        }
        if let Some(n) = self.max_routes {
            check("xdp.max_routes", field::XDP_MAX_ROUTES.check_number(n))?;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    Auto,
    #[serde(rename = "io_uring")]
    IoUring,
    Epoll,
}

/// UDP socket options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with recv_buffer_bytes and send_buffer_bytes"
)]
pub struct SocketConfig {
    /// `SO_RCVBUF` in bytes. The kernel caps it at `net.core.rmem_max`; the
    /// relay logs a warning when it got less. 4096..=1073741824. Default 4194304 (4 MiB).
    #[serde(deserialize_with = "field::buffer_bytes")]
    pub recv_buffer_bytes: usize,
    /// `SO_SNDBUF` in bytes, capped at `net.core.wmem_max`.
    /// 4096..=1073741824. Default 4194304 (4 MiB).
    #[serde(deserialize_with = "field::buffer_bytes")]
    pub send_buffer_bytes: usize,
}

/// Table sizes. When a table is full, new entries are refused (and counted),
/// existing ones keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with max_registrations, max_routes, max_pending_handshakes and max_rate_limited_sources"
)]
pub struct Limits {
    /// Registered clients. 1..=10000000. Default 100000.
    #[serde(deserialize_with = "field::table_entries")]
    pub max_registrations: usize,
    /// Transport routes (two per WireGuard session). 1..=100000000. Default 1000000.
    #[serde(deserialize_with = "field::routes")]
    pub max_routes: usize,
    /// Initiations awaiting a response. 1..=10000000. Default 100000.
    #[serde(deserialize_with = "field::table_entries")]
    pub max_pending_handshakes: usize,
    /// Source addresses tracked by the rate limiters. 1..=10000000. Default 100000.
    #[serde(deserialize_with = "field::table_entries")]
    pub max_rate_limited_sources: usize,
}

/// Expiry of soft state, in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with route_idle_secs, registration_secs and pending_handshake_secs"
)]
pub struct Timeouts {
    /// A route unused this long is removed. WireGuard rekeys every 120 s and
    /// rejects sessions older than 180 s (WireGuard paper §6.1,
    /// `Reject-After-Time`), so 180 s outlives every session. 10..=3600. Default 180.
    #[serde(deserialize_with = "field::expiry_secs")]
    pub route_idle_secs: u64,
    /// A registration not refreshed this long is removed. Clients refresh every
    /// 20–25 s. 10..=3600. Default 90.
    #[serde(deserialize_with = "field::expiry_secs")]
    pub registration_secs: u64,
    /// An initiation not answered this long is forgotten. WireGuard retries an
    /// initiation after 5 s (`Rekey-Timeout`). 1..=300. Default 10.
    #[serde(deserialize_with = "field::pending_handshake_secs")]
    pub pending_handshake_secs: u64,
}

/// A per-source token bucket for handshakes and registrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with per_second and burst"
)]
pub struct HandshakeRateLimit {
    /// Tokens added per second. 1..=1000000. Default 20.
    #[serde(deserialize_with = "field::rate")]
    pub per_second: u32,
    /// Bucket size: how many may arrive at once. 1..=1000000. Default 50.
    #[serde(deserialize_with = "field::rate")]
    pub burst: u32,
}

/// A per-source token bucket for "unknown session" hints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with per_second and burst"
)]
pub struct HintRateLimit {
    /// Tokens added per second. 1..=1000000. Default 2.
    #[serde(deserialize_with = "field::rate")]
    pub per_second: u32,
    /// Bucket size. 1..=1000000. Default 4.
    #[serde(deserialize_with = "field::rate")]
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
            stun: StunSettings::default(),
            party: None,
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
            serde_yaml::from_str(text).map_err(|error| ConfigError::Yaml {
                path: origin.to_owned(),
                message: de::render(&error, text),
                location: error.location().map(|l| (l.line(), l.column())),
            })?
        };
        config.validate().map_err(|source| ConfigError::Invalid {
            path: origin.to_owned(),
            source,
        })?;
        Ok(config)
    }

    /// Checks every field (the same rules the parser applies, for configs
    /// built in code) and the fields' combinations; the error names the
    /// first field that is wrong.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(path) = &self.private_key_file {
            check(
                "private_key_file",
                field::check_key_file(&path.display().to_string()),
            )?;
        }
        check("log", field::check_log(&self.log))?;
        if let Some(party) = &self.party {
            check("party.name", field::check_relay_name(&party.name))?;
            if let Some(path) = &party.database {
                check(
                    "party.database",
                    field::check_party_database(&path.display().to_string()),
                )?;
            }
        }
        let buffer = field::BUFFER_BYTES;
        check(
            "socket.recv_buffer_bytes",
            buffer.check_number(self.socket.recv_buffer_bytes),
        )?;
        check(
            "socket.send_buffer_bytes",
            buffer.check_number(self.socket.send_buffer_bytes),
        )?;
        check(
            "batch_size",
            field::BATCH_SIZE.check_number(self.batch_size),
        )?;
        check("workers", field::WORKERS.check_number(self.workers))?;

        let l = &self.limits;
        let table = field::TABLE_ENTRIES;
        check(
            "limits.max_registrations",
            table.check_number(l.max_registrations),
        )?;
        check(
            "limits.max_routes",
            field::ROUTES.check_number(l.max_routes),
        )?;
        check(
            "limits.max_pending_handshakes",
            table.check_number(l.max_pending_handshakes),
        )?;
        check(
            "limits.max_rate_limited_sources",
            table.check_number(l.max_rate_limited_sources),
        )?;

        let t = &self.timeouts;
        let expiry = field::EXPIRY_SECS;
        check(
            "timeouts.route_idle_secs",
            expiry.check_number(t.route_idle_secs),
        )?;
        check(
            "timeouts.registration_secs",
            expiry.check_number(t.registration_secs),
        )?;
        check(
            "timeouts.pending_handshake_secs",
            field::PENDING_HANDSHAKE_SECS.check_number(t.pending_handshake_secs),
        )?;

        let rate = field::RATE;
        let h = &self.handshake_rate_limit;
        check(
            "handshake_rate_limit.per_second",
            rate.check_number(h.per_second),
        )?;
        check("handshake_rate_limit.burst", rate.check_number(h.burst))?;
        let h = &self.hint_rate_limit;
        check(
            "hint_rate_limit.per_second",
            rate.check_number(h.per_second),
        )?;
        check("hint_rate_limit.burst", rate.check_number(h.burst))?;
        check(
            "under_load_handshakes_per_second",
            field::UNDER_LOAD.check_number(self.under_load_handshakes_per_second),
        )?;
        if let Some(xdp) = &self.xdp {
            xdp.validate(self.listen)?;
        }
        self.stun.validate(self.listen)?;
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
            // The XDP fast path keeps a copy of the routes in the kernel.
            route_commands: self.xdp.is_some(),
            stun: self.stun.stun_config(),
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

/// A field check's verdict as an [`InvalidField`].
fn check(field: &'static str, verdict: Result<(), String>) -> Result<(), InvalidField> {
    verdict.map_err(|reason| InvalidField { field, reason })
}

/// Each field's rule, used by the parser (`deserialize_with`, so a bad value
/// is reported at its line) and by [`Config::validate`].
mod field {
    use std::path::{Path, PathBuf};

    use serde::Deserializer;

    use super::de::{self, Whole};
    use super::{BackendChoice, XdpModeChoice, XDP_MAX_ROUTES_LIMIT};

    pub const BUFFER_BYTES: Whole = Whole::new(4096, 1 << 30);
    pub const BATCH_SIZE: Whole = Whole::new(1, 1024);
    pub const WORKERS: Whole = Whole::new(0, 256);
    /// `limits.max_registrations`, `max_pending_handshakes`, `max_rate_limited_sources`.
    pub const TABLE_ENTRIES: Whole = Whole::new(1, 10_000_000);
    pub const ROUTES: Whole = Whole::new(1, 100_000_000);
    /// `timeouts.route_idle_secs` and `registration_secs`.
    pub const EXPIRY_SECS: Whole = Whole::new(10, 3600);
    pub const PENDING_HANDSHAKE_SECS: Whole = Whole::new(1, 300);
    /// Both token buckets' `per_second` and `burst`.
    pub const RATE: Whole = Whole::new(1, 1_000_000);
    pub const UNDER_LOAD: Whole = Whole::new(0, 10_000_000);
    pub const XDP_MAX_ROUTES: Whole = Whole::new(1, XDP_MAX_ROUTES_LIMIT as u64);

    pub fn buffer_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        BUFFER_BYTES.deserialize(d)
    }
    pub fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        BATCH_SIZE.deserialize(d)
    }
    pub fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        WORKERS.deserialize(d)
    }
    pub fn table_entries<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        TABLE_ENTRIES.deserialize(d)
    }
    pub fn routes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        ROUTES.deserialize(d)
    }
    pub fn expiry_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        EXPIRY_SECS.deserialize(d)
    }
    pub fn pending_handshake_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        PENDING_HANDSHAKE_SECS.deserialize(d)
    }
    pub fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        RATE.deserialize(d)
    }
    pub fn under_load<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        UNDER_LOAD.deserialize(d)
    }
    pub fn xdp_max_routes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        XDP_MAX_ROUTES.deserialize_optional(d)
    }
    /// `stun.alternate_port`.
    pub const PORT: Whole = Whole::new(0, 65535);
    pub fn optional_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        PORT.deserialize_optional(d)
    }
    pub fn optional_ip<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::net::IpAddr>, D::Error> {
        de::optional_ip(d)
    }

    pub fn backend<'de, D: Deserializer<'de>>(d: D) -> Result<BackendChoice, D::Error> {
        de::choice(
            d,
            &[
                ("auto", BackendChoice::Auto),
                ("io_uring", BackendChoice::IoUring),
                ("epoll", BackendChoice::Epoll),
            ],
        )
    }
    pub fn xdp_mode<'de, D: Deserializer<'de>>(d: D) -> Result<XdpModeChoice, D::Error> {
        de::choice(
            d,
            &[
                ("native", XdpModeChoice::Native),
                ("skb", XdpModeChoice::Skb),
            ],
        )
    }

    const LOG: &str = "a log filter such as info or lanrage_relay=debug,info";
    pub fn log<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        de::text(d, LOG, check_log)
    }
    pub fn check_log(text: &str) -> Result<(), String> {
        match tracing_subscriber::EnvFilter::try_new(text) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("must be {LOG} ({e}), got {text:?}")),
        }
    }

    const KEY_FILE: &str = "a file path";
    pub fn private_key_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        de::optional_path(d, KEY_FILE, check_key_file)
    }
    const RELAY_NAME: &str =
        "a relay name: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-' (e.g. eu1)";
    pub fn relay_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        de::text(d, RELAY_NAME, check_relay_name)
    }
    pub fn check_relay_name(name: &str) -> Result<(), String> {
        lanrage_proto::join_code::RelayName::new(name)
            .map(|_| ())
            .map_err(|_| format!("must be {RELAY_NAME}, got {name:?}"))
    }

    const PARTY_DATABASE: &str = "a file path for the party database (SQLite)";
    pub fn party_database<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        de::optional_path(d, PARTY_DATABASE, check_party_database)
    }
    pub fn check_party_database(text: &str) -> Result<(), String> {
        if text.is_empty() {
            return Err(format!("must be {PARTY_DATABASE}, got \"\""));
        }
        Ok(())
    }

    pub fn check_key_file(text: &str) -> Result<(), String> {
        if text.is_empty() {
            return Err(format!("must be {KEY_FILE}, got \"\""));
        }
        Ok(())
    }

    const INTERFACE: &str =
        "a network interface name such as eth0 (1 to 15 characters, no '/', ':' or spaces)";
    pub fn interface<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        de::text(d, INTERFACE, check_interface)
    }
    pub fn check_interface(name: &str) -> Result<(), String> {
        // IFNAMSIZ is 16 with the terminating NUL.
        let ok = !name.is_empty()
            && name.len() <= 15
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if ok {
            Ok(())
        } else {
            Err(format!("must be {INTERFACE}, got {name:?}"))
        }
    }

    const PIN_PATH: &str = "an absolute path on a bpffs such as /sys/fs/bpf/lanrage, or null";
    pub fn pin_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        de::optional_path(d, PIN_PATH, check_pin_path)
    }
    pub fn check_pin_path(text: &str) -> Result<(), String> {
        if Path::new(text).is_absolute() {
            Ok(())
        } else {
            Err(format!("must be {PIN_PATH}, got {text:?}"))
        }
    }
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

    /// The field an error message names first (messages start with it).
    fn invalid_field(text: &str) -> String {
        let message = match parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {text:?}"),
        };
        let rest = message
            .strip_prefix("config file test.yaml: ")
            .unwrap_or_else(|| panic!("{message}"));
        rest.split(' ').next().unwrap_or_default().to_owned()
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
        assert!(
            matches!(
                err,
                ConfigError::Yaml {
                    location: Some((1, 9)),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Every kind of mistake: the message names the field by its dotted
    /// path, says what is allowed in words, gives the line, and never shows
    /// a Rust type or serde's vocabulary.
    #[test]
    fn config_errors_name_the_field_say_what_is_allowed_and_give_the_line() {
        let cases: &[(&str, &[&str])] = &[
            // Unknown fields, at the top level (line 1 column 1 too) and nested.
            ("listen_addr: 1\n", &["listen_addr is not a known field", "`listen`", "at line 1 column 1"]),
            ("log: info\nlisten_adr: 1\n", &["listen_adr is not a known field", "at line 2 column 1"]),
            ("limits:\n  max_routs: 3\n", &["limits.max_routs is not a known field", "`max_routes`", "at line 2 column 3"]),
            ("xdp: { interface: eth0, pinpath: /x }\n", &["xdp.pinpath is not a known field", "`pin_path`"]),
            // Whole numbers: wrong shape, negative, fraction, huge, out of range.
            ("batch_size: lots\n", &["batch_size must be a whole number from 1 to 1024, got \"lots\" at line 1 column 13"]),
            ("batch_size: -1\n", &["batch_size must be a whole number from 1 to 1024, got -1"]),
            ("batch_size: 1.5\n", &["batch_size must be a whole number from 1 to 1024, got 1.5"]),
            ("batch_size: 99999999999999999999999999\n", &["batch_size must be a whole number from 1 to 1024, got 99999999999999999999999999"]),
            ("batch_size: 340282366920938463463374607431768211456\n", &["batch_size must be a whole number from 1 to 1024"]),
            ("batch_size:\n", &["batch_size must be a whole number from 1 to 1024, got nothing"]),
            ("batch_size: [1]\n", &["batch_size must be a whole number from 1 to 1024, got a list"]),
            ("batch_size: 0\n", &["batch_size must be a whole number from 1 to 1024, got 0 at line 1 column 13"]),
            ("workers: true\n", &["workers must be a whole number from 0 to 256, got true"]),
            ("socket:\n  recv_buffer_bytes: 10\n", &["socket.recv_buffer_bytes must be a whole number from 4096 to 1073741824, got 10 at line 2 column 22"]),
            ("limits: { max_registrations: 0 }\n", &["limits.max_registrations must be a whole number from 1 to 10000000"]),
            ("timeouts: { route_idle_secs: -5 }\n", &["timeouts.route_idle_secs must be a whole number from 10 to 3600, got -5"]),
            ("handshake_rate_limit:\n  burst: 5000000000\n", &["handshake_rate_limit.burst must be a whole number from 1 to 1000000, got 5000000000 at line 2"]),
            ("hint_rate_limit: { per_second: x }\n", &["hint_rate_limit.per_second must be a whole number from 1 to 1000000"]),
            ("under_load_handshakes_per_second: ~\n", &["under_load_handshakes_per_second must be a whole number from 0 to 10000000"]),
            ("xdp: { interface: eth0, max_routes: -1 }\n", &["xdp.max_routes must be a whole number from 1 to 1048576, got -1"]),
            // Sections that are not mappings.
            ("limits: 5\n", &["limits must be a mapping with max_registrations", "got 5 at line 1 column 9"]),
            ("socket: [1]\n", &["socket must be a mapping with recv_buffer_bytes", "got a list"]),
            ("timeouts: x\n", &["timeouts must be a mapping with route_idle_secs"]),
            ("handshake_rate_limit: 1\n", &["handshake_rate_limit must be a mapping with per_second and burst"]),
            ("xdp: 5\n", &["xdp must be a mapping with interface (required)", "or null, got 5"]),
            ("- a\n- b\n", &["the config file must be a mapping of relay settings", "got a list"]),
            ("xdp: {}\n", &["xdp.interface is required but missing"]),
            // Words, addresses, booleans, text.
            ("backend: turbo\n", &["backend must be one of auto, io_uring, epoll, got \"turbo\" at line 1 column 10"]),
            ("backend: [a]\n", &["backend must be one of auto, io_uring, epoll, got a list"]),
            ("xdp: { interface: eth0, mode: turbo }\n", &["xdp.mode must be one of native, skb, got \"turbo\""]),
            ("gso: yes\n", &["gso must be true or false, got \"yes\" at line 1 column 6"]),
            ("listen: localhost:80\n", &["listen must be an IP address and port such as 0.0.0.0:51888", "host names are not resolved", "got \"localhost:80\" at line 1 column 9"]),
            ("listen: 5\n", &["listen must be an IP address and port"]),
            ("metrics_listen: nope\n", &["metrics_listen must be an IP address and port", "at line 1 column 17"]),
            ("private_key_file: [a]\n", &["private_key_file must be a file path, got a list"]),
            ("private_key_file: \"\"\n", &["private_key_file must be a file path, got \"\""]),
            ("log: [a]\n", &["log must be a log filter such as info"]),
            ("log: \"foo=bar=baz\"\n", &["log must be a log filter such as info", "got \"foo=bar=baz\" at line 1 column 6"]),
            ("xdp: { interface: \"a/b\" }\n", &["xdp.interface must be a network interface name", "got \"a/b\" at line 1 column 19"]),
            ("xdp: { interface: eth0, pin_path: bpf/lr }\n", &["xdp.pin_path must be an absolute path on a bpffs", "got \"bpf/lr\""]),
            // Two fields together (checked after parsing: no line to give).
            ("listen: \"[2001:db8::1]:51888\"\nxdp: { interface: eth0 }\n", &["listen must be an IPv4 address or \"[::]:PORT\" when xdp is set"]),
            // YAML syntax: libyaml's words and lines, and the line itself.
            ("listen: [::]:51888\n", &["at line 1 column 10", "line 1 is `listen: [::]:51888`"]),
        ];
        for (text, fragments) in cases {
            let message = match parse(text) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted {text:?}"),
            };
            assert!(message.starts_with("config file test.yaml: "), "{message}");
            for fragment in *fragments {
                assert!(
                    message.contains(fragment),
                    "{text:?}: {message:?} lacks {fragment:?}"
                );
            }
            assert_no_rust_words(&message);
        }
    }

    /// Fails if `message` shows a Rust type name or serde's own wording.
    fn assert_no_rust_words(message: &str) {
        const TYPES: [&str; 26] = [
            "usize",
            "isize",
            "u8",
            "u16",
            "u32",
            "u64",
            "u128",
            "i8",
            "i16",
            "i32",
            "i64",
            "i128",
            "f32",
            "f64",
            "bool",
            "String",
            "PathBuf",
            "SocketAddr",
            "Option",
            "struct",
            "enum",
            "Limits",
            "SocketConfig",
            "Timeouts",
            "XdpConfig",
            "BackendChoice",
        ];
        for word in message.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
            assert!(!TYPES.contains(&word), "{message:?} shows {word:?}");
        }
        for phrase in [
            "invalid type",
            "invalid value",
            "unit value",
            "as u128",
            "YAML tag",
        ] {
            assert!(!message.contains(phrase), "{message:?} shows {phrase:?}");
        }
    }

    /// A config built in code gets the parser's rules from `validate`.
    #[test]
    fn validate_applies_the_parsers_rules() {
        let config = Config {
            batch_size: 0,
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(InvalidField {
                field: "batch_size",
                reason: "must be a whole number from 1 to 1024, got 0".to_owned(),
            })
        );
        let config = Config {
            log: "foo=bar=baz".to_owned(),
            ..Config::default()
        };
        assert_eq!(config.validate().map_err(|e| e.field), Err("log"));
        let config = Config {
            xdp: Some(XdpConfig {
                interface: "eth0".to_owned(),
                mode: XdpModeChoice::Native,
                pin_path: Some(PathBuf::from("relative")),
                max_routes: None,
            }),
            ..Config::default()
        };
        assert_eq!(config.validate().map_err(|e| e.field), Err("xdp.pin_path"));
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
            "config file test.yaml: limits.max_routes must be a whole number from 1 to \
             100000000, got 0 at line 2 column 15"
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
            "config file test.yaml: xdp.max_routes must be a whole number from 1 to 1048576, \
             got 0 at line 1 column 37"
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
        assert!(!r.route_commands, "no XDP, nobody to apply them");
        assert_eq!(
            r.stun.rate_limit,
            RateLimit {
                per_second: 20,
                burst: 100
            }
        );
        assert_eq!(
            r.stun.sockets,
            StunSockets::default(),
            "known after binding"
        );
    }

    #[test]
    fn stun_section_parses() {
        let config = parse(
            "listen: \"192.0.2.1:3478\"\nstun:\n  alternate_port: 3479\n  alternate_address: 192.0.2.2\n  rate_limit: { per_second: 5 }\n",
        )
        .expect("parse");
        assert_eq!(config.stun.alternate_port, Some(3479));
        assert_eq!(
            config.stun.alternate_address,
            Some("192.0.2.2".parse().expect("ip"))
        );
        assert_eq!(config.stun.rate_limit.per_second, 5);
        assert_eq!(config.stun.rate_limit.burst, 100);
        let config = parse("stun: { alternate_port: 0 }").expect("port 0");
        assert_eq!(config.stun.alternate_port, Some(0));
    }

    #[test]
    fn stun_errors_name_the_field_in_words() {
        let cases = [
            ("stun: { alternate_port: 70000 }", "stun.alternate_port"),
            ("stun: { alternate_port: http }", "stun.alternate_port"),
            ("listen: \"0.0.0.0:4000\"\nstun: { alternate_port: 4000 }", "stun.alternate_port"),
            ("stun: { alternate_address: nowhere }", "stun.alternate_address"),
            ("stun: { alternate_address: \"192.0.2.2:1\" }", "stun.alternate_address"),
            (
                "listen: \"192.0.2.1:1\"\nstun: { alternate_address: 192.0.2.2 }",
                "stun.alternate_address",
            ),
            (
                "stun: { alternate_port: 2, alternate_address: 192.0.2.2 }",
                "stun.alternate_address",
            ),
            (
                "listen: \"192.0.2.1:1\"\nstun: { alternate_port: 2, alternate_address: \"2001:db8::2\" }",
                "stun.alternate_address",
            ),
            (
                "listen: \"192.0.2.1:1\"\nstun: { alternate_port: 2, alternate_address: 192.0.2.1 }",
                "stun.alternate_address",
            ),
            ("stun: { rate_limit: { burst: 0 } }", "stun.rate_limit.burst"),
            ("stun: { alternate_prot: 1 }", "stun.alternate_prot"),
        ];
        for (text, field) in cases {
            assert_eq!(invalid_field(text), field, "{text}");
        }
        let message = parse("stun: { alternate_port: 2, alternate_address: 192.0.2.2 }")
            .expect_err("unspecified listen")
            .to_string();
        assert_eq!(
            message,
            "config file test.yaml: stun.alternate_address needs listen to name one address, \
             not 0.0.0.0: the relay answers change-address requests from the other address, \
             so it must know which one is primary"
        );
        let message = parse("stun: { alternate_address: nowhere }")
            .expect_err("not an ip")
            .to_string();
        assert!(
            message.contains("must be an IP address such as 203.0.113.2")
                && message.contains("got \"nowhere\" at line 1"),
            "{message}"
        );
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
