//! What most end-to-end tests do with a pair of test peers through a relay:
//! register them with mutual consent, handshake, move verified packets, and
//! check that nothing (else) arrives. Every wait is bounded.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{Incoming, RelaySetup, TestPeer};
use lanrage_proto::inner::{ipv4_packet, payload_of};

/// Two registered, mutually consenting peers with tunnels to each other.
pub fn pair(setup: &RelaySetup) -> Result<(TestPeer, TestPeer)> {
    let relay_public = setup.public_key();
    let mut a = TestPeer::new(setup.listen, &relay_public, [11; 32])?;
    let mut b = TestPeer::new(setup.listen, &relay_public, [12; 32])?;
    a.set_consent(&[b.key]);
    b.set_consent(&[a.key]);
    a.register()?;
    b.register()?;
    a.tunnel_to(b.key, 1);
    b.tunnel_to(a.key, 2);
    Ok((a, b))
}

/// Runs the handshake (A initiates) and waits for the session to carry data.
pub fn establish(a: &mut TestPeer, b: &mut TestPeer) -> Result<()> {
    establish_retrying(a, b, 1, Duration::from_secs(5))
}

/// [`establish`], initiating again each `round` without an answer, at most
/// `attempts` times (on a fresh namespace lab the first initiation may be
/// lost while ARP resolves); then B gets at most 5 s more for A's confirming
/// keepalive.
pub fn establish_retrying(
    a: &mut TestPeer,
    b: &mut TestPeer,
    attempts: u32,
    round: Duration,
) -> Result<()> {
    // B answers an initiation; A consumes the response.
    let mut a_done = false;
    for _ in 0..attempts {
        a.initiate()?;
        let round_end = Instant::now() + round;
        while !a_done && Instant::now() < round_end {
            let _ = b.recv(Duration::from_millis(20))?;
            a_done = matches!(a.recv(Duration::from_millis(20))?, Some(Incoming::Handled));
        }
        if a_done {
            break;
        }
    }
    if !a_done {
        bail!("handshake did not complete through the relay");
    }
    // The initiator confirms the session with a keepalive; B consumes it so
    // later assertions see only what they cause.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(Incoming::Handled) = b.recv(Duration::from_millis(50))? {
            return Ok(());
        }
    }
    bail!("B never saw A's confirming keepalive")
}

/// Sends `count` packets from `from` to `to` in windows, verifying every
/// payload byte for byte.
pub fn transfer(from: &mut TestPeer, to: &mut TestPeer, count: u32, tag: u8) -> Result<()> {
    const WINDOW: u32 = 32;
    let mut next = 0;
    while next < count {
        let end = (next + WINDOW).min(count);
        for seq in next..end {
            from.send_packet(&ipv4_packet(&payload_for(tag, seq)))?;
        }
        let mut expected: BTreeSet<u32> = (next..end).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !expected.is_empty() && Instant::now() < deadline {
            if let Some(Incoming::Packet(packet)) = to.recv(Duration::from_millis(100))? {
                expected.remove(&check_payload(payload_of(&packet), tag)?);
            }
        }
        if !expected.is_empty() {
            bail!("{} packets never arrived: {:?}", expected.len(), expected);
        }
        next = end;
    }
    Ok(())
}

/// The sequence number of a [`payload_for`] payload, after checking every
/// byte of it.
pub fn check_payload(payload: &[u8], tag: u8) -> Result<u32> {
    let seq = payload
        .get(1..5)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .context("payload too short")?;
    if payload != payload_for(tag, seq).as_slice() {
        bail!("payload {seq} (tag {tag:#x}) corrupted in transit");
    }
    Ok(seq)
}

/// 100–400 bytes whose content depends on the direction tag and the sequence.
pub fn payload_for(tag: u8, seq: u32) -> Vec<u8> {
    let len = 100 + (seq as usize * 7) % 300;
    let mut p = vec![tag; len];
    p[1..5].copy_from_slice(&seq.to_be_bytes());
    for (i, byte) in p.iter_mut().enumerate().skip(5) {
        *byte = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    p
}

pub fn drain(socket: &std::net::UdpSocket, window: Duration) -> Result<Vec<Vec<u8>>> {
    let mut replies = Vec::new();
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => replies.push(buf[..len].to_vec()),
            // A signal must not end the window early: that would let a
            // "nothing arrives" check pass without waiting.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    Ok(replies)
}

pub fn assert_nothing_arrives(peer: &mut TestPeer, window: Duration) -> Result<()> {
    let deadline = Instant::now() + window;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(incoming) = peer.recv(left)? {
            bail!("unexpected delivery: {incoming:?}");
        }
    }
    Ok(())
}
