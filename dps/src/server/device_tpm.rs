//! TPM units on the device API (HTTPS only, as in Azure DPS): the nonce challenge of
//! `shared/notes/dps-tpm.md`.
//!
//! 1. The unit PUTs `register` with `tpm: {endorsementKey, storageRootKey}` and no token. Its
//!    individual enrollment must hold that very EK (DPS has no TPM groups). The service draws
//!    a 32-byte HMAC key, builds the `authenticationKey` blob that only this TPM can import
//!    (`crate::tpm`) and answers 401 `{authenticationKey, keyName: "registration"}`.
//! 2. The unit imports the key into its TPM and PUTs `register` again with a SAS token signed
//!    there; the service checks it with the key it drew, and the registration proceeds as for
//!    any unit. Polls carry the same token.
//! 3. The assigned answer carries `registrationState.tpm.authenticationKey`: the same key in
//!    a new blob, the key the unit uses with its hub (both SDKs import it, and fail without).
//!
//! The drawn key is held in memory for [`PENDING_FOR`]: a unit that comes back later, or after
//! a restart of the service, is simply challenged again, as the SDKs expect.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::error::ServiceError;
use super::records;
use super::state::AppState;
use super::store::Table;
use crate::sas::SharedAccessKey;
use crate::tpm::authentication_key_blob;
use crate::wire::{AttestationType, IndividualEnrollment, TpmAttestation, TpmChallenge};

/// How long a drawn key waits for the unit's signed call.
pub const PENDING_FOR: Duration = Duration::from_secs(600);
/// Most challenges held at once (older ones go first).
const MAX_PENDING: usize = 10_000;

/// A challenge sent and not yet expired.
struct Pending {
    key: Zeroizing<Vec<u8>>,
    ek: Vec<u8>,
    srk: Vec<u8>,
    at: Instant,
}

/// The challenges sent, by lower-case registration ID.
#[derive(Default)]
pub struct TpmChallenges(Mutex<HashMap<String, Pending>>);

impl std::fmt::Debug for TpmChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "TpmChallenges({n} pending)")
    }
}

impl TpmChallenges {
    /// The key drawn for `key` (lower-case registration ID), while it is fresh.
    #[must_use]
    pub fn key_for(&self, key: &str) -> Option<SharedAccessKey> {
        let m = self.0.lock().ok()?;
        let p = m.get(key).filter(|p| p.at.elapsed() < PENDING_FOR)?;
        Some(SharedAccessKey::from_bytes(p.key.to_vec()))
    }

    /// The hub key for an assigned unit: the drawn key in a new blob.
    #[must_use]
    pub fn hub_key_blob(&self, key: &str) -> Option<String> {
        let m = self.0.lock().ok()?;
        let p = m.get(key)?;
        authentication_key_blob(&p.ek, &p.srk, &p.key)
            .ok()
            .map(|b| B64.encode(b))
    }

    fn insert(&self, key: String, p: Pending) {
        let Ok(mut m) = self.0.lock() else { return };
        m.retain(|_, v| v.at.elapsed() < PENDING_FOR);
        if m.len() >= MAX_PENDING
            && let Some(oldest) = m.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(key, p);
    }
}

fn decode(field: &str, b64: &str) -> Result<Vec<u8>, ServiceError> {
    B64.decode(b64.trim())
        .map_err(|e| ServiceError::invalid(field, format!("is not base64: {e}")))
}

/// Step 1: the challenge for a unit's first call, after checking its EK is the enrolled one.
pub fn challenge(
    st: &AppState,
    id: &str,
    request: &serde_json::Value,
) -> Result<TpmChallenge, ServiceError> {
    let tpm: TpmAttestation =
        serde_json::from_value(request.clone()).map_err(|e| ServiceError::invalid("tpm", e))?;
    let ek = decode("tpm.endorsementKey", &tpm.endorsement_key)?;
    let srk = tpm
        .storage_root_key
        .as_deref()
        .ok_or_else(|| {
            ServiceError::invalid(
                "tpm.storageRootKey",
                "is required: the challenge key is imported under the SRK",
            )
        })
        .and_then(|s| decode("tpm.storageRootKey", s))?;
    let key = super::registrations::key(id)?;
    let enrollment: Option<IndividualEnrollment> = st
        .store
        .read(|tx| tx.get(Table::Enrollments, &key))?
        .map(|row| records::decode(&row.json))
        .transpose()?;
    let Some(e) = enrollment else {
        return Err(ServiceError::unauthorized(format!(
            "no individual enrollment for {id} (TPM units are enrolled individually)"
        )));
    };
    let enrolled = match (&e.attestation.kind, &e.attestation.tpm) {
        (AttestationType::Tpm, Some(t)) => decode("endorsementKey", &t.endorsement_key)?,
        (kind, _) => {
            return Err(ServiceError::unauthorized(format!(
                "the individual enrollment {id} uses {} attestation, not TPM",
                kind.as_str()
            )));
        }
    };
    if enrolled != ek {
        return Err(ServiceError::unauthorized(format!(
            "the endorsement key sent is not the one enrolled for {id}"
        )));
    }
    let mut hmac_key = Zeroizing::new(vec![0u8; 32]);
    rand::fill(&mut hmac_key[..]);
    let blob = authentication_key_blob(&ek, &srk, &hmac_key)
        .map_err(|e| ServiceError::invalid("tpm", e))?;
    st.tpm.insert(
        key,
        Pending {
            key: hmac_key,
            ek,
            srk,
            at: Instant::now(),
        },
    );
    Ok(TpmChallenge {
        authentication_key: B64.encode(blob),
        key_name: "registration".into(),
    })
}
