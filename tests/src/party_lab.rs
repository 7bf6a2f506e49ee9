//! The party lab shared by the namespace tests of parties and LAN
//! discovery: a switched segment with the real relay (parties on) and real
//! clients that know nothing but the relay list; helpers to drive them
//! with the real `lanrage` CLI and read what it says.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client_process::{
    client_binary, client_keygen, eventually, ping_replies, relay_keygen, start_client, Running,
};
use crate::netns::Switched;
use crate::relay_process::{relay_binary, ScratchDir};

pub const RELAY_PORT: u16 = 51820;

pub struct PartyLab {
    pub lab: Switched,
    pub dir: ScratchDir,
}

impl PartyLab {
    /// The lab for `clients`; `extra(name)` is added to each client's
    /// config (YAML lines).
    pub fn new(clients: &[&str], extra: impl Fn(&str) -> String) -> Result<Self> {
        let mut roles = vec!["relay"];
        roles.extend(clients);
        let lab = Switched::new(&roles)?;
        let dir = ScratchDir::new("party-lab")?;
        let key = dir.path().join("relay.key");
        let config = dir.path().join("relay.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"{}:{RELAY_PORT}\"\nmetrics_listen: null\nprivate_key_file: \"{}\"\n\
                 workers: 1\nparty:\n  name: lab\n  database: \"{}\"\n",
                lab.host("relay").addr,
                key.display(),
                dir.path().join("parties.sqlite").display()
            ),
        )?;
        let relay_key = relay_keygen(&key, &config)?;
        for &name in clients {
            client_keygen(&dir.path().join(format!("{name}.key")))?;
            std::fs::write(
                dir.path().join(format!("{name}.yaml")),
                format!(
                    "name: {name}\nprivate_key_file: {name}.key\nstate_file: {name}.party.json\n\
                     control_socket: {}\n\
                     relays:\n  - {{name: lab, address: \"{}:{RELAY_PORT}\", public_key: \"{relay_key}\"}}\n{}",
                    dir.path().join(format!("{name}.sock")).display(),
                    lab.host("relay").addr,
                    extra(name),
                ),
            )?;
        }
        Ok(Self { lab, dir })
    }

    pub fn start_relay(&self) -> Result<Running> {
        let log = std::fs::File::create(self.dir.path().join("relay.log"))?;
        let child = self
            .lab
            .host("relay")
            .ns
            .command(relay_binary())?
            .arg("--config")
            .arg(self.dir.path().join("relay.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the relay")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Running(child))
    }

    pub fn start_client(&self, name: &str) -> Result<Running> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))?;
        start_client(&self.lab.host(name).ns, &self.config(name), log)
    }

    pub fn config(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.yaml"))
    }

    /// `lanrage ARGS` for `name`: stdout, or the error with stderr.
    pub fn lanrage(&self, name: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(client_binary())
            .arg("--config")
            .arg(self.config(name))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "lanrage {args:?} on {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self, name: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.lanrage(name, &["status", "--json"])?,
        )?)
    }

    /// Members by name → virtual IP, as `name` sees its party.
    pub fn members(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let row: serde_json::Value =
            serde_json::from_str(&self.lanrage(name, &["party", "members", "--json"])?)?;
        let mut out = BTreeMap::new();
        for m in row["members"].as_array().cloned().unwrap_or_default() {
            out.insert(
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["address"].as_str().unwrap_or_default().to_owned(),
            );
        }
        Ok(out)
    }

    pub fn peers(&self, name: &str) -> Result<Vec<String>> {
        let status = self.status(name)?;
        let mut peers: Vec<String> = status["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        peers.sort();
        Ok(peers)
    }

    /// Pings from `from` to `ip`: replies of `count`, 0.1 s apart.
    pub fn ping(&self, from: &str, ip: &str, count: u32) -> Result<usize> {
        let out = self
            .lab
            .host(from)
            .ns
            .command("ping")?
            .args(["-n", "-c", &count.to_string(), "-i", "0.1", "-W", "1", ip])
            .output()
            .context("running ping (iputils-ping)")?;
        Ok(ping_replies(&String::from_utf8_lossy(&out.stdout)).len())
    }

    /// One ping every 20 ms until one is answered (at most `limit`); how
    /// long that took.
    pub fn first_reply(&self, from: &str, ip: &str, limit: Duration) -> Result<Option<Duration>> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let out = self
                .lab
                .host(from)
                .ns
                .command("ping")?
                .args(["-n", "-c", "1", "-W", "0.05", ip])
                .output()?;
            if !ping_replies(&String::from_utf8_lossy(&out.stdout)).is_empty() {
                return Ok(Some(start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn registered(&self, name: &str) -> bool {
        self.status(name)
            .is_ok_and(|s| s["relays"][0]["registered"].as_bool() == Some(true))
    }
}

/// Starts the relay and `clients`, waits until each has registered, and
/// makes a party: the first creates it, the rest join by its code. Returns
/// the processes and the roster (name → virtual IP).
pub fn party_of(
    lab: &PartyLab,
    clients: &[&str],
) -> Result<(Running, Vec<Running>, BTreeMap<String, String>)> {
    let relay = lab.start_relay()?;
    let mut running = Vec::new();
    for name in clients {
        running.push(lab.start_client(name)?);
    }
    for name in clients {
        if !eventually(Duration::from_secs(10), || lab.registered(name)) {
            bail!("{name} never registered:\n{}", lab.log(name));
        }
    }
    let Some((owner, joiners)) = clients.split_first() else {
        bail!("a party needs a member");
    };
    let code = lab.lanrage(owner, &["party", "create", "--name", "LAN"])?;
    let code = code.trim().to_owned();
    for name in joiners {
        lab.lanrage(name, &["party", "join", &code])?;
    }
    let roster = lab.members(owner)?;
    if roster.len() != clients.len() {
        bail!("roster {roster:?}");
    }
    Ok((relay, running, roster))
}
