//! Which relay backends a test can run on here, and the skip-or-fail rule for
//! tests that need kernel features: without `LANRAGE_REQUIRE_PRIVILEGED=1` a
//! missing feature skips the test (printing why); with it, the test fails.

/// A relay data-plane backend, as the config's `backend` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    IoUring,
}

impl Backend {
    /// The config line selecting this backend (no fallback: `io_uring` fails
    /// the start if unavailable, so a test can't silently run on epoll).
    pub fn yaml(self) -> &'static str {
        match self {
            Backend::Epoll => "backend: epoll\n",
            Backend::IoUring => "backend: io_uring\n",
        }
    }

    /// The backend's name in the relay's logs.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
        }
    }

    /// The backend if it can run here; `None` means skip (already printed).
    /// Panics instead of skipping under `LANRAGE_REQUIRE_PRIVILEGED=1`.
    pub fn available(self, test: &str) -> Option<Self> {
        let status = match self {
            Backend::Epoll => Ok(()),
            Backend::IoUring => lanrage_relay::backend::io_uring_available(),
        };
        match status {
            Ok(()) => Some(self),
            Err(why) => {
                skip_or_fail(test, &format!("{self:?} backend unavailable: {why}"));
                None
            }
        }
    }
}

/// Whether privileged tests must run (CI) rather than skip.
pub fn privileged_required() -> bool {
    std::env::var("LANRAGE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Prints a skip notice, or panics when privileged tests are required.
pub fn skip_or_fail(test: &str, why: &str) {
    if privileged_required() {
        panic!("{test}: {why} (LANRAGE_REQUIRE_PRIVILEGED=1 forbids skipping)");
    }
    eprintln!("SKIPPED {test}: {why}");
}
