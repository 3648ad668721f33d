//! Enrollment groups in DPS, made and kept up to date from product profiles.
//!
//! The station owns the profile-controlled fields of a group (attestation kind and signing
//! certificate, initial twin, allocation, reprovisioning, IoT Edge, provisioning status). A
//! symmetric-key group is created with empty keys so that DPS generates them; the station
//! then reads the primary key once, through the attestation-mechanism call, to import it into
//! the HSM. That read is the only time the group key is in the clear on the station, and only
//! in transit: it is never written anywhere but the HSM.
//!
//! The group's initial twin is shared by every member, so it is rendered with product-level
//! values only: `{product}`, `{model}` and `{station}`. Per-unit placeholders (`{serial}`,
//! `{lot}`, `{registration_id}`, `{hw_rev}`, `{fw_version}`, `{fixture}`, `{operator}`,
//! `{manufactured_at}`) render as empty text in a group's twin.

use std::collections::BTreeMap;

use dps::client::{ClientError, ServiceClient};
use dps::wire::{
    AllocationPolicy as WireAllocation, AttestationMechanism, AttestationType, DeviceCapabilities,
    EnrollmentGroup, InitialTwin, InitialTwinProperties,
};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::profile::{Attestation, Enrollment, Product};
use crate::ids::StationId;

/// Why a group could not be built or synchronised.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The product enrolls its units individually.
    #[error("the product uses individual enrollments, not a group")]
    NotAGroup {
        /// The product.
        product: String,
    },
    /// The product's attestation cannot be a DPS group.
    #[error("{kind} attestation has no enrollment group in DPS")]
    Unsupported {
        /// The product.
        product: String,
        /// Its attestation kind.
        kind: &'static str,
    },
    /// An x509 group needs the station's issuing CA certificate.
    #[error("an x509 group needs the station's issuing CA certificate")]
    NoSigningCertificate {
        /// The product.
        product: String,
    },
    /// The group id is not valid for DPS.
    #[error("group id {group_id:?} is not valid for DPS")]
    BadGroupId {
        /// The id.
        group_id: String,
        /// Why.
        #[source]
        source: dps::ids::IdError,
    },
    /// Reading the group from DPS failed.
    #[error("reading enrollment group {group_id} from DPS failed")]
    Fetch {
        /// The group.
        group_id: String,
        /// Client error.
        #[source]
        source: ClientError,
    },
    /// Creating the group failed.
    #[error("creating enrollment group {group_id} in DPS failed")]
    Create {
        /// The group.
        group_id: String,
        /// Client error.
        #[source]
        source: ClientError,
    },
    /// Updating the group failed.
    #[error("updating enrollment group {group_id} in DPS failed")]
    Update {
        /// The group.
        group_id: String,
        /// Client error.
        #[source]
        source: ClientError,
    },
    /// Someone else changed the group between our read and our write.
    #[error(
        "enrollment group {group_id} changed in DPS while the station updated it; run the sync again"
    )]
    Changed {
        /// The group.
        group_id: String,
    },
    /// Reading the group's keys failed.
    #[error("reading the keys of enrollment group {group_id} from DPS failed")]
    ReadKeys {
        /// The group.
        group_id: String,
        /// Client error.
        #[source]
        source: ClientError,
    },
    /// DPS returned a symmetric group without a primary key.
    #[error("DPS returned enrollment group {group_id} without a primary key")]
    NoPrimaryKey {
        /// The group.
        group_id: String,
    },
}

/// What a sync did to the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// The group did not exist and was created.
    Created,
    /// The group differed from the profile in these fields and was updated.
    Updated(Vec<&'static str>),
    /// The group already matched the profile.
    Unchanged,
}

impl GroupChange {
    /// One word for output and audit details.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated(_) => "updated",
            Self::Unchanged => "unchanged",
        }
    }
}

/// The outcome of `sync_group`. The primary key (symmetric groups only) is for the HSM import
/// and nothing else; Debug shows it redacted.
#[derive(Debug)]
pub struct GroupSync {
    /// The group's id.
    pub group_id: String,
    /// The group's etag in DPS after the sync.
    pub etag: Option<String>,
    /// Its attestation type.
    pub attestation: AttestationType,
    /// What the sync did.
    pub change: GroupChange,
    /// The group's primary key as DPS generated it (symmetric groups).
    pub primary_key: Option<SecretString>,
}

/// The group id of a group-enrolled product.
pub fn group_id(product: &Product) -> Result<&str, GroupError> {
    match &product.profile.enrollment {
        Enrollment::Group { group_id } => Ok(group_id),
        Enrollment::Individual => Err(GroupError::NotAGroup {
            product: product.name.to_string(),
        }),
    }
}

/// The group DPS should hold for a product. `signing_cert_pem` is the station's issuing CA
/// certificate, needed for x509 products.
pub fn desired_group(
    product: &Product,
    station: &StationId,
    signing_cert_pem: Option<&str>,
) -> Result<EnrollmentGroup, GroupError> {
    let gid = group_id(product)?;
    let id =
        dps::EnrollmentGroupId::new(gid.to_owned()).map_err(|source| GroupError::BadGroupId {
            group_id: gid.to_owned(),
            source,
        })?;
    let p = &product.profile;
    let attestation = match &p.attestation {
        Attestation::SymmetricGroup => AttestationMechanism::symmetric_key(None, None),
        Attestation::X509Link | Attestation::X509Pkcs11 { .. } => {
            let pem = signing_cert_pem.ok_or_else(|| GroupError::NoSigningCertificate {
                product: product.name.to_string(),
            })?;
            AttestationMechanism::x509_signing(pem)
        }
        other @ (Attestation::Tpm | Attestation::SymmetricIndividual) => {
            return Err(GroupError::Unsupported {
                product: product.name.to_string(),
                kind: other.kind(),
            });
        }
    };
    let mut g = EnrollmentGroup::new(id, attestation);
    g.capabilities = Some(DeviceCapabilities {
        iot_edge: p.iot_edge,
    });
    let policy = super::build::policy(product);
    g.provisioning_status = Some(policy.provisioning_status);
    g.reprovision_policy = Some(policy.reprovision);
    g.allocation_policy = Some(policy.allocation);
    g.iot_hubs = policy.iot_hubs;
    g.custom_allocation_definition = policy.custom;
    let mut values = BTreeMap::new();
    values.insert("product", product.name.to_string());
    values.insert("model", p.model.clone());
    values.insert("station", station.to_string());
    let (tags, desired) = product.render_twin(&values);
    let as_map = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) if !m.is_empty() => Some(m),
        _ => None,
    };
    let (tags, desired) = (as_map(tags), as_map(desired));
    if tags.is_some() || desired.is_some() {
        g.initial_twin = Some(InitialTwin {
            tags,
            properties: desired.map(|d| InitialTwinProperties { desired: Some(d) }),
        });
    }
    Ok(g)
}

/// The profile-controlled fields in which `actual` differs from `desired` (empty: in step).
/// Fields DPS fills (etag, timestamps, keys, certificate info) are not compared, except that
/// an x509 group's signing certificate is compared by the SHA-256 thumbprint DPS reports.
#[must_use]
pub fn differences(desired: &EnrollmentGroup, actual: &EnrollmentGroup) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !same_attestation(&desired.attestation, &actual.attestation) {
        out.push("attestation");
    }
    let twin = |g: &EnrollmentGroup| {
        let t = g.initial_twin.clone().unwrap_or_default();
        (
            t.tags.unwrap_or_default(),
            t.properties.and_then(|p| p.desired).unwrap_or_default(),
        )
    };
    if twin(desired) != twin(actual) {
        out.push("initialTwin");
    }
    if desired.allocation_policy.unwrap_or(WireAllocation::Hashed)
        != actual.allocation_policy.unwrap_or(WireAllocation::Hashed)
    {
        out.push("allocationPolicy");
    }
    let hubs = |g: &EnrollmentGroup| {
        let mut h: Vec<String> = g
            .iot_hubs
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        h.sort();
        h
    };
    if hubs(desired) != hubs(actual) {
        out.push("iotHubs");
    }
    if desired.custom_allocation_definition != actual.custom_allocation_definition {
        out.push("customAllocationDefinition");
    }
    if desired.reprovision_policy.unwrap_or_default()
        != actual.reprovision_policy.unwrap_or_default()
    {
        out.push("reprovisionPolicy");
    }
    if desired.capabilities.unwrap_or_default() != actual.capabilities.unwrap_or_default() {
        out.push("capabilities");
    }
    if desired.provisioning_status.unwrap_or_default()
        != actual.provisioning_status.unwrap_or_default()
    {
        out.push("provisioningStatus");
    }
    out
}

fn same_attestation(desired: &AttestationMechanism, actual: &AttestationMechanism) -> bool {
    if desired.kind != actual.kind {
        return false;
    }
    match desired.kind {
        AttestationType::X509 => {
            let want = desired
                .x509
                .as_ref()
                .and_then(|x| x.signing_certificates.as_ref())
                .and_then(|c| c.primary.as_ref())
                .and_then(|c| c.certificate.as_deref())
                .and_then(pem_thumbprint);
            let have = actual
                .x509
                .as_ref()
                .and_then(|x| x.signing_certificates.as_ref())
                .and_then(|c| c.primary.as_ref())
                .and_then(|c| c.info.as_ref())
                .map(|i| i.sha256_thumbprint.to_ascii_uppercase());
            want.is_some() && want == have
        }
        _ => true,
    }
}

/// Upper-case hex SHA-256 of the first certificate in a PEM text (DPS's thumbprint form).
fn pem_thumbprint(pem: &str) -> Option<String> {
    crate::ca::verify::from_pem_bundle(pem.as_bytes())
        .first()
        .map(|der| hex::encode_upper(Sha256::digest(der)))
}

/// Makes DPS hold `desired`: creates the group if absent, updates it (If-Match its etag) if a
/// profile-controlled field differs, keeping the keys DPS generated; for a symmetric group,
/// reads its primary key for the HSM import.
pub async fn sync_group(
    client: &ServiceClient,
    desired: &EnrollmentGroup,
) -> Result<GroupSync, GroupError> {
    let id = &desired.enrollment_group_id;
    let gid = id.to_string();
    let symmetric = desired.attestation.kind == AttestationType::SymmetricKey;
    let mut keys: Option<AttestationMechanism> = None;
    let (stored, change) = match client.get_group(id).await {
        Ok(actual) => {
            let diffs = differences(desired, &actual);
            if diffs.is_empty() {
                (actual, GroupChange::Unchanged)
            } else {
                let mut body = desired.clone();
                body.etag = None;
                if symmetric && actual.attestation.kind == AttestationType::SymmetricKey {
                    // Send DPS's own keys back: a symmetric group without keys would get new
                    // ones, and every unit already made would stop authenticating.
                    let a = client.group_attestation(id).await.map_err(|source| {
                        GroupError::ReadKeys {
                            group_id: gid.clone(),
                            source,
                        }
                    })?;
                    body.attestation = a.clone();
                    keys = Some(a);
                }
                let stored = client
                    .create_or_update_group(&body, actual.etag.as_deref())
                    .await
                    .map_err(|source| match source.status() {
                        Some(412) => GroupError::Changed {
                            group_id: gid.clone(),
                        },
                        _ => GroupError::Update {
                            group_id: gid.clone(),
                            source,
                        },
                    })?;
                (stored, GroupChange::Updated(diffs))
            }
        }
        Err(e) if e.status() == Some(404) => {
            let stored = client
                .create_or_update_group(desired, None)
                .await
                .map_err(|source| GroupError::Create {
                    group_id: gid.clone(),
                    source,
                })?;
            (stored, GroupChange::Created)
        }
        Err(source) => {
            return Err(GroupError::Fetch {
                group_id: gid,
                source,
            });
        }
    };
    let primary_key = if symmetric {
        let a = match keys {
            Some(a) => a,
            None => client
                .group_attestation(id)
                .await
                .map_err(|source| GroupError::ReadKeys {
                    group_id: gid.clone(),
                    source,
                })?,
        };
        let k = a
            .symmetric_key
            .and_then(|s| s.primary_key)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| GroupError::NoPrimaryKey {
                group_id: gid.clone(),
            })?;
        Some(SecretString::from(k.expose().to_owned()))
    } else {
        None
    };
    Ok(GroupSync {
        group_id: stored.enrollment_group_id.to_string(),
        etag: stored.etag,
        attestation: stored.attestation.kind,
        change,
        primary_key,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use dps::wire::{
        ProvisioningStatus as WireStatus, ReprovisionPolicy, X509CertificateInfo,
        X509CertificateWithInfo,
    };

    use super::*;
    use crate::enroll::build::DEFAULT_WEBHOOK_API_VERSION;

    fn load(name: &str, text: &str) -> Product {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        Product::load(&p).unwrap()
    }

    fn station() -> StationId {
        StationId::new("line-7").unwrap()
    }

    const SYM: &str = r#"
model = "SY-10"
serial_pattern = "SY-[0-9]{6}"
dps_target = "local"
attestation = { kind = "symmetric-group" }
enrollment = { kind = "group", group_id = "sy-fleet" }
[initial_twin.tags]
product = "{product}"
where = "{station}/{model}/{serial}/{lot}"
line = 3
"#;

    #[test]
    fn a_symmetric_group_asks_dps_for_keys_and_renders_product_values_only() {
        let g = desired_group(&load("sensor-sym", SYM), &station(), None).unwrap();
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["enrollmentGroupId"], "sy-fleet");
        assert_eq!(
            json["attestation"],
            serde_json::json!({"type": "symmetricKey", "symmetricKey": {}})
        );
        assert_eq!(
            json["initialTwin"],
            serde_json::json!({"tags": {"product": "sensor-sym", "where": "line-7/SY-10//", "line": 3}})
        );
        assert_eq!(json["allocationPolicy"], "hashed");
        assert_eq!(json["provisioningStatus"], "enabled");
        assert_eq!(
            json["reprovisionPolicy"],
            serde_json::json!({"updateHubAssignment": true, "migrateDeviceData": true})
        );
        assert_eq!(json["capabilities"], serde_json::json!({"iotEdge": false}));
        assert!(json.get("iotHubs").is_none());
    }

    #[test]
    fn x509_groups_carry_the_station_ca_and_individual_products_have_no_group() {
        let text = SYM.replace("symmetric-group", "x509-link").replace(
            "[initial_twin.tags]",
            "reprovision = \"never\"\n[initial_twin.tags]",
        );
        let p = load("sx", &text);
        assert!(matches!(
            desired_group(&p, &station(), None),
            Err(GroupError::NoSigningCertificate { .. })
        ));
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let pem = ca.cert.pem();
        let g = desired_group(&p, &station(), Some(&pem)).unwrap();
        let x = g.attestation.x509.as_ref().unwrap();
        let primary = x
            .signing_certificates
            .as_ref()
            .unwrap()
            .primary
            .as_ref()
            .unwrap();
        assert_eq!(primary.certificate.as_deref(), Some(pem.as_str()));
        assert_eq!(
            g.reprovision_policy,
            Some(ReprovisionPolicy {
                update_hub_assignment: false,
                migrate_device_data: false
            })
        );

        // What DPS returns: the certificate text stripped, its thumbprint in `info`.
        let mut actual = g.clone();
        let thumb = hex::encode_upper(Sha256::digest(ca.cert.der()));
        let info = |t: &str| X509CertificateInfo {
            sha256_thumbprint: t.to_owned(),
            ..X509CertificateInfo::default()
        };
        let set = |a: &mut EnrollmentGroup, t: &str| {
            a.attestation
                .x509
                .as_mut()
                .unwrap()
                .signing_certificates
                .as_mut()
                .unwrap()
                .primary = Some(X509CertificateWithInfo {
                certificate: None,
                info: Some(info(t)),
            });
        };
        set(&mut actual, &thumb.to_ascii_lowercase());
        assert!(differences(&g, &actual).is_empty());
        set(&mut actual, &"AB".repeat(32));
        assert_eq!(differences(&g, &actual), vec!["attestation"]);

        let tpm = load(
            "st",
            "serial_pattern = \".+\"\ndps_target = \"local\"\nattestation = { kind = \"tpm\" }\n",
        );
        assert!(matches!(
            desired_group(&tpm, &station(), None),
            Err(GroupError::NotAGroup { .. })
        ));
    }

    #[test]
    fn a_group_and_an_individual_enrollment_of_one_product_get_the_same_policy() {
        let text = SYM.replace(
            "[initial_twin.tags]",
            "reprovision = \"never\"\n[allocation]\npolicy = \"custom\"\nwebhook_url = \"https://alloc.example/x\"\n[initial_twin.tags]",
        );
        let product = load("p", &text);
        let g = desired_group(&product, &station(), None).unwrap();
        let individual = crate::enroll::build::policy(&product);
        assert_eq!(
            g.custom_allocation_definition, individual.custom,
            "the webhook (and its API version when the profile names none)"
        );
        assert_eq!(g.reprovision_policy, Some(individual.reprovision));
        assert_eq!(g.allocation_policy, Some(individual.allocation));
        assert_eq!(
            g.reprovision_policy,
            Some(ReprovisionPolicy {
                update_hub_assignment: false,
                migrate_device_data: false,
            })
        );
    }

    #[test]
    fn defaults_dps_leaves_out_do_not_count_as_differences() {
        let text = SYM.replace(
            "[initial_twin.tags]",
            "[allocation]\npolicy = \"custom\"\nwebhook_url = \"https://alloc.example/x\"\n[initial_twin.tags]",
        );
        let g = desired_group(&load("p", &text), &station(), None).unwrap();
        assert_eq!(
            g.custom_allocation_definition.as_ref().unwrap().api_version,
            DEFAULT_WEBHOOK_API_VERSION
        );
        let mut actual = g.clone();
        actual.capabilities = None;
        actual.provisioning_status = None;
        actual.reprovision_policy = None;
        actual.etag = Some("\"e1\"".into());
        assert!(differences(&g, &actual).is_empty());

        let mut hubs = g.clone();
        hubs.iot_hubs = Some(vec!["B.local".into(), "a.local".into()]);
        let mut other = g.clone();
        other.iot_hubs = Some(vec!["a.local".into(), "b.local".into()]);
        assert!(differences(&hubs, &other).is_empty());

        let mut changed = g.clone();
        changed.provisioning_status = Some(WireStatus::Disabled);
        changed.capabilities = Some(DeviceCapabilities { iot_edge: true });
        changed.initial_twin = None;
        changed.allocation_policy = Some(WireAllocation::Hashed);
        assert_eq!(
            differences(&g, &changed),
            vec![
                "initialTwin",
                "allocationPolicy",
                "capabilities",
                "provisioningStatus"
            ]
        );
    }

    #[test]
    fn a_sync_result_does_not_show_its_key() {
        let s = GroupSync {
            group_id: "g".into(),
            etag: None,
            attestation: AttestationType::SymmetricKey,
            change: GroupChange::Created,
            primary_key: Some(SecretString::from("c2VjcmV0LWdyb3VwLWtleQ==".to_owned())),
        };
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("c2VjcmV0LWdyb3VwLWtleQ=="), "{dbg}");
    }
}
