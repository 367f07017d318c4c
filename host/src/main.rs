fn main() -> std::process::ExitCode {
    mlgw::cli::main()
}
