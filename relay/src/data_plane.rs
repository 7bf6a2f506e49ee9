//! The data plane: one worker thread per core (or per `workers`), each with
//! its own `SO_REUSEPORT` socket on the relay's port, its own backend loop and
//! its own [`Router`] handle onto the shared router state.
//!
//! The kernel spreads clients over the sockets by a hash of their address, so
//! a client always lands on the same worker; any worker can send to any
//! destination, because every socket has the same local address.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread;

use std::time::Instant;

use lanrage_relay_core::metrics;
use lanrage_relay_core::router::Router;

use crate::backend::socket_stats::SocketStats;
use crate::backend::{self, Backend, BackendMetrics, Options, StopHandle};
use crate::config::{BackendChoice, Config};
use crate::stun::StunHandoff;
use crate::worker::{SharedCopy, Worker};

/// Bound sockets and backends, ready to run.
pub struct DataPlane {
    backends: Vec<Backend>,
    listen: SocketAddr,
    socket_stats: Arc<SocketStats>,
    metrics: Arc<BackendMetrics>,
    /// A clone of worker 0's socket, for STUN answers the alternate
    /// sockets' thread sends from `listen` (`crate::stun`).
    primary: UdpSocket,
}

impl DataPlane {
    /// Binds `config.worker_count()` sockets on `config.listen` and picks the
    /// backend per `config.backend`. With port 0, the first socket's port is
    /// used for the rest. Fails if another process is bound to the address
    /// ([`backend::bind_udp_exclusive`]), even one using `SO_REUSEPORT`.
    pub fn bind(config: &Config) -> io::Result<Self> {
        let workers = config.worker_count().max(1);
        let sockets = backend::bind_udp_exclusive(config.listen, &config.socket, workers)?;
        let listen = sockets
            .first()
            .ok_or_else(|| io::Error::other("no UDP socket bound"))?
            .local_addr()?;
        // Before the backends take the sockets over: worker `i` is socket `i`.
        let socket_stats = Arc::new(SocketStats::new(&sockets)?);
        let primary = sockets
            .first()
            .ok_or_else(|| io::Error::other("no UDP socket bound"))?
            .try_clone()?;
        let options = Options {
            batch_size: config.batch_size,
            gso: config.gso,
        };
        // Settled once, so `auto` probes and logs once, not per worker.
        let choice = backend::resolve(config.backend);
        // One set of counters for all workers, sharded per worker thread.
        let metrics = Arc::new(BackendMetrics::default());
        let backends = sockets
            .into_iter()
            .map(|socket| Backend::new(socket, options, choice, Arc::clone(&metrics)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            backends,
            listen,
            socket_stats,
            metrics,
            primary,
        })
    }

    /// Another handle on worker 0's socket (the same socket: what it sends
    /// leaves from `listen`), for sending only.
    pub fn primary_socket(&self) -> io::Result<UdpSocket> {
        self.primary.try_clone()
    }

    /// The relay's UDP address (with the real port if `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The kernel's counters for every worker's socket (receive drops, queue
    /// and buffer sizes), for the metrics endpoint: `Metrics::add_source`.
    pub fn socket_stats(&self) -> Arc<SocketStats> {
        Arc::clone(&self.socket_stats)
    }

    /// What the backends count (datagrams received, send errors, GSO,
    /// io_uring's queues), for the metrics endpoint: `Metrics::add_source`.
    pub fn backend_metrics(&self) -> Arc<BackendMetrics> {
        Arc::clone(&self.metrics)
    }

    pub fn workers(&self) -> usize {
        self.backends.len()
    }

    /// The backend the workers run, for logs.
    pub fn backend_name(&self) -> &'static str {
        self.backends.first().map_or("none", Backend::name)
    }

    /// Stops every worker.
    pub fn stop_handle(&self) -> StopAll {
        StopAll(self.backends.iter().map(Backend::stop_handle).collect())
    }

    /// Runs every worker until stopped: worker 0 on the calling thread, the
    /// others on threads of their own. With `copy` (the XDP fast path), the
    /// workers apply the router's route commands to it ([`Worker`]); with
    /// `stun`, they hand it STUN answers for the alternate sockets.
    /// Returns the first worker error.
    pub fn run(
        self,
        router: Router,
        copy: Option<SharedCopy>,
        stun: Option<StunHandoff>,
    ) -> io::Result<()> {
        let mut backends = self.backends.into_iter();
        let Some(first) = backends.next() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut threads = Vec::new();
        for (i, backend) in backends.enumerate() {
            let index = i + 1;
            let mut worker =
                Worker::new(index, router.worker(), copy.clone(), now).with_stun(stun.clone());
            threads.push(
                thread::Builder::new()
                    .name(format!("relay-worker-{index}"))
                    .spawn(move || {
                        metrics::bind_thread_to_shard(index);
                        backend.run(&mut worker)
                    })?,
            );
        }
        metrics::bind_thread_to_shard(0);
        let mut worker = Worker::new(0, router, copy, now).with_stun(stun);
        let mut result = first.run(&mut worker);
        for thread in threads {
            let joined = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a relay worker panicked")));
            result = result.and(joined);
        }
        result
    }
}

/// Stops all workers of a [`DataPlane`].
#[derive(Clone)]
pub struct StopAll(Vec<StopHandle>);

impl StopAll {
    pub fn stop(&self) {
        for handle in &self.0 {
            handle.stop();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.iter().any(StopHandle::is_stopped)
    }
}

/// Whether `choice` can be honoured here; `auto` always can.
pub fn check_backend(choice: BackendChoice) -> Result<(), String> {
    match choice {
        BackendChoice::Auto | BackendChoice::Epoll => Ok(()),
        BackendChoice::IoUring => backend::io_uring_available(),
    }
}
