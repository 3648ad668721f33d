//! The TPM attestation of an individual enrollment, as DPS wants it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// `{"type": "tpm", "tpm": {"endorsementKey": .., "storageRootKey": ..}}` of an individual
/// enrollment: base64 of each key's TPM2B_PUBLIC (never the EK certificate, which DPS rejects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "tpm")]
pub struct TpmEnrollmentAttestation {
    /// The two keys.
    pub tpm: TpmAttestationKeys,
}

/// The keys of a TPM attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestationKeys {
    /// Base64 TPM2B_PUBLIC of the EK persisted at the EK handle.
    pub endorsement_key: String,
    /// Base64 TPM2B_PUBLIC of the SRK at 0x81000001, when the unit has one yet.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage_root_key: Option<String>,
}

impl TpmEnrollmentAttestation {
    /// Builds the attestation from the raw TPM2B_PUBLIC bytes.
    #[must_use]
    pub fn new(ek_tpm2b_public: &[u8], srk_tpm2b_public: Option<&[u8]>) -> Self {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        Self {
            tpm: TpmAttestationKeys {
                endorsement_key: b64(ek_tpm2b_public),
                storage_root_key: srk_tpm2b_public.map(b64),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_dps_attestation() {
        let a = TpmEnrollmentAttestation::new(&[1, 2, 3], Some(&[4, 5]));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "tpm", "tpm": {"endorsementKey": "AQID", "storageRootKey": "BAU="}})
        );
        let back: TpmEnrollmentAttestation = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
        let no_srk = serde_json::to_value(TpmEnrollmentAttestation::new(&[1], None)).unwrap();
        assert_eq!(
            no_srk,
            serde_json::json!({"type": "tpm", "tpm": {"endorsementKey": "AQ=="}})
        );
    }
}
