//! DeviceRegistrationState: the record of a unit's registration.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Registration status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Not assigned yet.
    Unassigned,
    /// Being assigned.
    Assigning,
    /// Assigned to a hub.
    Assigned,
    /// Failed.
    Failed,
    /// The enrollment is disabled.
    Disabled,
}

/// How the assignment came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationSubstatus {
    /// First assignment.
    InitialAssignment,
    /// Moved with its data.
    DeviceDataMigrated,
    /// Moved with its data reset.
    DeviceDataReset,
    /// Reprovisioned to its initial assignment.
    ReprovisionedToInitialAssignment,
}

/// A unit's registration record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    /// The unit's registration ID (kept as text: records are read back as the service wrote them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// When the record was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<DateTime<Utc>>,
    /// The assigned hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device ID in that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RegistrationStatus>,
    /// Substatus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<RegistrationSubstatus>,
    /// Error code of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Error message of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<DateTime<Utc>>,
    /// Version tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Custom payload returned to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// TPM units, in the device API's answer only: the key for the unit's hub, as a blob only
    /// its TPM can import (never stored in the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAuthenticationKey>,
}

impl DeviceRegistrationState {
    /// Where the unit is, in words: `HUB as device D (substatus)`; None while it has no hub.
    #[must_use]
    pub fn placement(&self) -> Option<String> {
        let hub = self.assigned_hub.as_deref()?;
        let mut line = format!(
            "{hub} as device {}",
            self.device_id.as_deref().unwrap_or("?")
        );
        if let Some(sub) = self.substatus {
            line.push_str(&format!(" ({})", sub.as_str()));
        }
        Some(line)
    }
}

impl RegistrationOperationStatus {
    /// What the unit registering as `registration_id` was told, in words:
    /// `ID assigned to HUB as device D (substatus)`, or, not assigned,
    /// `ID was not assigned: status S: why`.
    pub fn outcome(&self, registration_id: &str) -> Result<String, String> {
        let st = self.registration_state.as_ref();
        if self.status == RegistrationStatus::Assigned {
            return Ok(format!(
                "{registration_id} assigned to {}",
                st.and_then(DeviceRegistrationState::placement)
                    .unwrap_or_else(|| "? as device ?".into())
            ));
        }
        let mut line = format!(
            "{registration_id} was not assigned: status {}",
            self.status.as_str()
        );
        if let Some(m) = st.and_then(|s| s.error_message.as_deref()) {
            line.push_str(&format!(": {m}"));
        }
        Err(line)
    }
}

/// A key for a unit's TPM: base64 of the `authenticationKey` blob (`crate::tpm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmAuthenticationKey {
    /// The blob, base64.
    pub authentication_key: String,
}

/// The device API's answer (HTTP 401) to a TPM unit's first register call: the challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmChallenge {
    /// The blob, base64.
    pub authentication_key: String,
    /// The `skn` of the unit's SAS token.
    pub key_name: String,
}

impl RegistrationStatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unassigned => "unassigned",
            Self::Assigning => "assigning",
            Self::Assigned => "assigned",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }
}

impl RegistrationSubstatus {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InitialAssignment => "initialAssignment",
            Self::DeviceDataMigrated => "deviceDataMigrated",
            Self::DeviceDataReset => "deviceDataReset",
            Self::ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
        }
    }
}

/// What a unit sends to register (device API, `PUT .../register`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// The registration ID (the path names it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// TPM units: base64 TPM2B_PUBLIC of the EK and SRK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
    /// Custom data for allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// The answer to a registration and to its operation poll (device API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// The operation to poll.
    pub operation_id: String,
    /// `assigning` while the service works, then the registration's status.
    pub status: RegistrationStatus,
    /// The registration record, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_serialized_ones() {
        for s in [
            RegistrationStatus::Unassigned,
            RegistrationStatus::Assigning,
            RegistrationStatus::Assigned,
            RegistrationStatus::Failed,
            RegistrationStatus::Disabled,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            RegistrationSubstatus::InitialAssignment,
            RegistrationSubstatus::DeviceDataMigrated,
            RegistrationSubstatus::DeviceDataReset,
            RegistrationSubstatus::ReprovisionedToInitialAssignment,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn an_outcome_says_the_hub_or_why_not() {
        let mut done = RegistrationOperationStatus {
            operation_id: "op".into(),
            status: RegistrationStatus::Assigned,
            registration_state: Some(DeviceRegistrationState {
                assigned_hub: Some("hub-a".into()),
                device_id: Some("dev-1".into()),
                substatus: Some(RegistrationSubstatus::InitialAssignment),
                ..DeviceRegistrationState::default()
            }),
        };
        assert_eq!(
            done.outcome("u-1").unwrap(),
            "u-1 assigned to hub-a as device dev-1 (initialAssignment)"
        );
        done.status = RegistrationStatus::Disabled;
        if let Some(s) = done.registration_state.as_mut() {
            s.error_message = Some("the enrollment is disabled".into());
        }
        assert_eq!(
            done.outcome("u-1").unwrap_err(),
            "u-1 was not assigned: status disabled: the enrollment is disabled"
        );
    }
}
