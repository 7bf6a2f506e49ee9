//! Memory per route: the resident set (VmRSS) of this process before and
//! after installing many routes in a relay [`Router`], driven only through
//! its public `handle(now, src, buf)` with synthesised datagrams (no sockets).
//!
//! Routes exist only as the result of handshakes, so this does what clients
//! do, minus the cryptography the relay never sees: it registers client pairs
//! (real registrations, real X25519 on both sides), then for each session
//! sends an initiation whose mac1 is keyed to the responder and a response
//! whose mac1 is keyed to the initiator, with fresh indices. The relay checks
//! exactly these fields, so every session installs its two route entries.
//! Source addresses are 127.x.y.z values that no packet is ever sent to.
//!
//! The figure includes everything a route costs the relay: the hash-table
//! entry and the per-client index of its routes. Hash tables grow by
//! doubling, so the RSS grows in steps; the samples show them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use lanrage_proto::mac::Mac1Key;
use lanrage_proto::wireguard::{INITIATION_LEN, MAC_LEN, RESPONSE_LEN};
use lanrage_proto::x25519::PublicKey;
use lanrage_proto::PeerKey;
use lanrage_relay_core::router::{Router, Verdict, MAX_SESSIONS_PER_PEER};
use serde::Serialize;

use super::embedded;
use super::setup::{peer_secret, relay_secret, RegState};

#[derive(Debug, Clone, Serialize)]
pub struct RouteMemoryReport {
    pub routes_requested: usize,
    pub routes_installed: usize,
    pub clients: usize,
    pub sessions: usize,
    pub rss_start_kib: u64,
    pub rss_after_registrations_kib: u64,
    pub rss_after_routes_kib: u64,
    pub bytes_per_registration: f64,
    pub bytes_per_route: f64,
    pub seconds: f64,
    /// (routes installed, VmRSS KiB) at every tenth of the way.
    pub samples: Vec<(usize, u64)>,
}

/// Installs `routes` route entries (two per session) and measures.
pub fn measure(routes: usize, seed: u64) -> Result<RouteMemoryReport> {
    if !(2..=50_000_000).contains(&routes) {
        bail!("--route-memory must be between 2 and 50000000, got {routes}");
    }
    let started = Instant::now();
    let sessions = routes / 2;
    // The relay keeps at most MAX_SESSIONS_PER_PEER sessions per pair of
    // peers (a newer one replaces the oldest), so spread them that thinly.
    let pairs = sessions.div_ceil(MAX_SESSIONS_PER_PEER).max(1);
    let rss_start = rss_kib()?;

    let mut config = embedded::config();
    config.limits.max_routes = config.limits.max_routes.max(routes);
    config.limits.max_registrations = config.limits.max_registrations.max(2 * pairs);
    let secret = relay_secret(seed);
    let relay_public = PublicKey::from(&secret);
    let now = Instant::now();
    let mut router = Router::new(config.router_config(), secret, 0, [0x5A; 32], now);

    // Register every client from its own made-up loopback endpoint.
    let mut peers = Vec::with_capacity(2 * pairs);
    let mut buf = vec![0u8; 4096];
    for pair in 0..pairs {
        let a = PeerKey::from(&PublicKey::from(&peer_secret(seed, pair, 0)));
        let b = PeerKey::from(&PublicKey::from(&peer_secret(seed, pair, 1)));
        for (side, consent) in [(0u8, b), (1u8, a)] {
            let src = fake_endpoint(2 * pair + usize::from(side));
            let mut reg = RegState::new(&peer_secret(seed, pair, side), &relay_public, consent)?;
            // The first registration is challenged (return-routability);
            // the second echoes the cookie and is acknowledged.
            for _ in 0..2 {
                let msg = reg.registration(Some(src));
                buf[..msg.len()].copy_from_slice(&msg);
                match router.handle(now, src, &mut buf[..msg.len()]) {
                    Verdict::Reply(len) if reg.take_challenge(&buf[..len]) => {}
                    Verdict::Reply(len) if reg.is_our_ack(&buf[..len]) => break,
                    other => bail!("registration of pair {pair} side {side} refused: {other:?}"),
                }
            }
            peers.push((reg.key, src));
        }
    }
    let rss_registered = rss_kib()?;

    let mut samples = Vec::new();
    let mut index: u32 = 1;
    let step = (sessions / 10).max(1);
    for s in 0..sessions {
        let pair = s % pairs;
        let (key_a, src_a) = peers[2 * pair];
        let (key_b, src_b) = peers[2 * pair + 1];
        let (i_a, i_b) = (index, index.wrapping_add(1 << 31));
        index = index.wrapping_add(1);

        let mut init = [0u8; INITIATION_LEN];
        init[0] = 1;
        init[4..8].copy_from_slice(&i_a.to_le_bytes());
        let mac1_at = INITIATION_LEN - 2 * MAC_LEN;
        let mac1 = Mac1Key::for_responder(key_b.as_bytes()).compute(&init[..mac1_at]);
        init[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        match router.handle(now, src_a, &mut init) {
            Verdict::Forward(_) => {}
            other => bail!("initiation {s} not forwarded: {other:?}"),
        }

        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = 2;
        resp[4..8].copy_from_slice(&i_b.to_le_bytes());
        resp[8..12].copy_from_slice(&i_a.to_le_bytes());
        let mac1_at = RESPONSE_LEN - 2 * MAC_LEN;
        let mac1 = Mac1Key::for_responder(key_a.as_bytes()).compute(&resp[..mac1_at]);
        resp[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac1);
        match router.handle(now, src_b, &mut resp) {
            Verdict::Forward(_) => {}
            other => bail!("response {s} not forwarded: {other:?}"),
        }
        if (s + 1) % step == 0 {
            samples.push((router.route_count(), rss_kib()?));
        }
    }
    let rss_routes = rss_kib()?;
    let installed = router.route_count();
    let per = |delta_kib: u64, n: usize| delta_kib as f64 * 1024.0 / n.max(1) as f64;
    let report = RouteMemoryReport {
        routes_requested: routes,
        routes_installed: installed,
        clients: 2 * pairs,
        sessions,
        rss_start_kib: rss_start,
        rss_after_registrations_kib: rss_registered,
        rss_after_routes_kib: rss_routes,
        bytes_per_registration: per(rss_registered.saturating_sub(rss_start), 2 * pairs).round(),
        bytes_per_route: per(rss_routes.saturating_sub(rss_registered), installed).round(),
        seconds: started.elapsed().as_secs_f64(),
        samples,
    };
    // Keep the router alive until after the last measurement.
    drop(router);
    Ok(report)
}

impl RouteMemoryReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "routes installed: {} ({} sessions between {} clients) in {:.1} s\n\
             VmRSS: start {} KiB, after registrations {} KiB, after routes {} KiB\n\
             per registration: {:.0} B; per route entry: {:.0} B (two entries per session)\n\
             samples (routes, VmRSS KiB):",
            self.routes_installed,
            self.sessions,
            self.clients,
            self.seconds,
            self.rss_start_kib,
            self.rss_after_registrations_kib,
            self.rss_after_routes_kib,
            self.bytes_per_registration,
            self.bytes_per_route,
        );
        for (routes, rss) in &self.samples {
            out.push_str(&format!(" ({routes}, {rss})"));
        }
        out.push('\n');
        out
    }
}

/// A distinct loopback endpoint per client (never sent to).
fn fake_endpoint(n: usize) -> SocketAddr {
    let n = n as u32 + 1;
    let ip = Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
    SocketAddr::from((ip, 40_000))
}

/// This process's resident set size, from /proc/self/status.
pub fn rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line in /proc/self/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_table_installs_every_route() {
        let report = measure(200, 3).expect("measure");
        assert_eq!(report.routes_installed, 200);
        assert_eq!(report.sessions, 100);
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_kib().expect("rss") > 0);
    }
}
