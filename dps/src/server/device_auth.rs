//! Who is registering: the enrollment a unit's credential matches, as DPS matches it.
//!
//! - **X.509** (a client certificate in the TLS handshake, `peer.rs`): the leaf's CN must be
//!   the registration ID and the leaf must be within its validity. An individual enrollment for
//!   the ID wins: the leaf must be its primary or secondary certificate. Otherwise the groups
//!   whose signing certificate the presented chain leads to (path validation with webpki:
//!   signatures, validity, EKU clientAuth when present); among them the one nearest the leaf.
//!   Groups by `caReferences` name verified CA certificates, which this service does not keep,
//!   so they match no unit here.
//! - **Symmetric key** (a SAS token, `sr` = `{idScope}/registrations/{registrationId}`, encoded
//!   or not, `skn` optional): an individual enrollment's primary or secondary key, or a
//!   symmetric group's key derived for the registration ID as the unit sent it.
//! - **TPM** (a SAS token signed in the unit's TPM): the key of the challenge sent to it
//!   (`device_tpm.rs`), while that is fresh.
//!
//! A refusal says what did not match and never shows a key. An individual enrollment that
//! exists but does not match refuses the unit even when a group would take it: that is how
//! DPS lets an individual enrollment override (or, disabled, block) one unit of a group.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::error::ServiceError;
use super::peer::PeerCerts;
use super::records::decode;
use super::state::AppState;
use super::store::{Table, Tx};
use crate::sas::{SasError, SasToken, SharedAccessKey, derive_device_key};
use crate::wire::{
    AttestationType, EnrollmentGroup, IndividualEnrollment, KeyText, X509Certificates,
};

/// The enrollment a registering unit matched.
#[derive(Debug, Clone)]
pub enum Matched {
    /// Its individual enrollment.
    Individual(Box<IndividualEnrollment>),
    /// An enrollment group.
    Group(Box<EnrollmentGroup>),
}

/// How the unit proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate.
    X509,
    /// A SAS token.
    SymmetricKey,
    /// A SAS token signed in the unit's TPM with the key of its challenge.
    Tpm,
}

/// The outcome of authentication.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The matched enrollment.
    pub matched: Matched,
    /// The credential used.
    pub credential: Credential,
}

/// The SAS token of an HTTP request (its `Authorization` header), if any.
#[must_use]
pub fn sas_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Authenticates a unit registering as `registration_id`, by its client certificate chain
/// (`peer`) or else its SAS token (`sas_token`: an HTTP `Authorization` value or an MQTT
/// password).
pub fn authenticate(
    st: &Arc<AppState>,
    registration_id: &str,
    sas_token: Option<&str>,
    peer: &PeerCerts,
) -> Result<Attested, ServiceError> {
    let key = super::registrations::key(registration_id)?;
    let tpm_key = st.tpm.key_for(&key);
    st.store.read(|tx| {
        let individual: Option<IndividualEnrollment> = tx
            .get(Table::Enrollments, &key)?
            .map(|row| decode(&row.json))
            .transpose()?;
        match peer.leaf() {
            Some(leaf) => x509(tx, registration_id, individual, leaf, peer.intermediates()),
            None => sas(
                tx,
                &st.id_scope,
                registration_id,
                sas_token,
                individual,
                tpm_key,
            ),
        }
    })
}

fn refuse(message: impl Into<String>) -> ServiceError {
    ServiceError::unauthorized(message)
}

fn groups(tx: &Tx<'_>) -> Result<Vec<EnrollmentGroup>, ServiceError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = tx.page(Table::Groups, after.as_deref(), 200, None)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.key.clone());
        for row in &rows {
            out.push(decode(&row.json)?);
        }
    }
    Ok(out)
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.trim().as_bytes())
        .ok()
        .map(|(_, p)| p.contents)
}

fn certificates(c: Option<&X509Certificates>) -> Vec<Vec<u8>> {
    c.into_iter()
        .flat_map(|c| [c.primary.as_ref(), c.secondary.as_ref()])
        .flatten()
        .filter_map(|c| c.certificate.as_deref().and_then(pem_der))
        .collect()
}

fn x509(
    tx: &Tx<'_>,
    registration_id: &str,
    individual: Option<IndividualEnrollment>,
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
) -> Result<Attested, ServiceError> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|_| refuse("the client certificate could not be parsed"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default();
    if !cn.eq_ignore_ascii_case(registration_id) {
        return Err(refuse(format!(
            "the client certificate's CN {cn:?} is not the registration ID {registration_id:?}"
        )));
    }
    if !cert.validity().is_valid() {
        return Err(refuse(format!(
            "the client certificate is not valid now (valid {} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        )));
    }
    if let Some(e) = individual {
        let ok = e.attestation.kind == AttestationType::X509
            && certificates(
                e.attestation
                    .x509
                    .as_ref()
                    .and_then(|x| x.client_certificates.as_ref()),
            )
            .iter()
            .any(|der| der.as_slice() == leaf.as_ref());
        if !ok {
            return Err(refuse(format!(
                "the individual enrollment {registration_id} does not hold this client certificate"
            )));
        }
        return Ok(Attested {
            matched: Matched::Individual(Box::new(e)),
            credential: Credential::X509,
        });
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let algorithms = provider.signature_verification_algorithms.all;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| refuse(format!("the client certificate is not usable: {e}")))?;
    let now = UnixTime::now();
    // The nearest group: the one whose certificate issued the earliest certificate of the
    // presented chain (0 = the leaf's own issuer).
    let mut best: Option<(usize, EnrollmentGroup)> = None;
    for g in groups(tx)? {
        if g.attestation.kind != AttestationType::X509 {
            continue;
        }
        let signing = certificates(
            g.attestation
                .x509
                .as_ref()
                .and_then(|x| x.signing_certificates.as_ref()),
        );
        for der in signing {
            let ca = CertificateDer::from(der.as_slice());
            let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca) else {
                continue;
            };
            let anchors = [anchor];
            let verified = ee
                .verify_for_usage(
                    algorithms,
                    &anchors,
                    intermediates,
                    now,
                    webpki::KeyUsage::client_auth(),
                    None,
                    None,
                )
                .is_ok();
            if !verified {
                continue;
            }
            let depth = depth_below(&der, leaf, intermediates);
            if best.as_ref().is_none_or(|(d, _)| depth < *d) {
                best = Some((depth, g.clone()));
            }
        }
    }
    match best {
        Some((_, g)) => Ok(Attested {
            matched: Matched::Group(Box::new(g)),
            credential: Credential::X509,
        }),
        None => Err(refuse(format!(
            "no enrollment for {registration_id} and no enrollment group's signing certificate \
             verifies this client certificate's chain"
        ))),
    }
}

/// The index in (leaf, intermediates...) of the first certificate `ca` issued.
fn depth_below(ca: &[u8], leaf: &[u8], intermediates: &[CertificateDer<'_>]) -> usize {
    let Ok((_, ca)) = X509Certificate::from_der(ca) else {
        return usize::MAX;
    };
    std::iter::once(leaf)
        .chain(intermediates.iter().map(AsRef::as_ref))
        .position(|c| {
            X509Certificate::from_der(c)
                .is_ok_and(|(_, c)| c.issuer().as_raw() == ca.subject().as_raw())
        })
        .unwrap_or(usize::MAX)
}

fn keys(primary: Option<&KeyText>, secondary: Option<&KeyText>) -> Vec<SharedAccessKey> {
    [primary, secondary]
        .into_iter()
        .flatten()
        .filter_map(|k| SharedAccessKey::from_base64(k.expose()).ok())
        .collect()
}

fn sas(
    tx: &Tx<'_>,
    id_scope: &str,
    registration_id: &str,
    sas_token: Option<&str>,
    individual: Option<IndividualEnrollment>,
    tpm_key: Option<SharedAccessKey>,
) -> Result<Attested, ServiceError> {
    let text = sas_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        refuse("no credential: neither a client certificate nor a SAS token (Authorization header or MQTT password)")
    })?;
    let token = SasToken::parse(text).map_err(|e| refuse(format!("malformed SAS token: {e}")))?;
    let want = format!("{id_scope}/registrations/{registration_id}").to_ascii_lowercase();
    if token.resource() != want {
        return Err(refuse(format!(
            "the SAS token is for {:?}, not {want:?}",
            token.resource()
        )));
    }
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    // Expired is reported only for a token whose signature matched a key.
    let check = |keys: &[SharedAccessKey]| -> Option<Result<(), SasError>> {
        let mut outcome = None;
        for k in keys {
            match token.verify(k, now) {
                Ok(()) => return Some(Ok(())),
                Err(SasError::SignatureMismatch) => {}
                Err(e) => outcome = Some(Err(e)),
            }
        }
        outcome
    };
    let expired = |e: SasError| refuse(format!("the SAS token was refused: {e}"));
    if let Some(e) = individual {
        let (ks, credential) = match e.attestation.kind {
            AttestationType::SymmetricKey => {
                let sk = e.attestation.symmetric_key.as_ref();
                let ks = keys(
                    sk.and_then(|s| s.primary_key.as_ref()),
                    sk.and_then(|s| s.secondary_key.as_ref()),
                );
                (ks, Credential::SymmetricKey)
            }
            AttestationType::Tpm => match tpm_key {
                Some(k) => (vec![k], Credential::Tpm),
                None => {
                    return Err(refuse(format!(
                        "no TPM challenge is pending for {registration_id}: register with the \
                         endorsement and storage root keys and no token first"
                    )));
                }
            },
            other => {
                return Err(refuse(format!(
                    "the individual enrollment {registration_id} uses {} attestation, not a SAS token",
                    other.as_str()
                )));
            }
        };
        return match check(&ks) {
            Some(Ok(())) => Ok(Attested {
                matched: Matched::Individual(Box::new(e)),
                credential,
            }),
            Some(Err(err)) => Err(expired(err)),
            None => Err(refuse(format!(
                "the SAS token's signature matches no key of the individual enrollment {registration_id}"
            ))),
        };
    }
    for g in groups(tx)? {
        if g.attestation.kind != AttestationType::SymmetricKey {
            continue;
        }
        let sk = g.attestation.symmetric_key.as_ref();
        let derived: Vec<SharedAccessKey> = keys(
            sk.and_then(|s| s.primary_key.as_ref()),
            sk.and_then(|s| s.secondary_key.as_ref()),
        )
        .iter()
        .map(|k| derive_device_key(k, registration_id))
        .collect();
        match check(&derived) {
            Some(Ok(())) => {
                return Ok(Attested {
                    matched: Matched::Group(Box::new(g)),
                    credential: Credential::SymmetricKey,
                });
            }
            Some(Err(err)) => return Err(expired(err)),
            None => {}
        }
    }
    Err(refuse(format!(
        "no enrollment for {registration_id}, and the SAS token's signature matches no \
         symmetric-key group's key derived for it"
    )))
}
