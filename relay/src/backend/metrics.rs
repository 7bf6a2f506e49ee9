//! What only the IO backends count: datagrams received, sends that failed,
//! GSO, and io_uring's queues. The router counts what it decided
//! (`lanrage_relay_core::metrics::Metrics`); these are rendered after it, as
//! a [`MetricsSource`] the relay registers at start. One [`BackendMetrics`]
//! is shared by every worker, sharded per worker thread like the router's
//! counters, so workers never write one cache line.

use std::fmt::Write as _;

use lanrage_relay_core::metrics::{MetricsSource, ShardedCounters};

/// One backend counter; each is one Prometheus counter of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Datagrams received on the socket (before anything else is decided).
    Received,
    /// Datagrams not sent: the kernel refused the send, the send buffer was
    /// full, or the destination's address family is unreachable from the
    /// socket.
    SendErrors,
    /// Of those, datagrams not sent because the socket send buffer (or a
    /// queue below it) was full (`EAGAIN`, `ENOBUFS`).
    SendBufferFull,
    /// Larger than the receive buffer (2048 bytes; WireGuard's largest is
    /// 1420 + 32), truncated by the kernel, dropped unread.
    Oversized,
    /// Received but not handed to the router: a source address of an
    /// unsupported family, or (io_uring) a completion that could not be read.
    ReceiveDiscarded,
    /// Sends that carried two or more datagrams as UDP GSO segments.
    GsoSends,
    /// GSO sends the kernel refused (resent unsegmented; `transmit.rs`).
    GsoRefused,
    /// io_uring: the multishot receive ended and was armed again.
    UringRecvRearms,
    /// io_uring: every provided receive buffer was in use (`ENOBUFS`).
    UringRecvBuffersExhausted,
    /// io_uring: the submission queue was full (submitted early, or backlogged).
    UringSqFull,
    /// io_uring: completions the kernel dropped (completion queue overflow).
    UringCqOverflow,
}

/// Every counter with its metric name and help, in rendering order.
const COUNTERS: [(Counter, &str, &str); 11] = [
    (
        Counter::Received,
        "lanrage_relay_received_total",
        "Datagrams received on the UDP sockets.",
    ),
    (
        Counter::SendErrors,
        "lanrage_relay_send_errors_total",
        "Datagrams not sent: refused by the kernel, a full send buffer, or an unreachable \
         address family.",
    ),
    (
        Counter::SendBufferFull,
        "lanrage_relay_send_buffer_full_total",
        "Datagrams not sent because the socket send buffer (or a queue below it) was full; \
         also in send_errors_total.",
    ),
    (
        Counter::Oversized,
        "lanrage_relay_receive_oversized_total",
        "Datagrams larger than the receive buffer (2048 bytes), truncated by the kernel and \
         dropped unread.",
    ),
    (
        Counter::ReceiveDiscarded,
        "lanrage_relay_receive_discarded_total",
        "Datagrams a backend received but could not hand to the router (unsupported address \
         family, unreadable io_uring completion).",
    ),
    (
        Counter::GsoSends,
        "lanrage_relay_gso_sends_total",
        "Sends that carried several datagrams as UDP GSO segments.",
    ),
    (
        Counter::GsoRefused,
        "lanrage_relay_gso_refused_total",
        "GSO sends the kernel refused (resent unsegmented; GSO then stays off for that \
         destination).",
    ),
    (
        Counter::UringRecvRearms,
        "lanrage_relay_uring_recv_rearms_total",
        "io_uring: times the multishot receive ended and was armed again.",
    ),
    (
        Counter::UringRecvBuffersExhausted,
        "lanrage_relay_uring_recv_buffers_exhausted_total",
        "io_uring: times every receive buffer was in use (datagrams waited in the socket).",
    ),
    (
        Counter::UringSqFull,
        "lanrage_relay_uring_sq_full_total",
        "io_uring: times the submission queue was full (sends submitted early or backlogged).",
    ),
    (
        Counter::UringCqOverflow,
        "lanrage_relay_uring_cq_overflow_total",
        "io_uring: completions the kernel dropped because the completion queue overflowed.",
    ),
];

/// The backends' counters, shared by all workers.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    counters: ShardedCounters<{ COUNTERS.len() }>,
}

impl BackendMetrics {
    #[inline]
    pub fn record(&self, counter: Counter) {
        self.record_n(counter, 1);
    }

    #[inline]
    pub fn record_n(&self, counter: Counter, n: u64) {
        self.counters.add(counter as usize, n);
    }

    /// The counter summed over all workers.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters.get(counter as usize)
    }

    pub fn received(&self) -> u64 {
        self.get(Counter::Received)
    }

    pub fn send_errors(&self) -> u64 {
        self.get(Counter::SendErrors)
    }
}

impl MetricsSource for BackendMetrics {
    fn render_prometheus(&self, out: &mut String) {
        for (counter, name, help) in COUNTERS {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", self.get(counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_declaration_order() {
        for (i, (counter, _, _)) in COUNTERS.iter().enumerate() {
            assert_eq!(*counter as usize, i);
        }
    }

    #[test]
    fn every_counter_renders_once_as_a_typed_counter() {
        let metrics = BackendMetrics::default();
        metrics.record_n(Counter::SendErrors, 3);
        let mut text = String::new();
        metrics.render_prometheus(&mut text);
        for (_, name, _) in COUNTERS {
            assert_eq!(text.matches(&format!("# TYPE {name} counter\n")).count(), 1);
            assert_eq!(text.matches(&format!("\n{name} ")).count(), 1, "{name}");
        }
        assert!(
            text.contains("\nlanrage_relay_send_errors_total 3\n"),
            "{text}"
        );
    }

    #[test]
    fn shards_sum_across_threads() {
        let metrics = std::sync::Arc::new(BackendMetrics::default());
        let threads: Vec<_> = (0..3)
            .map(|worker| {
                let metrics = std::sync::Arc::clone(&metrics);
                std::thread::spawn(move || {
                    lanrage_relay_core::metrics::bind_thread_to_shard(worker);
                    for _ in 0..1000 {
                        metrics.record(Counter::Received);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        assert_eq!(metrics.received(), 3000);
    }
}
