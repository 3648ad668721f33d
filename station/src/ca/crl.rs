//! Certificate revocation lists (RFC 5280 v2 CRLs) signed by the issuing CA's key in the HSM:
//! every certificate of the CA the station no longer stands behind, until it expires. A
//! scrapped unit's certificates are listed with reason cessationOfOperation, those a retry
//! replaced with reason superseded. As with certificates, the CRL's signature is checked with
//! the CA certificate's public key before it is released.

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::authority::Authority;
use super::error::CaError;
use super::verify;

/// Why a certificate is on the CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its unit was scrapped (`revoked` in the database): cessationOfOperation.
    Scrapped,
    /// A retry of its unit replaced it (`superseded`): superseded.
    Superseded,
}

impl Reason {
    /// The reason for a certificate's status in the database, if it belongs on a CRL.
    #[must_use]
    pub fn for_status(status: &str) -> Option<Self> {
        match status {
            "revoked" => Some(Self::Scrapped),
            "superseded" => Some(Self::Superseded),
            _ => None,
        }
    }

    /// RFC 5280's name of the reason code.
    #[must_use]
    pub fn code_name(self) -> &'static str {
        match self {
            Self::Scrapped => "cessationOfOperation",
            Self::Superseded => "superseded",
        }
    }
}

/// One certificate on a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its serial, hex as stored.
    pub serial_hex: String,
    /// When the station stopped standing behind it.
    pub revoked_at: time::OffsetDateTime,
    /// Why.
    pub reason: Reason,
}

/// Signs CRL number `number` of `ca`, valid from `this_update` until `next_update`, listing
/// `entries`; checks its signature with the CA certificate's public key; returns its DER.
pub fn sign(
    ca: &Authority<'_>,
    number: u64,
    (this_update, next_update): (time::OffsetDateTime, time::OffsetDateTime),
    entries: &[Entry],
) -> Result<Vec<u8>, CaError> {
    let ca_cert = verify::parse(ca.cert_der(), "issuing")?;
    if let Ok(Some(ku)) = ca_cert.key_usage()
        && !ku.value.crl_sign()
    {
        return Err(CaError::NotCrlSigner);
    }
    // The CRL's authority key identifier is the CA certificate's subject key identifier, as
    // in the certificates it issued, so a relying party matches them.
    let ski = ca_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    let revoked_certs = entries
        .iter()
        .map(|e| {
            let serial = hex::decode(&e.serial_hex).map_err(|_| CaError::CaCertParse {
                what: format!("serial {:?} in the database", e.serial_hex),
            })?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: e.revoked_at,
                reason_code: Some(match e.reason {
                    Reason::Scrapped => RevocationReason::CessationOfOperation,
                    Reason::Superseded => RevocationReason::Superseded,
                }),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number.to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: ski.map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified),
    };
    let crl = params.signed_by(ca.issuer()).map_err(|e| match e {
        rcgen::Error::IssuerNotCrlSigner => CaError::NotCrlSigner,
        other => CaError::Build(other),
    })?;
    let der = crl.der().to_vec();
    let verified = CertificateRevocationList::from_der(&der)
        .ok()
        .filter(|(rest, _)| rest.is_empty())
        .is_some_and(|(_, parsed)| parsed.verify_signature(ca_cert.public_key()).is_ok());
    if !verified {
        return Err(CaError::CrlSignatureCheck);
    }
    Ok(der)
}

/// PEM of a DER CRL.
#[must_use]
pub fn to_pem(der: &[u8]) -> String {
    verify::pem("X509 CRL", der)
}

/// Writes a CRL as PEM to `path` whole: into `path.new`, synced, then renamed over `path`,
/// so a web server publishing the file never serves half of one. Readable by all (a CRL is
/// public).
pub fn write_file(path: &std::path::Path, der: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(to_pem(der).as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
