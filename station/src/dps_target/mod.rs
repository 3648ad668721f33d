//! DPS targets: the `[dps.targets.NAME]` sections turned into service clients.

pub mod check;
pub mod on_behalf;
pub mod registration;
pub mod sweep;

use std::time::Duration;

use dps::client::{ClientOptions, ServiceClient};
use dps::sas::ConnectionString;

use crate::config::{Config, DpsTarget};
use crate::home::Home;

/// The runtime a DPS client runs on outside `station serve`'s own: one thread, with timers
/// and I/O (a command, the uploader, the registration check).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Why a DPS target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No `[dps.targets.NAME]` section.
    #[error(
        "DPS target {name:?} is not configured (add [dps.targets.{name}] to the station config; configured: {known})"
    )]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names configured.
        known: String,
    },
    /// The target is delivered by export only.
    #[error(
        "DPS target {0} has no connection string (delivery = \"export\"): its rows leave with `station upload --export`; do this where DPS is reachable"
    )]
    ExportOnly(String),
    /// The connection string file could not be read.
    #[error("DPS target {name}: cannot read connection_string_file {path}")]
    ReadConnectionString {
        /// Target.
        name: String,
        /// File.
        path: std::path::PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The connection string does not parse (the message never contains the key).
    #[error("DPS target {name}: the connection string in {path} is not valid")]
    BadConnectionString {
        /// Target.
        name: String,
        /// File.
        path: std::path::PathBuf,
        /// Parser error.
        #[source]
        source: dps::sas::SasError,
    },
    /// The HTTP client could not be built (e.g. an unreadable `ca_file`).
    #[error("DPS target {name}: cannot set up the service client")]
    Client {
        /// Target.
        name: String,
        /// Client error.
        #[source]
        source: dps::client::ClientError,
    },
}

/// The target called `name`.
pub fn target<'c>(cfg: &'c Config, name: &str) -> Result<&'c DpsTarget, TargetError> {
    cfg.dps
        .targets
        .get(name)
        .ok_or_else(|| TargetError::Unknown {
            name: name.to_owned(),
            known: if cfg.dps.targets.is_empty() {
                "none".to_owned()
            } else {
                cfg.dps
                    .targets
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// A service client for the target called `name`.
pub fn client(home: &Home, cfg: &Config, name: &str) -> Result<ServiceClient, TargetError> {
    client_with(home, cfg, name, |_| {})
}

/// A service client for the target called `name`, with its options adjusted by `tweak` (e.g.
/// one quick attempt where waiting for DPS would hold up something more important).
pub fn client_with(
    home: &Home,
    cfg: &Config,
    name: &str,
    tweak: impl FnOnce(&mut ClientOptions),
) -> Result<ServiceClient, TargetError> {
    let t = target(cfg, name)?;
    let path = home.resolve(
        t.connection_string_file
            .as_ref()
            .ok_or_else(|| TargetError::ExportOnly(name.to_owned()))?,
    );
    let text =
        std::fs::read_to_string(&path).map_err(|source| TargetError::ReadConnectionString {
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
    let cs: ConnectionString =
        text.trim()
            .parse()
            .map_err(|source| TargetError::BadConnectionString {
                name: name.to_owned(),
                path: path.clone(),
                source,
            })?;
    let mut opts = ClientOptions {
        extra_ca_file: t.ca_file.as_ref().map(|p| home.resolve(p)),
        ops_per_min: (t.ops_per_min > 0).then_some(t.ops_per_min),
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    tweak(&mut opts);
    ServiceClient::new(cs, opts).map_err(|source| TargetError::Client {
        name: name.to_owned(),
        source,
    })
}
