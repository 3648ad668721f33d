//! The device registration API over MQTT (TLS) of `dps serve --mqtt-listen`: a unit connects,
//! subscribes, registers and polls exactly as the Azure SDKs do (dps-wire.md section 6), here
//! with a bare MQTT 3.1.1 client made of rumqttc's packet codec over tokio-rustls; refusals
//! are the CONNACK codes the SDKs understand. (The official SDKs' own runs are in interop.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use dps::sas::{SharedAccessKey, generate_token};
use dps::wire::{AttestationMechanism, IndividualEnrollment, RegistrationOperationStatus};
use futures::{SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, Connect, ConnectReturnCode, Login, Packet, Publish, Subscribe,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret as _;
use support::{Service, leaf, new_key, rid, sym};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

type Conn = Framed<TlsStream<TcpStream>, Codec>;

/// A TLS connection to the MQTT port, presenting `identity` (certificate PEM, key PEM).
async fn tls(svc: &Service, identity: Option<(&str, &str)>) -> TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(svc.dir.join("ca.pem")).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(("127.0.0.1", svc.mqtt_port.unwrap()))
        .await
        .unwrap();
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn next(c: &mut Conn) -> Packet {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("an answer within 10 s")
        .expect("the connection is open")
        .unwrap()
}

/// Connects as `client_id` with the user name the SDKs send; the CONNACK code.
async fn connect(
    svc: &Service,
    client_id: &str,
    registration_id: &str,
    password: Option<&str>,
    identity: Option<(&str, &str)>,
) -> (Conn, ConnectReturnCode) {
    let mut c = Framed::new(
        tls(svc, identity).await,
        Codec {
            max_incoming_size: 1 << 20,
            max_outgoing_size: 1 << 20,
        },
    );
    let mut connect = Connect::new(client_id);
    connect.keep_alive = 60;
    connect.login = Some(Login::new(
        format!(
            "{}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=test%2F1",
            svc.id_scope()
        ),
        password.unwrap_or(""),
    ));
    c.send(Packet::Connect(connect)).await.unwrap();
    match next(&mut c).await {
        Packet::ConnAck(a) => (c, a.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Publishes at QoS 1 and returns the reply topic and body (after the PUBACK).
async fn request(c: &mut Conn, topic: &str, payload: &[u8], pkid: u16) -> (String, Vec<u8>) {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
    p.pkid = pkid;
    c.send(Packet::Publish(p)).await.unwrap();
    let mut acked = false;
    loop {
        match next(c).await {
            Packet::PubAck(a) => {
                assert_eq!(a.pkid, pkid);
                acked = true;
            }
            Packet::Publish(r) => {
                assert!(acked, "the reply came before the PUBACK");
                return (r.topic, r.payload.to_vec());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The whole exchange after CONNACK: subscribe, register, poll; the final status.
async fn register(c: &mut Conn, registration_id: &str) -> RegistrationOperationStatus {
    c.send(Packet::Subscribe(Subscribe::new(
        "$dps/registrations/res/#",
        QoS::AtLeastOnce,
    )))
    .await
    .unwrap();
    assert!(matches!(next(c).await, Packet::SubAck(_)));
    let body = format!(r#"{{"payload": null, "registrationId": "{registration_id}"}}"#);
    let (topic, answer) = request(
        c,
        "$dps/registrations/PUT/iotdps-register/?$rid=8f3e",
        body.as_bytes(),
        1,
    )
    .await;
    assert!(
        topic.starts_with("$dps/registrations/res/202/?$rid=8f3e&retry-after="),
        "{topic}"
    );
    let first: RegistrationOperationStatus = serde_json::from_slice(&answer).unwrap();
    let (topic, answer) = request(
        c,
        &format!(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=9a01&operationId={}",
            first.operation_id
        ),
        b" ",
        2,
    )
    .await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=9a01");
    serde_json::from_slice(&answer).unwrap()
}

#[tokio::test]
async fn units_register_over_mqtt_with_a_sas_password_or_a_client_certificate() {
    let svc = Service::start(&[
        "--link-hub",
        "hub-a.example.test",
        "--mqtt-listen",
        "127.0.0.1:0",
    ]);
    let c = svc.client();
    let primary = new_key();
    c.create_or_update_enrollment(
        &IndividualEnrollment::new(rid("mqtt-sym-1"), sym(&primary, &new_key())),
        None,
    )
    .await
    .unwrap();
    // SAS: the Python SDK's form (sr percent-encoded, no skn).
    let expiry = u64::try_from(chrono::Utc::now().timestamp() + 600).unwrap();
    let sr = format!("{}%2Fregistrations%2Fmqtt-sym-1", svc.id_scope());
    let token = generate_token(
        &sr,
        &SharedAccessKey::from_base64(&primary).unwrap(),
        None,
        expiry,
    );
    let (mut conn, code) = connect(
        &svc,
        "mqtt-sym-1",
        "mqtt-sym-1",
        Some(token.expose_secret()),
        None,
    )
    .await;
    assert_eq!(code, ConnectReturnCode::Success);
    let done = register(&mut conn, "mqtt-sym-1").await;
    assert_eq!(done.status.as_str(), "assigned");
    assert_eq!(
        done.registration_state.unwrap().assigned_hub.as_deref(),
        Some("hub-a.example.test")
    );
    conn.send(Packet::PingReq).await.unwrap();
    assert!(matches!(next(&mut conn).await, Packet::PingResp));
    conn.send(Packet::Disconnect).await.unwrap();

    // X.509: no password, the certificate in the handshake.
    let (cert, key_pem) = leaf("mqtt-x509-1", None);
    c.create_or_update_enrollment(
        &IndividualEnrollment::new(rid("mqtt-x509-1"), AttestationMechanism::x509_client(&cert)),
        None,
    )
    .await
    .unwrap();
    let (mut conn, code) = connect(
        &svc,
        "mqtt-x509-1",
        "mqtt-x509-1",
        None,
        Some((&cert, &key_pem)),
    )
    .await;
    assert_eq!(code, ConnectReturnCode::Success);
    assert_eq!(
        register(&mut conn, "mqtt-x509-1").await.status.as_str(),
        "assigned"
    );
    let rec = c.get_registration_state(&rid("mqtt-x509-1")).await.unwrap();
    assert_eq!(rec.assigned_hub.as_deref(), Some("hub-a.example.test"));
}

#[tokio::test]
async fn refused_connections_get_the_connack_codes_the_sdks_understand() {
    let svc = Service::start(&["--mqtt-listen", "127.0.0.1:0"]);
    let primary = new_key();
    svc.client()
        .create_or_update_enrollment(
            &IndividualEnrollment::new(rid("mqtt-unit-1"), sym(&primary, &new_key())),
            None,
        )
        .await
        .unwrap();
    let expiry = u64::try_from(chrono::Utc::now().timestamp() + 600).unwrap();
    let token = |key: &str| {
        generate_token(
            &format!("{}/registrations/mqtt-unit-1", svc.id_scope()),
            &SharedAccessKey::from_base64(key).unwrap(),
            Some("registration"),
            expiry,
        )
        .expose_secret()
        .to_owned()
    };
    // A wrong key, no password at all: not authorized.
    let (_, code) = connect(
        &svc,
        "mqtt-unit-1",
        "mqtt-unit-1",
        Some(&token(&new_key())),
        None,
    )
    .await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    let (_, code) = connect(&svc, "mqtt-unit-1", "mqtt-unit-1", None, None).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
    // A client ID that is not the registration ID.
    let (_, code) = connect(
        &svc,
        "someone-else",
        "mqtt-unit-1",
        Some(&token(&primary)),
        None,
    )
    .await;
    assert_eq!(code, ConnectReturnCode::BadClientId);
    // MQTT 3.1 (protocol level 3): refused by version, not misread.
    let mut raw = tls(&svc, None).await;
    let mut connect31 = vec![0x10, 0];
    let body: Vec<u8> = [&[0u8, 6][..], b"MQIsdp", &[3, 0x02, 0, 60, 0, 4], b"unit"].concat();
    connect31[1] = u8::try_from(body.len()).unwrap();
    connect31.extend(body);
    raw.write_all(&connect31).await.unwrap();
    let mut c = Framed::new(
        raw,
        Codec {
            max_incoming_size: 1024,
            max_outgoing_size: 1024,
        },
    );
    match next(&mut c).await {
        Packet::ConnAck(a) => assert_eq!(a.code, ConnectReturnCode::RefusedProtocolVersion),
        other => panic!("{other:?}"),
    }
    // A good unit whose register publish names another unit in its body: a 400 on the
    // reply topic, and no record.
    let (mut conn, code) = connect(
        &svc,
        "mqtt-unit-1",
        "mqtt-unit-1",
        Some(&token(&primary)),
        None,
    )
    .await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (topic, body) = request(
        &mut conn,
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        br#"{"registrationId":"mqtt-unit-2"}"#,
        5,
    )
    .await;
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=1");
    assert!(String::from_utf8_lossy(&body).contains("differs from"));
    let e = svc
        .client()
        .get_registration_state(&rid("mqtt-unit-1"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
}

#[tokio::test]
async fn a_throttled_register_is_answered_429_on_its_topic_and_the_retry_goes_through() {
    // A service answering its first call 429 (Retry-After 2 s), as a busy DPS does.
    let (svc, primary) = Service::with_enrollment_then(
        "mqtt-busy-1",
        &[
            "--link-hub",
            "hub-a.example.test",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--throttle-next",
            "1",
            "--throttle-retry-after",
            "2",
        ],
    )
    .await;
    let expiry = u64::try_from(chrono::Utc::now().timestamp() + 600).unwrap();
    let token = generate_token(
        &format!("{}/registrations/mqtt-busy-1", svc.id_scope()),
        &SharedAccessKey::from_base64(&primary).unwrap(),
        Some("registration"),
        expiry,
    );
    let (mut conn, code) = connect(
        &svc,
        "mqtt-busy-1",
        "mqtt-busy-1",
        Some(token.expose_secret()),
        None,
    )
    .await;
    assert_eq!(code, ConnectReturnCode::Success);
    let body = br#"{"registrationId":"mqtt-busy-1"}"#;
    let (topic, answer) = request(
        &mut conn,
        "$dps/registrations/PUT/iotdps-register/?$rid=a1",
        body,
        1,
    )
    .await;
    assert_eq!(topic, "$dps/registrations/res/429/?$rid=a1&retry-after=2");
    assert!(String::from_utf8_lossy(&answer).contains("retry after"));
    // The SDKs retry after that wait; the register then goes through.
    let (topic, _) = request(
        &mut conn,
        "$dps/registrations/PUT/iotdps-register/?$rid=a2",
        body,
        2,
    )
    .await;
    assert!(
        topic.starts_with("$dps/registrations/res/202/?$rid=a2"),
        "{topic}"
    );
}
