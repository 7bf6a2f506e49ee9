//! What every subcommand shares: the clock (CLOCK_REALTIME nanoseconds for
//! the output, a monotonic deadline for the loops), the JSON-lines output,
//! sockets bound the way the games bind them, a bounded receive, the host's
//! own IPv4 addresses, and a checked byte reader for the decoders.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// The largest UDP payload over IPv4; receive buffers are this big unless
/// a game reads into a smaller one (Minecraft reads 1024 bytes).
pub const MAX_DATAGRAM: usize = 65_507;

/// Upper bound of `--seconds`: these are test processes, not services.
const MAX_SECONDS: f64 = 3600.0;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, which every network
/// namespace on the host shares, so a listener can subtract a sender's
/// timestamp).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses `--seconds`: a positive number of seconds, at most an hour.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_SECONDS) {
        return Err(format!(
            "must be more than 0 and at most {MAX_SECONDS} seconds (got {text})"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Prints one JSON value as one line on stdout and flushes it, so a test
/// reading the pipe sees each event when it happens. A closed stdout is not
/// an error worth stopping for: the summary is best effort too.
pub fn emit(value: serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Prints the final `{"summary": {...}}` line.
pub fn emit_summary(summary: serde_json::Value) {
    emit(serde_json::json!({ "summary": summary }));
}

/// The end of a run: every loop checks it, every blocking call waits at most
/// until it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub start: Instant,
    pub end: Instant,
}

impl Deadline {
    pub fn after(run_for: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            end: start + run_for,
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.end
    }

    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// The earlier of `at` and the end.
    pub fn cap(&self, at: Instant) -> Instant {
        at.min(self.end)
    }
}

/// Socket options set before `bind`, as the game does.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpOptions {
    pub reuse_addr: bool,
    pub reuse_port: bool,
    pub broadcast: bool,
    /// IP_MULTICAST_TTL; `None` keeps the kernel default (1).
    pub multicast_ttl: Option<u32>,
    /// IP_TTL for unicast; `None` keeps the kernel default (64).
    pub unicast_ttl: Option<u32>,
    /// IP_ADD_MEMBERSHIP with interface INADDR_ANY after bind: the kernel
    /// picks the interface by the route to the group.
    pub join: Option<Ipv4Addr>,
    /// SO_RCVBUF, best effort (the kernel may cap it).
    pub recv_buffer: Option<usize>,
}

/// A UDP socket bound to `bind` with `opts`; the error names the address and
/// the option that failed.
pub fn udp_bind(bind: SocketAddrV4, opts: UdpOptions) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("creating a UDP socket")?;
    if opts.reuse_addr {
        socket
            .set_reuse_address(true)
            .context("setting SO_REUSEADDR")?;
    }
    if opts.reuse_port {
        socket
            .set_reuse_port(true)
            .context("setting SO_REUSEPORT")?;
    }
    if opts.broadcast {
        socket.set_broadcast(true).context("setting SO_BROADCAST")?;
    }
    if let Some(ttl) = opts.multicast_ttl {
        socket
            .set_multicast_ttl_v4(ttl)
            .context("setting IP_MULTICAST_TTL")?;
    }
    if let Some(ttl) = opts.unicast_ttl {
        socket.set_ttl_v4(ttl).context("setting IP_TTL")?;
    }
    if let Some(bytes) = opts.recv_buffer {
        // Best effort: an unprivileged process gets at most rmem_max.
        let _ = socket.set_recv_buffer_size(bytes);
    }
    socket
        .bind(&SocketAddr::V4(bind).into())
        .with_context(|| format!("binding UDP {bind} (is another process using the port?)"))?;
    if let Some(group) = opts.join {
        socket
            .join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)
            .with_context(|| {
                format!("joining multicast group {group} on INADDR_ANY (is there a route to it?)")
            })?;
    }
    Ok(socket.into())
}

/// What one bounded receive gave.
#[derive(Debug)]
pub enum Recv {
    Datagram(usize, SocketAddrV4),
    /// Nothing arrived before the time given (or it had passed).
    Timeout,
    /// An error the loop counts and survives (e.g. an ICMP error queued on
    /// the socket); `recv_before` has slept a little so a loop cannot spin.
    Error,
}

/// Receives one datagram, waiting at most until `until`.
pub fn recv_before(socket: &UdpSocket, buf: &mut [u8], until: Instant) -> Recv {
    let wait = until.saturating_duration_since(Instant::now());
    if wait.is_zero() {
        return Recv::Timeout;
    }
    // A zero timeout means "block forever" to the kernel; never pass one.
    let wait = wait.max(Duration::from_millis(1));
    if socket.set_read_timeout(Some(wait)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
        return Recv::Error;
    }
    match socket.recv_from(buf) {
        Ok((n, SocketAddr::V4(from))) => Recv::Datagram(n, from),
        // An AF_INET socket has no IPv6 peers; treat one as noise.
        Ok((_, SocketAddr::V6(_))) => Recv::Timeout,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Recv::Timeout
        }
        Err(_) => {
            std::thread::sleep(Duration::from_millis(10));
            Recv::Error
        }
    }
}

/// A datagram a responder recognised: the fields of its event, and the
/// reply to send back to its source (none: seen, not answered).
pub struct Request {
    pub fields: serde_json::Value,
    pub reply: Option<Vec<u8>>,
}

/// What [`answer_requests`] counted over its run.
#[derive(Debug, Default)]
pub struct Answered {
    pub requests: u64,
    pub answers: u64,
    /// Datagrams that parsed but weren't requests (our own broadcasts
    /// coming back, others' answers).
    pub other: u64,
    pub malformed: u64,
    pub recv_errors: u64,
    pub errors: SendErrors,
}

/// The loop of a server that answers each request unicast to its source,
/// as game servers answer a LAN browser: every datagram on `socket` until
/// `deadline` (at most `max`) goes to `answer`. `Ok(Some(request))` is
/// answered and reported as an event with the source under `from_key`;
/// `Ok(None)` counts as other, `Err` as malformed.
pub fn answer_requests(
    socket: &UdpSocket,
    deadline: &Deadline,
    max: u64,
    from_key: &str,
    mut answer: impl FnMut(&[u8]) -> Result<Option<Request>, Malformed>,
) -> Answered {
    let mut counts = Answered::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for _ in 0..max {
        match recv_before(socket, &mut buf, deadline.end) {
            Recv::Datagram(n, from) => match answer(&buf[..n]) {
                Ok(Some(request)) => {
                    counts.requests += 1;
                    let sent = request.reply.is_some_and(|reply| {
                        send_counted(socket, &reply, from, &mut counts.errors)
                    });
                    counts.answers += u64::from(sent);
                    let mut event = request.fields;
                    event[from_key] = serde_json::json!(from.to_string());
                    event["answered"] = serde_json::json!(sent);
                    event["at_ns"] = serde_json::json!(now_ns());
                    emit(event);
                }
                Ok(None) => counts.other += 1,
                Err(_) => counts.malformed += 1,
            },
            Recv::Timeout if deadline.passed() => break,
            Recv::Timeout => {}
            Recv::Error => counts.recv_errors += 1,
        }
    }
    counts
}

/// Counts send failures and keeps the first one's text for the summary.
#[derive(Debug, Default)]
pub struct SendErrors {
    pub count: u64,
    pub first: Option<String>,
}

impl SendErrors {
    pub fn record(&mut self, what: &str, e: &io::Error) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("{what}: {e}"));
            eprintln!("lanrage-gamesim: {what}: {e}");
        }
    }
}

/// Sends `payload` to `to`, recording a failure instead of stopping.
pub fn send_counted(
    socket: &UdpSocket,
    payload: &[u8],
    to: SocketAddrV4,
    errors: &mut SendErrors,
) -> bool {
    match socket.send_to(payload, to) {
        Ok(_) => true,
        Err(e) => {
            errors.record(&format!("sending to {to}"), &e);
            false
        }
    }
}

/// This host's (this namespace's) IPv4 addresses, from getifaddrs(3).
pub fn local_ipv4s() -> Vec<Ipv4Addr> {
    let mut found = vec![Ipv4Addr::LOCALHOST];
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return found;
    }
    let mut cursor = head;
    // The list is finite; the bound only guards against a corrupt one.
    for _ in 0..4096 {
        if cursor.is_null() {
            break;
        }
        // SAFETY: cursor is a non-null node of the list getifaddrs gave us,
        // which stays valid until freeifaddrs.
        let node = unsafe { &*cursor };
        if !node.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr whose
            // sa_family says which struct it is.
            let family = unsafe { (*node.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET means the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !found.contains(&ip) {
                    found.push(ip);
                }
            }
        }
        cursor = node.ifa_next;
    }
    // SAFETY: head came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// A datagram that does not parse. Decoders return it; loops count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A checked cursor over received bytes: every read says what it wanted
/// when the datagram is too short.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.rest().is_empty()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed(what))?;
        let bytes = self.buf.get(self.pos..end).ok_or(Malformed(what))?;
        self.pos = end;
        Ok(bytes)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16_le(&mut self, what: &'static str) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub fn u32_le(&mut self, what: &'static str) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Bytes up to a NUL, which is consumed; a missing NUL is malformed.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let rest = self.rest();
        let len = rest.iter().position(|&b| b == 0).ok_or(Malformed(what))?;
        self.pos += len + 1;
        Ok(&rest[..len])
    }
}

/// Deterministic pseudo-random bytes (xorshift64*) for the no-panic tests of
/// every decoder: no OS randomness, same inputs every run.
#[cfg(test)]
pub fn garbage(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..count)
        .map(|_| {
            let len = (next() % 300) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_positive_and_bounded() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("7200").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn reader_reports_short_input() {
        let mut r = Reader::new(&[1, 0, 2, b'a', b'b', 0, 9]);
        assert_eq!(r.u16_le("w"), Ok(1));
        assert_eq!(r.u8("b"), Ok(2));
        assert_eq!(r.cstr("s"), Ok(&b"ab"[..]));
        assert_eq!(r.u32_le("d"), Err(Malformed("d")));
        assert_eq!(r.cstr("t"), Err(Malformed("t")));
        assert_eq!(r.take(usize::MAX, "huge"), Err(Malformed("huge")));
        assert_eq!(r.rest(), &[9]);
    }

    #[test]
    fn garbage_is_deterministic() {
        assert_eq!(garbage(7, 3), garbage(7, 3));
        assert_ne!(garbage(7, 3), garbage(8, 3));
    }
}
