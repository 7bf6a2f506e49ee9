//! SSDP, the discovery half of UPnP (UPnP Device Architecture 1.1 §1), as
//! miniupnpc (the control point games and torrent clients embed) and
//! miniupnpd (the device) put it on the wire.
//!
//! - Search: `M-SEARCH * HTTP/1.1` with `HOST: 239.255.255.250:1900`,
//!   `MAN: "ssdp:discover"`, `MX: 2`, `ST: ssdp:all`, from an ephemeral
//!   port (miniupnpc's `UPNP_LOCAL_PORT_ANY`) to 239.255.255.250:1900 with
//!   IP_MULTICAST_TTL 2 (miniupnpc's default `ttl = 2`; UDA 1.1: "SHOULD
//!   default to 2").
//! - Answer: `HTTP/1.1 200 OK` with CACHE-CONTROL, EXT, LOCATION, SERVER,
//!   ST, USN, unicast from the device's port 1900 to the search's source.
//!   UDA says to wait a random 0..MX seconds first; this device answers at
//!   once (tests should not wait).
//! - Advertisement: `NOTIFY * HTTP/1.1` with NT `upnp:rootdevice` and
//!   NTS `ssdp:alive`, to 239.255.255.250:1900 at start, TTL 2.
//! - The device binds 0.0.0.0:1900 with SO_REUSEADDR and joins
//!   239.255.255.250 (INADDR_ANY here; miniupnpd joins per interface).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use super::net::{self, Deadline, Malformed, Recv, Request, SendErrors, UdpOptions};

pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
pub const PORT: u16 = 1900;
const MULTICAST_TTL: u32 = 2;
const SERVER: &str = "Linux/6 UPnP/1.1 lanrage-gamesim/1";
const UUID: &str = "uuid:4c414e72-6167-4567-616d-6573696d0001";
const MAX_HEADERS: usize = 64;
const MAX_RECEIVES: u64 = 1_000_000;

/// Search for UPnP devices like a control point (miniupnpc).
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
}

/// Be a UPnP root device that answers searches (like miniupnpd).
#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// The device description URL sent in LOCATION.
    #[arg(long)]
    location: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StartLine {
    Search,
    Notify,
    /// A response with this status code.
    Response(u16),
}

/// One SSDP message: an HTTP-over-UDP start line and headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    /// Names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse(datagram: &[u8]) -> Result<Message, Malformed> {
    let text = std::str::from_utf8(datagram).map_err(|_| Malformed("not UTF-8 text"))?;
    // The head ends at the first empty line (CRLF CRLF; bare LF accepted).
    let head_len = [text.find("\r\n\r\n"), text.find("\n\n")]
        .into_iter()
        .flatten()
        .min()
        .ok_or(Malformed("no empty line after the headers"))?;
    let mut lines = text[..head_len]
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().ok_or(Malformed("empty"))?;
    let start = match first.split(' ').collect::<Vec<_>>().as_slice() {
        ["M-SEARCH", "*", "HTTP/1.1"] => StartLine::Search,
        ["NOTIFY", "*", "HTTP/1.1"] => StartLine::Notify,
        ["HTTP/1.1", code, ..] => {
            StartLine::Response(code.parse().map_err(|_| Malformed("bad status code"))?)
        }
        _ => return Err(Malformed("not an SSDP start line")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(Malformed("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(Malformed("header without a colon"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Message { start, headers })
}

pub fn encode_search(st: &str, mx: u8) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {GROUP}:{PORT}\r\nMAN: \"ssdp:discover\"\r\nMX: {mx}\r\nST: {st}\r\n\r\n"
    )
    .into_bytes()
}

pub fn encode_notify(location: &str) -> Vec<u8> {
    format!(
        "NOTIFY * HTTP/1.1\r\nHOST: {GROUP}:{PORT}\r\nCACHE-CONTROL: max-age=1800\r\nLOCATION: {location}\r\n\
         NT: upnp:rootdevice\r\nNTS: ssdp:alive\r\nSERVER: {SERVER}\r\nUSN: {UUID}::upnp:rootdevice\r\n\r\n"
    )
    .into_bytes()
}

fn encode_response(location: &str, st: &str) -> Vec<u8> {
    let usn = if st == UUID {
        UUID.to_owned()
    } else {
        format!("{UUID}::{st}")
    };
    format!(
        "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: {location}\r\n\
         SERVER: {SERVER}\r\nST: {st}\r\nUSN: {usn}\r\n\r\n"
    )
    .into_bytes()
}

/// The device's answer to a message, if it is a search it matches: MAN
/// `"ssdp:discover"` and ST `ssdp:all`, `upnp:rootdevice` or its UUID.
/// A root device answers `ssdp:all` with its root device entry.
pub fn answer(message: &Message, location: &str) -> Option<Vec<u8>> {
    if message.start != StartLine::Search || message.header("man") != Some("\"ssdp:discover\"") {
        return None;
    }
    match message.header("st")? {
        "ssdp:all" | "upnp:rootdevice" => Some(encode_response(location, "upnp:rootdevice")),
        st if st == UUID => Some(encode_response(location, UUID)),
        _ => None,
    }
}

pub fn device(args: DeviceArgs) -> Result<()> {
    if args.location.is_empty() || args.location.contains(['\r', '\n']) {
        bail!("--location must be one line of text, the device description URL");
    }
    let deadline = Deadline::after(args.seconds);
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        UdpOptions {
            reuse_addr: true,
            multicast_ttl: Some(MULTICAST_TTL),
            join: Some(GROUP),
            ..UdpOptions::default()
        },
    )?;
    let mut errors = SendErrors::default();
    let notified = net::send_counted(
        &socket,
        &encode_notify(&args.location),
        SocketAddrV4::new(GROUP, PORT),
        &mut errors,
    );
    let counts = net::answer_requests(
        &socket,
        &deadline,
        MAX_RECEIVES,
        "search_from",
        |datagram| {
            let message = parse(datagram)?;
            // NOTIFYs (ours come back) and others' responses are not searches.
            if message.start != StartLine::Search {
                return Ok(None);
            }
            Ok(Some(Request {
                fields: json!({ "st": message.header("st") }),
                reply: answer(&message, &args.location),
            }))
        },
    );
    net::emit_summary(json!({
        "notified": notified,
        "searches": counts.requests,
        "answers": counts.answers,
        "malformed": counts.malformed,
        "send_errors": errors.count + counts.errors.count,
        "first_send_error": errors.first.or(counts.errors.first),
        "recv_errors": counts.recv_errors,
    }));
    Ok(())
}

pub fn search(args: SearchArgs) -> Result<()> {
    let deadline = Deadline::after(args.seconds);
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        UdpOptions {
            multicast_ttl: Some(MULTICAST_TTL),
            ..UdpOptions::default()
        },
    )?;
    let message = encode_search("ssdp:all", 2);
    let mut errors = SendErrors::default();
    let (mut sent, mut malformed, mut ignored, mut recv_errors) = (0u32, 0u64, 0u64, 0u64);
    let mut location = None;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        if deadline.passed() {
            break;
        }
        let next = deadline.start + Duration::from_secs(u64::from(sent));
        if Instant::now() >= next {
            net::send_counted(
                &socket,
                &message,
                SocketAddrV4::new(GROUP, PORT),
                &mut errors,
            );
            sent += 1;
            continue;
        }
        match net::recv_before(&socket, &mut buf, deadline.cap(next)) {
            Recv::Datagram(n, from) => match parse(&buf[..n]) {
                Ok(reply) if reply.start == StartLine::Response(200) => {
                    let Some(found) = reply.header("location") else {
                        malformed += 1;
                        continue;
                    };
                    net::emit(json!({
                        "response_from": from.to_string(),
                        "location": found,
                        "st": reply.header("st"),
                        "at_ns": net::now_ns(),
                    }));
                    location = Some(found.to_owned());
                    break;
                }
                Ok(_) => ignored += 1,
                Err(_) => malformed += 1,
            },
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    net::emit_summary(json!({
        "found": location.is_some(),
        "location": location,
        "searches_sent": sent,
        "ignored": ignored,
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

    const LOCATION: &str = "http://10.66.0.7:5000/rootDesc.xml";

    #[test]
    fn search_round_trips_and_is_answered() {
        let bytes = encode_search("ssdp:all", 2);
        assert!(bytes.starts_with(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"));
        let message = parse(&bytes).unwrap();
        assert_eq!(message.start, StartLine::Search);
        assert_eq!(message.header("mx"), Some("2"));
        let reply = parse(&answer(&message, LOCATION).unwrap()).unwrap();
        assert_eq!(reply.start, StartLine::Response(200));
        assert_eq!(reply.header("location"), Some(LOCATION));
        assert_eq!(reply.header("st"), Some("upnp:rootdevice"));
        assert_eq!(reply.header("ext"), Some(""));
    }

    #[test]
    fn answers_only_discover_searches_it_matches() {
        let rootdevice = parse(&encode_search("upnp:rootdevice", 1)).unwrap();
        assert!(answer(&rootdevice, LOCATION).is_some());
        let by_uuid = parse(&encode_search(UUID, 1)).unwrap();
        assert!(answer(&by_uuid, LOCATION).is_some());
        let other = parse(&encode_search(
            "urn:schemas-upnp-org:device:MediaServer:1",
            1,
        ))
        .unwrap();
        assert_eq!(answer(&other, LOCATION), None);
        let no_man = parse(b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n").unwrap();
        assert_eq!(answer(&no_man, LOCATION), None);
        let notify = parse(&encode_notify(LOCATION)).unwrap();
        assert_eq!(notify.start, StartLine::Notify);
        assert_eq!(notify.header("nts"), Some("ssdp:alive"));
        assert_eq!(answer(&notify, LOCATION), None);
        // Header names are case-insensitive; bare \n line ends are accepted.
        let lower =
            parse(b"M-SEARCH * HTTP/1.1\nman: \"ssdp:discover\"\nst: ssdp:all\n\n").unwrap();
        assert!(answer(&lower, LOCATION).is_some());
    }

    #[test]
    fn truncated_and_garbage_do_not_panic() {
        let sample = encode_response(LOCATION, "upnp:rootdevice");
        for cut in 0..sample.len() - 1 {
            assert!(parse(&sample[..cut]).is_err(), "{cut}");
        }
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 OK\r\n\r\n").is_err());
        let many = format!("NOTIFY * HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(100));
        assert!(parse(many.as_bytes()).is_err());
        for junk in net::garbage(0x1900, 2000) {
            let _ = parse(&junk);
        }
    }
}
