//! The symmetric-key exchange: identify, put_symkey, HMAC proof of the injected key, lock.

use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Sha256;
use zeroize::Zeroizing;

use dps::ids::RegistrationId;

use super::IdentifyError;
use super::UnitClient;
use super::port::Port;
use super::proto::{NONCE_LEN, PutSymkeyReq, SecretBytes};
use super::transport::LinkError;

/// What a unit needs to attest to DPS with a symmetric key.
pub struct SymkeyIdentity {
    /// The device key (raw bytes).
    pub key: SecretBox<Vec<u8>>,
    /// Registration ID.
    pub registration_id: RegistrationId,
    /// DPS ID scope.
    pub id_scope: String,
    /// DPS global endpoint host.
    pub global_endpoint: String,
}

impl std::fmt::Debug for SymkeyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymkeyIdentity")
            .field("key", &"[redacted]")
            .field("registration_id", &self.registration_id)
            .field("id_scope", &self.id_scope)
            .field("global_endpoint", &self.global_endpoint)
            .finish()
    }
}

/// Why the symmetric-key exchange failed; every variant names its step.
#[derive(Debug, thiserror::Error)]
pub enum SymkeyFlowError {
    /// A command over the link failed (the source names the command).
    #[error("device link failed")]
    Link(#[from] LinkError),
    /// The unit is not the one scanned, or is locked (or `identify` failed).
    #[error(transparent)]
    Identify(#[from] IdentifyError),
    /// The HMAC did not verify: the unit does not hold the key that was sent.
    #[error("prove: the unit's HMAC does not match the injected key")]
    ProofMismatch,
}

/// Step 1: identify the unit and check it is the one scanned and not locked.
pub fn identify_for_symkey<P: Port>(
    unit: &mut UnitClient<P>,
    expected_serial: Option<&str>,
) -> Result<super::proto::IdentifyRsp, SymkeyFlowError> {
    let id = unit.identify_unlocked(expected_serial)?;
    Ok(id)
}

/// Step 2: writes the key (with registration ID, scope and endpoint) to the unit.
pub fn inject<P: Port>(
    unit: &mut UnitClient<P>,
    identity: &SymkeyIdentity,
) -> Result<(), SymkeyFlowError> {
    unit.put_symkey(&PutSymkeyReq {
        key: SecretBytes(Zeroizing::new(identity.key.expose_secret().clone())),
        rid: identity.registration_id.as_str().to_owned(),
        scope: identity.id_scope.clone(),
        ep: identity.global_endpoint.clone(),
    })?;
    Ok(())
}

/// Step 3: the unit proves it holds the key: HMAC-SHA256 over a fresh nonce.
pub fn prove<P: Port>(
    unit: &mut UnitClient<P>,
    identity: &SymkeyIdentity,
) -> Result<(), SymkeyFlowError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mac = unit.prove(&nonce)?;
    let mut expected = Hmac::<Sha256>::new_from_slice(identity.key.expose_secret())
        .map_err(|_| SymkeyFlowError::ProofMismatch)?;
    expected.update(&nonce);
    // verify_slice compares in constant time.
    expected
        .verify_slice(&mac)
        .map_err(|_| SymkeyFlowError::ProofMismatch)
}

/// Runs the symmetric-key exchange.
pub fn provision_symkey<P: Port>(
    unit: &mut UnitClient<P>,
    expected_serial: Option<&str>,
    identity: &SymkeyIdentity,
) -> Result<String, SymkeyFlowError> {
    let id = identify_for_symkey(unit, expected_serial)?;
    inject(unit, identity)?;
    prove(unit, identity)?;
    unit.lock()?;
    Ok(id.serial)
}
