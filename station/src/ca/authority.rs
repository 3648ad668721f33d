//! The CAs themselves: creating the root and intermediate in the HSM, and issuing leaf
//! certificates that are verified before they are released.

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    PublicKeyData,
};

use super::error::CaError;
use super::profile::{ExtendedKeyUsage, KeyUsage, Profile, ProfileKind};
use super::request::{KeyKind, SubjectKey, UnitSubject};
use super::verify;
use crate::hsm::{EcKey, HsmError, HsmSigner, KeyProtection, TokenSession};

/// Clock skew allowance: certificates are valid from a few minutes before issuance so a
/// unit whose clock is slightly behind does not reject its brand-new certificate.
const BACKDATE_SECS: i64 = 300;

/// A certificate serial number: 16 bytes from a CSPRNG, positive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSerial([u8; 16]);

impl CertSerial {
    /// A fresh random serial. The top bit is cleared (DER integers are signed) and the next
    /// one set, so the encoding is always exactly 16 bytes.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        b[0] = (b[0] & 0x7f) | 0x40;
        Self(b)
    }

    /// Lowercase hex, as stored and shown.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A certificate the CA signed and verified; only now may it be recorded and released.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER certificate.
    pub der: Vec<u8>,
    /// Serial number.
    pub serial: CertSerial,
    /// Subject CN.
    pub common_name: String,
    /// Profile used.
    pub profile: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

fn dn(profile: &Profile, cn: &str, unit: &UnitSubject) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = unit
        .organization
        .as_deref()
        .or(profile.subject.organization.as_deref())
    {
        dn.push(DnType::OrganizationName, o);
    }
    if let Some(ou) = &unit.organizational_unit {
        dn.push(DnType::OrganizationalUnitName, ou.as_str());
    }
    if let Some(sn) = &unit.serial_number {
        // serialNumber (2.5.4.5) has no DnType variant of its own.
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), sn.as_str());
    }
    dn
}

/// Certificate parameters from a profile; nothing comes from a CSR but the public key.
fn params(
    profile: &Profile,
    cn: &str,
    unit: &UnitSubject,
    serial: &CertSerial,
) -> (CertificateParams, i64, i64) {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::seconds(BACKDATE_SECS);
    let not_after = now + time::Duration::days(i64::from(profile.validity_days));
    let mut p = CertificateParams::default();
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(serial.0.to_vec().into());
    p.distinguished_name = dn(profile, cn, unit);
    p.is_ca = match profile.kind {
        ProfileKind::Leaf => IsCa::ExplicitNoCa,
        _ => IsCa::Ca(match profile.path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        }),
    };
    p.key_usages = profile
        .key_usage
        .iter()
        .map(|k| match k {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::KeyAgreement => KeyUsagePurpose::KeyAgreement,
            KeyUsage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        })
        .collect();
    p.extended_key_usages = profile
        .extended_key_usage
        .iter()
        .map(|e| match e {
            ExtendedKeyUsage::ClientAuth => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsage::ServerAuth => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        })
        .collect();
    // `openssl verify -x509_strict` rejects a non-root certificate without an AKI, and
    // rcgen adds one only when asked. Self-signed roots get an SKI from `is_ca` instead.
    p.use_authority_key_identifier_extension = profile.kind != ProfileKind::Root;
    if !profile.crl_urls.is_empty() {
        p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: profile.crl_urls.clone(),
        }];
    }
    (p, not_before.unix_timestamp(), not_after.unix_timestamp())
}

/// Finds the key with this label or generates it (a protected P-256 key).
pub fn find_or_generate(session: &TokenSession, label: &str) -> Result<EcKey, CaError> {
    match session.find_ec_key(label) {
        Ok(k) => Ok(k),
        Err(HsmError::KeyNotFound { .. }) => Ok(session.generate_p256(label)?),
        Err(e) => Err(e.into()),
    }
}

/// Makes the self-signed root certificate for the key `label` (generated if absent).
pub fn create_root(
    session: &TokenSession,
    label: &str,
    profile: &Profile,
) -> Result<Vec<u8>, CaError> {
    let key = find_or_generate(session, label)?;
    session.require_protected(&key)?;
    let signer = HsmSigner::new(session, key);
    let cn = profile
        .subject
        .common_name
        .clone()
        .unwrap_or_else(|| "Station Root CA".into());
    let (p, _, _) = params(profile, &cn, &UnitSubject::default(), &CertSerial::random());
    let cert = p.self_signed(&signer).map_err(CaError::Build)?;
    let der = cert.der().to_vec();
    let parsed = verify::parse(&der, "new root")?;
    if !verify::signed_by(&parsed, &parsed) {
        return Err(CaError::SignatureCheck);
    }
    Ok(der)
}

/// An EC subject key as rcgen writes it: the point and the algorithm its SubjectPublicKeyInfo
/// names. `SubjectKey` has already classified the key, so rcgen's own reading (a parse plus a
/// search over every algorithm it knows, per certificate) is skipped for the common case.
struct EcSubjectKey<'k> {
    point: &'k [u8],
    alg: &'static rcgen::SignatureAlgorithm,
}

impl<'k> EcSubjectKey<'k> {
    /// `None` for RSA, which keeps rcgen's reading (its NULL parameters are rcgen's choice).
    fn from_key(key: &'k SubjectKey) -> Option<Self> {
        let alg = match key.kind {
            KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Rsa(_) => return None,
        };
        let point = verify::spki_public_key(&key.spki_der)?;
        Some(Self { point, alg })
    }
}

impl rcgen::PublicKeyData for EcSubjectKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// A CA whose key is in the HSM and whose certificate matches that key.
pub struct Authority<'s> {
    issuer: rcgen::Issuer<'static, HsmSigner<'s>>,
    cert_der: Vec<u8>,
    verifier: verify::CaVerifier,
    issuer_key_id: String,
    protection: KeyProtection,
}

impl std::fmt::Debug for Authority<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("key", &self.issuer.key())
            .finish()
    }
}

impl<'s> Authority<'s> {
    /// Loads the CA: the key must be protected (sensitive, never extractable) and the
    /// certificate's public key must be the HSM key.
    pub fn load(
        session: &'s TokenSession,
        key_label: &str,
        cert_der: Vec<u8>,
        what: &str,
    ) -> Result<Self, CaError> {
        let key = session.find_ec_key(key_label)?;
        let protection = session.require_protected(&key)?;
        let cert = verify::parse(&cert_der, what)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.point.as_slice() {
            return Err(CaError::CertKeyMismatch {
                what: what.to_owned(),
                label: key_label.to_owned(),
            });
        }
        Self::assemble(session, key, cert_der, protection, what)
    }

    fn assemble(
        session: &'s TokenSession,
        key: EcKey,
        cert_der: Vec<u8>,
        protection: KeyProtection,
        what: &str,
    ) -> Result<Self, CaError> {
        let cert = verify::parse(&cert_der, what)?;
        let issuer_key_id = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(cert.public_key().raw))
        };
        // Prepared once: every issuance checks its signature against this key.
        let verifier = verify::CaVerifier::new(&cert).ok_or_else(|| CaError::CaCertParse {
            what: what.to_owned(),
        })?;
        let signer = HsmSigner::new(session, key);
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&cert_der.as_slice().into(), signer).map_err(|_| {
                CaError::CaCertParse {
                    what: what.to_owned(),
                }
            })?;
        Ok(Self {
            issuer,
            cert_der,
            verifier,
            issuer_key_id,
            protection,
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// This CA's key in the database: SHA-256 of its SubjectPublicKeyInfo, hex.
    pub fn issuer_key_id(&self) -> &str {
        &self.issuer_key_id
    }

    /// The key protection read from the token at load.
    pub fn protection(&self) -> KeyProtection {
        self.protection
    }

    /// The HSM signer (for CSRs over this CA's key).
    pub fn signer(&self) -> &HsmSigner<'s> {
        self.issuer.key()
    }

    /// The issuer as rcgen signs with it (its name, key usages and HSM key), for CRLs.
    pub(super) fn issuer(&self) -> &rcgen::Issuer<'static, HsmSigner<'s>> {
        &self.issuer
    }

    /// Signs and verifies a certificate for `subject` (already allowed by the profile).
    fn sign(
        &self,
        profile: &Profile,
        subject: &impl PublicKeyData,
        cn: &str,
        unit: &UnitSubject,
    ) -> Result<IssuedCert, CaError> {
        let serial = CertSerial::random();
        let (p, not_before, not_after) = params(profile, cn, unit, &serial);
        let cert = p.signed_by(subject, &self.issuer).map_err(CaError::Build)?;
        let der = cert.der().to_vec();
        self.check_signature(&der)?;
        Ok(IssuedCert {
            der,
            serial,
            common_name: cn.to_owned(),
            profile: profile.name.clone(),
            not_before,
            not_after,
        })
    }

    /// Every certificate is checked against the CA certificate's public key before it
    /// leaves: a key/certificate mix-up or a faulty HSM never yields a bad certificate.
    /// The check reads the signed bytes as they will be released (TBS, algorithm, signature)
    /// rather than re-parsing the whole certificate, which the station itself just built.
    fn check_signature(&self, der: &[u8]) -> Result<(), CaError> {
        if self.verifier.verifies(der) {
            Ok(())
        } else {
            Err(CaError::SignatureCheck)
        }
    }

    /// Issues a leaf for `key` under `profile`, with CN `cn` (validated by the caller).
    pub fn issue(
        &self,
        profile: &Profile,
        key: &SubjectKey,
        cn: &str,
        unit: &UnitSubject,
    ) -> Result<IssuedCert, CaError> {
        if profile.kind != ProfileKind::Leaf {
            return Err(CaError::Profile {
                name: profile.name.clone(),
                problem: "only leaf profiles issue from a request".into(),
            });
        }
        key.check_allowed(profile)?;
        unit.check_allowed(profile)?;
        match EcSubjectKey::from_key(key) {
            Some(ec) => self.sign(profile, &ec, cn, unit),
            None => {
                let spki =
                    rcgen::SubjectPublicKeyInfo::from_der(&key.spki_der).map_err(CaError::Build)?;
                self.sign(profile, &spki, cn, unit)
            }
        }
    }

    /// Signs a subordinate CA certificate for `subject` (the intermediate, signed by the root).
    pub fn issue_ca(
        &self,
        profile: &Profile,
        subject: &impl PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        let cn = profile
            .subject
            .common_name
            .clone()
            .unwrap_or_else(|| profile.name.clone());
        self.sign(profile, subject, &cn, &UnitSubject::default())
    }

    /// A verification (proof-of-possession) certificate: CN = the code, over a throwaway
    /// software key, since DPS only checks who signed it.
    pub fn verification_cert(&self, profile: &Profile, code: &str) -> Result<IssuedCert, CaError> {
        let throwaway =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Build)?;
        self.sign(profile, &throwaway, code, &UnitSubject::default())
    }
}

/// A PKCS#10 request over the HSM key `label` (generated if absent), for an external root.
pub fn csr(session: &TokenSession, label: &str, profile: &Profile) -> Result<String, CaError> {
    let key = find_or_generate(session, label)?;
    session.require_protected(&key)?;
    let signer = HsmSigner::new(session, key);
    let cn = profile
        .subject
        .common_name
        .clone()
        .unwrap_or_else(|| profile.name.clone());
    // A CSR carries only the subject and key: the external root decides the rest.
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(profile, &cn, &UnitSubject::default());
    let req = p.serialize_request(&signer).map_err(CaError::Build)?;
    req.pem().map_err(CaError::Build)
}

/// Verification code rules: what DPS generates (hex-like), at most 64 characters.
pub fn check_code(code: &str) -> Result<(), CaError> {
    let bad = |problem: &str| CaError::CommonName {
        value: code.to_owned(),
        problem: problem.to_owned(),
    };
    if code.is_empty() {
        return Err(bad("the verification code is empty"));
    }
    if code.chars().count() > super::request::MAX_CN_LEN {
        return Err(bad("a certificate CN holds at most 64 characters"));
    }
    if !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(bad(
            "a verification code has only ASCII letters, digits and -",
        ));
    }
    Ok(())
}

#[cfg(test)]
impl<'s> Authority<'s> {
    /// Test-only: skips the certificate/key match so the post-signing check can be shown
    /// to stop a certificate signed by the wrong key.
    pub(crate) fn load_unchecked(
        session: &'s TokenSession,
        key_label: &str,
        cert_der: Vec<u8>,
    ) -> Result<Self, CaError> {
        let key = session.find_ec_key(key_label)?;
        let protection = session.key_protection(&key)?;
        Self::assemble(session, key, cert_der, protection, "test")
    }
}
