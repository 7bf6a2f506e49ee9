//! `lanrage-flood`: see `lanrage_bench::flood` (and `--help`).

fn main() -> std::process::ExitCode {
    lanrage_bench::flood::main()
}
