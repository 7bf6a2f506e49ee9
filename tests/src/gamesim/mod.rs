//! `lanrage-gamesim`: small processes that send and listen on UDP exactly the
//! way LAN games do their discovery (same addresses, ports, socket options
//! and bytes), so namespace tests can check that LANrage's virtual LAN
//! carries each game's discovery. Run each end in its own namespace, e.g.
//! `ip netns exec NS lanrage-gamesim minecraft-listen --seconds 5`.
//!
//! Output: one JSON object per line on stdout, one per event, then one
//! `{"summary": {...}}` line; diagnostics go to stderr. Every `at_ns` is
//! CLOCK_REALTIME nanoseconds since the Unix epoch, shared by all
//! namespaces, so one-way delay is a subtraction. Every subcommand stops by
//! `--seconds` at the latest; every loop is bounded in count too. A datagram
//! that does not parse is counted (`malformed`) and ignored. Nothing is
//! sent anywhere but the address on the command line or the game's fixed
//! group or broadcast address (answers go to the asker's source address).
//!
//! | subcommand | binds | sends |
//! |---|---|---|
//! | `minecraft-announce` | 0.0.0.0:0, no options | `[MOTD]text[/MOTD][AD]port[/AD]` to 224.0.2.60:4445 every 1.5 s |
//! | `minecraft-listen` | 0.0.0.0:4445, SO_REUSEADDR, joins 224.0.2.60 on INADDR_ANY | nothing |
//! | `wc3-host` | UDP and TCP 0.0.0.0:6112, SO_BROADCAST | `F7 31` CREATEGAME, `F7 32` REFRESHGAME every 1 s, `F7 33` DECREATEGAME at exit, to 255.255.255.255:6112; `F7 30` GAMEINFO to each searcher |
//! | `wc3-search` | 0.0.0.0:6112, SO_BROADCAST | `F7 2F 10 00 "PX3W" 1A000000 00000000` to 255.255.255.255:6112 every 1 s |
//! | `mdns-responder` | 0.0.0.0:5353, SO_REUSEADDR+SO_REUSEPORT, joins 224.0.0.251, TTL 255 | A record answers (multicast, or unicast for legacy/QU queries) |
//! | `mdns-query` | 0.0.0.0:5353 like the responder, or 0.0.0.0:0 with `--legacy` | `NAME A IN` queries to 224.0.0.251:5353 every 1 s |
//! | `ssdp-device` | 0.0.0.0:1900, SO_REUSEADDR, joins 239.255.255.250, TTL 2 | `NOTIFY * HTTP/1.1` ssdp:alive at start; `HTTP/1.1 200 OK` to each searcher |
//! | `ssdp-search` | 0.0.0.0:0, TTL 2 | `M-SEARCH * HTTP/1.1` (ST ssdp:all, MX 2) to 239.255.255.250:1900 every 1 s |
//! | `quake3-server` | 0.0.0.0:27960, SO_BROADCAST | `FF FF FF FF "infoResponse\n\\key\\value..."` to each asker |
//! | `quake3-getinfo` | 0.0.0.0:0 (or `--bind-port`), SO_BROADCAST | `FF FF FF FF "getinfo xxx"` twice to 255.255.255.255:27960..=27963 every 1 s |
//! | `teeworlds-server` | 0.0.0.0:8303, SO_BROADCAST | `FF`×6 `FF FF FF FF "inf3"` + NUL-terminated strings to each asker |
//! | `teeworlds-search` | 0.0.0.0:0, SO_BROADCAST | `FF`×6 `FF FF FF FF "gie3" <token>` to 255.255.255.255:8303..=8310 every 1 s |
//! | `udp-send` | `--bind` (0.0.0.0:0), SO_BROADCAST with `--broadcast` | `"LRGS" u32 seq u64 ns` (BE), zero-padded, paced to `--rate` |
//! | `udp-listen` | 0.0.0.0:PORT, SO_REUSEADDR, joins `--group` on INADDR_ANY | nothing |
//!
//! Where each format comes from, and the exact bytes, is in each module's
//! doc: `minecraft` (decompiled `LanServerPinger`/`LanServerDetection`),
//! `wc3` (GHost++ uakfdotb/ghostpp `ghost/gameprotocol.cpp`, bnetdocs W3GS
//! 0x2F/0x30/0x31/0x32/0x33), `mdns` (RFC 6762; the `simple-dns` crate
//! builds and parses the DNS messages), `ssdp` (UPnP Device Architecture
//! 1.1, miniupnpc/miniupnpd), `quake3` (ioquake/ioq3 `cl_main.c`,
//! `sv_main.c`, `q_shared.c`), `teeworlds` (teeworlds/teeworlds 0.6
//! `serverbrowser.cpp`, `server.cpp`, `network.cpp`, `mastersrv.h`).

mod mdns;
mod minecraft;
mod net;
mod quake3;
mod ssdp;
mod storm;
mod teeworlds;
mod wc3;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Send and listen on UDP the way LAN games do their discovery.
#[derive(Parser, Debug)]
#[command(name = "lanrage-gamesim")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Announce a world like Minecraft Java's LanServerPinger.
    MinecraftAnnounce(minecraft::AnnounceArgs),
    /// Find worlds like Minecraft Java's LanServerDetector.
    MinecraftListen(minecraft::ListenArgs),
    /// Host a Warcraft III (TFT) LAN game.
    Wc3Host(wc3::HostArgs),
    /// Look for Warcraft III (TFT) LAN games.
    Wc3Search(wc3::SearchArgs),
    /// Answer mDNS A queries for one .local name.
    MdnsResponder(mdns::ResponderArgs),
    /// Resolve one .local name over mDNS.
    MdnsQuery(mdns::QueryArgs),
    /// Search for UPnP devices over SSDP.
    SsdpSearch(ssdp::SearchArgs),
    /// Be a UPnP root device that answers SSDP searches.
    SsdpDevice(ssdp::DeviceArgs),
    /// Be an ioquake3 server answering LAN getinfo.
    Quake3Server(quake3::ServerArgs),
    /// Refresh the ioquake3 LAN server list.
    Quake3Getinfo(quake3::GetinfoArgs),
    /// Be a Teeworlds 0.6 server answering LAN browsers.
    TeeworldsServer(teeworlds::ServerArgs),
    /// Refresh the Teeworlds 0.6 LAN tab.
    TeeworldsSearch(teeworlds::SearchArgs),
    /// Send sequenced, timestamped datagrams at a fixed rate.
    UdpSend(storm::SendArgs),
    /// Count sequenced datagrams, duplicates and one-way delay.
    UdpListen(storm::ListenArgs),
}

/// The `lanrage-gamesim` command line (the binary, and `lanrage-demo`'s
/// game processes, run this).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::MinecraftAnnounce(args) => minecraft::announce(args),
        Command::MinecraftListen(args) => minecraft::listen(args),
        Command::Wc3Host(args) => wc3::host(args),
        Command::Wc3Search(args) => wc3::search(args),
        Command::MdnsResponder(args) => mdns::responder(args),
        Command::MdnsQuery(args) => mdns::query(args),
        Command::SsdpSearch(args) => ssdp::search(args),
        Command::SsdpDevice(args) => ssdp::device(args),
        Command::Quake3Server(args) => quake3::server(args),
        Command::Quake3Getinfo(args) => quake3::getinfo(args),
        Command::TeeworldsServer(args) => teeworlds::server(args),
        Command::TeeworldsSearch(args) => teeworlds::search(args),
        Command::UdpSend(args) => storm::send(args),
        Command::UdpListen(args) => storm::listen(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanrage-gamesim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommand_names_are_the_contract() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        for wanted in [
            "minecraft-announce",
            "minecraft-listen",
            "wc3-host",
            "wc3-search",
            "mdns-responder",
            "mdns-query",
            "ssdp-search",
            "ssdp-device",
            "quake3-server",
            "quake3-getinfo",
            "teeworlds-server",
            "teeworlds-search",
            "udp-send",
            "udp-listen",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
    }

    #[test]
    fn flags_parse() {
        let ok = |line: &str| {
            Cli::try_parse_from(line.split(' ')).unwrap_or_else(|e| panic!("{line}: {e}"));
        };
        ok("g minecraft-announce --motd hi --port 25565 --seconds 3 --interval-ms 1500");
        ok("g minecraft-listen --seconds 3 --count 2");
        ok("g wc3-host --seconds 3 --game NAME --version 26");
        ok("g wc3-search --seconds 3 --version 26 --connect");
        ok("g mdns-responder --name a.local --address 10.0.0.1 --seconds 3");
        ok("g mdns-query --name a.local --seconds 3 --legacy");
        ok("g ssdp-search --seconds 3");
        ok("g ssdp-device --seconds 3 --location http://10.0.0.1:80/d.xml");
        ok("g quake3-server --seconds 3 --port 27960");
        ok("g quake3-getinfo --seconds 3");
        ok("g teeworlds-server --seconds 3");
        ok("g teeworlds-search --seconds 3");
        ok("g udp-send --to 10.0.0.1:9 --count 10 --rate 100 --broadcast --bind 0.0.0.0:0 --size 64");
        ok("g udp-listen --port 9 --seconds 3 --group 239.1.1.1 --expect-from 10.0.0.1");
        assert!(Cli::try_parse_from("g minecraft-listen --seconds 0".split(' ')).is_err());
        assert!(Cli::try_parse_from("g udp-listen --port 9".split(' ')).is_err());
    }
}
