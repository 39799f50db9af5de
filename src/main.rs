//! The `hazina` command; everything it does is in [`hazina::cli`].

fn main() -> std::process::ExitCode {
    hazina::cli::main()
}
