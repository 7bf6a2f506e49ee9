//! A delaying UDP forwarder, because this kernel has no netem: it listens on
//! one address and forwards to an upstream (a relay), with one upstream
//! socket per client source so the relay still tells clients apart, and
//! holds every datagram, both ways, for a delay that can change at run time.
//!
//! Bounded: it stops when asked, when dropped, or after [`MAX_LIFETIME`];
//! it holds at most [`MAX_QUEUED`] datagrams (more are dropped) and serves
//! at most [`MAX_CLIENTS`] sources.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::netns::Netns;

pub const MAX_LIFETIME: Duration = Duration::from_secs(20 * 60);
pub const MAX_QUEUED: usize = 10_000;
pub const MAX_CLIENTS: usize = 64;

pub struct DelayForwarder {
    delay_micros: Arc<AtomicU64>,
    jitter_micros: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayForwarder {
    /// Listens on `listen` inside `ns` and forwards to `upstream`.
    pub fn start(ns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> Result<Self> {
        let front = ns.udp_socket(listen)?;
        front.set_nonblocking(true)?;
        // Upstream sockets are made in the namespace up front: the thread
        // that forwards doesn't enter it.
        let mut pool = Vec::with_capacity(MAX_CLIENTS);
        for _ in 0..MAX_CLIENTS {
            let socket = ns.udp_socket(SocketAddr::new(listen.ip(), 0))?;
            socket.set_nonblocking(true)?;
            pool.push(socket);
        }
        let delay_micros = Arc::new(AtomicU64::new(0));
        let jitter_micros = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (delay, jitter, stop) = (
                Arc::clone(&delay_micros),
                Arc::clone(&jitter_micros),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || forward(front, pool, upstream, &delay, &jitter, &stop))
        };
        Ok(Self {
            delay_micros,
            jitter_micros,
            stop,
            thread: Some(thread),
        })
    }

    /// The one-way delay added from now on, each way.
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_micros.store(micros, Ordering::Relaxed);
    }

    /// From now on each datagram waits a further uniform random `[0, jitter]`
    /// (so datagrams may also be reordered, as on a jittery path).
    pub fn set_jitter(&self, jitter: Duration) {
        let micros = u64::try_from(jitter.as_micros()).unwrap_or(u64::MAX);
        self.jitter_micros.store(micros, Ordering::Relaxed);
    }
}

impl Drop for DelayForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A datagram waiting for its time: (due, sequence) orders the heap.
struct Held {
    /// `None`: from upstream, to the client at `to`; `Some(i)`: to upstream
    /// from pool socket `i`.
    via: Option<usize>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

fn forward(
    front: UdpSocket,
    pool: Vec<UdpSocket>,
    upstream: SocketAddr,
    delay: &AtomicU64,
    jitter: &AtomicU64,
    stop: &AtomicBool,
) {
    // A small seeded generator for the jitter: reproducible runs.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |max: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if max == 0 {
            0
        } else {
            rng % (max + 1)
        }
    };
    let started = Instant::now();
    let mut clients: HashMap<SocketAddr, usize> = HashMap::new();
    let mut owner: Vec<Option<SocketAddr>> = vec![None; pool.len()];
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut held: HashMap<u64, Held> = HashMap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
        let now = Instant::now();
        let base = now + Duration::from_micros(delay.load(Ordering::Relaxed));
        let spread = jitter.load(Ordering::Relaxed);
        let mut hold = |via: Option<usize>, to: SocketAddr, bytes: &[u8]| {
            if held.len() < MAX_QUEUED {
                seq += 1;
                let due = base + Duration::from_micros(random(spread));
                heap.push(Reverse((due, seq)));
                held.insert(
                    seq,
                    Held {
                        via,
                        to,
                        bytes: bytes.to_vec(),
                    },
                );
            }
        };
        // From clients: bounded reads per round.
        for _ in 0..256 {
            let Ok((n, from)) = front.recv_from(&mut buf) else {
                break;
            };
            let slot = match clients.get(&from) {
                Some(&slot) => Some(slot),
                None => owner.iter().position(Option::is_none).inspect(|&slot| {
                    owner[slot] = Some(from);
                    clients.insert(from, slot);
                }),
            };
            if let Some(slot) = slot {
                hold(Some(slot), upstream, &buf[..n]);
            }
        }
        // From upstream, back to each socket's client.
        for (slot, socket) in pool.iter().enumerate() {
            let Some(client) = owner[slot] else { continue };
            for _ in 0..256 {
                let Ok((n, _)) = socket.recv_from(&mut buf) else {
                    break;
                };
                hold(None, client, &buf[..n]);
            }
        }
        while let Some(Reverse((at, id))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            if let Some(d) = held.remove(&id) {
                let socket = match d.via {
                    Some(slot) => &pool[slot],
                    None => &front,
                };
                let _ = socket.send_to(&d.bytes, d.to);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_test_support::privileged::or_skip;

    /// Every datagram comes back through the forwarder, with its delay, also
    /// with jitter (which reorders but must not lose).
    #[test]
    fn forwards_every_datagram_both_ways_with_jitter() -> Result<()> {
        let Some(ns) = or_skip(
            "forwards_every_datagram_both_ways_with_jitter",
            crate::netns::lab_available()
                .and_then(|()| Netns::new("delay").map_err(|e| e.to_string())),
        ) else {
            return Ok(());
        };
        let echo = ns.udp_socket("127.0.0.1:0".parse()?)?;
        let upstream = echo.local_addr()?;
        let front: SocketAddr = "127.0.0.1:47001".parse()?;
        let forwarder = DelayForwarder::start(&ns, front, upstream)?;
        forwarder.set_delay(Duration::from_millis(5));
        forwarder.set_jitter(Duration::from_millis(40));
        let echoing = std::thread::spawn(move || {
            echo.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let client = ns.udp_socket("127.0.0.1:0".parse()?)?;
        client.set_read_timeout(Some(Duration::from_millis(500)))?;
        // Read while sending: 500 small datagrams at once would overflow a
        // default receive buffer (about 270 of them fit).
        let reader = {
            let client = client.try_clone()?;
            std::thread::spawn(move || {
                let mut got = std::collections::HashSet::new();
                let mut buf = [0u8; 64];
                while let Ok((n, _)) = client.recv_from(&mut buf) {
                    if n == 4 {
                        got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    }
                }
                got
            })
        };
        for i in 0..500u32 {
            client.send_to(&i.to_be_bytes(), front)?;
            std::thread::sleep(Duration::from_millis(2));
        }
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        drop(forwarder);
        let _ = echoing.join();
        assert_eq!(got.len(), 500, "every datagram came back");
        Ok(())
    }
}
