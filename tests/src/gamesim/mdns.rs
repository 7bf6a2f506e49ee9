//! Multicast DNS (RFC 6762) for one A record: a responder shaped like
//! avahi-daemon's socket and a querier, both ways a querier can ask.
//!
//! Messages are built and parsed with the `simple-dns` crate (it knows the
//! mDNS QU and cache-flush bits). On the wire:
//! - query: ID 0 (§18.1), flags 0, one question `NAME A IN`, QU bit clear
//!   (§5.4), from UDP 5353 to 224.0.0.251:5353, IP TTL 255 (§11);
//! - multicast answer: ID 0, flags QR|AA (0x8400), no question (§6), one
//!   answer `NAME A IN` with the cache-flush bit (class 0x8001, §10.2),
//!   TTL 120 s (§10), from 5353 to 224.0.0.251:5353, IP TTL 255;
//! - legacy unicast (§6.7): a query from a port other than 5353 is answered
//!   to its source address and port, with its ID and its question repeated,
//!   the record TTL at most 10 s and no cache-flush bit (§10.2: "MUST NOT be
//!   set in legacy unicast responses");
//! - a QU question from port 5353 is answered unicast to its source (§5.4).
//!
//! Queries with a nonzero OPCODE or RCODE are ignored (§18.3, §18.11), and
//! so are responses (QR=1) at the responder.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use simple_dns::rdata::{RData, A};
use simple_dns::{
    Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE,
};

use super::net::{self, Deadline, Malformed, Recv, SendErrors, UdpOptions};

pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const PORT: u16 = 5353;
/// RFC 6762 §10: host name records get 120 s.
const HOST_TTL: u32 = 120;
/// RFC 6762 §6.7: legacy unicast answers carry at most 10 s.
const LEGACY_TTL: u32 = 10;
/// RFC 6762 §11: every mDNS packet is sent with IP TTL 255.
const IP_TTL: u32 = 255;
const MAX_RECEIVES: u64 = 1_000_000;

/// Answer A queries for one name, like avahi-daemon.
#[derive(Args, Debug)]
pub struct ResponderArgs {
    /// The host name answered, ending in `.local`.
    #[arg(long)]
    name: String,
    /// The IPv4 address in the A record.
    #[arg(long)]
    address: Ipv4Addr,
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
}

/// Resolve one `.local` name over mDNS.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The host name asked for, ending in `.local`.
    #[arg(long)]
    name: String,
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// Ask as a legacy one-shot resolver (RFC 6762 §6.7): from an ephemeral
    /// port, expecting a unicast answer, instead of from port 5353.
    #[arg(long)]
    legacy: bool,
}

/// Lower-case, no trailing dot: how names are compared (DNS names are
/// case-insensitive).
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks `--name` at start, in the user's words.
pub fn check_name(name: &str) -> Result<String> {
    let wanted = normal(name);
    if !wanted.ends_with(".local") || wanted.len() <= ".local".len() {
        bail!("--name must be a host name ending in .local (got `{name}`): mDNS answers only .local names (RFC 6762 §3)");
    }
    if Name::new(&wanted).is_err() || wanted.split('.').any(|l| l.is_empty() || l.len() > 63) {
        bail!("--name `{name}` is not a valid DNS name (labels of 1 to 63 characters)");
    }
    Ok(wanted)
}

/// Where an answer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Multicast,
    Unicast(SocketAddrV4),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub to: Destination,
}

/// A query: ID 0 for an mDNS querier on port 5353, the resolver's own ID
/// for a legacy one.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, Malformed> {
    let mut packet = Packet::new_query(id);
    let qname = Name::new(name).map_err(|_| Malformed("not a DNS name"))?;
    packet.questions.push(Question::new(
        qname,
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet
        .build_bytes_vec()
        .map_err(|_| Malformed("could not build the query"))
}

fn a_record<'a>(
    name: &'a str,
    address: Ipv4Addr,
    ttl: u32,
    cache_flush: bool,
) -> ResourceRecord<'a> {
    ResourceRecord::new(
        Name::new_unchecked(name),
        CLASS::IN,
        ttl,
        RData::A(A {
            address: u32::from(address),
        }),
    )
    .with_cache_flush(cache_flush)
}

fn asks_for(question: &Question, name: &str) -> bool {
    let type_ok = matches!(question.qtype, QTYPE::TYPE(TYPE::A) | QTYPE::ANY);
    let class_ok = matches!(question.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY);
    type_ok && class_ok && normal(&question.qname.to_string()) == name
}

/// The responder's decision for one datagram from `from`: `Ok(None)` when
/// it is not a query for `name` (or is one the RFC says to ignore).
pub fn respond(
    datagram: &[u8],
    from: SocketAddrV4,
    name: &str,
    address: Ipv4Addr,
) -> Result<Option<Reply>, Malformed> {
    let query = Packet::parse(datagram).map_err(|_| Malformed("not a DNS message"))?;
    if query.has_flags(PacketFlag::RESPONSE)
        || query.opcode() != OPCODE::StandardQuery
        || query.rcode() != RCODE::NoError
    {
        return Ok(None);
    }
    let Some(question) = query.questions.iter().find(|q| asks_for(q, name)) else {
        return Ok(None);
    };
    let legacy = from.port() != PORT;
    let mut reply = Packet::new_reply(if legacy { query.id() } else { 0 });
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    let to = if legacy {
        reply.questions.push(question.clone());
        reply
            .answers
            .push(a_record(name, address, LEGACY_TTL, false));
        Destination::Unicast(from)
    } else {
        reply.answers.push(a_record(name, address, HOST_TTL, true));
        if question.unicast_response {
            Destination::Unicast(from)
        } else {
            Destination::Multicast
        }
    };
    let bytes = reply
        .build_bytes_vec()
        .map_err(|_| Malformed("could not build the answer"))?;
    Ok(Some(Reply { bytes, to }))
}

/// The querier's reading of one datagram: the address of `name` if it is an
/// answer (QR=1, with `id` when given) holding an A record for it.
pub fn find_answer(
    datagram: &[u8],
    name: &str,
    id: Option<u16>,
) -> Result<Option<Ipv4Addr>, Malformed> {
    let packet = Packet::parse(datagram).map_err(|_| Malformed("not a DNS message"))?;
    if !packet.has_flags(PacketFlag::RESPONSE) || id.is_some_and(|id| packet.id() != id) {
        return Ok(None);
    }
    let found = packet
        .answers
        .iter()
        .chain(packet.additional_records.iter())
        .find_map(|rr| match &rr.rdata {
            RData::A(a) if normal(&rr.name.to_string()) == name => Some(Ipv4Addr::from(a.address)),
            _ => None,
        });
    Ok(found)
}

/// The socket of an RFC 6762 responder or querier: 0.0.0.0:5353 shared
/// (SO_REUSEADDR and SO_REUSEPORT), TTL 255 both ways, joined to
/// 224.0.0.251 on INADDR_ANY.
fn mdns_socket() -> Result<std::net::UdpSocket> {
    net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
        UdpOptions {
            reuse_addr: true,
            reuse_port: true,
            multicast_ttl: Some(IP_TTL),
            unicast_ttl: Some(IP_TTL),
            join: Some(GROUP),
            ..UdpOptions::default()
        },
    )
}

pub fn responder(args: ResponderArgs) -> Result<()> {
    let name = check_name(&args.name)?;
    let deadline = Deadline::after(args.seconds);
    // avahi-daemon: 0.0.0.0:5353 with SO_REUSEADDR (and SO_REUSEPORT),
    // IP_MULTICAST_TTL 255, IP_TTL 255, loopback on. avahi joins the group
    // per interface; this joins once on INADDR_ANY (the kernel's route).
    let socket = mdns_socket()?;
    let mut errors = SendErrors::default();
    let (mut queries, mut answers, mut malformed, mut recv_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        let (n, from) = match net::recv_before(&socket, &mut buf, deadline.end) {
            Recv::Datagram(n, from) => (n, from),
            Recv::Timeout if deadline.passed() => break,
            Recv::Timeout => continue,
            Recv::Error => {
                recv_errors += 1;
                continue;
            }
        };
        match respond(&buf[..n], from, &name, args.address) {
            Ok(Some(reply)) => {
                queries += 1;
                let (to, how) = match reply.to {
                    Destination::Multicast => (SocketAddrV4::new(GROUP, PORT), "multicast"),
                    Destination::Unicast(to) => (to, "unicast"),
                };
                let sent = net::send_counted(&socket, &reply.bytes, to, &mut errors);
                answers += u64::from(sent);
                net::emit(json!({
                    "query_from": from.to_string(),
                    "name": name,
                    "answered": if sent { how } else { "send failed" },
                    "at_ns": net::now_ns(),
                }));
            }
            // Other names, responses (ours come back), probes for others.
            Ok(None) => {}
            Err(_) => malformed += 1,
        }
    }
    net::emit_summary(json!({
        "queries": queries,
        "answers": answers,
        "malformed": malformed,
        "send_errors": errors.count,
        "first_send_error": errors.first,
        "recv_errors": recv_errors,
    }));
    Ok(())
}

pub fn query(args: QueryArgs) -> Result<()> {
    let name = check_name(&args.name)?;
    let deadline = Deadline::after(args.seconds);
    let (socket, id) = if args.legacy {
        // A plain resolver: ephemeral port, no options, its own query ID.
        let socket = net::udp_bind(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            UdpOptions::default(),
        )?;
        let id = (net::now_ns() as u16) | 1;
        (socket, Some(id))
    } else {
        let socket = mdns_socket()?;
        (socket, None)
    };
    let Ok(message) = encode_query(id.unwrap_or(0), &name) else {
        bail!("--name `{}` cannot be put in a DNS question", args.name);
    };
    let to = SocketAddrV4::new(GROUP, PORT);
    let mut errors = SendErrors::default();
    let (mut sent, mut malformed, mut recv_errors) = (0u32, 0u64, 0u64);
    let mut answered = None;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        if deadline.passed() {
            break;
        }
        let next = deadline.start + Duration::from_secs(u64::from(sent));
        if Instant::now() >= next {
            net::send_counted(&socket, &message, to, &mut errors);
            sent += 1;
            continue;
        }
        match net::recv_before(&socket, &mut buf, deadline.cap(next)) {
            Recv::Datagram(n, from) => match find_answer(&buf[..n], &name, id) {
                Ok(Some(address)) => {
                    net::emit(json!({
                        "answer": address.to_string(),
                        "from": from.to_string(),
                        "at_ns": net::now_ns(),
                    }));
                    answered = Some(address);
                    break;
                }
                // Our own query coming back, other hosts' traffic.
                Ok(None) => {}
                Err(_) => malformed += 1,
            },
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    net::emit_summary(json!({
        "answered": answered.is_some(),
        "queries_sent": sent,
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

    const NAME: &str = "lanrage-peer.local";
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 7);

    fn from(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 66, 0, 9), port)
    }

    #[test]
    fn query_bytes_are_an_mdns_query() {
        let bytes = encode_query(0, NAME).unwrap();
        // ID 0, flags 0, QDCOUNT 1, no records.
        assert_eq!(&bytes[..12], &[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        // Name, then QTYPE A (1) and QCLASS IN (1) with the QU bit clear.
        assert_eq!(&bytes[12..25], b"\x0clanrage-peer");
        assert_eq!(&bytes[bytes.len() - 4..], &[0, 1, 0, 1]);
    }

    #[test]
    fn multicast_query_gets_a_multicast_cache_flush_answer() {
        let query = encode_query(0, NAME).unwrap();
        let reply = respond(&query, from(PORT), NAME, ADDR).unwrap().unwrap();
        assert_eq!(reply.to, Destination::Multicast);
        let bytes = &reply.bytes;
        // ID 0, QR|AA, no question, one answer.
        assert_eq!(&bytes[..12], &[0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        let packet = Packet::parse(bytes).unwrap();
        let rr = &packet.answers[0];
        assert!(rr.cache_flush);
        assert_eq!(rr.ttl, HOST_TTL);
        assert_eq!(find_answer(bytes, NAME, None), Ok(Some(ADDR)));
    }

    #[test]
    fn legacy_query_gets_a_unicast_answer_with_its_id_and_question() {
        let query = encode_query(0xBEEF, NAME).unwrap();
        let reply = respond(&query, from(40_000), NAME, ADDR).unwrap().unwrap();
        assert_eq!(reply.to, Destination::Unicast(from(40_000)));
        let packet = Packet::parse(&reply.bytes).unwrap();
        assert_eq!(packet.id(), 0xBEEF);
        assert_eq!(packet.questions.len(), 1);
        assert!(!packet.answers[0].cache_flush);
        assert!(packet.answers[0].ttl <= LEGACY_TTL);
        assert_eq!(
            find_answer(&reply.bytes, NAME, Some(0xBEEF)),
            Ok(Some(ADDR))
        );
        assert_eq!(find_answer(&reply.bytes, NAME, Some(0xBEEE)), Ok(None));
    }

    #[test]
    fn qu_question_gets_a_unicast_answer() {
        let mut packet = Packet::new_query(0);
        packet.questions.push(Question::new(
            Name::new(NAME).unwrap(),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            true,
        ));
        let query = packet.build_bytes_vec().unwrap();
        let reply = respond(&query, from(PORT), NAME, ADDR).unwrap().unwrap();
        assert_eq!(reply.to, Destination::Unicast(from(PORT)));
    }

    #[test]
    fn ignores_what_it_should() {
        // Another name, case-insensitively ours, an answer, AAAA.
        let other = encode_query(0, "someone-else.local").unwrap();
        assert_eq!(respond(&other, from(PORT), NAME, ADDR), Ok(None));
        let upper = encode_query(0, "LANrage-Peer.local").unwrap();
        assert!(respond(&upper, from(PORT), NAME, ADDR).unwrap().is_some());
        let answer = respond(&encode_query(0, NAME).unwrap(), from(PORT), NAME, ADDR)
            .unwrap()
            .unwrap();
        assert_eq!(respond(&answer.bytes, from(PORT), NAME, ADDR), Ok(None));
        let mut aaaa = Packet::new_query(0);
        aaaa.questions.push(Question::new(
            Name::new(NAME).unwrap(),
            QTYPE::TYPE(TYPE::AAAA),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let aaaa = aaaa.build_bytes_vec().unwrap();
        assert_eq!(respond(&aaaa, from(PORT), NAME, ADDR), Ok(None));
        // A query is not an answer to the querier.
        assert_eq!(
            find_answer(&encode_query(0, NAME).unwrap(), NAME, None),
            Ok(None)
        );
    }

    #[test]
    fn names_are_checked_at_start() {
        assert_eq!(check_name("Peer.LOCAL.").unwrap(), "peer.local");
        assert!(check_name("peer.example").is_err());
        assert!(check_name(".local").is_err());
        assert!(check_name("a..local").is_err());
    }

    #[test]
    fn truncated_and_garbage_are_malformed_not_panics() {
        let query = encode_query(0, NAME).unwrap();
        let answer = respond(&query, from(PORT), NAME, ADDR)
            .unwrap()
            .unwrap()
            .bytes;
        for sample in [&query, &answer] {
            for cut in 0..sample.len() {
                assert!(
                    respond(&sample[..cut], from(PORT), NAME, ADDR).is_err(),
                    "{cut}"
                );
                assert!(find_answer(&sample[..cut], NAME, None).is_err(), "{cut}");
            }
        }
        for junk in net::garbage(0x5353, 3000) {
            let _ = respond(&junk, from(PORT), NAME, ADDR);
            let _ = find_answer(&junk, NAME, None);
        }
        // A name compression pointer loop.
        let mut looped = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        let _ = respond(&looped, from(PORT), NAME, ADDR);
        looped[13] = 13;
        let _ = find_answer(&looped, NAME, None);
    }
}
