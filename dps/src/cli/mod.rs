//! The `dps` command line: the local service (`serve`), its management commands (working
//! on `--data DIR`), and commands mirroring `az iot dps` that work against any DPS given a
//! connection string.

mod device;
mod local;
mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::ClientError;
use crate::server::ServeError;
use crate::server::setup::SetupError;
use crate::server::store::StoreError;

pub use device::RegisterArgs;
pub use local::{LinkedHubCommand, PolicyCommand};
pub use remote::{EnrollmentCommand, GroupCommand, RegistrationCommand, Target};

/// The `dps` program.
#[derive(Parser)]
#[command(
    name = "dps",
    version,
    about = "Azure DPS tools and a DPS-compatible local service"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the DPS-compatible local service.
    Serve(ServeArgs),
    /// Individual enrollments.
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// Enrollment groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Registration records.
    #[command(subcommand)]
    Registration(RegistrationCommand),
    /// Register a unit as the unit itself would (device API over HTTPS), with its symmetric
    /// key, its group's key or its certificate; prints the hub and device ID it gets, or why
    /// it was refused.
    Register(RegisterArgs),
    /// Derive a unit's key from a group key (HMAC-SHA256 of the registration ID).
    ComputeDeviceKey {
        /// The group's symmetric key (base64).
        #[arg(long, env = "DPS_GROUP_KEY", hide_env_values = true)]
        key: String,
        /// The unit's registration ID.
        #[arg(long)]
        registration_id: crate::RegistrationId,
    },
    /// Linked IoT hubs of the local service.
    #[command(subcommand)]
    LinkedHub(LinkedHubCommand),
    /// Access policies of the local service.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Operations per day of the local service.
    Stats {
        /// Data directory of the service.
        #[arg(long)]
        data: PathBuf,
    },
}

/// Options of `dps serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Data directory (created on first start).
    #[arg(long)]
    pub data: PathBuf,
    /// Listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Also serve the device registration API over MQTT (TLS) on this address (Azure: port
    /// 8883); port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Link a hub at start: HOST or HOST=WEIGHT (repeatable).
    #[arg(long = "link-hub", value_name = "HOST[=WEIGHT]")]
    pub link_hub: Vec<String>,
    /// Test option: answer 429 beyond N operations per minute.
    #[arg(long, value_name = "N")]
    pub ops_per_min: Option<u32>,
    /// Test option: share of requests answered 500 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Test option: delay every answer by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Test option: answer the first N requests 429 (with `--throttle-retry-after`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub throttle_next: u32,
    /// Test option: the `Retry-After` seconds of `--throttle-next` answers.
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    pub throttle_retry_after: u64,
    /// Test option: answer the first N requests 503.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fail_next: u32,
    /// Test option: answer the first N requests carrying If-Match 412 (a concurrent change).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub stale_if_match_next: u32,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The service failed.
    #[error("the service failed")]
    Serve(#[from] ServeError),
    /// A service call failed.
    #[error("the DPS call failed")]
    Client(#[from] ClientError),
    /// The data directory could not be prepared.
    #[error("the data directory could not be opened")]
    Setup(#[from] SetupError),
    /// The store failed.
    #[error("the service database failed")]
    Store(#[from] StoreError),
    /// The tokio runtime could not start.
    #[error("starting the async runtime failed")]
    Runtime(#[source] std::io::Error),
    /// A file could not be read or written.
    #[error("accessing {path} failed")]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An argument was refused.
    #[error("{0}")]
    Usage(String),
    /// A key or connection string was refused.
    #[error("invalid SAS material")]
    Sas(#[from] crate::sas::SasError),
    /// A unit's registration ended other than assigned.
    #[error("{0}")]
    Refused(String),
    /// Printing JSON failed.
    #[error("formatting JSON failed")]
    Json(#[from] serde_json::Error),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    match cli.command {
        Command::Serve(a) => rt.block_on(local::serve(a)),
        Command::Enrollment(c) => rt.block_on(remote::enrollment(c)),
        Command::Group(c) => rt.block_on(remote::group(c)),
        Command::Registration(c) => rt.block_on(remote::registration(c)),
        Command::Register(a) => rt.block_on(device::register(a)),
        Command::ComputeDeviceKey {
            key,
            registration_id,
        } => {
            let group = crate::sas::SharedAccessKey::from_base64(&key)?;
            let dev = crate::sas::derive_device_key(&group, registration_id.as_str());
            // Printing the derived key is the purpose of this command.
            println!("{}", secrecy::ExposeSecret::expose_secret(&dev.to_base64()));
            Ok(())
        }
        Command::LinkedHub(c) => local::linked_hub(c),
        Command::Policy(c) => local::policy(c),
        Command::Stats { data } => local::stats(&data),
    }
}
