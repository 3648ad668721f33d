//! Signature and chain checks on certificates: x509-parser for whole certificates, and a
//! prepared aws-lc-rs key for the check every issued certificate passes before release.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use der::asn1::{AnyRef, BitStringRef};
use der::{Decode, Header, Reader, SliceReader, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::error::CaError;

/// Parses a DER certificate.
pub fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, CaError> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        _ => Err(CaError::CaCertParse {
            what: what.to_owned(),
        }),
    }
}

/// Whether `cert` is signed by the key in `issuer`.
pub fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// DER of the AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2, no parameters),
/// the only algorithm an HSM P-256 CA key signs with.
const ECDSA_WITH_SHA256: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// A CA's P-256 public key, prepared once, that checks the certificates the CA signs. It
/// reads only the outer SEQUENCE of each certificate (TBS bytes, algorithm, signature), since
/// what matters before release is that these exact bytes carry a valid signature.
pub struct CaVerifier {
    key: ParsedPublicKey,
}

impl std::fmt::Debug for CaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaVerifier").finish_non_exhaustive()
    }
}

impl CaVerifier {
    /// The verifier for the public key of this CA certificate; `None` unless it is a valid
    /// P-256 point (the only kind of key the station's HSM CAs have).
    pub fn new(ca_cert: &X509Certificate<'_>) -> Option<Self> {
        let point = &ca_cert.public_key().subject_public_key.data;
        ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point.as_ref())
            .ok()
            .map(|key| Self { key })
    }

    /// Whether `cert_der` is one DER certificate signed with ECDSA-SHA256 by this key.
    pub fn verifies(&self, cert_der: &[u8]) -> bool {
        match split_signed(cert_der) {
            Some((tbs, alg, sig)) => {
                alg == ECDSA_WITH_SHA256.as_slice() && self.key.verify_sig(tbs, sig).is_ok()
            }
            None => false,
        }
    }
}

/// Splits `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`
/// into the TBS and algorithm as encoded (header included) and the signature bits. `None`
/// for anything but exactly one such SEQUENCE.
pub fn split_signed(der: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut outer = SliceReader::new(der).ok()?;
    let header = Header::decode(&mut outer).ok()?;
    if header.tag != Tag::Sequence {
        return None;
    }
    let body = outer.read_slice(header.length).ok()?;
    outer.finish(()).ok()?;
    let mut r = SliceReader::new(body).ok()?;
    let element = |r: &mut SliceReader<'_>| -> Option<&[u8]> {
        let start = usize::try_from(r.position()).ok()?;
        AnyRef::decode(r).ok()?;
        let end = usize::try_from(r.position()).ok()?;
        body.get(start..end)
    };
    let tbs = element(&mut r).filter(|t| t.first() == Some(&0x30))?;
    let alg = element(&mut r)?;
    let sig = BitStringRef::decode(&mut r).ok()?.as_bytes()?;
    r.finish(()).ok()?;
    Some((tbs, alg, sig))
}

/// The subject public key bits of a DER `SubjectPublicKeyInfo ::= SEQUENCE { algorithm,
/// subjectPublicKey BIT STRING }`; `None` for anything else.
pub fn spki_public_key(spki_der: &[u8]) -> Option<&[u8]> {
    let mut outer = SliceReader::new(spki_der).ok()?;
    let header = Header::decode(&mut outer).ok()?;
    if header.tag != Tag::Sequence {
        return None;
    }
    let body = outer.read_slice(header.length).ok()?;
    outer.finish(()).ok()?;
    let mut r = SliceReader::new(body).ok()?;
    AnyRef::decode(&mut r).ok()?;
    let bits = BitStringRef::decode(&mut r).ok()?.as_bytes()?;
    r.finish(()).ok()?;
    Some(bits)
}

/// Verifies `cert` up a chain (`chain[0]` signs `cert`, each signs the previous, the last is
/// a self-signed root), that every issuer is a CA and that all are valid now.
pub fn chain(cert_der: &[u8], chain_der: &[Vec<u8>]) -> Result<(), CaError> {
    let fail = |problem: String| CaError::Chain { problem };
    let cert = parse(cert_der, "to verify")?;
    if chain_der.is_empty() {
        return Err(fail("the chain is empty".into()));
    }
    let mut all = vec![cert];
    for (i, d) in chain_der.iter().enumerate() {
        all.push(parse(d, &format!("chain[{i}]"))?);
    }
    for w in all.windows(2) {
        let (child, parent) = (&w[0], &w[1]);
        if !signed_by(child, parent) {
            return Err(fail(format!(
                "{} is not signed by {}",
                child.subject(),
                parent.subject()
            )));
        }
        let is_ca = parent
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(fail(format!(
                "{} is not a CA certificate",
                parent.subject()
            )));
        }
    }
    if let Some(root) = all.last()
        && (root.subject() != root.issuer() || !signed_by(root, root))
    {
        return Err(fail(format!(
            "the last certificate ({}) is not a self-signed root",
            root.subject()
        )));
    }
    for c in &all {
        if !c.validity().is_valid() {
            return Err(fail(format!(
                "{} is outside its validity period",
                c.subject()
            )));
        }
    }
    Ok(())
}

/// Whole days from now until `cert` expires (negative once expired).
pub fn days_to_expiry(cert: &X509Certificate<'_>) -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (cert.validity().not_after.to_datetime() - now).whole_days()
}

/// PEM-encodes DER certificates.
pub fn to_pem(ders: &[&[u8]]) -> String {
    ders.iter().map(|d| pem("CERTIFICATE", d)).collect()
}

/// One PEM block (`-----BEGIN LABEL-----`, base64 in lines of 64, `-----END LABEL-----`).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every certificate in a PEM bundle (or one DER certificate), as DER.
pub fn from_pem_bundle(input: &[u8]) -> Vec<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(input) else {
        return vec![input.to_vec()];
    };
    if !text.contains("-----BEGIN") {
        return vec![input.to_vec()];
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + 27..];
        let Some(end) = body.find("-----END CERTIFICATE-----") else {
            break;
        };
        let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        use base64::Engine;
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.push(der);
        }
        rest = &body[end..];
    }
    out
}
