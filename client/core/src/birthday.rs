//! Birthday probing (`docs/nat-traversal.md`, "Hard NATs"): how a peer
//! behind a symmetric NAT that scatters its ports and one behind a
//! port-restricted cone still find a direct path, in a bounded number of
//! datagrams.
//!
//! Neither side can learn the port the other's NAT will use: the hard
//! side's NAT picks a fresh random port for every destination, and the
//! cone side's filter drops everything from a port it hasn't sent to. So
//! both make many at once and hope two meet, as in the birthday paradox:
//! - the hard side ("spray") sends one ping from each of
//!   [`SPRAY_SOCKETS`] extra sockets to the cone side's public address,
//!   which opens that many mappings at random ports of its NAT, each
//!   letting in the cone side's address;
//! - the cone side ("probe") sends one ping to each of [`PROBE_PORTS`]
//!   random ports of the hard side's public IP, which opens its filter for
//!   them (half drawn within [`NEAR`] of the hard side's known mappings,
//!   where NATs that allocate from a per-subscriber block put the rest,
//!   half from the whole range). A probe that hits an open mapping reaches the hard side, whose
//!   pong (from that mapping, through the opened filter) confirms the
//!   pair, as any punched pair is confirmed.
//!
//! With 256 mappings among 64,512 ports and 300 probes, one attempt finds a
//! pair with probability 1 − (1 − 256/64512)^300 ≈ 70 %. Each attempt
//! costs the hard side's router 256 mappings and the cone side's 300,
//! Tailscale's bound, not EasyTier's thousands. Attempts follow events
//! (new candidates, a network change), never a timer.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::netcheck::{Filtering, Mapping, NatReport};
use crate::payload::NatHint;

/// Which of the driver's UDP sockets a datagram uses: [`SocketId::MAIN`]
/// carries the relays, STUN and WireGuard; `1..=SPRAY_SOCKETS` are the
/// spray pool, opened on first use and released after an attempt (except
/// one that carries a punched path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SocketId(pub u16);

impl SocketId {
    pub const MAIN: SocketId = SocketId(0);

    pub fn is_main(self) -> bool {
        self == Self::MAIN
    }
}

/// Extra sockets the hard side sprays from (Tailscale's figure).
pub const SPRAY_SOCKETS: u16 = 256;
/// Random ports the cone side probes per attempt.
pub const PROBE_PORTS: usize = 300;
/// The lowest port a NAT hands out (below are the privileged ones).
pub const LOWEST_NAT_PORT: u16 = 1024;
/// Half the probes go within this many ports of the hard side's known
/// mappings (see the engine's `random_ports`).
pub const NEAR: u16 = 1024;
/// Public addresses of the peer's sprayed to or probed (each its own
/// relay's view; usually one).
pub const MAX_TARGETS: usize = 2;
/// The spray goes out at these offsets: once to open the mappings, and
/// again after the probes, so that a mapping whose port was probed gets
/// through the cone's now open filter even if the probe itself was lost.
const SPRAY_ROUNDS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(400),
    Duration::from_millis(1200),
];
/// The probe waits for the spray to have gone out, then paces itself:
/// [`PROBE_BATCH`] ports every [`PROBE_PACE`], so a home router sees a
/// burst of 2,000 per second for 150 ms, not all at once.
const PROBE_START: Duration = Duration::from_millis(50);
const PROBE_BATCH: usize = 20;
const PROBE_PACE: Duration = Duration::from_millis(10);
/// An attempt's sockets are kept this long after it starts, for late
/// pongs; then the pool goes (but for a socket carrying a path).
pub const ATTEMPT_LENGTH: Duration = Duration::from_secs(3);

/// Our part in an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Spray,
    Probe,
}

/// Whether this pair needs birthday probing, and our part in it: only a
/// hard side whose ports can't be predicted against a port-restricted
/// cone. Every other pair that can connect at all does so by plain
/// punching (and predicted candidates, for a sequential NAT).
pub fn role(mine: Option<&NatReport>, theirs: Option<NatHint>) -> Option<Role> {
    let (mine, theirs) = (mine?, theirs?);
    let scattered = |mapping: Option<Mapping>, sequential: bool| {
        matches!(
            mapping,
            Some(Mapping::AddressDependent | Mapping::AddressAndPortDependent)
        ) && !sequential
    };
    let port_filtering_cone = |mapping, filtering| {
        mapping == Some(Mapping::EndpointIndependent)
            && filtering == Some(Filtering::AddressAndPortDependent)
    };
    if scattered(mine.mapping, mine.sequential.is_some())
        && port_filtering_cone(theirs.mapping, theirs.filtering)
    {
        Some(Role::Spray)
    } else if port_filtering_cone(mine.mapping, mine.filtering)
        && scattered(theirs.mapping, theirs.sequential)
    {
        Some(Role::Probe)
    } else {
        None
    }
}

/// One attempt in progress.
#[derive(Debug, Clone)]
pub struct Attempt {
    start: Instant,
    plan: Plan,
}

#[derive(Debug, Clone)]
enum Plan {
    /// Ping `targets` from every spray socket, once per round.
    Spray {
        targets: Vec<SocketAddr>,
        round: usize,
    },
    /// Ping each of `ports` at each of `ips`, a batch at a time.
    Probe {
        ips: Vec<IpAddr>,
        ports: Vec<u16>,
        sent: usize,
    },
}

impl Attempt {
    /// A spray at the peer's public addresses.
    pub fn spray(now: Instant, targets: &[SocketAddr]) -> Self {
        Self {
            start: now,
            plan: Plan::Spray {
                targets: targets.iter().copied().take(MAX_TARGETS).collect(),
                round: 0,
            },
        }
    }

    /// A probe of the peer's public IPs at `ports` (the caller draws them
    /// at random; at most [`PROBE_PORTS`] are used).
    pub fn probe(now: Instant, ips: &[IpAddr], mut ports: Vec<u16>) -> Self {
        ports.truncate(PROBE_PORTS);
        Self {
            start: now,
            plan: Plan::Probe {
                ips: ips.iter().copied().take(MAX_TARGETS).collect(),
                ports,
                sent: 0,
            },
        }
    }

    pub fn role(&self) -> Role {
        match self.plan {
            Plan::Spray { .. } => Role::Spray,
            Plan::Probe { .. } => Role::Probe,
        }
    }

    /// Whether its sockets and pings still matter.
    pub fn is_live(&self, now: Instant) -> bool {
        now < self.start + ATTEMPT_LENGTH
    }

    /// When [`Attempt::poll`] next has pings to send.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.plan {
            Plan::Spray { round, .. } => SPRAY_ROUNDS.get(*round).map(|&at| self.start + at),
            Plan::Probe { ports, sent, .. } => (*sent < ports.len())
                .then(|| self.start + PROBE_START + PROBE_PACE * (*sent / PROBE_BATCH) as u32),
        }
    }

    /// The pings due now, as (socket, destination).
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(SocketId, SocketAddr)>) {
        while self.next_deadline().is_some_and(|at| at <= now) {
            match &mut self.plan {
                Plan::Spray { targets, round } => {
                    for socket in 1..=SPRAY_SOCKETS {
                        for &t in targets.iter() {
                            out.push((SocketId(socket), t));
                        }
                    }
                    *round += 1;
                }
                Plan::Probe { ips, ports, sent } => {
                    let end = (*sent + PROBE_BATCH).min(ports.len());
                    for &port in &ports[*sent..end] {
                        for &ip in ips.iter() {
                            out.push((SocketId::MAIN, SocketAddr::new(ip, port)));
                        }
                    }
                    *sent = end;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mapping: Mapping, filtering: Filtering, sequential: bool) -> NatReport {
        NatReport {
            relay: "r".into(),
            udp: true,
            reflexive: None,
            behind_nat: Some(true),
            mapping: Some(mapping),
            filtering: Some(filtering),
            hairpin: None,
            other_address: None,
            sequential: sequential.then(|| crate::netcheck::Sequential {
                step: 1,
                last: "203.0.113.1:40000".parse().expect("addr"),
                between: Vec::new(),
            }),
        }
    }

    fn hint(r: &NatReport) -> NatHint {
        NatHint {
            mapping: r.mapping,
            filtering: r.filtering,
            sequential: r.sequential.is_some(),
        }
    }

    #[test]
    fn only_a_scattering_hard_side_against_a_port_restricted_cone_probes() {
        use Filtering as F;
        use Mapping as M;
        let sym = report(
            M::AddressAndPortDependent,
            F::AddressAndPortDependent,
            false,
        );
        let seq = report(M::AddressAndPortDependent, F::AddressAndPortDependent, true);
        let prc = report(M::EndpointIndependent, F::AddressAndPortDependent, false);
        let rc = report(M::EndpointIndependent, F::AddressDependent, false);
        assert_eq!(role(Some(&sym), Some(hint(&prc))), Some(Role::Spray));
        assert_eq!(role(Some(&prc), Some(hint(&sym))), Some(Role::Probe));
        // Plain punching (or prediction) does for these.
        assert_eq!(role(Some(&sym), Some(hint(&rc))), None);
        assert_eq!(role(Some(&rc), Some(hint(&sym))), None);
        assert_eq!(role(Some(&seq), Some(hint(&prc))), None);
        assert_eq!(role(Some(&prc), Some(hint(&seq))), None);
        // Hard against hard is out of reach (~170,000 probes).
        assert_eq!(role(Some(&sym), Some(hint(&sym))), None);
        assert_eq!(role(Some(&prc), Some(hint(&prc))), None);
        assert_eq!(role(None, Some(hint(&prc))), None);
        assert_eq!(role(Some(&sym), None), None);
    }

    #[test]
    fn an_attempt_is_bounded_and_paced() {
        let t0 = Instant::now();
        let target: SocketAddr = "198.51.100.7:41000".parse().expect("addr");
        let mut spray = Attempt::spray(t0, &[target, target, target]);
        let mut probe = Attempt::probe(
            t0,
            &[target.ip()],
            (LOWEST_NAT_PORT..LOWEST_NAT_PORT + 1000).collect(),
        );
        let (mut sprayed, mut probed) = (Vec::new(), Vec::new());
        let mut probe_times = Vec::new();
        for ms in 0..4000 {
            let now = t0 + Duration::from_millis(ms);
            spray.poll(now, &mut sprayed);
            let before = probed.len();
            probe.poll(now, &mut probed);
            if probed.len() > before {
                probe_times.push((ms, probed.len() - before));
            }
        }
        // Three rounds from each of the 256 sockets, two targets at most.
        assert_eq!(sprayed.len(), 3 * 256 * MAX_TARGETS);
        assert!(sprayed.iter().all(|(s, _)| !s.is_main()));
        // 300 distinct ports from the main socket, 20 every 10 ms.
        assert_eq!(probed.len(), PROBE_PORTS);
        assert!(probed.iter().all(|(s, _)| s.is_main()));
        assert!(probe_times.iter().all(|&(_, n)| n == PROBE_BATCH));
        assert_eq!(probe_times.first().map(|t| t.0), Some(50));
        assert_eq!(probe_times.last().map(|t| t.0), Some(190));
        assert!(spray.next_deadline().is_none() && probe.next_deadline().is_none());
        assert!(spray.is_live(t0 + Duration::from_millis(2999)));
        assert!(!spray.is_live(t0 + ATTEMPT_LENGTH));
    }
}
