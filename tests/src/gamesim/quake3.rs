//! Quake III Arena LAN browsing as ioquake3 does it (ioquake/ioq3
//! `code/client/cl_main.c` CL_LocalServers_f, `code/server/sv_main.c`
//! SVC_Info, `code/qcommon/q_shared.c` Info_SetValueForKey).
//!
//! - Client: the out-of-band datagram `FF FF FF FF "getinfo xxx"` (the
//!   `xxx` is a challenge the server echoes), sent twice to
//!   255.255.255.255 on each of ports 27960..=27963 (PORT_SERVER and
//!   NUM_SERVER_PORTS = 4), plus the same to IPv6 multicast, which this
//!   skips. ioquake3 sends from its one socket, bound to net_port (27960,
//!   or the next free of 10); this binds port 0 unless `--bind-port`.
//! - Server: UDP 0.0.0.0:27960 (SO_BROADCAST set, as ioq3 sets it on every
//!   socket). On `getinfo <challenge>` it answers to the source address and
//!   port: `FF FF FF FF "infoResponse\n"` then an info string
//!   `\key\value...`. Info_SetValueForKey puts each new key in front, so
//!   the string lists the keys in the reverse of the order SVC_Info sets
//!   them (challenge first set, so last on the wire).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::net::{self, Deadline, Malformed, Recv, Request, SendErrors, UdpOptions};

pub const OOB: [u8; 4] = [0xFF; 4];
pub const PORT_SERVER: u16 = 27960;
pub const NUM_SERVER_PORTS: u16 = 4;
/// ioquake3's PROTOCOL_VERSION.
const PROTOCOL: &str = "68";
/// SVC_Info ignores challenges longer than this.
const MAX_CHALLENGE: usize = 128;
const CHALLENGE: &str = "xxx";
const MAX_RECEIVES: u64 = 1_000_000;
const MAX_INFO_KEYS: usize = 128;

/// Be a Quake 3 server that answers LAN browsers.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// The server's UDP port (net_port).
    #[arg(long, default_value_t = PORT_SERVER)]
    port: u16,
    /// sv_hostname.
    #[arg(long, default_value = "LANrage Q3")]
    hostname: String,
}

/// Refresh the LAN server list like the ioquake3 client.
#[derive(Args, Debug)]
pub struct GetinfoArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// The client's own UDP port; ioquake3 uses 27960 (or the next free).
    #[arg(long, default_value_t = 0)]
    bind_port: u16,
}

pub fn encode_getinfo(challenge: &str) -> Vec<u8> {
    let mut out = OOB.to_vec();
    out.extend_from_slice(format!("getinfo {challenge}").as_bytes());
    out
}

/// The first line of an out-of-band datagram, split into words, and the
/// bytes after it. MSG_ReadStringLine stops at `\n`, NUL or the end.
fn oob_command(datagram: &[u8]) -> Result<(Vec<String>, &[u8]), Malformed> {
    let body = datagram
        .strip_prefix(&OOB)
        .ok_or(Malformed("not out-of-band (no FF FF FF FF)"))?;
    let end = body
        .iter()
        .position(|&b| b == b'\n' || b == 0)
        .unwrap_or(body.len());
    let line = String::from_utf8_lossy(&body[..end]);
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        return Err(Malformed("empty out-of-band command"));
    }
    let rest = body.get(end + 1..).unwrap_or(&[]);
    Ok((words, rest))
}

/// The server's settings that end up in the info string.
pub struct ServerInfo {
    pub hostname: String,
    pub mapname: String,
    pub clients: u32,
    pub max_clients: u32,
    pub gametype: u32,
}

/// Info_SetValueForKey refuses these characters in keys and values.
fn info_safe(value: &str) -> bool {
    !value.contains(['\\', ';', '"'])
}

/// The info string as SVC_Info builds it: keys set in this order, each put
/// in front of the ones before.
pub fn info_string(challenge: &str, server: &ServerInfo) -> String {
    let set_order = [
        ("challenge", challenge.to_owned()),
        ("protocol", PROTOCOL.to_owned()),
        ("hostname", server.hostname.clone()),
        ("mapname", server.mapname.clone()),
        ("clients", server.clients.to_string()),
        ("g_humanplayers", server.clients.to_string()),
        ("sv_maxclients", server.max_clients.to_string()),
        ("gametype", server.gametype.to_string()),
        ("pure", "1".to_owned()),
        ("g_needpass", "0".to_owned()),
    ];
    let mut out = String::new();
    for (key, value) in set_order.iter().rev() {
        // An empty or unsafe value is not set at all.
        if !value.is_empty() && info_safe(value) {
            out.push('\\');
            out.push_str(key);
            out.push('\\');
            out.push_str(value);
        }
    }
    out
}

/// The server's answer to one datagram: `Ok(Some((challenge, reply)))` for a
/// `getinfo`, `Ok(None)` for another out-of-band command.
pub fn answer(
    datagram: &[u8],
    server: &ServerInfo,
) -> Result<Option<(String, Vec<u8>)>, Malformed> {
    let (words, _) = oob_command(datagram)?;
    if !words[0].eq_ignore_ascii_case("getinfo") {
        return Ok(None);
    }
    let challenge = words.get(1).cloned().unwrap_or_default();
    if challenge.len() > MAX_CHALLENGE {
        return Ok(None);
    }
    let mut reply = OOB.to_vec();
    reply.extend_from_slice(b"infoResponse\n");
    reply.extend_from_slice(info_string(&challenge, server).as_bytes());
    Ok(Some((challenge, reply)))
}

/// Key/value pairs of an `infoResponse`, in wire order.
pub fn parse_info_response(datagram: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
    let (words, rest) = oob_command(datagram)?;
    if !words[0].eq_ignore_ascii_case("infoResponse") {
        return Err(Malformed("not an infoResponse"));
    }
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let text = String::from_utf8_lossy(&rest[..end]);
    let body = text
        .strip_prefix('\\')
        .ok_or(Malformed("info string does not start with \\"))?;
    let parts: Vec<&str> = body.split('\\').collect();
    if !parts.len().is_multiple_of(2) || parts.len() / 2 > MAX_INFO_KEYS {
        return Err(Malformed("info string is not key/value pairs"));
    }
    Ok(parts
        .chunks(2)
        .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
        .collect())
}

fn value<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
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
    let info = ServerInfo {
        hostname: args.hostname,
        mapname: "q3dm17".to_owned(),
        clients: 0,
        max_clients: 8,
        gametype: 0,
    };
    let counts = net::answer_requests(
        &socket,
        &deadline,
        MAX_RECEIVES,
        "getinfo_from",
        |datagram| {
            Ok(answer(datagram, &info)?.map(|(challenge, reply)| Request {
                fields: json!({ "challenge": challenge }),
                reply: Some(reply),
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

pub fn getinfo(args: GetinfoArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, args.bind_port),
        UdpOptions {
            broadcast: true,
            ..UdpOptions::default()
        },
    )?;
    let request = encode_getinfo(CHALLENGE);
    let mut errors = SendErrors::default();
    let (mut rounds, mut sent, mut other, mut malformed, mut recv_errors) =
        (0u32, 0u64, 0u64, 0u64, 0u64);
    let mut found = None;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        if deadline.passed() {
            break;
        }
        let next = deadline.start + Duration::from_secs(u64::from(rounds));
        if Instant::now() >= next {
            // "send each message twice in case one is dropped"
            for _ in 0..2 {
                for port in PORT_SERVER..PORT_SERVER + NUM_SERVER_PORTS {
                    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, port);
                    sent += u64::from(net::send_counted(&socket, &request, to, &mut errors));
                }
            }
            rounds += 1;
            continue;
        }
        match net::recv_before(&socket, &mut buf, deadline.cap(next)) {
            Recv::Datagram(n, from) => match parse_info_response(&buf[..n]) {
                Ok(info) => {
                    net::emit(json!({
                        "info_from": from.to_string(),
                        "hostname": value(&info, "hostname"),
                        "mapname": value(&info, "mapname"),
                        "challenge": value(&info, "challenge"),
                        "at_ns": net::now_ns(),
                    }));
                    found = Some(from);
                    break;
                }
                // Our own getinfo if we share a port with a server, others.
                Err(_) if buf[..n].starts_with(&OOB) => other += 1,
                Err(_) => malformed += 1,
            },
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    net::emit_summary(json!({
        "found": found.is_some(),
        "requests_sent": sent,
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

    fn server_info() -> ServerInfo {
        ServerInfo {
            hostname: "LAN party".into(),
            mapname: "q3dm17".into(),
            clients: 0,
            max_clients: 8,
            gametype: 0,
        }
    }

    #[test]
    fn getinfo_is_the_clients_bytes() {
        assert_eq!(encode_getinfo("xxx"), b"\xff\xff\xff\xffgetinfo xxx");
    }

    #[test]
    fn answer_round_trips_with_the_challenge_last() {
        let (challenge, reply) = answer(&encode_getinfo("xxx"), &server_info())
            .unwrap()
            .unwrap();
        assert_eq!(challenge, "xxx");
        assert!(reply.starts_with(b"\xff\xff\xff\xffinfoResponse\n\\g_needpass\\0\\pure\\1\\"));
        assert!(reply.ends_with(b"\\hostname\\LAN party\\protocol\\68\\challenge\\xxx"));
        let info = parse_info_response(&reply).unwrap();
        assert_eq!(value(&info, "hostname"), Some("LAN party"));
        assert_eq!(value(&info, "challenge"), Some("xxx"));
        assert_eq!(value(&info, "sv_maxclients"), Some("8"));
    }

    #[test]
    fn server_rules() {
        let info = server_info();
        // Case-insensitive command; a trailing newline is fine.
        assert!(answer(b"\xff\xff\xff\xffGETINFO abc\n", &info)
            .unwrap()
            .is_some());
        // No challenge: no challenge key in the answer.
        let (_, reply) = answer(b"\xff\xff\xff\xffgetinfo", &info).unwrap().unwrap();
        assert_eq!(
            value(&parse_info_response(&reply).unwrap(), "challenge"),
            None
        );
        // A challenge an info string cannot hold is left out.
        let (_, reply) = answer(b"\xff\xff\xff\xffgetinfo a\\b", &info)
            .unwrap()
            .unwrap();
        assert_eq!(
            value(&parse_info_response(&reply).unwrap(), "challenge"),
            None
        );
        // Too long a challenge, another command: no answer.
        let long = encode_getinfo(&"c".repeat(129));
        assert_eq!(answer(&long, &info), Ok(None));
        assert_eq!(answer(b"\xff\xff\xff\xffgetstatus", &info), Ok(None));
        // Not out-of-band, or empty.
        assert!(answer(b"getinfo xxx", &info).is_err());
        assert!(answer(b"\xff\xff\xff\xff\n", &info).is_err());
    }

    #[test]
    fn truncated_and_garbage_do_not_panic() {
        let (_, reply) = answer(&encode_getinfo("xxx"), &server_info())
            .unwrap()
            .unwrap();
        for cut in 0..reply.len() {
            let _ = parse_info_response(&reply[..cut]);
            let _ = answer(&reply[..cut], &server_info());
        }
        assert!(parse_info_response(b"\xff\xff\xff\xffinfoResponse\n\\odd").is_err());
        assert!(parse_info_response(b"\xff\xff\xff\xffinfoResponse\nnoslash").is_err());
        for junk in net::garbage(0x27960, 2000) {
            let _ = parse_info_response(&junk);
            let _ = answer(&junk, &server_info());
            let mut oob = OOB.to_vec();
            oob.extend_from_slice(&junk);
            let _ = parse_info_response(&oob);
            let _ = answer(&oob, &server_info());
        }
    }
}
