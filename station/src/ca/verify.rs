//! Signature and chain checks on certificates, with x509-parser.

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
    use base64::Engine;
    let mut out = String::new();
    for d in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(d);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
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
