//! `lanrage keygen | up | status | netcheck | ping | party`: a thin layer
//! over the config, the engine and the driver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lanrage_client_core::{DiscoveryConfig, Engine, EngineConfig, PeerSpec, RelaySpec};
use rand::RngCore as _;

use crate::config::{self, Loaded};
use crate::control::{
    self, NetcheckReply, PartyReplyRow, PartyRow, PingReply, Request, StatusReply,
};
use crate::driver;

/// LANrage: friends' PCs on one virtual LAN, so LAN games just work.
#[derive(Debug, Parser)]
#[command(name = "lanrage", version)]
pub struct Cli {
    /// The config file (default: ~/.config/lanrage/config.yaml, or
    /// /etc/lanrage/client.yaml as root).
    #[arg(long, global = true, env = "LANRAGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make this PC's private key (next to the config, or at --key) and
    /// print its public key, which your friends put in their configs.
    /// Refuses to replace an existing key.
    Keygen {
        /// Where to write the key (default: the config's private_key_file).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Run in the foreground until Ctrl-C or SIGTERM; the TUN device goes
    /// away with it.
    Up,
    /// Ask the running client about its relays and peers.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Find out what NAT this PC is behind, through the running client's
    /// socket and a relay's STUN (like `tailscale netcheck`): UDP, the
    /// reflexive address, mapping and filtering behaviour, hairpinning, and
    /// each relay's latency.
    Netcheck {
        /// Print JSON instead of a report.
        #[arg(long)]
        json: bool,
    },
    /// Parties: friends join this PC's virtual LAN with a code, no keys or
    /// addresses to exchange (the client must be running: `lanrage up`).
    Party {
        #[command(subcommand)]
        command: PartyCommand,
    },
    /// Ping a peer through its path, like `tailscale ping`: each pong with
    /// the path it took and its round-trip time.
    Ping {
        /// The peer's name in the config.
        peer: String,
        /// How many pings, one a second.
        #[arg(long, short = 'c', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartyCommand {
    /// Create a party on the nearest relay (or --relay) and print its join
    /// code for your friends.
    Create {
        /// The party's name. Default "LAN party".
        #[arg(long, default_value = "LAN party")]
        name: String,
        /// The relay to host it (a name from the config's relays).
        #[arg(long)]
        relay: Option<String>,
        #[command(flatten)]
        limits: Limits,
    },
    /// Join the party of a code (XXXX-XXXX-XXXX-XXXX@relay).
    Join { code: String },
    /// Leave the party: its members can no longer reach this PC.
    Leave,
    /// Print another join code (the owner only).
    Invite {
        #[command(flatten)]
        limits: Limits,
    },
    /// Remove a member from the party (the owner only).
    Kick {
        /// The member's name, as `lanrage party members` lists it.
        member: String,
    },
    /// List the party's members and their addresses.
    Members {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What a new join code admits.
#[derive(Debug, clap::Args)]
pub struct Limits {
    /// The code stops working after this many hours (default: never).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8784))]
    pub expires_hours: Option<u32>,
    /// The code admits this many joins (default: any number).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_uses: Option<u16>,
}

impl Limits {
    fn seconds(&self) -> (u32, u16) {
        (
            self.expires_hours.map_or(0, |h| h * 3600),
            self.max_uses.unwrap_or(0),
        )
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanrage: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config.clone().unwrap_or_else(config::default_path);
    match cli.command {
        Command::Keygen { key } => {
            let path = match key {
                Some(path) => path,
                None => config_path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("private.key"),
            };
            let secret = lanrage_keyfile::create(&path)?;
            eprintln!("private key written to {}", path.display());
            println!("{}", lanrage_keyfile::public_key(&secret));
            Ok(())
        }
        Command::Up => up(&config::load(&config_path)?),
        Command::Status { json } => {
            let loaded = config::load(&config_path)?;
            let reply: StatusReply = control::ask(
                &loaded.control_socket(),
                &Request::Status,
                Duration::from_secs(2),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                print!("{}", reply.render());
            }
            Ok(())
        }
        Command::Netcheck { json } => {
            let loaded = config::load(&config_path)?;
            let reply: NetcheckReply = control::ask(
                &loaded.control_socket(),
                &Request::Netcheck,
                control::NETCHECK_TIMEOUT + Duration::from_secs(1),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                print!("{}", reply.render());
            }
            Ok(())
        }
        Command::Party { command } => party(&config::load(&config_path)?, command),
        Command::Ping { peer, count } => {
            let loaded = config::load(&config_path)?;
            let socket = loaded.control_socket();
            let mut answered = 0;
            for i in 0..count {
                if i > 0 {
                    std::thread::sleep(Duration::from_secs(1));
                }
                let request = Request::Ping { peer: peer.clone() };
                match control::ask::<PingReply>(&socket, &request, Duration::from_secs(3)) {
                    Ok(pong) => {
                        answered += 1;
                        println!(
                            "pong from {} via {} in {:.2} ms",
                            pong.peer, pong.path, pong.rtt_ms
                        );
                    }
                    Err(e) => println!("{peer}: {e:#}"),
                }
            }
            if answered == 0 {
                anyhow::bail!("no pong from {peer}");
            }
            Ok(())
        }
    }
}

fn party(loaded: &Loaded, command: PartyCommand) -> anyhow::Result<()> {
    let socket = loaded.control_socket();
    let wait = control::PARTY_TIMEOUT + Duration::from_secs(1);
    let verb = |request: &Request| -> anyhow::Result<PartyReplyRow> {
        let reply: PartyReplyRow = control::ask(&socket, request, wait)?;
        if !reply.ok {
            anyhow::bail!("{}", reply.status);
        }
        Ok(reply)
    };
    match command {
        PartyCommand::Create {
            name,
            relay,
            limits,
        } => {
            let (expires_in, max_uses) = limits.seconds();
            let reply = verb(&Request::PartyCreate {
                name,
                relay,
                expires_in,
                max_uses,
            })?;
            let code = reply.code.unwrap_or_default();
            eprintln!("party created; friends join with:");
            println!("{code}");
        }
        PartyCommand::Join { code } => {
            verb(&Request::PartyJoin { code })?;
            eprintln!("joined; `lanrage party members` lists who is there");
        }
        PartyCommand::Leave => {
            verb(&Request::PartyLeave)?;
            eprintln!("left the party");
        }
        PartyCommand::Invite { limits } => {
            let (expires_in, max_uses) = limits.seconds();
            let reply = verb(&Request::PartyInvite {
                expires_in,
                max_uses,
            })?;
            println!("{}", reply.code.unwrap_or_default());
        }
        PartyCommand::Kick { member } => {
            verb(&Request::PartyKick {
                member: member.clone(),
            })?;
            eprintln!("{member} is out of the party");
        }
        PartyCommand::Members { json } => {
            let reply: PartyRow =
                control::ask(&socket, &Request::PartyMembers, Duration::from_secs(2))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                print!("{}", reply.render());
            }
        }
    }
    Ok(())
}

fn up(loaded: &Loaded) -> anyhow::Result<()> {
    let key_path = loaded.private_key_path();
    let secret = lanrage_keyfile::load(&key_path).with_context(|| {
        format!(
            "private_key_file (run `lanrage keygen` to make {})",
            key_path.display()
        )
    })?;
    let config = &loaded.config;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("cannot get random bytes from the OS")?;
    let unix_nanos_at_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .context("the system clock is before 1970")?;
    let engine_config = EngineConfig {
        private_key: secret,
        virtual_ip: config.address,
        relays: config
            .relays
            .iter()
            .zip(&loaded.relay_keys)
            .map(|(r, key)| RelaySpec {
                name: r.name.clone(),
                addr: r.address,
                key: *key,
            })
            .collect(),
        peers: config
            .peers
            .iter()
            .zip(&loaded.peer_keys)
            .map(|(p, key)| PeerSpec {
                name: p.name.clone(),
                key: *key,
                virtual_ip: p.address,
                endpoint: p.endpoint,
            })
            .collect(),
        unix_nanos_at_start,
        seed,
        direct_paths: config.direct_paths,
        discovery: DiscoveryConfig {
            enabled: config.lan_discovery.enabled,
            per_second: config.lan_discovery.packets_per_second,
            burst: config.lan_discovery.burst,
        },
        membership: if config.peers.is_empty() {
            match driver::load_state(&loaded.state_file()) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("state_file: {e}; starting without a party");
                    None
                }
            }
        } else {
            None
        },
    };
    let engine = Engine::new(engine_config, Instant::now())
        .map_err(|e| anyhow::anyhow!("{}: {e}", loaded.path.display()))?;
    driver::run(
        engine,
        &driver::Setup {
            interface: config.interface.clone(),
            listen_port: config.listen_port,
            control_socket: loaded.control_socket(),
            member_name: loaded.member_name(),
            state_file: loaded.state_file(),
            lan_discovery: config.lan_discovery.enabled,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a command's arguments only when it is built: a clash
    /// (two `-c`) would panic at run time, in the user's hands.
    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["lanrage", "ping", "bob", "-c", "3", "--config", "x.yaml"])
            .expect("parses");
        assert!(matches!(cli.command, Command::Ping { count: 3, .. }));
    }
}
