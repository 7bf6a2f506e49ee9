//! Sequences of datagrams from many sources through `Router::handle` on a
//! virtual clock, every invariant checked after every step. The check is
//! `relay/fuzz/checks/router_sequences.rs`, which the stable test
//! `relay/tests/router_sequences.rs` runs too.
#![no_main]

// Shared with the stable test, which uses more of it.
#[allow(dead_code)]
#[path = "../checks/router_sequences.rs"]
mod router_sequences;

use std::sync::atomic::{AtomicU8, Ordering};

use libfuzzer_sys::fuzz_target;

/// libFuzzer treats this section as more coverage counters (its "extra
/// counters", cleared before each input): one per state the check reports,
/// so an input that reaches a new state is kept even when it runs no new code.
#[used]
#[link_section = "__libfuzzer_extra_counters"]
static STATES: [AtomicU8; router_sequences::FEATURES] =
    [const { AtomicU8::new(0) }; router_sequences::FEATURES];

fuzz_target!(|input: router_sequences::Input| {
    let mut reached = Vec::new();
    // Bugs found and not fixed yet stop a run without failing it, so the
    // fuzzer looks for others (router_sequences::UNFIXED).
    let result = router_sequences::tolerating_known_bugs(router_sequences::run_observed(
        &input,
        &mut reached,
    ));
    for feature in reached {
        let counter = &STATES[usize::from(feature)];
        counter.store(
            counter.load(Ordering::Relaxed).saturating_add(1),
            Ordering::Relaxed,
        );
    }
    if let Err(violation) = result {
        panic!("{violation}");
    }
});
