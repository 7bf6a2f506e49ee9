//! What the party service did, counted: every refusal has a reason, and the
//! reasons a join attempt's answer hides are told here (to the operator).

use std::fmt::Write as _;

/// Why a join was refused. The member only ever hears `JoinRefused`; these
/// tell the operator which it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinRefusal {
    /// No code with that secret (a typo that passed the check, a guess, or a
    /// revoked code).
    Unknown,
    Expired,
    UsedUp,
}

impl JoinRefusal {
    pub const ALL: [JoinRefusal; 3] = [Self::Unknown, Self::Expired, Self::UsedUp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
        }
    }
}

/// Counters since the service was opened. A snapshot, from
/// [`crate::PartyService::counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartyCounters {
    /// Batches committed (one fsync each).
    pub batches: u64,
    /// Batches the database failed (an op's or the commit's I/O error, disk
    /// full): rolled back whole, every op in them answered `Storage`.
    pub commit_failures: u64,
    pub created: u64,
    pub joined: u64,
    /// Joins by a key already in the party (retries): answered, nothing changed.
    pub rejoined: u64,
    pub left: u64,
    pub kicked: u64,
    pub renamed: u64,
    pub closed: u64,
    pub invited: u64,
    pub revoked: u64,
    /// Join attempts refused for a bad code, by [`JoinRefusal`] (indexed
    /// in the order of [`JoinRefusal::ALL`]).
    pub join_refused: [u64; 3],
    /// Join attempts refused by the per-source rate limit.
    pub join_rate_limited_source: u64,
    /// Join attempts refused by the total rate limit.
    pub join_rate_limited_total: u64,
    /// Other refusals (not a member, not the owner, full, bad name, …).
    pub refused_other: u64,
    /// Addresses reservations dropped because a party had too many.
    pub reservations_evicted: u64,
    /// Sources in the join rate-limit table now.
    pub rate_limit_sources: u64,
    /// Sources evicted from the full rate-limit table (since start).
    pub rate_limit_evictions: u64,
}

impl PartyCounters {
    pub fn join_refused(&self, reason: JoinRefusal) -> u64 {
        self.join_refused[reason as usize]
    }

    pub(crate) fn count_refusal(&mut self, reason: JoinRefusal) {
        self.join_refused[reason as usize] += 1;
    }

    /// Appends the counters in the Prometheus text format, as
    /// `lanrage_relay_party_*` (for the relay's metrics endpoint).
    pub fn render_prometheus(&self, out: &mut String) {
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP lanrage_relay_party_{name} {help}");
            let _ = writeln!(out, "# TYPE lanrage_relay_party_{name} counter");
            let _ = writeln!(out, "lanrage_relay_party_{name} {value}");
        };
        counter("batches_total", "Party batches committed.", self.batches);
        counter(
            "commit_failures_total",
            "Party batches whose commit failed.",
            self.commit_failures,
        );
        counter("created_total", "Parties created.", self.created);
        counter("joined_total", "Members joined.", self.joined);
        counter("rejoined_total", "Retried joins of members.", self.rejoined);
        counter("left_total", "Members left.", self.left);
        counter("kicked_total", "Members kicked.", self.kicked);
        counter("renamed_total", "Party or member renames.", self.renamed);
        counter("closed_total", "Parties closed.", self.closed);
        counter(
            "invited_total",
            "Join codes issued by invite.",
            self.invited,
        );
        counter("revoked_total", "Join codes revoked.", self.revoked);
        counter(
            "refused_other_total",
            "Party operations refused for other reasons.",
            self.refused_other,
        );
        counter(
            "reservations_evicted_total",
            "Address reservations dropped at the per-party bound.",
            self.reservations_evicted,
        );
        counter(
            "rate_limit_evictions_total",
            "Sources evicted from the full join rate-limit table.",
            self.rate_limit_evictions,
        );
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_party_join_refused_total Join attempts refused, by reason."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_party_join_refused_total counter");
        for reason in JoinRefusal::ALL {
            let _ = writeln!(
                out,
                "lanrage_relay_party_join_refused_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.join_refused(reason)
            );
        }
        for (limit, value) in [
            ("source", self.join_rate_limited_source),
            ("total", self.join_rate_limited_total),
        ] {
            let _ = writeln!(
                out,
                "lanrage_relay_party_join_refused_total{{reason=\"rate_limited_{limit}\"}} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP lanrage_relay_party_rate_limit_sources Sources in the join rate-limit table."
        );
        let _ = writeln!(out, "# TYPE lanrage_relay_party_rate_limit_sources gauge");
        let _ = writeln!(
            out,
            "lanrage_relay_party_rate_limit_sources {}",
            self.rate_limit_sources
        );
    }
}
