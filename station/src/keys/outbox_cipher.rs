//! `OutboxCipher` as the outbox's `PayloadCipher`.

use zeroize::Zeroizing;

use super::OutboxCipher;
use crate::outbox::{CipherError, PayloadCipher};

impl PayloadCipher for OutboxCipher<'_> {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CipherError> {
        OutboxCipher::seal(self, plain).map_err(|e| CipherError(Box::new(e)))
    }

    fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CipherError> {
        OutboxCipher::open(self, sealed).map_err(|e| CipherError(Box::new(e)))
    }
}
