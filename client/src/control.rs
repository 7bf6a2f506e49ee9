//! The local control socket: how `lanrage status` asks the running client.
//!
//! A Unix stream socket (mode 0600: only this user, or root). One request
//! per connection: the command writes one line of JSON, the daemon answers
//! with one line of JSON and closes. The daemon never blocks on a client:
//! connections are non-blocking, at most [`MAX_CONNECTIONS`] at once, each
//! request at most [`MAX_REQUEST`] bytes.

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lanrage_client_core::Status;
use mio::net::{UnixListener, UnixStream};
use serde::{Deserialize, Serialize};

pub const MAX_CONNECTIONS: usize = 8;
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// One ping to the peer of this name; the answer waits for its pong.
    Ping {
        peer: String,
    },
    /// A NAT discovery now; the answer waits for its report.
    Netcheck,
    /// Create a party (on `relay`, or the nearest registered one); the
    /// answer waits for the home relay's, with the join code.
    PartyCreate {
        name: String,
        relay: Option<String>,
        #[serde(default)]
        expires_in: u32,
        #[serde(default)]
        max_uses: u16,
    },
    /// Join the party of this code.
    PartyJoin {
        code: String,
    },
    PartyLeave,
    /// Another join code for our party (owner only).
    PartyInvite {
        #[serde(default)]
        expires_in: u32,
        #[serde(default)]
        max_uses: u16,
    },
    /// Remove a member (owner only).
    PartyKick {
        member: String,
    },
    /// The party and its members, as the last roster said.
    PartyMembers,
}

/// The answer to a party verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyReplyRow {
    /// `ok`, or what the relay said was wrong.
    pub status: String,
    pub ok: bool,
    pub party: u64,
    /// A new join code (create, invite).
    pub code: Option<String>,
}

/// How long a party verb waits for the home relay's answer (three tries).
pub const PARTY_TIMEOUT: Duration = Duration::from_secs(3);

/// `lanrage party members` and the `party` of `status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyRow {
    pub name: String,
    /// The home relay, as this client's relay list calls it.
    pub relay: String,
    pub id: u64,
    pub version: u64,
    pub members: Vec<MemberRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub name: String,
    pub address: String,
    pub owner: bool,
    pub public_key: String,
    /// This client.
    pub me: bool,
}

impl PartyRow {
    pub fn from_membership(
        m: &lanrage_client_core::party::Membership,
        me: lanrage_proto::PeerKey,
    ) -> Self {
        Self {
            name: m.name.clone(),
            relay: m.relay.clone(),
            id: m.party,
            version: m.version,
            members: m
                .members
                .iter()
                .map(|p| MemberRow {
                    name: p.name.clone(),
                    address: p.ip.to_string(),
                    owner: p.owner,
                    public_key: p.key.to_string(),
                    me: p.key == me,
                })
                .collect(),
        }
    }

    /// What `lanrage party members` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "party {:?} on relay {} ({} members)

{:<20} {:<14} {:<6} {}
",
            self.name,
            self.relay,
            self.members.len(),
            "MEMBER",
            "ADDRESS",
            "OWNER",
            "PUBLIC KEY"
        );
        for m in &self.members {
            out.push_str(&format!(
                "{:<20} {:<14} {:<6} {}{}
",
                m.name,
                m.address,
                if m.owner { "yes" } else { "" },
                m.public_key,
                if m.me { "  (this PC)" } else { "" }
            ));
        }
        out
    }
}

/// `lanrage ping`'s answer to one ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    pub peer: String,
    /// `relay NAME`: the path the pong came back on.
    pub path: String,
    pub rtt_ms: f64,
}

/// How a request is answered: at once, or when the daemon has the answer
/// (a pong, a NAT report), matched by this id, within this long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Now(String),
    Later(u64, Duration),
}

/// How long a ping waits for its pong before the daemon says so.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a netcheck may take (three phases of 0.7 s, and room).
pub const NETCHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `lanrage netcheck`'s answer, and the `nat` of `status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatRow {
    /// The relay whose STUN answered.
    pub relay: String,
    pub udp: bool,
    pub reflexive: Option<String>,
    /// "none", "full cone", "restricted cone", "port-restricted cone",
    /// "symmetric" or "unknown".
    pub nat_type: String,
    /// RFC 4787 terms; null when it couldn't be told.
    pub mapping: Option<String>,
    pub filtering: Option<String>,
    pub hairpin: Option<bool>,
}

impl From<&lanrage_client_core::NatReport> for NatRow {
    fn from(r: &lanrage_client_core::NatReport) -> Self {
        Self {
            relay: r.relay.clone(),
            udp: r.udp,
            reflexive: r.reflexive.map(|a| a.to_string()),
            nat_type: r.nat_type().to_owned(),
            mapping: r.mapping.map(|m| m.as_str().to_owned()),
            filtering: r.filtering.map(|f| f.as_str().to_owned()),
            hairpin: r.hairpin,
        }
    }
}

/// `lanrage netcheck --json`: the NAT report and the relays' latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetcheckReply {
    pub nat: NatRow,
    pub relays: Vec<RelayRow>,
}

impl NetcheckReply {
    /// What `lanrage netcheck` prints, as `tailscale netcheck` does.
    pub fn render(&self) -> String {
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        let n = &self.nat;
        let mut out = format!(
            "Report (STUN from relay {}):\n\
             \t* UDP: {}\n\
             \t* Reflexive address: {}\n\
             \t* NAT: {}\n\
             \t* Mapping: {}\n\
             \t* Filtering: {}\n\
             \t* Hairpinning: {}\n\
             \t* Relay latency:\n",
            n.relay,
            if n.udp { "true" } else { "false" },
            n.reflexive.as_deref().unwrap_or("unknown"),
            n.nat_type,
            n.mapping.as_deref().unwrap_or("unknown"),
            n.filtering.as_deref().unwrap_or("unknown"),
            yes_no(n.hairpin),
        );
        for r in &self.relays {
            let rtt = r
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
            out.push_str(&format!("\t\t- {}: {rtt}\n", r.name));
        }
        out
    }
}

/// `lanrage status --json`, one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Our virtual IP, or `none` before joining a party.
    pub address: String,
    /// The party we are in (null: none, or peers configured by hand).
    pub party: Option<PartyRow>,
    pub relays: Vec<RelayRow>,
    pub peers: Vec<PeerRow>,
    /// What the last NAT discovery found (null before the first).
    pub nat: Option<NatRow>,
    /// Counted drops by reason.
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRow {
    pub name: String,
    pub address: String,
    pub registered: bool,
    pub reachable: bool,
    pub reflexive: Option<String>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: f64,
    /// Percent of recent probes unanswered.
    pub loss_percent: f64,
    pub in_use: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    pub name: String,
    pub address: String,
    /// `relay NAME`, or `none` before the first handshake.
    pub path: String,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: f64,
    pub loss_percent: f64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// LAN discovery: broadcast and multicast packets copied to the peer,
    /// and copies received from it.
    pub discovery_sent: u64,
    pub discovery_received: u64,
    /// Seconds since the last WireGuard handshake.
    pub last_handshake_secs: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl StatusReply {
    pub fn new(status: Status, me: lanrage_proto::PeerKey) -> Self {
        let party = status
            .party
            .as_ref()
            .map(|m| PartyRow::from_membership(m, me));
        Self {
            party,
            ..Self::from(status)
        }
    }
}

impl From<Status> for StatusReply {
    fn from(status: Status) -> Self {
        Self {
            party: None,
            address: status
                .virtual_ip
                .map_or_else(|| "none".to_owned(), |ip| ip.to_string()),
            relays: status
                .relays
                .into_iter()
                .map(|r| RelayRow {
                    name: r.name,
                    address: r.addr.to_string(),
                    registered: r.registered,
                    reachable: r.reachable,
                    reflexive: r.reflexive.map(|a| a.to_string()),
                    rtt_ms: r.rtt.map(ms),
                    jitter_ms: ms(r.jitter),
                    loss_percent: r.loss * 100.0,
                    in_use: r.in_use,
                })
                .collect(),
            peers: status
                .peers
                .into_iter()
                .map(|p| PeerRow {
                    name: p.name,
                    address: p.virtual_ip.to_string(),
                    path: p
                        .path
                        .map_or_else(|| "none".to_owned(), |path| path.to_string()),
                    rtt_ms: p.rtt.map(ms),
                    jitter_ms: ms(p.jitter),
                    loss_percent: f64::from(p.loss) * 100.0,
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                    discovery_sent: p.discovery_sent,
                    discovery_received: p.discovery_received,
                    last_handshake_secs: p.since_last_handshake.map(|d| d.as_secs_f64()),
                })
                .collect(),
            nat: status.nat.as_ref().map(NatRow::from),
            drops: status
                .drops
                .into_iter()
                .map(|(reason, n)| (reason.to_owned(), n))
                .collect(),
        }
    }
}

impl StatusReply {
    /// The table `lanrage status` prints.
    pub fn render(&self) -> String {
        let opt_ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
        let mut out = format!("address {}\n", self.address);
        match &self.party {
            Some(p) => out.push_str(&format!(
                "party {:?} on relay {}, {} members\n\n",
                p.name,
                p.relay,
                p.members.len()
            )),
            None => out.push('\n'),
        }
        out.push_str(&format!(
            "{:<12} {:<22} {:<10} {:>10} {:>9} {:>6}  {}\n",
            "RELAY", "ADDRESS", "STATE", "RTT", "JITTER", "LOSS", "IN USE"
        ));
        for r in &self.relays {
            let state = match (r.registered, r.reachable) {
                (true, true) => "registered",
                (_, false) => "down",
                (false, true) => "joining",
            };
            out.push_str(&format!(
                "{:<12} {:<22} {:<10} {:>10} {:>6.1} ms {:>5.0}%  {}\n",
                r.name,
                r.address,
                state,
                opt_ms(r.rtt_ms),
                r.jitter_ms,
                r.loss_percent,
                if r.in_use { "yes" } else { "no" }
            ));
        }
        out.push_str(&format!(
            "\n{:<12} {:<15} {:<28} {:>10} {:>9} {:>6} {:>10} {:>10} {:>13} {:>14}\n",
            "PEER",
            "ADDRESS",
            "PATH",
            "RTT",
            "JITTER",
            "LOSS",
            "SENT",
            "RECEIVED",
            "LAN OUT/IN",
            "HANDSHAKE"
        ));
        for p in &self.peers {
            let handshake = p
                .last_handshake_secs
                .map_or_else(|| "never".to_owned(), |s| format!("{s:.0} s ago"));
            out.push_str(&format!(
                "{:<12} {:<15} {:<28} {:>10} {:>6.1} ms {:>5.0}% {:>10} {:>10} {:>13} {:>14}\n",
                p.name,
                p.address,
                p.path,
                opt_ms(p.rtt_ms),
                p.jitter_ms,
                p.loss_percent,
                p.tx_bytes,
                p.rx_bytes,
                format!("{}/{}", p.discovery_sent, p.discovery_received),
                handshake
            ));
        }
        if let Some(nat) = &self.nat {
            out.push_str(&format!(
                "\nNAT {} (mapping {}, filtering {}), reflexive {} via {}\n",
                nat.nat_type,
                nat.mapping.as_deref().unwrap_or("unknown"),
                nat.filtering.as_deref().unwrap_or("unknown"),
                nat.reflexive.as_deref().unwrap_or("unknown"),
                nat.relay
            ));
        }
        let drops: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        if !drops.is_empty() {
            out.push_str(&format!("\ndropped: {}\n", drops.join(", ")));
        }
        out
    }
}

/// Asks the daemon at `path`; waits at most `timeout`. An `{"error": …}`
/// answer becomes the error.
pub fn ask<T: serde::de::DeserializeOwned>(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let mut stream = StdUnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the lanrage client at {} (is `lanrage up` running, as this user?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream.take(1 << 20))
        .read_line(&mut reply)
        .context("no answer from the lanrage client")?;
    let value: serde_json::Value =
        serde_json::from_str(&reply).context("the lanrage client's answer is not understood")?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{error}");
    }
    serde_json::from_value(value).context("the lanrage client's answer is not understood")
}

/// The daemon's side: a listener and its open connections.
pub struct Server {
    pub listener: UnixListener,
    path: PathBuf,
    connections: Vec<Connection>,
}

struct Connection {
    stream: UnixStream,
    request: Vec<u8>,
    since: Instant,
    /// Answered later: the id its answer will come with, since when, and
    /// for how long.
    waiting: Option<(u64, Instant, Duration)>,
}

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Server {
    /// Binds `path`. A stale socket file (nobody answers on it) is replaced;
    /// a live one means another client is running, which is an error.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if StdUnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another lanrage client is running (it answers on {}); stop it first",
                path.display()
            );
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove stale {}", path.display()))
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to this user", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            connections: Vec::new(),
        })
    }

    /// Accepts, reads and answers whatever is ready; never blocks.
    /// `handle` answers a parsed request now, or says it will later
    /// ([`Server::complete`]).
    pub fn poll(&mut self, now: Instant, mut handle: impl FnMut(Request) -> Answer) {
        // Bounded by the backlog: each accept takes one.
        for _ in 0..64 {
            match self.listener.accept() {
                Ok((stream, _)) if self.connections.len() < MAX_CONNECTIONS => {
                    self.connections.push(Connection {
                        stream,
                        request: Vec::new(),
                        since: now,
                        waiting: None,
                    });
                }
                Ok(_) => {} // over the limit: dropped, the command sees EOF
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "control socket accept failed");
                    break;
                }
            }
        }
        let mut done = Vec::new();
        for (i, conn) in self.connections.iter_mut().enumerate() {
            if let Some((_, since, within)) = conn.waiting {
                if now.saturating_duration_since(since) > within {
                    let why = format!("no answer within {} s", within.as_secs());
                    send_line(&mut conn.stream, &error_line(&why));
                    done.push(i);
                }
                continue;
            }
            let mut chunk = [0u8; 512];
            let finished = loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => {
                        conn.request.extend_from_slice(&chunk[..n]);
                        if conn.request.contains(&b'\n') || conn.request.len() > MAX_REQUEST {
                            let line = conn.request.split(|b| *b == b'\n').next().unwrap_or(&[]);
                            match serde_json::from_slice::<Request>(line) {
                                Ok(request) => match handle(request) {
                                    Answer::Now(reply) => send_line(&mut conn.stream, &reply),
                                    Answer::Later(id, within) => {
                                        conn.waiting = Some((id, now, within));
                                        break false;
                                    }
                                },
                                Err(e) => send_line(&mut conn.stream, &error_line(&e.to_string())),
                            }
                            break true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        break now.saturating_duration_since(conn.since) > REQUEST_TIMEOUT
                    }
                    Err(_) => break true,
                }
            };
            if finished {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            self.connections.swap_remove(i);
        }
    }

    /// The later answer for the connection waiting on `id`, if any still does.
    pub fn complete(&mut self, id: u64, reply: &str) {
        if let Some(i) = self
            .connections
            .iter()
            .position(|c| c.waiting.is_some_and(|(w, _, _)| w == id))
        {
            let mut conn = self.connections.swap_remove(i);
            send_line(&mut conn.stream, reply);
        }
    }

    /// Whether a connection waits for a request (the loop polls again soon).
    pub fn has_pending(&self) -> bool {
        !self.connections.is_empty()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `{"error": why}`, as a line of JSON.
pub fn error_line(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

fn send_line(stream: &mut UnixStream, line: &str) {
    let mut line = line.to_owned();
    line.push('\n');
    // Small enough for the socket buffer; a client that doesn't read just
    // loses its answer.
    let _ = stream.write_all(line.as_bytes());
}
