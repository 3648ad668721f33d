//! Azure IoT Hub Device Provisioning Service protocol: identifiers, wire types, SAS
//! authentication, a service client, and a DPS-compatible local service.
//!
//! - [`ids`]: registration, group and device IDs with the DPS rules.
//! - [`wire`]: serde types of the 2021-10-01 service schema.
//! - [`sas`]: SAS tokens, connection strings, group-key derivation.
//! - [`client`]: the service client (retries, budget, bulk chunking).
//! - [`server`]: the local service behind `dps serve`; [`cli`]: the `dps` command line.
//! - [`rate`]: the operations-per-minute token bucket both sides use.

pub mod cli;
pub mod client;
pub mod ids;
pub mod process;
pub mod rate;
pub mod sas;
pub mod server;
pub mod tpm;
pub mod wire;

pub use ids::{DeviceId, EnrollmentGroupId, IdError, RegistrationId};
