//! The client's configuration file (YAML), its defaults and its checks.
//! Every field is documented in `docs/client.md`; unknown fields are
//! refused, and every error names the field in the user's terms.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use lanrage_proto::PeerKey;
use serde::Deserialize;

/// The virtual LAN every address must be in.
pub const NETWORK: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 0);
pub const PREFIX_LEN: u8 = 16;
/// The most peers a relay registration can carry.
pub const MAX_PEERS: usize = lanrage_proto::control::MAX_CONSENT;

/// The default TUN device name.
pub const DEFAULT_INTERFACE: &str = "lanrage0";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This PC's private key (from `lanrage keygen`). Relative paths are
    /// relative to the config file's directory. Default: `private.key`
    /// beside the config file.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// This PC's address on the virtual LAN, in 10.66.0.0/16: required
    /// with `peers`; in a party the home relay assigns it. Default none.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// This PC's name in parties. Default: the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the client remembers its party between runs (JSON). Relative
    /// paths are relative to the config file's directory. Default:
    /// `party.json` beside the config file.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// The UDP port to send and receive on; 0 (the default) lets the system choose.
    #[serde(default)]
    pub listen_port: u16,
    /// The TUN device's name. Default `lanrage0`.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Where `lanrage status` reaches the running client. Default: see
    /// [`default_control_socket`].
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// The relays to register with; at least one.
    pub relays: Vec<Relay>,
    /// The other PCs on the virtual LAN, configured by hand (like
    /// WireGuard's peers). Empty (the default): the party's roster says
    /// who they are (`lanrage party create` / `join`).
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Whether to look for direct paths to peers (NAT traversal). Default
    /// true; false keeps every peer without an `endpoint` on a relay.
    #[serde(default = "default_true")]
    pub direct_paths: bool,
    /// LAN game discovery: broadcast and multicast across the virtual LAN
    /// (`docs/lan-discovery.md`).
    #[serde(default)]
    pub lan_discovery: LanDiscovery,
}

fn default_true() -> bool {
    true
}

/// The most discovery packets per second (and burst) a member may be
/// allowed: past this, "LAN discovery" would be a flood generator.
pub const MAX_DISCOVERY_RATE: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanDiscovery {
    /// Route broadcast and multicast to the virtual LAN and copy them to
    /// every member. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Broadcast and multicast packets per second this PC sends, and
    /// accepts from each member, before dropping (counted). Default 100.
    #[serde(default = "default_discovery_rate")]
    pub packets_per_second: u32,
    /// How many may come at once above that rate. Default 100.
    #[serde(default = "default_discovery_rate")]
    pub burst: u32,
}

fn default_discovery_rate() -> u32 {
    100
}

impl Default for LanDiscovery {
    fn default() -> Self {
        Self {
            enabled: true,
            packets_per_second: default_discovery_rate(),
            burst: default_discovery_rate(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    pub name: String,
    /// `host:port` (an IP address; names are not resolved yet).
    pub address: SocketAddr,
    /// The relay's public key, as `lanrage-relay public-key` prints it.
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    /// The peer's public key, as its `lanrage keygen` printed it.
    pub public_key: String,
    /// The peer's address on the virtual LAN.
    pub address: Ipv4Addr,
    /// Where the peer's `lanrage` listens (`IP:PORT`; its `listen_port`
    /// must be set), as WireGuard's `Endpoint`: traffic goes there directly
    /// instead of through a relay, and direct traffic is accepted only from
    /// there, so both sides list each other's. Default: none (through the
    /// best relay).
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
}

fn default_interface() -> String {
    DEFAULT_INTERFACE.to_owned()
}

/// A configuration that can't be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}: {field}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// A checked configuration, keys decoded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub relay_keys: Vec<PeerKey>,
    pub peer_keys: Vec<PeerKey>,
}

impl Loaded {
    /// The private key file, resolved against the config file's directory.
    pub fn private_key_path(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match &self.config.private_key_file {
            Some(file) => dir.join(file),
            None => dir.join("private.key"),
        }
    }

    /// The party state file, resolved against the config file's directory.
    pub fn state_file(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match &self.config.state_file {
            Some(file) => dir.join(file),
            None => dir.join("party.json"),
        }
    }

    /// This PC's name in parties: `name`, else the host name.
    pub fn member_name(&self) -> String {
        self.config.name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .map_or_else(|| "pc".to_owned(), |h| h.chars().take(32).collect())
        })
    }

    pub fn control_socket(&self) -> PathBuf {
        self.config
            .control_socket
            .clone()
            .unwrap_or_else(default_control_socket)
    }
}

/// The config file used when none is given: `$XDG_CONFIG_HOME/lanrage/config.yaml`
/// (`~/.config/lanrage/config.yaml`), or `/etc/lanrage/client.yaml` for root.
pub fn default_path() -> PathBuf {
    if is_root() {
        return PathBuf::from("/etc/lanrage/client.yaml");
    }
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("lanrage")
        .join("config.yaml")
}

/// The control socket used when the config names none: `/run/lanrage.sock`
/// for root, else `$XDG_RUNTIME_DIR/lanrage.sock`, else one in the temp dir.
pub fn default_control_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/lanrage.sock");
    }
    dirs::runtime_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("lanrage.sock")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Reads and checks the config at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and checks config text (`path` only names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |field: String, problem: String| ConfigError::Invalid {
        path: path.to_owned(),
        field,
        problem,
    };
    if let Some(address) = config.address {
        check_address(address).map_err(|p| invalid("address".into(), p))?;
    } else if !config.peers.is_empty() {
        return Err(invalid(
            "address".into(),
            "required when peers are listed (this PC's address in 10.66.0.0/16);              without peers, a party's home relay assigns it"
                .into(),
        ));
    }
    if let Some(name) = &config.name {
        if name.is_empty() || name.len() > 32 || name.chars().any(char::is_control) {
            return Err(invalid(
                "name".into(),
                "1 to 32 bytes, without control characters".into(),
            ));
        }
    }
    if config.interface.is_empty() || config.interface.len() > 15 {
        return Err(invalid(
            "interface".into(),
            "a device name of 1 to 15 characters is needed (Linux's limit)".into(),
        ));
    }
    let discovery = config.lan_discovery;
    for (field, value) in [
        ("packets_per_second", discovery.packets_per_second),
        ("burst", discovery.burst),
    ] {
        if !(1..=MAX_DISCOVERY_RATE).contains(&value) {
            return Err(invalid(
                format!("lan_discovery.{field}"),
                format!("{value} is out of range: 1 to {MAX_DISCOVERY_RATE} packets (set lan_discovery.enabled: false to turn discovery off)"),
            ));
        }
    }
    if config.relays.is_empty() {
        return Err(invalid(
            "relays".into(),
            "at least one relay is needed (name, address, public_key)".into(),
        ));
    }
    let mut relay_keys = Vec::new();
    for (i, relay) in config.relays.iter().enumerate() {
        if relay.name.is_empty() {
            return Err(invalid(
                format!("relays[{i}].name"),
                "must not be empty".into(),
            ));
        }
        if config.relays[..i].iter().any(|r| r.name == relay.name) {
            return Err(invalid(
                format!("relays[{i}].name"),
                format!("another relay is already called {:?}", relay.name),
            ));
        }
        let key = parse_key(&relay.public_key)
            .map_err(|p| invalid(format!("relays[{i}].public_key"), p))?;
        relay_keys.push(key);
    }
    if config.peers.len() > MAX_PEERS {
        return Err(invalid(
            "peers".into(),
            format!(
                "{} peers listed; at most {MAX_PEERS} are allowed",
                config.peers.len()
            ),
        ));
    }
    let mut peer_keys: Vec<PeerKey> = Vec::new();
    for (i, peer) in config.peers.iter().enumerate() {
        if peer.name.is_empty() {
            return Err(invalid(
                format!("peers[{i}].name"),
                "must not be empty".into(),
            ));
        }
        if config.peers[..i].iter().any(|p| p.name == peer.name) {
            return Err(invalid(
                format!("peers[{i}].name"),
                format!("another peer is already called {:?}", peer.name),
            ));
        }
        let key = parse_key(&peer.public_key)
            .map_err(|p| invalid(format!("peers[{i}].public_key"), p))?;
        if peer_keys.contains(&key) {
            return Err(invalid(
                format!("peers[{i}].public_key"),
                "another peer already has this key".into(),
            ));
        }
        check_address(peer.address).map_err(|p| invalid(format!("peers[{i}].address"), p))?;
        if Some(peer.address) == config.address
            || config.peers[..i].iter().any(|p| p.address == peer.address)
        {
            return Err(invalid(
                format!("peers[{i}].address"),
                format!("{} is already used (each PC needs its own)", peer.address),
            ));
        }
        if let Some(endpoint) = peer.endpoint {
            check_endpoint(endpoint, &config)
                .map_err(|p| invalid(format!("peers[{i}].endpoint"), p))?;
        }
        peer_keys.push(key);
    }
    Ok(Loaded {
        config,
        path: path.to_owned(),
        relay_keys,
        peer_keys,
    })
}

fn parse_key(text: &str) -> Result<PeerKey, String> {
    PeerKey::from_base64(text.trim()).ok_or_else(|| {
        "not a public key: expected 44 characters of base64, as `lanrage keygen` or \
         `lanrage-relay public-key` prints"
            .to_owned()
    })
}

fn check_endpoint(endpoint: SocketAddr, config: &Config) -> Result<(), String> {
    if endpoint.ip().is_unspecified() || endpoint.ip().is_multicast() || endpoint.port() == 0 {
        return Err(format!(
            "{endpoint} is not an address a peer can listen on; give its IP address and its \
             listen_port, such as 192.0.2.7:51900"
        ));
    }
    if config.relays.iter().any(|r| r.address == endpoint) {
        return Err(format!("{endpoint} is a relay's address, not a peer's"));
    }
    if config
        .peers
        .iter()
        .filter(|p| p.endpoint == Some(endpoint))
        .count()
        > 1
    {
        return Err(format!("{endpoint} is given for more than one peer"));
    }
    Ok(())
}

fn check_address(address: Ipv4Addr) -> Result<(), String> {
    let [a, b, c, d] = address.octets();
    if [a, b] != [10, 66] {
        return Err(format!(
            "{address} is outside the virtual LAN; use an address in 10.66.0.0/16"
        ));
    }
    if [c, d] == [0, 0] || [c, d] == [255, 255] {
        return Err(format!(
            "{address} is the network's own or its broadcast address; use another in 10.66.0.0/16"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dCO3UlqKUGkyNkmh5w4hWkEaKFFWo3Xp3rLmCMWnKXI=";
    const KEY2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn good() -> String {
        format!(
            "address: 10.66.0.1\nrelays:\n  - name: fra\n    address: 192.0.2.1:51820\n    \
             public_key: {KEY}\npeers:\n  - name: bob\n    public_key: {KEY2}\n    address: 10.66.0.2\n"
        )
    }

    fn error(text: &str) -> String {
        parse(text, Path::new("client.yaml"))
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_minimal_config_gets_its_defaults() {
        let loaded = parse(&good(), Path::new("/etc/lanrage/client.yaml")).expect("valid");
        assert_eq!(loaded.config.interface, "lanrage0");
        assert_eq!(loaded.config.listen_port, 0);
        assert_eq!(
            loaded.private_key_path(),
            PathBuf::from("/etc/lanrage/private.key")
        );
        assert_eq!(loaded.peer_keys.len(), 1);
        assert_eq!(loaded.config.peers[0].endpoint, None);
        let direct = good() + "    endpoint: 192.0.2.7:51900\n";
        let loaded = parse(&direct, Path::new("client.yaml")).expect("valid");
        assert_eq!(
            loaded.config.peers[0].endpoint,
            Some("192.0.2.7:51900".parse().expect("address"))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let text = good().replace("address: 10.66.0.1", "address: 10.67.0.1");
        assert!(error(&text).contains("address: 10.67.0.1 is outside the virtual LAN"));
        let text = good().replace(KEY2, "nope");
        assert!(error(&text).contains("peers[0].public_key: not a public key"));
        let text = good().replace("address: 10.66.0.2", "address: 10.66.0.1");
        assert!(error(&text).contains("peers[0].address: 10.66.0.1 is already used"));
        let text = good() + "colour: red\n";
        assert!(
            error(&text).contains("unknown field `colour`"),
            "{}",
            error(&text)
        );
        let text = "address: 10.66.0.1\nrelays: []\n";
        assert!(error(text).contains("relays: at least one relay"));
        let text = good().replace("address: 10.66.0.1", "address: 10.66.255.255");
        assert!(error(&text).contains("broadcast"));
        let text = good() + "    endpoint: 0.0.0.0:51900\n";
        assert!(
            error(&text).contains("peers[0].endpoint: 0.0.0.0:51900 is not an address"),
            "{}",
            error(&text)
        );
        let text = good() + "    endpoint: 192.0.2.1:51820\n";
        assert!(error(&text).contains("peers[0].endpoint: 192.0.2.1:51820 is a relay's address"));
        let text = good() + "    endpoint: bob.example:51900\n";
        assert!(
            error(&text).contains("peers[0].endpoint"),
            "{}",
            error(&text)
        );
        let text = good() + "lan_discovery: {packets_per_second: 0}\n";
        assert!(
            error(&text).contains("lan_discovery.packets_per_second: 0 is out of range"),
            "{}",
            error(&text)
        );
        let text = good() + "lan_discovery: {burst: 1000000}\n";
        assert!(error(&text).contains("lan_discovery.burst: 1000000 is out of range"));
    }

    #[test]
    fn lan_discovery_is_on_by_default_and_can_be_tuned() {
        let loaded = parse(&good(), Path::new("client.yaml")).expect("valid");
        assert_eq!(loaded.config.lan_discovery, LanDiscovery::default());
        assert!(loaded.config.lan_discovery.enabled);
        let text = good() + "lan_discovery:\n  enabled: false\n  packets_per_second: 20\n";
        let loaded = parse(&text, Path::new("client.yaml")).expect("valid");
        assert!(!loaded.config.lan_discovery.enabled);
        assert_eq!(loaded.config.lan_discovery.packets_per_second, 20);
        assert_eq!(loaded.config.lan_discovery.burst, 100);
    }
}
