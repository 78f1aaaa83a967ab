//! The `datarun` binary's library half: configuration, application assembly and the
//! subcommands, so the end-to-end tests drive the same code the binary runs.

pub mod app;
pub mod bench;
pub mod bench_lookup;
pub mod cli;
pub mod config;
pub mod secrets;
pub mod setup;

/// The binary's entry point: logs to stderr (`DATARUN_LOG` filters; colours only on a
/// terminal, so a log file or journal gets plain text), runs the command
/// line, exits 2 on error. The fault-injection suite builds its hub from this too.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DATARUN_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().collect();
    let mut stdout = std::io::stdout();
    match cli::run(&args, &mut stdout).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
