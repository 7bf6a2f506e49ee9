//! `lanrage-bench` holds LANrage's criterion benchmarks (in `benches/`, run with
//! `cargo bench -p lanrage-bench`) and, later, the load generator. It is not a
//! library anyone depends on: nothing here is part of the relay or the client.

pub mod clientprobe;

/// A tool's exit: success, or `error: …` (with its causes) on stderr and
/// exit code 1.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub mod flood;
pub mod loadgen;
#[cfg(feature = "xdp")]
pub mod xdpbench;
