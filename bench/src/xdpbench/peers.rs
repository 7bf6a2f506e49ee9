//! Peers on namespace sockets: the same registration and real boringtun
//! handshake as `loadgen::setup::establish`, but on sockets the caller bound
//! in the sender's and receiver's namespaces (`establish` binds loopback
//! sockets itself, and its steps are private). The keys, the registration
//! state and the handshake dance are the load generator's.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use boringtun::noise::{Tunn, TunnResult};
use lanrage_proto::control::ControlMessage;
use lanrage_proto::wireguard::{TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT};
use lanrage_proto::x25519::PublicKey;
use lanrage_proto::{PeerKey, WgMessage};

use crate::loadgen::setup::{peer_secret, RegState, ATTEMPTS, BUF_LEN, STEP_TIMEOUT};

/// Registered, handshaken pairs on the caller's sockets.
pub struct Established {
    /// B's receiver index per pair (what A's transport messages carry).
    pub b_indices: Vec<u32>,
    /// Registration state of every peer, A then B per pair (for refreshes).
    pub registrations: Vec<RegState>,
}

/// Registers both peers of every pair with the relay and runs one real
/// WireGuard handshake per pair through it.
pub fn establish(
    relay: SocketAddr,
    relay_public: &PublicKey,
    a_sockets: &[UdpSocket],
    b_sockets: &[UdpSocket],
    seed: u64,
) -> Result<Established> {
    let mut out = Established {
        b_indices: Vec::with_capacity(a_sockets.len()),
        registrations: Vec::with_capacity(2 * a_sockets.len()),
    };
    let mut buf = [0u8; BUF_LEN];
    for (pair, (a, b)) in a_sockets.iter().zip(b_sockets).enumerate() {
        let secret_a = peer_secret(seed, pair, 0);
        let secret_b = peer_secret(seed, pair, 1);
        let key_a = PeerKey::from(&PublicKey::from(&secret_a));
        let key_b = PeerKey::from(&PublicKey::from(&secret_b));
        let mut reg_a = RegState::new(&secret_a, relay_public, key_b)?;
        let mut reg_b = RegState::new(&secret_b, relay_public, key_a)?;
        register(a, relay, &mut reg_a, &mut buf)
            .with_context(|| format!("pair {pair}: registering A"))?;
        register(b, relay, &mut reg_b, &mut buf)
            .with_context(|| format!("pair {pair}: registering B"))?;
        let index = (pair as u32) & 0x00FF_FFFF;
        let mut tunn_a = Tunn::new(secret_a, PublicKey::from(key_b), None, None, index, None);
        let mut tunn_b = Tunn::new(secret_b, PublicKey::from(key_a), None, None, index, None);
        let b_index = handshake(a, b, relay, &mut tunn_a, &mut tunn_b, &mut buf)
            .with_context(|| format!("pair {pair}: WireGuard handshake through {relay}"))?;
        out.b_indices.push(b_index);
        out.registrations.push(reg_a);
        out.registrations.push(reg_b);
    }
    Ok(out)
}

/// Sends a registration until a registration ack comes back (the ack's MAC
/// is not checked here: the relay under test is the only sender on the lab).
fn register(
    socket: &UdpSocket,
    relay: SocketAddr,
    reg: &mut RegState,
    buf: &mut [u8],
) -> Result<()> {
    for _ in 0..ATTEMPTS {
        let msg = reg.registration(socket.local_addr().ok());
        socket.send_to(&msg, relay)?;
        let is_ack =
            |d: &[u8]| matches!(ControlMessage::parse(d), Ok(ControlMessage::RegisterAck(_)));
        if recv_matching(socket, relay, buf, is_ack)?.is_some() {
            return Ok(());
        }
    }
    bail!("no registration ack from {relay} after {ATTEMPTS} tries")
}

fn handshake(
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
            failure = "no initiation reached B";
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
/// accepts; returns its length.
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
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if src == from && wanted(&buf[..len]) {
            return Ok(Some(len));
        }
    }
    Ok(None)
}
