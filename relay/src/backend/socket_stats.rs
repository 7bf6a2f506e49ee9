//! The kernel's own counters for the workers' UDP sockets, read at scrape
//! time: datagrams the kernel dropped before the relay could read them (a full
//! receive buffer), and how full each receive buffer is.
//!
//! A datagram that arrives while a worker's receive buffer is full is dropped
//! by the kernel, and the relay never sees it: no router counter can count it.
//! The kernel counts it per socket (`sk_drops`, the `drops` column of
//! `/proc/net/udp`, the `d` of `ss -m`), and this module exposes that count.
//!
//! How it is read, and why: `getsockopt(SOL_SOCKET, SO_MEMINFO)` (Linux 4.12)
//! on each worker's socket when `/metrics` is scraped, not the `SO_RXQ_OVFL`
//! control message. `SO_RXQ_OVFL` would make the kernel attach the drop count
//! to every received datagram, so both receive paths would pay for it per
//! datagram: control buffers for every `recvmmsg` slot in the epoll backend,
//! control space in each of the 4096 provided buffers and a cmsg walk per
//! completion in the io_uring backend. Worse, the count would only be as
//! fresh as the last datagram the worker read, so a worker that is stuck or
//! starved (the case the metric exists for) would report a stale number.
//! `SO_MEMINFO` costs one system call per worker per scrape, touches neither
//! backend's hot path, works the same for both (it needs only the socket),
//! and reads the very counter `/proc/net/udp` shows, current even while the
//! worker is stopped.

use std::fmt::Write as _;
use std::io;
use std::mem;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use lanrage_relay_core::metrics::MetricsSource;

/// Counters the kernel keeps for one socket (`sk_get_meminfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// Bytes queued for reading now, as the kernel accounts them (the
    /// buffers' true size, not only the payload): `SK_MEMINFO_RMEM_ALLOC`.
    pub receive_queued: u32,
    /// The receive buffer the kernel granted: `SK_MEMINFO_RCVBUF`, twice the
    /// `SO_RCVBUF` asked for or twice `net.core.rmem_max`, whichever is less.
    pub receive_buffer: u32,
    /// Datagrams dropped at this socket since it was created, wrapping at
    /// 2^32: `SK_MEMINFO_DROPS`.
    pub drops: u32,
}

/// Reads a socket's [`MemInfo`] with `SO_MEMINFO`.
pub fn meminfo(socket: &impl AsFd) -> io::Result<MemInfo> {
    let mut values = [0u32; SK_MEMINFO_VARS];
    let mut len = mem::size_of_val(&values) as libc::socklen_t;
    // SAFETY: `values` is a writable array of `len` bytes that outlives the
    // call; the kernel writes at most `len` bytes and stores the length it
    // wrote in `len`. The fd is borrowed, so it is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            values.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let words = len as usize / mem::size_of::<u32>();
    if words <= SK_MEMINFO_DROPS {
        return Err(io::Error::other(format!(
            "SO_MEMINFO returned {words} values, without the drop count (index {SK_MEMINFO_DROPS})"
        )));
    }
    Ok(MemInfo {
        receive_queued: values[libc::SK_MEMINFO_RMEM_ALLOC as usize],
        receive_buffer: values[libc::SK_MEMINFO_RCVBUF as usize],
        drops: values[SK_MEMINFO_DROPS],
    })
}

/// The workers' sockets, rendered as per-worker metrics on every scrape.
pub struct SocketStats {
    workers: Vec<WorkerSocket>,
}

struct WorkerSocket {
    /// A duplicate of the worker's socket fd: reading through it can't race
    /// with the worker closing its own and the number being reused for some
    /// other file. (The relay exits when its workers stop, so the duplicate
    /// doesn't keep a stopped worker's socket in the `SO_REUSEPORT` group.)
    socket: UdpSocket,
    drops: Mutex<Widened>,
    warned: AtomicBool,
}

impl SocketStats {
    /// Duplicates the fds of `sockets` (one per worker, in worker order).
    /// Logs once if this kernel can't report socket drops; the metrics are
    /// then left out rather than shown as a misleading 0.
    pub fn new(sockets: &[UdpSocket]) -> io::Result<Self> {
        let workers = sockets
            .iter()
            .map(|socket| {
                Ok(WorkerSocket {
                    socket: socket.try_clone()?,
                    drops: Mutex::new(Widened::default()),
                    warned: AtomicBool::new(false),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        if let Some(first) = workers.first() {
            if let Err(e) = meminfo(&first.socket) {
                tracing::warn!(
                    error = %e,
                    "cannot read the kernel's receive drop counters (SO_MEMINFO needs Linux 4.12); \
                     lanrage_relay_socket_* metrics are left out, see the drops column of /proc/net/udp"
                );
                first.warned.store(true, Ordering::Relaxed);
            }
        }
        Ok(Self { workers })
    }

    /// Each worker's counters now: the drop count widened to 64 bits, or
    /// `None` for a worker whose socket can't be read.
    pub fn read(&self) -> Vec<Option<(u64, MemInfo)>> {
        self.workers.iter().map(WorkerSocket::read).collect()
    }
}

impl WorkerSocket {
    fn read(&self) -> Option<(u64, MemInfo)> {
        match meminfo(&self.socket) {
            Ok(info) => {
                let mut drops = self.drops.lock().unwrap_or_else(PoisonError::into_inner);
                Some((drops.update(info.drops), info))
            }
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read a worker socket's drop counter");
                }
                None
            }
        }
    }
}

impl MetricsSource for SocketStats {
    fn render_prometheus(&self, out: &mut String) {
        let samples: Vec<Sample> = self
            .read()
            .into_iter()
            .enumerate()
            .filter_map(|(worker, read)| {
                read.map(|(drops, info)| Sample {
                    worker,
                    drops,
                    info,
                })
            })
            .collect();
        if samples.is_empty() {
            return;
        }
        for family in FAMILIES {
            let name = family.name;
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for sample in &samples {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{}\"}} {}",
                    sample.worker,
                    (family.value)(sample)
                );
            }
        }
    }
}

/// One worker's reading at a scrape.
struct Sample {
    worker: usize,
    drops: u64,
    info: MemInfo,
}

/// One metric family, with one sample per worker.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Sample) -> u64,
}

const FAMILIES: [Family; 3] = [
    Family {
        name: "lanrage_relay_socket_receive_drops_total",
        kind: "counter",
        help: "Datagrams the kernel dropped at a worker's UDP socket before the relay read \
               them, mostly because its receive buffer was full (SO_MEMINFO, as in \
               /proc/net/udp).",
        value: |s| s.drops,
    },
    Family {
        name: "lanrage_relay_socket_receive_queue_bytes",
        kind: "gauge",
        help: "Bytes waiting in a worker's receive buffer, as the kernel accounts them.",
        value: |s| u64::from(s.info.receive_queued),
    },
    Family {
        name: "lanrage_relay_socket_receive_buffer_bytes",
        kind: "gauge",
        help: "A worker's receive buffer size as the kernel granted it: twice \
               socket.recv_buffer_bytes or twice net.core.rmem_max, whichever is less.",
        value: |s| u64::from(s.info.receive_buffer),
    },
];

/// A wrapping 32-bit kernel counter widened into a 64-bit one, assuming fewer
/// than 2^32 increments between two reads (at a million drops per second,
/// over an hour between scrapes).
#[derive(Debug, Default)]
struct Widened {
    last: u32,
    total: u64,
}

impl Widened {
    fn update(&mut self, raw: u32) -> u64 {
        self.total += u64::from(raw.wrapping_sub(self.last));
        self.last = raw;
        self.total
    }
}

/// `SO_MEMINFO` from `asm-generic/socket.h`; the `libc` crate doesn't export
/// it for Linux. sparc and parisc number their socket options differently.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_MEMINFO: libc::c_int = 0x0039;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_MEMINFO: libc::c_int = 55;

/// Index of the drop count in `SO_MEMINFO`'s array (`linux/sock_diag.h`).
const SK_MEMINFO_DROPS: usize = libc::SK_MEMINFO_DROPS as usize;
/// `SK_MEMINFO_VARS`: the array's length in every kernel that has `SO_MEMINFO`.
const SK_MEMINFO_VARS: usize = SK_MEMINFO_DROPS + 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::bind_udp;
    use crate::config::SocketConfig;
    use std::time::Duration;

    #[test]
    fn widened_counter_survives_the_kernel_s_wrap() {
        let mut w = Widened::default();
        assert_eq!(w.update(0), 0);
        assert_eq!(w.update(10), 10);
        assert_eq!(w.update(10), 10);
        assert_eq!(w.update(u32::MAX), u64::from(u32::MAX));
        assert_eq!(w.update(4), u64::from(u32::MAX) + 5);
    }

    /// A socket nobody reads, with the smallest buffer the config allows,
    /// overflows: every datagram sent is either still queued or counted as
    /// dropped, and the rendered metric is that count.
    #[test]
    fn an_unread_socket_s_overflow_is_counted_and_rendered() {
        const SENT: usize = 200;
        let config = SocketConfig {
            recv_buffer_bytes: 4096,
            ..SocketConfig::default()
        };
        let relay = bind_udp("127.0.0.1:0".parse().expect("addr"), &config).expect("bind");
        let addr = relay.local_addr().expect("addr");
        let stats = SocketStats::new(&[relay.try_clone().expect("dup")]).expect("stats");
        assert_eq!(meminfo(&relay).expect("meminfo").drops, 0);

        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        for i in 0..SENT {
            sender.send_to(&[i as u8; 100], addr).expect("send");
        }
        // Loopback delivers in softirq context, normally before `send_to`
        // returns; if ksoftirqd runs it later, the blocking reads below wait
        // for it (bounded: one datagram or 50 ms per round).
        relay.set_nonblocking(false).expect("blocking");
        relay
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut read = 0;
        let mut buf = [0u8; 2048];
        let mut drops = 0;
        for _ in 0..SENT * 2 {
            if relay.recv_from(&mut buf).is_ok() {
                read += 1;
            }
            drops = meminfo(&relay).expect("meminfo").drops as usize;
            if read + drops == SENT {
                break;
            }
        }
        assert_eq!(read + drops, SENT, "read {read}, dropped {drops}");
        assert!(drops > SENT / 2, "an 8 KiB buffer held {read} datagrams");

        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(
            text.contains(&format!(
                "lanrage_relay_socket_receive_drops_total{{worker=\"0\"}} {drops}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lanrage_relay_socket_receive_buffer_bytes gauge\n"),
            "{text}"
        );
        let info = meminfo(&relay).expect("meminfo");
        assert_eq!(info.receive_queued, 0, "everything was read");
        assert!(info.receive_buffer >= 8192, "{info:?}");
    }
}
