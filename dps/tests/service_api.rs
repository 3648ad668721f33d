//! The service API of `dps serve`, exercised over TLS by our client and by raw requests
//! shaped like the official clients'.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use dps::client::ClientError;
use dps::wire::{
    AttestationMechanism, AttestationType, BulkMode, EnrollmentGroup, IndividualEnrollment, KeyText,
};
use dps::{EnrollmentGroupId, RegistrationId};
use support::{Service, cert_pem, sym_enrollment};

fn rid(s: &str) -> RegistrationId {
    RegistrationId::new(s).unwrap()
}

#[tokio::test]
async fn create_get_replace_with_etag_and_delete() {
    let svc = Service::start(&["--link-hub", "hub-a.example.test"]);
    let c = svc.client();
    let mut e = IndividualEnrollment::new(
        rid("Unit-0001"),
        AttestationMechanism::symmetric_key(None, None),
    );
    e.iot_hubs = Some(vec!["hub-a.example.test".into()]);
    e.allocation_policy = Some(dps::wire::AllocationPolicy::Static);
    let created = c.create_or_update_enrollment(&e, None).await.unwrap();
    // Service-filled fields: keys, etag, timestamps.
    let keys = created.attestation.symmetric_key.clone().unwrap();
    assert!(!keys.primary_key.unwrap().is_empty());
    let etag1 = created.etag.clone().unwrap();
    assert!(created.created_date_time_utc.is_some());

    // Case-insensitive ids; GET hides keys, the attestation call shows them.
    let got = c.get_enrollment(&rid("unit-0001")).await.unwrap();
    assert_eq!(got.registration_id.as_str(), "Unit-0001");
    assert_eq!(got.etag.as_deref(), Some(etag1.as_str()));
    assert!(got.attestation.symmetric_key.unwrap().primary_key.is_none());
    let att = c.enrollment_attestation(&rid("unit-0001")).await.unwrap();
    assert_eq!(
        att.symmetric_key.unwrap().primary_key,
        created
            .attestation
            .symmetric_key
            .clone()
            .unwrap()
            .primary_key
    );

    // Replace with the right etag: new etag, created time kept.
    let mut upd = created.clone();
    upd.provisioning_status = Some(dps::wire::ProvisioningStatus::Disabled);
    let updated = c
        .create_or_update_enrollment(&upd, Some(&etag1))
        .await
        .unwrap();
    let etag2 = updated.etag.clone().unwrap();
    assert_ne!(etag1, etag2);
    assert_eq!(updated.created_date_time_utc, created.created_date_time_utc);
    assert!(updated.last_updated_date_time_utc > created.last_updated_date_time_utc);

    // Stale etag: 412, not retryable, nothing changed.
    let err = c
        .create_or_update_enrollment(&e, Some(&etag1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(412));
    assert!(!err.is_retryable());
    let still = c.get_enrollment(&rid("unit-0001")).await.unwrap();
    assert_eq!(still.etag.as_deref(), Some(etag2.as_str()));
    assert_eq!(
        still.provisioning_status,
        Some(dps::wire::ProvisioningStatus::Disabled)
    );
    // `*` matches anything.
    c.create_or_update_enrollment(&e, Some("*")).await.unwrap();

    // Delete with a stale etag fails; without one it works; then 404.
    let err = c
        .delete_enrollment(&rid("unit-0001"), Some(&etag1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(412));
    c.delete_enrollment(&rid("unit-0001"), None).await.unwrap();
    let err = c.get_enrollment(&rid("unit-0001")).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Service { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn x509_info_and_tpm_are_accepted_and_certificates_not_echoed() {
    let svc = Service::start(&[]);
    let c = svc.client();
    let pem = cert_pem("x509-dev-1", false);
    let e = IndividualEnrollment::new(rid("x509-dev-1"), AttestationMechanism::x509_client(&pem));
    c.create_or_update_enrollment(&e, None).await.unwrap();
    let got = c.get_enrollment(&rid("x509-dev-1")).await.unwrap();
    let primary = got
        .attestation
        .x509
        .unwrap()
        .client_certificates
        .unwrap()
        .primary
        .unwrap();
    assert!(primary.certificate.is_none());
    let info = primary.info.unwrap();
    assert_eq!(info.subject_name, "CN=x509-dev-1");
    assert_eq!(info.sha256_thumbprint.len(), 64);
    assert_eq!(info.version, 3);
    assert!(info.not_after_utc > info.not_before_utc);

    let t = IndividualEnrollment::new(
        rid("tpm-dev-1"),
        AttestationMechanism::tpm("AToAAQALAAMAsgAg"),
    );
    let created = c.create_or_update_enrollment(&t, None).await.unwrap();
    assert_eq!(created.attestation.kind, AttestationType::Tpm);

    // Groups: x509 signing certificate and symmetric key.
    let g = EnrollmentGroup::new(
        EnrollmentGroupId::new("grp-x509").unwrap(),
        AttestationMechanism::x509_signing(cert_pem("Line CA", true)),
    );
    c.create_or_update_group(&g, None).await.unwrap();
    let gk = "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=";
    let g2 = EnrollmentGroup::new(
        EnrollmentGroupId::new("grp-sym").unwrap(),
        AttestationMechanism::symmetric_key(Some(KeyText::new(gk)), None),
    );
    c.create_or_update_group(&g2, None).await.unwrap();
    let att = c
        .group_attestation(&EnrollmentGroupId::new("GRP-SYM").unwrap())
        .await
        .unwrap();
    assert_eq!(att.symmetric_key.unwrap().primary_key.unwrap().expose(), gk);
    assert_eq!(c.list_groups(1).await.unwrap().len(), 2);
}

#[tokio::test]
async fn bulk_chunks_and_reports_per_item() {
    let svc = Service::start(&[]);
    let c = svc.client();
    let items: Vec<_> = (0..23)
        .map(|i| {
            IndividualEnrollment::new(
                rid(&format!("bulk-{i:03}")),
                AttestationMechanism::symmetric_key(None, None),
            )
        })
        .collect();
    let r = c.bulk_enrollments(BulkMode::Create, &items).await.unwrap();
    assert_eq!(r.len(), 23);
    assert!(r.iter().all(|i| i.outcome.is_ok()));
    // Creating again: every item conflicts, reported per item.
    let again = c
        .bulk_enrollments(BulkMode::Create, &items[..3])
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|i| i.outcome.as_ref().unwrap_err().code == Some(409_001))
    );
    // Delete two, one of them twice in separate calls: the second reports 404.
    let d = c
        .bulk_enrollments(BulkMode::Delete, &items[..2])
        .await
        .unwrap();
    assert!(d.iter().all(|i| i.outcome.is_ok()));
    let d = c
        .bulk_enrollments(BulkMode::Delete, &items[..1])
        .await
        .unwrap();
    assert_eq!(d[0].outcome.as_ref().unwrap_err().code, Some(404_001));
    assert_eq!(c.list_enrollments(10).await.unwrap().len(), 21);
}

#[tokio::test]
async fn query_pages_carry_continuation_only_while_more_follow() {
    let svc = Service::start(&[]);
    let c = svc.client();
    let items: Vec<_> = (0..25)
        .map(|i| {
            IndividualEnrollment::new(
                rid(&format!("q-{i:02}")),
                AttestationMechanism::tpm("AAECAwQ="),
            )
        })
        .collect();
    c.bulk_enrollments(BulkMode::Create, &items).await.unwrap();
    let http = svc.http();
    let mut token: Option<String> = None;
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let mut req = http
            .post(svc.url("/enrollments/query?api-version=2021-10-01"))
            .header("Authorization", svc.token())
            .header("x-ms-max-item-count", "10")
            .header("Content-Type", "application/json; charset=utf-8")
            .body(r#"{"query":"*"}"#);
        if let Some(t) = &token {
            req = req.header("x-ms-continuation", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ms-item-type"], "Enrollment");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("application/json")
        );
        token = resp
            .headers()
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<serde_json::Value> = resp.json().await.unwrap();
        sizes.push(page.len());
        seen.extend(
            page.iter()
                .map(|e| e["registrationId"].as_str().unwrap().to_owned()),
        );
        if token.is_none() {
            break;
        }
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    seen.dedup();
    assert_eq!(seen.len(), 25);
}

#[tokio::test]
async fn node_style_paths_trailing_slash_and_case() {
    let svc = Service::start(&[]);
    let http = svc.http();
    // Bulk on `/enrollments/` with a trailing slash, as the Node SDK sends it.
    let body = serde_json::json!({"mode": "create", "enrollments": [sym_enrollment("n-1"), sym_enrollment("n-2")]});
    let r = http
        .post(svc.url("/enrollments/?api-version=2021-10-01"))
        .header("Authorization", svc.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["isSuccessful"], true);
    // Group under `enrollmentGroups`, attestation under lower-case `enrollmentgroups`.
    let g =
        serde_json::json!({"enrollmentGroupId": "grp-1", "attestation": {"type": "symmetricKey"}});
    let r = http
        .put(svc.url("/enrollmentGroups/grp-1?api-version=2019-03-31"))
        .header("Authorization", svc.token())
        .json(&g)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(svc.url("/enrollmentgroups/grp-1/attestationmechanism?api-version=2018-04-01"))
        .header("Authorization", svc.token())
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: serde_json::Value = r.json().await.unwrap();
    assert_eq!(a["type"], "symmetricKey");
    assert!(a["symmetricKey"]["primaryKey"].as_str().unwrap().len() >= 40);
    // Delete answers 204 and still says application/json.
    let r = http
        .delete(svc.url("/ENROLLMENTS/N-1?api-version=2021-06-01"))
        .header("Authorization", svc.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("application/json")
    );
}

#[tokio::test]
async fn registration_state_of_unknown_id_is_404_with_dps_body() {
    let svc = Service::start(&[]);
    let c = svc.client();
    let err = c.get_registration_state(&rid("nobody")).await.unwrap_err();
    match err {
        ClientError::Service {
            status,
            code,
            tracking_id,
            ..
        } => {
            assert_eq!(status, 404);
            assert_eq!(code, Some(404_001));
            assert!(!tracking_id.unwrap().is_empty());
        }
        other => panic!("{other:?}"),
    }
    let page = c
        .query_group_registrations(&EnrollmentGroupId::new("grp").unwrap(), Some(10), None)
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.continuation.is_none());
}

#[tokio::test]
async fn state_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let svc = Service::start_in(&dir, &["--link-hub", "hub-a.example.test=5"]);
    let scope = std::fs::read_to_string(dir.join("id-scope")).unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let c = svc.client();
    let created = c
        .create_or_update_enrollment(
            &IndividualEnrollment::new(
                rid("keep-me"),
                AttestationMechanism::symmetric_key(None, None),
            ),
            None,
        )
        .await
        .unwrap();
    svc.stop();
    let svc = Service::start_in(&dir, &[]);
    assert_eq!(
        std::fs::read_to_string(dir.join("id-scope")).unwrap(),
        scope
    );
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
    let c = svc.client();
    let att = c.enrollment_attestation(&rid("keep-me")).await.unwrap();
    assert_eq!(att.symmetric_key, created.attestation.symmetric_key);
    // The hub linked at the first start is still linked.
    let (ok, out, _) = support::run_dps(&["linked-hub", "list", "--data", dir.to_str().unwrap()]);
    assert!(ok);
    assert!(out.contains("hub-a.example.test\tweight=5"), "{out}");
    // Keys are sealed: the database file does not hold them in clear.
    let db = std::fs::read(dir.join("dps.sqlite")).unwrap();
    let wal = std::fs::read(dir.join("dps.sqlite-wal")).unwrap_or_default();
    let key = att.symmetric_key.unwrap().primary_key.unwrap();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(key.expose().len())
                .any(|w| w == key.expose().as_bytes())
        );
    }
}

#[tokio::test]
async fn offers_tls_1_2_and_1_3() {
    use reqwest::tls::{TlsInfo, Version};
    let svc = Service::start(&[]);
    let pem = std::fs::read(svc.dir.join("ca.pem")).unwrap();
    for v in [Version::TLS_1_2, Version::TLS_1_3] {
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .tls_version_min(v)
            .tls_version_max(v)
            .tls_info(true)
            .build()
            .unwrap();
        let r = http
            .get(svc.url("/registrations/nobody?api-version=2021-10-01"))
            .header("Authorization", svc.token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let info = r.extensions().get::<TlsInfo>().unwrap();
        assert_eq!(info.version(), Some(v));
    }
    // The certificate also names 127.0.0.1.
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap();
    let r = http
        .get(format!(
            "https://127.0.0.1:{}/registrations/nobody?api-version=2021-10-01",
            svc.port
        ))
        .header("Authorization", svc.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
