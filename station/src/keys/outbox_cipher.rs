//! `OutboxCipher` as the outbox's `PayloadCipher`. Not compiled until the outbox module
//! (helper B's branch) is merged: then add `mod outbox_cipher;` to `keys/mod.rs`.

use zeroize::Zeroizing;

use super::OutboxCipher;
use crate::outbox::{CipherError, PayloadCipher};

impl PayloadCipher for OutboxCipher<'_> {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CipherError> {
        OutboxCipher::seal(self, plain).map_err(|e| CipherError(e.to_string()))
    }

    fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CipherError> {
        OutboxCipher::open(self, sealed).map_err(|e| CipherError(e.to_string()))
    }
}
