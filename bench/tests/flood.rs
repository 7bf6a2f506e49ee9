//! `lanrage-flood` against a relay in this process, one test per kind: every
//! datagram it reports as sent reaches the relay and is dropped (or, for
//! fresh keys, registered) for the reason that kind exists to provoke. The
//! floods are short and rate-limited; no timing is asserted. Needs root or
//! CAP_NET_RAW (skips without, fails under `LANRAGE_REQUIRE_PRIVILEGED=1`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lanrage_bench::loadgen::embedded::EmbeddedRelay;
use lanrage_proto::PeerKey;
use lanrage_relay::backend::BackendMetrics;
use lanrage_relay_core::metrics::{DropReason, Event};
use lanrage_test_support::privileged::or_skip;
use lanrage_tests::spoof::permitted_spoofer;
use serde_json::Value;

const FLOOD: &str = env!("CARGO_BIN_EXE_lanrage-flood");

/// Whether raw sockets work here; prints (or panics) why not.
fn privileged(test: &str) -> bool {
    or_skip(test, permitted_spoofer()).is_some()
}

/// Runs a 0.5 s flood at 2000 pps; returns its JSON line.
fn flood(relay: &EmbeddedRelay, args: &[&str]) -> Value {
    let output = Command::new(FLOOD)
        .args(["--relay", &relay.addr.to_string()])
        .args([
            "--relay-public-key",
            &PeerKey(relay.public.to_bytes()).to_base64(),
        ])
        .args(["--rate", "2000", "--duration", "0.5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run lanrage-flood");
    assert!(
        output.status.success(),
        "lanrage-flood {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn sent(v: &Value) -> u64 {
    let sent = v["sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("no sent in {v}"));
    assert!(sent > 0, "nothing sent: {v}");
    assert_eq!(v["send_errors"].as_u64(), Some(0), "{v}");
    assert!(v["seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");
    assert!(v["pps"].as_f64().is_some_and(|p| p > 0.0), "{v}");
    sent
}

/// Waits (at most 5 s) until the relay has received `n` datagrams.
fn wait_received(metrics: &BackendMetrics, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.received() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metrics.received(), n, "datagrams the relay received");
}

#[test]
fn transport_misses_are_route_misses() {
    if !privileged("transport_misses_are_route_misses") {
        return;
    }
    let relay = EmbeddedRelay::start(1).expect("relay");
    let v = flood(&relay, &["--kind", "transport-miss", "--sources", "50"]);
    assert_eq!(v["kind"], "transport-miss");
    let n = sent(&v);
    wait_received(&relay.backend_metrics, n);
    assert_eq!(relay.metrics.dropped(DropReason::NoRoute), n);
}

/// Valid registrations for fresh keys from spoofed sources: none is
/// accepted, each gets a challenge (protocol v2 return-routability), and no
/// budget is spent.
#[test]
fn fresh_keys_from_spoofed_sources_are_only_challenged() {
    if !privileged("fresh_keys_from_spoofed_sources_are_only_challenged") {
        return;
    }
    let relay = EmbeddedRelay::start(2).expect("relay");
    let v = flood(&relay, &["--kind", "register-fresh", "--keys", "64"]);
    let n = sent(&v);
    assert!(n > 64, "a second round of the pool: {v}");
    wait_received(&relay.backend_metrics, n);
    assert_eq!(relay.metrics.event_count(Event::RegistrationAccepted), 0);
    assert_eq!(relay.metrics.event_count(Event::ChallengeSent), n);
    assert_eq!(relay.metrics.dropped(DropReason::RateLimited), 0);
}

#[test]
fn junk_registrations_are_only_challenged() {
    if !privileged("junk_registrations_are_only_challenged") {
        return;
    }
    let relay = EmbeddedRelay::start(3).expect("relay");
    let victim = PeerKey([0x42; 32]).to_base64();
    for args in [
        vec!["--kind", "register-junk"],
        vec![
            "--kind",
            "register-junk",
            "--victim-key",
            &victim,
            "--src-ip",
            "127.0.0.1",
        ],
    ] {
        let before = relay.backend_metrics.received();
        let challenged = relay.metrics.event_count(Event::ChallengeSent);
        let n = sent(&flood(&relay, &args));
        wait_received(&relay.backend_metrics, before + n);
        // Their cookies are junk too, so the relay never gets as far as the
        // MAC (let alone an X25519): each costs one MAC and a challenge.
        assert_eq!(
            relay.metrics.event_count(Event::ChallengeSent) - challenged,
            n,
            "{args:?}"
        );
    }
    assert_eq!(relay.metrics.event_count(Event::RegistrationAccepted), 0);
}

#[test]
fn initiations_from_a_registered_victim_match_no_responder() {
    if !privileged("initiations_from_a_registered_victim_match_no_responder") {
        return;
    }
    let relay = EmbeddedRelay::start(4).expect("relay");
    let v = flood(
        &relay,
        &[
            "--kind",
            "initiation",
            "--src",
            "127.0.0.1:0",
            "--register-victim",
        ],
    );
    let n = sent(&v);
    let victim = v["victim"]
        .as_str()
        .unwrap_or_else(|| panic!("no victim: {v}"));
    assert!(victim.starts_with("127.0.0.1:"), "{victim}");
    // The victim and its partner registered from real sockets first, each
    // with one challenge round trip (two registrations).
    wait_received(&relay.backend_metrics, 4 + n);
    assert_eq!(relay.metrics.event_count(Event::RegistrationAccepted), 2);
    // Junk spends the victim's junk budget (the relay's default burst, 50),
    // then costs no mac1 work at all; the per-IP bucket is never touched.
    let no_responder = relay.metrics.dropped(DropReason::NoConsentingResponder);
    let shed = relay.metrics.dropped(DropReason::RateLimited);
    assert_eq!(no_responder + shed, n);
    assert!(no_responder >= 50, "{no_responder}");
}
