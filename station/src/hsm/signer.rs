//! An rcgen signing key whose private half stays in the token.

use sha2::{Digest, Sha256};

use super::error::HsmError;
use super::session::{EcKey, TokenSession};

/// Signs certificates with a P-256 key held in the HSM (ECDSA with SHA-256).
pub struct HsmSigner<'s> {
    session: &'s TokenSession,
    key: EcKey,
}

impl std::fmt::Debug for HsmSigner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSigner")
            .field("token", &self.session.token())
            .field("key", &self.key.label)
            .finish()
    }
}

impl<'s> HsmSigner<'s> {
    /// A signer for `key` through `session`.
    pub fn new(session: &'s TokenSession, key: EcKey) -> Self {
        Self { session, key }
    }

    /// The key this signer uses.
    pub fn key(&self) -> &EcKey {
        &self.key
    }

    /// ECDSA-SHA256 signature in X.509's DER `Ecdsa-Sig-Value` form.
    pub fn sign_der(&self, msg: &[u8]) -> Result<Vec<u8>, HsmError> {
        sign_der(self.session, &self.key, msg)
    }
}

/// ECDSA-SHA256 over `msg` with `key` in the token, in the DER `Ecdsa-Sig-Value` form X.509
/// and TLS use.
pub fn sign_der(session: &TokenSession, key: &EcKey, msg: &[u8]) -> Result<Vec<u8>, HsmError> {
    let digest = Sha256::digest(msg);
    let raw = session.sign_digest(key, &digest)?;
    // The token returns r || s; X.509 and TLS want SEQUENCE { r INTEGER, s INTEGER }.
    let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| HsmError::SignatureFormat {
        label: key.label.clone(),
    })?;
    Ok(sig.to_der().as_bytes().to_vec())
}

impl rcgen::PublicKeyData for HsmSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.key.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for HsmSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // rcgen's error has no slot for a cause; the HSM error is logged here instead.
        self.sign_der(msg).map_err(|e| {
            tracing::error!(error = %e, "HSM signing failed");
            rcgen::Error::RemoteKeyError
        })
    }
}
