//! Warcraft III: The Frozen Throne LAN games (the W3GS UDP messages of the
//! "Local Area Network" screen), as GHost++ reimplements them
//! (`ghost/gameprotocol.cpp`, `ghost/util.cpp` in uakfdotb/ghostpp) and
//! bnetdocs documents them (W3GS_SEARCHGAME 0x2F, W3GS_GAMEINFO 0x30,
//! W3GS_CREATEGAME 0x31, W3GS_REFRESHGAME 0x32, W3GS_DECREATEGAME 0x33).
//!
//! Every message: `F7 <id> <u16 LE total length>` then its fields, all
//! little-endian DWORDs. The product is the DWORD "W3XP", so the bytes are
//! `PX3W` (Reign of Chaos: `3RAW`); the version DWORD is `<minor> 0 0 0`
//! (1.26 → `1A 00 00 00`).
//! - SEARCHGAME (16 bytes): product, version, 0. Broadcast by a client on
//!   the LAN screen to 255.255.255.255:6112 from its own port 6112.
//! - CREATEGAME (16): product, version, host counter. Broadcast once when a
//!   host creates a game; REFRESHGAME (16): host counter, players, slots,
//!   broadcast periodically; DECREATEGAME (8): host counter, when it closes.
//! - GAMEINFO: product, version, host counter, entry key, game name (NUL),
//!   one 0 byte, encoded stat string (NUL), slots total, game type, 1, slots
//!   open, uptime seconds, u16 game port. Sent by the host from UDP 6112 to
//!   the searcher's source address and port (which is 6112: a NAT or relay
//!   that changes it loses the answer).
//!
//! The stat string (map flags, 0, map width, height, map CRC, map path,
//! host name, 0) is encoded in groups of 7 bytes, each preceded by a mask
//! byte: even bytes are sent +1 with their mask bit clear, odd bytes as
//! they are with bit (i%7)+1 set, so it holds no zero bytes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::net::{self, Deadline, Malformed, Reader, Recv, SendErrors, UdpOptions};

pub const PORT: u16 = 6112;
pub const HEADER: u8 = 0xF7;
pub const SEARCHGAME: u8 = 0x2F;
pub const GAMEINFO: u8 = 0x30;
pub const CREATEGAME: u8 = 0x31;
pub const REFRESHGAME: u8 = 0x32;
pub const DECREATEGAME: u8 = 0x33;
/// "W3XP" as a little-endian DWORD on the wire.
pub const PRODUCT_TFT: [u8; 4] = *b"PX3W";
/// "WAR3" (Reign of Chaos).
#[cfg(test)]
pub const PRODUCT_ROC: [u8; 4] = *b"3RAW";
/// GHost++ sends `1 0 0 0` in the DWORD after the game type.
const GAMEINFO_UNKNOWN: u32 = 1;
const MAX_RECEIVES: u64 = 1_000_000;
const MAX_TCP_KEPT: usize = 64;

/// Host a LAN game like Warcraft III (TFT).
#[derive(Args, Debug)]
pub struct HostArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// The game name shown in the LAN list.
    #[arg(long, default_value = "LANrage WC3")]
    game: String,
    /// The patch's minor version (26 for 1.26a); searches for another
    /// version get no answer, as in the game.
    #[arg(long, default_value_t = 26)]
    version: u8,
}

/// Look at the LAN screen like a Warcraft III (TFT) client.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// The patch's minor version searched for.
    #[arg(long, default_value_t = 26)]
    version: u8,
    /// After the first GAMEINFO, open the game's TCP connection (2 s timeout).
    #[arg(long)]
    connect: bool,
}

/// The decoded stat string of a GAMEINFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatString {
    pub map_flags: u32,
    pub map_width: u16,
    pub map_height: u16,
    pub map_crc: u32,
    pub map_path: String,
    pub host_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GameInfo {
    pub product: [u8; 4],
    pub version: u32,
    pub host_counter: u32,
    pub entry_key: u32,
    pub game_name: String,
    pub stat: StatString,
    pub slots_total: u32,
    pub game_type: u32,
    pub slots_open: u32,
    pub uptime: u32,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    SearchGame {
        product: [u8; 4],
        version: u32,
    },
    GameInfo(GameInfo),
    CreateGame {
        product: [u8; 4],
        version: u32,
        host_counter: u32,
    },
    RefreshGame {
        host_counter: u32,
        players: u32,
        slots: u32,
    },
    DecreateGame {
        host_counter: u32,
    },
    /// A well-framed W3GS message of another kind (TCP game messages).
    Other(u8),
}

/// `F7 id len len` + body, the length filled in (GHost's AssignLength).
fn frame(id: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&[HEADER, id, 0, 0]);
    out.extend_from_slice(body);
    let len = u16::try_from(out.len()).unwrap_or(u16::MAX).to_le_bytes();
    out[2..4].copy_from_slice(&len);
    out
}

fn version_dword(version: u8) -> u32 {
    u32::from(version)
}

pub fn encode_search(product: [u8; 4], version: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&product);
    body.extend_from_slice(&version_dword(version).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    frame(SEARCHGAME, &body)
}

pub fn encode_create(product: [u8; 4], version: u8, host_counter: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&product);
    body.extend_from_slice(&version_dword(version).to_le_bytes());
    body.extend_from_slice(&host_counter.to_le_bytes());
    frame(CREATEGAME, &body)
}

pub fn encode_refresh(host_counter: u32, players: u32, slots: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    for v in [host_counter, players, slots] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    frame(REFRESHGAME, &body)
}

pub fn encode_decreate(host_counter: u32) -> Vec<u8> {
    frame(DECREATEGAME, &host_counter.to_le_bytes())
}

/// NUL-free text for a C string field: the game cannot carry a NUL.
fn c_text(s: &str) -> Vec<u8> {
    s.bytes().filter(|&b| b != 0).collect()
}

pub fn encode_stat_string(stat: &StatString) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&stat.map_flags.to_le_bytes());
    raw.push(0);
    raw.extend_from_slice(&stat.map_width.to_le_bytes());
    raw.extend_from_slice(&stat.map_height.to_le_bytes());
    raw.extend_from_slice(&stat.map_crc.to_le_bytes());
    raw.extend_from_slice(&c_text(&stat.map_path));
    raw.push(0);
    raw.extend_from_slice(&c_text(&stat.host_name));
    raw.push(0);
    raw.push(0);
    encode_stat_bytes(&raw)
}

/// UTIL_EncodeStatString.
fn encode_stat_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 7 + 1);
    for chunk in data.chunks(7) {
        let mut mask = 1u8;
        let mut bytes = Vec::with_capacity(7);
        for (j, &b) in chunk.iter().enumerate() {
            if b % 2 == 0 {
                bytes.push(b + 1);
            } else {
                bytes.push(b);
                mask |= 1 << (j + 1);
            }
        }
        out.push(mask);
        out.extend_from_slice(&bytes);
    }
    out
}

/// UTIL_DecodeStatString.
fn decode_stat_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut mask = 0u8;
    for (i, &b) in data.iter().enumerate() {
        if i % 8 == 0 {
            mask = b;
        } else if mask & (1 << (i % 8)) == 0 {
            out.push(b.wrapping_sub(1));
        } else {
            out.push(b);
        }
    }
    out
}

pub fn decode_stat_string(encoded: &[u8]) -> Result<StatString, Malformed> {
    let raw = decode_stat_bytes(encoded);
    let mut r = Reader::new(&raw);
    let map_flags = r.u32_le("stat string map flags")?;
    r.u8("stat string pad")?;
    let map_width = r.u16_le("stat string map width")?;
    let map_height = r.u16_le("stat string map height")?;
    let map_crc = r.u32_le("stat string map CRC")?;
    let map_path = String::from_utf8_lossy(r.cstr("stat string map path")?).into_owned();
    let host_name = String::from_utf8_lossy(r.cstr("stat string host name")?).into_owned();
    Ok(StatString {
        map_flags,
        map_width,
        map_height,
        map_crc,
        map_path,
        host_name,
    })
}

pub fn encode_gameinfo(info: &GameInfo) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&info.product);
    for v in [info.version, info.host_counter, info.entry_key] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&c_text(&info.game_name));
    body.push(0);
    body.push(0); // "??? (maybe game password)" in GHost++
    body.extend_from_slice(&encode_stat_string(&info.stat));
    body.push(0);
    for v in [
        info.slots_total,
        info.game_type,
        GAMEINFO_UNKNOWN,
        info.slots_open,
        info.uptime,
    ] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&info.port.to_le_bytes());
    frame(GAMEINFO, &body)
}

/// Parses one datagram: the header must be F7 and the length field must be
/// the datagram's length (GHost's ValidateLength), and each known message
/// must have exactly its fields.
pub fn parse(datagram: &[u8]) -> Result<Packet, Malformed> {
    let mut r = Reader::new(datagram);
    if r.u8("header")? != HEADER {
        return Err(Malformed("not a W3GS message (first byte is not F7)"));
    }
    let id = r.u8("message id")?;
    let len = r.u16_le("length")?;
    if usize::from(len) != datagram.len() {
        return Err(Malformed("length field is not the datagram's length"));
    }
    let packet = match id {
        SEARCHGAME => {
            let product = r.array("product")?;
            let version = r.u32_le("version")?;
            r.u32_le("unknown")?;
            Packet::SearchGame { product, version }
        }
        CREATEGAME => Packet::CreateGame {
            product: r.array("product")?,
            version: r.u32_le("version")?,
            host_counter: r.u32_le("host counter")?,
        },
        REFRESHGAME => Packet::RefreshGame {
            host_counter: r.u32_le("host counter")?,
            players: r.u32_le("players")?,
            slots: r.u32_le("slots")?,
        },
        DECREATEGAME => Packet::DecreateGame {
            host_counter: r.u32_le("host counter")?,
        },
        GAMEINFO => {
            let product = r.array("product")?;
            let version = r.u32_le("version")?;
            let host_counter = r.u32_le("host counter")?;
            let entry_key = r.u32_le("entry key")?;
            let game_name = String::from_utf8_lossy(r.cstr("game name")?).into_owned();
            r.u8("byte after the game name")?;
            let stat = decode_stat_string(r.cstr("stat string")?)?;
            let slots_total = r.u32_le("slots total")?;
            let game_type = r.u32_le("game type")?;
            r.u32_le("unknown")?;
            let slots_open = r.u32_le("slots open")?;
            let uptime = r.u32_le("uptime")?;
            let port = r.u16_le("game port")?;
            Packet::GameInfo(GameInfo {
                product,
                version,
                host_counter,
                entry_key,
                game_name,
                stat,
                slots_total,
                game_type,
                slots_open,
                uptime,
                port,
            })
        }
        other => return Ok(Packet::Other(other)),
    };
    if !r.is_empty() {
        return Err(Malformed("bytes after the message's last field"));
    }
    Ok(packet)
}

/// The game a host offers; `answer` fills in the uptime.
pub struct HostedGame {
    pub version: u8,
    pub info: GameInfo,
}

impl HostedGame {
    pub fn new(name: &str, version: u8) -> Self {
        Self {
            version,
            info: GameInfo {
                product: PRODUCT_TFT,
                version: version_dword(version),
                host_counter: 1,
                entry_key: 0x4C52_4753, // any DWORD; a joining client echoes it
                game_name: name.to_owned(),
                stat: StatString {
                    // Fast speed, default visibility, teams together,
                    // fixed teams (GHost++ map.cpp GetMapGameFlags bits).
                    map_flags: 0x0006_4802,
                    map_width: 116,
                    map_height: 116,
                    map_crc: 0x9C4C_2E1B,
                    map_path: r"Maps\FrozenThrone\(12)EmeraldGardens.w3x".to_owned(),
                    host_name: "lanrage".to_owned(),
                },
                slots_total: 12,
                game_type: 1,
                slots_open: 11,
                uptime: 0,
                port: PORT,
            },
        }
    }

    /// The GAMEINFO for a SEARCHGAME the game would answer: TFT and the same
    /// version. Anything else gets no answer.
    pub fn answer(&self, packet: &Packet, uptime_secs: u32) -> Option<Vec<u8>> {
        match packet {
            Packet::SearchGame { product, version }
                if *product == PRODUCT_TFT && *version == version_dword(self.version) =>
            {
                let mut info = self.info.clone();
                info.uptime = uptime_secs;
                Some(encode_gameinfo(&info))
            }
            _ => None,
        }
    }
}

fn broadcast_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, PORT)
}

pub fn host(args: HostArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    let game = HostedGame::new(&args.game, args.version);
    let udp = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        UdpOptions {
            broadcast: true,
            ..UdpOptions::default()
        },
    )?;
    let tcp = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT))
        .context("binding TCP 0.0.0.0:6112 (the game port)")?;
    tcp.set_nonblocking(true)
        .context("making the TCP listener non-blocking")?;

    let mut errors = SendErrors::default();
    let mut broadcasts = 0u64;
    let create = encode_create(PRODUCT_TFT, args.version, game.info.host_counter);
    broadcasts += u64::from(net::send_counted(
        &udp,
        &create,
        broadcast_addr(),
        &mut errors,
    ));

    let (mut searches, mut answers, mut malformed, mut ignored) = (0u64, 0u64, 0u64, 0u64);
    let mut recv_errors = 0u64;
    let mut kept: Vec<TcpStream> = Vec::new();
    let mut tcp_accepted = 0u64;
    let mut refreshes_sent = 0u32;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        if deadline.passed() {
            break;
        }
        accept_pending(&tcp, &mut kept, &mut tcp_accepted);
        let next_refresh = deadline.start + Duration::from_secs(u64::from(refreshes_sent) + 1);
        if Instant::now() >= next_refresh {
            let refresh = encode_refresh(game.info.host_counter, 1, game.info.slots_total);
            broadcasts += u64::from(net::send_counted(
                &udp,
                &refresh,
                broadcast_addr(),
                &mut errors,
            ));
            refreshes_sent += 1;
            continue;
        }
        // Wake at least every 100 ms to accept TCP connections.
        let until = deadline.cap(next_refresh.min(Instant::now() + Duration::from_millis(100)));
        match net::recv_before(&udp, &mut buf, until) {
            Recv::Datagram(n, from) => match parse(&buf[..n]) {
                Ok(packet @ Packet::SearchGame { .. }) => {
                    searches += 1;
                    let uptime =
                        u32::try_from(deadline.start.elapsed().as_secs()).unwrap_or(u32::MAX);
                    let answered = match game.answer(&packet, uptime) {
                        // Unicast to the searcher's source address and port.
                        Some(reply) => net::send_counted(&udp, &reply, from, &mut errors),
                        None => false,
                    };
                    answers += u64::from(answered);
                    net::emit(json!({
                        "search_from": from.to_string(),
                        "answered": answered,
                        "at_ns": net::now_ns(),
                    }));
                }
                // Our own CREATEGAME/REFRESHGAME come back; other hosts' too.
                Ok(_) => ignored += 1,
                Err(_) => malformed += 1,
            },
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    accept_pending(&tcp, &mut kept, &mut tcp_accepted);
    // The game says goodbye when the lobby closes.
    let decreate = encode_decreate(game.info.host_counter);
    broadcasts += u64::from(net::send_counted(
        &udp,
        &decreate,
        broadcast_addr(),
        &mut errors,
    ));
    net::emit_summary(json!({
        "searches": searches,
        "answers": answers,
        "tcp_accepted": tcp_accepted,
        "malformed": malformed,
        "ignored": ignored,
        "broadcasts": broadcasts,
        "send_errors": errors.count,
        "first_send_error": errors.first,
        "recv_errors": recv_errors,
    }));
    Ok(())
}

/// Accepts what is waiting (at most 16 per call), replying nothing; keeps up
/// to 64 connections open so the joining side sees an established one.
fn accept_pending(tcp: &TcpListener, kept: &mut Vec<TcpStream>, accepted: &mut u64) {
    for _ in 0..16 {
        match tcp.accept() {
            Ok((stream, from)) => {
                *accepted += 1;
                net::emit(json!({ "tcp_from": from.to_string(), "at_ns": net::now_ns() }));
                if kept.len() < MAX_TCP_KEPT {
                    kept.push(stream);
                }
            }
            Err(_) => break,
        }
    }
}

pub fn search(args: SearchArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    let udp = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        UdpOptions {
            broadcast: true,
            ..UdpOptions::default()
        },
    )?;
    let own = net::local_ipv4s();
    let search = encode_search(PRODUCT_TFT, args.version);
    let mut errors = SendErrors::default();
    let (mut sent, mut own_seen, mut other_searches, mut malformed) = (0u32, 0u64, 0u64, 0u64);
    let (mut broadcasts_seen, mut ignored, mut recv_errors) = (0u64, 0u64, 0u64);
    let mut found = None;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        if deadline.passed() {
            break;
        }
        let next_search = deadline.start + Duration::from_secs(u64::from(sent));
        if Instant::now() >= next_search {
            net::send_counted(&udp, &search, broadcast_addr(), &mut errors);
            sent += 1;
            continue;
        }
        match net::recv_before(&udp, &mut buf, deadline.cap(next_search)) {
            Recv::Datagram(n, from) => match parse(&buf[..n]) {
                Ok(Packet::SearchGame { .. }) if own.contains(from.ip()) => own_seen += 1,
                Ok(Packet::SearchGame { .. }) => other_searches += 1,
                Ok(Packet::CreateGame { .. }) => {
                    broadcasts_seen += 1;
                    emit_broadcast(from, "create");
                }
                Ok(Packet::RefreshGame { .. }) => {
                    broadcasts_seen += 1;
                    emit_broadcast(from, "refresh");
                }
                Ok(Packet::DecreateGame { .. }) => {
                    broadcasts_seen += 1;
                    emit_broadcast(from, "decreate");
                }
                // The LAN screen lists only games of its own product and
                // version.
                Ok(Packet::GameInfo(info))
                    if info.product == PRODUCT_TFT
                        && info.version == version_dword(args.version) =>
                {
                    net::emit(json!({
                        "gameinfo_from": from.to_string(),
                        "game": info.game_name,
                        "game_port": info.port,
                        "host": info.stat.host_name,
                        "map": info.stat.map_path,
                        "at_ns": net::now_ns(),
                    }));
                    found = Some(SocketAddrV4::new(*from.ip(), info.port));
                    break;
                }
                Ok(_) => ignored += 1,
                Err(_) => malformed += 1,
            },
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    let mut tcp_connected = None;
    if let (true, Some(game)) = (args.connect, found) {
        let timeout = Duration::from_secs(2).min(deadline.remaining());
        let result = if timeout.is_zero() {
            Err("no time left before --seconds ran out".to_owned())
        } else {
            TcpStream::connect_timeout(&SocketAddr::V4(game), timeout).map_err(|e| e.to_string())
        };
        match result {
            Ok(_stream) => {
                tcp_connected = Some(true);
                net::emit(json!({ "tcp_connected": game.to_string(), "at_ns": net::now_ns() }));
            }
            Err(e) => {
                tcp_connected = Some(false);
                net::emit(json!({ "tcp_error": format!("{game}: {e}"), "at_ns": net::now_ns() }));
            }
        }
    }
    net::emit_summary(json!({
        "found": found.is_some(),
        "searches_sent": sent,
        "own": own_seen,
        "other_searches": other_searches,
        "broadcasts_seen": broadcasts_seen,
        "ignored": ignored,
        "malformed": malformed,
        "tcp_connected": tcp_connected,
        "send_errors": errors.count,
        "first_send_error": errors.first,
        "recv_errors": recv_errors,
    }));
    Ok(())
}

fn emit_broadcast(from: SocketAddrV4, kind: &str) {
    net::emit(json!({ "broadcast_from": from.to_string(), "kind": kind, "at_ns": net::now_ns() }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_bytes_are_the_games() {
        // GHost++ SEND_W3GS_SEARCHGAME(TFT, 26).
        assert_eq!(
            encode_search(PRODUCT_TFT, 26),
            [0xF7, 0x2F, 16, 0, b'P', b'X', b'3', b'W', 26, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            parse(&encode_search(PRODUCT_ROC, 24)),
            Ok(Packet::SearchGame {
                product: PRODUCT_ROC,
                version: 24
            })
        );
    }

    #[test]
    fn broadcasts_round_trip() {
        assert_eq!(
            encode_create(PRODUCT_TFT, 26, 1),
            [0xF7, 0x31, 16, 0, b'P', b'X', b'3', b'W', 26, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            parse(&encode_create(PRODUCT_TFT, 26, 7)),
            Ok(Packet::CreateGame {
                product: PRODUCT_TFT,
                version: 26,
                host_counter: 7
            })
        );
        assert_eq!(
            parse(&encode_refresh(1, 2, 12)),
            Ok(Packet::RefreshGame {
                host_counter: 1,
                players: 2,
                slots: 12
            })
        );
        assert_eq!(
            parse(&encode_decreate(3)),
            Ok(Packet::DecreateGame { host_counter: 3 })
        );
    }

    #[test]
    fn stat_string_has_no_zero_bytes_and_round_trips() {
        let game = HostedGame::new("x", 26);
        let encoded = encode_stat_string(&game.info.stat);
        assert!(!encoded.contains(&0));
        assert_eq!(decode_stat_string(&encoded), Ok(game.info.stat));
        // GHost's encoder on 7 even bytes: mask 1, each byte + 1.
        assert_eq!(encode_stat_bytes(&[0; 7]), [1, 1, 1, 1, 1, 1, 1, 1]);
        // Odd bytes keep their value and set bit (i%7)+1.
        assert_eq!(encode_stat_bytes(&[3, 0]), [0b11, 3, 1]);
        assert_eq!(decode_stat_bytes(&[0b11, 3, 1]), [3, 0]);
    }

    #[test]
    fn gameinfo_round_trips_and_ends_in_the_port() {
        let game = HostedGame::new("Björn's game", 26);
        let bytes = encode_gameinfo(&game.info);
        assert_eq!(&bytes[..2], &[0xF7, 0x30]);
        assert_eq!(
            usize::from(u16::from_le_bytes([bytes[2], bytes[3]])),
            bytes.len()
        );
        assert_eq!(&bytes[bytes.len() - 2..], &6112u16.to_le_bytes());
        assert_eq!(parse(&bytes), Ok(Packet::GameInfo(game.info)));
    }

    #[test]
    fn host_answers_only_its_product_and_version() {
        let game = HostedGame::new("g", 26);
        let ask = |product, version| {
            let packet = parse(&encode_search(product, version)).unwrap();
            game.answer(&packet, 5)
        };
        let reply = ask(PRODUCT_TFT, 26).expect("TFT 1.26 gets an answer");
        let Ok(Packet::GameInfo(info)) = parse(&reply) else {
            panic!("the answer is a GAMEINFO");
        };
        assert_eq!((info.uptime, info.game_name.as_str()), (5, "g"));
        assert_eq!(ask(PRODUCT_TFT, 24), None);
        assert_eq!(ask(PRODUCT_ROC, 26), None);
        let refresh = parse(&encode_refresh(1, 1, 12)).unwrap();
        assert_eq!(game.answer(&refresh, 0), None);
    }

    #[test]
    fn framing_is_checked() {
        let mut bad_len = encode_search(PRODUCT_TFT, 26);
        bad_len[2] = 15;
        assert!(parse(&bad_len).is_err());
        let mut not_w3gs = encode_search(PRODUCT_TFT, 26);
        not_w3gs[0] = 0xFF;
        assert!(parse(&not_w3gs).is_err());
        // A known message with a field too many.
        let mut long = encode_search(PRODUCT_TFT, 26);
        long.push(0);
        long[2] = 17;
        assert!(parse(&long).is_err());
        // A well-framed unknown message is not malformed.
        assert_eq!(parse(&frame(0x1E, &[1, 2])), Ok(Packet::Other(0x1E)));
    }

    #[test]
    fn truncated_and_garbage_do_not_panic() {
        let samples = [
            encode_gameinfo(&HostedGame::new("name", 26).info),
            encode_search(PRODUCT_TFT, 26),
            encode_refresh(1, 1, 12),
        ];
        for sample in &samples {
            for cut in 0..sample.len() {
                assert!(parse(&sample[..cut]).is_err(), "a {cut}-byte prefix");
                // With the length fixed up, a cut body is still rejected.
                let mut fixed = sample[..cut].to_vec();
                if fixed.len() >= 4 {
                    let len = (fixed.len() as u16).to_le_bytes();
                    fixed[2..4].copy_from_slice(&len);
                    assert!(parse(&fixed).is_err(), "a fixed-up {cut}-byte prefix");
                }
            }
        }
        for mut junk in net::garbage(0x6112, 3000) {
            let _ = parse(&junk);
            let _ = decode_stat_string(&junk);
            // Framed junk reaches the field decoders.
            if junk.len() >= 4 {
                junk[0] = HEADER;
                junk[1] = [SEARCHGAME, GAMEINFO, CREATEGAME, REFRESHGAME][junk.len() % 4];
                let len = (junk.len() as u16).to_le_bytes();
                junk[2..4].copy_from_slice(&len);
                let _ = parse(&junk);
            }
        }
    }
}
