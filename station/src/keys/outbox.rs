//! Sealing key material that waits in the outbox (symmetric-individual enrollments carry
//! the unit's keys): AES-256-GCM under a non-extractable key in the CA token.
//!
//! Sealed format: `version (1 byte) || IV (12 bytes, from the token's RNG) || ciphertext ||
//! tag (16 bytes)`. The AAD is a domain string, so a blob sealed for another purpose under
//! the same key does not open here; a unit's kept key (`seal_kept`) is bound to its unit too.

use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::object::{ObjectClass, ObjectHandle};
use zeroize::Zeroizing;

use super::error::KeyError;
use crate::hsm::{HsmError, TokenSession};

/// Label of the outbox AES key in the CA token.
pub const OUTBOX_KEY_LABEL: &str = "station-outbox-aes";

/// Additional authenticated data of every sealed outbox payload.
pub const OUTBOX_AAD: &[u8] = b"station outbox payload v1";

/// Additional authenticated data of the key kept for unit `unit_id` (see `seal_kept`).
fn kept_key_aad(unit_id: i64) -> Vec<u8> {
    format!("station kept unit key v1 unit {unit_id}").into_bytes()
}

const VERSION: u8 = 1;
const IV_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// Creates the outbox key if the token lacks it; returns whether it was created.
pub fn ensure_outbox_key(session: &TokenSession) -> Result<bool, KeyError> {
    if session
        .has_key(OUTBOX_KEY_LABEL, ObjectClass::SECRET_KEY)
        .map_err(|e| KeyError::OutboxKey(Box::new(e)))?
    {
        return Ok(false);
    }
    session
        .generate_aes256_key(OUTBOX_KEY_LABEL)
        .map_err(|e| KeyError::OutboxKey(Box::new(e)))?;
    Ok(true)
}

/// Seals and opens outbox payloads with the outbox key, on the caller's session.
pub struct OutboxCipher<'s> {
    session: &'s TokenSession,
    key: ObjectHandle,
}

impl std::fmt::Debug for OutboxCipher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxCipher")
            .field("token", &self.session.token())
            .field("key", &OUTBOX_KEY_LABEL)
            .finish()
    }
}

impl<'s> OutboxCipher<'s> {
    /// Finds the outbox key on the session's token.
    pub fn new(session: &'s TokenSession) -> Result<Self, KeyError> {
        let key = match session.find_secret_key(OUTBOX_KEY_LABEL) {
            Ok(k) => k,
            Err(HsmError::KeyNotFound { .. }) => {
                return Err(KeyError::OutboxKeyMissing {
                    label: OUTBOX_KEY_LABEL.to_owned(),
                });
            }
            Err(e) => return Err(KeyError::OutboxKey(Box::new(e))),
        };
        Ok(Self { session, key })
    }

    /// Encrypts `plain` under a fresh IV from the token's RNG.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.seal_with(OUTBOX_AAD, plain)
    }

    /// Seals the key kept for unit `unit_id` until its record, bound to that unit: moved to
    /// another unit's row, or into the outbox, it does not open.
    pub fn seal_kept(&self, unit_id: i64, key: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.seal_with(&kept_key_aad(unit_id), key)
    }

    fn seal_with(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let iv = self
            .session
            .random_bytes(IV_BYTES)
            .map_err(|e| KeyError::Random(Box::new(e)))?;
        let ct = self
            .session
            .aes_gcm_encrypt(self.key, &iv, aad, plain)
            .map_err(KeyError::Seal)?;
        let mut out = Vec::with_capacity(1 + IV_BYTES + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Seals a probe and opens it again: whether this token can keep keys in the outbox at
    /// all (some modules lack AES-GCM, or forward it only in newer versions, as p11-kit's
    /// RPC before 0.25). Checked before a fixture that needs it takes its first unit.
    pub fn self_test(&self) -> Result<(), KeyError> {
        const PROBE: &[u8] = b"station outbox self-test";
        let sealed = self.seal(PROBE)?;
        if self.open(&sealed)?.as_slice() == PROBE {
            Ok(())
        } else {
            Err(KeyError::Authentication)
        }
    }

    /// Decrypts a payload made by `seal`; fails if any byte of it was altered.
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.open_with(OUTBOX_AAD, sealed)
    }

    /// Opens the key kept for unit `unit_id` (made by `seal_kept`). A key kept by a station
    /// before keys were bound to their unit was sealed as an outbox payload: it opens as one.
    pub fn open_kept(&self, unit_id: i64, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self.open_with(&kept_key_aad(unit_id), sealed) {
            Err(KeyError::Authentication) => self.open(sealed),
            other => other,
        }
    }

    fn open_with(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (&version, rest) = sealed
            .split_first()
            .ok_or(KeyError::SealedFormat("empty"))?;
        if version != VERSION {
            return Err(KeyError::SealedFormat("unknown version"));
        }
        if rest.len() < IV_BYTES + TAG_BYTES {
            return Err(KeyError::SealedFormat("too short"));
        }
        let (iv, ct) = rest.split_at(IV_BYTES);
        match self.session.aes_gcm_decrypt(self.key, iv, aad, ct) {
            Ok(plain) => Ok(plain),
            // PKCS#11 says a failed GCM tag check is CKR_ENCRYPTED_DATA_INVALID; SoftHSM 2.6
            // answers CKR_GENERAL_ERROR (Botan throws on the tag and SoftHSM maps that).
            Err(P11Error::Pkcs11(RvError::EncryptedDataInvalid | RvError::GeneralError, _)) => {
                Err(KeyError::Authentication)
            }
            Err(e) => Err(KeyError::Open(e)),
        }
    }
}
