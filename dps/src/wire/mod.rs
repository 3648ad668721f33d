//! Serde types for the DPS service API, schema 2021-10-01.
//!
//! Field names follow the REST spec exactly (camelCase). Unknown input fields are ignored
//! (never `deny_unknown_fields`): newer clients may send fields this schema does not know.
//! Read-only fields the service fills (etag, timestamps, x509 `info`) are `Option`s so that
//! a client can send an object without them.

pub mod attestation;
pub mod bulk;
pub mod enrollment;
pub mod error;
pub mod group;
pub mod query;
pub mod registration;
pub mod secret;
pub mod twin;

pub use attestation::{
    AttestationMechanism, AttestationType, SymmetricKeyAttestation, TpmAttestation,
    X509Attestation, X509CaReferences, X509CertificateInfo, X509CertificateWithInfo,
    X509Certificates,
};
pub use bulk::{
    BulkEnrollmentGroupOperation, BulkEnrollmentGroupOperationError,
    BulkEnrollmentGroupOperationResult, BulkEnrollmentOperation, BulkEnrollmentOperationError,
    BulkEnrollmentOperationResult, BulkMode, MAX_BULK_ITEMS,
};
pub use enrollment::{
    AllocationPolicy, CustomAllocationDefinition, DeviceCapabilities, IndividualEnrollment,
    ProvisioningStatus, ReprovisionPolicy,
};
pub use error::ProvisioningServiceErrorDetails;
pub use group::EnrollmentGroup;
pub use query::{ItemType, QuerySpecification};
pub use registration::{
    DeviceRegistration, DeviceRegistrationState, RegistrationOperationStatus, RegistrationStatus,
    RegistrationSubstatus, TpmAuthenticationKey, TpmChallenge,
};
pub use secret::KeyText;
pub use twin::{InitialTwin, InitialTwinProperties};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_captured_node_bodies_and_tolerates_unknown_fields() {
        let body = r#"{"registrationId":"dev-sym-1","deviceId":"dev-sym-1",
          "attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"AAAA","secondaryKey":"BBBB"}},
          "provisioningStatus":"enabled","allocationPolicy":"static","iotHubs":["hub-a.example.test"],
          "initialTwin":{"tags":{"site":"factory-7"},"properties":{"desired":{"fw":"1.2.3"}}},
          "capabilities":{"iotEdge":false},"reprovisionPolicy":{"updateHubAssignment":true,"migrateDeviceData":true},
          "someFutureField":{"x":1}}"#;
        let e: IndividualEnrollment = serde_json::from_str(body).unwrap();
        assert_eq!(e.registration_id.as_str(), "dev-sym-1");
        assert_eq!(e.allocation_policy, Some(AllocationPolicy::Static));
        assert_eq!(e.attestation.kind, AttestationType::SymmetricKey);
        let keys = e.attestation.symmetric_key.as_ref().unwrap();
        assert_eq!(keys.primary_key.as_ref().unwrap().expose(), "AAAA");
        let twin = e.initial_twin.as_ref().unwrap();
        assert_eq!(twin.tags.as_ref().unwrap()["site"], "factory-7");

        let g: EnrollmentGroup = serde_json::from_str(
            r#"{"enrollmentGroupId":"grp-x509","attestation":{"type":"x509","x509":{"caReferences":{"primary":"my-verified-ca"}}}}"#,
        )
        .unwrap();
        let refs = g.attestation.x509.unwrap().ca_references.unwrap();
        assert_eq!(refs.primary.as_deref(), Some("my-verified-ca"));
    }

    #[test]
    fn round_trip_keeps_camel_case_and_omits_absent_fields() {
        let e = IndividualEnrollment::new(
            crate::RegistrationId::new("tpm-dev-1").unwrap(),
            AttestationMechanism::tpm("AToAAQ=="),
        );
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"registrationId":"tpm-dev-1","attestation":{"type":"tpm","tpm":{"endorsementKey":"AToAAQ=="}}}"#
        );
        let back: IndividualEnrollment = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn bad_ids_and_unknown_attestation_types_are_refused_with_the_field_path() {
        let bad_id = r#"{"registrationId":"bad id","attestation":{"type":"tpm","tpm":{"endorsementKey":"AA=="}}}"#;
        let err = serde_path_to_error::deserialize::<_, IndividualEnrollment>(
            &mut serde_json::Deserializer::from_str(bad_id),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "registrationId");

        let bad_type = r#"{"registrationId":"ok","attestation":{"type":"psk"}}"#;
        let err = serde_path_to_error::deserialize::<_, IndividualEnrollment>(
            &mut serde_json::Deserializer::from_str(bad_type),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "attestation.type");
    }

    #[test]
    fn bulk_mode_accepts_both_etag_spellings() {
        for m in ["\"updateIfMatchETag\"", "\"updateIfMatchEtag\""] {
            assert_eq!(
                serde_json::from_str::<BulkMode>(m).unwrap(),
                BulkMode::UpdateIfMatchEtag
            );
        }
        assert_eq!(
            serde_json::to_string(&BulkMode::Create).unwrap(),
            "\"create\""
        );
    }

    #[test]
    fn symmetric_keys_do_not_show_in_debug() {
        let a = AttestationMechanism::symmetric_key(Some(KeyText::new("c2VjcmV0")), None);
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("c2VjcmV0"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }
}
