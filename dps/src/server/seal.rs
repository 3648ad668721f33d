//! Sealing of stored secrets: every record body and policy key is kept AES-256-GCM encrypted
//! in SQLite, so the database file alone never reveals a symmetric key. The sealing key is
//! a separate file (`store.key`, mode 0600) in the data directory.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("accessing the store key file failed")]
    KeyFile(#[source] std::io::Error),
    /// The key file has the wrong size.
    #[error("the store key file is not 32 bytes")]
    KeyLength,
    /// A sealed value did not authenticate (wrong key, or tampered data).
    #[error("a stored value failed to decrypt")]
    Open,
    /// Encryption failed.
    #[error("sealing a value failed")]
    Seal,
}

/// Encrypts and decrypts stored values.
pub struct Sealer {
    key: LessSafeKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// Loads `path`, creating a fresh random key there first if it is absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        if !path.exists() {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rand::fill(&mut bytes[..]);
            crate::server::files::write_private(path, &bytes[..]).map_err(SealError::KeyFile)?;
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(SealError::KeyFile)?);
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::KeyLength)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// nonce || ciphertext || tag. `context` binds the value to its row (e.g. table and id).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Seal)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reverses [`Sealer::seal`].
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut body = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| SealError::Open)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_context_binding() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::load_or_create(&dir.path().join("store.key")).unwrap();
        let sealed = s.seal("enrollments/a", b"secret body").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &s.open("enrollments/a", &sealed).unwrap()[..],
            b"secret body"
        );
        assert!(matches!(
            s.open("enrollments/b", &sealed),
            Err(SealError::Open)
        ));
        // The same key file opens it again (restart).
        let again = Sealer::load_or_create(&dir.path().join("store.key")).unwrap();
        assert_eq!(
            &again.open("enrollments/a", &sealed).unwrap()[..],
            b"secret body"
        );
    }
}
