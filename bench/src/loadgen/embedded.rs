//! A LANrage relay inside the load generator's process, assembled from the
//! relay library the way `lanrage-relay`'s `serve()` does, on 127.0.0.1 and an
//! ephemeral port. Its limits are raised so one source IP (all simulated
//! peers share 127.0.0.1) can register and handshake thousands of peers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use lanrage_proto::x25519::PublicKey;
use lanrage_relay::backend::{self, Backend, BackendMetrics, Options, StopHandle};
use lanrage_relay::config::{Config, HandshakeRateLimit};
use lanrage_relay_core::metrics::Metrics;
use lanrage_relay_core::router::Router;

use super::setup::relay_secret;

/// A running in-process relay; dropping it stops and joins its thread.
pub struct EmbeddedRelay {
    pub addr: SocketAddr,
    pub public: PublicKey,
    pub metrics: Arc<Metrics>,
    /// What the backend counts (datagrams received, send errors, GSO).
    pub backend_metrics: Arc<BackendMetrics>,
    stop: StopHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

/// The embedded relay's configuration: defaults, except loopback, an
/// ephemeral port, and per-IP handshake limits high enough for a load test.
pub fn config() -> Config {
    let defaults = Config::default();
    Config {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        metrics_listen: None,
        // All simulated peers share one IP; each pair costs 4 tokens at setup.
        handshake_rate_limit: HandshakeRateLimit {
            per_second: 1_000_000,
            burst: 1_000_000,
        },
        // Thousands of setup handshakes per second are the test, not an
        // attack: keep the cookie (mac2) round trip out of it.
        under_load_handshakes_per_second: 10_000_000,
        ..defaults
    }
}

impl EmbeddedRelay {
    pub fn start(seed: u64) -> Result<Self> {
        Self::start_with(config(), seed)
    }

    /// A relay with another configuration (tests: a low rate limit); only
    /// `listen`, the socket, the backend and the router's settings are used.
    pub fn start_with(config: Config, seed: u64) -> Result<Self> {
        let secret = relay_secret(seed);
        let public = PublicKey::from(&secret);
        let socket = backend::bind_udp(config.listen, &config.socket)
            .context("embedded relay: cannot bind its UDP socket")?;
        let backend_metrics = Arc::new(BackendMetrics::default());
        let backend = Backend::new(
            socket,
            Options {
                batch_size: config.batch_size,
                gso: config.gso,
            },
            config.backend,
            Arc::clone(&backend_metrics),
        )
        .context("embedded relay: cannot set up the backend")?;
        let addr = backend.local_addr()?;
        let stop = backend.stop_handle();
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // The cookie seed only needs to differ between runs of a real relay;
        // a load test is better off reproducible.
        let cookie_seed = [0x5A; 32];
        let mut router = Router::new(
            config.router_config(),
            secret,
            epoch,
            cookie_seed,
            Instant::now(),
        );
        let metrics = Arc::clone(router.metrics());
        metrics.add_source(backend_metrics.clone());
        let thread = std::thread::Builder::new()
            .name("embedded-relay".to_owned())
            .spawn(move || backend.run(&mut router))
            .context("embedded relay: cannot spawn its thread")?;
        Ok(Self {
            addr,
            public,
            metrics,
            backend_metrics,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EmbeddedRelay {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("embedded relay loop failed: {e}"),
                Err(_) => eprintln!("embedded relay thread panicked"),
            }
        }
    }
}
