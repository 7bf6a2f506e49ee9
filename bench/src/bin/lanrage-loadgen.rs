//! `lanrage-loadgen`: see `lanrage_bench::loadgen` (and `--help`).

fn main() -> std::process::ExitCode {
    lanrage_bench::loadgen::main()
}
