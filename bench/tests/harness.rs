//! The load generator measured against known answers: a forwarder that drops
//! exactly every tenth datagram must show exactly that loss, and an embedded
//! relay at a modest rate must deliver everything, in both payload modes.
//! No timing is asserted: latency values are checked only for sanity.

use std::io::{BufRead as _, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_lanrage-loadgen");
const FORWARDER: &str = env!("CARGO_BIN_EXE_naive-forwarder");

/// Kills the child on drop, so a failing assertion leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_loadgen(args: &[&str]) -> Value {
    let output = Command::new(LOADGEN)
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run lanrage-loadgen");
    assert!(
        output.status.success(),
        "lanrage-loadgen {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing or not an integer in {v:#}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"))
}

fn assert_latency_sane(v: &Value, phase: &str) {
    let at = |p: &str| f(v, &format!("/phases/{phase}/latency_us/{p}"));
    let (p50, p90, p99, p999, max) = (at("p50"), at("p90"), at("p99"), at("p999"), at("max"));
    assert!(p50 > 0.0, "{phase}: p50 {p50}");
    assert!(
        p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{phase}: percentiles out of order: {p50} {p90} {p99} {p999} {max}"
    );
}

#[test]
fn forwarder_dropping_every_tenth_datagram_shows_exactly_that_loss() {
    // The sink port must be known before the forwarder starts; a port that
    // was free a moment ago is good enough on loopback.
    let sink_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new(FORWARDER)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--to",
            &format!("127.0.0.1:{sink_port}"),
            "--drop-every",
            "10",
            "--max-seconds",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn naive-forwarder");
    let stdout = child.stdout.take().expect("piped stdout");
    let forwarder = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the forwarder's address");
    let listen = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let v = run_loadgen(&[
        "--forwarder",
        &listen,
        "--sink-port",
        &sink_port.to_string(),
        "--mode",
        "prebuilt",
        "--pairs",
        "4",
        "--rate",
        "1000",
        "--count",
        "250",
        "--no-baseline",
    ]);
    drop(forwarder);
    let sent = u(&v, "/phases/forwarded/sent");
    assert_eq!(sent, 1000, "{v:#}");
    assert_eq!(u(&v, "/phases/forwarded/lost"), sent / 10, "{v:#}");
    assert_eq!(u(&v, "/phases/forwarded/received"), sent - sent / 10);
    assert_eq!(u(&v, "/phases/forwarded/reordered"), 0, "{v:#}");
    assert_eq!(u(&v, "/phases/forwarded/duplicates"), 0, "{v:#}");
    assert!((f(&v, "/phases/forwarded/loss_ratio") - 0.1).abs() < 1e-9);
    assert!(v.pointer("/phases/direct").is_some_and(Value::is_null));
    assert!(v.pointer("/added_latency_us").is_some_and(Value::is_null));
    assert_latency_sane(&v, "forwarded");
}

#[test]
fn embedded_relay_delivers_everything_in_both_modes() {
    for mode in ["sealed", "prebuilt"] {
        let v = run_loadgen(&[
            "--embedded",
            "--mode",
            mode,
            "--pairs",
            "3",
            "--rate",
            "400",
            "--duration",
            "0.5",
        ]);
        assert_eq!(u(&v, "/setup/handshakes"), 3, "{mode}");
        assert_eq!(u(&v, "/setup/registrations"), 6, "{mode}");
        for phase in ["direct", "forwarded"] {
            let p = |field: &str| format!("/phases/{phase}/{field}");
            assert_eq!(u(&v, &p("sent")), 3 * 200, "{mode} {phase}: {v:#}");
            assert_eq!(u(&v, &p("received")), u(&v, &p("sent")), "{mode} {phase}");
            assert_eq!(u(&v, &p("lost")), 0, "{mode} {phase}");
            assert_eq!(f(&v, &p("loss_ratio")), 0.0, "{mode} {phase}");
            assert_eq!(u(&v, &p("duplicates")), 0, "{mode} {phase}");
            assert_eq!(u(&v, &p("undecryptable")), 0, "{mode} {phase}");
            // Present and numeric; values depend on the machine.
            u(&v, &p("reordered"));
            for field in ["offered_pps", "delivered_pps", "mbit_s"] {
                assert!(f(&v, &p(field)) > 0.0, "{mode} {phase} {field}");
            }
            assert_latency_sane(&v, phase);
        }
        for q in ["p50", "p90", "p99", "p999", "max"] {
            f(&v, &format!("/added_latency_us/{q}"));
        }
        assert_eq!(
            v.pointer("/config/mode").and_then(Value::as_str),
            Some(mode)
        );
    }
}
