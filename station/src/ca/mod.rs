//! The certificate authority: profiles, root and intermediate in the HSM, and leaf
//! issuance (from a public key or a CSR) with every signature verified before release.

pub mod authority;
pub mod config;
pub mod crl;
pub mod error;
pub mod init;
pub mod profile;
pub mod publish;
pub mod request;
pub mod service;
pub mod verify;

pub use authority::{Authority, CertSerial, IssuedCert};
pub use config::CaConfig;
pub use error::CaError;
pub use profile::{Profile, Profiles};
pub use request::{CommonName, SubjectKey, UnitSubject};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
