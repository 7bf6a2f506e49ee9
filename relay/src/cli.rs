//! The `lanrage-relay` command line and the relay's startup and shutdown.
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM) or a successful
//! subcommand; 1 for runtime failures (key file, socket bind, an invalid
//! config in `check-config`); 2 for a bad config file or usage when starting
//! (systemd's unit doesn't restart on 2: a restart can't fix a config).

use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rand::RngCore as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};
use crate::data_plane::{self, DataPlane, StopAll};
use crate::http;
use crate::party::PartyThread;
use crate::stun::{StunService, StunSide};
use crate::worker::{RouteCopy, SharedCopy};
use lanrage_keyfile::{self as keys, KeyOrigin};
use lanrage_relay_core::router::Router;
use lanrage_relay_party::{PartyConfig, PartyService, RelayName};

/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for an invalid config file or command line.
pub const EXIT_CONFIG: u8 = 2;

/// LANrage relay: forwards WireGuard UDP between registered, consenting peers
/// without decrypting it.
///
/// Without a subcommand, runs the relay until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "lanrage-relay", version)]
pub struct Cli {
    /// YAML config file. Without one, every setting has its default
    /// (see docs/configuration.md).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "LANRAGE_RELAY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Directory for the private key when `private_key_file` is relative or
    /// left at its default, e.g. `target/relay-state` to run unprivileged.
    #[arg(
        long,
        global = true,
        env = "LANRAGE_RELAY_STATE_DIR",
        value_name = "DIR"
    )]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new private key to stdout, like `wg genkey`.
    Keygen,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Print the relay's public key for clients, generating the key file if
    /// it doesn't exist yet.
    PublicKey,
    /// Check the config file given with --config: exit 0 if valid, 1 if not.
    CheckConfig,
}

/// The binary's entry point: parses arguments, runs, and maps errors to an
/// exit code with `error: …` on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            report(&format!("error: {}", render_error(&error)));
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => serve(cli.config.as_deref(), cli.state_dir.as_deref()).map(|()| ExitCode::SUCCESS),
        Some(Command::Keygen) => {
            print_result(&keys::encode(&keys::generate()?))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Pubkey) => {
            let mut text = String::new();
            // A key is 44 characters; don't buffer an endless pipe.
            io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .context("cannot read a private key from stdin")?;
            let secret = keys::decode(&text).context("stdin")?;
            print_result(&keys::public_key(&secret).to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::PublicKey) => {
            let config = load_config(cli.config.as_deref())?;
            init_logging("warn");
            let path = config.private_key_path(cli.state_dir.as_deref());
            let (secret, origin) = keys::load_or_generate(&path)?;
            if origin == KeyOrigin::Generated {
                report(&format!(
                    "generated a new private key in {}",
                    path.display()
                ));
            }
            print_result(&keys::public_key(&secret).to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::CheckConfig) => {
            let Some(path) = cli.config else {
                anyhow::bail!(UsageError(
                    "check-config needs --config FILE (or LANRAGE_RELAY_CONFIG)"
                ));
            };
            match load_for_start(Some(&path)) {
                Ok(_) => {
                    print_result(&format!("{}: ok", path.display()))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    report(&format!("error: {}", render_error(&e)));
                    Ok(ExitCode::from(EXIT_FAILURE))
                }
            }
        }
    }
}

/// A command line that can't work; exits with [`EXIT_CONFIG`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(&'static str);

/// Loads the config file, or the defaults without one.
fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    }
}

/// Every check of a config that a start makes before it touches the key
/// file, a socket or the kernel: the file parses, every field is in range,
/// and this build has what the config asks for. `check-config` runs exactly
/// this, so a config it accepts can only fail at start for a reason outside
/// the file (a port in use, io_uring or XDP unavailable on this host).
fn load_for_start(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = load_config(path)?;
    require_xdp_support(&config)?;
    Ok(config)
}

/// Runs the relay until SIGINT or SIGTERM.
fn serve(config_path: Option<&Path>, state_dir: Option<&Path>) -> anyhow::Result<()> {
    let config = load_for_start(config_path)?;
    init_logging(&config.log);
    match config_path {
        Some(path) => tracing::debug!(path = %path.display(), "loaded config"),
        None => tracing::info!("no config file given (--config); using the defaults"),
    }

    let key_path = config.private_key_path(state_dir);
    let (secret, origin) = keys::load_or_generate(&key_path)?;
    let public_key = keys::public_key(&secret);
    if origin == KeyOrigin::Generated {
        tracing::info!(path = %key_path.display(), %public_key, "generated a new relay private key");
    }

    // Bind everything before announcing readiness, so a port conflict fails
    // the start instead of a later request.
    data_plane::check_backend(config.backend).map_err(|why| {
        anyhow::anyhow!("backend: io_uring was asked for but is not available: {why}")
    })?;
    let data_plane = DataPlane::bind(&config)
        .with_context(|| format!("cannot bind the UDP sockets on {} (listen)", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(http::bind(addr).with_context(|| {
            format!("cannot bind the metrics listener on {addr} (metrics_listen)")
        })?),
        None => None,
    };
    let listen = data_plane.local_addr();
    let stun = StunSide::bind(
        &config.stun,
        &config.socket,
        listen,
        data_plane.primary_socket()?,
    )?;
    // Before readiness too: a relay asked for XDP doesn't start without it,
    // and one asked for parties doesn't start without its database.
    let xdp = start_xdp(&config, listen)?;
    let party_service = open_party_service(&config, state_dir)?;
    // Signals first: a SIGTERM right after READY=1 must already stop cleanly.
    spawn_signal_thread(data_plane.stop_handle()).context("cannot install signal handlers")?;

    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("cannot get random bytes from the OS")?;
    // Clients compare epochs to notice a relay restart and re-register.
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut router_config = config.router_config();
    router_config.stun.sockets = stun.addresses();
    let stun_sockets = stun.addresses();
    let route_copy = xdp
        .as_ref()
        .map(|x| SharedCopy::new(Arc::clone(&x.routes), router_config.route_idle_timeout));
    let router = Router::new(router_config, secret, epoch, seed, Instant::now());
    let xdp_pinned = xdp.as_ref().and_then(|x| x.pinned.clone());
    router.metrics().add_source(data_plane.backend_metrics());
    router.metrics().add_source(data_plane.socket_stats());
    if let Some(xdp) = xdp {
        router.metrics().add_source(xdp.metrics);
    }
    let stun_service = stun
        .spawn(router.worker(), data_plane.workers())
        .context("cannot start the STUN thread")?;
    let party_thread = match party_service {
        Some(service) => {
            let (sink, inbox) = std::sync::mpsc::sync_channel(PARTY_QUEUE);
            router.attach_party_service(sink);
            let thread = PartyThread::spawn(
                service,
                router.worker(),
                inbox,
                data_plane.primary_socket()?,
            )
            .context("cannot start the party thread")?;
            router.metrics().add_source(thread.metrics());
            Some(thread)
        }
        None => None,
    };
    if let Some(port) = stun_sockets.alternate_port {
        // The tests and operators read these addresses here.
        let alternate_address = stun_sockets
            .alternate_ip
            .map_or_else(|| "none".to_owned(), |ip| ip.to_string());
        tracing::info!(
            alternate_port = port,
            %alternate_address,
            "STUN behaviour discovery (RFC 5780)"
        );
    }

    let metrics = match metrics_listener {
        Some(listener) => {
            let addr = listener
                .local_addr()
                .context("cannot read the metrics listener's address")?;
            http::spawn(listener, Arc::clone(router.metrics()))
                .context("cannot start the metrics thread")?;
            addr.to_string()
        }
        None => "disabled".to_owned(),
    };

    tracing::info!(
        backend = data_plane.backend_name(),
        workers = data_plane.workers(),
        batch_size = config.batch_size,
        "data plane"
    );
    // Operators and the end-to-end tests read this exact line; keep its shape.
    tracing::info!(%listen, %metrics, %public_key, "relay ready");
    notify(&[sd_notify::NotifyState::Ready]);
    let handoff = stun_service.as_ref().map(StunService::handoff);
    let result = data_plane.run(router, route_copy, handoff);
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(service) = stun_service {
        service.stop();
    }
    if let Some(thread) = party_thread {
        thread.stop();
    }
    result.context("the relay loop failed")?;
    if let Some(dir) = xdp_pinned {
        tracing::info!(
            pin_path = %dir.display(),
            "XDP stays attached: established sessions keep flowing until the next start \
             (delete the link_* files there to detach)"
        );
    }
    tracing::info!("relay stopped");
    Ok(())
}

/// Requests waiting for the party thread at most (the router drops more,
/// counted as `party_queue_full`).
const PARTY_QUEUE: usize = 4096;

/// Opens the party database if the config asks for parties, with an error
/// that names the field and the file.
fn open_party_service(
    config: &Config,
    state_dir: Option<&Path>,
) -> anyhow::Result<Option<PartyService>> {
    let Some(party) = &config.party else {
        return Ok(None);
    };
    let path = party.database_path(state_dir);
    let name = RelayName::new(&party.name).map_err(|e| anyhow::anyhow!("party.name: {e}"))?;
    let service = PartyService::open(&path, PartyConfig::new(name), rand::rngs::OsRng)
        .map_err(|e| anyhow::anyhow!("party.database: {e}"))?;
    tracing::info!(name = %party.name, database = %path.display(), "parties");
    Ok(Some(service))
}

/// The XDP fast path as the router and the metrics see it.
#[derive(Clone)]
struct XdpParts {
    routes: Arc<dyn RouteCopy>,
    metrics: Arc<dyn lanrage_relay_core::metrics::MetricsSource>,
    /// The pin directory: the program stays attached after exit.
    pinned: Option<PathBuf>,
}

/// Loads and attaches the XDP program if the config asks for it (`xdp:`),
/// and logs how it is attached. Without the `xdp` feature, asking for it is
/// an error that says how to build a relay that has it.
#[cfg(feature = "xdp")]
fn start_xdp(config: &Config, listen: std::net::SocketAddr) -> anyhow::Result<Option<XdpParts>> {
    let Some(xdp_config) = &config.xdp else {
        return Ok(None);
    };
    let (mirror, attached) = crate::xdp::start(xdp_config, &config.limits, listen)?;
    let pinned = match (&attached.pin_path, attached.pinned) {
        (Some(dir), Some(how)) => format!("{} ({})", dir.display(), how.as_str()),
        _ => "no".to_owned(),
    };
    let fib = if attached.fib_lookup {
        "bpf_fib_lookup"
    } else {
        "swapped (forwarding is off on the interface; see docs/xdp.md)"
    };
    // Operators and the namespace tests read this line; keep its shape.
    tracing::info!(
        interface = %attached.interface,
        mode = attached.mode.as_str(),
        pinned = %pinned,
        max_routes = attached.max_routes,
        macs = fib,
        "XDP attached"
    );
    Ok(Some(XdpParts {
        routes: mirror.clone(),
        metrics: mirror,
        pinned: attached.pin_path,
    }))
}

#[cfg(not(feature = "xdp"))]
fn start_xdp(config: &Config, _listen: std::net::SocketAddr) -> anyhow::Result<Option<XdpParts>> {
    require_xdp_support(config)?;
    Ok(None)
}

/// Fails (exit 2) when the config asks for XDP and this build lacks it.
fn require_xdp_support(config: &Config) -> anyhow::Result<()> {
    if config.xdp.is_some() && !cfg!(feature = "xdp") {
        anyhow::bail!(UsageError(XDP_NOT_BUILT));
    }
    Ok(())
}

/// The error for `xdp:` in the config of a relay built without XDP.
const XDP_NOT_BUILT: &str = "xdp: the config asks for the XDP fast path, but this lanrage-relay \
    was built without it; rebuild with `cargo build --release -p lanrage-relay --features xdp` \
    (needs clang and libbpf-dev), or remove the xdp section";

/// Tells systemd about a state change; a no-op outside `Type=notify` units.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// SIGINT/SIGTERM stop the relay after the batch in hand; a second one exits
/// at once (for a wedged shutdown). SIGHUP is acknowledged but does nothing yet.
fn spawn_signal_thread(stop: StopAll) -> io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                if signal == SIGHUP {
                    tracing::warn!(
                        signal = name,
                        "configuration reload is not supported yet; restart the relay to apply changes"
                    );
                } else if stop.is_stopped() {
                    tracing::warn!(signal = name, "second stop signal; exiting now");
                    std::process::exit(i32::from(EXIT_FAILURE));
                } else {
                    tracing::info!(signal = name, "stopping");
                    stop.stop();
                }
            }
        })?;
    Ok(())
}

/// Logs to stderr. `RUST_LOG` wins over the config's `log` filter. Under
/// journald (which stamps every line itself) timestamps are left out.
fn init_logging(filter: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env).unwrap_or_else(|e| {
            report(&format!("warning: ignoring RUST_LOG={env:?}: {e}"));
            EnvFilter::new(filter)
        }),
        _ => EnvFilter::new(filter),
    };
    // A log line that can't be written (stderr is a closed pipe, e.g. under
    // `| head`) is dropped. Without `log_internal_errors(false)` the
    // subscriber reports the failure with `eprintln!`, which panics on that
    // same broken pipe and kills whichever thread logged, such as the signal
    // thread in the middle of a SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .log_internal_errors(false)
        .with_ansi(io::stderr().is_terminal());
    // try_init: a second call (tests, embedding) keeps the first subscriber.
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// Writes a line to stderr for the operator; if stderr is gone (a closed
/// pipe), the line is lost, but nothing panics (`eprintln!` would).
fn report(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// Writes a subcommand's result line to stdout. Unlike `println!`, a closed
/// stdout is an error (exit 1) rather than a panic.
fn print_result(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The error and its causes joined by `: `, skipping a cause whose text the
/// message already includes (several of our errors embed their source).
pub fn render_error(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn exit_code(error: &anyhow::Error) -> u8 {
    let is_config = error
        .chain()
        .any(|cause| cause.is::<ConfigError>() || cause.is::<UsageError>());
    if is_config {
        EXIT_CONFIG
    } else {
        EXIT_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_is_accepted_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["lanrage-relay", "check-config", "--config", "a.yaml"])
            .expect("after");
        assert_eq!(cli.config.as_deref(), Some(Path::new("a.yaml")));
        let cli = Cli::try_parse_from([
            "lanrage-relay",
            "-c",
            "b.yaml",
            "public-key",
            "--state-dir",
            "s",
        ])
        .expect("before");
        assert_eq!(cli.config.as_deref(), Some(Path::new("b.yaml")));
        assert_eq!(cli.state_dir.as_deref(), Some(Path::new("s")));
        assert!(matches!(cli.command, Some(Command::PublicKey)));
    }

    #[test]
    fn bad_config_exits_2_naming_the_field() {
        let error = anyhow::Error::from(
            Config::from_yaml("batch_size: 0\n", Path::new("relay.yaml")).expect_err("invalid"),
        );
        assert_eq!(exit_code(&error), EXIT_CONFIG);
        assert_eq!(
            render_error(&error),
            "config file relay.yaml: batch_size must be a whole number from 1 to 1024, got 0 \
             at line 1 column 13"
        );
        let error = anyhow::Error::from(UsageError("x"));
        assert_eq!(exit_code(&error), EXIT_CONFIG);
    }

    #[cfg(not(feature = "xdp"))]
    #[test]
    fn xdp_without_the_feature_fails_naming_xdp_and_the_build() {
        let config = Config::from_yaml("xdp: { interface: lo }\n", Path::new("relay.yaml"))
            .expect("valid config");
        let error = match start_xdp(&config, "127.0.0.1:1".parse().expect("addr")) {
            Err(e) => e,
            Ok(_) => panic!("started XDP without the feature"),
        };
        assert_eq!(exit_code(&error), EXIT_CONFIG);
        let text = render_error(&error);
        assert!(text.starts_with("xdp: "), "{text}");
        assert!(text.contains("--features xdp"), "{text}");
        assert!(
            start_xdp(&Config::default(), "127.0.0.1:1".parse().expect("addr"))
                .expect("no xdp")
                .is_none()
        );
    }

    #[test]
    fn runtime_errors_exit_1_with_their_context() {
        let error = anyhow::Error::from(io::Error::other("address in use")).context("cannot bind");
        assert_eq!(exit_code(&error), EXIT_FAILURE);
        assert_eq!(render_error(&error), "cannot bind: address in use");
    }
}
