//! Every bad input of the issue: each gets a DPS-style error and writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Service, run_dps, sym_enrollment, token_for};

const V: &str = "api-version=2021-10-01";

/// Checks the DPS error shape and returns the message.
async fn dps_error(resp: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status);
    let h = resp.headers().clone();
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .contains("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    let code = body["errorCode"].as_i64().unwrap();
    assert_eq!(code / 1000, i64::from(status.as_u16()), "{body}");
    assert_eq!(h["x-ms-error-code"].to_str().unwrap(), code.to_string());
    assert!(!body["trackingId"].as_str().unwrap().is_empty());
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestampUtc"].as_str().unwrap()).is_ok());
    body["message"].as_str().unwrap().to_owned()
}

/// Every enrollment id in the service, via the owner policy.
async fn ids(svc: &Service) -> Vec<String> {
    let mut v: Vec<String> = svc
        .client()
        .list_enrollments(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.registration_id.to_string())
        .collect();
    v.sort();
    v
}

async fn send(
    svc: &Service,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Vec<u8>>,
) -> reqwest::Response {
    let mut r = svc
        .http()
        .request(method, svc.url(&format!("{path}?{V}")))
        .header("Authorization", auth)
        .header("Content-Type", "application/json; charset=utf-8");
    if let Some(b) = body {
        r = r.body(b);
    }
    r.send().await.unwrap()
}

fn body(v: &Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn sas_failures_are_401_and_write_nothing() {
    let svc = Service::start(&[]);
    let cs = svc.connection_string();
    let b = body(&sym_enrollment("sas-1"));
    // Wrong key.
    let wrong: dps::sas::ConnectionString = format!(
        "HostName=localhost:{};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        svc.port
    )
    .parse()
    .unwrap();
    let m = dps_error(
        send(
            &svc,
            Method::PUT,
            "/enrollments/sas-1",
            &token_for(&wrong, 600),
            b.clone(),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(m.contains("signature"), "{m}");
    // Expired (right key).
    let m = dps_error(
        send(
            &svc,
            Method::PUT,
            "/enrollments/sas-1",
            &token_for(&cs, -10),
            b.clone(),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(m.contains("expired"), "{m}");
    // Missing and malformed.
    dps_error(
        send(&svc, Method::PUT, "/enrollments/sas-1", "", b.clone()).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    dps_error(
        send(
            &svc,
            Method::PUT,
            "/enrollments/sas-1",
            "SharedAccessSignature sr=x",
            b.clone(),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // A token for another host.
    let other = dps::sas::ConnectionString::new("evil.example:1", cs.key_name(), cs.key().clone());
    dps_error(
        send(
            &svc,
            Method::PUT,
            "/enrollments/sas-1",
            &token_for(&other, 600),
            b,
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(ids(&svc).await.is_empty());
}

#[tokio::test]
async fn wrong_policy_rights_are_refused_per_route() {
    let svc = Service::start(&[]);
    let data = svc.dir.to_str().unwrap().to_owned();
    let (ok, _, err) = run_dps(&[
        "policy",
        "create",
        "--data",
        &data,
        "reader",
        "--rights",
        "EnrollmentRead",
    ]);
    assert!(ok, "{err}");
    let reader: dps::sas::ConnectionString =
        std::fs::read_to_string(svc.dir.join("policies/reader.connection-string"))
            .unwrap()
            .parse()
            .unwrap();
    let t = token_for(&reader, 600);
    let m = dps_error(
        send(
            &svc,
            Method::PUT,
            "/enrollments/r-1",
            &t,
            body(&sym_enrollment("r-1")),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(m.contains("EnrollmentWrite"), "{m}");
    // Reading enrollments is allowed; reading registrations is not.
    let r = send(
        &svc,
        Method::POST,
        "/enrollments/query",
        &t,
        body(&json!({"query": "*"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let m = dps_error(
        send(&svc, Method::GET, "/registrations/r-1", &t, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(m.contains("RegistrationStatusRead"), "{m}");
    assert!(ids(&svc).await.is_empty());
}

#[tokio::test]
async fn malformed_bodies_and_fields_name_the_problem() {
    let svc = Service::start(&[
        "--link-hub",
        "hub-a.example.test",
        "--link-hub",
        "hub-b.example.test",
    ]);
    let t = svc.token();
    let put = |id: &str, v: Vec<u8>| {
        let (svc, t, id) = (&svc, t.clone(), id.to_owned());
        async move { send(svc, Method::PUT, &format!("/enrollments/{id}"), &t, Some(v)).await }
    };
    // Malformed JSON.
    let m = dps_error(
        put("m-1", b"{\"registrationId\": ".to_vec()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.contains("malformed JSON"), "{m}");
    // Unknown attestation type.
    let m = dps_error(
        put(
            "m-1",
            body(&json!({"registrationId": "m-1", "attestation": {"type": "psk"}})).unwrap(),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.starts_with("attestation.type:"), "{m}");
    // Illegal characters in the registration id (body and path).
    let m = dps_error(
        put(
            "bad%20id",
            body(&json!({"registrationId": "bad id", "attestation": {"type": "symmetricKey"}}))
                .unwrap(),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.starts_with("registrationId:"), "{m}");
    // Attestation consistency.
    let m = dps_error(
        put(
            "m-1",
            body(&json!({"registrationId": "m-1", "attestation": {"type": "tpm", "x509": {}}}))
                .unwrap(),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.starts_with("attestation.x509:"), "{m}");
    let m = dps_error(
        put("m-1", body(&json!({"registrationId": "m-1", "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "not a cert"}}}}})).unwrap()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        m.starts_with("attestation.x509.clientCertificates.primary.certificate:"),
        "{m}"
    );
    // Static allocation needs exactly one hub.
    let mut e = sym_enrollment("m-1");
    e["allocationPolicy"] = json!("static");
    e["iotHubs"] = json!(["hub-a.example.test", "hub-b.example.test"]);
    let m = dps_error(put("m-1", body(&e).unwrap()).await, StatusCode::BAD_REQUEST).await;
    assert!(m.starts_with("iotHubs:"), "{m}");
    // Hubs must be linked.
    e["iotHubs"] = json!(["hub-z.example.test"]);
    let m = dps_error(put("m-1", body(&e).unwrap()).await, StatusCode::BAD_REQUEST).await;
    assert!(m.starts_with("iotHubs[0]:"), "{m}");
    // Initial twin limits: 9 KB of tags, and 11 levels of desired properties.
    let mut e = sym_enrollment("m-1");
    e["initialTwin"] = json!({"tags": {"big": "x".repeat(9 * 1024)}});
    let m = dps_error(put("m-1", body(&e).unwrap()).await, StatusCode::BAD_REQUEST).await;
    assert!(m.starts_with("initialTwin.tags:"), "{m}");
    // Eleven nested objects under `desired` (the limit is ten).
    let mut deep = json!(1);
    for _ in 0..12 {
        deep = json!({ "d": deep });
    }
    e["initialTwin"] = json!({"properties": {"desired": deep["d"]}});
    let m = dps_error(put("m-1", body(&e).unwrap()).await, StatusCode::BAD_REQUEST).await;
    assert!(m.starts_with("initialTwin.properties.desired:"), "{m}");
    // Path and body ids differ.
    let m = dps_error(
        put("m-2", body(&sym_enrollment("m-1")).unwrap()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.starts_with("registrationId:"), "{m}");
    assert!(ids(&svc).await.is_empty());
}

#[tokio::test]
async fn bulk_of_eleven_and_bulk_with_a_bad_item_write_nothing() {
    let svc = Service::start(&[]);
    let t = svc.token();
    let items: Vec<Value> = (0..11).map(|i| sym_enrollment(&format!("b-{i}"))).collect();
    let m = dps_error(
        send(
            &svc,
            Method::POST,
            "/enrollments",
            &t,
            body(&json!({"mode": "create", "enrollments": items})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.contains("at most 10"), "{m}");
    let mut items: Vec<Value> = (0..3).map(|i| sym_enrollment(&format!("b-{i}"))).collect();
    items[2]["attestation"]["type"] = json!("bogus");
    let m = dps_error(
        send(
            &svc,
            Method::POST,
            "/enrollments",
            &t,
            body(&json!({"mode": "create", "enrollments": items})),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(m.starts_with("enrollments[2].attestation.type:"), "{m}");
    assert!(ids(&svc).await.is_empty());
}

#[tokio::test]
async fn stale_etag_is_412_and_keeps_the_record() {
    let svc = Service::start(&[]);
    let t = svc.token();
    let r = send(
        &svc,
        Method::PUT,
        "/enrollments/e-1",
        &t,
        body(&sym_enrollment("e-1")),
    )
    .await;
    let first: Value = r.json().await.unwrap();
    let mut changed = first.clone();
    changed["provisioningStatus"] = json!("disabled");
    let r = svc
        .http()
        .put(svc.url(&format!("/enrollments/e-1?{V}")))
        .header("Authorization", &t)
        .header("If-Match", "\"not-the-etag\"")
        .json(&changed)
        .send()
        .await
        .unwrap();
    dps_error(r, StatusCode::PRECONDITION_FAILED).await;
    let got = svc
        .client()
        .get_enrollment(&"e-1".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(got.etag.as_deref(), first["etag"].as_str());
    assert_eq!(got.provisioning_status, None);
}

#[tokio::test]
async fn unknown_api_version_oversized_body_and_unknown_route() {
    let svc = Service::start(&[]);
    let t = svc.token();
    for q in [
        "/enrollments/v-1?api-version=2017-11-15",
        "/enrollments/v-1",
    ] {
        let r = svc
            .http()
            .put(svc.url(q))
            .header("Authorization", &t)
            .json(&sym_enrollment("v-1"))
            .send()
            .await
            .unwrap();
        let m = dps_error(r, StatusCode::BAD_REQUEST).await;
        assert!(m.contains("api-version"), "{m}");
    }
    // 2 MB body.
    let mut e = sym_enrollment("v-1");
    e["optionalDeviceInformation"] = json!({"pad": "x".repeat(2 * 1024 * 1024)});
    // The service answers 413 as soon as the limit is passed and closes the connection; a
    // client still writing the rest of the body may see the close (broken pipe) before it
    // reads the answer. Either way the body is refused and nothing is written.
    let sent = svc
        .http()
        .put(svc.url(&format!("/enrollments/v-1?{V}")))
        .header("Authorization", &t)
        .header("Content-Type", "application/json; charset=utf-8")
        .body(serde_json::to_vec(&e).unwrap())
        .send()
        .await;
    match sent {
        Ok(r) => {
            let m = dps_error(r, StatusCode::PAYLOAD_TOO_LARGE).await;
            assert!(m.contains("larger than"), "{m}");
        }
        Err(err) => assert!(err.is_request(), "unexpected client error: {err}"),
    }
    // Not JSON content type.
    let r = svc
        .http()
        .put(svc.url(&format!("/enrollments/v-1?{V}")))
        .header("Authorization", &t)
        .header("Content-Type", "text/plain")
        .body(serde_json::to_vec(&sym_enrollment("v-1")).unwrap())
        .send()
        .await
        .unwrap();
    dps_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    dps_error(
        send(&svc, Method::GET, "/nowhere", &t, None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    dps_error(
        send(&svc, Method::PATCH, "/enrollments/v-1", &t, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert!(ids(&svc).await.is_empty());
}
