//! EK certificates: what they say, whether they match the EK, and whether a trusted TPM
//! vendor issued them.

use std::path::{Path, PathBuf};

use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey as X509PublicKey;
use x509_parser::x509::X509Name;

use super::public::{PublicKey, significant};

/// EKU of an EK certificate (TCG EK Credential Profile, tcg-kp-EKCertificate).
pub const EKU_EK_CERTIFICATE: &str = "2.23.133.8.1";
const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
const OID_TPM_MODEL: &str = "2.23.133.2.2";
const OID_TPM_VERSION: &str = "2.23.133.2.3";
/// Longest issuer chain followed from an EK certificate to a root.
const MAX_CHAIN: usize = 8;

/// What an EK certificate says about its TPM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EkCertInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// TPM manufacturer (TCG attribute 2.23.133.2.1, e.g. `id:49465800`).
    pub manufacturer: Option<String>,
    /// TPM model (2.23.133.2.2).
    pub model: Option<String>,
    /// TPM firmware version (2.23.133.2.3).
    pub version: Option<String>,
}

/// Why an EK certificate is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EkCertProblem {
    /// The NV contents are not a DER certificate.
    #[error("EK certificate in NV is not a valid DER certificate")]
    Malformed,
    /// The certificate is for another key.
    #[error("EK certificate is for a different key than the EK read from the TPM")]
    KeyMismatch,
    /// The certificate has an EKU without the EK certificate purpose.
    #[error("EK certificate's extended key usage lacks 2.23.133.8.1")]
    WrongEku,
    /// No chain to a trusted root.
    #[error("EK certificate is not issued by a trusted TPM vendor CA ({0})")]
    Untrusted(String),
    /// A certificate of the chain is outside its validity period.
    #[error("EK certificate chain has an expired or not yet valid certificate ({0})")]
    Expired(String),
}

/// A parsed EK certificate held as DER.
#[derive(Debug, Clone)]
pub struct EkCertificate {
    der: Vec<u8>,
    info: EkCertInfo,
}

fn dn(name: &X509Name<'_>) -> String {
    name.to_string()
}

fn tcg_attribute(cert: &X509Certificate<'_>, oid: &str) -> Option<String> {
    let from_name = |name: &X509Name<'_>| {
        name.iter_attributes()
            .find(|a| a.attr_type().to_id_string() == oid)
            .and_then(|a| a.as_str().ok().map(str::to_owned))
    };
    // The EK Credential Profile puts them in a directoryName of the subjectAltName.
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            if let GeneralName::DirectoryName(name) = g
                && let Some(v) = from_name(name)
            {
                return Some(v);
            }
        }
    }
    from_name(cert.subject())
}

impl EkCertificate {
    /// Parses the NV contents. TCG allows padding after the DER, so trailing bytes are ignored.
    pub fn parse(nv: &[u8]) -> Result<Self, EkCertProblem> {
        let (rest, cert) = X509Certificate::from_der(nv).map_err(|_| EkCertProblem::Malformed)?;
        let der = nv[..nv.len() - rest.len()].to_vec();
        let not_after = cert.validity().not_after.to_datetime();
        let info = EkCertInfo {
            subject: dn(cert.subject()),
            issuer: dn(cert.issuer()),
            not_after: chrono::DateTime::from_timestamp(not_after.unix_timestamp(), 0)
                .map_or_else(|| not_after.to_string(), |t| t.to_rfc3339()),
            manufacturer: tcg_attribute(&cert, OID_TPM_MANUFACTURER),
            model: tcg_attribute(&cert, OID_TPM_MODEL),
            version: tcg_attribute(&cert, OID_TPM_VERSION),
        };
        Ok(Self { der, info })
    }

    /// What it says.
    #[must_use]
    pub fn info(&self) -> &EkCertInfo {
        &self.info
    }

    /// The DER bytes (without NV padding).
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    fn cert(&self) -> Result<X509Certificate<'_>, EkCertProblem> {
        X509Certificate::from_der(&self.der)
            .map(|(_, c)| c)
            .map_err(|_| EkCertProblem::Malformed)
    }

    /// Checks that the certificate's public key is the EK read from the TPM.
    pub fn check_key(&self, ek: &PublicKey) -> Result<(), EkCertProblem> {
        let cert = self.cert()?;
        let parsed = cert
            .public_key()
            .parsed()
            .map_err(|_| EkCertProblem::Malformed)?;
        let same = match (ek, parsed) {
            (PublicKey::Rsa { modulus, exponent }, X509PublicKey::RSA(rsa)) => {
                significant(modulus) == significant(rsa.modulus)
                    && rsa.try_exponent().ok() == Some(u64::from(*exponent))
            }
            (PublicKey::Ecc { curve, x, y }, X509PublicKey::EC(point)) => {
                let n = curve.coordinate_len();
                let mut expected = vec![0x04];
                for c in [x, y] {
                    let c = significant(c);
                    if c.len() > n {
                        return Err(EkCertProblem::KeyMismatch);
                    }
                    expected.extend(std::iter::repeat_n(0, n - c.len()));
                    expected.extend_from_slice(c);
                }
                point.data() == expected.as_slice()
            }
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err(EkCertProblem::KeyMismatch)
        }
    }

    /// Checks the EKU, when the certificate has one.
    pub fn check_eku(&self) -> Result<(), EkCertProblem> {
        let cert = self.cert()?;
        match cert.extended_key_usage() {
            Ok(None) => Ok(()),
            Ok(Some(eku)) => {
                if eku
                    .value
                    .other
                    .iter()
                    .any(|o| o.to_id_string() == EKU_EK_CERTIFICATE)
                {
                    Ok(())
                } else {
                    Err(EkCertProblem::WrongEku)
                }
            }
            Err(_) => Err(EkCertProblem::Malformed),
        }
    }

    /// Checks the chain up to a self-signed root in `trust`: the issuer's signature on this
    /// certificate, and every validity period on the way (the rest of the path was verified
    /// when the trust directory was loaded).
    pub fn check_chain(&self, trust: &TrustStore) -> Result<(), EkCertProblem> {
        let leaf = self.cert()?;
        let now = chrono::Utc::now().timestamp();
        if !valid_at(&leaf, now) {
            return Err(EkCertProblem::Expired(dn(leaf.subject())));
        }
        let mut expired = None;
        for ca in trust
            .certs
            .iter()
            .filter(|c| c.subject_raw == leaf.issuer().as_raw())
        {
            let Ok((_, ca_cert)) = X509Certificate::from_der(&ca.der) else {
                continue;
            };
            if leaf.verify_signature(Some(ca_cert.public_key())).is_err() {
                continue;
            }
            if now < ca.path_not_before || now > ca.path_not_after {
                expired = Some(dn(ca_cert.subject()));
                continue;
            }
            return Ok(());
        }
        Err(match expired {
            Some(name) => EkCertProblem::Expired(name),
            None => EkCertProblem::Untrusted(format!(
                "no trusted certificate for issuer \"{}\"",
                dn(leaf.issuer())
            )),
        })
    }
}

fn valid_at(cert: &X509Certificate<'_>, now: i64) -> bool {
    let v = cert.validity();
    v.not_before.timestamp() <= now && now <= v.not_after.timestamp()
}

/// A CA certificate of the trust directory with a verified path to a self-signed root there.
#[derive(Debug, Clone)]
struct TrustedCa {
    der: Vec<u8>,
    subject_raw: Vec<u8>,
    /// Latest start and earliest end of validity along the path to the root.
    path_not_before: i64,
    path_not_after: i64,
}

/// The trusted TPM-vendor CA certificates, loaded from a directory.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    certs: Vec<TrustedCa>,
    warnings: Vec<String>,
}

/// Why the trust directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    /// The directory cannot be listed.
    #[error("reading the TPM trust directory {} failed", .dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("reading {} failed", .file.display())]
    ReadFile {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl TrustStore {
    /// Loads every certificate in `dir` (PEM, possibly several per file, or DER). Other PEM
    /// content, such as a private key someone dropped there, is skipped with a warning.
    pub fn load(dir: &Path) -> Result<Self, TrustStoreError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| TrustStoreError::ReadDir {
                dir: dir.to_owned(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut found = Vec::new();
        let mut warnings = Vec::new();
        for file in files {
            let data = std::fs::read(&file).map_err(|source| TrustStoreError::ReadFile {
                file: file.clone(),
                source,
            })?;
            add_file(&file, &data, &mut found, &mut warnings);
        }
        let store = anchor(found, warnings);
        for w in &store.warnings {
            tracing::warn!("{w}");
        }
        Ok(store)
    }
}

/// Certificates found in the files of the trust directory, with the file each came from.
type Found = Vec<(PathBuf, Vec<u8>)>;

fn add_file(file: &Path, data: &[u8], found: &mut Found, warnings: &mut Vec<String>) {
    if X509Certificate::from_der(data).is_ok() {
        found.push((file.to_owned(), data.to_vec()));
        return;
    }
    let mut found_pem = false;
    for pem in Pem::iter_from_buffer(data) {
        let Ok(Pem { label, contents }) = pem else {
            break;
        };
        found_pem = true;
        if label == "CERTIFICATE" && X509Certificate::from_der(&contents).is_ok() {
            found.push((file.to_owned(), contents));
        } else if label == "CERTIFICATE" {
            warnings.push(format!(
                "{}: skipped a CERTIFICATE block that does not parse",
                file.display()
            ));
        } else {
            // Never echo the content: it may be a private key.
            warnings.push(format!(
                    "{}: skipped a \"{label}\" PEM block; only certificates belong in the TPM trust directory",
                    file.display()
                ));
        }
    }
    if !found_pem {
        warnings.push(format!("{}: skipped; not a certificate", file.display()));
    }
}

/// Keeps the CA certificates that chain, by verified signatures, to a self-signed root of the
/// same directory; done once at load so that each unit costs one signature check.
fn anchor(found: Found, mut warnings: Vec<String>) -> TrustStore {
    let parsed: Vec<(&PathBuf, &Vec<u8>, X509Certificate<'_>)> = found
        .iter()
        .filter_map(|(f, d)| X509Certificate::from_der(d).ok().map(|(_, c)| (f, d, c)))
        .collect();
    let is_ca =
        |c: &X509Certificate<'_>| matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let mut certs = Vec::new();
    for (file, der, cert) in &parsed {
        if !is_ca(cert) {
            warnings.push(format!(
                "{}: skipped \"{}\"; not a CA certificate",
                file.display(),
                dn(cert.subject())
            ));
            continue;
        }
        let mut current = cert;
        let v = cert.validity();
        let (mut nb, mut na) = (v.not_before.timestamp(), v.not_after.timestamp());
        let mut rooted = false;
        for _ in 0..MAX_CHAIN {
            if current.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(None).is_ok()
            {
                rooted = true;
                break;
            }
            let issuer = parsed.iter().find(|(_, _, ca)| {
                ca.subject().as_raw() == current.issuer().as_raw()
                    && is_ca(ca)
                    && current.verify_signature(Some(ca.public_key())).is_ok()
            });
            let Some((_, _, next)) = issuer else { break };
            let v = next.validity();
            nb = nb.max(v.not_before.timestamp());
            na = na.min(v.not_after.timestamp());
            current = next;
        }
        if rooted {
            certs.push(TrustedCa {
                der: (*der).clone(),
                subject_raw: cert.subject().as_raw().to_vec(),
                path_not_before: nb,
                path_not_after: na,
            });
        } else {
            warnings.push(format!(
                "{}: skipped \"{}\"; it does not chain to a self-signed root in the directory",
                file.display(),
                dn(cert.subject())
            ));
        }
    }
    TrustStore { certs, warnings }
}

impl TrustStore {
    /// Number of certificates loaded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True when no certificate was loaded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// What was skipped while loading.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}
