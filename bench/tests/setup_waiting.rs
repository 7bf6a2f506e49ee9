//! The load generator against a relay that rate-limits its registrations:
//! it says what it is waiting for and why while it waits, and gives up at
//! its deadline with the same explanation. Nothing leaves 127.0.0.1.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanrage_bench::loadgen::embedded::{self, EmbeddedRelay};
use lanrage_proto::PeerKey;
use lanrage_relay::config::{Config, HandshakeRateLimit};

const LOADGEN: &str = env!("CARGO_BIN_EXE_lanrage-loadgen");

#[test]
fn a_rate_limited_setup_says_why_it_waits_and_gives_up_at_its_deadline() {
    // Four tokens a second, four per pair: the first pair gets through on
    // the burst, then steps wait for the bucket and retry (one retry always
    // suffices at this rate), so the 20 pairs would need about 20 s.
    let config = Config {
        handshake_rate_limit: HandshakeRateLimit {
            per_second: 4,
            burst: 4,
        },
        ..embedded::config()
    };
    let relay = EmbeddedRelay::start_with(config, 5).expect("relay");
    let key = PeerKey(relay.public.to_bytes()).to_base64();
    let mut child = Command::new(LOADGEN)
        .args([
            "--relay",
            &relay.addr.to_string(),
            "--relay-public-key",
            &key,
        ])
        .args(["--pairs", "20", "--setup-timeout", "5", "--seed", "5"])
        .args(["--mode", "prebuilt", "--no-baseline", "--duration", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lanrage-loadgen");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(1 << 20).read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lanrage-loadgen still setting up after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = reader.join().expect("reader");
    assert!(!status.success(), "setup succeeded: {stderr}");
    let waiting = stderr
        .lines()
        .find(|l| l.starts_with("setup: waiting for "))
        .unwrap_or_else(|| panic!("no waiting line in: {stderr}"));
    assert!(
        waiting.contains("of 40 registrations to be acknowledged")
            && waiting.contains("the relay may be rate-limiting 127.0.0.1")
            && waiting.contains("handshake_rate_limit"),
        "{waiting}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    assert!(
        error.contains("setup gave up after 5 s") || error.contains("setup failed"),
        "{error}"
    );
    assert!(
        error.contains("registrations acknowledged") && error.contains("rate-limiting 127.0.0.1"),
        "{error}"
    );
}
