//! Setting up the simulated peers: deterministic keys, one UDP socket per
//! peer, LANrage registration with mutual consent, and a real WireGuard
//! handshake per pair through the relay.
//!
//! Each pair is set up in turn (about a millisecond on loopback, most of it
//! X25519), with every wait bounded: [`STEP_TIMEOUT`] per step and
//! [`ATTEMPTS`] tries, so a relay that drops us fails the run in seconds,
//! naming the pair and the step; the whole setup is bounded by
//! `--setup-timeout`, and [`SetupProgress`] says every few seconds what it
//! is waiting for. The handshake is the dance a real client
//! does (see `tests/src/peer.rs`): A's initiation, B's response, and A's
//! confirming keepalive, which B must receive before its side of the
//! session is usable.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use boringtun::noise::{Tunn, TunnResult};
use lanrage_proto::control::{
    ControlMessage, Registration, RegistrationCookie, SessionKeys, NO_COOKIE,
};
use lanrage_proto::mac::derive_secret;
use lanrage_proto::wireguard::{TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{PeerKey, WgMessage};

use super::setup_progress::SetupProgress;

/// How long one step (an ack, a handshake message) may take before a retry.
pub const STEP_TIMEOUT: Duration = Duration::from_millis(500);
/// Tries per step.
pub const ATTEMPTS: u32 = 3;
/// WireGuard's largest datagram here, with room to spare.
pub const BUF_LEN: usize = 2048;

/// The static key of peer `side` (0 = A, 1 = B) of `pair`, derived from the seed.
pub fn peer_secret(seed: u64, pair: usize, side: u8) -> StaticSecret {
    let mut seed32 = [0u8; 32];
    seed32[..8].copy_from_slice(&seed.to_le_bytes());
    let n = (pair as u64) << 1 | u64::from(side);
    StaticSecret::from(derive_secret(&seed32, b"lanrage loadgen peer key", n))
}

/// The embedded relay's static key, derived from the seed.
pub fn relay_secret(seed: u64) -> StaticSecret {
    let mut seed32 = [0u8; 32];
    seed32[..8].copy_from_slice(&seed.to_le_bytes());
    StaticSecret::from(derive_secret(&seed32, b"lanrage loadgen relay key", 0))
}

/// Pair `pair`'s two peers from seeded static secrets: their registration
/// states (each consenting to the other) and their tunnels to each other.
pub struct PairKeys {
    pub reg_a: RegState,
    pub reg_b: RegState,
    pub tunn_a: Tunn,
    pub tunn_b: Tunn,
}

impl PairKeys {
    pub fn new(seed: u64, pair: usize, relay_public: &PublicKey) -> Result<Self> {
        let secret_a = peer_secret(seed, pair, 0);
        let secret_b = peer_secret(seed, pair, 1);
        let key_a = PeerKey::from(&PublicKey::from(&secret_a));
        let key_b = PeerKey::from(&PublicKey::from(&secret_b));
        let reg_a = RegState::new(&secret_a, relay_public, key_b)?;
        let reg_b = RegState::new(&secret_b, relay_public, key_a)?;
        // boringtun puts `index << 8` in its session indices; 24 bits fit.
        let index = (pair as u32) & 0x00FF_FFFF;
        Ok(Self {
            reg_a,
            reg_b,
            tunn_a: Tunn::new(secret_a, PublicKey::from(key_b), None, None, index, None),
            tunn_b: Tunn::new(secret_b, PublicKey::from(key_a), None, None, index, None),
        })
    }
}

/// What a peer needs to (re-)register: its key, its MAC keys with the relay,
/// its consent list (the other peer of its pair) and its last timestamp.
#[derive(Debug, Clone)]
pub struct RegState {
    pub key: PeerKey,
    keys: SessionKeys,
    consent: PeerKey,
    timestamp: u64,
    /// The relay's last challenge cookie for this peer's socket address.
    cookie: RegistrationCookie,
}

impl RegState {
    pub fn new(secret: &StaticSecret, relay: &PublicKey, consent: PeerKey) -> Result<Self> {
        let keys = SessionKeys::for_client(secret, relay)
            .map_err(|e| anyhow::anyhow!("registration keys: {e}"))?;
        Ok(Self {
            key: PeerKey::from(&PublicKey::from(secret)),
            keys,
            consent,
            // Unix nanoseconds, as real clients use: the relay remembers the
            // last timestamp per key, and keys repeat across runs with one seed.
            timestamp: unix_nanos(),
            cookie: NO_COOKIE,
        })
    }

    /// A fresh, sealed registration (strictly newer timestamp each call).
    pub fn registration(&mut self, observed: Option<SocketAddr>) -> Vec<u8> {
        self.timestamp = self.timestamp.max(unix_nanos()) + 1;
        Registration {
            client: self.key,
            timestamp: self.timestamp,
            observed,
            cookie: self.cookie,
            consent: vec![self.consent],
        }
        .seal(&self.keys)
        .expect("one consent key is within the protocol limit")
    }

    /// Whether `datagram` is a valid ack of our latest registration.
    pub(super) fn is_our_ack(&self, datagram: &[u8]) -> bool {
        let Ok(ControlMessage::RegisterAck(view)) = ControlMessage::parse(datagram) else {
            return false;
        };
        view.verify(&self.keys)
            .is_ok_and(|ack| ack.echoed_timestamp == self.timestamp)
    }

    /// If `datagram` is the relay's challenge to our latest registration,
    /// takes its cookie (the next registration echoes it) and says so.
    pub(super) fn take_challenge(&mut self, datagram: &[u8]) -> bool {
        match ControlMessage::parse(datagram) {
            Ok(ControlMessage::Challenge(c)) if c.echoed_timestamp == self.timestamp => {
                self.cookie = c.cookie;
                true
            }
            _ => false,
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Pairs registered with a relay, each with an established WireGuard session.
pub struct Established {
    pub a_sockets: Vec<UdpSocket>,
    pub b_sockets: Vec<UdpSocket>,
    /// A's tunnel per pair (the sealing side).
    pub a_tunns: Vec<Tunn>,
    /// B's tunnel per pair (the opening side).
    pub b_tunns: Vec<Tunn>,
    /// B's receiver index per pair: what A's transport messages carry.
    pub b_indices: Vec<u32>,
    /// Registration state of every peer, A then B per pair, for refreshes.
    pub registrations: Vec<RegState>,
    pub elapsed: Duration,
}

/// Registers and handshakes `pairs` pairs with the relay at `relay`,
/// counting each step in `progress` and giving up past its deadline.
pub fn establish(
    relay: SocketAddr,
    relay_public: &PublicKey,
    pairs: usize,
    seed: u64,
    progress: &SetupProgress,
) -> Result<Established> {
    let started = Instant::now();
    let mut out = Established {
        a_sockets: Vec::with_capacity(pairs),
        b_sockets: Vec::with_capacity(pairs),
        a_tunns: Vec::with_capacity(pairs),
        b_tunns: Vec::with_capacity(pairs),
        b_indices: Vec::with_capacity(pairs),
        registrations: Vec::with_capacity(2 * pairs),
        elapsed: Duration::ZERO,
    };
    for pair in 0..pairs {
        let PairKeys {
            mut reg_a,
            mut reg_b,
            mut tunn_a,
            mut tunn_b,
        } = PairKeys::new(seed, pair, relay_public)?;
        let a = bind_loopback()?;
        let b = bind_loopback()?;
        let mut buf = [0u8; BUF_LEN];

        progress.check_deadline(Instant::now())?;
        let step = Instant::now();
        register(&a, relay, &mut reg_a, &mut buf)
            .with_context(|| format!("pair {pair}: registering peer A"))?;
        progress.registered(step.elapsed());
        progress.check_deadline(Instant::now())?;
        let step = Instant::now();
        register(&b, relay, &mut reg_b, &mut buf)
            .with_context(|| format!("pair {pair}: registering peer B"))?;
        progress.registered(step.elapsed());
        progress.check_deadline(Instant::now())?;

        let step = Instant::now();
        let b_index = handshake(&a, &b, relay, &mut tunn_a, &mut tunn_b, &mut buf)
            .with_context(|| format!("pair {pair}: WireGuard handshake through {relay}"))?;
        progress.handshaken(step.elapsed());

        out.a_sockets.push(a);
        out.b_sockets.push(b);
        out.a_tunns.push(tunn_a);
        out.b_tunns.push(tunn_b);
        out.b_indices.push(b_index);
        out.registrations.push(reg_a);
        out.registrations.push(reg_b);
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Receive and send buffer of every generator socket: the relay's default.
/// A relay's `sendmmsg` delivers bursts of up to its batch size to one B
/// socket; with Linux's default (~208 KiB, ~90 datagrams of 1260 bytes) the
/// generator itself would drop them and blame the relay. The kernel caps
/// this at net.core.rmem_max; memory is only charged while queued.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket on an ephemeral loopback port, with [`SOCKET_BUFFER_BYTES`].
pub fn bind_loopback() -> Result<UdpSocket> {
    bind_with_buffers(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)))
}

/// A UDP socket bound to `addr`, with [`SOCKET_BUFFER_BYTES`] buffers.
pub fn bind_with_buffers(addr: SocketAddr) -> Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .context("cannot create a UDP socket (out of file descriptors? see `ulimit -n`)")?;
    // Best effort: without privileges the kernel caps these silently.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind a UDP socket on {addr}"))?;
    Ok(socket.into())
}

/// Registers `socket`'s peer with the relay: sends a registration until
/// its authenticated ack comes back. A challenge (the relay wants proof
/// that we receive at this address, docs/protocol.md §2.4) is answered at
/// once with its cookie and costs no attempt.
pub fn register(
    socket: &UdpSocket,
    relay: SocketAddr,
    reg: &mut RegState,
    buf: &mut [u8],
) -> Result<()> {
    let mut attempts = 0;
    let mut challenges = 0;
    while attempts < ATTEMPTS {
        let msg = reg.registration(socket.local_addr().ok());
        socket.send_to(&msg, relay)?;
        let mut challenged = false;
        let acked = recv_matching(socket, relay, buf, |d| {
            challenged = reg.take_challenge(d);
            challenged || reg.is_our_ack(d)
        })?
        .is_some();
        if acked && !challenged {
            return Ok(());
        }
        // A relay challenges a fresh cookie at most once per attempt; a
        // relay that keeps challenging is not accepting our cookie.
        if challenged && challenges < ATTEMPTS {
            challenges += 1;
            continue;
        }
        attempts += 1;
    }
    bail!(
        "no registration ack from {relay} after {ATTEMPTS} tries; is the relay's \
         handshake_rate_limit raised for this many peers from one IP?"
    )
}

/// Runs the handshake; returns B's sender index (A's transport messages
/// carry it as their receiver index). Public so the XDP bench can run the
/// same dance on sockets it bound in namespaces.
pub fn handshake(
    a: &UdpSocket,
    b: &UdpSocket,
    relay: SocketAddr,
    tunn_a: &mut Tunn,
    tunn_b: &mut Tunn,
    buf: &mut [u8; BUF_LEN],
) -> Result<u32> {
    let mut out = [0u8; BUF_LEN];
    let mut failure = "no initiation reached B";
    for _ in 0..ATTEMPTS {
        match tunn_a.format_handshake_initiation(&mut out, true) {
            TunnResult::WriteToNetwork(init) => a.send_to(init, relay)?,
            other => bail!("boringtun made no initiation: {other:?}"),
        };
        let Some(len) = recv_matching(b, relay, buf, |d| is_wg(d, TYPE_INITIATION))? else {
            failure = "no initiation reached B (does B consent to A at the relay?)";
            continue;
        };
        match tunn_b.decapsulate(Some(relay.ip()), &buf[..len], &mut out) {
            TunnResult::WriteToNetwork(response) => b.send_to(response, relay)?,
            other => bail!("B did not answer the initiation: {other:?}"),
        };
        let Some(len) = recv_matching(a, relay, buf, |d| is_wg(d, TYPE_RESPONSE))? else {
            failure = "no response reached A";
            continue;
        };
        let Ok(WgMessage::Response(response)) = WgMessage::parse(&buf[..len]) else {
            bail!("the response A received does not parse");
        };
        let b_index = response.sender_index();
        match tunn_a.decapsulate(Some(relay.ip()), &buf[..len], &mut out) {
            // The initiator confirms the session with a keepalive (WireGuard
            // paper §5.4.4: the responder may not send before it sees one).
            TunnResult::WriteToNetwork(keepalive) => a.send_to(keepalive, relay)?,
            other => bail!("A did not accept the response: {other:?}"),
        };
        let Some(len) = recv_matching(b, relay, buf, |d| is_wg(d, TYPE_TRANSPORT))? else {
            failure = "A's confirming keepalive did not reach B";
            continue;
        };
        match tunn_b.decapsulate(Some(relay.ip()), &buf[..len], &mut out) {
            TunnResult::Err(e) => bail!("B rejected A's keepalive: {e:?}"),
            _ => return Ok(b_index),
        }
    }
    bail!("{failure} after {ATTEMPTS} tries")
}

fn is_wg(datagram: &[u8], kind: u8) -> bool {
    datagram.first() == Some(&kind) && datagram.get(1..4) == Some(&[0, 0, 0])
}

/// Waits up to [`STEP_TIMEOUT`] for a datagram from `from` that `wanted`
/// accepts, skipping others; returns its length.
fn recv_matching(
    socket: &UdpSocket,
    from: SocketAddr,
    buf: &mut [u8],
    mut wanted: impl FnMut(&[u8]) -> bool,
) -> Result<Option<usize>> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(remaining.max(Duration::from_micros(100))))?;
        let (len, src) = match socket.recv_from(buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            // A signal (an embedded io_uring relay's task work can deliver
            // one to any thread) is not a failure: the loop re-checks the
            // deadline and waits again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if src == from && wanted(&buf[..len]) {
            return Ok(Some(len));
        }
    }
    Ok(None)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (two sockets per pair);
/// returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_per_seed_pair_and_side() {
        let k = |seed, pair, side| PublicKey::from(&peer_secret(seed, pair, side)).to_bytes();
        assert_eq!(k(1, 0, 0), k(1, 0, 0));
        assert_ne!(k(1, 0, 0), k(1, 0, 1));
        assert_ne!(k(1, 0, 0), k(1, 1, 0));
        assert_ne!(k(1, 0, 0), k(2, 0, 0));
    }

    #[test]
    fn registrations_have_strictly_increasing_timestamps() {
        let relay = PublicKey::from(&relay_secret(9));
        let secret = peer_secret(9, 0, 0);
        let mut reg = RegState::new(&secret, &relay, PeerKey([7; 32])).expect("keys");
        reg.registration(None);
        let first = reg.timestamp;
        reg.registration(None);
        assert!(reg.timestamp > first);
    }
}
