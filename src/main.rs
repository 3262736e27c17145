//! The `typoclip` binary: everything lives in the library.
fn main() -> std::process::ExitCode {
    typoclip::cli::main_exit_code()
}
