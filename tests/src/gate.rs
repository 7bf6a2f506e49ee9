//! Which relay backends a test can run on here. Whether a test then skips or
//! fails is `lanrage_test_support::privileged`'s rule (a dev-dependency: this
//! crate's library is a dependency of the shipped bench tools, so it only
//! reports why a backend is unavailable).

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

    /// The backend if it can run here, or why not (for
    /// `lanrage_test_support::privileged::or_skip`).
    pub fn available(self) -> Result<Self, String> {
        match self {
            Backend::Epoll => Ok(self),
            Backend::IoUring => lanrage_relay::backend::io_uring_available()
                .map(|()| self)
                .map_err(|why| format!("{self:?} backend unavailable: {why}")),
        }
    }
}
