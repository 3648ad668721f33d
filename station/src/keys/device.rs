//! A unit's symmetric key: derived in the HSM from its group's key, or drawn from the HSM's RNG.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::object::ObjectClass;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use super::error::KeyError;
use super::group_key::group_key_label;
use crate::hsm::{HsmError, TokenSession};

/// Length of an individual unit key from the RNG: 64 bytes, the longest DPS accepts.
pub const RANDOM_KEY_BYTES: usize = 64;

/// A unit's symmetric key in raw bytes, wiped on drop and never shown in Debug output.
pub struct DeviceKey(SecretBox<Vec<u8>>);

impl DeviceKey {
    /// Wraps key bytes.
    #[must_use]
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// The raw key, for injecting into the unit or computing its HMAC proof.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The key as DPS and the device SDKs write it: base64.
    #[must_use]
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(B64.encode(self.0.expose_secret()))
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// The unit key DPS expects for a member of a symmetric-key group:
/// HMAC-SHA256 keyed with the group key over the UTF-8 registration ID, computed inside the
/// HSM with the imported group key. The registration ID is used exactly as given: DPS
/// derives over the ID the device presents, so the caller passes the ID the unit will use.
pub fn derive_device_key(
    session: &TokenSession,
    group_id: &str,
    registration_id: &str,
) -> Result<DeviceKey, KeyError> {
    let label = group_key_label(group_id);
    let key = match session.find_secret_key(&label) {
        Ok(k) => k,
        Err(HsmError::KeyNotFound { .. }) => {
            return Err(KeyError::GroupKeyMissing {
                group_id: group_id.to_owned(),
            });
        }
        Err(source) => {
            return Err(KeyError::FindGroupKey {
                group_id: group_id.to_owned(),
                source: Box::new(source),
            });
        }
    };
    let mac = session
        .hmac_sha256(key, &label, registration_id.as_bytes())
        .map_err(|source| KeyError::Derive {
            group_id: group_id.to_owned(),
            registration_id: registration_id.to_owned(),
            source: Box::new(source),
        })?;
    Ok(DeviceKey::from_bytes(mac))
}

/// A fresh 64-byte unit key from the HSM's RNG (C_GenerateRandom), for symmetric-individual
/// enrollments.
pub fn random_device_key(session: &TokenSession) -> Result<DeviceKey, KeyError> {
    let bytes = session
        .random_bytes(RANDOM_KEY_BYTES)
        .map_err(|e| KeyError::Random(Box::new(e)))?;
    let mut bytes = bytes;
    Ok(DeviceKey::from_bytes(std::mem::take(&mut *bytes)))
}

/// Whether the token holds a secret key with this label.
pub(super) fn has_secret(session: &TokenSession, label: &str) -> Result<bool, HsmError> {
    session.has_key(label, ObjectClass::SECRET_KEY)
}
