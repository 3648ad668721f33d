//! `station`: the provisioning station's command line and daemon.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `station unit list | head` ends quietly when head has read enough.
    dps::process::quiet_on_closed_stdout(run)
}

fn run() -> ExitCode {
    // Everything the station writes (database, PIN files, keys, logs) is private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = station::cli::Cli::parse();
    if !cli.command.is_daemon() {
        station::logging::init(cli.log_format);
    }
    match station::cli::run(cli) {
        Ok(code) => code,
        Err(station::cli::CliError::Output(e)) if dps::process::is_closed_stdout_error(&e) => {
            ExitCode::from(dps::process::CLOSED_STDOUT_EXIT)
        }
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(1)
        }
    }
}
