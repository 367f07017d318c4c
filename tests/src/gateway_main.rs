//! The gateway binary exactly as shipped, built inside this package so its tests can find it.
mlgw::use_gateway_allocator!();

fn main() -> std::process::ExitCode {
    mlgw::cli::main()
}
