//! `WgMessage::parse` on arbitrary datagrams: never panics, and every accessor
//! of an accepted message stays in bounds.
//! The check is `checks/wireguard_message.rs`, which the stable test
//! `proto/tests/fuzz_replay.rs` runs too.
#![no_main]

#[path = "../checks/wireguard_message.rs"]
mod wireguard_message;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wireguard_message::check(data));
