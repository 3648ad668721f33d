//! A TLS client key whose private half stays in its token: each handshake signature
//! (ECDSA P-256 with SHA-256) is made there. The station registers a unit whose key lives in its
//! own secure element with DPS on the unit's behalf with it (`dps_target::on_behalf`).

use std::sync::{Arc, Mutex};

use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::session::{EcKey, TokenSession};

/// A P-256 key in a token, as rustls signs with a client key.
#[derive(Debug)]
pub struct TokenTlsKey(Arc<InToken>);

/// The signer of one handshake: the same key.
#[derive(Debug)]
struct TokenTlsSigner(Arc<InToken>);

/// The logged-in session (one signature at a time) and the key.
struct InToken {
    session: Mutex<TokenSession>,
    key: EcKey,
}

impl std::fmt::Debug for InToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InToken")
            .field("key", &self.key.label)
            .finish_non_exhaustive()
    }
}

impl TokenTlsKey {
    /// The key `key` of the token `session` is logged in to.
    pub fn new(session: TokenSession, key: EcKey) -> Self {
        Self(Arc::new(InToken {
            session: Mutex::new(session),
            key,
        }))
    }
}

impl SigningKey for TokenTlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(TokenTlsSigner(Arc::clone(&self.0))) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for TokenTlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let session = self
            .0
            .session
            .lock()
            .map_err(|_| rustls::Error::General("the token session is unusable".into()))?;
        super::signer::sign_der(&session, &self.0.key, message)
            .map_err(|e| rustls::Error::General(format!("signing in the token: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
