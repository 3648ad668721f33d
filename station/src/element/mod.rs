//! Units whose key lives in a PKCS#11 secure element (an ATECC608 through cryptoauthlib, a TPM
//! through tpm2-pkcs11, a smart-card chip through OpenSC). The key is generated inside the
//! element and never leaves it: the station reads the public key, has its CA certify it, stores
//! the certificate in the element under the key's CKA_ID, and reads it back.
//!
//! The element is reached through its own module path and token, separate from the station's
//! HSM even when both are SoftHSM (in tests and the demo, whose unit tokens `unit-<serial>` share
//! the station's SoftHSM token directory, because SoftHSM reads one configuration per process).

use std::fmt;
use std::path::{Path, PathBuf};

use cryptoki::object::ObjectHandle;
use p256::pkcs8::EncodePublicKey;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::hsm::config::{PinSource, TokenSelector};
use crate::hsm::error::HsmError;
use crate::hsm::module::Hsm;
use crate::hsm::pin::Pin;
use crate::hsm::{EcKey, KeyProtection, TokenSession};

/// CKA_LABEL of the unit's provisioning key pair and of its certificate.
pub const KEY_LABEL: &str = "device-identity";

/// The steps of one element provisioning, named in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finding the unit's token.
    FindToken,
    /// Logging in with the unit PIN.
    Login,
    /// Looking for an earlier provisioning key.
    CheckExisting,
    /// Generating the key pair in the element.
    GenerateKey,
    /// Checking the key can never leave the element.
    CheckKey,
    /// Having the station CA certify the public key.
    Issue,
    /// Writing the certificate into the element.
    WriteCertificate,
    /// Reading the certificate back.
    ReadBack,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::FindToken => "find token",
            Step::Login => "login",
            Step::CheckExisting => "check existing key",
            Step::GenerateKey => "generate key",
            Step::CheckKey => "check key protection",
            Step::Issue => "issue certificate",
            Step::WriteCertificate => "write certificate",
            Step::ReadBack => "read back certificate",
        })
    }
}

/// Why an element could not be provisioned. Each names the token and the step; none carries
/// the PIN. Nothing is reported as provisioned unless every step passed.
#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    /// A module operation failed at a step.
    #[error("unit element {token}: {step} failed")]
    Hsm {
        /// The token.
        token: String,
        /// The step.
        step: Step,
        /// What the module said.
        #[source]
        source: HsmError,
    },
    /// No token matches, or more than one does.
    #[error("unit element: {0}")]
    Token(String),
    /// The token already holds a provisioning key.
    #[error(
        "unit element {token}: already holds a provisioning key ({KEY_LABEL:?}); a supervisor must request rework to replace it"
    )]
    AlreadyProvisioned {
        /// The token.
        token: String,
    },
    /// The element made a key that could leave it; it was deleted again.
    #[error(
        "unit element {token}: {step} failed: the element made a key that is {problems}; the key was deleted"
    )]
    NotProtected {
        /// The token.
        token: String,
        /// The step.
        step: Step,
        /// What is wrong with the key.
        problems: String,
    },
    /// The CA refused or failed.
    #[error("unit element {token}: {step} failed: {message}")]
    Issue {
        /// The token.
        token: String,
        /// The step.
        step: Step,
        /// The CA's message.
        message: String,
    },
    /// The certificate read back differs from the one written.
    #[error("unit element {token}: {step} failed: {detail}")]
    ReadBack {
        /// The token.
        token: String,
        /// The step.
        step: Step,
        /// What was found.
        detail: String,
    },
    /// The token label pattern is not a valid regex.
    #[error("unit element token pattern {0:?} is not a valid regex")]
    Pattern(String),
}

/// How to reach one unit's element.
#[derive(Debug, Clone)]
pub struct ElementTarget {
    /// Token label pattern (anchored regex); `None`: the only token the module shows.
    pub token: Option<String>,
    /// Where the unit PIN comes from.
    pub pin: PinSource,
    /// Delete an existing provisioning key first (supervisor rework).
    pub rework: bool,
}

/// A provisioned element.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The token's label.
    pub token: String,
    /// CKA_ID of key and certificate, hex.
    pub key_id: String,
    /// The certificate (DER).
    pub certificate: Vec<u8>,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
}

/// Picks the unit's token: the one label the pattern matches, or the only token present.
pub fn choose_token(labels: &[String], pattern: Option<&str>) -> Result<String, ElementError> {
    let matching: Vec<&String> = match pattern {
        Some(p) => {
            let re = Regex::new(&format!("^(?:{p})$"))
                .map_err(|_| ElementError::Pattern(p.to_owned()))?;
            labels.iter().filter(|l| re.is_match(l)).collect()
        }
        None => labels.iter().collect(),
    };
    let want = pattern.map_or_else(
        || "a token".to_owned(),
        |p| format!("a token matching {p:?}"),
    );
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ElementError::Token(format!(
            "no token found; wanted {want}; present: {}",
            if labels.is_empty() {
                "none".to_owned()
            } else {
                labels.join(", ")
            }
        ))),
        many => Err(ElementError::Token(format!(
            "{} tokens match, wanted exactly one ({want}): {}",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The token operations one element provisioning needs. The seam exists because a real
/// SoftHSM token cannot be made to misbehave (ignore CKA_EXTRACTABLE, fail a write, store
/// other bytes than it was given), and the station must still handle elements that do.
pub trait ElementToken {
    /// Every object (any class) with this label.
    fn objects_labelled(&self, label: &str) -> Result<Vec<ObjectHandle>, HsmError>;
    /// Deletes every object with this label; returns how many there were.
    fn destroy_labelled(&self, label: &str) -> Result<usize, HsmError>;
    /// Generates a P-256 key pair asking for sensitive, never-extractable, sign-only.
    fn generate_p256(&self, label: &str) -> Result<EcKey, HsmError>;
    /// The private key's protection attributes as the element reports them.
    fn key_protection(&self, key: &EcKey) -> Result<KeyProtection, HsmError>;
    /// Stores an X.509 certificate under the key's CKA_ID and label.
    fn store_certificate(
        &self,
        key: &EcKey,
        der: &[u8],
        subject_der: &[u8],
    ) -> Result<(), HsmError>;
    /// The DER of every certificate object stored under this CKA_ID.
    fn certificates_with_id(&self, id: &[u8]) -> Result<Vec<Vec<u8>>, HsmError>;
}

impl ElementToken for TokenSession {
    fn objects_labelled(&self, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
        TokenSession::objects_labelled(self, label)
    }

    fn destroy_labelled(&self, label: &str) -> Result<usize, HsmError> {
        TokenSession::destroy_labelled(self, label)
    }

    fn generate_p256(&self, label: &str) -> Result<EcKey, HsmError> {
        TokenSession::generate_p256(self, label)
    }

    fn key_protection(&self, key: &EcKey) -> Result<KeyProtection, HsmError> {
        TokenSession::key_protection(self, key)
    }

    fn store_certificate(
        &self,
        key: &EcKey,
        der: &[u8],
        subject_der: &[u8],
    ) -> Result<(), HsmError> {
        TokenSession::store_certificate(self, key, der, subject_der).map(|_| ())
    }

    fn certificates_with_id(&self, id: &[u8]) -> Result<Vec<Vec<u8>>, HsmError> {
        TokenSession::certificates_with_id(self, id)
    }
}

/// Where one product's units' elements are reached: the profile's module, token pattern and
/// PIN source, as a fixture may override the module and pattern.
#[derive(Debug, Clone)]
pub struct ElementAddress {
    /// The element's PKCS#11 module.
    pub module: PathBuf,
    /// Token label pattern (a regex; `{serial}` stands for the unit's serial); empty: the only
    /// token present.
    pub token: String,
    /// Where the unit PIN comes from.
    pub pin: PinSource,
}

impl ElementAddress {
    /// From an x509-pkcs11 profile's fields: the PIN from `pin_env`, else `pin_file`, else the
    /// environment variable `UNIT_PIN`.
    pub fn new(
        module: PathBuf,
        token: String,
        pin_env: Option<&String>,
        pin_file: Option<&PathBuf>,
    ) -> Self {
        let pin = match (pin_env, pin_file) {
            (Some(v), _) => PinSource::Env(v.clone()),
            (None, Some(f)) => PinSource::File(f.clone()),
            (None, None) => PinSource::Env("UNIT_PIN".into()),
        };
        Self { module, token, pin }
    }

    /// The token pattern for the unit `serial`; `None`: the only token present.
    pub fn token_pattern(&self, serial: &str) -> Option<String> {
        (!self.token.is_empty()).then(|| self.token.replace("{serial}", &regex::escape(serial)))
    }

    /// The module to reach the element through: `station`'s own when it is the same library
    /// (a module is initialised once per process; SoftHSM unit tokens in tests and the demo
    /// share the station's), else loaded.
    pub fn module(
        &self,
        station: &Hsm,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Hsm, HsmError> {
        let path = resolve(&self.module);
        let same =
            std::fs::canonicalize(&path).ok() == std::fs::canonicalize(station.module()).ok();
        if same {
            Ok(station.clone())
        } else {
            Hsm::load_module(&path)
        }
    }
}

/// Finds the unit's token (`pattern`, see [`choose_token`]) and logs in with its PIN; the
/// token's label and the session.
pub fn open_token(
    module: &Hsm,
    pattern: Option<&str>,
    pin: &PinSource,
    resolve: impl Fn(&Path) -> PathBuf,
) -> Result<(String, TokenSession), ElementError> {
    let labels = module.token_labels().map_err(|source| ElementError::Hsm {
        token: module.module().display().to_string(),
        step: Step::FindToken,
        source,
    })?;
    let token = choose_token(&labels, pattern)?;
    let slot = module
        .find_token(&TokenSelector::Label(token.clone()))
        .map_err(at(&token, Step::FindToken))?;
    let pin = Pin::load(pin, &token, resolve).map_err(at(&token, Step::Login))?;
    let session = module
        .open_slot(slot, &token, &pin)
        .map_err(at(&token, Step::Login))?;
    Ok((token, session))
}

/// Provisions one element. `issue` gets the key's SubjectPublicKeyInfo (DER) and returns the
/// certificate (DER) once the CA has recorded it; a certificate is released only after that.
pub fn provision(
    module: &Hsm,
    target: &ElementTarget,
    resolve: impl Fn(&Path) -> PathBuf,
    issue: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Provisioned, ElementError> {
    let (token, session) = open_token(module, target.token.as_deref(), &target.pin, resolve)?;
    provision_on(&session, &token, target.rework, issue)
}

/// Maps a module error to the element error naming `token` and `step`.
fn at(token: &str, step: Step) -> impl Fn(HsmError) -> ElementError {
    let token = token.to_owned();
    move |source| ElementError::Hsm {
        token: token.clone(),
        step,
        source,
    }
}

/// The steps after login, on an open element: check for an earlier key, generate, check its
/// protection, have it certified, write the certificate and read it back. `token` names the
/// element in every error.
pub fn provision_on(
    element: &impl ElementToken,
    token: &str,
    rework: bool,
    issue: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Provisioned, ElementError> {
    let token = token.to_owned();
    let step = |step: Step| at(&token, step);

    let existing = element
        .objects_labelled(KEY_LABEL)
        .map_err(step(Step::CheckExisting))?;
    if !existing.is_empty() {
        if !rework {
            return Err(ElementError::AlreadyProvisioned { token });
        }
        let n = element
            .destroy_labelled(KEY_LABEL)
            .map_err(step(Step::CheckExisting))?;
        tracing::warn!(%token, objects = n, "rework: deleted the earlier provisioning key and certificate");
    }

    let key = element
        .generate_p256(KEY_LABEL)
        .map_err(step(Step::GenerateKey))?;
    let protection = element.key_protection(&key).map_err(step(Step::CheckKey))?;
    let problems = protection.problems();
    if !problems.is_empty() {
        // An element that cannot keep the key inside is refused, and the weak key removed.
        if let Err(e) = element.destroy_labelled(KEY_LABEL) {
            tracing::error!(%token, error = %e, "could not delete the refused key");
        }
        return Err(ElementError::NotProtected {
            token,
            step: Step::CheckKey,
            problems: problems.join(", "),
        });
    }
    let spki = p256::PublicKey::from_sec1_bytes(&key.point)
        .ok()
        .and_then(|k| k.to_public_key_der().ok())
        .ok_or_else(|| ElementError::Issue {
            token: token.clone(),
            step: Step::Issue,
            message: "the element's public key is not a valid P-256 point".to_owned(),
        })?;
    let der = issue(spki.as_bytes()).map_err(|message| ElementError::Issue {
        token: token.clone(),
        step: Step::Issue,
        message,
    })?;
    let subject = x509_parser::parse_x509_certificate(&der)
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .map_err(|_| ElementError::Issue {
            token: token.clone(),
            step: Step::Issue,
            message: "the CA returned a certificate that does not parse".to_owned(),
        })?;
    element
        .store_certificate(&key, &der, &subject)
        .map_err(step(Step::WriteCertificate))?;
    let back = element
        .certificates_with_id(&key.id)
        .map_err(step(Step::ReadBack))?;
    match back.as_slice() {
        [one] if *one == der => {}
        [] => {
            return Err(ElementError::ReadBack {
                token,
                step: Step::ReadBack,
                detail: "no certificate found under the key's CKA_ID after writing it".to_owned(),
            });
        }
        [one] => {
            return Err(ElementError::ReadBack {
                token,
                step: Step::ReadBack,
                detail: format!(
                    "the certificate read back (SHA-256 {}) differs from the one written (SHA-256 {})",
                    hex::encode(Sha256::digest(one)),
                    hex::encode(Sha256::digest(&der))
                ),
            });
        }
        many => {
            return Err(ElementError::ReadBack {
                token,
                step: Step::ReadBack,
                detail: format!("{} certificates found under the key's CKA_ID", many.len()),
            });
        }
    }
    Ok(Provisioned {
        token,
        key_id: hex::encode(&key.id),
        fingerprint: hex::encode(Sha256::digest(&der)),
        certificate: der,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod fault_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_choice_is_unambiguous() {
        let labels: Vec<String> = ["station-ca", "station-root", "unit-GW-000001"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            choose_token(&labels, Some("unit-GW-[0-9]+")).unwrap(),
            "unit-GW-000001"
        );
        let e = choose_token(&labels, Some("unit-XX-.*"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no token found") && e.contains("station-ca"),
            "{e}"
        );
        let e = choose_token(&labels, None).unwrap_err().to_string();
        assert!(e.contains("3 tokens match"), "{e}");
        assert_eq!(choose_token(&labels[2..], None).unwrap(), "unit-GW-000001");
        assert!(matches!(
            choose_token(&labels, Some("(")),
            Err(ElementError::Pattern(_))
        ));
    }
}
