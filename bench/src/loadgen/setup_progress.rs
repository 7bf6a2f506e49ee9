//! What the setup is waiting for, said while it waits, and its deadline.
//!
//! Setup against a relay whose `handshake_rate_limit` is too low for one
//! source IP is slow rather than broken: the relay drops what exceeds the
//! bucket, steps time out and retry, and everything arrives eventually. So
//! that a run never sits silent, a reporter thread prints a line every
//! [`REPORT_EVERY`] while setup runs (how many registrations and handshakes
//! are done; when steps had to be retried or nothing moved, what it is
//! waiting for and the likely cause), and the setup gives up with the same
//! summary once its deadline passes.
//!
//! The setup loop only counts ([`SetupProgress::registered`],
//! [`SetupProgress::handshaken`]) and asks [`SetupProgress::check_deadline`]
//! between steps; how a step talks to the relay is not this module's business.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often the reporter prints while setup runs.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The default `--setup-timeout`: 30 s plus 20 ms per pair (a release build
/// sets up a pair in about a millisecond on loopback).
pub fn default_timeout(pairs: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(20).saturating_mul(pairs as u32)
}

/// Counters shared by the setup loop and the reporter.
pub struct SetupProgress {
    started: Instant,
    deadline: Instant,
    registrations_total: u64,
    handshakes_total: u64,
    /// The address the simulated peers send from (the relay rate-limits per IP).
    source: IpAddr,
    registrations: AtomicU64,
    handshakes: AtomicU64,
    /// Steps that took at least one retry (longer than `slow_after`).
    slow_steps: AtomicU64,
    slow_after: Duration,
    done: AtomicBool,
    /// Wakes the reporter early when setup ends.
    wake: (Mutex<()>, Condvar),
}

/// One look at the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub registrations: u64,
    pub handshakes: u64,
    pub slow_steps: u64,
}

impl SetupProgress {
    /// `pairs` pairs (two registrations and one handshake each) from
    /// `source`; a step longer than `slow_after` is taken to have needed a
    /// retry. Setup must end within `timeout` of `now`.
    pub fn new(
        pairs: usize,
        source: IpAddr,
        slow_after: Duration,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            started: now,
            deadline: now + timeout,
            registrations_total: 2 * pairs as u64,
            handshakes_total: pairs as u64,
            source,
            registrations: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            slow_steps: AtomicU64::new(0),
            slow_after,
            done: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
        }
    }

    /// A registration was acknowledged; the step took `took`.
    pub fn registered(&self, took: Duration) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
        self.step(took);
    }

    /// A handshake completed; the step took `took`.
    pub fn handshaken(&self, took: Duration) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.step(took);
    }

    fn step(&self, took: Duration) {
        if took >= self.slow_after {
            self.slow_steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            registrations: self.registrations.load(Ordering::Relaxed),
            handshakes: self.handshakes.load(Ordering::Relaxed),
            slow_steps: self.slow_steps.load(Ordering::Relaxed),
        }
    }

    /// Fails, with what is done and the likely cause, once `now` is past
    /// the deadline.
    pub fn check_deadline(&self, now: Instant) -> Result<()> {
        if now < self.deadline {
            return Ok(());
        }
        let timeout = self.deadline - self.started;
        let snap = self.snapshot();
        let cause = if snap.slow_steps > 0 {
            self.rate_limit_hint()
        } else {
            "raise --setup-timeout for this many pairs".to_owned()
        };
        bail!(
            "setup gave up after {} s (--setup-timeout): {}; {cause}",
            timeout.as_secs(),
            self.done_text(snap)
        )
    }

    /// The reason to add to a failed setup step's error, if steps were slow.
    pub fn explain_failure(&self) -> Option<String> {
        let snap = self.snapshot();
        (snap.slow_steps > 0)
            .then(|| format!("{}; {}", self.done_text(snap), self.rate_limit_hint()))
    }

    fn done_text(&self, snap: Snapshot) -> String {
        format!(
            "{} of {} registrations acknowledged, {} of {} handshakes completed",
            snap.registrations, self.registrations_total, snap.handshakes, self.handshakes_total
        )
    }

    fn rate_limit_hint(&self) -> String {
        format!(
            "the relay may be rate-limiting {} (raise handshake_rate_limit, docs/load-generator.md)",
            self.source
        )
    }

    /// The line to print at `now`, given the snapshot at the previous line
    /// (`before`): progress, or what it waits for when steps had to be
    /// retried or nothing moved since.
    pub fn line(&self, before: Snapshot, now: Snapshot, at: Instant) -> String {
        let elapsed = at.saturating_duration_since(self.started).as_secs();
        let stalled =
            now.registrations == before.registrations && now.handshakes == before.handshakes;
        if now.slow_steps > before.slow_steps || stalled {
            let missing =
                self.registrations_total - now.registrations.min(self.registrations_total);
            if missing > 0 {
                return format!(
                    "setup: waiting for {missing} of {} registrations to be acknowledged \
                     ({} of {} handshakes completed, {elapsed} s); {}",
                    self.registrations_total,
                    now.handshakes,
                    self.handshakes_total,
                    self.rate_limit_hint()
                );
            }
        }
        format!("setup: {} ({elapsed} s)", self.done_text(now))
    }

    /// Prints [`SetupProgress::line`] to stderr every [`REPORT_EVERY`] until
    /// [`SetupProgress::finish`] (or, as a bound, one period past the deadline).
    pub fn report_until_done(&self) {
        let mut before = self.snapshot();
        let mut next = self.started + REPORT_EVERY;
        let (lock, condvar) = &self.wake;
        let Ok(mut guard) = lock.lock() else {
            return;
        };
        while !self.done.load(Ordering::Acquire) {
            let now = Instant::now();
            if now > self.deadline + REPORT_EVERY {
                return;
            }
            if now >= next {
                let snap = self.snapshot();
                eprintln!("{}", self.line(before, snap, now));
                before = snap;
                next = now + REPORT_EVERY;
                continue;
            }
            guard = match condvar.wait_timeout(guard, next - now) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            };
        }
    }

    /// Ends the reporter.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
        let (lock, condvar) = &self.wake;
        // Taking the lock orders this with the reporter's check of `done`.
        drop(lock.lock());
        condvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SLOW: Duration = Duration::from_millis(500);

    fn progress(pairs: usize, t0: Instant) -> SetupProgress {
        SetupProgress::new(
            pairs,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            SLOW,
            Duration::from_secs(60),
            t0,
        )
    }

    #[test]
    fn steady_progress_is_reported_plainly() {
        let t0 = Instant::now();
        let p = progress(1000, t0);
        let before = p.snapshot();
        for _ in 0..10 {
            p.registered(Duration::from_millis(1));
        }
        p.handshaken(Duration::from_millis(2));
        let line = p.line(before, p.snapshot(), t0 + Duration::from_secs(4));
        assert_eq!(
            line,
            "setup: 10 of 2000 registrations acknowledged, 1 of 1000 handshakes completed (4 s)"
        );
    }

    #[test]
    fn retried_steps_or_a_stall_say_what_is_awaited_and_why() {
        let t0 = Instant::now();
        let p = progress(1000, t0);
        let before = p.snapshot();
        p.registered(Duration::from_millis(1));
        p.registered(SLOW);
        let want = "setup: waiting for 1998 of 2000 registrations to be acknowledged \
                    (0 of 1000 handshakes completed, 2 s); the relay may be rate-limiting \
                    127.0.0.1 (raise handshake_rate_limit, docs/load-generator.md)";
        let at = t0 + Duration::from_secs(2);
        assert_eq!(p.line(before, p.snapshot(), at), want);
        // Nothing moved since the last line: still waiting.
        let snap = p.snapshot();
        assert!(p
            .line(snap, snap, at)
            .starts_with("setup: waiting for 1998 of 2000"));
    }

    #[test]
    fn the_deadline_gives_up_with_what_was_done_and_the_likely_cause() {
        let t0 = Instant::now();
        let p = progress(3, t0);
        assert!(p.check_deadline(t0 + Duration::from_secs(59)).is_ok());
        p.registered(Duration::from_millis(1));
        let err = p
            .check_deadline(t0 + Duration::from_secs(60))
            .expect_err("past the deadline");
        assert_eq!(
            err.to_string(),
            "setup gave up after 60 s (--setup-timeout): 1 of 6 registrations acknowledged, \
             0 of 3 handshakes completed; raise --setup-timeout for this many pairs"
        );
        assert_eq!(p.explain_failure(), None);
        p.registered(SLOW);
        let err = p
            .check_deadline(t0 + Duration::from_secs(61))
            .expect_err("past the deadline");
        assert!(
            err.to_string()
                .ends_with("the relay may be rate-limiting 127.0.0.1 (raise handshake_rate_limit, docs/load-generator.md)"),
            "{err}"
        );
        assert!(p.explain_failure().is_some());
    }

    #[test]
    fn default_timeout_grows_with_the_pairs() {
        assert_eq!(default_timeout(0), Duration::from_secs(30));
        assert_eq!(default_timeout(1000), Duration::from_secs(50));
    }
}
