//! The STUN parsers on arbitrary datagrams. The check is
//! `checks/stun_message.rs`, which the stable test `proto/tests/fuzz_replay.rs`
//! runs too.
#![no_main]

#[path = "../checks/stun_message.rs"]
mod stun_message;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stun_message::check(data));
