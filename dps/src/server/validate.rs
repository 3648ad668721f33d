//! Checks and service-filled fields of enrollments and groups. Every error names its field.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::ExposeSecret;
use sha1::Digest as _;

use super::error::ServiceError;
use super::store::LinkedHub;
use crate::sas::SharedAccessKey;
use crate::wire::{
    AllocationPolicy, AttestationMechanism, AttestationType, InitialTwin, KeyText, X509Attestation,
    X509CertificateInfo, X509CertificateWithInfo, X509Certificates,
};

/// Hub twin limits that apply to the initial twin.
const MAX_TAGS_BYTES: usize = 8 * 1024;
const MAX_DESIRED_BYTES: usize = 32 * 1024;
const MAX_TWIN_DEPTH: usize = 10;

/// Symmetric keys DPS accepts: 16 to 64 bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// What kind of record is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// An individual enrollment.
    Enrollment,
    /// An enrollment group.
    Group,
}

fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks the attestation's consistency and fills what the service fills (keys, x509 info).
pub fn attestation(
    a: &mut AttestationMechanism,
    prefix: &str,
    owner: Owner,
) -> Result<(), ServiceError> {
    let p = field(prefix, "attestation");
    let kind = a.kind;
    let stray = [
        ("tpm", a.tpm.is_some() && kind != AttestationType::Tpm),
        ("x509", a.x509.is_some() && kind != AttestationType::X509),
        (
            "symmetricKey",
            a.symmetric_key.is_some() && kind != AttestationType::SymmetricKey,
        ),
    ];
    if let Some((name, _)) = stray.iter().find(|(_, s)| *s) {
        return Err(ServiceError::invalid(
            &format!("{p}.{name}"),
            format!("given, but attestation.type is {}", kind.as_str()),
        ));
    }
    match kind {
        AttestationType::None => Err(ServiceError::invalid(
            &format!("{p}.type"),
            "must be tpm, x509 or symmetricKey",
        )),
        AttestationType::Tpm => {
            if owner == Owner::Group {
                return Err(ServiceError::invalid(
                    &format!("{p}.type"),
                    "enrollment groups do not support tpm attestation",
                ));
            }
            let tpm = a.tpm.as_ref().ok_or_else(|| {
                ServiceError::invalid(&format!("{p}.tpm"), "is required for type tpm")
            })?;
            let ek = B64.decode(tpm.endorsement_key.trim()).map_err(|_| {
                ServiceError::invalid(&format!("{p}.tpm.endorsementKey"), "is not base64")
            })?;
            if ek.len() < 4 {
                return Err(ServiceError::invalid(
                    &format!("{p}.tpm.endorsementKey"),
                    "is too short for a TPM2B_PUBLIC",
                ));
            }
            if let Some(srk) = &tpm.storage_root_key {
                B64.decode(srk.trim()).map_err(|_| {
                    ServiceError::invalid(&format!("{p}.tpm.storageRootKey"), "is not base64")
                })?;
            }
            Ok(())
        }
        AttestationType::SymmetricKey => {
            let sk = a.symmetric_key.get_or_insert_with(Default::default);
            for (name, slot) in [
                ("primaryKey", &mut sk.primary_key),
                ("secondaryKey", &mut sk.secondary_key),
            ] {
                match slot {
                    Some(k) if !k.is_empty() => {
                        let bytes = B64.decode(k.expose().trim()).map_err(|_| {
                            ServiceError::invalid(
                                &format!("{p}.symmetricKey.{name}"),
                                "is not base64",
                            )
                        })?;
                        if !KEY_BYTES.contains(&bytes.len()) {
                            return Err(ServiceError::invalid(
                                &format!("{p}.symmetricKey.{name}"),
                                "must decode to 16-64 bytes",
                            ));
                        }
                    }
                    _ => {
                        *slot = Some(KeyText::new(
                            SharedAccessKey::generate().to_base64().expose_secret(),
                        ));
                    }
                }
            }
            Ok(())
        }
        AttestationType::X509 => {
            let x = a.x509.as_mut().ok_or_else(|| {
                ServiceError::invalid(&format!("{p}.x509"), "is required for type x509")
            })?;
            x509(x, &format!("{p}.x509"), owner)
        }
    }
}

fn x509(x: &mut X509Attestation, p: &str, owner: Owner) -> Result<(), ServiceError> {
    let present = [
        x.client_certificates.is_some(),
        x.signing_certificates.is_some(),
        x.ca_references.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if present != 1 {
        return Err(ServiceError::invalid(
            p,
            "exactly one of clientCertificates, signingCertificates, caReferences is required",
        ));
    }
    match owner {
        Owner::Enrollment if x.signing_certificates.is_some() => {
            return Err(ServiceError::invalid(
                &format!("{p}.signingCertificates"),
                "individual enrollments use clientCertificates",
            ));
        }
        Owner::Group if x.client_certificates.is_some() => {
            return Err(ServiceError::invalid(
                &format!("{p}.clientCertificates"),
                "enrollment groups use signingCertificates or caReferences",
            ));
        }
        _ => {}
    }
    if let Some(r) = &x.ca_references
        && r.primary.as_deref().is_none_or(str::is_empty)
    {
        return Err(ServiceError::invalid(
            &format!("{p}.caReferences.primary"),
            "is required",
        ));
    }
    for (name, certs) in [
        ("clientCertificates", &mut x.client_certificates),
        ("signingCertificates", &mut x.signing_certificates),
    ] {
        if let Some(c) = certs {
            certificates(c, &format!("{p}.{name}"))?;
        }
    }
    Ok(())
}

fn certificates(c: &mut X509Certificates, p: &str) -> Result<(), ServiceError> {
    let primary = c
        .primary
        .as_mut()
        .ok_or_else(|| ServiceError::invalid(&format!("{p}.primary"), "is required"))?;
    certificate(primary, &format!("{p}.primary"))?;
    if let Some(s) = c.secondary.as_mut() {
        certificate(s, &format!("{p}.secondary"))?;
    }
    Ok(())
}

fn certificate(c: &mut X509CertificateWithInfo, p: &str) -> Result<(), ServiceError> {
    let f = format!("{p}.certificate");
    let text = c
        .certificate
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ServiceError::invalid(&f, "is required"))?;
    let der = if text.contains("-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.trim().as_bytes())
            .map_err(|_| ServiceError::invalid(&f, "is not a PEM certificate"))?;
        pem.contents
    } else {
        B64.decode(text.trim())
            .map_err(|_| ServiceError::invalid(&f, "is neither PEM nor base64 DER"))?
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| ServiceError::invalid(&f, "does not parse as an X.509 certificate"))?;
    let ts = |t: x509_parser::time::ASN1Time| {
        chrono::DateTime::<chrono::Utc>::from_timestamp(t.timestamp(), 0)
    };
    c.info = Some(X509CertificateInfo {
        subject_name: cert.subject().to_string(),
        sha1_thumbprint: hex::encode_upper(sha1::Sha1::digest(&der)),
        sha256_thumbprint: hex::encode_upper(sha2::Sha256::digest(&der)),
        issuer_name: cert.issuer().to_string(),
        not_before_utc: ts(cert.validity().not_before),
        not_after_utc: ts(cert.validity().not_after),
        serial_number: hex::encode_upper(cert.raw_serial()),
        version: i32::try_from(cert.version().0).unwrap_or(0) + 1,
    });
    Ok(())
}

/// Checks hubs against the allocation policy and the linked hubs.
pub fn allocation(
    policy: Option<AllocationPolicy>,
    iot_hubs: Option<&[String]>,
    iot_hub_host_name: Option<&str>,
    has_custom_definition: bool,
    linked: &[LinkedHub],
    prefix: &str,
) -> Result<(), ServiceError> {
    let hubs = iot_hubs.unwrap_or(&[]);
    for (i, h) in hubs.iter().enumerate() {
        if !linked.iter().any(|l| l.host_name.eq_ignore_ascii_case(h)) {
            return Err(ServiceError::invalid(
                &field(prefix, &format!("iotHubs[{i}]")),
                format!("hub {h:?} is not linked to this service"),
            ));
        }
    }
    if let Some(h) = iot_hub_host_name
        && !linked.iter().any(|l| l.host_name.eq_ignore_ascii_case(h))
    {
        return Err(ServiceError::invalid(
            &field(prefix, "iotHubHostName"),
            format!("hub {h:?} is not linked to this service"),
        ));
    }
    match policy {
        Some(AllocationPolicy::Static) if hubs.len() != 1 => Err(ServiceError::invalid(
            &field(prefix, "iotHubs"),
            format!(
                "static allocation needs exactly one hub, got {}",
                hubs.len()
            ),
        )),
        Some(AllocationPolicy::Custom) if !has_custom_definition => Err(ServiceError::invalid(
            &field(prefix, "customAllocationDefinition"),
            "is required for custom allocation",
        )),
        _ => Ok(()),
    }
}

/// Checks the initial twin against the hub twin limits.
pub fn initial_twin(t: Option<&InitialTwin>, prefix: &str) -> Result<(), ServiceError> {
    let Some(t) = t else { return Ok(()) };
    let p = field(prefix, "initialTwin");
    if let Some(tags) = &t.tags {
        limit(
            &serde_json::Value::Object(tags.clone()),
            &format!("{p}.tags"),
            MAX_TAGS_BYTES,
        )?;
    }
    if let Some(d) = t.properties.as_ref().and_then(|p| p.desired.as_ref()) {
        limit(
            &serde_json::Value::Object(d.clone()),
            &format!("{p}.properties.desired"),
            MAX_DESIRED_BYTES,
        )?;
    }
    Ok(())
}

fn limit(v: &serde_json::Value, f: &str, max: usize) -> Result<(), ServiceError> {
    let len = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if len > max {
        return Err(ServiceError::invalid(
            f,
            format!("is {len} bytes; at most {max} are allowed"),
        ));
    }
    let d = depth(v);
    if d > MAX_TWIN_DEPTH {
        return Err(ServiceError::invalid(
            f,
            format!("is nested {d} levels deep; at most {MAX_TWIN_DEPTH} are allowed"),
        ));
    }
    Ok(())
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        serde_json::Value::Array(a) => a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn twin_depth_counts_objects() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a":{"b":{"c":1}},"d":[{"e":1}]}"#).unwrap();
        assert_eq!(depth(&v), 3);
    }

    #[test]
    fn empty_symmetric_keys_are_generated() {
        let mut a = AttestationMechanism::symmetric_key(Some(KeyText::new("")), None);
        attestation(&mut a, "", Owner::Enrollment).unwrap();
        let sk = a.symmetric_key.unwrap();
        let p = B64.decode(sk.primary_key.unwrap().expose()).unwrap();
        let s = B64.decode(sk.secondary_key.unwrap().expose()).unwrap();
        assert_eq!((p.len(), s.len()), (32, 32));
        assert_ne!(p, s);
    }
}
