#[global_allocator]
static GLOBAL: mlgw::Allocator = mlgw::Allocator;

fn main() -> std::process::ExitCode {
    mlgw::cli::main()
}
