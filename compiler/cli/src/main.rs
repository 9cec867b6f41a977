//! The `lmc` program: the command line of `src/lib.rs`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(lmc_cli::main_with(std::env::args_os().collect()))
}
