//! The NAT lab (issue 11): a small internet in network namespaces with a
//! relay host and two home routers that NAT like real ones, each with a
//! gamer PC behind it, for NAT-traversal tests. `docs/nat-lab.md` has the
//! diagram, the nftables rules of each [`NatKind`] and how to use it.
//!
//! ```text
//!            relay  203.0.113.10 (primary), 203.0.113.11 (alternate)
//!              |
//!   internet   203.0.113.1 / 198.51.100.1   (a plain router: no NAT, no filter)
//!          /                         \
//!   router A  wan0 198.51.100.10      router B  wan0 198.51.100.20
//!   lan0 192.168.1.1                  lan0 192.168.2.1
//!      |                                 |
//!   PC A  192.168.1.10                PC B  192.168.2.10
//! ```
//!
//! With [`NatLabBuilder::same_lan`] both PCs sit behind router A (PC B is
//! 192.168.1.11) and there is no router B.
//!
//! The lab is IPv4 only (IPv6 is disabled in its namespaces, so no router
//! solicitation or neighbour discovery shows up in a router's counters).
//! Every namespace is a [`Netns`]: unique per run (`lrg<pid>-<n>-<role>`),
//! deleted on drop, also when a test panics. The addresses are TEST-NET
//! ranges (RFC 5737) and private ranges, and exist only inside the lab's
//! namespaces; nothing is sent anywhere else.
//!
//! [`Reflector`] is a small STUN-like UDP service for the relay host: it
//! tells a PC the source address it saw, and answers from another address
//! or port on request (RFC 5780's CHANGE-REQUEST), which is how the tests in
//! `tests/tests/nat_lab.rs` prove each router's mapping and filtering.
//!
//! Needs root, iproute2's `ip` and nftables' `nft` ([`available`]).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::{self, Netns};

/// The internet router's address on the home routers' segment (their
/// default gateway).
pub const ISP_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The internet router's address on the relay's segment.
pub const RELAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The relay host's primary address.
pub const RELAY_PRIMARY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The relay host's alternate address (RFC 5780 §3: a second IP address
/// for telling address-dependent from endpoint-independent behaviour).
pub const RELAY_ALTERNATE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// Prefix length of the internet segments and the home LANs.
pub const PREFIX: u8 = 24;
/// How many times [`NatLab::change_wan_address`] may be called per router.
pub const MAX_WAN_CHANGES: u8 = 10;
/// The interface names inside a home router, as in `docs/nat-lab.md`.
pub const WAN_IFACE: &str = "wan0";
pub const LAN_IFACE: &str = "lan0";

/// Whether the NAT lab can run here: `Err` names what is missing (a test
/// passes it to `lanrage_test_support::privileged::or_skip`).
pub fn available() -> Result<(), String> {
    netns::lab_available()?;
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`nft --version` failed: {}", out.status)),
        Err(e) => Err(format!(
            "nftables' `nft` not runnable ({e}); apt-get install nftables"
        )),
    }
}

/// The two sides of the lab: each has a PC and, unless the lab is
/// same-LAN, its own home router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    fn letter(self) -> char {
        match self {
            Side::A => 'A',
            Side::B => 'B',
        }
    }
}

/// How a home router translates and filters UDP, in the classic names; the
/// RFC 4787 behaviours are [`NatKind::mapping`] and [`NatKind::filtering`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering: once a PC has sent from
    /// a port, anyone may send to its external port.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: only IP
    /// addresses the PC has sent to may reach it, from any port.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering:
    /// only the exact addresses and ports the PC has sent to may reach it.
    /// Plain Linux masquerade, and the most common home router.
    PortRestrictedCone,
    /// A new external port per destination (address-and-port-dependent
    /// mapping), address-and-port-dependent filtering.
    Symmetric,
}

/// RFC 4787 §4.1: how external ports are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// The same external address and port for every destination.
    EndpointIndependent,
    /// A different external port for each destination address and port.
    AddressAndPortDependent,
}

/// RFC 4787 §5: which inbound packets reach a mapped port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// From anywhere.
    EndpointIndependent,
    /// From IP addresses the PC has sent to.
    AddressDependent,
    /// From the addresses and ports the PC has sent to.
    AddressAndPortDependent,
}

impl NatKind {
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ];

    pub fn mapping(self) -> Mapping {
        match self {
            NatKind::Symmetric => Mapping::AddressAndPortDependent,
            _ => Mapping::EndpointIndependent,
        }
    }

    pub fn filtering(self) -> Filtering {
        match self {
            NatKind::FullCone => Filtering::EndpointIndependent,
            NatKind::RestrictedCone => Filtering::AddressDependent,
            NatKind::PortRestrictedCone | NatKind::Symmetric => Filtering::AddressAndPortDependent,
        }
    }

    /// Whether two PCs behind routers of these kinds (both with their
    /// inbound firewall) can reach each other directly by plain hole
    /// punching: each sends to the other's address as a reflector saw it,
    /// and answers whatever address it then hears the other from (RFC 8445
    /// §7.3.1.3's peer-reflexive address), without port prediction. Cone
    /// pairs always can; a symmetric side can reach a side whose filter
    /// ignores ports, which learns the symmetric side's real port from its
    /// first packet; symmetric against port-filtering cannot. The lab's
    /// tests prove this table with plain UDP (`tests/tests/nat_lab.rs`).
    pub fn direct_possible(a: NatKind, b: NatKind) -> bool {
        let opens = |k: NatKind| k.filtering() != Filtering::AddressAndPortDependent;
        match (a.mapping(), b.mapping()) {
            (Mapping::EndpointIndependent, Mapping::EndpointIndependent) => true,
            (Mapping::AddressAndPortDependent, Mapping::AddressAndPortDependent) => false,
            (Mapping::AddressAndPortDependent, _) => opens(b),
            (_, Mapping::AddressAndPortDependent) => opens(a),
        }
    }
}

/// One home router's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterOptions {
    /// Default: [`NatKind::PortRestrictedCone`].
    pub nat: NatKind,
    /// Drop unsolicited inbound packets from the WAN (`iifname "wan0" ct
    /// state new drop`), as real routers do. Default: true. Without it, a
    /// peer's first punch creates an UNREPLIED conntrack entry on this
    /// router, the PC's own mapping towards that peer collides with it and
    /// masquerade picks another port (shared/LAB.md): "a router without an
    /// inbound firewall".
    pub inbound_firewall: bool,
    /// How a [`NatKind::Symmetric`] router picks each new mapping's port.
    /// Default: [`PortAllocation::Random`].
    pub ports: PortAllocation,
}

/// How a symmetric router allocates external ports, one per new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAllocation {
    /// At random from 1024–65535 (`masquerade random`): nothing to
    /// predict; birthday probing finds a pair about 70 % of the time.
    Random,
    /// At random from `lo..=hi` (`masquerade to :lo-hi random`), as some
    /// carrier-grade NATs do with per-subscriber port blocks: a small
    /// range makes birthday probing succeed every time, for tests.
    RandomIn(u16, u16),
    /// In sequence from 20000, wrapping after 1024 (`masquerade to :numgen
    /// inc mod 1024 map { 0 : 20000, … }`: nftables evaluates a NAT rule
    /// once per new flow, so each flow takes the next port): what port
    /// prediction predicts.
    Sequential,
}

/// The sequential allocator's first port and how many it cycles through.
const SEQUENTIAL_BASE: u16 = 20000;
const SEQUENTIAL_PORTS: u16 = 1024;

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            nat: NatKind::PortRestrictedCone,
            inbound_firewall: true,
            ports: PortAllocation::Random,
        }
    }
}

/// Builds a [`NatLab`]; see [`NatLab::builder`].
#[derive(Clone, Debug, Default)]
pub struct NatLabBuilder {
    routers: [RouterOptions; 2],
    same_lan: bool,
    /// More PCs, each behind the router of its side (`extra_pc`).
    extra_pcs: Vec<Side>,
    udp_timeout: Option<Duration>,
}

impl NatLabBuilder {
    /// The NAT behaviour of `side`'s router.
    pub fn nat(mut self, side: Side, kind: NatKind) -> Self {
        self.routers[side.index()].nat = kind;
        self
    }

    /// How `side`'s router, if symmetric, allocates ports.
    pub fn ports(mut self, side: Side, ports: PortAllocation) -> Self {
        self.routers[side.index()].ports = ports;
        self
    }

    /// Whether `side`'s router drops unsolicited inbound WAN packets.
    pub fn inbound_firewall(mut self, side: Side, on: bool) -> Self {
        self.routers[side.index()].inbound_firewall = on;
        self
    }

    /// One more PC behind `side`'s router, on the same LAN as that side's
    /// PC ([`NatLab::pcs`] lists it after the two).
    pub fn extra_pc(mut self, side: Side) -> Self {
        self.extra_pcs.push(side);
        self
    }

    /// Both PCs behind router A, on one LAN (router B's options are then
    /// unused).
    pub fn same_lan(mut self) -> Self {
        self.same_lan = true;
        self
    }

    /// The routers' conntrack UDP timeouts (`nf_conntrack_udp_timeout` and
    /// `_stream`, whole seconds, at least 1), and with them the lifetime of
    /// the cone routers' learned mappings. Default: the kernel's (30 s for
    /// one-way flows, 120 s once answered; mappings 120 s). Short values
    /// make mapping-expiry tests quick.
    pub fn udp_timeout(mut self, timeout: Duration) -> Self {
        self.udp_timeout = Some(timeout);
        self
    }

    /// Creates the namespaces, links, addresses, routes and rulesets (about
    /// half a second, mostly `ip` and `nft` processes). On error, whatever
    /// was created is deleted again.
    pub fn build(self) -> Result<NatLab> {
        NatLab::build(self)
    }
}

/// The relay host on the internet, with its two addresses.
#[derive(Debug)]
pub struct RelayHost {
    pub ns: Netns,
    pub primary: Ipv4Addr,
    pub alternate: Ipv4Addr,
}

impl RelayHost {
    /// A UDP socket on `addr:port` inside the relay namespace.
    pub fn udp_socket(&self, addr: Ipv4Addr, port: u16) -> Result<UdpSocket> {
        self.ns.udp_socket(SocketAddr::from((addr, port)))
    }
}

/// A home router: WAN interface `wan0` on the internet, LAN bridge `lan0`.
#[derive(Debug)]
pub struct HomeRouter {
    pub ns: Netns,
    /// The router's address on its LAN (the PCs' default gateway).
    pub lan_gateway: Ipv4Addr,
    pub options: RouterOptions,
    wan: Ipv4Addr,
    /// 0 for router A, 1 for router B (address plan).
    index: u8,
    wan_changes: u8,
    mapping_timeout_secs: u64,
}

impl HomeRouter {
    /// The router's current WAN address (changes with
    /// [`NatLab::change_wan_address`]).
    pub fn wan_addr(&self) -> Ipv4Addr {
        self.wan
    }

    /// Packets the inbound firewall has dropped so far (always 0 without
    /// it): unsolicited packets from the WAN, counted by the nft counter
    /// `inet lanrage_fw unsolicited`.
    pub fn unsolicited_drops(&self) -> Result<u64> {
        if !self.options.inbound_firewall {
            return Ok(0);
        }
        let out = self.nft_output(&["list", "counter", "inet", "lanrage_fw", "unsolicited"])?;
        // "... packets 3 bytes 93 ..."
        let mut words = out.split_whitespace();
        while let Some(word) = words.next() {
            if word == "packets" {
                let n = words
                    .next()
                    .context("nft counter output ends after `packets`")?;
                return n
                    .parse()
                    .with_context(|| format!("nft counter packets {n:?}"));
            }
        }
        bail!("no `packets` in nft counter output: {out}")
    }

    /// How many conntrack entries the router holds
    /// (`net.netfilter.nf_conntrack_count` of its namespace).
    pub fn conntrack_count(&self) -> Result<u64> {
        let text = self
            .ns
            .run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))?
            .context("reading nf_conntrack_count")?;
        text.trim()
            .parse()
            .with_context(|| format!("nf_conntrack_count {text:?}"))
    }

    /// Deletes every IPv4 conntrack entry of this router (ctnetlink's
    /// flush, what `conntrack -F` does), so all mappings start afresh.
    pub fn flush_conntrack(&self) -> Result<()> {
        self.ns
            .run(flush_ipv4_conntrack)?
            .with_context(|| format!("flushing conntrack in {}", self.ns.name()))
    }

    /// Runs `nft` in the router's namespace with `args` and returns stdout.
    pub fn nft_output(&self, args: &[&str]) -> Result<String> {
        let out = self
            .ns
            .command("nft")?
            .args(args)
            .output()
            .context("running nft (apt-get install nftables)")?;
        if !out.status.success() {
            bail!(
                "nft {} in {} failed: {}",
                args.join(" "),
                self.ns.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn load_ruleset(&self) -> Result<()> {
        let rules = ruleset(self.options, self.mapping_timeout_secs);
        self.ns
            .nft(&rules)
            .with_context(|| format!("loading the {:?} ruleset", self.options.nat))
    }
}

/// A gamer PC on a home LAN.
#[derive(Debug)]
pub struct Pc {
    pub ns: Netns,
    /// Its LAN address (interface `eth0`).
    pub addr: Ipv4Addr,
    /// Its default gateway, the home router's LAN address.
    pub gateway: Ipv4Addr,
}

impl Pc {
    /// A UDP socket on the PC's LAN address inside its namespace.
    pub fn udp_socket(&self, port: u16) -> Result<UdpSocket> {
        self.ns.udp_socket(SocketAddr::from((self.addr, port)))
    }
}

/// The lab: see the module docs. Accessors hand out the namespaces, so a
/// test can run anything in them (`pc(side).ns.command(..)`,
/// `relay().ns.udp_socket(..)`).
///
/// Fields drop in declaration order; deleting a namespace also removes the
/// veths it held, so cleanup doesn't depend on the order.
#[derive(Debug)]
pub struct NatLab {
    pcs: Vec<Pc>,
    routers: Vec<HomeRouter>,
    relay: RelayHost,
    internet: Netns,
}

impl NatLab {
    /// Both routers port-restricted cone with their inbound firewall, one
    /// PC each, until told otherwise.
    pub fn builder() -> NatLabBuilder {
        NatLabBuilder::default()
    }

    /// The PC of `side`.
    pub fn pc(&self, side: Side) -> &Pc {
        &self.pcs[side.index()]
    }

    /// Every PC: A's, B's, then the extra ones in the order added.
    pub fn pcs(&self) -> &[Pc] {
        &self.pcs
    }

    /// The router in front of `side`'s PC (router A for both sides in a
    /// same-LAN lab).
    pub fn router(&self, side: Side) -> &HomeRouter {
        &self.routers[self.router_index(side)]
    }

    pub fn relay(&self) -> &RelayHost {
        &self.relay
    }

    /// The internet router's namespace (no NAT, no filter).
    pub fn internet(&self) -> &Netns {
        &self.internet
    }

    pub fn is_same_lan(&self) -> bool {
        self.routers.len() == 1
    }

    /// The names of every namespace of the lab.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names = vec![
            self.internet.name().to_owned(),
            self.relay.ns.name().to_owned(),
        ];
        names.extend(self.routers.iter().map(|r| r.ns.name().to_owned()));
        names.extend(self.pcs.iter().map(|p| p.ns.name().to_owned()));
        names
    }

    /// Gives the router in front of `side`'s PC a new WAN address mid-session,
    /// as when a DSL line reconnects or a DHCP lease changes, and returns it.
    ///
    /// What happens, in order: the old address is removed from `wan0` (the
    /// kernel's masquerade then forgets every mapping it made with it), the
    /// new one (198.51.100.110 + 10 × router + n) is added and the default
    /// route restored, the cone routers' learned mappings (nft map/set) are
    /// flushed, and so is the whole conntrack table, as after a router
    /// reconnect that starts clean: no stale entry (an inbound full-cone
    /// flow, an unreplied packet) keeps translating to the old address. The
    /// PC keeps its LAN address and sockets; its next packet gets a new
    /// mapping on the new address. At most [`MAX_WAN_CHANGES`] per router.
    pub fn change_wan_address(&mut self, side: Side) -> Result<Ipv4Addr> {
        let i = self.router_index(side);
        let router = &mut self.routers[i];
        ensure!(
            router.wan_changes < MAX_WAN_CHANGES,
            "router {} changed its WAN address {MAX_WAN_CHANGES} times already",
            side.letter()
        );
        let new = Ipv4Addr::new(198, 51, 100, 110 + 10 * router.index + router.wan_changes);
        let old = router.wan;
        router
            .ns
            .ip(&format!("addr del {old}/{PREFIX} dev {WAN_IFACE}"))?;
        router
            .ns
            .ip(&format!("addr add {new}/{PREFIX} dev {WAN_IFACE}"))?;
        router
            .ns
            .ip(&format!("route replace default via {ISP_GATEWAY}"))?;
        router.wan = new;
        router.wan_changes += 1;
        match router.options.nat {
            NatKind::FullCone => {
                router.nft_output(&["flush", "map", "ip", "lanrage_nat", "fullcone"])?;
            }
            NatKind::RestrictedCone => {
                router.nft_output(&["flush", "map", "ip", "lanrage_nat", "fullcone"])?;
                router.nft_output(&["flush", "set", "ip", "lanrage_nat", "restricted"])?;
            }
            NatKind::PortRestrictedCone | NatKind::Symmetric => {}
        }
        router.flush_conntrack()?;
        Ok(new)
    }

    fn router_index(&self, side: Side) -> usize {
        if self.is_same_lan() {
            0
        } else {
            side.index()
        }
    }

    fn build(options: NatLabBuilder) -> Result<Self> {
        let internet = ipv4_only(Netns::new("inet")?)?;
        internet.sysctl("net.ipv4.ip_forward", "1")?;
        internet.ip("link add br0 type bridge")?;
        internet.ip(&format!("addr add {ISP_GATEWAY}/{PREFIX} dev br0"))?;
        internet.ip("link set br0 up")?;

        let relay = RelayHost {
            ns: ipv4_only(Netns::new("relay")?)?,
            primary: RELAY_PRIMARY,
            alternate: RELAY_ALTERNATE,
        };
        internet.ip(&format!(
            "link add relay0 type veth peer name eth0 netns {}",
            relay.ns.name()
        ))?;
        internet.ip(&format!("addr add {RELAY_GATEWAY}/{PREFIX} dev relay0"))?;
        internet.ip("link set relay0 up")?;
        relay
            .ns
            .ip(&format!("addr add {RELAY_PRIMARY}/{PREFIX} dev eth0"))?;
        relay
            .ns
            .ip(&format!("addr add {RELAY_ALTERNATE}/{PREFIX} dev eth0"))?;
        relay.ns.ip("link set eth0 up")?;
        relay
            .ns
            .ip(&format!("route add default via {RELAY_GATEWAY}"))?;

        let mapping_timeout_secs = match options.udp_timeout {
            Some(t) => {
                ensure!(t.as_secs() >= 1, "udp_timeout must be at least 1 s");
                t.as_secs()
            }
            // The kernel's nf_conntrack_udp_timeout_stream default.
            None => 120,
        };
        let router_count = if options.same_lan { 1 } else { 2 };
        let mut routers = Vec::with_capacity(router_count);
        for (i, side) in Side::BOTH.iter().take(router_count).enumerate() {
            let index = i as u8;
            let ns = ipv4_only(Netns::new(&format!("rtr{}", side.letter()))?)?;
            let wan = Ipv4Addr::new(198, 51, 100, 10 + 10 * index);
            let lan_gateway = Ipv4Addr::new(192, 168, 1 + index, 1);
            let port = format!("isp{i}");
            internet.ip(&format!(
                "link add {port} type veth peer name {WAN_IFACE} netns {}",
                ns.name()
            ))?;
            internet.ip(&format!("link set {port} master br0 up"))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.ip(&format!("addr add {wan}/{PREFIX} dev {WAN_IFACE}"))?;
            ns.ip(&format!("link set {WAN_IFACE} up"))?;
            ns.ip(&format!("route add default via {ISP_GATEWAY}"))?;
            ns.ip(&format!("link add {LAN_IFACE} type bridge"))?;
            ns.ip(&format!("addr add {lan_gateway}/{PREFIX} dev {LAN_IFACE}"))?;
            ns.ip(&format!("link set {LAN_IFACE} up"))?;
            let router = HomeRouter {
                ns,
                lan_gateway,
                options: options.routers[i],
                wan,
                index,
                wan_changes: 0,
                mapping_timeout_secs,
            };
            router.load_ruleset()?;
            if let Some(t) = options.udp_timeout {
                let secs = t.as_secs().to_string();
                router
                    .ns
                    .sysctl("net.netfilter.nf_conntrack_udp_timeout", &secs)?;
                router
                    .ns
                    .sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", &secs)?;
            }
            routers.push(router);
        }

        let mut pcs = Vec::with_capacity(2 + options.extra_pcs.len());
        // (router, host number, namespace role) of every PC.
        let mut plan: Vec<(usize, u8, String)> = Side::BOTH
            .iter()
            .enumerate()
            .map(|(i, side)| {
                let (router, host) = if options.same_lan {
                    (0, 10 + i as u8)
                } else {
                    (i, 10)
                };
                (router, host, format!("pc{}", side.letter()))
            })
            .collect();
        for (n, side) in options.extra_pcs.iter().enumerate() {
            let router = if options.same_lan { 0 } else { side.index() };
            let host = 20 + n as u8;
            plan.push((router, host, format!("pc{}{n}", side.letter())));
        }
        for (i, (router, host, role)) in plan.into_iter().enumerate() {
            let router = &routers[router];
            let ns = ipv4_only(Netns::new(&role)?)?;
            let [a, b, c, _] = router.lan_gateway.octets();
            let addr = Ipv4Addr::new(a, b, c, host);
            let port = format!("lanp{i}");
            router.ns.ip(&format!(
                "link add {port} type veth peer name eth0 netns {}",
                ns.name()
            ))?;
            router
                .ns
                .ip(&format!("link set {port} master {LAN_IFACE} up"))?;
            ns.ip(&format!("addr add {addr}/{PREFIX} dev eth0"))?;
            ns.ip("link set eth0 up")?;
            ns.ip(&format!("route add default via {}", router.lan_gateway))?;
            pcs.push(Pc {
                ns,
                addr,
                gateway: router.lan_gateway,
            });
        }
        Ok(Self {
            pcs,
            routers,
            relay,
            internet,
        })
    }
}

/// The nftables ruleset of a home router (loaded with `nft -f -` in its
/// namespace). `mapping_timeout_secs` is how long a cone router remembers a
/// mapping after the PC's last outbound packet on it.
///
/// - Mapping: `masquerade` keeps the PC's source port when it is free and
///   so gives every destination the same external port (endpoint-
///   independent, best effort); `masquerade random` picks a new port per
///   destination (symmetric).
/// - Filtering: conntrack alone lets in only replies from the exact address
///   and port sent to. Full cone adds a map learned after NAT (priority
///   srcnat + 10) from every outbound UDP packet, external port → PC
///   address and port, and DNATs new inbound flows to a mapped port through
///   it; restricted cone also learns the destination IP per external port
///   and DNATs only packets from such an IP.
/// - Inbound firewall: new flows from the WAN that no DNAT claimed are
///   dropped and counted (`unsolicited`).
pub fn ruleset(options: RouterOptions, mapping_timeout_secs: u64) -> String {
    let t = mapping_timeout_secs;
    let mut nat = String::from("table ip lanrage_nat {\n");
    let cone_map = matches!(options.nat, NatKind::FullCone | NatKind::RestrictedCone);
    if cone_map {
        nat.push_str(&format!(
            "  map fullcone {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout {t}s; }}\n"
        ));
    }
    if options.nat == NatKind::RestrictedCone {
        nat.push_str(&format!(
            "  set restricted {{ type inet_service . ipv4_addr; flags dynamic,timeout; timeout {t}s; }}\n"
        ));
    }
    nat.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n",
    );
    match options.nat {
        NatKind::FullCone => nat.push_str(&format!(
            "    iifname \"{WAN_IFACE}\" dnat ip to udp dport map @fullcone\n"
        )),
        NatKind::RestrictedCone => nat.push_str(&format!(
            "    iifname \"{WAN_IFACE}\" udp dport . ip saddr @restricted dnat ip to udp dport map @fullcone\n"
        )),
        NatKind::PortRestrictedCone | NatKind::Symmetric => {}
    }
    nat.push_str("  }\n");
    let masquerade = match (options.nat, options.ports) {
        (NatKind::Symmetric, PortAllocation::Random) => "masquerade random".to_owned(),
        (NatKind::Symmetric, PortAllocation::RandomIn(lo, hi)) => {
            format!("meta l4proto udp masquerade to :{lo}-{hi} random")
        }
        (NatKind::Symmetric, PortAllocation::Sequential) => {
            // Through a map: a bare `numgen` result lands in the port in
            // host byte order (20000, 20001 become 8270, 8526).
            let entries: Vec<String> = (0..SEQUENTIAL_PORTS)
                .map(|i| format!("{i} : {}", SEQUENTIAL_BASE + i))
                .collect();
            format!(
                "meta l4proto udp masquerade to :numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}",
                entries.join(", ")
            )
        }
        _ => "masquerade".to_owned(),
    };
    nat.push_str(&format!(
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{WAN_IFACE}\" {masquerade}\n  }}\n"
    ));
    if cone_map {
        // After masquerade (srcnat = 100): `udp sport` is the external port.
        nat.push_str(&format!(
            "  chain learn {{\n    type filter hook postrouting priority srcnat + 10; policy accept;\n    oifname \"{WAN_IFACE}\" meta l4proto udp ct direction original ct status snat update @fullcone {{ udp sport : ct original ip saddr . ct original proto-src }}\n"
        ));
        if options.nat == NatKind::RestrictedCone {
            nat.push_str(&format!(
                "    oifname \"{WAN_IFACE}\" meta l4proto udp ct direction original ct status snat update @restricted {{ udp sport . ip daddr }}\n"
            ));
        }
        nat.push_str("  }\n");
    }
    nat.push_str("}\n");
    if options.inbound_firewall {
        // Dropped before conntrack confirms the flow, so an unsolicited
        // packet leaves no entry behind (shared/LAB.md's gotcha).
        nat.push_str(&format!(
            "table inet lanrage_fw {{\n  counter unsolicited {{ }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"{WAN_IFACE}\" ct state new counter name \"unsolicited\" drop\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{WAN_IFACE}\" ct state new ct status dnat accept\n    iifname \"{WAN_IFACE}\" ct state new counter name \"unsolicited\" drop\n  }}\n}}\n"
        ));
    }
    nat
}

/// The reflector's four sockets: the relay host's two addresses, each on
/// two ports (RFC 5780 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// primary:port
    Primary,
    /// primary:port+1
    PrimaryOtherPort,
    /// alternate:port
    Alternate,
    /// alternate:port+1
    AlternateOtherPort,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Primary,
        Endpoint::PrimaryOtherPort,
        Endpoint::Alternate,
        Endpoint::AlternateOtherPort,
    ];

    fn index(self) -> usize {
        match self {
            Endpoint::Primary => 0,
            Endpoint::PrimaryOtherPort => 1,
            Endpoint::Alternate => 2,
            Endpoint::AlternateOtherPort => 3,
        }
    }
}

/// How many requests [`Reflector::mapped_address`] sends before it gives up.
pub const MAPPING_REQUESTS: usize = 8;

/// The next datagram on `socket` within `wait` (its length in `buf` and its
/// source), or `None` when none came. A read that a signal or a stop and
/// continue interrupted (EINTR) is retried: signal(7) says socket reads
/// with a timeout are never restarted, and the lab's tests did see such
/// EINTRs on a busy machine.
pub fn recv_within(
    socket: &UdpSocket,
    wait: Duration,
    buf: &mut [u8],
) -> Result<Option<(usize, SocketAddr)>> {
    let deadline = Instant::now() + wait;
    // Bounded by the deadline, and by a count of interruptions.
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(buf) {
            Ok(got) => return Ok(Some(got)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// How long a [`Reflector`] runs at most.
pub const REFLECTOR_LIFETIME: Duration = Duration::from_secs(20 * 60);

/// A STUN-like UDP reflector on the relay host. Each request is one text
/// datagram and gets one answer, `seen <source ip:port> <nonce>`:
///
/// - `map <nonce>`: answered from the socket that received it;
/// - `from <0-3> <nonce>`: answered from that [`Endpoint`]'s socket
///   instead (RFC 5780 §7.2 CHANGE-REQUEST), to see which sources the PC's
///   router lets in.
///
/// Anything else is counted ([`Reflector::ignored`]) and not answered.
/// Bounded: stops when dropped or after [`REFLECTOR_LIFETIME`]. The client
/// side ([`Reflector::mapped_address`], [`Reflector::reply_from`]) takes a
/// socket the test opened in a PC's namespace.
pub struct Reflector {
    addrs: [SocketAddr; 4],
    nonce: AtomicU64,
    ignored: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    /// Listens on primary:`port`, primary:`port+1`, alternate:`port` and
    /// alternate:`port+1` of `relay`.
    pub fn start(relay: &RelayHost, port: u16) -> Result<Self> {
        let other = port
            .checked_add(1)
            .context("the reflector needs port and port + 1")?;
        let addrs = [
            SocketAddr::from((relay.primary, port)),
            SocketAddr::from((relay.primary, other)),
            SocketAddr::from((relay.alternate, port)),
            SocketAddr::from((relay.alternate, other)),
        ];
        let mut sockets = Vec::with_capacity(4);
        for addr in addrs {
            let socket = relay.ns.udp_socket(addr)?;
            socket.set_nonblocking(true)?;
            sockets.push(socket);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ignored = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, ignored) = (Arc::clone(&stop), Arc::clone(&ignored));
            std::thread::spawn(move || reflect(&sockets, &stop, &ignored))
        };
        Ok(Self {
            addrs,
            nonce: AtomicU64::new(1),
            ignored,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self, endpoint: Endpoint) -> SocketAddr {
        self.addrs[endpoint.index()]
    }

    /// Datagrams that were no request.
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    /// The source address `socket`'s datagrams show at `endpoint` (its
    /// mapping there). Sends up to [`MAPPING_REQUESTS`], 250 ms apart.
    pub fn mapped_address(&self, socket: &UdpSocket, endpoint: Endpoint) -> Result<SocketAddr> {
        let to = self.addr(endpoint);
        let started = Instant::now();
        for _ in 0..MAPPING_REQUESTS {
            let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
            socket.send_to(format!("map {nonce}").as_bytes(), to)?;
            if let Some((_, seen)) = await_answer(socket, nonce, Duration::from_millis(250))? {
                return Ok(seen);
            }
        }
        bail!(
            "no answer from the reflector at {to} to {} after {MAPPING_REQUESTS} requests in {:?}",
            socket.local_addr()?,
            started.elapsed()
        )
    }

    /// Sends one request to `via` asking for the answer from `from`, and
    /// waits up to `wait` for it: `Some(source)` of the answer that came
    /// through the PC's router, `None` if it was filtered.
    pub fn reply_from(
        &self,
        socket: &UdpSocket,
        via: Endpoint,
        from: Endpoint,
        wait: Duration,
    ) -> Result<Option<SocketAddr>> {
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        socket.send_to(
            format!("from {} {nonce}", from.index()).as_bytes(),
            self.addr(via),
        )?;
        Ok(await_answer(socket, nonce, wait)?.map(|(source, _)| source))
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits up to `wait` for the answer carrying `nonce`: (its source, the
/// address it reports). Other datagrams (late answers to earlier requests)
/// are skipped.
fn await_answer(
    socket: &UdpSocket,
    nonce: u64,
    wait: Duration,
) -> Result<Option<(SocketAddr, SocketAddr)>> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 128];
    // Bounded by the deadline and by a datagram count.
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((n, source)) = recv_within(socket, left, &mut buf)? else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let mut words = text.split_whitespace();
        if words.next() != Some("seen") {
            continue;
        }
        let (Some(seen), Some(got_nonce)) = (words.next(), words.next()) else {
            continue;
        };
        if got_nonce.parse::<u64>().ok() != Some(nonce) {
            continue;
        }
        let seen = seen
            .parse()
            .with_context(|| format!("reflector answer {text:?}"))?;
        return Ok(Some((source, seen)));
    }
    Ok(None)
}

fn reflect(sockets: &[UdpSocket], stop: &AtomicBool, ignored: &AtomicU64) {
    let started = Instant::now();
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 128];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < REFLECTOR_LIFETIME {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds, and the
        // sockets they name live as long as this function.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if ready <= 0 {
            continue;
        }
        for socket in sockets {
            // Bounded reads per socket per round.
            for _ in 0..64 {
                let Ok((n, source)) = socket.recv_from(&mut buf) else {
                    break;
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                let words: Vec<&str> = text.split_whitespace().collect();
                let (answer_from, nonce) = match words.as_slice() {
                    ["map", nonce] => (Some(socket), *nonce),
                    ["from", i, nonce] => {
                        (i.parse::<usize>().ok().and_then(|i| sockets.get(i)), *nonce)
                    }
                    _ => (None, ""),
                };
                let Some(answer_from) = answer_from else {
                    ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let _ = answer_from.send_to(format!("seen {source} {nonce}").as_bytes(), source);
            }
        }
    }
}

/// Turns IPv6 off in `ns` before it gets interfaces (new ones inherit
/// `default`), so the lab carries IPv4 only.
fn ipv4_only(ns: Netns) -> Result<Netns> {
    for key in [
        "net.ipv6.conf.default.disable_ipv6",
        "net.ipv6.conf.all.disable_ipv6",
    ] {
        // A kernel without IPv6 has no such file and needs nothing.
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        if std::path::Path::new(&path).exists() {
            ns.sysctl(key, "1")?;
        }
    }
    Ok(ns)
}

/// `IPCTNL_MSG_CT_DELETE` (linux/netfilter/nfnetlink_conntrack.h): with no
/// tuple attribute, ctnetlink flushes the table of the message's family.
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// Flushes the calling thread's namespace's IPv4 conntrack table through
/// ctnetlink and waits for the kernel's acknowledgement.
fn flush_ipv4_conntrack() -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct nlmsghdr (16 bytes) + struct nfgenmsg (4 bytes).
    let msg_type = ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_DELETE;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(&20u32.to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns
    msg.push(libc::AF_INET as u8);
    msg.push(libc::NFNETLINK_V0 as u8);
    msg.extend_from_slice(&0u16.to_be_bytes()); // res_id

    // SAFETY: sockaddr_nl is plain old data; all zeroes is valid.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` outlive the call, and the lengths passed
    // are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The kernel handles the request inside sendto, so its answer is
    // already queued: no waiting.
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let reply = &buf[..n as usize];
    // struct nlmsgerr: the header, then `int error` (0 = acknowledged).
    if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(std::io::Error::other(format!(
            "unexpected ctnetlink answer ({} bytes)",
            reply.len()
        )));
    }
    let error = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if error != 0 {
        return Err(std::io::Error::from_raw_os_error(-error));
    }
    Ok(())
}
