//! Symmetric keys of the line, all held in the CA token: DPS group keys (imported once, in
//! transit from DPS), unit keys derived from them or drawn from the token's RNG, and the AES
//! key that seals key material waiting in the outbox.
//!
//! Nothing here ever reads a key out of the token: a group key is used only through
//! CKM_SHA256_HMAC, the outbox key only through CKM_AES_GCM.

mod device;
mod error;
mod group_key;
mod outbox;
mod outbox_cipher;

pub use device::{DeviceKey, derive_device_key, random_device_key};
pub use error::KeyError;
pub use group_key::{GroupKeyImport, group_key_label, group_key_present, import_group_key};
pub use outbox::{OUTBOX_AAD, OUTBOX_KEY_LABEL, OutboxCipher, ensure_outbox_key};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
