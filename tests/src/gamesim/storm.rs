//! A generic paced sender and a counting listener, for broadcast storms and
//! one-way delay. Each payload is `LRGS`, a u32 sequence number and a u64
//! send time (CLOCK_REALTIME ns), big-endian, zero-padded to `--size`.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use super::net::{self, Deadline, Malformed, Recv, UdpOptions};

pub const MAGIC: [u8; 4] = *b"LRGS";
pub const HEADER_LEN: usize = 16;
const MAX_COUNT: u64 = 1_000_000;
/// Time a sender may fall behind its schedule before it gives up.
const GRACE: Duration = Duration::from_secs(5);
/// The listener reads at most this many datagrams.
const MAX_RECEIVES: u64 = 2_000_000;

/// Send N sequenced, timestamped datagrams at a fixed rate.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Destination IP:PORT (unicast, broadcast or multicast).
    #[arg(long)]
    to: SocketAddrV4,
    /// How many datagrams (at most 1,000,000).
    #[arg(long)]
    count: u64,
    /// Datagrams per second.
    #[arg(long)]
    rate: f64,
    /// Set SO_BROADCAST (needed for a broadcast destination).
    #[arg(long)]
    broadcast: bool,
    /// Local address to send from.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddrV4,
    /// Datagram size in bytes (16 to 65507).
    #[arg(long, default_value_t = 64)]
    size: usize,
}

/// Count sequenced datagrams and their one-way delay.
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// UDP port to bind on 0.0.0.0.
    #[arg(long)]
    port: u16,
    /// Stop after this many seconds.
    #[arg(long, value_parser = net::parse_seconds)]
    seconds: Duration,
    /// Join this multicast group (interface INADDR_ANY).
    #[arg(long)]
    group: Option<Ipv4Addr>,
    /// Count only datagrams from this IP; others go to `unexpected`.
    #[arg(long)]
    expect_from: Option<Ipv4Addr>,
}

pub fn encode(seq: u32, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER_LEN));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_ns.to_be_bytes());
    out.resize(size.max(HEADER_LEN), 0);
    out
}

/// The sequence number and send time of a payload.
pub fn decode(datagram: &[u8]) -> Result<(u32, u64), Malformed> {
    let header = datagram
        .get(..HEADER_LEN)
        .ok_or(Malformed("shorter than 16 bytes"))?;
    if header[..4] != MAGIC {
        return Err(Malformed("no LRGS magic"));
    }
    let mut seq = [0u8; 4];
    seq.copy_from_slice(&header[4..8]);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&header[8..16]);
    Ok((u32::from_be_bytes(seq), u64::from_be_bytes(sent)))
}

/// When datagram `index` is due: a fixed schedule from the start, so
/// sleeping late once does not slow the rest down.
fn due(start: Instant, index: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(index as f64 / rate)
}

pub fn send(args: SendArgs) -> Result<()> {
    if args.count > MAX_COUNT {
        bail!("--count must be at most {MAX_COUNT} (got {})", args.count);
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 10_000_000.0) {
        bail!(
            "--rate must be a number of datagrams per second above 0 and at most 10000000 (got {})",
            args.rate
        );
    }
    if !(HEADER_LEN..=net::MAX_DATAGRAM).contains(&args.size) {
        bail!(
            "--size must be {HEADER_LEN} to {} bytes (got {})",
            net::MAX_DATAGRAM,
            args.size
        );
    }
    // A multicast destination gets no options at all, like Minecraft's
    // pinger: default TTL 1, loopback on, the kernel's route picks the
    // interface.
    let socket = net::udp_bind(
        args.bind,
        UdpOptions {
            broadcast: args.broadcast,
            ..UdpOptions::default()
        },
    )?;
    let start = Instant::now();
    let give_up = start + Duration::from_secs_f64(args.count as f64 / args.rate) + GRACE;
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    let mut payload = encode(0, 0, args.size);
    for index in 0..args.count {
        let now = Instant::now();
        if now >= give_up {
            break;
        }
        let at = due(start, index, args.rate);
        if at > now {
            std::thread::sleep(at - now);
        }
        // Only the header changes between datagrams.
        let header = encode(index as u32, net::now_ns(), HEADER_LEN);
        payload[..HEADER_LEN].copy_from_slice(&header);
        match socket.send_to(&payload, args.to) {
            Ok(_) => sent += 1,
            Err(e) => {
                errors += 1;
                if first_error.is_none() {
                    eprintln!("lanrage-gamesim: sending to {}: {e}", args.to);
                    first_error = Some(e.to_string());
                }
            }
        }
    }
    net::emit_summary(json!({
        "sent": sent,
        "errors": errors,
        "first_error": first_error,
        "elapsed_s": start.elapsed().as_secs_f64(),
    }));
    Ok(())
}

/// Percentile by nearest rank over sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What the listener keeps; `summary` turns it into the JSON.
#[derive(Default)]
pub struct Tally {
    received: u64,
    duplicates: u64,
    malformed: u64,
    unexpected: u64,
    seen: HashSet<(SocketAddrV4, u32)>,
    sources: BTreeMap<String, u64>,
    delays_us: Vec<i64>,
    first_at_ns: Option<u64>,
    last_at_ns: Option<u64>,
    max_seq: Option<u32>,
}

impl Tally {
    pub fn handle(
        &mut self,
        datagram: &[u8],
        from: SocketAddrV4,
        at_ns: u64,
        expect_from: Option<Ipv4Addr>,
    ) {
        let Ok((seq, sent_ns)) = decode(datagram) else {
            self.malformed += 1;
            return;
        };
        *self.sources.entry(from.to_string()).or_default() += 1;
        if expect_from.is_some_and(|ip| ip != *from.ip()) {
            self.unexpected += 1;
            return;
        }
        self.received += 1;
        if !self.seen.insert((from, seq)) {
            self.duplicates += 1;
        }
        let delay_ns = i128::from(at_ns) - i128::from(sent_ns);
        self.delays_us
            .push(i64::try_from(delay_ns / 1000).unwrap_or(i64::MAX));
        self.first_at_ns.get_or_insert(at_ns);
        self.last_at_ns = Some(at_ns);
        self.max_seq = self.max_seq.max(Some(seq));
    }

    pub fn summary(mut self) -> serde_json::Value {
        self.delays_us.sort_unstable();
        let delay = if self.delays_us.is_empty() {
            serde_json::Value::Null
        } else {
            json!({
                "min": self.delays_us.first(),
                "median": percentile(&self.delays_us, 50.0),
                "p99": percentile(&self.delays_us, 99.0),
                "max": self.delays_us.last(),
            })
        };
        json!({
            "received": self.received,
            "unique": self.seen.len(),
            "duplicates": self.duplicates,
            "malformed": self.malformed,
            "unexpected": self.unexpected,
            "sources": self.sources,
            "max_seq": self.max_seq,
            "delay_us": delay,
            "first_at_ns": self.first_at_ns,
            "last_at_ns": self.last_at_ns,
        })
    }
}

pub fn listen(args: ListenArgs) -> Result<()> {
    if let Some(group) = args.group {
        if !group.is_multicast() {
            bail!("--group must be a multicast address (224.0.0.0/4), got {group}");
        }
    }
    let deadline = Deadline::after(args.seconds);
    let socket = net::udp_bind(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, args.port),
        UdpOptions {
            reuse_addr: true,
            join: args.group,
            // A storm must not be lost in this listener's own queue.
            recv_buffer: Some(4 << 20),
            ..UdpOptions::default()
        },
    )?;
    let mut tally = Tally::default();
    let mut recv_errors = 0u64;
    let mut buf = vec![0u8; net::MAX_DATAGRAM];
    for _ in 0..MAX_RECEIVES {
        match net::recv_before(&socket, &mut buf, deadline.end) {
            Recv::Datagram(n, from) => {
                tally.handle(&buf[..n], from, net::now_ns(), args.expect_from)
            }
            Recv::Timeout if deadline.passed() => break,
            Recv::Timeout => {}
            Recv::Error => recv_errors += 1,
        }
    }
    let mut summary = tally.summary();
    summary["recv_errors"] = json!(recv_errors);
    net::emit_summary(summary);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 66, 0, last), port)
    }

    #[test]
    fn round_trip_and_padding() {
        let bytes = encode(7, 0x0102_0304_0506_0708, 64);
        assert_eq!(bytes.len(), 64);
        assert_eq!(
            &bytes[..16],
            b"LRGS\0\0\0\x07\x01\x02\x03\x04\x05\x06\x07\x08"
        );
        assert!(bytes[16..].iter().all(|&b| b == 0));
        assert_eq!(decode(&bytes), Ok((7, 0x0102_0304_0506_0708)));
        assert_eq!(encode(1, 2, 3).len(), HEADER_LEN);
    }

    #[test]
    fn truncated_and_garbage_are_malformed() {
        let bytes = encode(1, 2, 16);
        for cut in 0..16 {
            assert!(decode(&bytes[..cut]).is_err());
        }
        assert!(decode(b"LRGX0123456789abcdef").is_err());
        for junk in net::garbage(0x1265, 1000) {
            let _ = decode(&junk);
        }
    }

    #[test]
    fn schedule_does_not_drift() {
        let start = Instant::now();
        assert_eq!(due(start, 0, 100.0), start);
        assert_eq!(due(start, 250, 100.0), start + Duration::from_millis(2500));
    }

    #[test]
    fn tally_counts_duplicates_sources_and_delay() {
        let mut t = Tally::default();
        let a = peer(1, 5000);
        t.handle(&encode(0, 1_000_000, 64), a, 1_500_000, None);
        t.handle(&encode(1, 2_000_000, 64), a, 2_100_000, None);
        t.handle(&encode(1, 2_000_000, 64), a, 2_300_000, None);
        // The same sequence number from another source is not a duplicate.
        t.handle(&encode(1, 2_000_000, 64), peer(2, 5000), 2_200_000, None);
        t.handle(b"junk", a, 3_000_000, None);
        let s = t.summary();
        assert_eq!(s["received"], 4);
        assert_eq!(s["unique"], 3);
        assert_eq!(s["duplicates"], 1);
        assert_eq!(s["malformed"], 1);
        assert_eq!(s["sources"]["10.66.0.1:5000"], 3);
        assert_eq!(s["delay_us"]["min"], 100);
        assert_eq!(s["delay_us"]["max"], 500);
        assert_eq!(s["delay_us"]["median"], 200);
        assert_eq!(s["first_at_ns"], 1_500_000);
        assert_eq!(s["last_at_ns"], 2_200_000);
        assert_eq!(s["max_seq"], 1);
    }

    #[test]
    fn tally_sets_unexpected_sources_apart() {
        let mut t = Tally::default();
        let only = Some(Ipv4Addr::new(10, 66, 0, 1));
        t.handle(&encode(0, 0, 16), peer(1, 1), 10_000, only);
        t.handle(&encode(0, 0, 16), peer(9, 1), 10_000, only);
        let s = t.summary();
        assert_eq!(
            (s["received"].as_u64(), s["unexpected"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(s["sources"]["10.66.0.9:1"], 1);
        let empty = Tally::default().summary();
        assert!(empty["delay_us"].is_null());
        assert!(empty["first_at_ns"].is_null());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[5], 99.0), Some(5));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
