//! EnrollmentGroup: one enrollment for many units sharing an attestation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::attestation::AttestationMechanism;
use super::enrollment::{
    AllocationPolicy, CustomAllocationDefinition, DeviceCapabilities, ProvisioningStatus,
    ReprovisionPolicy,
};
use super::twin::InitialTwin;
use crate::ids::EnrollmentGroupId;

/// An enrollment group (x509 signing/CA certificate or a group symmetric key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// The group's ID.
    pub enrollment_group_id: EnrollmentGroupId,
    /// How member units prove their identity.
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

impl EnrollmentGroup {
    /// A minimal group: id and attestation, everything else default.
    #[must_use]
    pub fn new(enrollment_group_id: EnrollmentGroupId, attestation: AttestationMechanism) -> Self {
        Self {
            enrollment_group_id,
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
