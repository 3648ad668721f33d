//! `dps`: the DPS command line and local service.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    dps::process::quiet_on_closed_stdout(run)
}

fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DPS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = dps::cli::Cli::parse();
    match dps::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain for the operator: the top says what failed, sources say why.
            let mut msg = format!("error: {e}");
            let mut cur = std::error::Error::source(&e);
            while let Some(s) = cur {
                msg.push_str(&format!(": {s}"));
                cur = s.source();
            }
            eprintln!("{msg}");
            std::process::ExitCode::FAILURE
        }
    }
}
