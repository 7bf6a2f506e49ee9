//! `naive-forwarder`: the simplest UDP forwarder, the baseline the relay is
//! compared with. One blocking socket; for every datagram one `recv_from` and
//! one `send_to`, everything received on `--listen` goes to `--to`. No
//! batching, no routing, no parsing.
//!
//! It prints `listening on ADDR` on stdout once bound (tests read it to learn
//! an ephemeral port) and its counters on stderr when it stops: on SIGTERM or
//! SIGINT (noticed within 100 ms), or after `--max-seconds`.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;

/// Forward every UDP datagram from --listen to --to, one system call each way.
#[derive(Debug, Parser)]
#[command(name = "naive-forwarder", version)]
struct Args {
    /// Address to receive on (port 0 picks a free one; printed on stdout).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,

    /// Address every datagram is sent to.
    #[arg(long, value_name = "ADDR")]
    to: SocketAddr,

    /// Drop exactly every Nth received datagram (the Nth, 2Nth, …), to test
    /// that the load generator counts loss exactly. 0 drops nothing.
    #[arg(long, value_name = "N", default_value_t = 0)]
    drop_every: u64,

    /// Exit after this many seconds even without a signal.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    max_seconds: u64,

    /// SO_RCVBUF/SO_SNDBUF in bytes, the relay's default (capped by the
    /// kernel at net.core.rmem_max / wmem_max), so the comparison is fair.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    buffer_bytes: usize,
}

fn main() -> ExitCode {
    lanrage_bench::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(args.listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: an unprivileged process gets at most the sysctl maximum.
    let _ = socket.set_recv_buffer_size(args.buffer_bytes);
    let _ = socket.set_send_buffer_size(args.buffer_bytes);
    socket
        .bind(&args.listen.into())
        .with_context(|| format!("cannot bind {}", args.listen))?;
    let socket = UdpSocket::from(socket);
    // A read timeout lets the loop notice a stop signal between datagrams.
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    println!("listening on {}", socket.local_addr()?);

    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut buf = vec![0u8; 65536];
    let (mut received, mut forwarded, mut dropped, mut errors) = (0u64, 0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // Checking the clock per datagram would cost more than the forwarding
        // it measures; every 1024 datagrams or each idle timeout is enough.
        if received % 1024 == 0 && Instant::now() >= deadline {
            break;
        }
        let len = match socket.recv_from(&mut buf) {
            Ok((len, _)) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= deadline {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e).context("recv_from failed"),
        };
        received += 1;
        if args.drop_every > 0 && received % args.drop_every == 0 {
            dropped += 1;
            continue;
        }
        match socket.send_to(&buf[..len], args.to) {
            Ok(_) => forwarded += 1,
            Err(_) => errors += 1,
        }
    }
    eprintln!(
        "naive-forwarder: received {received}, forwarded {forwarded}, dropped {dropped}, send errors {errors}"
    );
    Ok(())
}
