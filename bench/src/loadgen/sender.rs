//! The pacing sender: one thread sends every pair's A→B packets on schedule,
//! and refreshes registrations while it is at it.
//!
//! With a rate, the schedule is global and exact: packet `g` belongs to pair
//! `g % N` with sequence number `g / N` and is due at `g / (N × rate)` seconds
//! into the phase, so pairs are evenly staggered and every pair sends exactly
//! its count. The thread sleeps until the next packet is due, at least
//! [`MIN_SLEEP`] (so bursts span at most a sleep plus its overshoot, a few
//! tens of microseconds), never spinning, and stops at
//! the count or at the phase's hard time limit, whichever comes first. With
//! rate 0 it round-robins the pairs as fast as it can until the count or the
//! time limit. Send timestamps are taken right before each packet is built.
//! Prebuilt packets of one pair go out in `sendmmsg` batches (see
//! [`super::send_batch`]); a batch never waits for more packets than are due.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use lanrage_proto::wireguard::write_transport_header;

use super::payload::{
    ipv4_udp_template, wire_len, Stamp, INNER_HEADERS_LEN, STAMP_LEN, TRANSPORT_HEADER_LEN,
};
use super::send_batch::SendBatch;
use super::setup::{RegState, BUF_LEN};

/// The shortest sleep between sends. With the timer slack lowered (see
/// [`lower_timer_slack`]) a sleep this short ends within a few microseconds
/// of its deadline; at 250,000 pps about five packets fall due per sleep.
const MIN_SLEEP: Duration = Duration::from_micros(20);

/// Asks the kernel to wake this thread within 1 µs of a sleep's deadline
/// instead of the default 50 µs timer slack, so paced sends stay on
/// schedule without spinning. Best effort: without it pacing is coarser.
pub fn lower_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}

/// How packets are made.
pub enum Packets {
    /// boringtun seals an IPv4/UDP packet per send (A's tunnel per pair).
    Sealed { tunns: Vec<Tunn>, template: Vec<u8> },
    /// A transport header with the receiver index per pair and a counter that
    /// keeps increasing across phases, then the stamp in clear.
    Prebuilt {
        indices: Vec<u32>,
        counters: Vec<u64>,
    },
}

impl Packets {
    pub fn sealed(tunns: Vec<Tunn>, size: usize) -> Self {
        Self::Sealed {
            tunns,
            template: ipv4_udp_template(size),
        }
    }

    pub fn prebuilt(indices: Vec<u32>) -> Self {
        let counters = vec![0; indices.len()];
        Self::Prebuilt { indices, counters }
    }
}

/// Keeps registrations alive during long runs: every peer re-registers once
/// per [`REFRESH_PERIOD`], spread evenly over the period so the relay's
/// per-IP rate limit sees a smooth trickle. Acks are not awaited (the
/// receiver ignores them): a lost refresh is repaired by the next one, long
/// before the relay's 90 s expiry.
pub struct Refresher {
    relay: SocketAddr,
    peers: Vec<(UdpSocket, RegState)>,
    since: Instant,
    done: u64,
}

/// Clients refresh every 20–25 s (docs/protocol.md §2.4).
pub const REFRESH_PERIOD: Duration = Duration::from_secs(20);

impl Refresher {
    /// `peers` are sockets (clones of the peers' own, so the relay sees the
    /// registered endpoint) with their registration state.
    pub fn new(relay: SocketAddr, peers: Vec<(UdpSocket, RegState)>, now: Instant) -> Self {
        Self {
            relay,
            peers,
            since: now,
            done: 0,
        }
    }

    /// Sends the registrations due by `now`, at most 64 per call.
    pub fn poll(&mut self, now: Instant) -> u64 {
        let len = self.peers.len() as u64;
        if len == 0 {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.since).as_secs_f64();
        let due = (elapsed / REFRESH_PERIOD.as_secs_f64() * len as f64) as u64;
        let mut sent = 0;
        while self.done < due && sent < 64 {
            let (socket, reg) = &mut self.peers[(self.done % len) as usize];
            let msg = reg.registration(socket.local_addr().ok());
            // A failed refresh is retried next period; the run goes on.
            let _ = socket.send_to(&msg, self.relay);
            self.done += 1;
            sent += 1;
        }
        sent
    }

    /// Registrations sent so far.
    pub fn sent(&self) -> u64 {
        self.done
    }
}

/// The sending side of a run: A's socket per pair, how to make packets, and
/// an optional refresher. Reused across phases.
pub struct Sender {
    pub sockets: Vec<UdpSocket>,
    pub packets: Packets,
    pub refresher: Option<Refresher>,
    pub size: usize,
}

/// One phase's instructions.
pub struct Plan<'a> {
    pub phase: u32,
    /// Destination per pair (the relay, B's socket, the forwarder, the sink).
    pub dests: &'a [SocketAddr],
    /// Packets per second per pair; 0 = as fast as possible.
    pub rate: u64,
    /// Exact packets per pair, if bounded by count.
    pub per_pair: Option<u64>,
    pub time_limit: Duration,
    /// The shared clock base of send and receive timestamps.
    pub base: Instant,
}

/// Shared with the receiver while a phase runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub done: AtomicBool,
}

/// What one phase sent.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub sent_per_pair: Vec<u64>,
    pub elapsed: Duration,
    pub send_errors: u64,
    pub seal_errors: u64,
}

impl Sender {
    /// Sends one phase; sets `progress.done` when finished.
    pub fn run(&mut self, plan: &Plan<'_>, progress: &Progress) -> SendReport {
        lower_timer_slack();
        let report = self.send(plan, progress);
        progress.done.store(true, Ordering::Release);
        report
    }

    fn send(&mut self, plan: &Plan<'_>, progress: &Progress) -> SendReport {
        let pairs = self.sockets.len() as u64;
        let mut report = SendReport {
            sent_per_pair: vec![0; self.sockets.len()],
            elapsed: Duration::ZERO,
            send_errors: 0,
            seal_errors: 0,
        };
        let total = plan.per_pair.map(|n| n * pairs).unwrap_or(u64::MAX);
        let total_rate = (plan.rate * pairs) as f64;
        let mut buf = vec![0u8; BUF_LEN.max(wire_len(self.size) + 64)];
        let mut batch = SendBatch::default();
        let start = Instant::now();
        let deadline = start + plan.time_limit;
        let mut g: u64 = 0;
        'phase: while g < total {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Some(r) = self.refresher.as_mut() {
                r.poll(now);
            }
            let due = if plan.rate == 0 {
                // As fast as possible: a batch, then check the clock again.
                (g + 256).min(total)
            } else {
                let elapsed = now.duration_since(start).as_secs_f64();
                ((elapsed * total_rate) as u64 + 1).min(total)
            };
            if g >= due {
                self.flush(&mut batch, &mut report, progress);
                let next = start + Duration::from_secs_f64(g as f64 / total_rate);
                // Sleep, never spin: a spinning sender takes a whole core,
                // and on a small machine the relay under test then waits for
                // the scheduler, which shows up as milliseconds of "relay"
                // latency. At high rates this sends short bursts (what was
                // due during MIN_SLEEP), each packet stamped when it is built.
                let wait = next
                    .saturating_duration_since(Instant::now())
                    .max(MIN_SLEEP);
                std::thread::sleep(wait.min(deadline.saturating_duration_since(now)));
                continue;
            }
            while g < due {
                let pair = (g % pairs) as usize;
                let seq = g / pairs;
                g += 1;
                let stamp = Stamp {
                    phase: plan.phase,
                    pair: pair as u32,
                    seq,
                    sent_ns: nanos_since(plan.base),
                };
                if let Packets::Prebuilt { .. } = self.packets {
                    if batch.is_full() || (!batch.is_empty() && batch.pair() != pair) {
                        self.flush(&mut batch, &mut report, progress);
                    }
                    self.queue_prebuilt(pair, &stamp, plan.dests[pair], &mut batch);
                    continue;
                }
                match self.send_sealed(pair, &stamp, plan.dests[pair], &mut buf) {
                    Ok(()) => {
                        report.sent_per_pair[pair] += 1;
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(SendError::Seal) => report.seal_errors += 1,
                    Err(SendError::Io) => report.send_errors += 1,
                }
                // A slow sender must still honour the time limit.
                if g.is_multiple_of(1024) && Instant::now() >= deadline {
                    break 'phase;
                }
            }
        }
        self.flush(&mut batch, &mut report, progress);
        report.elapsed = start.elapsed();
        report
    }

    /// Builds pair's next prebuilt packet into `batch`.
    fn queue_prebuilt(
        &mut self,
        pair: usize,
        stamp: &Stamp,
        dest: SocketAddr,
        batch: &mut SendBatch,
    ) {
        let Packets::Prebuilt { indices, counters } = &mut self.packets else {
            return;
        };
        let counter = counters[pair];
        counters[pair] += 1;
        batch.push(pair, dest, wire_len(self.size), |buf| {
            let header: &mut [u8; TRANSPORT_HEADER_LEN] = (&mut buf[..TRANSPORT_HEADER_LEN])
                .try_into()
                .expect("a datagram holds a transport header");
            write_transport_header(header, indices[pair], counter);
            stamp.write(&mut buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + STAMP_LEN]);
        });
    }

    /// Sends the queued prebuilt packets and accounts for them.
    fn flush(&self, batch: &mut SendBatch, report: &mut SendReport, progress: &Progress) {
        if batch.is_empty() {
            return;
        }
        let (pair, queued) = (batch.pair(), batch.len() as u64);
        let sent = batch.flush(&self.sockets[pair]).unwrap_or(0) as u64;
        report.sent_per_pair[pair] += sent;
        report.send_errors += queued - sent;
        progress.sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// Seals and sends one packet for `pair` (boringtun mode).
    fn send_sealed(
        &mut self,
        pair: usize,
        stamp: &Stamp,
        dest: SocketAddr,
        buf: &mut [u8],
    ) -> Result<(), SendError> {
        let Packets::Sealed { tunns, template } = &mut self.packets else {
            return Err(SendError::Seal);
        };
        stamp.write(&mut template[INNER_HEADERS_LEN..INNER_HEADERS_LEN + STAMP_LEN]);
        let result = match tunns[pair].encapsulate(template, buf) {
            TunnResult::WriteToNetwork(packet) => self.sockets[pair].send_to(packet, dest),
            _ => return Err(SendError::Seal),
        };
        result.map(|_| ()).map_err(|_| SendError::Io)
    }
}

enum SendError {
    /// boringtun had no session to seal with (it queued a handshake instead).
    Seal,
    Io,
}

/// Nanoseconds since `base`, the stamp's clock.
pub fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
