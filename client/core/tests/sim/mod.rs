//! A seeded simulated network on a virtual clock: client engines and real
//! relay routers (`lanrage-relay-core`, the relay's own sans-IO core), with
//! per-link one-way delay, jitter and loss, and relays that can die or
//! restart. Nothing touches a socket; every run with one seed is the same
//! run (except inside boringtun, which reads the real clock for its own
//! timers; see docs/client.md, "Time").
//!
//! Drive loop (`Sim::step`): take the earliest of the next delivery, the
//! engines' `poll_timeout` and the routers' `poll_timeout`; advance the
//! clock to it; deliver or fire; then drain every engine's outputs onto the
//! network.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lanrage_client_core::{Engine, EngineConfig, Event, PeerSpec, RelaySpec};
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;
use lanrage_relay_core::router::{Router, RouterConfig, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One direction's behaviour between a client and a relay.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter]`.
    pub jitter: Duration,
    pub loss: f64,
}

impl Link {
    pub fn ms(delay: u64) -> Self {
        Self {
            delay: Duration::from_millis(delay),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

pub struct Client {
    pub name: String,
    pub addr: SocketAddr,
    pub engine: Engine,
    pub virtual_ip: Ipv4Addr,
    /// Packets the engine wrote to its TUN, with the virtual time.
    pub received: Vec<(Instant, Vec<u8>)>,
    pub events: Vec<(Instant, Event)>,
    /// Datagrams the engine sent, and its wake-ups (timeouts it asked for
    /// that came due).
    pub sent: u64,
    pub wakeups: u64,
}

pub struct RelayNode {
    pub name: String,
    pub addr: SocketAddr,
    secret: [u8; 32],
    pub router: Router,
    pub alive: bool,
    restarts: u64,
}

struct Datagram {
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub clients: Vec<Client>,
    pub relays: Vec<RelayNode>,
    /// (client, relay) → link, the same both ways.
    links: HashMap<(usize, usize), Link>,
    /// The link between two clients (lower index first), when their
    /// networks let them reach each other directly; none: dropped.
    direct_links: HashMap<(usize, usize), Link>,
    /// How datagrams went: (client, relay) → count of WireGuard datagrams
    /// a client sent to a relay, and client → count sent to other clients.
    pub wireguard_to_relays: u64,
    pub wireguard_direct: u64,
    /// Clients behind a port-restricted filter: a datagram from another
    /// client gets in only if this one has sent to that address before (as
    /// a home router's NAT does; every mapping keeps the client's address,
    /// so mapping is endpoint-independent).
    filtering: Vec<bool>,
    /// (client, destination) pairs a client has sent to.
    opened: std::collections::HashSet<(usize, SocketAddr)>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, Datagram>,
    seq: u64,
    rng: StdRng,
    pub delivered: u64,
    /// Clients whose datagrams go nowhere (a PC not started yet).
    offline: Vec<bool>,
    /// The last signal each client received (source, bytes): what an
    /// attacker on the path could capture and replay.
    pub last_signal: HashMap<usize, (SocketAddr, Vec<u8>)>,
    /// The last path probe each client received (source, bytes).
    pub last_probe: HashMap<usize, (SocketAddr, Vec<u8>)>,
}

pub fn relay_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 10 + i as u8], 51820))
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 10 + i as u8], 40000 + i as u16))
}

pub fn virtual_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 0, 1 + i as u8)
}

#[allow(dead_code)] // pub for tests/discovery.rs
pub fn client_secret(i: usize) -> StaticSecret {
    StaticSecret::from([0x10 + i as u8; 32])
}

impl Sim {
    /// `clients` engines, each configured with every relay and every other
    /// client as a peer; `links[c][r]` is the link from client c to relay r.
    pub fn new(seed: u64, clients: usize, links: &[Vec<Link>]) -> Self {
        Self::build(seed, clients, links, None)
    }

    /// Like [`Sim::new`], but every client has every other's address as
    /// its configured endpoint, and clients reach each other over `direct`.
    pub fn new_direct(seed: u64, clients: usize, links: &[Vec<Link>], direct: Link) -> Self {
        Self::build(seed, clients, links, Some(direct))
    }

    /// Clients with no endpoints configured that can reach each other
    /// over `direct`, each behind a port-restricted filter if `filtering`:
    /// a direct path exists only if punching opens it.
    pub fn punchable(
        seed: u64,
        clients: usize,
        links: &[Vec<Link>],
        direct: Link,
        filtering: bool,
    ) -> Self {
        let mut sim = Self::build(seed, clients, links, None);
        for a in 0..clients {
            for b in a + 1..clients {
                sim.direct_links.insert((a, b), direct);
            }
        }
        sim.filtering = vec![filtering; clients];
        sim
    }

    /// The direct link between two clients, or none (their datagrams to
    /// each other are lost).
    pub fn set_direct_link(&mut self, a: usize, b: usize, link: Option<Link>) {
        let key = (a.min(b), a.max(b));
        match link {
            Some(link) => self.direct_links.insert(key, link),
            None => self.direct_links.remove(&key),
        };
    }

    /// Like [`Sim::new`], with each client's LAN discovery settings.
    #[allow(dead_code)] // tests/discovery.rs
    pub fn with_discovery(
        seed: u64,
        links: &[Vec<Link>],
        discovery: &[lanrage_client_core::DiscoveryConfig],
    ) -> Self {
        Self::build_with(seed, links.len(), links, None, &|c| discovery[c])
    }

    fn build(seed: u64, clients: usize, links: &[Vec<Link>], direct: Option<Link>) -> Self {
        Self::build_with(seed, clients, links, direct, &|_| Default::default())
    }

    fn build_with(
        seed: u64,
        clients: usize,
        links: &[Vec<Link>],
        direct: Option<Link>,
        discovery: &dyn Fn(usize) -> lanrage_client_core::DiscoveryConfig,
    ) -> Self {
        let start = Instant::now();
        let relay_count = links.first().map_or(0, Vec::len);
        let relays: Vec<RelayNode> = (0..relay_count)
            .map(|r| {
                let secret = [0x70 + r as u8; 32];
                RelayNode {
                    name: format!("relay{}", r + 1),
                    addr: relay_addr(r),
                    secret,
                    router: new_router(secret, 1, start),
                    alive: true,
                    restarts: 0,
                }
            })
            .collect();
        let relay_specs: Vec<RelaySpec> = relays
            .iter()
            .map(|r| RelaySpec {
                name: r.name.clone(),
                addr: r.addr,
                key: PeerKey::from(&PublicKey::from(&StaticSecret::from(r.secret))),
            })
            .collect();
        let clients: Vec<Client> = (0..clients)
            .map(|c| {
                let peers = (0..links.len())
                    .filter(|&p| p != c)
                    .map(|p| PeerSpec {
                        name: format!("client{}", p + 1),
                        key: PeerKey::from(&PublicKey::from(&client_secret(p))),
                        virtual_ip: virtual_ip(p),
                        endpoint: direct.map(|_| client_addr(p)),
                    })
                    .collect();
                let config = EngineConfig {
                    private_key: client_secret(c),
                    virtual_ip: Some(virtual_ip(c)),
                    relays: relay_specs.clone(),
                    peers,
                    unix_nanos_at_start: 1_700_000_000_000_000_000,
                    seed: [seed as u8 ^ c as u8; 32],
                    direct_paths: true,
                    membership: None,
                    discovery: discovery(c),
                };
                Client {
                    name: format!("client{}", c + 1),
                    addr: client_addr(c),
                    engine: Engine::new(config, start).expect("engine config"),
                    virtual_ip: virtual_ip(c),
                    received: Vec::new(),
                    events: Vec::new(),
                    sent: 0,
                    wakeups: 0,
                }
            })
            .collect();
        let mut link_map = HashMap::new();
        for (c, row) in links.iter().enumerate() {
            for (r, link) in row.iter().enumerate() {
                link_map.insert((c, r), *link);
            }
        }
        let mut sim = Self {
            now: start,
            start,
            clients,
            relays,
            links: link_map,
            direct_links: (0..links.len())
                .flat_map(|a| (a + 1..links.len()).map(move |b| (a, b)))
                .filter_map(|pair| Some((pair, direct?)))
                .collect(),
            wireguard_to_relays: 0,
            wireguard_direct: 0,
            filtering: vec![false; links.len()],
            opened: std::collections::HashSet::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            delivered: 0,
            offline: vec![false; links.len()],
            last_signal: HashMap::new(),
            last_probe: HashMap::new(),
        };
        sim.drain_all();
        sim
    }

    pub fn set_link(&mut self, client: usize, relay: usize, link: Link) {
        self.links.insert((client, relay), link);
    }

    /// The client's network goes (or comes back): nothing reaches or leaves it.
    pub fn set_offline(&mut self, client: usize, offline: bool) {
        self.offline[client] = offline;
    }

    /// The relay process dies: nothing reaches it, nothing leaves it.
    pub fn kill_relay(&mut self, relay: usize) {
        self.relays[relay].alive = false;
    }

    /// The relay restarts: a fresh router (new epoch, no state).
    pub fn restart_relay(&mut self, relay: usize) {
        let node = &mut self.relays[relay];
        node.restarts += 1;
        node.router = new_router(node.secret, 1 + node.restarts, self.now);
        node.alive = true;
    }

    fn endpoint(&self, addr: SocketAddr) -> Option<Endpoint> {
        if let Some(c) = self.clients.iter().position(|c| c.addr == addr) {
            return Some(Endpoint::Client(c));
        }
        self.relays
            .iter()
            .position(|r| r.addr == addr)
            .map(Endpoint::Relay)
    }

    fn send(&mut self, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        let (Some(a), Some(b)) = (self.endpoint(src), self.endpoint(dst)) else {
            return; // nowhere: lost
        };
        let wireguard = matches!(bytes.first(), Some(1..=4)) && bytes.get(1..4) == Some(&[0; 3]);
        if let Endpoint::Client(x) = a {
            self.opened.insert((x, dst));
        }
        let link = match (a, b) {
            (Endpoint::Client(c), Endpoint::Relay(r))
            | (Endpoint::Relay(r), Endpoint::Client(c)) => {
                if self.offline[c] {
                    return;
                }
                if wireguard && matches!(a, Endpoint::Client(_)) {
                    self.wireguard_to_relays += 1;
                }
                self.links[&(c, r)]
            }
            (Endpoint::Client(x), Endpoint::Client(y)) => {
                if self.offline[x] || self.offline[y] {
                    return;
                }
                if self.filtering[y] && !self.opened.contains(&(y, src)) {
                    return; // unsolicited: the filter drops it
                }
                if wireguard {
                    self.wireguard_direct += 1;
                }
                match self.direct_links.get(&(x.min(y), x.max(y))) {
                    Some(link) => *link,
                    None => return,
                }
            }
            (Endpoint::Relay(_), Endpoint::Relay(_)) => return,
        };
        if self.rng.gen_bool(link.loss.clamp(0.0, 1.0)) {
            return;
        }
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.gen_range(0..=link.jitter.as_nanos() as u64))
        };
        let at = self.now + link.delay + jitter;
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.in_flight
            .insert(self.seq, Datagram { src, dst, bytes });
    }

    fn drain(&mut self, c: usize) {
        let now = self.now;
        let mut sends = Vec::new();
        let client = &mut self.clients[c];
        while let Some(t) = client.engine.poll_transmit() {
            client.sent += 1;
            sends.push(t);
        }
        while let Some(packet) = client.engine.poll_tun() {
            client.received.push((now, packet));
        }
        while let Some(event) = client.engine.poll_event() {
            client.events.push((now, event));
        }
        let src = client.addr;
        for t in sends {
            self.send(src, t.dst, t.payload);
        }
    }

    fn drain_all(&mut self) {
        for c in 0..self.clients.len() {
            self.drain(c);
        }
    }

    /// Advances to the next thing that happens, at most to `limit`.
    fn step(&mut self, limit: Instant) {
        let next_delivery = self.queue.peek().map(|Reverse((at, _))| *at);
        let next_engine = self
            .clients
            .iter()
            .filter_map(|c| c.engine.poll_timeout())
            .min();
        let next_router = self
            .relays
            .iter()
            .filter(|r| r.alive)
            .filter_map(|r| r.router.poll_timeout())
            .min();
        let next = [next_delivery, next_engine, next_router]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(limit)
            .min(limit)
            .max(self.now);
        self.now = next;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            if let Some(datagram) = self.in_flight.remove(&seq) {
                self.deliver(datagram);
            }
        }
        for r in 0..self.relays.len() {
            if self.relays[r].alive
                && self.relays[r]
                    .router
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
            {
                let now = self.now;
                self.relays[r].router.handle_timeout(now);
            }
        }
        for c in 0..self.clients.len() {
            if self.clients[c]
                .engine
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                let now = self.now;
                self.clients[c].wakeups += 1;
                self.clients[c].engine.handle_timeout(now);
            }
            self.drain(c);
        }
    }

    fn deliver(&mut self, datagram: Datagram) {
        self.delivered += 1;
        match self.endpoint(datagram.dst) {
            Some(Endpoint::Client(c)) => {
                if datagram.bytes.starts_with(b"LRG!") && datagram.bytes.get(5) == Some(&7) {
                    self.last_signal
                        .insert(c, (datagram.src, datagram.bytes.clone()));
                }
                if datagram.bytes.starts_with(b"LRG!") && datagram.bytes.get(5) == Some(&8) {
                    self.last_probe
                        .insert(c, (datagram.src, datagram.bytes.clone()));
                }
                let now = self.now;
                self.clients[c]
                    .engine
                    .handle_udp(now, datagram.src, &datagram.bytes);
                self.drain(c);
            }
            Some(Endpoint::Relay(r)) => {
                if !self.relays[r].alive {
                    return;
                }
                let mut buf = datagram.bytes;
                let now = self.now;
                match self.relays[r].router.handle(now, datagram.src, &mut buf) {
                    Verdict::Forward(dst) => self.send(datagram.dst, dst, buf),
                    Verdict::Reply(len) => {
                        buf.truncate(len);
                        self.send(datagram.dst, datagram.src, buf);
                    }
                    Verdict::Drop(_) | Verdict::Consumed => {}
                }
            }
            None => {}
        }
    }

    /// Runs the network for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        // Bounded: each step advances time or drains a delivery.
        for _ in 0..10_000_000 {
            if self.now >= end {
                return;
            }
            self.step(end);
        }
        panic!("simulation did not reach its end time");
    }

    /// Client `from` sends an IP packet to client `to`'s virtual IP.
    pub fn send_packet(&mut self, from: usize, to: usize, payload: &[u8]) {
        let packet = ipv4_udp(
            self.clients[from].virtual_ip,
            self.clients[to].virtual_ip,
            payload,
        );
        let now = self.now;
        self.clients[from].engine.handle_tun(now, &packet);
        self.drain(from);
    }

    /// Client `from`'s TUN gives the engine this packet (as a game's
    /// broadcast would come out of it).
    #[allow(dead_code)] // tests/discovery.rs
    pub fn send_raw(&mut self, from: usize, packet: &[u8]) {
        let now = self.now;
        self.clients[from].engine.handle_tun(now, packet);
        self.drain(from);
    }

    /// `lanrage ping`: client `from` pings its peer called `name` now (its
    /// datagram leaves at once, like every other output).
    pub fn ping(&mut self, from: usize, name: &str) -> Option<u64> {
        let now = self.now;
        let id = self.clients[from].engine.ping(now, name);
        self.drain(from);
        id
    }

    /// Packets client `c` received whose payload starts with `prefix`.
    pub fn received_with(&self, c: usize, prefix: &[u8]) -> Vec<(Instant, Vec<u8>)> {
        self.clients[c]
            .received
            .iter()
            .filter(|(_, p)| p.get(28..).is_some_and(|d| d.starts_with(prefix)))
            .cloned()
            .collect()
    }

    /// `relay NAME` or `direct ADDR`, as `lanrage status` prints it.
    pub fn path_of(&self, c: usize, peer: usize) -> Option<String> {
        let name = &self.clients[peer].name;
        self.clients[c]
            .engine
            .status(self.now)
            .peers
            .into_iter()
            .find(|p| &p.name == name)
            .and_then(|p| p.path)
            .map(|path| path.to_string())
    }

    pub fn client_addr(&self, c: usize) -> SocketAddr {
        self.clients[c].addr
    }
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Client(usize),
    Relay(usize),
}

fn new_router(secret: [u8; 32], epoch: u64, now: Instant) -> Router {
    Router::new(
        RouterConfig::default(),
        StaticSecret::from(secret),
        epoch,
        [epoch as u8; 32],
        now,
    )
}

/// An IPv4/UDP packet `src` → `dst` with `payload`, as a game would send it.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    ipv4_udp_ports(src, 4445, dst, 4445, payload)
}

/// The same, between these ports.
pub fn ipv4_udp_ports(
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder =
        etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(src_port, dst_port);
    let mut packet = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut packet, payload)
        .expect("a small packet always builds");
    packet
}
