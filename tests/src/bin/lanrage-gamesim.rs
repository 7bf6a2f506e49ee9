//! `lanrage-gamesim`: processes that send and listen the way LAN games do
//! their discovery (`lanrage_tests::gamesim` has them, and the table).

fn main() -> std::process::ExitCode {
    lanrage_tests::gamesim::main()
}
