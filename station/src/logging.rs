//! Logging: `tracing` to standard error, filtered by `STATION_LOG`, as text or JSON lines.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber. `STATION_LOG` takes a `tracing` filter (default `warn`, so
/// that the command line prints only its own output).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("STATION_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling into the library) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the daemon's subscriber: `info` by default (`STATION_LOG` overrides), written to
/// standard error and appended to `file`.
pub fn init_daemon(format: LogFormat, file: &std::path::Path) -> std::io::Result<()> {
    use tracing_subscriber::fmt::writer::MakeWriterExt as _;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    let writer = std::io::stderr.and(std::sync::Mutex::new(log));
    let filter = EnvFilter::try_from_env("STATION_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
