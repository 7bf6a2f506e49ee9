//! The `lanrage-relay` binary. Everything lives in the library (`cli`), so the
//! end-to-end tests can build this same file.

fn main() -> std::process::ExitCode {
    lanrage_relay::cli::main()
}
