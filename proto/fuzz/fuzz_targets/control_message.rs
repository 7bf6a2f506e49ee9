//! `ControlMessage::parse` on arbitrary datagrams, then `verify` of whatever
//! parsed, under fixed session keys: never panics, and an accepted unknown-session
//! hint re-encodes to the same bytes.
//! The check is `checks/control_message.rs`, which the stable test
//! `proto/tests/fuzz_replay.rs` runs too.
#![no_main]

#[path = "../checks/control_message.rs"]
mod control_message;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| control_message::check(data));
