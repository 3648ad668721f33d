//! Errors of the certificate authority; each variant names the operation that failed.

use std::path::PathBuf;

use crate::hsm::HsmError;

/// A failure of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The HSM refused or failed (its message is the one a person needs).
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// A profile file is not valid.
    #[error("certificate profile {name:?} is invalid: {problem}")]
    Profile {
        /// Profile name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// No profile of that name.
    #[error("no certificate profile named {name:?} (known: {known})")]
    UnknownProfile {
        /// Requested name.
        name: String,
        /// Names available.
        known: String,
    },
    /// Reading a file failed.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// File path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {}", path.display())]
    WriteFile {
        /// File path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CSR cannot be parsed (neither PEM nor DER PKCS#10).
    #[error("the CSR is not a PKCS#10 certificate request")]
    CsrParse,
    /// The CSR's self-signature does not verify with its own key.
    #[error("the CSR signature does not verify with the key it contains")]
    CsrSignature,
    /// The public key cannot be parsed.
    #[error("the public key is not a valid SubjectPublicKeyInfo")]
    PublicKeyParse,
    /// The key type or curve is not allowed by the profile.
    #[error("key type {found} is not allowed by profile {profile:?} (allowed: {allowed})")]
    KeyTypeNotAllowed {
        /// The key as found, e.g. "EC secp256k1".
        found: String,
        /// Profile name.
        profile: String,
        /// What the profile allows.
        allowed: String,
    },
    /// The subject common name is not acceptable.
    #[error("invalid subject common name {value:?}: {problem}")]
    CommonName {
        /// The name as given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// The subject field is not allowed by the profile.
    #[error("profile {profile:?} does not take subject field {field} from unit data")]
    SubjectFieldNotAllowed {
        /// Profile name.
        profile: String,
        /// Field name.
        field: &'static str,
    },
    /// Building or signing the certificate failed.
    #[error("cannot build the certificate")]
    Build(#[source] rcgen::Error),
    /// The CA certificate cannot be parsed.
    #[error("CA certificate {what} cannot be parsed")]
    CaCertParse {
        /// Which certificate.
        what: String,
    },
    /// The CA certificate's public key is not the HSM key.
    #[error(
        "CA certificate {what} does not match HSM key {label:?}: its public key is a different key"
    )]
    CertKeyMismatch {
        /// Which certificate.
        what: String,
        /// HSM key label.
        label: String,
    },
    /// A freshly signed certificate did not verify with the CA public key: not released.
    #[error(
        "the signed certificate does not verify with the CA certificate's public key; it was not released"
    )]
    SignatureCheck,
    /// A chain does not verify.
    #[error("certificate chain does not verify: {problem}")]
    Chain {
        /// What failed.
        problem: String,
    },
    /// A freshly signed CRL did not verify with the CA public key: not released.
    #[error(
        "the signed CRL does not verify with the CA certificate's public key; it was not released"
    )]
    CrlSignatureCheck,
    /// The CA certificate does not allow signing CRLs.
    #[error(
        "the issuing CA certificate's key usage does not include cRLSign: it cannot sign a CRL"
    )]
    NotCrlSigner,
    /// The serial number collided with one already issued by this CA.
    #[error("serial number already issued by this CA")]
    SerialCollision,
}
