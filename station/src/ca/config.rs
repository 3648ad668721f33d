//! The `[ca]` section: which HSM keys and certificate files make up the CA.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Certificate authority settings. Keys live in the tokens of `[hsm]`; files are relative
/// to the station home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    /// CKA_LABEL of the issuing CA key in the CA token.
    pub key_label: String,
    /// CKA_LABEL of the root key in the root token.
    pub root_key_label: String,
    /// CKA_LABEL of the HMAC key (CA token) that authenticates the audit checkpoint.
    pub audit_key_label: String,
    /// The issuing CA certificate (PEM).
    pub cert: PathBuf,
    /// The root certificate (PEM).
    pub root_cert: PathBuf,
    /// Certificate profiles; files here override the built-in ones of the same name.
    pub profiles_dir: PathBuf,
    /// Warn in `station check` when a CA certificate expires within this many days.
    pub expiry_warn_days: u32,
    /// A CRL (`station ca crl`) is valid for this many days (its nextUpdate).
    pub crl_valid_days: u32,
    /// `station serve` keeps the issuing CA's CRL here (PEM), renewed when a certificate is
    /// revoked or half its validity is gone; empty: not published by serve.
    pub crl_file: PathBuf,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            key_label: "station-ca-key".into(),
            root_key_label: "station-root-key".into(),
            audit_key_label: "station-audit-hmac".into(),
            cert: PathBuf::from("ca/intermediate.pem"),
            root_cert: PathBuf::from("ca/root.pem"),
            profiles_dir: PathBuf::from("ca/profiles"),
            expiry_warn_days: 90,
            crl_valid_days: 7,
            crl_file: PathBuf::new(),
        }
    }
}
