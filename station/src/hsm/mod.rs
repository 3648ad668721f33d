//! PKCS#11 access through cryptoki: module loading, tokens by label or serial, sessions,
//! P-256 keys that never leave the token, and HMAC keys for the audit checkpoint.

pub mod config;
pub mod error;
pub mod module;
pub mod pin;
pub mod restart;
pub mod session;
pub mod signer;
pub mod softhsm;
pub mod tls;

pub use config::{HsmConfig, TokenConfig};
pub use error::HsmError;
pub use module::Hsm;
pub use session::{EcKey, KeyProtection, TokenSession};
pub use signer::HsmSigner;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod test_token;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
