//! The relay binary as a new operator meets it: a closed log pipe, a port
//! already taken, `check-config`, config mistakes and the key path. Every
//! wait is bounded; nothing leaves 127.0.0.1.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};
use std::os::fd::FromRawFd as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use lanrage_tests::relay_process::{relay_binary, ScratchDir};
use lanrage_tests::RelaySetup;

/// Kills the child on drop, so a failing assertion leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    /// Waits at most `limit` for the process to exit.
    fn wait_for_exit(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
    }
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors are new, open, and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// `lanrage-relay … 2>&1 | head -1`: the reader of the relay's stdout and
/// stderr goes away while the relay runs. Logging to the broken pipe must not
/// kill the relay or its signal handling: SIGTERM still stops it, cleanly.
#[test]
fn sigterm_stops_the_relay_after_its_log_pipe_closed() -> Result<()> {
    let setup = RelaySetup::new("")?;
    let (read, write) = pipe()?;
    let child = Command::new(relay_binary())
        .arg("--config")
        .arg(&setup.config_path)
        .stdin(Stdio::null())
        .stdout(write.try_clone()?)
        .stderr(write)
        .spawn()
        .context("spawning the relay")?;
    let mut relay = Reaped(child);

    // Like `head`: read until the relay is ready, then close the read end.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(read).lines().take(1000) {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("relay ready") {
                break;
            }
        }
        // `read` is dropped here: the relay's next log line meets EPIPE.
        let _ = tx.send(seen);
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(20))
        .context("the relay did not log `relay ready` within 20 s")?;
    assert!(seen.contains("relay ready"), "relay output: {seen}");

    // A log line into the closed pipe, then the stop itself.
    relay.sigterm();
    let status = relay.wait_for_exit(Duration::from_secs(10))?;
    let Some(status) = status else {
        bail!("the relay ignored SIGTERM for 10 s after its log pipe closed");
    };
    assert_eq!(status.code(), Some(0), "exit status {status}");
    Ok(())
}

/// Runs the relay binary with `args` to completion, at most `limit`:
/// (exit status, stdout, stderr).
fn run_relay(args: &[&std::ffi::OsStr], limit: Duration) -> Result<(ExitStatus, String, String)> {
    let child = Command::new(relay_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the relay")?;
    let mut child = Reaped(child);
    let mut stdout = child.0.stdout.take().context("stdout")?;
    let mut stderr = child.0.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stdout).take(1 << 20).read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(1 << 20).read_to_string(&mut text);
        text
    });
    let Some(status) = child.wait_for_exit(limit)? else {
        bail!("lanrage-relay {args:?} still running after {limit:?}");
    };
    let out = out.join().map_err(|_| anyhow::anyhow!("stdout reader"))?;
    let err = err.join().map_err(|_| anyhow::anyhow!("stderr reader"))?;
    Ok((status, out, err))
}

/// A second relay on a port the first one serves must not start (both would
/// get half the clients with `SO_REUSEPORT`); it exits naming the address.
#[test]
fn a_second_relay_on_the_same_port_refuses_to_start() -> Result<()> {
    let first = RelaySetup::new("workers: 2\n")?;
    let running = first.start()?;

    // Same UDP port; no metrics listener, so only the UDP port can conflict.
    let dir = ScratchDir::new("second-relay")?;
    let config = dir.path().join("relay.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"{}\"\nmetrics_listen: null\nworkers: 2\nprivate_key_file: \"{}\"\n",
            first.listen,
            dir.path().join("private.key").display()
        ),
    )?;
    let (status, _, stderr) = run_relay(
        &["--config".as_ref(), config.as_os_str()],
        Duration::from_secs(20),
    )?;
    assert!(!status.success(), "the second relay started: {stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&first.listen.to_string()) && stderr.contains("another process"),
        "stderr: {stderr}"
    );
    // The first relay still gets every datagram sent to the port, from
    // sources spread over its workers' sockets.
    let before = running.metric("lanrage_relay_received_total")?;
    for _ in 0..16 {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.send_to(b"not a lanrage message", first.listen)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = 0;
    while Instant::now() < deadline {
        received = running.metric("lanrage_relay_received_total")? - before;
        if received >= 16 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(received, 16, "datagrams the first relay received");
    assert_eq!(running.stop()?, 0);
    Ok(())
}

/// `check-config` runs the checks a start runs, no fewer: every config a
/// start refuses, `check-config` refuses with the same message (exit 1 there,
/// 2 at start).
#[test]
fn check_config_refuses_what_the_start_refuses() -> Result<()> {
    let mut bad = vec![
        "limits:\n  max_routes: 0\n",
        "max_routez: 5\n",
        "batch_size: lots\n",
    ];
    // A relay built without XDP refuses `xdp:` at start (e08b2f3).
    if !cfg!(feature = "xdp") {
        bad.push("xdp:\n  interface: lo\n");
    }
    for extra in bad {
        let setup = RelaySetup::new(extra)?;
        let config = setup.config_path.as_os_str();
        let (check, check_out, check_err) = run_relay(
            &["check-config".as_ref(), "--config".as_ref(), config],
            Duration::from_secs(20),
        )?;
        let (start, _, start_err) =
            run_relay(&["--config".as_ref(), config], Duration::from_secs(20))?;
        assert_eq!(start.code(), Some(2), "{extra:?}: start: {start_err}");
        assert_eq!(
            check.code(),
            Some(1),
            "{extra:?}: check-config said {check_out:?} {check_err:?}, the start said {start_err}"
        );
        let error = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("error: "))
                .map(str::to_owned)
        };
        assert!(error(&start_err).is_some(), "{extra:?}: {start_err}");
        assert_eq!(error(&check_err), error(&start_err), "{extra:?}");
    }

    let setup = RelaySetup::new("")?;
    let (check, out, err) = run_relay(
        &[
            "check-config".as_ref(),
            "--config".as_ref(),
            setup.config_path.as_os_str(),
        ],
        Duration::from_secs(20),
    )?;
    assert!(check.success(), "{err}");
    assert!(out.ends_with(": ok\n"), "{out}");
    Ok(())
}

/// Where `public-key --state-dir DIR` puts (generates) the key: an absolute
/// `private_key_file` as written, a relative one under DIR, none at
/// DIR/private.key (docs/configuration.md, "The private key").
#[test]
fn state_dir_keeps_an_absolute_key_path_and_holds_the_others() -> Result<()> {
    let dir = ScratchDir::new("key-paths")?;
    let state = dir.path().join("state");
    let elsewhere = dir.path().join("elsewhere").join("relay.key");
    let cases = [
        (
            format!("private_key_file: \"{}\"\n", elsewhere.display()),
            elsewhere,
        ),
        (
            "private_key_file: keys/relay.key\n".to_owned(),
            state.join("keys/relay.key"),
        ),
        ("log: info\n".to_owned(), state.join("private.key")),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("relay-{i}.yaml"));
        std::fs::write(&config, yaml)?;
        let (status, out, err) = run_relay(
            &[
                "public-key".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
                "--state-dir".as_ref(),
                state.as_os_str(),
            ],
            Duration::from_secs(20),
        )?;
        assert!(status.success(), "{yaml:?}: {err}");
        assert_eq!(out.trim().len(), 44, "{yaml:?}: not a public key: {out:?}");
        assert!(
            expected.is_file(),
            "{yaml:?}: no key at {}; stderr: {err}",
            expected.display()
        );
        assert!(
            err.contains(&expected.display().to_string()),
            "{yaml:?}: {err}"
        );
        std::fs::remove_file(expected)?;
    }
    // Nothing else was generated in the state directory.
    let left: Vec<_> = std::fs::read_dir(&state)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "stray key files: {left:?}");
    Ok(())
}

/// What the operator sees on stderr for config mistakes: one `error:` line
/// naming the field by its dotted path, what it allows, and the line, with
/// no Rust type names.
#[test]
fn config_mistakes_are_reported_in_the_operators_words() -> Result<()> {
    let cases: &[(&str, &[&str])] = &[
        (
            "listen_addr: \"0.0.0.0:1\"\n",
            &["listen_addr is not a known field", "at line 4 column 1"],
        ),
        (
            "handshake_rate_limit:\n  per_second: lots\n",
            &[
                "handshake_rate_limit.per_second must be a whole number from 1 to 1000000",
                "got \"lots\" at line 5",
            ],
        ),
        (
            "limits:\n  max_routes: 99999999999999999999999999\n",
            &["limits.max_routes must be a whole number from 1 to 100000000"],
        ),
        (
            "limits: 5\n",
            &[
                "limits must be a mapping with max_registrations",
                "at line 4",
            ],
        ),
        (
            "timeouts:\n  route_idle_secs: -1\n",
            &["timeouts.route_idle_secs must be a whole number from 10 to 3600, got -1"],
        ),
        (
            "backend: turbo\n",
            &["backend must be one of auto, io_uring, epoll, got \"turbo\""],
        ),
    ];
    for (extra, fragments) in cases {
        // RelaySetup writes three lines (listen, metrics_listen, private_key_file) first.
        let setup = RelaySetup::new(extra)?;
        let (status, _, stderr) = run_relay(
            &["--config".as_ref(), setup.config_path.as_os_str()],
            Duration::from_secs(20),
        )?;
        assert_eq!(status.code(), Some(2), "{extra:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: config file "))
            .with_context(|| format!("{extra:?}: no error line in {stderr:?}"))?;
        for fragment in *fragments {
            assert!(
                line.contains(fragment),
                "{extra:?}: {line:?} lacks {fragment:?}"
            );
        }
        for word in line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
            assert!(
                !["usize", "u32", "u64", "u128", "i64", "struct", "Limits", "Option"]
                    .contains(&word),
                "{extra:?}: {line:?} shows {word:?}"
            );
        }
        assert!(!line.contains("invalid type"), "{line:?}");
    }
    Ok(())
}
