//! `datarun`: one binary with subcommands (`datarun --help`).

fn main() -> std::process::ExitCode {
    datarun_cli::main()
}
