fn main() -> std::process::ExitCode {
    lanrage_client::cli::main()
}
