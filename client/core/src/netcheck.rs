//! NAT behaviour discovery (RFC 5780 §4) against one relay's STUN, from the
//! engine's one socket, so what it finds is what WireGuard's datagrams get:
//! the reflexive address, the mapping behaviour, the filtering behaviour
//! and hairpinning. `lanrage netcheck` prints it; `status` shows it.
//!
//! Three phases, each with a deadline, every request retransmitted while
//! unanswered (RFC 8489 §6.2.1 asks for more patience; a LAN game wants an
//! answer in about two seconds):
//! 1. to the relay's primary address: a plain Binding (the reflexive
//!    address and OTHER-ADDRESS), one asking for the answer from the other
//!    address and port, one from the other port. Which answers get through
//!    is the filtering behaviour. These go first, before anything has been
//!    sent to the other address, so no filter has been opened for it yet.
//! 2. to the other address (and, if the relay has only another port, to
//!    that): the same reflexive address again means endpoint-independent
//!    mapping.
//! 3. a Binding to our own reflexive address: if it comes back to us, the
//!    NAT hairpins.
//!
//! Every request is padded so that the relay's full answer fits in it (the
//! relay never answers an unproven source with more bytes than it sent).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_proto::stun::{
    BindingRequest, BindingResponse, ChangeRequest, RequestBuilder, TransactionId, MAX_RESPONSE_LEN,
};

/// Retransmissions of an unanswered request, from the phase's start.
const RETRANSMIT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(150),
    Duration::from_millis(400),
];
/// A phase ends this long after it started, answered or not...
const PHASE_LENGTH: Duration = Duration::from_millis(700);
/// ...or, once the relay's RTT is known, this long after the last
/// retransmission that can still be answered plus three RTTs: an answer
/// that hasn't come by then isn't coming (the relay answers at once), and
/// a port-restricted NAT's missing answers shouldn't hold up punching.
const PHASE_GRACE: Duration = Duration::from_millis(100);

/// How a NAT maps our socket (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One external address for every destination: cone NATs.
    EndpointIndependent,
    /// A new one per destination address.
    AddressDependent,
    /// A new one per destination address and port: symmetric NATs.
    AddressAndPortDependent,
}

/// Which inbound datagrams a NAT lets through to our socket (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// From anyone: full cone.
    EndpointIndependent,
    /// From addresses we sent to: restricted cone.
    AddressDependent,
    /// From the address and port we sent to: port-restricted cone.
    AddressAndPortDependent,
}

impl Mapping {
    pub fn as_str(self) -> &'static str {
        match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::AddressDependent => "address-dependent",
            Mapping::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

impl Filtering {
    pub fn as_str(self) -> &'static str {
        match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// What a netcheck found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// The relay whose STUN answered.
    pub relay: String,
    /// Whether any Binding was answered.
    pub udp: bool,
    /// Our address as the relay sees it.
    pub reflexive: Option<SocketAddr>,
    /// Whether there is a NAT at all (the reflexive address is one of ours).
    pub behind_nat: Option<bool>,
    /// `None`: not determinable (no answer, or the relay has no other address).
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
    pub hairpin: Option<bool>,
    /// The relay's other address (RFC 5780 OTHER-ADDRESS), if it has one.
    pub other_address: Option<SocketAddr>,
    /// A mapping that depends on the destination but hands out ports in
    /// sequence: the next ones can be predicted (`docs/nat-traversal.md`).
    pub sequential: Option<Sequential>,
}

/// How a sequential NAT allocates: each new mapping's port is the last
/// one's plus `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequential {
    pub step: u16,
    /// The newest mapping the discovery saw.
    pub last: SocketAddr,
    /// Ports handed out between the relay registration's mapping and the
    /// discovery's: flows of ours made meanwhile (early punches to the
    /// peer among them, whose mappings live on while we keep pinging).
    pub between: Vec<SocketAddr>,
}

/// The most ports [`Sequential::between`] holds.
const MAX_BETWEEN: u16 = 8;

/// The largest step between consecutive mappings read as a sequence; a
/// larger one is as good as random (and predicting it would scatter).
pub const MAX_SEQUENTIAL_STEP: u16 = 16;

impl Sequential {
    /// Up to `count` ports our mapping towards a peer likely has: the ones
    /// handed out before the discovery's (a flow to the peer that already
    /// exists keeps its port), then the next ones after it, in order
    /// (other flows through the NAT may take a few first).
    pub fn predict(&self, count: usize) -> Vec<SocketAddr> {
        let next = (1..=count as u32).filter_map(|k| {
            let port = u32::from(self.last.port()) + k * u32::from(self.step);
            let port = u16::try_from(port).ok().filter(|&p| p != 0)?;
            Some(SocketAddr::new(self.last.ip(), port))
        });
        self.between
            .iter()
            .copied()
            .chain(next)
            .take(count)
            .collect()
    }

    /// Reads two mappings made back to back (phase 2 sends its two
    /// requests in one go, so no other flow of ours comes between) as a
    /// sequence: one IP, the second port a small step above the first.
    /// Phase 1's mapping is no sample: it is the relay registration's,
    /// older than punches that may have taken ports since. A scattering
    /// NAT lands within the step bound by chance once in ~4,000 runs, and
    /// then only some predicted candidates are wasted.
    /// `registered`: the relay registration's mapping, from which the
    /// ports between are counted.
    fn detect(
        registered: Option<SocketAddr>,
        first: SocketAddr,
        second: SocketAddr,
    ) -> Option<Self> {
        let step = i32::from(second.port()) - i32::from(first.port());
        if first.ip() != second.ip() || !(1..=i32::from(MAX_SEQUENTIAL_STEP)).contains(&step) {
            return None;
        }
        let step = step as u16;
        let between = registered
            .filter(|r| r.ip() == first.ip() && r.port() < first.port())
            .map(|r| {
                let gap = (first.port() - r.port()) / step;
                (1..gap.min(MAX_BETWEEN + 1))
                    .map(|k| SocketAddr::new(r.ip(), r.port() + k * step))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            step,
            last: second,
            between,
        })
    }
}

impl NatReport {
    /// The classic name (RFC 3489), for people: "none", "full cone",
    /// "restricted cone", "port-restricted cone", "symmetric", or "unknown".
    pub fn nat_type(&self) -> &'static str {
        match (self.behind_nat, self.mapping, self.filtering) {
            (Some(false), _, _) => "none",
            (_, Some(Mapping::EndpointIndependent), Some(f)) => match f {
                Filtering::EndpointIndependent => "full cone",
                Filtering::AddressDependent => "restricted cone",
                Filtering::AddressAndPortDependent => "port-restricted cone",
            },
            (_, Some(_), _) => "symmetric",
            _ => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TestKind {
    /// Phase 1: plain Binding to the primary address.
    Binding,
    /// Phase 1: answer from the other address and port.
    FilterBoth,
    /// Phase 1: answer from the other port.
    FilterPort,
    /// Phase 2: to the other IP at the primary port.
    MapOtherIp,
    /// Phase 2: to the other IP and port (or, with no other IP, the other port).
    MapOther,
    /// Phase 3: to our own reflexive address.
    Hairpin,
}

#[derive(Debug, Clone)]
struct Test {
    kind: TestKind,
    txid: TransactionId,
    dst: SocketAddr,
    change: Option<ChangeRequest>,
    retransmits: usize,
    /// The reflexive address it reported, and where the answer came from.
    answer: Option<(Option<SocketAddr>, SocketAddr)>,
}

/// One run of the discovery. The engine feeds it STUN datagrams and the
/// clock, and sends what [`Netcheck::poll`] asks for.
#[derive(Debug)]
pub struct Netcheck {
    /// The previous run's findings on this network: its filtering verdict
    /// stands if the mapping is the same (see [`Netcheck::start`]).
    previous: Option<NatReport>,
    relay: String,
    server: SocketAddr,
    local: Vec<SocketAddr>,
    phase: u8,
    phase_start: Instant,
    /// The relay's RTT, from the first answer to phase 1's plain Binding.
    rtt: Option<Duration>,
    tests: Vec<Test>,
    report: NatReport,
}

impl Netcheck {
    /// Starts a run against `server` (a relay's address). `local`: our host
    /// addresses (to tell whether there is a NAT at all). `txid` gives
    /// fresh random transaction ids. `previous`: the last run on this
    /// network, if any. A filtering test only means something before we
    /// have sent to the relay's other address: once a run has, our NAT's
    /// filter is open for it, and a second run would see a full cone. So
    /// while the reflexive address is the one `previous` found, its
    /// filtering verdict stands (a network change clears `previous`).
    pub fn start(
        now: Instant,
        relay: &str,
        server: SocketAddr,
        local: &[SocketAddr],
        previous: Option<&NatReport>,
        txid: &mut dyn FnMut() -> TransactionId,
    ) -> Self {
        let both = ChangeRequest {
            change_ip: true,
            change_port: true,
        };
        let port = ChangeRequest {
            change_ip: false,
            change_port: true,
        };
        let tests = [
            (TestKind::Binding, None),
            (TestKind::FilterBoth, Some(both)),
            (TestKind::FilterPort, Some(port)),
        ]
        .into_iter()
        .map(|(kind, change)| Test {
            kind,
            txid: txid(),
            dst: server,
            change,
            retransmits: 0,
            answer: None,
        })
        .collect();
        Self {
            previous: previous.filter(|p| p.relay == relay).cloned(),
            relay: relay.to_owned(),
            server,
            local: local.to_vec(),
            phase: 1,
            phase_start: now,
            rtt: None,
            tests,
            report: NatReport {
                relay: relay.to_owned(),
                udp: false,
                reflexive: None,
                behind_nat: None,
                mapping: None,
                filtering: None,
                hairpin: None,
                other_address: None,
                sequential: None,
            },
        }
    }

    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// The next time [`Netcheck::poll`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        let end = self.phase_end();
        self.tests
            .iter()
            .filter(|t| t.answer.is_none())
            .filter_map(|t| RETRANSMIT.get(t.retransmits))
            .map(|&offset| self.phase_start + offset)
            .chain([end])
            .min()
            .unwrap_or(end)
    }

    /// Requests due now (destination, bytes), and the report once the last
    /// phase is over.
    pub fn poll(
        &mut self,
        now: Instant,
        txid: &mut dyn FnMut() -> TransactionId,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<NatReport> {
        let phase_done = now >= self.phase_end() || self.tests.iter().all(|t| t.answer.is_some());
        if phase_done {
            if let Some(report) = self.next_phase(now, txid) {
                return Some(report);
            }
        }
        for t in &mut self.tests {
            if t.answer.is_some() {
                continue;
            }
            let Some(&offset) = RETRANSMIT.get(t.retransmits) else {
                continue;
            };
            if now < self.phase_start + offset {
                continue;
            }
            t.retransmits += 1;
            let mut request = RequestBuilder::new(t.txid);
            request.change = t.change;
            request.pad_to = MAX_RESPONSE_LEN;
            let mut buf = vec![0u8; request.encoded_len()];
            if let Ok(n) = request.encode(&mut buf) {
                buf.truncate(n);
                out.push((t.dst, buf));
            }
        }
        None
    }

    /// When the current phase ends (see [`PHASE_GRACE`]).
    fn phase_end(&self) -> Instant {
        let full = self.phase_start + PHASE_LENGTH;
        match self.rtt {
            Some(rtt) => full.min(self.phase_start + RETRANSMIT[1] + rtt * 3 + PHASE_GRACE),
            None => full,
        }
    }

    /// A Binding response from `from`, at `now`: whether it was one of ours.
    pub fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: &BindingResponse,
    ) -> bool {
        let BindingResponse::Success(success) = response else {
            // An error (or a relay that doesn't do RFC 5780) answers the
            // question "does UDP work", nothing more.
            return self
                .tests
                .iter()
                .any(|t| t.txid == response.transaction_id());
        };
        let Some(t) = self
            .tests
            .iter_mut()
            .find(|t| t.txid == success.transaction_id && t.answer.is_none())
        else {
            return false;
        };
        if t.kind == TestKind::Binding {
            self.report.other_address = success.other;
            // Sent at the phase's start; a retransmission's answer would
            // read long, which only lengthens the phases.
            if self.phase == 1 && self.rtt.is_none() {
                self.rtt = Some(now.saturating_duration_since(self.phase_start));
            }
        }
        t.answer = Some((success.reflexive(), from));
        true
    }

    /// A Binding *request* reached us: our own hairpin test, if its id is
    /// the one we sent to our reflexive address.
    pub fn on_request(&mut self, request: &BindingRequest, from: SocketAddr) -> bool {
        let Some(t) = self.tests.iter_mut().find(|t| {
            t.kind == TestKind::Hairpin && t.txid == request.transaction_id && t.answer.is_none()
        }) else {
            return false;
        };
        t.answer = Some((None, from));
        true
    }

    fn answer(&self, kind: TestKind) -> Option<(Option<SocketAddr>, SocketAddr)> {
        self.tests
            .iter()
            .find(|t| t.kind == kind)
            .and_then(|t| t.answer)
    }

    /// Reads the finished phase into the report and sets up the next one;
    /// the report when there is none.
    fn next_phase(
        &mut self,
        now: Instant,
        txid: &mut dyn FnMut() -> TransactionId,
    ) -> Option<NatReport> {
        match self.phase {
            1 => {
                let Some((mapped, _)) = self.answer(TestKind::Binding) else {
                    return Some(self.report.clone()); // no UDP to this relay
                };
                self.report.udp = true;
                self.report.reflexive = mapped;
                self.report.behind_nat = mapped.map(|m| !self.local.contains(&m));
                let server = self.server;
                // An answer counts only if it really came from elsewhere:
                // a relay without the other address must not fake it.
                let from_other_ip = |a: Option<(Option<SocketAddr>, SocketAddr)>| {
                    a.is_some_and(|(_, from)| {
                        from.ip() != server.ip() && from.port() != server.port()
                    })
                };
                let from_other_port = |a: Option<(Option<SocketAddr>, SocketAddr)>| {
                    a.is_some_and(|(_, from)| {
                        from.ip() == server.ip() && from.port() != server.port()
                    })
                };
                let other = self.report.other_address;
                let has_other_ip = other.is_some_and(|o| o.ip() != server.ip());
                let earlier = self
                    .previous
                    .as_ref()
                    .filter(|p| p.reflexive == mapped && p.filtering.is_some());
                self.report.filtering = if let Some(p) = earlier {
                    p.filtering
                } else if from_other_ip(self.answer(TestKind::FilterBoth)) {
                    Some(Filtering::EndpointIndependent)
                } else if from_other_port(self.answer(TestKind::FilterPort)) {
                    // Another port of the same address got through, but not
                    // another address: address-dependent (only knowable if
                    // the relay could have answered from another address).
                    has_other_ip.then_some(Filtering::AddressDependent)
                } else if other.is_some() {
                    Some(Filtering::AddressAndPortDependent)
                } else {
                    None
                };
                self.phase = 2;
                self.phase_start = now;
                self.tests.clear();
                if let Some(other) = other {
                    if has_other_ip {
                        let dst = SocketAddr::new(other.ip(), server.port());
                        self.add_test(TestKind::MapOtherIp, dst, txid);
                    }
                    self.add_test(TestKind::MapOther, other, txid);
                }
                // Phase 1's answers are still needed for the mapping.
                self.tests.push(Test {
                    kind: TestKind::Binding,
                    txid: [0; 12],
                    dst: server,
                    change: None,
                    retransmits: RETRANSMIT.len(),
                    answer: Some((mapped, server)),
                });
                None
            }
            2 => {
                let first = self.report.reflexive;
                let other_ip = self.answer(TestKind::MapOtherIp).map(|(m, _)| m);
                let other = self.answer(TestKind::MapOther).map(|(m, _)| m);
                self.report.mapping = match (other_ip, other) {
                    (Some(m2), _) if m2 == first => Some(Mapping::EndpointIndependent),
                    (Some(m2), Some(m3)) if m3 == m2 => Some(Mapping::AddressDependent),
                    (Some(_), Some(_)) => Some(Mapping::AddressAndPortDependent),
                    // Only another port to try (or the other-IP test lost):
                    (None, Some(m3)) if m3 == first => Some(Mapping::EndpointIndependent),
                    (None, Some(_)) => Some(Mapping::AddressAndPortDependent),
                    _ => None,
                };
                if self
                    .report
                    .mapping
                    .is_some_and(|m| m != Mapping::EndpointIndependent)
                {
                    if let (Some(Some(a)), Some(Some(b))) = (other_ip, other) {
                        self.report.sequential = Sequential::detect(first, a, b);
                    }
                }
                self.phase = 3;
                self.phase_start = now;
                self.tests.clear();
                match self.report.reflexive {
                    Some(me) if self.report.behind_nat == Some(true) => {
                        self.add_test(TestKind::Hairpin, me, txid);
                        None
                    }
                    _ => Some(self.report.clone()),
                }
            }
            _ => {
                self.report.hairpin = Some(self.answer(TestKind::Hairpin).is_some());
                Some(self.report.clone())
            }
        }
    }

    fn add_test(
        &mut self,
        kind: TestKind,
        dst: SocketAddr,
        txid: &mut dyn FnMut() -> TransactionId,
    ) {
        self.tests.push(Test {
            kind,
            txid: txid(),
            dst,
            change: None,
            retransmits: 0,
            answer: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_proto::stun::BindingSuccess;

    /// A home NAT in front of us and a relay with two addresses, as the
    /// NAT lab builds them, reduced to what STUN sees.
    struct World {
        mapping: Mapping,
        filtering: Filtering,
        hairpin: bool,
        primary: SocketAddr,
        other: SocketAddr,
        /// Destinations we sent to (what the NAT's filter remembers).
        contacted: Vec<SocketAddr>,
        destinations: Vec<SocketAddr>,
        /// The port step between new mappings; 0: scattered ports.
        stride: u16,
        /// When (virtual ms after its start) the last run reported.
        took_ms: u64,
        /// The last run's report, for the next.
        previous: Option<NatReport>,
    }

    const PUBLIC: [u8; 4] = [203, 0, 113, 5];

    impl World {
        fn new(mapping: Mapping, filtering: Filtering, hairpin: bool) -> Self {
            Self {
                mapping,
                filtering,
                hairpin,
                primary: "198.51.100.1:3478".parse().expect("addr"),
                other: "198.51.100.2:3479".parse().expect("addr"),
                contacted: Vec::new(),
                destinations: Vec::new(),
                previous: None,
                stride: 1,
                took_ms: 0,
            }
        }

        fn mapped_for(&mut self, dst: SocketAddr) -> SocketAddr {
            let key = match self.mapping {
                Mapping::EndpointIndependent => None,
                Mapping::AddressDependent => Some(SocketAddr::new(dst.ip(), 0)),
                Mapping::AddressAndPortDependent => Some(dst),
            };
            let index = match key {
                None => 0,
                Some(k) => match self.destinations.iter().position(|d| *d == k) {
                    Some(i) => i,
                    None => {
                        self.destinations.push(k);
                        self.destinations.len() - 1
                    }
                },
            };
            let index = index as u16;
            let port = match self.stride {
                0 => 40000 + index.wrapping_mul(7919) % 20000,
                stride => 40000 + index * stride,
            };
            SocketAddr::from((PUBLIC, port))
        }

        fn passes(&self, from: SocketAddr) -> bool {
            match self.filtering {
                Filtering::EndpointIndependent => true,
                Filtering::AddressDependent => self.contacted.iter().any(|c| c.ip() == from.ip()),
                Filtering::AddressAndPortDependent => self.contacted.contains(&from),
            }
        }

        /// What comes back to us for a request to `dst`: (from, bytes, is a
        /// request).
        fn send(&mut self, dst: SocketAddr, bytes: &[u8]) -> Option<(SocketAddr, Vec<u8>, bool)> {
            let request = BindingRequest::parse(bytes).expect("a Binding request");
            if dst.ip() == std::net::IpAddr::from(PUBLIC) {
                return self.hairpin.then(|| (dst, bytes.to_vec(), true));
            }
            let mapped = self.mapped_for(dst);
            self.contacted.push(dst);
            let from = match request.change {
                Some(c) if c.change_ip && c.change_port => self.other,
                Some(c) if c.change_port => SocketAddr::new(dst.ip(), self.other.port()),
                _ => dst,
            };
            if !self.passes(from) {
                return None;
            }
            let response = BindingSuccess {
                transaction_id: request.transaction_id,
                mapped,
                other: Some(self.other),
                origin: Some(from),
                software: None,
                padding: None,
                fingerprint: true,
            };
            let mut out = vec![0u8; response.encoded_len()];
            let n = response.encode(&mut out).expect("encodes");
            out.truncate(n);
            Some((from, out, false))
        }
    }

    fn run(world: &mut World) -> NatReport {
        let t0 = Instant::now();
        let mut n = 0u8;
        let mut txid = move || {
            n += 1;
            [n; 12]
        };
        let local: SocketAddr = "192.168.1.10:40000".parse().expect("addr");
        let previous = world.previous.take();
        let mut check = Netcheck::start(
            t0,
            "relay1",
            world.primary,
            &[local],
            previous.as_ref(),
            &mut txid,
        );
        for ms in (0..5000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            let mut out = Vec::new();
            if let Some(report) = check.poll(now, &mut txid, &mut out) {
                world.previous = Some(report.clone());
                world.took_ms = ms;
                return report;
            }
            for (dst, bytes) in out {
                assert!(bytes.len() >= MAX_RESPONSE_LEN, "padded for the answer");
                match world.send(dst, &bytes) {
                    Some((from, reply, true)) => {
                        check.on_request(&BindingRequest::parse(&reply).expect("request"), from);
                    }
                    Some((from, reply, false)) => {
                        check.on_response(
                            now,
                            from,
                            &BindingResponse::parse(&reply).expect("response"),
                        );
                    }
                    None => {}
                }
            }
        }
        panic!("no report within 5 s");
    }

    #[test]
    fn each_nat_behaviour_is_told_apart() {
        use Filtering as F;
        use Mapping as M;
        let cases = [
            (M::EndpointIndependent, F::EndpointIndependent, "full cone"),
            (
                M::EndpointIndependent,
                F::AddressDependent,
                "restricted cone",
            ),
            (
                M::EndpointIndependent,
                F::AddressAndPortDependent,
                "port-restricted cone",
            ),
            (M::AddressDependent, F::AddressAndPortDependent, "symmetric"),
            (
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                "symmetric",
            ),
        ];
        for (mapping, filtering, name) in cases {
            for hairpin in [false, true] {
                let report = run(&mut World::new(mapping, filtering, hairpin));
                assert!(report.udp);
                assert_eq!(report.reflexive, Some(SocketAddr::from((PUBLIC, 40000))));
                assert_eq!(report.behind_nat, Some(true));
                assert_eq!(report.mapping, Some(mapping), "{name}");
                assert_eq!(report.filtering, Some(filtering), "{name}");
                assert_eq!(report.nat_type(), name);
                assert_eq!(report.hairpin, Some(hairpin), "{name}");
            }
        }
    }

    /// Once the relay's RTT is known, a phase waits for missing answers
    /// only as long as one could still come: a port-restricted NAT, whose
    /// filtering answers never come and which doesn't hairpin, is known in
    /// about half a second, not three times 700 ms.
    #[test]
    fn missing_answers_hold_a_phase_only_as_long_as_they_could_come() {
        let mut world = World::new(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
            false,
        );
        let report = run(&mut world);
        assert_eq!(report.nat_type(), "port-restricted cone");
        // Phase 1 and 3: 150 ms (the last retransmission) + 3 × 0 + 100 ms
        // each; phase 2, all answered, one tick.
        assert!((500..=530).contains(&world.took_ms), "{} ms", world.took_ms);
    }

    /// A second run on the same mapping: the first run's requests to the
    /// other address opened the NAT's filter for it, so its own filtering
    /// test would see a full cone; the first verdict stands instead.
    #[test]
    fn a_second_run_keeps_the_first_filtering_verdict() {
        let mut world = World::new(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
            false,
        );
        let first = run(&mut world);
        assert_eq!(first.nat_type(), "port-restricted cone");
        let second = run(&mut world);
        assert_eq!(second.nat_type(), "port-restricted cone");
        // Without the first report, the opened filter fools the test:
        // which is why the verdict is kept.
        world.previous = None;
        assert_eq!(run(&mut world).nat_type(), "full cone");
    }

    /// A symmetric NAT that hands out ports in sequence is told from one
    /// that scatters them, and the next ports are predicted from the last.
    #[test]
    fn sequential_port_allocation_is_detected_and_predicted() {
        for (stride, expected) in [(1u16, Some(1u16)), (7, Some(7)), (0, None), (40, None)] {
            let mut world = World::new(
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
                false,
            );
            world.stride = stride;
            let report = run(&mut world);
            assert_eq!(report.nat_type(), "symmetric");
            assert_eq!(
                report.sequential.as_ref().map(|s| s.step),
                expected,
                "stride {stride}"
            );
            if let Some(seq) = report.sequential.clone() {
                assert_eq!(seq.last.port(), 40000 + 2 * stride);
                assert!(seq.between.is_empty(), "no flow came between");
                let next: Vec<u16> = seq.predict(3).iter().map(|a| a.port()).collect();
                assert_eq!(
                    next,
                    [40000 + 3 * stride, 40000 + 4 * stride, 40000 + 5 * stride]
                );
                // The world's next new mapping is the first prediction.
                let fresh = world.mapped_for("198.51.100.77:9".parse().expect("addr"));
                assert_eq!(fresh, seq.predict(1)[0]);
            }
        }
        // Cone NATs and address-dependent ones (two samples, one repeated)
        // predict nothing.
        for mapping in [Mapping::EndpointIndependent, Mapping::AddressDependent] {
            let report = run(&mut World::new(
                mapping,
                Filtering::AddressAndPortDependent,
                false,
            ));
            assert_eq!(report.sequential, None, "{mapping:?}");
        }
        // Predictions stop at the top of the port range.
        let top = Sequential {
            step: 1,
            last: "203.0.113.5:65534".parse().expect("addr"),
            between: Vec::new(),
        };
        assert_eq!(top.predict(3).len(), 1);
        // Flows made between registration (40000) and the discovery's
        // (40004, 40005) took 40001–40003: they come first.
        let a = |p: u16| SocketAddr::from((PUBLIC, p));
        let seq = Sequential::detect(Some(a(40000)), a(40004), a(40005)).expect("sequential");
        let ports: Vec<u16> = seq.predict(6).iter().map(|s| s.port()).collect();
        assert_eq!(ports, [40001, 40002, 40003, 40006, 40007, 40008]);
    }

    #[test]
    fn no_answer_means_no_udp_and_a_report_anyway() {
        let t0 = Instant::now();
        let mut txid = || [7u8; 12];
        let server: SocketAddr = "198.51.100.1:3478".parse().expect("addr");
        let mut check = Netcheck::start(t0, "relay1", server, &[], None, &mut txid);
        let mut sent = 0;
        for ms in (0..2000).step_by(10) {
            let mut out = Vec::new();
            if let Some(report) = check.poll(t0 + Duration::from_millis(ms), &mut txid, &mut out) {
                assert!(!report.udp);
                assert_eq!(report.nat_type(), "unknown");
                assert_eq!(sent, 9, "three requests, each sent three times");
                return;
            }
            sent += out.len();
        }
        panic!("no report");
    }
}
