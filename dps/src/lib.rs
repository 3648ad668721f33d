//! Azure IoT Hub Device Provisioning Service protocol: identifiers, wire types, SAS
//! authentication, a service client, and a DPS-compatible local service.

pub mod ids;
pub mod sas;
pub mod wire;

pub use ids::{DeviceId, EnrollmentGroupId, IdError, RegistrationId};
