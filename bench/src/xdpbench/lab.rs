//! The veth topology every case runs on, and what the benchmark pins where.
//!
//! `lanrage_tests::netns::Switched` with three hosts on one bridge:
//!
//! ```text
//!   relay 10.77.0.1       a 10.77.0.2 (senders)     b 10.77.0.3 (receivers)
//!        eth0                   eth0                       eth0
//!         |                      |                          |
//!        p0 -------------------- p1 ----------------------- p2   switch: br0
//! ```
//!
//! On top of the lab: permanent neighbour entries between the three hosts
//! (no ARP during a run; `bpf_fib_lookup` finds B's MAC without the relay ever
//! having talked to B), `net.ipv4.conf.eth0.forwarding=1` in the relay
//! namespace (else `bpf_fib_lookup` answers `FWD_DISABLED`, docs/xdp.md), and,
//! with steering on, RPS masks that put the whole forwarding path on one CPU:
//!
//! - `p1` (A's frames entering the switch) → the forwarding CPU. Everything
//!   after A's `veth_xmit` then runs in that CPU's softirq: the bridge, the
//!   relay's `eth0` receive (native XDP: its veth NAPI is scheduled there;
//!   generic XDP and the socket path: the backlog is processed there), XDP_TX
//!   into `p0` and the bridge again.
//! - B's `eth0` → the generator CPU, so delivering to B's sockets is not
//!   charged to the forwarding CPU in any case.
//!
//! The userspace relay process is pinned to the forwarding CPU (`taskset`),
//! the generator (sender and receiver threads) to the other one.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use lanrage_ebpf::{XdpFastPath, XdpLoadConfig, XdpMode};
use lanrage_tests::netns::{Host, Netns, Switched};

/// The relay's UDP port on 10.77.0.1.
pub const RELAY_PORT: u16 = 51820;

pub struct Lab {
    pub lab: Switched,
}

impl Lab {
    /// `bridge_nf_off`: stop the switch's bridge from running bridged IPv4
    /// frames through netfilter (`net.bridge.bridge-nf-call-*`, on by default
    /// here because `br_netfilter` is built in). The switch stands for the
    /// network, not the relay host, but its work lands on the forwarding CPU.
    pub fn new(steer: Option<(usize, usize)>, bridge_nf_off: bool) -> Result<Self> {
        let lab = Switched::new(&["relay", "a", "b"])?;
        let this = Self { lab };
        if bridge_nf_off {
            for family in ["iptables", "ip6tables", "arptables"] {
                this.lab
                    .switch
                    .sysctl(&format!("net.bridge.bridge-nf-call-{family}"), "0")?;
            }
        }
        let macs = this
            .lab
            .hosts
            .iter()
            .map(|h| Ok((h.addr, mac_of(&h.ns, &h.iface)?)))
            .collect::<Result<Vec<(Ipv4Addr, String)>>>()?;
        for host in &this.lab.hosts {
            for (addr, mac) in &macs {
                if *addr != host.addr {
                    host.ns.ip(&format!(
                        "neigh replace {addr} lladdr {mac} dev {} nud permanent",
                        host.iface
                    ))?;
                }
            }
        }
        let relay = this.relay();
        relay
            .ns
            .sysctl(&format!("net.ipv4.conf.{}.forwarding", relay.iface), "1")?;
        if let Some((gen_cpu, fwd_cpu)) = steer {
            let a_port = this.a().port.clone();
            set_rps(&this.lab.switch, &a_port, 1 << fwd_cpu)?;
            let b = this.b();
            set_rps(&b.ns, &b.iface, 1 << gen_cpu)?;
        }
        Ok(this)
    }

    pub fn relay(&self) -> &Host {
        self.lab.host("relay")
    }
    pub fn a(&self) -> &Host {
        self.lab.host("a")
    }
    pub fn b(&self) -> &Host {
        self.lab.host("b")
    }

    /// The LANrage XDP program on the relay's `eth0` in `mode` (for native
    /// mode also on the bridge port `p0` with no routes, which passes
    /// everything: native XDP_TX on veth needs an XDP program on the peer).
    /// Detached when the returned values drop.
    pub fn attach_xdp(
        &self,
        mode: XdpMode,
        max_routes: u32,
    ) -> Result<(XdpFastPath, Option<XdpFastPath>)> {
        let relay = self.relay();
        let relay_ep = std::net::SocketAddrV4::new(relay.addr, RELAY_PORT);
        let peer_pass = if mode == XdpMode::Native {
            let port = relay.port.clone();
            Some(self.lab.switch.run(move || -> Result<XdpFastPath> {
                let mut pass = XdpFastPath::load(XdpLoadConfig {
                    max_routes: 1,
                    relay: relay_ep,
                    pin_path: None,
                })?;
                pass.attach(&port, XdpMode::Native)?;
                Ok(pass)
            })??)
        } else {
            None
        };
        let iface = relay.iface.clone();
        let xdp = relay.ns.run(move || -> Result<XdpFastPath> {
            let mut xdp = XdpFastPath::load(XdpLoadConfig {
                max_routes,
                relay: relay_ep,
                pin_path: None,
            })?;
            xdp.attach(&iface, mode)?;
            Ok(xdp)
        })??;
        Ok((xdp, peer_pass))
    }
}

/// The MAC address of `iface` in `ns` (`ip -o link show`).
fn mac_of(ns: &Netns, iface: &str) -> Result<String> {
    let out = ns
        .command("ip")?
        .args(["-o", "link", "show", "dev", iface])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC for {iface} in {}: {text}", ns.name()))
}

/// Receive packet steering for `dev`'s (single) rx queue in `ns`. sysfs shows
/// the devices of the namespace it was mounted in, so this goes through
/// `ip netns exec`, which mounts a fresh sysfs for the command.
fn set_rps(ns: &Netns, dev: &str, mask: u32) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sh", "-c"])
        .arg(format!(
            "echo {mask:x} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"
        ))
        .output()
        .context("ip netns exec")?;
    if !out.status.success() {
        bail!(
            "setting rps_cpus of {dev} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pins the calling thread (and threads it spawns later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write only into it,
    // and sched_setaffinity(0, ...) reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// One CPU's idle and softirq time from `/proc/stat` (clock ticks), and when
/// it was read.
///
/// Busy time is wall time minus idle. With a tickless kernel, idle time is
/// measured from timestamps at idle entry and exit (and an interrupt ends an
/// idle period), so it is exact even when a CPU wakes only to run softirqs;
/// the busy categories (user, system, softirq) are sampled at ticks, and a CPU
/// that idles between bursts of softirq work may never be ticked while busy.
/// So "busy" is wall − idle, and the softirq share is a tick-sampled estimate
/// (this kernel has no `CONFIG_IRQ_TIME_ACCOUNTING`).
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    pub at: std::time::Instant,
    pub idle: u64,
    pub softirq: u64,
}

pub fn cpu_times(cpu: usize) -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let at = std::time::Instant::now();
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    Ok(CpuTimes {
        at,
        idle: v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0),
        softirq: v.get(6).copied().unwrap_or(0),
    })
}

/// Busy and softirq fractions of one CPU between two readings.
pub fn busy_between(before: CpuTimes, after: CpuTimes) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = (after.at.duration_since(before.at).as_secs_f64() * hz).max(1e-9);
    let idle = after.idle.saturating_sub(before.idle) as f64;
    let soft = after.softirq.saturating_sub(before.softirq) as f64;
    (
        (1.0 - idle / ticks).clamp(0.0, 1.0),
        (soft / ticks).clamp(0.0, 1.0),
    )
}

/// Where packets were dropped, as counters to difference around a trial.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Drops {
    /// `/proc/net/softnet_stat` "dropped" (backlog full, e.g. an RPS target
    /// CPU that falls behind) on the forwarding and the generator CPU.
    pub backlog_fwd_cpu: u64,
    pub backlog_gen_cpu: u64,
    /// UDP `RcvbufErrors` in the relay's namespace (the userspace relay's
    /// socket was full) and in B's (the receiver's sockets were full).
    pub relay_rcvbuf: u64,
    pub b_rcvbuf: u64,
    /// UDP `SndbufErrors` in the relay's namespace.
    pub relay_sndbuf: u64,
}

impl Drops {
    pub fn read(lab: &Lab, gen_cpu: usize, fwd_cpu: usize) -> Result<Self> {
        let softnet = std::fs::read_to_string("/proc/net/softnet_stat")?;
        let dropped = |cpu: usize| {
            softnet
                .lines()
                .nth(cpu)
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| u64::from_str_radix(x, 16).ok())
                .unwrap_or(0)
        };
        let relay = udp_stats(&lab.relay().ns)?;
        let b = udp_stats(&lab.b().ns)?;
        Ok(Self {
            backlog_fwd_cpu: dropped(fwd_cpu),
            backlog_gen_cpu: dropped(gen_cpu),
            relay_rcvbuf: relay.0,
            b_rcvbuf: b.0,
            relay_sndbuf: relay.1,
        })
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            backlog_fwd_cpu: self.backlog_fwd_cpu.wrapping_sub(before.backlog_fwd_cpu),
            backlog_gen_cpu: self.backlog_gen_cpu.wrapping_sub(before.backlog_gen_cpu),
            relay_rcvbuf: self.relay_rcvbuf.wrapping_sub(before.relay_rcvbuf),
            b_rcvbuf: self.b_rcvbuf.wrapping_sub(before.b_rcvbuf),
            relay_sndbuf: self.relay_sndbuf.wrapping_sub(before.relay_sndbuf),
        }
    }
}

/// `(RcvbufErrors, SndbufErrors)` of UDP in `ns` (`/proc/thread-self/net`
/// is the reading thread's namespace; `/proc/self/net` would be the
/// process's).
fn udp_stats(ns: &Netns) -> Result<(u64, u64)> {
    let snmp = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in snmp of {}", ns.name());
    };
    let field = |name: &str| {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("RcvbufErrors"), field("SndbufErrors")))
}

/// An nftables `netdev` ingress rule on B's `eth0` that counts and drops
/// the transport packets the relay forwards to B (WireGuard type 4 from
/// 10.77.0.1:51820), before IP and UDP: a sink far cheaper than B's sockets,
/// so the generator CPU only sends. Handshakes and control still pass.
/// Removed on drop.
pub struct Sink<'a> {
    ns: &'a Netns,
}

impl<'a> Sink<'a> {
    pub fn install(lab: &'a Lab) -> Result<Self> {
        let b = lab.b();
        let rules = format!(
            "table netdev lrgsink {{\n\
               chain in {{\n\
                 type filter hook ingress device \"{}\" priority 0;\n\
                 ip saddr {} udp sport {RELAY_PORT} @th,64,8 4 counter drop\n\
               }}\n\
             }}\n",
            b.iface,
            lab.relay().addr
        );
        nft(&b.ns, &["-f", "-"], Some(&rules))
            .context("installing the sink (apt-get install nftables)")?;
        Ok(Self { ns: &b.ns })
    }

    /// The rule's counter so far: `(skbs, bytes)` (bytes from the IPv4
    /// header on).
    pub fn count(&self) -> Result<(u64, u64)> {
        let out = nft(self.ns, &["list", "chain", "netdev", "lrgsink", "in"], None)?;
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(5)
            .find(|w| w[0] == "counter" && w[1] == "packets" && w[3] == "bytes")
            .and_then(|w| Some((w[2].parse().ok()?, w[4].parse().ok()?)))
            .with_context(|| format!("no counter in {out}"))
    }

    /// Datagrams of `udp_payload` bytes in `(skbs, bytes)` counted by
    /// [`Sink::count`]. The userspace relay sends with UDP GSO, and veth
    /// carries a GSO skb unsegmented up to B's ingress, where it is one
    /// "packet" of one IPv4+UDP header and many payloads; so count by bytes.
    pub fn datagrams((skbs, bytes): (u64, u64), udp_payload: usize) -> u64 {
        bytes.saturating_sub(28 * skbs) / udp_payload.max(1) as u64
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        if let Err(e) = nft(self.ns, &["delete", "table", "netdev", "lrgsink"], None) {
            eprintln!("warning: removing the sink: {e:#}");
        }
    }
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = ns
        .command("nft")?
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
