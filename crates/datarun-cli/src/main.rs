//! `datarun`: one binary with subcommands (`datarun --help`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DATARUN_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let mut stdout = std::io::stdout();
    match datarun_cli::cli::run(&args, &mut stdout).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
