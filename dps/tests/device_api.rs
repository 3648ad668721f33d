//! The device registration API of `dps serve` over TLS: units with symmetric keys (individual
//! and group) and X.509 certificates (individual and group chains) register and are assigned a
//! hub; refusals say why and leave no record; disabled enrollments, re-registration and
//! allocation failures give the records DPS gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use dps::client::ClientError;
use dps::client::device::{DeviceClient, DeviceCredential, DeviceOptions};
use dps::sas::{SharedAccessKey, derive_device_key, generate_token};
use dps::wire::{
    AllocationPolicy, AttestationMechanism, EnrollmentGroup, IndividualEnrollment,
    ProvisioningStatus, RegistrationStatus, RegistrationSubstatus, ReprovisionPolicy,
};
use rcgen::KeyPair;
use secrecy::{ExposeSecret as _, SecretBox};
use support::{Service, ca, leaf, new_key, rid, sym};

const HUB_A: &str = "hub-a.example.test";
const HUB_B: &str = "hub-b.example.test";

fn options(svc: &Service) -> DeviceOptions {
    DeviceOptions {
        extra_ca_file: Some(svc.dir.join("ca.pem")),
        max_wait: Duration::from_secs(30),
        ..DeviceOptions::default()
    }
}

fn device(svc: &Service, credential: DeviceCredential) -> DeviceClient {
    DeviceClient::new(
        &format!("localhost:{}", svc.port),
        &svc.id_scope(),
        credential,
        options(svc),
    )
    .unwrap()
}

fn key(b64: &str) -> SharedAccessKey {
    SharedAccessKey::from_base64(b64).unwrap()
}

/// The service's answer to a refused call: (HTTP status, message).
fn refused(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Service {
            status, message, ..
        } => (status, message),
        other => panic!("expected a service error, got {other:?}"),
    }
}

fn x509(chain: &[&str], key_pem: &str) -> DeviceCredential {
    let mut pem = chain.concat();
    pem.push_str(key_pem);
    DeviceCredential::X509Pem(SecretBox::new(Box::new(pem.into_bytes())))
}

async fn no_record(svc: &Service, id: &str) {
    let e = svc
        .client()
        .get_registration_state(&rid(id))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "a record exists for {id}: {e:?}");
}

#[tokio::test]
async fn symmetric_key_units_register_individually_and_through_their_group() {
    let svc = Service::start(&["--link-hub", HUB_A, "--link-hub", HUB_B]);
    let c = svc.client();
    let (primary, secondary) = (new_key(), new_key());
    let mut e = IndividualEnrollment::new(rid("Unit-Sym-1"), sym(&primary, &secondary));
    e.device_id = Some(dps::DeviceId::new("device-sym-1").unwrap());
    e.allocation_policy = Some(AllocationPolicy::Static);
    e.iot_hubs = Some(vec![HUB_B.into()]);
    c.create_or_update_enrollment(&e, None).await.unwrap();
    let group_key = new_key();
    let g = EnrollmentGroup::new(
        dps::EnrollmentGroupId::new("line-7").unwrap(),
        sym(&group_key, &new_key()),
    );
    c.create_or_update_group(&g, None).await.unwrap();

    // The individual unit, with either of its keys; its id in another case.
    for k in [&primary, &secondary] {
        let done = device(&svc, DeviceCredential::SymmetricKey(key(k)))
            .register(&rid("unit-sym-1"), None)
            .await
            .unwrap();
        assert_eq!(done.status, RegistrationStatus::Assigned);
        let st = done.registration_state.unwrap();
        assert_eq!(st.assigned_hub.as_deref(), Some(HUB_B));
        assert_eq!(st.device_id.as_deref(), Some("device-sym-1"));
        assert_eq!(st.substatus, Some(RegistrationSubstatus::InitialAssignment));
    }

    // A group unit with its derived key: device ID = registration ID, a hashed hub.
    let derived = derive_device_key(&key(&group_key), "grp-unit-9");
    let done = device(&svc, DeviceCredential::SymmetricKey(derived))
        .register(&rid("grp-unit-9"), Some(serde_json::json!({"fw": "1.2"})))
        .await
        .unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    let st = done.registration_state.unwrap();
    assert_eq!(st.device_id.as_deref(), Some("grp-unit-9"));
    assert!(matches!(st.assigned_hub.as_deref(), Some(HUB_A | HUB_B)));

    // The service API sees both records; the group's query lists its unit.
    let rec = c.get_registration_state(&rid("UNIT-SYM-1")).await.unwrap();
    assert_eq!(rec.status, Some(RegistrationStatus::Assigned));
    assert_eq!(rec.assigned_hub.as_deref(), Some(HUB_B));
    let page = c
        .query_group_registrations(&dps::EnrollmentGroupId::new("line-7").unwrap(), None, None)
        .await
        .unwrap();
    let ids: Vec<_> = page
        .items
        .iter()
        .map(|r| r.registration_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["grp-unit-9"]);
}

#[tokio::test]
async fn x509_units_register_by_their_certificate_or_their_groups_chain() {
    let svc = Service::start(&["--link-hub", HUB_A]);
    let c = svc.client();
    // An individual unit with a self-signed certificate.
    let (cert, key_pem) = leaf("x509-unit-1", None);
    c.create_or_update_enrollment(
        &IndividualEnrollment::new(rid("x509-unit-1"), AttestationMechanism::x509_client(&cert)),
        None,
    )
    .await
    .unwrap();
    let done = device(&svc, x509(&[&cert], &key_pem))
        .register(&rid("x509-unit-1"), None)
        .await
        .unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    assert_eq!(
        done.registration_state.unwrap().assigned_hub.as_deref(),
        Some(HUB_A)
    );

    // Group units: root -> intermediate -> leaf; groups on the root and on the intermediate.
    // The unit presents its leaf and the intermediate; the nearest group (the intermediate's)
    // takes it.
    let (root_pem, root) = ca("Plant Root", None);
    let (inter_pem, inter) = ca("Line 7 Intermediate", Some(&root));
    for (id, pem) in [("by-root", &root_pem), ("by-intermediate", &inter_pem)] {
        c.create_or_update_group(
            &EnrollmentGroup::new(
                dps::EnrollmentGroupId::new(id).unwrap(),
                AttestationMechanism::x509_signing(pem.as_str()),
            ),
            None,
        )
        .await
        .unwrap();
    }
    let (cert, key_pem) = leaf("line7-0042", Some(&inter));
    let done = device(&svc, x509(&[&cert, &inter_pem], &key_pem))
        .register(&rid("line7-0042"), None)
        .await
        .unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    let page = c
        .query_group_registrations(
            &dps::EnrollmentGroupId::new("by-intermediate").unwrap(),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1, "{:?}", page.items);
}

#[tokio::test]
async fn refused_units_are_told_why_and_leave_no_record() {
    let svc = Service::start(&["--link-hub", HUB_A]);
    let c = svc.client();
    let primary = new_key();
    c.create_or_update_enrollment(
        &IndividualEnrollment::new(rid("unit-1"), sym(&primary, &new_key())),
        None,
    )
    .await
    .unwrap();
    let (group_ca_pem, group_ca) = ca("Group CA", None);
    c.create_or_update_group(
        &EnrollmentGroup::new(
            dps::EnrollmentGroupId::new("x509-group").unwrap(),
            AttestationMechanism::x509_signing(group_ca_pem.as_str()),
        ),
        None,
    )
    .await
    .unwrap();

    // A wrong key.
    let (status, msg) = refused(
        device(&svc, DeviceCredential::SymmetricKey(key(&new_key())))
            .register(&rid("unit-1"), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 401);
    assert!(
        msg.contains("matches no key of the individual enrollment unit-1"),
        "{msg}"
    );
    assert!(!msg.contains(&primary));

    // An expired token, and a token for another unit, sent by hand.
    let http = svc.http();
    let url = svc.url(&format!(
        "/{}/registrations/unit-1/register?api-version=2019-03-31",
        svc.id_scope()
    ));
    let now = chrono::Utc::now().timestamp();
    for (resource, expiry, want) in [
        (
            format!("{}/registrations/unit-1", svc.id_scope()),
            u64::try_from(now - 60).unwrap(),
            "expired",
        ),
        (
            format!("{}/registrations/unit-2", svc.id_scope()),
            u64::try_from(now + 600).unwrap(),
            "the SAS token is for",
        ),
    ] {
        let token = generate_token(&resource, &key(&primary), Some("registration"), expiry);
        let r = http
            .put(&url)
            .header("Authorization", token.expose_secret())
            .header("Content-Type", "application/json")
            .body(r#"{"registrationId":"unit-1"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body = r.text().await.unwrap();
        assert!(body.contains(want), "{body}");
    }

    // No credential at all; a TPM unit without its SRK; another ID scope.
    let r = http
        .put(&url)
        .body(r#"{"registrationId":"unit-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("neither a client certificate nor a SAS token")
    );
    let r = http
        .put(&url)
        .body(r#"{"registrationId":"unit-1","tpm":{"endorsementKey":"AAA="}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("tpm.storageRootKey: is required")
    );
    let r = http
        .put(svc.url("/0ne00000000/registrations/unit-1/register?api-version=2019-03-31"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("is not this service's"));

    // X.509: a CN that is not the registration ID; a CA no group trusts; a symmetric-key
    // enrollment presented with a certificate.
    let (cert, k) = leaf("someone-else", Some(&group_ca));
    let (status, msg) = refused(
        device(&svc, x509(&[&cert], &k))
            .register(&rid("unit-7"), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 401);
    assert!(
        msg.contains("CN \"someone-else\" is not the registration ID"),
        "{msg}"
    );
    let (_, stranger) = ca("Stranger CA", None);
    let (cert, k) = leaf("unit-8", Some(&stranger));
    let (_, msg) = refused(
        device(&svc, x509(&[&cert], &k))
            .register(&rid("unit-8"), None)
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("no enrollment group's signing certificate"),
        "{msg}"
    );
    let (cert, k) = leaf("unit-1", Some(&group_ca));
    let (_, msg) = refused(
        device(&svc, x509(&[&cert], &k))
            .register(&rid("unit-1"), None)
            .await
            .unwrap_err(),
    );
    assert!(
        msg.contains("does not hold this client certificate"),
        "{msg}"
    );

    for id in ["unit-1", "unit-7", "unit-8"] {
        no_record(&svc, id).await;
    }
}

/// A client that presents a unit's certificate with a key that is not the certificate's:
/// what someone holding only a copy of the certificate could do.
#[derive(Debug)]
struct StolenCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for StolenCertificate {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_copied_certificate_without_its_key_does_not_get_through_the_handshake() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let svc = Service::start(&["--link-hub", HUB_A]);
    let (cert, real_key) = leaf("victim-1", None);
    svc.client()
        .create_or_update_enrollment(
            &IndividualEnrollment::new(rid("victim-1"), AttestationMechanism::x509_client(&cert)),
            None,
        )
        .await
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(svc.dir.join("ca.pem")).unwrap())
        .unwrap();
    let url = svc.url(&format!(
        "/{}/registrations/victim-1/register?api-version=2019-03-31",
        svc.id_scope()
    ));
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    // The same client with the certificate's own key gets through (the control); with
    // another key it does not, over TLS 1.2 and 1.3.
    for (key_pem, version, passes) in [
        (&real_key, &rustls::version::TLS13, true),
        (&other_key, &rustls::version::TLS12, false),
        (&other_key, &rustls::version::TLS13, false),
    ] {
        let signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap())
            .unwrap();
        let certified = rustls::sign::CertifiedKey::new(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            signer,
        );
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(Arc::new(StolenCertificate(Arc::new(certified))));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let r = http
            .put(&url)
            .body(r#"{"registrationId":"victim-1"}"#)
            .send()
            .await;
        if passes {
            assert_eq!(r.unwrap().status(), 202);
            svc.client()
                .delete_registration_state(&rid("victim-1"), None)
                .await
                .unwrap();
        } else {
            assert!(r.is_err(), "{version:?}: the handshake passed: {r:?}");
        }
    }
    no_record(&svc, "victim-1").await;
}

#[tokio::test]
async fn disabled_enrollments_reprovisioning_and_allocation_failures_give_their_records() {
    let svc = Service::start(&["--link-hub", HUB_A, "--link-hub", HUB_B]);
    let c = svc.client();
    let group_key = new_key();
    let mut g = EnrollmentGroup::new(
        dps::EnrollmentGroupId::new("fleet").unwrap(),
        sym(&group_key, &new_key()),
    );
    g.allocation_policy = Some(AllocationPolicy::Static);
    g.iot_hubs = Some(vec![HUB_A.into()]);
    let g = c.create_or_update_group(&g, None).await.unwrap();
    let unit = |id: &str| {
        device(
            &svc,
            DeviceCredential::SymmetricKey(derive_device_key(&key(&group_key), id)),
        )
    };

    // Assigned to hub A; the group moves to hub B: re-registration migrates the unit.
    let first = unit("fleet-1")
        .register(&rid("fleet-1"), None)
        .await
        .unwrap();
    let first = first.registration_state.unwrap();
    assert_eq!(first.assigned_hub.as_deref(), Some(HUB_A));
    let mut moved = g.clone();
    moved.iot_hubs = Some(vec![HUB_B.into()]);
    let moved = c
        .create_or_update_group(&moved, g.etag.as_deref())
        .await
        .unwrap();
    let again = unit("fleet-1")
        .register(&rid("fleet-1"), None)
        .await
        .unwrap();
    let again = again.registration_state.unwrap();
    assert_eq!(again.assigned_hub.as_deref(), Some(HUB_B));
    assert_eq!(
        again.substatus,
        Some(RegistrationSubstatus::DeviceDataMigrated)
    );
    assert_eq!(again.created_date_time_utc, first.created_date_time_utc);

    // Reprovisioning "never": the unit keeps hub B although the group names hub A again.
    let mut stay = moved.clone();
    stay.iot_hubs = Some(vec![HUB_A.into()]);
    stay.reprovision_policy = Some(ReprovisionPolicy {
        update_hub_assignment: false,
        migrate_device_data: false,
    });
    let stay = c
        .create_or_update_group(&stay, moved.etag.as_deref())
        .await
        .unwrap();
    let kept = unit("fleet-1")
        .register(&rid("fleet-1"), None)
        .await
        .unwrap();
    assert_eq!(
        kept.registration_state.unwrap().assigned_hub.as_deref(),
        Some(HUB_B)
    );

    // A disabled individual enrollment blocks one unit of the group; the others register.
    let unit2_key = derive_device_key(&key(&group_key), "fleet-2");
    let mut block = IndividualEnrollment::new(
        rid("fleet-2"),
        sym(unit2_key.to_base64().expose_secret(), &new_key()),
    );
    block.provisioning_status = Some(ProvisioningStatus::Disabled);
    c.create_or_update_enrollment(&block, None).await.unwrap();
    let blocked = unit("fleet-2")
        .register(&rid("fleet-2"), None)
        .await
        .unwrap();
    assert_eq!(blocked.status, RegistrationStatus::Disabled);
    let st = blocked.registration_state.unwrap();
    assert!(st.assigned_hub.is_none());
    assert!(
        st.error_message
            .unwrap()
            .contains("individual enrollment fleet-2 is disabled")
    );
    let ok = unit("fleet-3")
        .register(&rid("fleet-3"), None)
        .await
        .unwrap();
    assert_eq!(ok.status, RegistrationStatus::Assigned);

    // The whole group disabled: its units are refused, keeping the hub they had.
    let mut off = stay.clone();
    off.provisioning_status = Some(ProvisioningStatus::Disabled);
    c.create_or_update_group(&off, stay.etag.as_deref())
        .await
        .unwrap();
    let refused = unit("fleet-1")
        .register(&rid("fleet-1"), None)
        .await
        .unwrap();
    assert_eq!(refused.status, RegistrationStatus::Disabled);
    let rec = c.get_registration_state(&rid("fleet-1")).await.unwrap();
    assert_eq!(rec.status, Some(RegistrationStatus::Disabled));
    assert_eq!(rec.assigned_hub.as_deref(), Some(HUB_B));

    // An older operation is gone once the unit registered again.
    let http = svc.http();
    let poll = svc.url(&format!(
        "/{}/registrations/fleet-3/operations/{}?api-version=2019-03-31",
        svc.id_scope(),
        "0123456789abcdef0123456789abcdef"
    ));
    let expiry = u64::try_from(chrono::Utc::now().timestamp() + 600).unwrap();
    let token = generate_token(
        &format!("{}/registrations/fleet-3", svc.id_scope()),
        &derive_device_key(&key(&group_key), "fleet-3"),
        None,
        expiry,
    );
    let r = http
        .get(&poll)
        .header("Authorization", token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_service_with_no_linked_hub_fails_the_registration_and_says_why() {
    let svc = Service::start(&[]);
    let primary = new_key();
    svc.client()
        .create_or_update_enrollment(
            &IndividualEnrollment::new(rid("lonely-1"), sym(&primary, &new_key())),
            None,
        )
        .await
        .unwrap();
    let done = device(&svc, DeviceCredential::SymmetricKey(key(&primary)))
        .register(&rid("lonely-1"), None)
        .await
        .unwrap();
    assert_eq!(done.status, RegistrationStatus::Failed);
    let st = done.registration_state.unwrap();
    assert!(st.error_message.unwrap().contains("no IoT hub is linked"));
    assert!(st.error_code.is_some());
}

/// An RSA-2048 TPM2B_PUBLIC shaped like the SDK's EK and SRK templates (AES-128-CFB), around
/// a random modulus: enough for the service to build a challenge no one here can open.
fn tpm_public(seed: u8) -> Vec<u8> {
    let mut modulus = [0u8; 256];
    for (i, b) in modulus.iter_mut().enumerate() {
        *b = u8::try_from((i * 31 + usize::from(seed) * 7) % 251).unwrap() | 1;
    }
    modulus[0] |= 0x80;
    let mut a = Vec::new();
    a.extend_from_slice(&0x0001u16.to_be_bytes());
    a.extend_from_slice(&0x000Bu16.to_be_bytes());
    a.extend_from_slice(&0x0003_0472u32.to_be_bytes());
    a.extend_from_slice(&0u16.to_be_bytes());
    a.extend_from_slice(&0x0006u16.to_be_bytes());
    a.extend_from_slice(&128u16.to_be_bytes());
    a.extend_from_slice(&0x0043u16.to_be_bytes());
    a.extend_from_slice(&0x0010u16.to_be_bytes());
    a.extend_from_slice(&2048u16.to_be_bytes());
    a.extend_from_slice(&0u32.to_be_bytes());
    a.extend_from_slice(&256u16.to_be_bytes());
    a.extend_from_slice(&modulus);
    let mut out = u16::try_from(a.len()).unwrap().to_be_bytes().to_vec();
    out.extend(a);
    out
}

#[tokio::test]
async fn tpm_units_are_challenged_and_only_the_tpm_holding_the_key_gets_through() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    let svc = Service::start(&["--link-hub", HUB_A]);
    let ek = tpm_public(1);
    let srk = tpm_public(2);
    svc.client()
        .create_or_update_enrollment(
            &IndividualEnrollment::new(
                rid("tpm-unit-1"),
                AttestationMechanism::tpm(B64.encode(&ek)),
            ),
            None,
        )
        .await
        .unwrap();
    let http = svc.http();
    let url = svc.url(&format!(
        "/{}/registrations/tpm-unit-1/register?api-version=2019-03-31",
        svc.id_scope()
    ));
    let put = |ek: &[u8], token: Option<String>| {
        let mut r = http.put(&url).body(
            serde_json::json!({
                "registrationId": "tpm-unit-1",
                "tpm": {"endorsementKey": B64.encode(ek), "storageRootKey": B64.encode(&srk)},
            })
            .to_string(),
        );
        if let Some(t) = token {
            r = r.header("Authorization", t);
        }
        r.send()
    };
    // A signed call before any challenge: told to be challenged first.
    let expiry = u64::try_from(chrono::Utc::now().timestamp() + 600).unwrap();
    let resource = format!("{}/registrations/tpm-unit-1", svc.id_scope());
    let guess = generate_token(&resource, &key(&new_key()), Some("registration"), expiry)
        .expose_secret()
        .to_owned();
    let r = put(&ek, Some(guess.clone())).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no TPM challenge is pending")
    );
    // The enrolled EK gets the challenge: 401 with a 766-byte authenticationKey.
    let r = put(&ek, None).await.unwrap();
    assert_eq!(r.status(), 401);
    let c: serde_json::Value = r.json().await.unwrap();
    assert_eq!(c["keyName"], "registration");
    let blob = B64
        .decode(c["authenticationKey"].as_str().unwrap())
        .unwrap();
    assert_eq!(blob.len(), 766);
    assert!(dps::tpm::split_blob(&blob).is_ok());
    // Without the TPM, the key in it is out of reach: a token signed with anything else is
    // refused.
    let r = put(&ek, Some(guess)).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("matches no key"));
    // Another TPM's EK gets no challenge.
    let r = put(&tpm_public(3), None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("the endorsement key sent is not the one enrolled for tpm-unit-1")
    );
    no_record(&svc, "tpm-unit-1").await;
}

#[tokio::test]
async fn malformed_calls_are_refused_with_a_reason_and_a_throttled_unit_waits_and_registers() {
    // A service answering its first call 429 with Retry-After 1 s, as a busy DPS does: the
    // unit waits that long and registers.
    let (svc, primary) = Service::with_enrollment_then(
        "busy-1",
        &[
            "--link-hub",
            HUB_A,
            "--throttle-next",
            "1",
            "--throttle-retry-after",
            "1",
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let done = device(&svc, DeviceCredential::SymmetricKey(key(&primary)))
        .register(&rid("busy-1"), None)
        .await
        .unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned);
    // It waited out the Retry-After (and the poll's), not less.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let http = svc.http();
    let put = |id: &str, body: &'static str| {
        http.put(svc.url(&format!(
            "/{}/registrations/{id}/register?api-version=2019-03-31",
            svc.id_scope()
        )))
        .body(body)
        .send()
    };
    let r = put("busy-1", "{not json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("the body is not a registration")
    );
    let r = put("bad%20id!", "{}").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("registrationId"));
    // Nothing was changed by the refused calls: the record is the one registration made.
    let rec = svc
        .client()
        .get_registration_state(&rid("busy-1"))
        .await
        .unwrap();
    assert_eq!(
        rec.etag.as_deref(),
        done.registration_state.unwrap().etag.as_deref()
    );
}
