//! A network-namespace lab: namespaces as hosts, a bridge namespace as the
//! switch between them, and ways to act *inside* a namespace from the test
//! process (run a closure, open a socket, spawn a process).
//!
//! Every namespace gets a machine-wide unique name (`lrg<pid>-<n>-<role>`) and
//! is deleted when its [`Netns`] is dropped, also when the test panics, which
//! takes its interfaces (and the veth peers in other namespaces) with it.
//! Traffic stays inside the namespaces a test makes: the lab never touches the
//! host's own namespace beyond creating and deleting the named ones.
//!
//! Needs root (or `CAP_SYS_ADMIN` + `CAP_NET_ADMIN`) and iproute2's `ip`;
//! [`lab_available`] says whether this machine has them.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

/// Whether namespace labs can run here: `Err` names what is missing (a test
/// passes it to `lanrage_test_support::privileged::or_skip`).
pub fn lab_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("namespace labs need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`ip -V` failed: {}", out.status)),
        Err(e) => Err(format!("iproute2's `ip` not runnable: {e}")),
    }
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lrg<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("lrg{}-{n}-{role}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        // From here on, drop deletes it.
        let ns = Self { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <name> <args>`; `args` is split on whitespace.
    pub fn ip(&self, args: &str) -> Result<()> {
        let mut argv = vec!["-n", self.name.as_str()];
        argv.extend(args.split_whitespace());
        run_ip(&argv)
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns
    /// its result. Sockets `f` creates stay in this namespace wherever they
    /// are used afterwards; `/proc/sys/net` read or written by `f` is this
    /// namespace's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a valid namespace fd affects only this
                    // thread, which exits when `f` returns (the host thread
                    // never changes namespace).
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
                    }
                    Ok(f())
                })
                .join()
                .map_err(|panic| anyhow::anyhow!("thread in netns panicked: {panic:?}"))?
        })
        .with_context(|| format!("running in netns {}", self.name))
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.run(|| UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in netns {}", self.name))
    }

    /// Writes a sysctl of this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in netns {}", self.name))
    }

    /// A command whose process starts inside this namespace (it enters it
    /// between fork and exec, so its pid is the program's own and signals
    /// reach it directly; the mount namespace stays the host's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let file = self.open()?;
        let mut command = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setns(2), which is async-signal-safe; `file` (O_CLOEXEC) is
        // owned by the closure and stays open until the Command is dropped.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// `ethtool <args>` inside this namespace (e.g. `-K eth0 tx off`).
    pub fn ethtool(&self, args: &str) -> Result<()> {
        let out = self
            .command("ethtool")?
            .args(args.split_whitespace())
            .output()
            .context("running ethtool (apt-get install ethtool)")?;
        if !out.status.success() {
            bail!(
                "ethtool {args} in netns {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Loads an nftables ruleset (`nft -f -`) inside this namespace.
    pub fn nft(&self, rules: &str) -> Result<()> {
        use std::io::Write as _;
        let mut child = self
            .command("nft")?
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft (apt-get install nftables)")?;
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in netns {} failed: {}\n{rules}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn open(&self) -> Result<File> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete netns {}: {e:#}", self.name);
        }
    }
}

/// One host of a [`Switched`] lab.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    /// The host's interface name (inside `ns`).
    pub iface: String,
    /// Its bridge port's name (inside the switch namespace).
    pub port: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A UDP socket on this host's address.
    pub fn udp_socket(&self, port: u16) -> Result<UdpSocket> {
        self.ns.udp_socket(SocketAddr::from((self.addr, port)))
    }
}

/// Hosts on one L2 segment: a switch namespace with bridge `br0`, and per
/// host a namespace with `eth0` (a veth whose peer is a port of `br0`),
/// addressed `10.77.0.<i+1>/24` in the order given.
///
/// Fields drop in declaration order; deleting any namespace also removes the
/// veth pairs it held, so the order doesn't matter for cleanup.
#[derive(Debug)]
pub struct Switched {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

/// The lab subnet's prefix length.
pub const LAB_PREFIX: u8 = 24;

impl Switched {
    /// Builds the lab for `roles` (at most 250).
    pub fn new(roles: &[&str]) -> Result<Self> {
        if roles.len() > 250 {
            bail!("at most 250 hosts on one lab segment");
        }
        let switch = Netns::new("sw")?;
        switch.ip("link add br0 type bridge")?;
        switch.ip("link set br0 up")?;
        let mut hosts = Vec::with_capacity(roles.len());
        for (i, role) in roles.iter().enumerate() {
            let ns = Netns::new(role)?;
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            switch.ip(&format!(
                "link add {port} type veth peer name eth0 netns {}",
                ns.name()
            ))?;
            switch.ip(&format!("link set {port} master br0 up"))?;
            ns.ip(&format!("addr add {addr}/{LAB_PREFIX} dev eth0"))?;
            ns.ip("link set eth0 up")?;
            hosts.push(Host {
                ns,
                iface: "eth0".into(),
                port,
                addr,
            });
        }
        Ok(Self { hosts, switch })
    }

    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.ns.name().ends_with(&format!("-{role}")))
            .unwrap_or_else(|| panic!("no host {role} in this lab"))
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn netns_exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    fn lab_or_skip(test: &str) -> bool {
        lanrage_test_support::privileged::or_skip(test, lab_available()).is_some()
    }

    #[test]
    fn hosts_on_the_switch_reach_each_other_and_the_lab_is_removed() -> Result<()> {
        if !lab_or_skip("hosts_on_the_switch_reach_each_other_and_the_lab_is_removed") {
            return Ok(());
        }
        let lab = Switched::new(&["a", "b"])?;
        let names: Vec<String> = lab
            .hosts
            .iter()
            .map(|h| h.ns.name().to_owned())
            .chain([lab.switch.name().to_owned()])
            .collect();
        let (a, b) = (lab.host("a"), lab.host("b"));
        let sa = a.udp_socket(4000)?;
        let sb = b.udp_socket(4000)?;
        sb.set_read_timeout(Some(Duration::from_secs(2)))?;
        // The first datagram may wait for ARP; a handful of tries is plenty.
        let mut buf = [0u8; 16];
        let mut got = None;
        for _ in 0..5 {
            sa.send_to(b"hello", (b.addr, 4000))?;
            if let Ok((n, from)) = sb.recv_from(&mut buf) {
                got = Some((buf[..n].to_vec(), from));
                break;
            }
        }
        let (payload, from) = got.context("B never heard A across the switch")?;
        assert_eq!(payload, b"hello");
        assert_eq!(from, SocketAddr::from((a.addr, 4000)));
        // The socket lives in A's namespace, not the host's: the lab address
        // is not bindable here.
        assert!(UdpSocket::bind((a.addr, 4001)).is_err());
        drop((sa, sb));
        drop(lab);
        for name in &names {
            assert!(!netns_exists(name), "{name} left behind");
        }
        Ok(())
    }

    #[test]
    fn namespaces_are_removed_when_a_test_panics() {
        if !lab_or_skip("namespaces_are_removed_when_a_test_panics") {
            return;
        }
        let mut names = Vec::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let lab = Switched::new(&["x"]).expect("lab");
            names.push(lab.switch.name().to_owned());
            names.push(lab.hosts[0].ns.name().to_owned());
            panic!("deliberate");
        }));
        assert!(result.is_err());
        assert_eq!(names.len(), 2);
        for name in &names {
            assert!(!netns_exists(name), "{name} left behind after a panic");
        }
    }

    #[test]
    fn sysctl_and_commands_act_inside_the_namespace() -> Result<()> {
        if !lab_or_skip("sysctl_and_commands_act_inside_the_namespace") {
            return Ok(());
        }
        let ns = Netns::new("cmd")?;
        // New namespaces start with forwarding off (LAB.md).
        let read = |ns: &Netns| {
            ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
                .and_then(|r| Ok(r?.trim().to_owned()))
        };
        assert_eq!(read(&ns)?, "0");
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        assert_eq!(read(&ns)?, "1");
        ns.ip("link add lrgv7a type veth peer name lrgv7b")?;
        let out = ns.command("ip")?.args(["-o", "link", "show"]).output()?;
        let links = String::from_utf8_lossy(&out.stdout);
        assert!(links.contains("lrgv7a"), "{links}");
        Ok(())
    }
}
