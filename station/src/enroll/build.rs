//! Building a unit's DPS enrollment from its product profile and its data.

use std::collections::BTreeMap;

use dps::wire::{
    AllocationPolicy as WireAllocation, AttestationMechanism, CustomAllocationDefinition,
    DeviceCapabilities, IndividualEnrollment, InitialTwin, InitialTwinProperties,
    ProvisioningStatus as WireStatus, ReprovisionPolicy,
};
use dps::{DeviceId, RegistrationId};

use super::profile::{AllocationPolicy, Product, ProvisioningStatus, Reprovision};

/// The values a unit's templates may use (see `template::PLACEHOLDERS`).
#[derive(Debug, Clone, Default)]
pub struct UnitValues {
    /// Serial number as scanned.
    pub serial: String,
    /// Lot (work order).
    pub lot: String,
    /// Product name.
    pub product: String,
    /// Model (reported by the unit, else the product's).
    pub model: String,
    /// Hardware revision.
    pub hw_rev: String,
    /// Firmware version.
    pub fw_version: String,
    /// Fixture.
    pub fixture: String,
    /// Station.
    pub station: String,
    /// Operator (empty for anonymous runs).
    pub operator: String,
    /// When the unit was made (RFC 3339, UTC).
    pub manufactured_at: String,
    /// Registration ID, once known.
    pub registration_id: String,
}

impl UnitValues {
    /// The values by placeholder name.
    #[must_use]
    pub fn map(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("serial", self.serial.clone()),
            ("lot", self.lot.clone()),
            ("product", self.product.clone()),
            ("model", self.model.clone()),
            ("hw_rev", self.hw_rev.clone()),
            ("fw_version", self.fw_version.clone()),
            ("fixture", self.fixture.clone()),
            ("station", self.station.clone()),
            ("operator", self.operator.clone()),
            ("manufactured_at", self.manufactured_at.clone()),
            ("registration_id", self.registration_id.clone()),
        ])
    }
}

/// How the unit attests, as DPS will hold it.
pub enum Identity {
    /// TPM: base64 TPM2B_PUBLIC of the EK (and SRK).
    Tpm {
        /// EK.
        endorsement_key: String,
        /// SRK, when the unit has one.
        storage_root_key: Option<String>,
    },
    /// X.509: the unit's leaf certificate, PEM.
    X509 {
        /// Leaf PEM.
        leaf_pem: String,
    },
    /// Symmetric key pair (base64), secret.
    Symmetric {
        /// Primary key.
        primary: dps::wire::KeyText,
        /// Secondary key.
        secondary: dps::wire::KeyText,
    },
}

/// Why a template gave an unusable ID.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The registration ID template gave an ID DPS refuses.
    #[error("the registration ID {value:?} made from template {template:?} is not valid")]
    RegistrationId {
        /// Rendered.
        value: String,
        /// Template.
        template: String,
        /// Why.
        #[source]
        source: dps::IdError,
    },
    /// The device ID template gave an ID DPS refuses.
    #[error("the device ID {value:?} made from template {template:?} is not valid")]
    DeviceId {
        /// Rendered.
        value: String,
        /// Template.
        template: String,
        /// Why.
        #[source]
        source: dps::IdError,
    },
}

/// The registration ID of a non-TPM unit, from the product's template.
pub fn registration_id(
    product: &Product,
    values: &UnitValues,
) -> Result<RegistrationId, BuildError> {
    let template = product
        .registration_id
        .as_ref()
        .map_or("{serial}", |t| t.source());
    let value = product
        .registration_id
        .as_ref()
        .map_or_else(|| values.serial.clone(), |t| t.render(&values.map()));
    RegistrationId::new(value.clone()).map_err(|source| BuildError::RegistrationId {
        value,
        template: template.to_owned(),
        source,
    })
}

/// The device ID, from the product's template (after the registration ID is known).
pub fn device_id(product: &Product, values: &UnitValues) -> Result<DeviceId, BuildError> {
    let value = product.device_id.render(&values.map());
    DeviceId::new(value.clone()).map_err(|source| BuildError::DeviceId {
        value,
        template: product.device_id.source().to_owned(),
        source,
    })
}

/// The enrollment-wide settings of a product, as DPS spells them.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Provisioning status.
    pub provisioning_status: WireStatus,
    /// Reprovision policy.
    pub reprovision: ReprovisionPolicy,
    /// Allocation policy.
    pub allocation: WireAllocation,
    /// Hubs; `None`: every linked hub.
    pub iot_hubs: Option<Vec<String>>,
    /// Webhook for custom allocation.
    pub custom: Option<CustomAllocationDefinition>,
    /// IoT Edge capability.
    pub capabilities: Option<DeviceCapabilities>,
}

/// The webhook API version sent with custom allocation when the profile names none.
pub const DEFAULT_WEBHOOK_API_VERSION: &str = "2021-10-01";

/// The product's enrollment-wide settings.
#[must_use]
pub fn policy(product: &Product) -> Policy {
    let p = &product.profile;
    let reprovision = match p.reprovision {
        Reprovision::Migrate => ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: true,
        },
        Reprovision::Reset => ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: false,
        },
        Reprovision::Never => ReprovisionPolicy {
            update_hub_assignment: false,
            migrate_device_data: false,
        },
    };
    let allocation = match p.allocation.policy {
        AllocationPolicy::Hashed => WireAllocation::Hashed,
        AllocationPolicy::GeoLatency => WireAllocation::GeoLatency,
        AllocationPolicy::Static => WireAllocation::Static,
        AllocationPolicy::Custom => WireAllocation::Custom,
    };
    Policy {
        provisioning_status: match p.provisioning_status {
            ProvisioningStatus::Enabled => WireStatus::Enabled,
            ProvisioningStatus::Disabled => WireStatus::Disabled,
        },
        reprovision,
        allocation,
        iot_hubs: (!p.allocation.iot_hubs.is_empty()).then(|| p.allocation.iot_hubs.clone()),
        custom: p
            .allocation
            .webhook_url
            .as_ref()
            .map(|url| CustomAllocationDefinition {
                webhook_url: url.clone(),
                api_version: p
                    .allocation
                    .webhook_api_version
                    .clone()
                    .unwrap_or_else(|| DEFAULT_WEBHOOK_API_VERSION.to_owned()),
            }),
        capabilities: p.iot_edge.then_some(DeviceCapabilities { iot_edge: true }),
    }
}

/// The initial twin for these values (`None` when the profile has none).
#[must_use]
pub fn initial_twin(product: &Product, values: &UnitValues) -> Option<InitialTwin> {
    let (tags, desired) = product.render_twin(&values.map());
    let tags = tags.as_object().filter(|m| !m.is_empty()).cloned();
    let desired = desired.as_object().filter(|m| !m.is_empty()).cloned();
    if tags.is_none() && desired.is_none() {
        return None;
    }
    Some(InitialTwin {
        tags,
        properties: desired.map(|d| InitialTwinProperties { desired: Some(d) }),
    })
}

/// A unit's individual enrollment.
#[must_use]
pub fn individual_enrollment(
    product: &Product,
    values: &UnitValues,
    registration_id: RegistrationId,
    device_id: DeviceId,
    identity: Identity,
) -> IndividualEnrollment {
    let attestation = match identity {
        Identity::Tpm {
            endorsement_key,
            storage_root_key,
        } => {
            let mut a = AttestationMechanism::tpm(endorsement_key);
            if let Some(t) = a.tpm.as_mut() {
                t.storage_root_key = storage_root_key;
            }
            a
        }
        Identity::X509 { leaf_pem } => AttestationMechanism::x509_client(leaf_pem),
        Identity::Symmetric { primary, secondary } => {
            AttestationMechanism::symmetric_key(Some(primary), Some(secondary))
        }
    };
    let p = policy(product);
    IndividualEnrollment {
        registration_id,
        device_id: Some(device_id),
        registration_state: None,
        optional_device_information: None,
        attestation,
        capabilities: p.capabilities,
        iot_hub_host_name: None,
        initial_twin: initial_twin(product, values),
        etag: None,
        provisioning_status: Some(p.provisioning_status),
        reprovision_policy: Some(p.reprovision),
        created_date_time_utc: None,
        last_updated_date_time_utc: None,
        allocation_policy: Some(p.allocation),
        iot_hubs: p.iot_hubs,
        custom_allocation_definition: p.custom,
    }
}

/// The enrollment as recorded in the station's database: symmetric keys removed (DPS has
/// them; the station keeps them only sealed in the outbox until uploaded).
#[must_use]
pub fn without_secrets(e: &IndividualEnrollment) -> serde_json::Value {
    let mut e = e.clone();
    if let Some(s) = e.attestation.symmetric_key.as_mut() {
        s.primary_key = None;
        s.secondary_key = None;
    }
    serde_json::to_value(&e).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_x509_product_gives_a_typed_twin_and_its_policies() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products");
        let p = Product::load(&dir.join("sensor-x509.toml")).unwrap();
        let mut v = UnitValues {
            serial: "SX-000042".into(),
            lot: "WO-1".into(),
            hw_rev: "B2".into(),
            fw_version: "2.4.1".into(),
            fixture: "fx1".into(),
            ..UnitValues::default()
        };
        let rid = registration_id(&p, &v).unwrap();
        assert_eq!(rid.as_str(), "SX-000042");
        v.registration_id = rid.to_string();
        let did = device_id(&p, &v).unwrap();
        let e = individual_enrollment(
            &p,
            &v,
            rid,
            did,
            Identity::X509 {
                leaf_pem: "-----BEGIN CERTIFICATE-----".into(),
            },
        );
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["deviceId"], "SX-000042");
        assert_eq!(j["initialTwin"]["tags"]["lot"], "WO-1");
        assert_eq!(
            j["initialTwin"]["properties"]["desired"]["reporting"]["interval_s"],
            300
        );
        assert_eq!(j["allocationPolicy"], "hashed");
        assert_eq!(j["attestation"]["type"], "x509");
    }

    #[test]
    fn symmetric_keys_are_not_in_the_recorded_body() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/products");
        let p = Product::load(&dir.join("sensor-x509.toml")).unwrap();
        let v = UnitValues {
            serial: "SX-1".into(),
            ..UnitValues::default()
        };
        let e = individual_enrollment(
            &p,
            &v,
            RegistrationId::new("SX-1").unwrap(),
            DeviceId::new("SX-1").unwrap(),
            Identity::Symmetric {
                primary: dps::wire::KeyText::new("cHJpbWFyeS1zZWNyZXQ="),
                secondary: dps::wire::KeyText::new("c2Vjb25kYXJ5LXNlY3JldA=="),
            },
        );
        let body = without_secrets(&e).to_string();
        assert!(!body.contains("cHJpbWFyeS1zZWNyZXQ="), "{body}");
        assert!(!body.contains("c2Vjb25kYXJ5"), "{body}");
        assert!(body.contains("symmetricKey"), "{body}");
    }
}
