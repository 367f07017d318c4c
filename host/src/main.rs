mlgw::use_gateway_allocator!();

fn main() -> std::process::ExitCode {
    mlgw::cli::main()
}
