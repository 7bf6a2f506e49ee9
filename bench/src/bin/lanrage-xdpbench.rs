//! `lanrage-xdpbench` (feature `xdp`): see `lanrage_bench::xdpbench` (and
//! `--help`); `bench/xdp_compare.sh` runs it and prints the table.

fn main() -> std::process::ExitCode {
    lanrage_bench::xdpbench::main()
}
