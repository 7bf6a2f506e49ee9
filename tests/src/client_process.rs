//! The real `lanrage` client binary in the labs: where it is, keys for it,
//! and a child process that stops cleanly (SIGTERM, so it removes its TUN)
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::netns::Netns;
use crate::relay_process::relay_binary;

/// The `lanrage` binary this crate builds from the client's main.rs.
pub fn client_binary() -> PathBuf {
    relay_binary().with_file_name("lanrage-e2e")
}

/// A running `lanrage` or `lanrage-relay`, stopped with SIGTERM (then
/// SIGKILL after 3 s) when dropped.
pub struct Running(pub Child);

/// Whether a lab that pings between virtual IPs can run here: `lab` (the
/// namespace lab's or the NAT lab's own check) and iputils' `ping`.
pub fn ping_lab_available(lab: Result<(), String>) -> Result<(), String> {
    lab?;
    match Command::new("ping").arg("-V").output() {
        Ok(_) => Ok(()),
        Err(_) => Err("needs `ping` (iputils-ping)".into()),
    }
}

/// `lanrage --config CONFIG up` inside `ns`, logging at debug to `log`.
pub fn start_client(ns: &Netns, config: &Path, log: std::fs::File) -> Result<Running> {
    let child = ns
        .command(client_binary())?
        .arg("--config")
        .arg(config)
        .arg("up")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting a client")?;
    Ok(Running(child))
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first: the client removes its TUN on a clean stop.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lanrage keygen --key PATH`: writes a key there and returns the public
/// key it printed.
pub fn client_keygen(key: &Path) -> Result<String> {
    let out = Command::new(client_binary())
        .arg("keygen")
        .arg("--key")
        .arg(key)
        .output()?;
    if !out.status.success() {
        bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// `lanrage-relay keygen` into `key`, and the public key for a relay
/// config at `config` (which must name that key file).
pub fn relay_keygen(key: &Path, config: &Path) -> Result<String> {
    let out = Command::new(relay_binary()).arg("keygen").output()?;
    std::fs::write(key, &out.stdout)?;
    let public = Command::new(relay_binary())
        .arg("--config")
        .arg(config)
        .arg("public-key")
        .output()?;
    if !public.status.success() {
        bail!("public-key: {}", String::from_utf8_lossy(&public.stderr));
    }
    Ok(String::from_utf8(public.stdout)?.trim().to_owned())
}

/// Waits until `check` holds, for at most `limit` (polling every 20 ms).
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The replies of a `ping` run `interval` apart, and the longest run
/// without one (replies a jittery path reorders count as no gap).
pub fn pinged(pinger: Child, interval: Duration) -> Result<(Vec<u32>, Duration)> {
    let output = pinger.wait_with_output()?;
    let seqs = ping_replies(&String::from_utf8_lossy(&output.stdout));
    let gap = seqs
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(u32::MAX);
    Ok((seqs, interval * gap))
}

/// The icmp_seq of every reply in `ping`'s output.
pub fn ping_replies(output: &str) -> Vec<u32> {
    output
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `count` pings at 50/s from `ns` to `dst`, running until waited for
/// with [`pinged`].
pub fn pinger(ns: &crate::netns::Netns, count: u32, dst: &str) -> Result<Child> {
    Ok(ns
        .command("ping")?
        .args(["-n", "-c", &count.to_string(), "-i", "0.02", "-W", "1", dst])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}
