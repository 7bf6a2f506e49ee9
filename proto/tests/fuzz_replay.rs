//! The cargo-fuzz targets' checks (`proto/fuzz/checks/`), on stable: every
//! input committed under `proto/fuzz/regressions/<target>/`, then random
//! inputs from fixed seeds, some steered into each parser's deeper paths.
//! `LANRAGE_FUZZ_CASES` sets the number of random inputs per target
//! (default 20000).

#[path = "../fuzz/checks/control_message.rs"]
mod control_message;
#[path = "../fuzz/checks/demux_classify.rs"]
mod demux_classify;
#[path = "../fuzz/checks/registration_verify.rs"]
mod registration_verify;
#[path = "../fuzz/checks/stun_message.rs"]
mod stun_message;
#[path = "../fuzz/checks/wireguard_message.rs"]
mod wireguard_message;

use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use lanrage_test_support::fuzz_replay::{committed_inputs, env_number, SplitMix64};

fn cases() -> u64 {
    env_number("LANRAGE_FUZZ_CASES").unwrap_or(20_000)
}

/// SplitMix64 bytes for one seed: up to 1600 long, and for two seeds in
/// three, headed like a WireGuard or LANrage message (types 1–4, 1–6).
fn random_bytes(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed, 0xF022);
    let mut next = || rng.next_u64();
    let steer = next() % 3;
    // Lengths near the fixed sizes are the interesting ones.
    let len = match next() % 4 {
        0 => (next() % 1600) as usize,
        _ => [24, 32, 48, 59, 64, 92, 100, 148][(next() % 8) as usize] + (next() % 3) as usize,
    };
    let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    match steer {
        0 if bytes.len() >= 4 => {
            bytes[0] = 1 + (next() % 4) as u8;
            bytes[1..4].fill(0);
        }
        1 if bytes.len() >= 8 => {
            bytes[..8].copy_from_slice(&[b'L', b'R', b'G', b'!', 2, 1 + (next() % 6) as u8, 0, 0]);
        }
        _ => {}
    }
    bytes
}

/// Every file under `proto/fuzz/regressions/<target>/`, sorted.
fn committed(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let inputs = committed_inputs(&dir);
    println!("{target}: {} committed inputs", inputs.len());
    inputs
}

/// Runs `check` on every committed input, then on the random ones; a panic
/// names the input.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let inputs = committed(target)
        .into_iter()
        .map(|(path, bytes)| (path.display().to_string(), bytes))
        .chain((0..cases()).map(|seed| (format!("random seed {seed}"), random_bytes(seed))));
    for (name, bytes) in inputs {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "{target} failed on {name} ({} bytes {bytes:02x?}): {message}",
                bytes.len()
            );
        }
    }
}

#[test]
fn wireguard_message_inputs() {
    replay("wireguard_message", wireguard_message::check);
}

#[test]
fn control_message_inputs() {
    replay("control_message", control_message::check);
}

#[test]
fn demux_classify_inputs() {
    replay("demux_classify", demux_classify::check);
}

/// Decoded the way `fuzz_target!` decodes a typed input; bytes that decode
/// to nothing are skipped there too.
#[test]
fn registration_verify_inputs() {
    replay("registration_verify", |bytes| {
        if let Ok(input) = registration_verify::Input::arbitrary_take_rest(Unstructured::new(bytes))
        {
            registration_verify::check(input);
        }
    });
}

#[test]
fn stun_message_inputs() {
    replay("stun_message", |bytes| {
        stun_message::check(bytes);
        // Random bytes rarely carry the magic cookie: steer a copy into STUN.
        if bytes.len() >= 20 {
            let mut steered = bytes.to_vec();
            steered[0] &= 0x01;
            steered[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            let body = ((steered.len() - 20) & !3) as u16;
            steered[2..4].copy_from_slice(&body.to_be_bytes());
            steered.truncate(20 + usize::from(body));
            stun_message::check(&steered);
        }
    });
}
