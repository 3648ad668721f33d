//! IndividualEnrollment and the policy types it shares with groups.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::attestation::AttestationMechanism;
use super::registration::DeviceRegistrationState;
use super::twin::InitialTwin;
use crate::ids::{DeviceId, RegistrationId};

/// Whether an enrollment may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Units may register (the default).
    #[default]
    Enabled,
    /// Units are refused.
    Disabled,
}

/// How a hub is chosen for a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    /// Weighted hash over the hubs (the service default).
    Hashed,
    /// Lowest latency.
    GeoLatency,
    /// Exactly one hub.
    Static,
    /// A webhook decides.
    Custom,
}

/// What happens when a registered unit registers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Move the unit to a newly chosen hub.
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// Carry the twin over to the new hub.
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// Device capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// The unit is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// Webhook for the custom allocation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocationDefinition {
    /// The webhook URL.
    pub webhook_url: String,
    /// The API version sent to the webhook.
    pub api_version: String,
}

/// An enrollment for one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The unit's registration ID.
    pub registration_id: RegistrationId,
    /// Device ID in the hub (defaults to the registration ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Read-only: the unit's registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
    /// Extra device information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional_device_information: Option<Map<String, Value>>,
    /// How the unit proves its identity.
    pub attestation: AttestationMechanism,
    /// Capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Legacy single hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// Initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Version tag; changes on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Re-registration behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Set by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// Set by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
    /// Hub allocation policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,
    /// Candidate hubs (host names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// Webhook for `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
}

impl IndividualEnrollment {
    /// A minimal enrollment: id and attestation, everything else default.
    #[must_use]
    pub fn new(registration_id: RegistrationId, attestation: AttestationMechanism) -> Self {
        Self {
            registration_id,
            device_id: None,
            registration_state: None,
            optional_device_information: None,
            attestation,
            capabilities: None,
            iot_hub_host_name: None,
            initial_twin: None,
            etag: None,
            provisioning_status: None,
            reprovision_policy: None,
            created_date_time_utc: None,
            last_updated_date_time_utc: None,
            allocation_policy: None,
            iot_hubs: None,
            custom_allocation_definition: None,
        }
    }
}
