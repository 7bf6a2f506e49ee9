//! Registrations, two ways. Raw bytes: parse, then verify under fixed keys,
//! never panicking. Structured (via `arbitrary`): seal, parse and verify must give
//! the registration back, and flipping any one byte must make parse or verify fail.
//! The check is `checks/registration_verify.rs`, which the stable test
//! `proto/tests/fuzz_replay.rs` runs too.
#![no_main]

#[path = "../checks/registration_verify.rs"]
mod registration_verify;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: registration_verify::Input<'_>| registration_verify::check(input));
