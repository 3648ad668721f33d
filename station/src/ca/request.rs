//! What a certificate is requested for: a subject public key (bare or from a CSR whose
//! signature is checked) and a subject name. Nothing else is taken from a CSR.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::error::CaError;
use super::profile::{AllowedKey, Profile, UnitField};

/// The kind of a subject public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// EC P-256.
    P256,
    /// EC P-384.
    P384,
    /// RSA with this many modulus bits.
    Rsa(usize),
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::P256 => f.write_str("EC P-256"),
            Self::P384 => f.write_str("EC P-384"),
            Self::Rsa(bits) => write!(f, "RSA-{bits}"),
        }
    }
}

/// A subject public key the station has parsed and classified.
#[derive(Debug, Clone)]
pub struct SubjectKey {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// Its kind.
    pub kind: KeyKind,
}

/// PEM body of the first block with this label, or the input itself when it is not PEM.
pub(crate) fn pem_or_der(input: &[u8], label: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(input).ok();
    let Some(text) = text.filter(|t| t.contains("-----BEGIN")) else {
        return Some(input.to_vec());
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, String> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::P256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::P384),
            Some(c) => Err(format!("EC curve {c}")),
            None => Err("EC with implicit or unnamed curve".into()),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(k)) => Ok(KeyKind::Rsa(k.key_size())),
            _ => Err("malformed RSA key".into()),
        };
    }
    Err(format!("algorithm {alg}"))
}

impl SubjectKey {
    /// Parses a DER or PEM SubjectPublicKeyInfo.
    pub fn from_spki(input: &[u8]) -> Result<Self, CaError> {
        let der = pem_or_der(input, "PUBLIC KEY").ok_or(CaError::PublicKeyParse)?;
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(&der).map_err(|_| CaError::PublicKeyParse)?;
        if !rest.is_empty() {
            return Err(CaError::PublicKeyParse);
        }
        let kind = classify(&spki).map_err(|_| CaError::PublicKeyParse)?;
        Ok(Self {
            spki_der: der.clone(),
            kind,
        })
    }

    /// Parses a DER or PEM PKCS#10 request, checks its key against the profile and then its
    /// self-signature. The request's subject and extensions are ignored: the profile decides
    /// what the certificate says.
    pub fn from_csr(input: &[u8], profile: &Profile) -> Result<Self, CaError> {
        let der = pem_or_der(input, "CERTIFICATE REQUEST").ok_or(CaError::CsrParse)?;
        let (_, csr) = X509CertificationRequest::from_der(&der).map_err(|_| CaError::CsrParse)?;
        let spki = &csr.certification_request_info.subject_pki;
        // Key type first: a disallowed key (say RSA-1024, which the verifier itself
        // refuses) must be reported as such, not as a bad signature.
        let key = match classify(spki) {
            Ok(kind) => Self {
                spki_der: spki.raw.to_vec(),
                kind,
            },
            Err(found) => {
                return Err(CaError::KeyTypeNotAllowed {
                    found,
                    profile: profile.name.clone(),
                    allowed: allowed_list(profile),
                });
            }
        };
        key.check_allowed(profile)?;
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
        Ok(key)
    }

    /// Refuses a key the profile does not allow.
    pub fn check_allowed(&self, profile: &Profile) -> Result<(), CaError> {
        let ok = profile.allowed_keys.iter().any(|a| match (a, self.kind) {
            (AllowedKey::P256, KeyKind::P256) | (AllowedKey::P384, KeyKind::P384) => true,
            (AllowedKey::Rsa, KeyKind::Rsa(bits)) => bits >= profile.min_rsa_bits,
            _ => false,
        });
        if ok {
            return Ok(());
        }
        Err(CaError::KeyTypeNotAllowed {
            found: self.kind.to_string(),
            profile: profile.name.clone(),
            allowed: allowed_list(profile),
        })
    }
}

fn allowed_list(profile: &Profile) -> String {
    profile
        .allowed_keys
        .iter()
        .map(|a| match a {
            AllowedKey::P256 => "EC P-256".to_owned(),
            AllowedKey::P384 => "EC P-384".to_owned(),
            AllowedKey::Rsa => format!("RSA >= {}", profile.min_rsa_bits),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Longest CN X.509 allows (ub-common-name).
pub const MAX_CN_LEN: usize = 64;

/// A validated subject common name: a DPS registration ID (or verification code) of at
/// most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonName(String);

impl CommonName {
    /// Checks the DPS registration ID rules and the X.509 64-character limit.
    pub fn registration_id(s: &str) -> Result<Self, CaError> {
        let bad = |problem: String| CaError::CommonName {
            value: s.to_owned(),
            problem,
        };
        dps::RegistrationId::new(s).map_err(|e| bad(e.to_string()))?;
        let len = s.chars().count();
        if len > MAX_CN_LEN {
            return Err(bad(format!(
                "{len} characters; a certificate CN holds at most {MAX_CN_LEN}"
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Optional subject fields from unit data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitSubject {
    /// O.
    pub organization: Option<String>,
    /// OU.
    pub organizational_unit: Option<String>,
    /// serialNumber.
    pub serial_number: Option<String>,
}

impl UnitSubject {
    /// Refuses fields the profile does not take from unit data.
    pub fn check_allowed(&self, profile: &Profile) -> Result<(), CaError> {
        let allowed = &profile.subject.from_unit;
        for (present, field, name) in [
            (
                self.organization.is_some(),
                UnitField::Organization,
                "organization",
            ),
            (
                self.organizational_unit.is_some(),
                UnitField::OrganizationalUnit,
                "organizational_unit",
            ),
            (
                self.serial_number.is_some(),
                UnitField::SerialNumber,
                "serial_number",
            ),
        ] {
            if present && !allowed.contains(&field) {
                return Err(CaError::SubjectFieldNotAllowed {
                    profile: profile.name.clone(),
                    field: name,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_rules() {
        assert!(CommonName::registration_id("unit-0001").is_ok());
        let err = CommonName::registration_id("unit 0001").expect_err("space");
        assert_eq!(
            err.to_string(),
            "invalid subject common name \"unit 0001\": registration ID \"unit 0001\" contains ' ' at position 4; allowed: ASCII letters, digits and - . _ :"
        );
        let long = "a".repeat(65);
        let err = CommonName::registration_id(&long).expect_err("long");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid subject common name \"{long}\": 65 characters; a certificate CN holds at most 64"
            )
        );
    }
}
