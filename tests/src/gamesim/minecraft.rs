//! Minecraft Java Edition "Open to LAN": `LanServerPinger` (the announcing
//! side, in the game that opened its world) and `LanServerDetection`'s
//! `LanServerDetector` thread (the multiplayer screen).
//!
//! Wire format (decompiled `net.minecraft.client.server.LanServerPinger`):
//! the UTF-8 text `[MOTD]<motd>[/MOTD][AD]<port>[/AD]`, one datagram every
//! 1500 ms from a plain `new DatagramSocket()` (bound to 0.0.0.0:0, no
//! options: multicast TTL 1, loopback on) to 224.0.2.60:4445. The pinger
//! thread stops at the first send error (`catch (IOException) { break; }`).
//! The detector is `new MulticastSocket(4445)` (SO_REUSEADDR, bound to
//! 0.0.0.0:4445), `setSoTimeout(5000)`, `joinGroup(224.0.2.60)` on the
//! default interface (INADDR_ANY), reading into a 1024-byte buffer; the
//! server's address is the datagram's source IP plus the AD text.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::net::{self, Deadline, Malformed, Recv, UdpOptions};

pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 2, 60);
pub const PORT: u16 = 4445;
/// `LanServerDetector` reads into `new byte[1024]`: longer datagrams are
/// cut there.
const DETECTOR_BUFFER: usize = 1024;
/// At most this many announcements per run, whatever the interval.
const MAX_SENDS: u64 = 100_000;
/// At most this many datagrams read per run.
const MAX_RECEIVES: u64 = 1_000_000;

/// Announce a LAN world like `LanServerPinger`.
#[derive(Args, Debug)]
pub struct AnnounceArgs {
    /// The world's message of the day, shown in the LAN list.
    #[arg(long)]
    motd: String,
    /// The TCP port the world listens on (the `[AD]` text).
    #[arg(long)]
    port: u16,
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// Milliseconds between announcements (the game uses 1500).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    interval_ms: u64,
}

/// Listen for LAN worlds like `LanServerDetector`.
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// Stop after this many announcements.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: Option<u64>,
}

/// `LanServerPinger.createPingString(motd, port)`.
pub fn encode(motd: &str, ad: &str) -> Vec<u8> {
    format!("[MOTD]{motd}[/MOTD][AD]{ad}[/AD]").into_bytes()
}

/// One announcement as the detector reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Announcement {
    pub motd: String,
    pub port: u16,
}

/// `parseMotd` and `parseAddress`, with the game's rules: a missing MOTD
/// reads as "missing no", a missing or repeated `[/MOTD]` or a missing AD
/// makes the game drop the datagram. The game then uses the AD text as a
/// port; one that is not a port number counts as malformed here.
pub fn decode(bytes: &[u8]) -> Result<Announcement, Malformed> {
    // Java's `new String(bytes, UTF_8)` replaces bad sequences, never fails.
    let text = String::from_utf8_lossy(bytes);
    let ad = parse_address(&text).ok_or(Malformed("no [AD]...[/AD] after one [/MOTD]"))?;
    let port = ad.parse().map_err(|_| Malformed("AD is not a port"))?;
    Ok(Announcement {
        motd: parse_motd(&text).to_owned(),
        port,
    })
}

fn parse_motd(text: &str) -> &str {
    let Some(open) = text.find("[MOTD]") else {
        return "missing no";
    };
    let start = open + "[MOTD]".len();
    match text[start..].find("[/MOTD]") {
        Some(len) => &text[start..start + len],
        None => "missing no",
    }
}

fn parse_address(text: &str) -> Option<&str> {
    let close = text.find("[/MOTD]")?;
    let after = close + "[/MOTD]".len();
    if text[after..].contains("[/MOTD]") {
        return None;
    }
    let open = after + text[after..].find("[AD]")?;
    let start = open + "[AD]".len();
    let len = text[start..].find("[/AD]")?;
    Some(&text[start..start + len])
}

pub fn announce(args: AnnounceArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    // `new DatagramSocket()`: wildcard address, ephemeral port, no options.
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .context("binding UDP 0.0.0.0:0")?;
    let payload = encode(&args.motd, &args.port.to_string());
    let to = SocketAddrV4::new(GROUP, PORT);
    let interval = Duration::from_millis(args.interval_ms);
    let mut sent = 0u64;
    let mut error = None;
    while sent < MAX_SENDS && !deadline.passed() {
        if let Err(e) = socket.send_to(&payload, to) {
            // The pinger thread ends on the first IOException; so do we.
            eprintln!("lanrage-gamesim: sending to {to}: {e} (LanServerPinger stops here)");
            net::emit(json!({ "send_error": e.to_string(), "at_ns": net::now_ns() }));
            error = Some(e.to_string());
            break;
        }
        sent += 1;
        net::emit(json!({ "sent": sent, "at_ns": net::now_ns() }));
        let next =
            deadline.start + interval.saturating_mul(u32::try_from(sent).unwrap_or(u32::MAX));
        sleep_until(deadline.cap(next));
    }
    net::emit_summary(json!({ "sent": sent, "error": error }));
    Ok(())
}

fn sleep_until(at: Instant) {
    let wait = at.saturating_duration_since(Instant::now());
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
}

pub fn listen(args: ListenArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    // `new MulticastSocket(4445)` sets SO_REUSEADDR before binding the
    // wildcard; `joinGroup` without an interface joins on INADDR_ANY.
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        UdpOptions {
            reuse_addr: true,
            join: Some(GROUP),
            ..UdpOptions::default()
        },
    )?;
    let mut buf = [0u8; DETECTOR_BUFFER];
    let (mut received, mut malformed, mut recv_errors) = (0u64, 0u64, 0u64);
    let mut sources = BTreeSet::new();
    let wanted = args.count.unwrap_or(u64::MAX);
    for _ in 0..MAX_RECEIVES {
        if received >= wanted {
            break;
        }
        // The game's 5 s receive timeout, shortened to the run's end.
        let until = deadline.cap(Instant::now() + Duration::from_secs(5));
        match net::recv_before(&socket, &mut buf, until) {
            Recv::Datagram(n, from) => match decode(&buf[..n]) {
                Ok(found) => {
                    received += 1;
                    sources.insert(from.to_string());
                    net::emit(json!({
                        "from": from.to_string(),
                        "motd": found.motd,
                        "port": found.port,
                        "at_ns": net::now_ns(),
                    }));
                }
                Err(_) => malformed += 1,
            },
            Recv::Timeout if deadline.passed() => break,
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    net::emit_summary(json!({
        "received": received,
        "malformed": malformed,
        "recv_errors": recv_errors,
        "sources": sources.into_iter().collect::<Vec<_>>(),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode("A Minecraft Server §4red", "25565");
        assert_eq!(
            bytes,
            "[MOTD]A Minecraft Server §4red[/MOTD][AD]25565[/AD]".as_bytes()
        );
        assert_eq!(
            decode(&bytes),
            Ok(Announcement {
                motd: "A Minecraft Server §4red".into(),
                port: 25565
            })
        );
    }

    #[test]
    fn the_games_parsing_rules() {
        // No MOTD: the game shows "missing no" but still lists the world.
        assert_eq!(
            decode(b"[/MOTD][AD]1234[/AD]"),
            Ok(Announcement {
                motd: "missing no".into(),
                port: 1234
            })
        );
        // A second [/MOTD] makes parseAddress return null.
        assert!(decode(b"[MOTD]a[/MOTD][/MOTD][AD]1[/AD]").is_err());
        // No AD, no closing AD, not a port.
        assert!(decode(b"[MOTD]a[/MOTD]").is_err());
        assert!(decode(b"[MOTD]a[/MOTD][AD]1234").is_err());
        assert!(decode(b"[MOTD]a[/MOTD][AD]host:1[/AD]").is_err());
        assert!(decode(b"[MOTD]a[/MOTD][AD]70000[/AD]").is_err());
        // Bad UTF-8 is replaced, as Java does.
        let found = decode(b"[MOTD]\xff[/MOTD][AD]7[/AD]").unwrap();
        assert_eq!(found.motd, "\u{fffd}");
    }

    #[test]
    fn truncated_and_garbage_do_not_panic() {
        let good = encode("ünïcødé", "25565");
        for cut in 0..good.len() {
            // Cutting inside a multi-byte character must not panic either.
            let _ = decode(&good[..cut]);
        }
        assert!(decode(&good[..good.len() - 1]).is_err());
        for junk in net::garbage(0x4445, 2000) {
            let _ = decode(&junk);
        }
    }
}
