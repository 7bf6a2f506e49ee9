//! A test peer: one UDP socket on loopback, the LANrage registration protocol,
//! and a real boringtun tunnel to one remote peer through the relay. It plays
//! the client's role well enough to test the relay end to end, including the
//! recovery a real client does on an unknown-session hint.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boringtun::noise::{Tunn, TunnResult};
use lanrage_proto::control::{
    Challenge, ControlMessage, Probe, ProbeAck, RegisterAck, Registration, RegistrationCookie,
    SessionKeys, UnknownSession, NO_COOKIE,
};
use lanrage_proto::party::{seal_request, PartyBody, PartyOp};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::{classify, DatagramKind, PeerKey};

/// What one received datagram turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A decrypted IP packet from the tunnel.
    Packet(Vec<u8>),
    /// WireGuard handled it internally (handshake, keepalive, cookie).
    Handled,
    Ack(RegisterAck),
    Hint(UnknownSession),
    /// A return-routability challenge to our last registration; the peer
    /// has already resent the registration with its cookie.
    Challenge(Challenge),
    /// A probe ack: authenticated if `registered`, else only a prompt (the
    /// peer has already sent a registration, as docs/protocol.md §2.8 says).
    ProbeAck(ProbeAck),
    /// A party message (§2.12), opened: its id and body.
    Party(u64, PartyBody),
    /// Anything the peer could not use; the raw bytes.
    Other(Vec<u8>),
}

/// Party messages as they came: (id, body).
pub type PartyMessages = Vec<(u64, PartyBody)>;

pub struct TestPeer {
    secret: StaticSecret,
    pub key: PeerKey,
    pub socket: UdpSocket,
    relay: SocketAddr,
    keys: SessionKeys,
    timestamp: u64,
    /// The cookie of the relay's last challenge, echoed in registrations.
    cookie: RegistrationCookie,
    consent: Vec<PeerKey>,
    tunn: Option<Tunn>,
    /// React to unknown-session hints like a real client: re-register if the
    /// relay lost us, then re-handshake.
    pub auto_recover: bool,
    handshake_after_ack: bool,
    last_recovery: Option<Instant>,
    pub hints_received: u32,
    pub last_ack: Option<RegisterAck>,
}

/// WireGuard's largest datagram here: 1420-byte MTU plus 32 bytes of overhead,
/// rounded up; handshake messages are smaller.
const BUF_LEN: usize = 2048;

impl TestPeer {
    pub fn new(relay: SocketAddr, relay_public: &PublicKey, seed: [u8; 32]) -> Result<Self> {
        Self::with_socket(relay, relay_public, seed, UdpSocket::bind("127.0.0.1:0")?)
    }

    /// As [`TestPeer::new`], on a socket the caller bound (e.g. inside a
    /// network namespace, see [`crate::netns`]).
    pub fn with_socket(
        relay: SocketAddr,
        relay_public: &PublicKey,
        seed: [u8; 32],
        socket: UdpSocket,
    ) -> Result<Self> {
        let secret = StaticSecret::from(seed);
        let keys = SessionKeys::for_client(&secret, relay_public)
            .map_err(|e| anyhow::anyhow!("session keys: {e}"))?;
        Ok(Self {
            key: PeerKey::from(&PublicKey::from(&secret)),
            secret,
            socket,
            relay,
            keys,
            // Unix time in nanoseconds, as real clients use: strictly increasing
            // across this peer's registrations and across relay restarts.
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
            cookie: NO_COOKIE,
            consent: Vec::new(),
            tunn: None,
            auto_recover: true,
            handshake_after_ack: false,
            last_recovery: None,
            hints_received: 0,
            last_ack: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn set_consent(&mut self, peers: &[PeerKey]) {
        self.consent = peers.to_vec();
    }

    /// A freshly timestamped, sealed registration.
    pub fn registration(&mut self) -> Vec<u8> {
        self.timestamp += 1;
        Registration {
            client: self.key,
            timestamp: self.timestamp,
            observed: Some(self.local_addr()),
            cookie: self.cookie,
            consent: self.consent.clone(),
        }
        .seal(&self.keys)
        .expect("consent list within the protocol limit")
    }

    /// Sends a party request (§2.12) with a fresh id from the registration
    /// clock; returns the id.
    pub fn party_request(&mut self, op: &PartyOp) -> Result<u64> {
        self.timestamp += 1;
        let bytes = seal_request(&self.keys, self.key, self.timestamp, op)
            .map_err(|e| anyhow::anyhow!("sealing a party request: {e}"))?;
        self.socket.send_to(&bytes, self.relay)?;
        Ok(self.timestamp)
    }

    /// Party messages that arrive within `window` (every other datagram is
    /// processed as usual and dropped from the result).
    pub fn party_messages(&mut self, window: Duration) -> Result<PartyMessages> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
            if let Some(Incoming::Party(id, body)) = self.recv(remaining)? {
                out.push((id, body));
            }
        }
        Ok(out)
    }

    /// Sends `op` and waits (at most `limit`) for its reply; every other
    /// party message that came meanwhile is returned too, in order.
    pub fn party_call(
        &mut self,
        op: &PartyOp,
        limit: Duration,
    ) -> Result<(PartyBody, PartyMessages)> {
        let id = self.party_request(op)?;
        let deadline = Instant::now() + limit;
        let mut others = Vec::new();
        while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(remaining)? {
                Some(Incoming::Party(got, body))
                    if got == id && matches!(body, PartyBody::Reply { .. }) =>
                {
                    return Ok((body, others));
                }
                Some(Incoming::Party(got, body)) => others.push((got, body)),
                _ => {}
            }
        }
        bail!("no reply to party request {op:?} within {limit:?}")
    }

    /// Registers and waits for the ack (3 tries of 1 s). A challenge is
    /// answered at once, inside `recv`, as docs/protocol.md §2.4 says.
    pub fn register(&mut self) -> Result<RegisterAck> {
        for _ in 0..3 {
            let msg = self.registration();
            self.socket.send_to(&msg, self.relay)?;
            let deadline = Instant::now() + Duration::from_secs(1);
            while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
                if let Some(Incoming::Ack(ack)) = self.recv(remaining)? {
                    if ack.echoed_timestamp == self.timestamp {
                        return Ok(ack);
                    }
                }
            }
        }
        bail!("no registration ack from {}", self.relay)
    }

    /// Sends a liveness probe (docs/protocol.md §2.8); the ack arrives
    /// through `recv` as [`Incoming::ProbeAck`].
    pub fn probe(&mut self) -> Result<()> {
        self.timestamp += 1;
        let probe = Probe {
            client: self.key,
            timestamp: self.timestamp,
        }
        .seal(&self.keys);
        self.socket.send_to(&probe, self.relay)?;
        Ok(())
    }

    /// The cookie the relay last gave this peer ([`NO_COOKIE`] before any).
    pub fn cookie(&self) -> RegistrationCookie {
        self.cookie
    }

    /// Sets up the tunnel to `peer`. `index` seeds boringtun's session indices.
    pub fn tunnel_to(&mut self, peer: PeerKey, index: u32) {
        self.tunn = Some(Tunn::new(
            self.secret.clone(),
            PublicKey::from(peer),
            None,
            None,
            index,
            None,
        ));
    }

    /// Sends a handshake initiation now, even if one is in progress.
    pub fn initiate(&mut self) -> Result<()> {
        let mut out = [0u8; BUF_LEN];
        let tunn = self.tunn.as_mut().context("no tunnel")?;
        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut out, true) {
            self.socket.send_to(p, self.relay)?;
        }
        Ok(())
    }

    /// Encrypts an IP packet into the tunnel (or queues it behind a handshake).
    pub fn send_packet(&mut self, packet: &[u8]) -> Result<()> {
        let mut out = [0u8; BUF_LEN];
        let tunn = self.tunn.as_mut().context("no tunnel")?;
        match tunn.encapsulate(packet, &mut out) {
            TunnResult::WriteToNetwork(p) => {
                self.socket.send_to(p, self.relay)?;
            }
            TunnResult::Done => {}
            TunnResult::Err(e) => bail!("encapsulate: {e:?}"),
            other => bail!("unexpected encapsulate result {other:?}"),
        }
        Ok(())
    }

    /// Runs WireGuard's timers (retries, keepalives); call every ~100 ms.
    pub fn tick(&mut self) -> Result<()> {
        let mut out = [0u8; BUF_LEN];
        if let Some(tunn) = self.tunn.as_mut() {
            if let TunnResult::WriteToNetwork(p) = tunn.update_timers(&mut out) {
                self.socket.send_to(p, self.relay)?;
            }
        }
        Ok(())
    }

    /// Receives and processes at most one datagram, waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Incoming>> {
        let mut buf = [0u8; BUF_LEN];
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_micros(100))))?;
        let (len, from) = match self.socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // A signal (io_uring task work) is not a failure;
                        // callers poll again until their own deadline.
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let datagram = &buf[..len];
        if from != self.relay {
            return Ok(Some(Incoming::Other(datagram.to_vec())));
        }
        match classify(datagram) {
            DatagramKind::WireGuard => self.on_wireguard(datagram).map(Some),
            DatagramKind::Control => self.on_control(datagram).map(Some),
            _ => Ok(Some(Incoming::Other(datagram.to_vec()))),
        }
    }

    fn on_wireguard(&mut self, datagram: &[u8]) -> Result<Incoming> {
        let Some(tunn) = self.tunn.as_mut() else {
            return Ok(Incoming::Other(datagram.to_vec()));
        };
        let mut out = [0u8; BUF_LEN];
        let relay_ip = Some(self.relay.ip());
        let result = match tunn.decapsulate(relay_ip, datagram, &mut out) {
            TunnResult::WriteToTunnelV4(p, _) => Incoming::Packet(p.to_vec()),
            TunnResult::WriteToNetwork(p) => {
                self.socket.send_to(p, self.relay)?;
                // boringtun may have queued packets behind the handshake.
                loop {
                    let mut more = [0u8; BUF_LEN];
                    match tunn.decapsulate(None, &[], &mut more) {
                        TunnResult::WriteToNetwork(p) => {
                            self.socket.send_to(p, self.relay)?;
                        }
                        _ => break,
                    }
                }
                Incoming::Handled
            }
            TunnResult::Done => Incoming::Handled,
            TunnResult::Err(_) | TunnResult::WriteToTunnelV6(..) => {
                Incoming::Other(datagram.to_vec())
            }
        };
        Ok(result)
    }

    fn on_control(&mut self, datagram: &[u8]) -> Result<Incoming> {
        match ControlMessage::parse(datagram) {
            Ok(ControlMessage::RegisterAck(view)) => match view.verify(&self.keys) {
                Ok(ack) => {
                    self.last_ack = Some(ack);
                    if std::mem::take(&mut self.handshake_after_ack) && self.tunn.is_some() {
                        self.initiate()?;
                    }
                    Ok(Incoming::Ack(ack))
                }
                Err(_) => Ok(Incoming::Other(datagram.to_vec())),
            },
            // Only a challenge to the registration we just sent counts; the
            // answer is the same registration with the cookie, resent now.
            Ok(ControlMessage::Challenge(challenge))
                if challenge.echoed_timestamp == self.timestamp =>
            {
                self.cookie = challenge.cookie;
                let msg = self.registration();
                self.socket.send_to(&msg, self.relay)?;
                Ok(Incoming::Challenge(challenge))
            }
            Ok(ControlMessage::ProbeAck(view)) => {
                let unauthenticated = view.unauthenticated();
                if unauthenticated.registered {
                    let Ok(ack) = view.verify(&self.keys) else {
                        return Ok(Incoming::Other(datagram.to_vec()));
                    };
                    return Ok(Incoming::ProbeAck(ack));
                }
                // The relay doesn't know us here (it restarted): register
                // again now, and re-handshake once acknowledged.
                if self.auto_recover {
                    self.handshake_after_ack = true;
                    let msg = self.registration();
                    self.socket.send_to(&msg, self.relay)?;
                }
                Ok(Incoming::ProbeAck(unauthenticated))
            }
            Ok(ControlMessage::PartyMessage(view)) => match view.open(&self.keys) {
                Ok(body) => Ok(Incoming::Party(view.id(), body)),
                Err(_) => Ok(Incoming::Other(datagram.to_vec())),
            },
            Ok(ControlMessage::UnknownSession(hint)) => {
                self.hints_received += 1;
                if self.auto_recover {
                    self.recover(hint)?;
                }
                Ok(Incoming::Hint(hint))
            }
            _ => Ok(Incoming::Other(datagram.to_vec())),
        }
    }

    /// A real client's reaction to a hint: re-register if the relay doesn't
    /// know us, then re-handshake; at most once per 100 ms.
    fn recover(&mut self, hint: UnknownSession) -> Result<()> {
        let recently = self
            .last_recovery
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100));
        if recently {
            return Ok(());
        }
        self.last_recovery = Some(Instant::now());
        if hint.registered {
            self.initiate()
        } else {
            self.handshake_after_ack = true;
            let msg = self.registration();
            self.socket.send_to(&msg, self.relay)?;
            Ok(())
        }
    }
}
