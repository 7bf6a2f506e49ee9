//! A direct path to one peer (`docs/client.md`, "Direct paths";
//! `docs/protocol.md` §2.11): the peer's candidate addresses, punching (a
//! path-probe ping to every candidate at once, on a short schedule), the
//! confirmed path, and the heartbeats that watch it. Pure state: the engine
//! seals and sends the probes this asks for, and applies what it reports.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::birthday::{Attempt, SocketId};

/// The most candidates kept from a peer (its signal carries at most this).
pub const MAX_CANDIDATES: usize = 16;
/// A punch pings every candidate at these offsets from its start, then
/// gives up until the next event (new candidates, a network change, the
/// peer's own pings). Early rounds are close together because the peer's
/// first pings open our NAT's filter only once ours have gone out.
pub const PUNCH_SCHEDULE: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(300),
    Duration::from_millis(600),
    Duration::from_millis(1200),
    Duration::from_millis(2400),
];
/// While the peer is active: a heartbeat on the direct path this often...
pub const HEARTBEAT_ACTIVE: Duration = Duration::from_millis(300);
/// ...and the path is dead after this long without a pong or an
/// authenticated datagram from it, so that traffic is back on the relay
/// within 1.5 s of the path failing.
pub const DEAD_ACTIVE: Duration = Duration::from_millis(1000);
/// While idle, a heartbeat this often keeps the NAT mappings open (UDP
/// mappings last 30 s or more on common routers; RFC 4787 asks for 2 min).
pub const HEARTBEAT_IDLE: Duration = Duration::from_secs(20);
/// Idle: dead after two heartbeats unanswered.
pub const DEAD_IDLE: Duration = Duration::from_secs(45);
/// Pings remembered for matching pongs: enough for a birthday attempt's
/// (three spray rounds from 256 sockets, or 300 probes) and a punch's.
const MAX_IN_FLIGHT: usize = 2048;
/// A ping unanswered after this long is forgotten.
const PING_LIFETIME: Duration = Duration::from_secs(5);

/// The confirmed direct path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    pub addr: SocketAddr,
    /// Our socket that reaches it (a spray socket, after birthday probing).
    pub socket: SocketId,
    /// The last pong, or authenticated datagram, from it.
    last_heard: Instant,
    next_heartbeat: Instant,
}

/// What a pong meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongOutcome {
    /// No ping of ours in flight has this id, or it went to another address.
    Unmatched,
    /// The first confirmed pair: datagrams may go to `addr` from `socket`
    /// from now on.
    Confirmed {
        addr: SocketAddr,
        socket: SocketId,
        sent: Instant,
    },
    /// A pong on a path already known (a heartbeat, or a later pair).
    Answered { sent: Instant },
}

#[derive(Debug, Default)]
pub struct DirectPath {
    /// The peer's candidates, as it signaled them.
    signaled: Vec<SocketAddr>,
    /// Addresses a verified ping of the peer's came from that it didn't
    /// signal (peer-reflexive: its NAT's mapping towards us), with the
    /// socket of ours it reached.
    reflexive: Vec<(SocketAddr, SocketId)>,
    /// Both of the above, signaled first: what a punch pings, and from
    /// which socket (signaled ones from the main socket).
    remote: Vec<(SocketAddr, SocketId)>,
    /// Pings in flight: (transaction id, destination, from, sent at).
    in_flight: VecDeque<(u64, SocketAddr, SocketId, Instant)>,
    /// The running punch: when it started and the next round.
    punch: Option<(Instant, usize)>,
    /// The running birthday attempt, if this pair needs one.
    attempt: Option<Attempt>,
    confirmed: Option<Confirmed>,
}

impl DirectPath {
    pub fn confirmed(&self) -> Option<SocketAddr> {
        self.confirmed.map(|c| c.addr)
    }

    /// The socket the confirmed path leaves from.
    #[cfg(test)]
    pub fn confirmed_socket(&self) -> Option<SocketId> {
        self.confirmed.map(|c| c.socket)
    }

    /// Whether a birthday attempt's sockets still matter.
    pub fn attempt_live(&self, now: Instant) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.is_live(now))
    }

    /// Starts a birthday attempt, unless one is running or a path is
    /// confirmed.
    pub fn start_attempt(&mut self, now: Instant, attempt: Attempt) -> bool {
        if self.confirmed.is_some() || self.attempt_live(now) {
            return false;
        }
        self.attempt = Some(attempt);
        true
    }

    pub fn is_punching(&self) -> bool {
        self.punch.is_some()
    }

    /// The peer's signaled candidates replace the old ones. Whether they
    /// changed.
    pub fn set_candidates(&mut self, candidates: &[SocketAddr]) -> bool {
        let mut next: Vec<SocketAddr> = Vec::with_capacity(MAX_CANDIDATES);
        for &c in candidates {
            if next.len() < MAX_CANDIDATES && !next.contains(&c) {
                next.push(c);
            }
        }
        if next == self.signaled {
            return false;
        }
        self.signaled = next;
        self.rebuild();
        true
    }

    /// An address a verified ping came from, on `socket` of ours: a
    /// candidate too, pinged from that socket. Whether it was new.
    pub fn add_peer_reflexive(&mut self, addr: SocketAddr, socket: SocketId) -> bool {
        let pair = (addr, socket);
        if self.remote.contains(&pair) || self.reflexive.len() >= MAX_CANDIDATES {
            return false;
        }
        self.reflexive.push(pair);
        self.rebuild();
        true
    }

    fn rebuild(&mut self) {
        self.remote = self.signaled.iter().map(|&a| (a, SocketId::MAIN)).collect();
        for &r in &self.reflexive {
            if self.remote.len() < 2 * MAX_CANDIDATES && !self.remote.contains(&r) {
                self.remote.push(r);
            }
        }
    }

    pub fn has_candidates(&self) -> bool {
        !self.remote.is_empty()
    }

    /// Starts (or restarts) punching, unless a path is confirmed already.
    pub fn start_punch(&mut self, now: Instant) {
        if self.confirmed.is_none() && !self.remote.is_empty() {
            self.punch = Some((now, 0));
        }
    }

    /// The next time [`DirectPath::poll`] has something to do.
    pub fn next_deadline(&self, active: bool) -> Option<Instant> {
        let punch = self
            .punch
            .and_then(|(start, round)| Some(start + *PUNCH_SCHEDULE.get(round)?));
        let heartbeat = self.confirmed.map(|c| {
            let dead = c.last_heard + if active { DEAD_ACTIVE } else { DEAD_IDLE };
            c.next_heartbeat.min(dead)
        });
        let attempt = self.attempt.as_ref().and_then(Attempt::next_deadline);
        [punch, heartbeat, attempt].into_iter().flatten().min()
    }

    /// The pings due now, as (socket, destination, transaction id): one per
    /// candidate for a punch round, a birthday attempt's, one to the
    /// confirmed path for a heartbeat. `txid` gives each a fresh id.
    pub fn poll(
        &mut self,
        now: Instant,
        active: bool,
        txid: &mut dyn FnMut() -> u64,
        out: &mut Vec<(SocketId, SocketAddr, u64)>,
    ) {
        self.expire(now);
        if let Some(attempt) = &mut self.attempt {
            let mut due = Vec::new();
            if self.confirmed.is_none() {
                attempt.poll(now, &mut due);
            }
            if !attempt.is_live(now) {
                self.attempt = None;
            }
            for (socket, addr) in due {
                let id = txid();
                self.remember(id, addr, socket, now);
                out.push((socket, addr, id));
            }
        }
        if let Some((start, round)) = self.punch {
            if let Some(&offset) = PUNCH_SCHEDULE.get(round) {
                if now >= start + offset {
                    for i in 0..self.remote.len() {
                        let (addr, socket) = self.remote[i];
                        let id = txid();
                        self.remember(id, addr, socket, now);
                        out.push((socket, addr, id));
                    }
                    self.punch = (round + 1 < PUNCH_SCHEDULE.len()).then_some((start, round + 1));
                }
            } else {
                self.punch = None;
            }
        }
        if let Some(c) = &mut self.confirmed {
            if now >= c.next_heartbeat {
                c.next_heartbeat = now
                    + if active {
                        HEARTBEAT_ACTIVE
                    } else {
                        HEARTBEAT_IDLE
                    };
                let (addr, socket, id) = (c.addr, c.socket, txid());
                self.remember(id, addr, socket, now);
                out.push((socket, addr, id));
            }
        }
    }

    /// The peer became active: heartbeats go to the fast cadence now.
    pub fn wake(&mut self, now: Instant) {
        if let Some(c) = &mut self.confirmed {
            c.next_heartbeat = c.next_heartbeat.min(now);
            // Quiet while idle is not silence while active: count from now.
            c.last_heard = c
                .last_heard
                .max(now.checked_sub(HEARTBEAT_ACTIVE).unwrap_or(now));
        }
    }

    /// A verified pong from `from`, on our `socket`, answering `txid`.
    /// Without `may_confirm` (a configured endpoint, which needs no
    /// confirming) a match is only [`PongOutcome::Answered`].
    pub fn on_pong(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        txid: u64,
        may_confirm: bool,
    ) -> PongOutcome {
        let Some(i) = self
            .in_flight
            .iter()
            .position(|&(id, addr, s, _)| id == txid && addr == from && s == socket)
        else {
            return PongOutcome::Unmatched;
        };
        let Some((_, _, _, sent)) = self.in_flight.remove(i) else {
            return PongOutcome::Unmatched;
        };
        match &mut self.confirmed {
            _ if !may_confirm => PongOutcome::Answered { sent },
            Some(c) => {
                if c.addr == from && c.socket == socket {
                    c.last_heard = now;
                }
                PongOutcome::Answered { sent }
            }
            None => {
                self.confirmed = Some(Confirmed {
                    addr: from,
                    socket,
                    last_heard: now,
                    next_heartbeat: now + HEARTBEAT_ACTIVE,
                });
                self.punch = None;
                PongOutcome::Confirmed {
                    addr: from,
                    socket,
                    sent,
                }
            }
        }
    }

    /// The peer's session reached us straight from `from` before any pong
    /// of ours did: that address works both ways (the peer sent from it, so
    /// its NAT lets our answers in), as WireGuard's roaming assumes. It
    /// becomes the confirmed path if there is none; whether it did.
    pub fn adopt(&mut self, now: Instant, socket: SocketId, from: SocketAddr) -> bool {
        if self.confirmed.is_some() {
            return false;
        }
        self.confirmed = Some(Confirmed {
            addr: from,
            socket,
            last_heard: now,
            next_heartbeat: now,
        });
        self.punch = None;
        true
    }

    /// An authenticated WireGuard datagram from `from`: the path lives.
    pub fn heard_from(&mut self, now: Instant, from: SocketAddr) {
        if let Some(c) = &mut self.confirmed {
            if c.addr == from {
                c.last_heard = now;
            }
        }
    }

    /// The confirmed path, if it has been silent too long; it is forgotten.
    pub fn check_dead(&mut self, now: Instant, active: bool) -> Option<SocketAddr> {
        let c = self.confirmed?;
        let limit = if active { DEAD_ACTIVE } else { DEAD_IDLE };
        if now.saturating_duration_since(c.last_heard) < limit {
            return None;
        }
        self.confirmed = None;
        Some(c.addr)
    }

    /// Everything learned is stale (our network changed): the path and
    /// the pings in flight go; candidates stay until the peer sends new ones.
    pub fn reset(&mut self) {
        self.confirmed = None;
        self.in_flight.clear();
        self.punch = None;
        self.attempt = None;
        // Mappings seen from our old network are gone with it.
        self.reflexive.clear();
        self.rebuild();
    }

    /// A ping of the engine's own (`lanrage ping`, measuring) went to
    /// `addr` from `socket`.
    pub fn ping_sent(&mut self, id: u64, addr: SocketAddr, socket: SocketId, now: Instant) {
        self.remember(id, addr, socket, now);
    }

    fn remember(&mut self, id: u64, addr: SocketAddr, socket: SocketId, now: Instant) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((id, addr, socket, now));
    }

    fn expire(&mut self, now: Instant) {
        while self
            .in_flight
            .front()
            .is_some_and(|&(_, _, _, at)| now.saturating_duration_since(at) > PING_LIFETIME)
        {
            self.in_flight.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::birthday::ATTEMPT_LENGTH as ATTEMPT_LENGTH_FOR_TESTS;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, n], 40000))
    }

    fn ids() -> impl FnMut() -> u64 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn a_punch_pings_every_candidate_on_its_schedule_then_stops() {
        let t0 = Instant::now();
        let mut d = DirectPath::default();
        assert!(d.set_candidates(&[addr(1), addr(2), addr(1)]));
        assert!(!d.set_candidates(&[addr(1), addr(2)]));
        d.start_punch(t0);
        let mut ids = ids();
        let mut rounds = Vec::new();
        for ms in (0..3000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            let mut out = Vec::new();
            d.poll(now, true, &mut ids, &mut out);
            if !out.is_empty() {
                assert_eq!(
                    out.iter().map(|(s, a, _)| (*s, *a)).collect::<Vec<_>>(),
                    [(SocketId::MAIN, addr(1)), (SocketId::MAIN, addr(2))]
                );
                rounds.push(ms);
            }
        }
        assert_eq!(rounds, [0, 50, 150, 300, 600, 1200, 2400]);
        assert!(!d.is_punching());
    }

    #[test]
    fn the_first_matching_pong_confirms_and_silence_kills_it() {
        let t0 = Instant::now();
        let mut d = DirectPath::default();
        d.set_candidates(&[addr(1), addr(2)]);
        d.start_punch(t0);
        let mut out = Vec::new();
        d.poll(t0, true, &mut ids(), &mut out);
        let (main, to, id) = out[1];
        // From another address than the ping went to, or on another socket
        // than it left from: not a confirmation.
        assert_eq!(
            d.on_pong(t0, main, addr(9), id, true),
            PongOutcome::Unmatched
        );
        assert_eq!(
            d.on_pong(t0, main, to, id + 100, true),
            PongOutcome::Unmatched
        );
        assert_eq!(
            d.on_pong(t0, SocketId(3), to, id, true),
            PongOutcome::Unmatched
        );
        let at = t0 + Duration::from_millis(20);
        assert_eq!(
            d.on_pong(at, main, to, id, true),
            PongOutcome::Confirmed {
                addr: to,
                socket: main,
                sent: t0
            }
        );
        assert_eq!(d.confirmed(), Some(addr(2)));
        assert!(!d.is_punching());
        // Alive while heard from; dead a second after the last word.
        d.heard_from(at + Duration::from_millis(500), addr(2));
        assert_eq!(d.check_dead(at + Duration::from_millis(1400), true), None);
        assert_eq!(
            d.check_dead(at + Duration::from_millis(1500), true),
            Some(addr(2))
        );
        assert_eq!(d.confirmed(), None);
    }

    #[test]
    fn heartbeats_follow_activity() {
        let t0 = Instant::now();
        let mut d = DirectPath::default();
        d.set_candidates(&[addr(1)]);
        d.start_punch(t0);
        let mut ids = ids();
        let mut out = Vec::new();
        d.poll(t0, true, &mut ids, &mut out);
        d.on_pong(t0, SocketId::MAIN, addr(1), out[0].2, true);
        let beats = |d: &mut DirectPath, ids: &mut dyn FnMut() -> u64, active, secs: u64| {
            let mut n = 0;
            for ms in (0..secs * 1000).step_by(10) {
                let mut out = Vec::new();
                let now = t0 + Duration::from_millis(ms);
                d.poll(now, active, ids, &mut out);
                for (socket, to, id) in out {
                    n += 1;
                    d.on_pong(now, socket, to, id, true);
                }
            }
            n
        };
        let active = beats(&mut d, &mut ids, true, 3);
        assert!((9..=11).contains(&active), "{active} heartbeats in 3 s");
        let mut idle = DirectPath::default();
        idle.set_candidates(&[addr(1)]);
        idle.start_punch(t0);
        let mut out = Vec::new();
        idle.poll(t0, false, &mut ids, &mut out);
        idle.on_pong(t0, SocketId::MAIN, addr(1), out[0].2, true);
        let quiet = beats(&mut idle, &mut ids, false, 30);
        assert!(quiet <= 2, "{quiet} heartbeats in 30 s idle");
    }

    #[test]
    fn peer_reflexive_candidates_are_bounded() {
        let mut d = DirectPath::default();
        for n in 0..40 {
            d.add_peer_reflexive(addr(n), SocketId::MAIN);
        }
        assert_eq!(d.remote.len(), MAX_CANDIDATES);
        assert!(d.set_candidates(&[addr(200)]));
        assert_eq!(d.remote.len(), MAX_CANDIDATES + 1);
        assert!(!d.add_peer_reflexive(addr(1), SocketId::MAIN));
    }

    /// A birthday probe that hits: the pong comes back on the socket the
    /// ping left from and confirms the pair with it; the path then keeps
    /// that socket for its heartbeats. A peer's ping on a spray socket
    /// makes its address a candidate pinged from that socket.
    #[test]
    fn a_spray_socket_carries_the_path_it_found() {
        let t0 = Instant::now();
        let mut d = DirectPath::default();
        let peer: SocketAddr = "198.51.100.7:41000".parse().expect("addr");
        d.set_candidates(&[peer]);
        assert!(d.start_attempt(t0, Attempt::spray(t0, &[peer])));
        assert!(
            !d.start_attempt(t0, Attempt::spray(t0, &[peer])),
            "one at a time"
        );
        let mut ids = ids();
        let mut out = Vec::new();
        d.poll(t0, true, &mut ids, &mut out);
        assert_eq!(out.len(), 256, "one ping from each spray socket");
        let (socket, to, id) = out[41];
        assert_eq!(socket, SocketId(42));
        assert!(
            d.add_peer_reflexive(peer, socket),
            "same address, other socket"
        );
        d.start_punch(t0);
        let mut punch = Vec::new();
        d.poll(t0, true, &mut ids, &mut punch);
        assert!(punch.contains(&(socket, peer, punch[1].2)), "{punch:?}");
        let at = t0 + Duration::from_millis(30);
        assert!(matches!(
            d.on_pong(at, socket, to, id, true),
            PongOutcome::Confirmed { socket: s, .. } if s == socket
        ));
        assert_eq!(d.confirmed_socket(), Some(socket));
        // Confirmed: the rest of the attempt is not sent.
        let mut later = Vec::new();
        d.poll(t0 + Duration::from_millis(400), true, &mut ids, &mut later);
        assert!(
            later.iter().all(|(s, a, _)| (*s, *a) == (socket, peer)),
            "{later:?}"
        );
        assert!(!d.attempt_live(t0 + ATTEMPT_LENGTH_FOR_TESTS));
    }
}
