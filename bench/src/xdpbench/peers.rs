//! Peers on namespace sockets: the same registration and real boringtun
//! handshake as `loadgen::setup::establish`, but on sockets the caller bound
//! in the sender's and receiver's namespaces (`establish` binds loopback
//! sockets itself). The keys, the registration state and the steps
//! (`setup::register`, `setup::handshake`) are the load generator's.

use std::net::{SocketAddr, UdpSocket};

use anyhow::{Context as _, Result};
use lanrage_proto::x25519::PublicKey;

use crate::loadgen::setup::{handshake, register, PairKeys, RegState, BUF_LEN};

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
        let PairKeys {
            mut reg_a,
            mut reg_b,
            mut tunn_a,
            mut tunn_b,
        } = PairKeys::new(seed, pair, relay_public)?;
        register(a, relay, &mut reg_a, &mut buf)
            .with_context(|| format!("pair {pair}: registering A"))?;
        register(b, relay, &mut reg_b, &mut buf)
            .with_context(|| format!("pair {pair}: registering B"))?;
        let b_index = handshake(a, b, relay, &mut tunn_a, &mut tunn_b, &mut buf)
            .with_context(|| format!("pair {pair}: WireGuard handshake through {relay}"))?;
        out.b_indices.push(b_index);
        out.registrations.push(reg_a);
        out.registrations.push(reg_b);
    }
    Ok(out)
}
