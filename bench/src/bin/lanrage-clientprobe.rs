//! `lanrage-clientprobe`: see `lanrage_bench::clientprobe` (and `--help`).

fn main() -> std::process::ExitCode {
    lanrage_bench::clientprobe::main()
}
