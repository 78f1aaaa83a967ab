//! The `datarun` binary, built inside the test package so that the fault-injection suite
//! can start, crash and restart real hub processes (`CARGO_BIN_EXE_datarun-under-test`).

fn main() -> std::process::ExitCode {
    datarun_cli::main()
}
