//! Azure IoT Hub Device Provisioning Service protocol: identifiers, wire types, SAS
//! authentication, a service client, and a DPS-compatible local service.

pub mod cli;
pub mod client;
pub mod ids;
pub mod rate;
pub mod sas;
pub mod server;
pub mod wire;

pub use ids::{DeviceId, EnrollmentGroupId, IdError, RegistrationId};
