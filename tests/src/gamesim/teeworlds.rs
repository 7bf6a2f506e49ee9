//! Teeworlds 0.6 LAN browsing (teeworlds/teeworlds 0.6 branch:
//! `src/engine/client/serverbrowser.cpp` Refresh(TYPE_LAN),
//! `src/engine/server/server.cpp` SendServerInfo and PumpNetwork,
//! `src/engine/shared/network.cpp` SendPacketConnless,
//! `src/mastersrv/mastersrv.h` SERVERBROWSE_GETINFO/INFO).
//!
//! - A connectionless packet is 6 bytes of 0xFF (the first byte's high
//!   nibble holds NET_PACKETFLAG_CONNLESS) then its data.
//! - Browser: data `FF FF FF FF "gie3"` + one token byte, broadcast to
//!   255.255.255.255 on each port 8303..=8310 from the client's socket
//!   (0.0.0.0, ephemeral port, SO_BROADCAST): 15 bytes in all.
//! - Server (UDP 0.0.0.0:8303): a connless datagram of exactly those 9 data
//!   bytes gets, unicast to its source, `FF FF FF FF "inf3"` then
//!   NUL-terminated strings: the token in decimal, version, name, map, game
//!   type, flags, players, max players, clients, max clients, then name,
//!   clan, country, score, is-player for each client.
//! - The browser drops an answer whose token is not the one it sent.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::net::{self, Deadline, Malformed, Reader, Recv, Request, SendErrors, UdpOptions};

pub const CONNLESS_HEADER: [u8; 6] = [0xFF; 6];
/// NET_PACKETFLAG_CONNLESS, in the high nibble of the first byte.
const FLAG_CONNLESS: u8 = 0x80;
pub const GETINFO: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, b'g', b'i', b'e', b'3'];
pub const INFO: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, b'i', b'n', b'f', b'3'];
pub const PORT: u16 = 8303;
pub const LAN_PORTS: std::ops::RangeInclusive<u16> = 8303..=8310;
const VERSION: &str = "0.6.4";
const MAX_RECEIVES: u64 = 1_000_000;

/// Be a Teeworlds 0.6 server that answers LAN browsers.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// sv_port.
    #[arg(long, default_value_t = PORT)]
    port: u16,
    /// sv_name.
    #[arg(long, default_value = "LANrage Teeworlds")]
    name: String,
}

/// Refresh the LAN tab like the Teeworlds 0.6 client.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub token: u8,
    pub version: String,
    pub name: String,
    pub map: String,
    pub gametype: String,
    pub flags: u32,
    pub players: u32,
    pub max_players: u32,
    pub clients: u32,
    pub max_clients: u32,
}

fn connless(data: &[u8]) -> Vec<u8> {
    let mut out = CONNLESS_HEADER.to_vec();
    out.extend_from_slice(data);
    out
}

/// The data of a connectionless packet (network.cpp UnpackPacket).
fn connless_data(datagram: &[u8]) -> Result<&[u8], Malformed> {
    if datagram.len() < CONNLESS_HEADER.len() {
        return Err(Malformed("shorter than a packet header"));
    }
    if datagram[0] & FLAG_CONNLESS == 0 {
        return Err(Malformed("not a connectionless packet"));
    }
    Ok(&datagram[CONNLESS_HEADER.len()..])
}

pub fn encode_getinfo(token: u8) -> Vec<u8> {
    let mut data = GETINFO.to_vec();
    data.push(token);
    connless(&data)
}

/// CPacker::AddString(text, limit): at most `limit` bytes, then a NUL.
fn add_string(out: &mut Vec<u8>, text: &str, limit: usize) {
    let bytes: Vec<u8> = text.bytes().filter(|&b| b != 0).take(limit).collect();
    out.extend_from_slice(&bytes);
    out.push(0);
}

pub fn encode_info(info: &ServerInfo) -> Vec<u8> {
    let mut data = INFO.to_vec();
    add_string(&mut data, &info.token.to_string(), 6);
    add_string(&mut data, &info.version, 32);
    add_string(&mut data, &info.name, 64);
    add_string(&mut data, &info.map, 32);
    add_string(&mut data, &info.gametype, 16);
    add_string(&mut data, &info.flags.to_string(), 2);
    for count in [
        info.players,
        info.max_players,
        info.clients,
        info.max_clients,
    ] {
        add_string(&mut data, &count.to_string(), 3);
    }
    connless(&data)
}

/// The token of a GETINFO, which must be exactly the 9 data bytes.
pub fn parse_getinfo(datagram: &[u8]) -> Result<Option<u8>, Malformed> {
    let data = connless_data(datagram)?;
    match data.strip_prefix(&GETINFO) {
        Some([token]) => Ok(Some(*token)),
        _ => Ok(None),
    }
}

pub fn parse_info(datagram: &[u8]) -> Result<ServerInfo, Malformed> {
    let data = connless_data(datagram)?;
    let body = data
        .strip_prefix(&INFO)
        .ok_or(Malformed("not a server info"))?;
    let mut r = Reader::new(body);
    let mut text = |what| -> Result<String, Malformed> {
        Ok(String::from_utf8_lossy(r.cstr(what)?).into_owned())
    };
    let number = |s: String, what| s.trim().parse::<u32>().map_err(|_| Malformed(what));
    let token = text("token")?
        .trim()
        .parse::<u8>()
        .map_err(|_| Malformed("token is not a byte"))?;
    let version = text("version")?;
    let name = text("name")?;
    let map = text("map")?;
    let gametype = text("gametype")?;
    Ok(ServerInfo {
        token,
        version,
        name,
        map,
        gametype,
        flags: number(text("flags")?, "flags")?,
        players: number(text("players")?, "players")?,
        max_players: number(text("max players")?, "max players")?,
        clients: number(text("clients")?, "clients")?,
        max_clients: number(text("max clients")?, "max clients")?,
    })
}

pub fn server(args: ServerArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, args.port),
        UdpOptions {
            broadcast: true,
            ..UdpOptions::default()
        },
    )?;
    let mut info = ServerInfo {
        token: 0,
        version: VERSION.to_owned(),
        name: args.name,
        map: "dm1".to_owned(),
        gametype: "DM".to_owned(),
        flags: 0,
        players: 0,
        max_players: 8,
        clients: 0,
        max_clients: 8,
    };
    let counts = net::answer_requests(
        &socket,
        &deadline,
        MAX_RECEIVES,
        "getinfo_from",
        |datagram| {
            Ok(parse_getinfo(datagram)?.map(|token| {
                info.token = token;
                Request {
                    fields: json!({ "token": token }),
                    reply: Some(encode_info(&info)),
                }
            }))
        },
    );
    net::emit_summary(json!({
        "requests": counts.requests,
        "answers": counts.answers,
        "other": counts.other,
        "malformed": counts.malformed,
        "send_errors": counts.errors.count,
        "first_send_error": counts.errors.first,
        "recv_errors": counts.recv_errors,
    }));
    Ok(())
}

pub fn search(args: SearchArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        UdpOptions {
            broadcast: true,
            ..UdpOptions::default()
        },
    )?;
    // The browser's token: any byte; it only has to match the answer's.
    let token = (net::now_ns() >> 10) as u8;
    let request = encode_getinfo(token);
    let mut errors = SendErrors::default();
    let (mut rounds, mut sent, mut wrong_token, mut other, mut malformed) =
        (0u32, 0u64, 0u64, 0u64, 0u64);
    let mut recv_errors = 0u64;
    let mut found = None;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        if deadline.passed() {
            break;
        }
        let next = deadline.start + Duration::from_secs(u64::from(rounds));
        if Instant::now() >= next {
            for port in LAN_PORTS {
                let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, port);
                sent += u64::from(net::send_counted(&socket, &request, to, &mut errors));
            }
            rounds += 1;
            continue;
        }
        match net::recv_before(&socket, &mut buf, deadline.cap(next)) {
            Recv::Datagram(n, from) => match parse_info(&buf[..n]) {
                Ok(info) if info.token == token => {
                    net::emit(json!({
                        "info_from": from.to_string(),
                        "name": info.name,
                        "map": info.map,
                        "gametype": info.gametype,
                        "version": info.version,
                        "at_ns": net::now_ns(),
                    }));
                    found = Some(from);
                    break;
                }
                Ok(_) => wrong_token += 1,
                Err(_) if parse_getinfo(&buf[..n]).is_ok_and(|t| t.is_some()) => other += 1,
                Err(_) => malformed += 1,
            },
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    net::emit_summary(json!({
        "found": found.is_some(),
        "requests_sent": sent,
        "wrong_token": wrong_token,
        "other": other,
        "malformed": malformed,
        "send_errors": errors.count,
        "first_send_error": errors.first,
        "recv_errors": recv_errors,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ServerInfo {
        ServerInfo {
            token: 42,
            version: VERSION.into(),
            name: "LAN".into(),
            map: "dm1".into(),
            gametype: "DM".into(),
            flags: 0,
            players: 1,
            max_players: 8,
            clients: 1,
            max_clients: 8,
        }
    }

    #[test]
    fn getinfo_is_fifteen_bytes_like_the_clients() {
        let bytes = encode_getinfo(7);
        assert_eq!(bytes, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffgie3\x07");
        assert_eq!(parse_getinfo(&bytes), Ok(Some(7)));
        // One byte more or less is not a GETINFO.
        assert_eq!(parse_getinfo(&bytes[..14]), Ok(None));
        let mut long = bytes;
        long.push(0);
        assert_eq!(parse_getinfo(&long), Ok(None));
    }

    #[test]
    fn info_round_trips() {
        let bytes = encode_info(&info());
        assert!(bytes.starts_with(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffinf342\0"));
        assert_eq!(parse_info(&bytes), Ok(info()));
    }

    #[test]
    fn strings_are_cut_at_the_packers_limits() {
        let mut long = info();
        long.name = "n".repeat(100);
        let parsed = parse_info(&encode_info(&long)).unwrap();
        assert_eq!(parsed.name.len(), 64);
    }

    #[test]
    fn truncated_and_garbage_do_not_panic() {
        let bytes = encode_info(&info());
        for cut in 0..bytes.len() {
            assert!(parse_info(&bytes[..cut]).is_err(), "{cut}");
            let _ = parse_getinfo(&bytes[..cut]);
        }
        let mut not_connless = encode_getinfo(1);
        not_connless[0] = 0x10;
        assert!(parse_getinfo(&not_connless).is_err());
        for junk in net::garbage(0x8303, 2000) {
            let _ = parse_info(&junk);
            let _ = parse_getinfo(&junk);
            let mut framed = connless(&INFO);
            framed.extend_from_slice(&junk);
            let _ = parse_info(&framed);
        }
    }
}
