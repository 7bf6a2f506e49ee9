//! `classify` on arbitrary datagrams: never panics, and agrees with the parsers.
//! The check is `checks/demux_classify.rs`, which the stable test
//! `proto/tests/fuzz_replay.rs` runs too.
#![no_main]

#[path = "../checks/demux_classify.rs"]
mod demux_classify;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| demux_classify::check(data));
