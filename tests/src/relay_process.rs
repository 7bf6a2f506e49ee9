//! A `lanrage-relay` process on loopback, started from a generated config,
//! with helpers to scrape its metrics and to restart it on the same port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lanrage_proto::x25519::{PublicKey, StaticSecret};

/// The relay binary built by this crate from the relay's own `main.rs`.
///
/// Cargo builds a package's binaries before its integration tests and puts
/// them next to the `deps/` folder the test executable runs from. (Its
/// `CARGO_BIN_EXE_*` variables exist only when compiling the test files, not
/// this library.)
pub fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    profile_dir.join("lanrage-relay-e2e")
}

/// A scratch directory removed on drop, unique per process and call.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("lanrage-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Everything needed to start (and restart) one relay: its config file, its
/// key, and its addresses.
pub struct RelaySetup {
    pub dir: ScratchDir,
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub secret: StaticSecret,
}

impl RelaySetup {
    /// A relay on fresh loopback ports. `extra_yaml` is appended to the config
    /// (top-level fields, e.g. a lower rate limit).
    pub fn new(extra_yaml: &str) -> Result<Self> {
        let dir = ScratchDir::new("relay")?;
        let listen: SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let secret = StaticSecret::from(random_bytes()?);
        let key_path = dir.path().join("private.key");
        write_private(&key_path, &format!("{}\n", encode_key(&secret)))?;
        let config_path = dir.path().join("relay.yaml");
        std::fs::write(
            &config_path,
            format!(
                "listen: \"{listen}\"\nmetrics_listen: \"{metrics}\"\nprivate_key_file: \"{}\"\n{extra_yaml}",
                key_path.display()
            ),
        )?;
        Ok(Self {
            dir,
            config_path,
            listen,
            metrics,
            secret,
        })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.secret)
    }

    /// Starts the relay and waits (at most 20 s) until its health endpoint answers.
    pub fn start(&self) -> Result<RelayProcess> {
        self.start_with_env(&[])
    }

    /// As [`RelaySetup::start`], with extra environment variables for the relay.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Result<RelayProcess> {
        let log_path = self.dir.path().join(format!(
            "relay-{}.log",
            Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
        ));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(relay_binary())
            .arg("--config")
            .arg(&self.config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning the relay")?;
        let mut process = RelayProcess {
            child: Some(child),
            metrics: self.metrics,
            log_path,
        };
        process.wait_ready(Duration::from_secs(20))?;
        Ok(process)
    }
}

/// Writes a file readable by its owner only, as the relay expects of a key.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Standard base64 of a 32-byte key, the key file's format.
fn encode_key(secret: &StaticSecret) -> String {
    lanrage_proto::key::base64_encode_32(&secret.to_bytes())
}

/// A running relay. Dropping it kills the process.
pub struct RelayProcess {
    child: Option<Child>,
    metrics: SocketAddr,
    log_path: PathBuf,
}

impl RelayProcess {
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("relay exited early ({status}): {}", self.log());
                }
            }
            if http_get(self.metrics, "/health").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("relay not ready within {limit:?}: {}", self.log())
    }

    /// The relay's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (at most 10 s) for a clean exit; returns its code.
    pub fn stop(mut self) -> Result<i32> {
        let mut child = self.child.take().context("already stopped")?;
        terminate(&mut child)
    }

    /// Stops every thread of the relay with SIGSTOP, and waits (at most 5 s)
    /// until the kernel reports all of them stopped. Until [`resume`], no
    /// worker reads its socket: datagrams pile up in the receive buffers.
    /// (Dropping the process still kills it.)
    ///
    /// [`resume`]: RelayProcess::resume
    pub fn pause(&self) -> Result<()> {
        let pid = self.signal(libc::SIGSTOP)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if all_threads_stopped(pid)? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("relay threads not all stopped 5 s after SIGSTOP")
    }

    /// Lets a [`RelayProcess::pause`]d relay run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT).map(drop)
    }

    fn signal(&self, signal: libc::c_int) -> Result<u32> {
        let child = self.child.as_ref().context("already stopped")?;
        let pid = child.id();
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(pid)
    }

    /// The value of one metric line (`name` including any `{labels}`).
    pub fn metric(&self, name: &str) -> Result<u64> {
        let (code, body) = http_get(self.metrics, "/metrics")?;
        if code != 200 {
            bail!("metrics endpoint answered {code}");
        }
        metric_value(&body, name).with_context(|| format!("metric {name} not found in:\n{body}"))
    }

    pub fn dropped(&self, reason: &str) -> Result<u64> {
        self.metric(&format!(
            "lanrage_relay_dropped_total{{reason=\"{reason}\"}}"
        ))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether every thread of `pid` is in state `T` (stopped by a signal).
/// Sends SIGTERM to a relay this test started and waits (at most 10 s) for
/// its exit code (-1 for a signal); kills and reaps it if it ignores the
/// signal.
pub fn terminate(child: &mut Child) -> Result<i32> {
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("relay ignored SIGTERM for 10 s")
}

fn all_threads_stopped(pid: u32) -> Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // `pid (comm) state …`; comm may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state != Some("T") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The kernel's drop counter (the `drops` column of `/proc/net/udp` and
/// `/proc/net/udp6`) of every UDP socket bound to local `port`, in the
/// order the kernel lists them.
pub fn udp_socket_drops(port: u16) -> Result<Vec<u64>> {
    let mut drops = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            // No IPv6 in this kernel: no udp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {table}")),
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let (Some(local), Some(count)) = (fields.get(1), fields.get(12)) else {
                continue;
            };
            let Some((_, local_port)) = local.rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(local_port, 16).ok() != Some(port) {
                continue;
            }
            // Printed as signed by older kernels; it is a wrapping 32-bit count.
            let count: i64 = count
                .parse()
                .with_context(|| format!("{table}: bad drops field in {line:?}"))?;
            drops.push(u64::from(count as u32));
        }
    }
    Ok(drops)
}

/// Finds `name value` in Prometheus text.
pub fn metric_value(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A minimal HTTP/1.0 GET with a 2 s timeout: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.take(1 << 20).read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
