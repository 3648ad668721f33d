//! The x509 provisioning exchange: identify, keygen over a fresh nonce, CSR checks, issue,
//! put_cert, signed read-back, lock. The unit counts as provisioned only when every step passed.

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tracing::info;
use x509_parser::prelude::{FromDer as _, X509Certificate, X509CertificationRequest};

use dps::ids::RegistrationId;

use super::IdentifyError;
use super::port::Port;
use super::proto::{self, NONCE_LEN};
use super::transport::LinkError;
use super::{Gate, UnitClient};

/// A certificate chain issued for a unit.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    /// The unit's leaf certificate (DER).
    pub leaf_der: Vec<u8>,
    /// Issuing CA certificates (DER), the leaf's issuer first.
    pub chain_der: Vec<Vec<u8>>,
}

impl IssuedChain {
    /// The bytes written to the unit: leaf then chain, DER certificates concatenated.
    #[must_use]
    pub fn blob(&self) -> Vec<u8> {
        let mut out = self.leaf_der.clone();
        for c in &self.chain_der {
            out.extend_from_slice(c);
        }
        out
    }
}

/// An error from a certificate issuer, kept opaque to this layer.
pub type IssueError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The seam to the certificate authority: issues a leaf for a checked CSR.
/// Implementations verify the CSR's signature themselves.
pub trait LeafIssuer {
    /// Issues a leaf for `csr_der` whose subject CN is `registration_id`.
    fn issue(
        &self,
        csr_der: &[u8],
        registration_id: &RegistrationId,
    ) -> Result<IssuedChain, IssueError>;
}

/// What was wrong with a CSR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrProblem {
    /// Not a DER CSR.
    #[error("the CSR is not valid DER PKCS#10")]
    Unparseable,
    /// The self-signature does not verify.
    #[error("the CSR's signature does not verify")]
    BadSignature,
    /// The CN is not the registration ID asked for.
    #[error("the CSR's CN is {found:?}, expected {expected:?}")]
    WrongCn {
        /// Asked for.
        expected: String,
        /// In the CSR.
        found: Option<String>,
    },
    /// No challengePassword attribute.
    #[error("the CSR carries no nonce")]
    NoNonce,
    /// A challengePassword other than this exchange's nonce: a replayed or stale CSR.
    #[error("the CSR carries an old nonce (replayed CSR)")]
    OldNonce,
    /// Not a P-256 key.
    #[error("the CSR's key is not an EC P-256 key")]
    WrongKeyType,
}

/// Why the x509 exchange failed; every variant names its step.
#[derive(Debug, thiserror::Error)]
pub enum X509FlowError {
    /// A command over the link failed (the source names the command).
    #[error("device link failed")]
    Link(#[from] LinkError),
    /// The unit is not the one scanned, or is locked (or `identify` failed).
    #[error(transparent)]
    Identify(#[from] IdentifyError),
    /// The unit cannot do x509.
    #[error("identify: unit {serial} does not offer x509 provisioning")]
    NoX509 {
        /// Serial.
        serial: String,
    },
    /// The CSR failed a check.
    #[error("keygen: CSR rejected")]
    Csr(#[source] CsrProblem),
    /// The CA refused or failed.
    #[error("issue: the CA did not issue a certificate")]
    Issue(#[source] IssueError),
    /// The issued leaf does not match the CSR.
    #[error("issue: the issued certificate does not match the CSR")]
    IssuedMismatch,
    /// The leaf's signature does not verify against its issuer.
    #[error("issue: the issued certificate's signature does not verify")]
    IssuedSignature,
    /// The read-back digest differs from what was sent.
    #[error("read-back: the unit stores a different certificate chain than was sent")]
    ReadbackDigest,
    /// The read-back signature is not by the certified key.
    #[error("read-back: the unit's key does not match the certificate")]
    ReadbackKey,
}

/// A unit that completed the x509 exchange.
#[derive(Debug, Clone)]
pub struct X509Provisioned {
    /// Serial the unit reported (equal to the one expected).
    pub serial: String,
    /// Registration ID (the leaf's CN).
    pub registration_id: RegistrationId,
    /// The leaf's subject, RFC 4514 style.
    pub subject: String,
    /// SHA-256 of the leaf DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// Leaf and chain as written.
    pub chain: IssuedChain,
}

/// The PKCS#9 challengePassword value a CSR must carry for `nonce`.
#[must_use]
pub fn nonce_password(nonce: &[u8]) -> String {
    hex::encode(nonce)
}

/// Checks a CSR: DER, signature, CN == `rid`, challengePassword == hex(`nonce`), P-256 key.
/// Returns the SubjectPublicKeyInfo DER.
pub fn check_csr(
    csr_der: &[u8],
    rid: &RegistrationId,
    nonce: &[u8],
) -> Result<Vec<u8>, CsrProblem> {
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|_| CsrProblem::Unparseable)?;
    if !rest.is_empty() {
        return Err(CsrProblem::Unparseable);
    }
    csr.verify_signature()
        .map_err(|_| CsrProblem::BadSignature)?;
    let info = &csr.certification_request_info;
    let cn = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    if cn.as_deref() != Some(rid.as_str()) {
        return Err(CsrProblem::WrongCn {
            expected: rid.as_str().to_owned(),
            found: cn,
        });
    }
    let password = info
        .iter_attributes()
        .find_map(|a| match a.parsed_attribute() {
            x509_parser::cri_attributes::ParsedCriAttribute::ChallengePassword(p) => {
                Some(p.0.clone())
            }
            _ => None,
        });
    match password {
        None => return Err(CsrProblem::NoNonce),
        Some(p) if p != nonce_password(nonce) => return Err(CsrProblem::OldNonce),
        Some(_) => {}
    }
    let spki = &info.subject_pki;
    let p256 = x509_parser::oid_registry::OID_EC_P256;
    let is_p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|o| o == p256);
    if !is_p256 {
        return Err(CsrProblem::WrongKeyType);
    }
    Ok(spki.raw.to_vec())
}

/// Step 3 (after the CA issued): the leaf certifies the CSR's key and verifies against its
/// issuer. Returns the leaf's subject and SHA-256 fingerprint (hex).
pub fn check_issued(
    chain: &IssuedChain,
    spki_der: &[u8],
) -> Result<(String, String), X509FlowError> {
    let leaf = check_issued_key(&chain.leaf_der, spki_der)?;
    let issuer_der = chain
        .chain_der
        .first()
        .ok_or(X509FlowError::IssuedSignature)?;
    let (_, issuer) =
        X509Certificate::from_der(issuer_der).map_err(|_| X509FlowError::IssuedSignature)?;
    leaf.verify_signature(Some(issuer.public_key()))
        .map_err(|_| X509FlowError::IssuedSignature)?;
    Ok((
        leaf.subject().to_string(),
        hex::encode(Sha256::digest(&chain.leaf_der)),
    ))
}

/// The leaf certifies the CSR's key; for a caller whose CA already verified the leaf's
/// signature before releasing it (the station's own [`crate::ca::Authority`]).
pub fn check_issued_key<'a>(
    leaf_der: &'a [u8],
    spki_der: &[u8],
) -> Result<X509Certificate<'a>, X509FlowError> {
    let (_, leaf) =
        X509Certificate::from_der(leaf_der).map_err(|_| X509FlowError::IssuedMismatch)?;
    if leaf.tbs_certificate.subject_pki.raw != spki_der {
        return Err(X509FlowError::IssuedMismatch);
    }
    Ok(leaf)
}

/// Whether `sig_der` (ECDSA P-256, SHA-256, DER) signs `message` with the key in `spki_der`.
fn verify_readback(spki_der: &[u8], message: &[u8], sig_der: &[u8]) -> bool {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    use x509_parser::prelude::SubjectPublicKeyInfo;
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        spki.subject_public_key.data.as_ref(),
    )
    .verify(message, sig_der)
    .is_ok()
}

fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

/// Step 1: identify the unit and check it is the one scanned, not locked, and offers x509.
pub fn identify_for_x509<P: Port>(
    unit: &mut UnitClient<P>,
    expected_serial: Option<&str>,
) -> Result<proto::IdentifyRsp, X509FlowError> {
    let id = unit.identify_unlocked(expected_serial)?;
    if !id.caps.iter().any(|c| c == "x509") {
        return Err(X509FlowError::NoX509 { serial: id.serial });
    }
    Ok(id)
}

/// A CSR the unit made for this exchange, checked.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The CSR (DER).
    pub csr_der: Vec<u8>,
    /// Its SubjectPublicKeyInfo (DER).
    pub spki_der: Vec<u8>,
}

/// Step 2: the unit makes its key and a CSR over a fresh nonce; the CSR is checked.
pub fn keygen_checked<P: Port>(
    unit: &mut UnitClient<P>,
    rid: &RegistrationId,
) -> Result<CheckedCsr, X509FlowError> {
    let nonce = fresh_nonce();
    let csr_der = unit.keygen(rid.as_str(), &nonce)?;
    let spki_der = check_csr(&csr_der, rid, &nonce).map_err(X509FlowError::Csr)?;
    Ok(CheckedCsr { csr_der, spki_der })
}

/// Step 4: writes the chain to the unit and checks the signed read-back: the digest equals
/// what was sent and the signature is by the certified key.
pub fn deliver<P: Port>(
    unit: &mut UnitClient<P>,
    chain: &IssuedChain,
    spki_der: &[u8],
) -> Result<(), X509FlowError> {
    let blob = chain.blob();
    unit.put_cert(&blob)?;
    read_back(unit, &blob, spki_der)
}

/// [`deliver`] for a certificate whose record is still on its way to the disk: the chunks
/// before the leaf's signature (no signature, so no certificate) go at once, and the unit
/// stores them while the disk syncs; nothing from the signature's bits on is sent before
/// `on_disk` returned (`ready` tells, without blocking, whether it would return at once).
pub fn deliver_gated<P: Port>(
    unit: &mut UnitClient<P>,
    chain: &IssuedChain,
    spki_der: &[u8],
    ready: &dyn Fn() -> bool,
    on_disk: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), X509FlowError> {
    let blob = chain.blob();
    // The leaf comes first in the blob: everything before its signature's bits may go (the
    // signed part, the algorithm, the bit string's header); nothing does if it does not parse.
    let at = crate::ca::verify::split_signed(&chain.leaf_der).map_or(0, |(_, _, sig)| {
        sig.as_ptr()
            .addr()
            .saturating_sub(chain.leaf_der.as_ptr().addr())
    });
    unit.put_cert_gated(
        &blob,
        Gate {
            at,
            ready,
            wait: on_disk,
        },
    )?;
    read_back(unit, &blob, spki_der)
}

/// Checks the signed read-back of the chain the unit stored (`blob` as sent).
fn read_back<P: Port>(
    unit: &mut UnitClient<P>,
    blob: &[u8],
    spki_der: &[u8],
) -> Result<(), X509FlowError> {
    let rb_nonce = fresh_nonce();
    let rb = unit.get_cert_digest(&rb_nonce)?;
    let sent = Sha256::digest(blob);
    if rb.sha.0[..] != sent[..] {
        return Err(X509FlowError::ReadbackDigest);
    }
    if !verify_readback(
        spki_der,
        &proto::readback_message(&rb_nonce, &rb.sha.0),
        &rb.sig.0,
    ) {
        return Err(X509FlowError::ReadbackKey);
    }
    Ok(())
}

/// Runs the whole x509 exchange with the unit expected to carry `expected_serial`.
pub fn provision_x509<P: Port>(
    unit: &mut UnitClient<P>,
    expected_serial: Option<&str>,
    rid: &RegistrationId,
    issuer: &dyn LeafIssuer,
) -> Result<X509Provisioned, X509FlowError> {
    let id = identify_for_x509(unit, expected_serial)?;
    let csr = keygen_checked(unit, rid)?;
    let chain = issuer
        .issue(&csr.csr_der, rid)
        .map_err(X509FlowError::Issue)?;
    let (subject, fingerprint) = check_issued(&chain, &csr.spki_der)?;
    deliver(unit, &chain, &csr.spki_der)?;
    unit.lock()?;
    info!(serial = %id.serial, registration_id = %rid, %fingerprint, "unit provisioned (x509)");
    Ok(X509Provisioned {
        serial: id.serial,
        registration_id: rid.clone(),
        subject,
        fingerprint_sha256: fingerprint,
        chain,
    })
}
