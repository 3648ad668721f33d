//! DPS group keys in the HSM: imported once, as they arrive from DPS, then used only through
//! CKM_SHA256_HMAC.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::device::has_secret;
use super::error::KeyError;
use crate::hsm::TokenSession;

/// Message whose HMAC tells whether the key under a label is a given key, without reading
/// the key out of the token.
const PROBE: &[u8] = b"station group-key probe v1";

/// Key lengths DPS accepts for symmetric keys, in bytes.
const DPS_KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// What `import_group_key` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKeyImport {
    /// The key was written to the token.
    Imported,
    /// The token already held this very key.
    AlreadyPresent,
}

impl GroupKeyImport {
    /// Short word for output and audit details.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imported => "imported",
            Self::AlreadyPresent => "present",
        }
    }
}

/// The token label of a group's key. DPS group ids are case-insensitive, so the label uses
/// the lower-case form: `SY-Fleet` and `sy-fleet` are one group with one key.
#[must_use]
pub fn group_key_label(group_id: &str) -> String {
    format!("dps-group-{}", group_id.to_ascii_lowercase())
}

/// Whether the token holds a key for the group.
pub fn group_key_present(session: &TokenSession, group_id: &str) -> Result<bool, KeyError> {
    has_secret(session, &group_key_label(group_id)).map_err(|source| KeyError::FindGroupKey {
        group_id: group_id.to_owned(),
        source: Box::new(source),
    })
}

/// Imports a group's primary key (base64, as DPS returns it) as a non-extractable HMAC key.
/// When the label is taken, the key there is compared with `key_b64` through the HMAC of a
/// fixed probe (in the HSM and in software): the same key is a no-op, another key is refused.
pub fn import_group_key(
    session: &TokenSession,
    group_id: &str,
    key_b64: &SecretString,
) -> Result<GroupKeyImport, KeyError> {
    let raw = Zeroizing::new(B64.decode(key_b64.expose_secret().trim()).map_err(|_| {
        KeyError::GroupKeyNotBase64 {
            group_id: group_id.to_owned(),
        }
    })?);
    if !DPS_KEY_BYTES.contains(&raw.len()) {
        return Err(KeyError::GroupKeyLength {
            group_id: group_id.to_owned(),
            len: raw.len(),
        });
    }
    let label = group_key_label(group_id);
    let find_err = |source| KeyError::FindGroupKey {
        group_id: group_id.to_owned(),
        source: Box::new(source),
    };
    if has_secret(session, &label).map_err(find_err)? {
        return if holds_key(session, group_id, &label, &raw)? {
            Ok(GroupKeyImport::AlreadyPresent)
        } else {
            Err(KeyError::GroupKeyMismatch {
                group_id: group_id.to_owned(),
                label,
            })
        };
    }
    let id = session
        .random_bytes(16)
        .map_err(|e| KeyError::Random(Box::new(e)))?;
    session
        .import_hmac_key(&label, &id, &raw)
        .map_err(|source| KeyError::ImportGroupKey {
            group_id: group_id.to_owned(),
            source: Box::new(source),
        })?;
    // Read back through the token: the key there now answers the probe like the one sent.
    if holds_key(session, group_id, &label, &raw)? {
        Ok(GroupKeyImport::Imported)
    } else {
        Err(KeyError::GroupKeyMismatch {
            group_id: group_id.to_owned(),
            label,
        })
    }
}

/// Whether the token's key under `label` is `raw`, by comparing HMACs of the probe.
fn holds_key(
    session: &TokenSession,
    group_id: &str,
    label: &str,
    raw: &[u8],
) -> Result<bool, KeyError> {
    let handle = session
        .find_secret_key(label)
        .map_err(|source| KeyError::FindGroupKey {
            group_id: group_id.to_owned(),
            source: Box::new(source),
        })?;
    let in_hsm = session
        .hmac_sha256(handle, label, PROBE)
        .map_err(|source| KeyError::Derive {
            group_id: group_id.to_owned(),
            registration_id: "(probe)".to_owned(),
            source: Box::new(source),
        })?;
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(raw) else {
        // HMAC takes keys of any length; no key can fail here.
        return Ok(false);
    };
    mac.update(PROBE);
    Ok(mac.verify_slice(&in_hsm).is_ok())
}
