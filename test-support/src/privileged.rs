//! The rule for tests that need root or a kernel feature (TUN, namespaces,
//! XDP, raw sockets, io_uring): without `LANRAGE_REQUIRE_PRIVILEGED=1` a
//! missing feature skips the test and prints why; with it (CI sets it), the
//! test fails, so nothing CI is meant to run can skip silently.

/// The variable CI sets.
pub const REQUIRE_ENV: &str = "LANRAGE_REQUIRE_PRIVILEGED";

/// Whether privileged tests must run rather than skip.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Prints a skip notice for `test`, or panics when privileged tests are required.
pub fn skip_or_fail(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why} ({REQUIRE_ENV}=1 forbids skipping)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// `Some(value)` when what `test` needs is here, else `None` after
/// [`skip_or_fail`] said why not (`Err`'s text): for
/// `let Some(x) = or_skip(test, …) else { return };`.
pub fn or_skip<T, E: std::fmt::Display>(test: &str, available: Result<T, E>) -> Option<T> {
    match available {
        Ok(value) => Some(value),
        Err(why) => {
            skip_or_fail(test, &why.to_string());
            None
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // /proc/self/status's "Uid:" line: real, effective, saved, filesystem.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
