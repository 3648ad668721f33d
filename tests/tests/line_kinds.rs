#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The line end to end, one attestation kind per test, through `station provision` with real
//! parts: unit-sim on a pty, swtpm with EK certificates, SoftHSM unit tokens, the HSM CA and a
//! local DPS target. Each checks the unit's record, its certificate or EK, the audit entries, the
//! enrollment as recorded and its outbox row; a rescan issues nothing.

use station_e2e::line::LineRig;
use station_e2e::{UnitSim, text};

fn count(rig: &LineRig, sql: &str, p: &str) -> i64 {
    rig.db().query_row(sql, [p], |r| r.get(0)).unwrap()
}

fn enrollment_body(rig: &LineRig, serial: &str) -> serde_json::Value {
    let body: String = rig
        .db()
        .query_row(
            "SELECT e.body FROM enrollments e JOIN units u ON u.id = e.unit_id WHERE u.serial = ?1",
            [serial],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

fn audit_events(rig: &LineRig, serial: &str) -> Vec<String> {
    let db = rig.db();
    let mut st = db
        .prepare("SELECT event FROM audit_log WHERE subject = ?1 ORDER BY seq")
        .unwrap();
    st.query_map([serial], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn assert_audit_verifies(rig: &LineRig) {
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", text(&out));
}

#[test]
fn x509_link_unit_gets_a_live_certificate_and_a_queued_enrollment() {
    let rig = LineRig::new();
    let sim = UnitSim::start(
        &rig.dir.path().join("sx1"),
        &[
            "--serial",
            "SX-000001",
            "--model",
            "SX-100",
            "--hw",
            "B2",
            "--fw",
            "2.4.1",
        ],
    );
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.fx1]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n",
            sim.pty.display()
        ),
    );
    // No open lot: refused, nothing recorded.
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx1",
        "--serial",
        "SX-000001",
        "--actor",
        "alice",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no open lot for product sensor-x509"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SX-000001"), None);

    rig.open_lot("sensor-x509");
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx1",
        "--serial",
        "SX-000001",
        "--actor",
        "alice",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("PASS SX-000001"), "{}", text(&out));
    assert_eq!(rig.state("SX-000001").as_deref(), Some("queued"));

    // One live certificate, for this unit, CN = registration ID.
    let (status, der): (String, Vec<u8>) = rig
        .db()
        .query_row(
            "SELECT c.status, c.der FROM certificates c JOIN units u ON u.id = c.unit_id WHERE u.serial = 'SX-000001'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "live");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "SX-000001"
    );
    // The unit holds the same certificate (its flash is the sim's state dir).
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sim.state_dir.join("unit.json")).unwrap()).unwrap();
    let on_unit = hex::decode(state["cert_chain_hex"].as_str().unwrap()).unwrap();
    assert!(
        on_unit.starts_with(&der),
        "the unit stores another certificate"
    );

    // The enrollment as the station means it: x509 with the leaf, the typed twin rendered.
    let body = enrollment_body(&rig, "SX-000001");
    assert_eq!(body["registrationId"], "SX-000001");
    assert_eq!(body["attestation"]["type"], "x509");
    let pem = body["attestation"]["x509"]["clientCertificates"]["primary"]["certificate"]
        .as_str()
        .unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(body["initialTwin"]["tags"]["hw_rev"], "B2");
    assert_eq!(body["initialTwin"]["tags"]["fixture"], "fx1");
    assert_eq!(
        body["initialTwin"]["properties"]["desired"]["fw_expected"],
        "2.4.1"
    );
    assert_eq!(
        body["initialTwin"]["properties"]["desired"]["reporting"]["interval_s"],
        300
    );
    assert_eq!(
        count(
            &rig,
            "SELECT count(*) FROM outbox WHERE item_key = ?1 AND kind = 'dps.individual-enrollment'",
            "SX-000001"
        ),
        1
    );
    // Every step is audited, in order, with the operator.
    let events = audit_events(&rig, "SX-000001");
    assert_eq!(
        events,
        [
            "unit.scanned",
            "unit.identified",
            "unit.key-ready",
            "unit.certificate-issued",
            "unit.verified",
            "unit.recorded",
            "unit.queued"
        ]
    );
    assert_eq!(
        count(
            &rig,
            "SELECT count(*) FROM audit_log WHERE event = 'ca.issue' AND details LIKE '%' || ?1 || '%'",
            "SX-000001"
        ),
        1
    );
    // A rescan shows the result and issues nothing.
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx1",
        "--serial",
        "SX-000001",
        "--actor",
        "alice",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out).contains("ALREADY DONE SX-000001"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(
            &rig,
            "SELECT count(*) FROM certificates WHERE registration_id = ?1",
            "SX-000001"
        ),
        1
    );
    // `station unit show` tells the whole story.
    let out = rig.station(&["unit", "show", "SX-000001"]);
    let shown = text(&out);
    for want in [
        "identified -> key-ready",
        "certificate-issued -> verified",
        "live",
        "local: SX-000001 queued",
    ] {
        assert!(shown.contains(want), "{want} missing: {shown}");
    }
    // Found by its registration ID as DPS may print it (IDs compare without case), too.
    let out = rig.station(&["unit", "show", "sx-000001"]);
    assert!(
        text(&out).contains("serial           SX-000001"),
        "{}",
        text(&out)
    );
    let out = rig.station(&["unit", "show", "SX-999999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no unit with serial, registration ID or device ID \"SX-999999\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Uploaded: DPS holds the unit's certificate and its initial twin.
    rig.upload_now();
    assert_eq!(rig.state("SX-000001").as_deref(), Some("uploaded"));
    let (e, a) = rig.dps_enrollment("SX-000001");
    assert_eq!(e.device_id.unwrap().as_str(), "SX-000001");
    let twin = serde_json::to_value(e.initial_twin.unwrap()).unwrap();
    assert_eq!(twin["tags"]["hw_rev"], "B2");
    assert_eq!(twin["properties"]["desired"]["reporting"]["enabled"], true);
    let held = a
        .x509
        .unwrap()
        .client_certificates
        .unwrap()
        .primary
        .unwrap()
        .certificate
        .unwrap();
    assert_eq!(held.trim(), pem.trim());
    assert_outbox_drained(&rig);
    assert_audit_verifies(&rig);
}

fn assert_outbox_drained(rig: &LineRig) {
    let left: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM outbox WHERE state != 'done' OR payload IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "outbox rows left undelivered or unerased");
}

#[test]
fn bad_scans_are_refused_with_a_clear_message_and_record_nothing() {
    let rig = LineRig::new();
    let sim = UnitSim::start(
        &rig.dir.path().join("sx2"),
        &["--serial", "SX-000002", "--model", "SX-100"],
    );
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.fx1]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n",
            sim.pty.display()
        ),
    );
    rig.open_lot("sensor-x509");
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx1",
        "--serial",
        "SX-02",
        "--actor",
        "alice",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("\"SX-02\" is not a sensor-x509 serial (pattern SX-[0-9]{6})"),
        "{}",
        text(&out)
    );
    // The unit on the fixture is another one: the run fails at identify, nothing issued.
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx1",
        "--serial",
        "SX-000009",
        "--actor",
        "alice",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("FAIL SX-000009 at identify") && text(&out).contains("SX-000002"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SX-000009").as_deref(), Some("failed"));
    assert_eq!(
        count(&rig, "SELECT count(*) FROM certificates WHERE ?1 = ?1", ""),
        0
    );
    let out = rig.station(&["provision", "--fixture", "nope", "--serial", "SX-000002"]);
    assert!(text(&out).contains("no fixture \"nope\""), "{}", text(&out));
    assert_audit_verifies(&rig);
}

#[test]
fn tpm_unit_is_enrolled_by_its_ek_and_a_second_unit_with_the_same_tpm_is_refused() {
    let rig = LineRig::new();
    let tpm = fixtures::swtpm::Swtpm::start().unwrap();
    let trust = rig.home.join("trust/tpm");
    std::fs::create_dir_all(&trust).unwrap();
    for e in std::fs::read_dir(tpm.trust_dir()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, trust.join(p.file_name().unwrap())).unwrap();
    }
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[tpm]\nallow_software_tpm = true\n[fixtures.tpm1]\nproduct = \"sensor-tpm\"\ntcti = \"{}\"\n",
            tpm.tcti()
        ),
    );
    rig.open_lot("sensor-tpm");
    let out = rig.station(&[
        "provision",
        "--fixture",
        "tpm1",
        "--serial",
        "ST-000001",
        "--actor",
        "alice",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rid: String = rig
        .db()
        .query_row(
            "SELECT registration_id FROM units WHERE serial = 'ST-000001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // The TPM rule: lowercase base32 of SHA-256 of the EK (52 characters).
    assert_eq!(rid.len(), 52, "{rid}");
    assert!(
        rid.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    let body = enrollment_body(&rig, "ST-000001");
    assert_eq!(body["attestation"]["type"], "tpm");
    let ek: String = rig
        .db()
        .query_row("SELECT ek_public FROM tpm_endorsement_keys", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(body["attestation"]["tpm"]["endorsementKey"], ek);
    assert_eq!(body["deviceId"], "ST-000001");
    assert!(
        body["initialTwin"]["tags"]["lot"]
            .as_str()
            .unwrap()
            .starts_with("sensor-tpm-")
    );

    // The same TPM under another serial: refused at attest, naming the first unit.
    let out = rig.station(&[
        "provision",
        "--fixture",
        "tpm1",
        "--serial",
        "ST-000002",
        "--actor",
        "alice",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("FAIL ST-000002 at attest") && text(&out).contains("ST-000001"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(&rig, "SELECT count(*) FROM enrollments WHERE ?1 = ?1", ""),
        1
    );
    assert_audit_verifies(&rig);
}

#[test]
fn pkcs11_unit_gets_its_key_made_in_its_token_and_a_live_certificate() {
    let rig = LineRig::new();
    rig.config(
        "30-fixtures.toml",
        "[fixtures.se1]\nproduct = \"gateway-se\"\n",
    );
    rig.open_lot("gateway-se");
    let conf = rig.softhsm_conf();
    let init = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "unit-GW-000001",
            "--pin",
            "246810",
            "--so-pin",
            "13579135",
        ])
        .output()
        .expect("softhsm2-util (install softhsm2)");
    assert!(init.status.success(), "{}", text(&init));
    // A wrong unit PIN: a clear failure at attest naming the token; nothing issued.
    let out = rig.station_env(
        &[
            "provision",
            "--fixture",
            "se1",
            "--serial",
            "GW-000001",
            "--actor",
            "bob",
        ],
        &[("UNIT_SE_PIN", "000000")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("FAIL GW-000001 at attest, fixture se1")
            && text(&out).contains("unit-GW-000001"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(&rig, "SELECT count(*) FROM certificates WHERE ?1 = ?1", ""),
        0
    );
    // The right PIN: a retry supersedes the failed run and passes.
    let out = rig.station_env(
        &[
            "provision",
            "--fixture",
            "se1",
            "--serial",
            "GW-000001",
            "--actor",
            "bob",
        ],
        &[("UNIT_SE_PIN", "246810")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rig.state("GW-000001").as_deref(), Some("queued"));
    let body = enrollment_body(&rig, "GW-000001");
    assert_eq!(body["attestation"]["type"], "x509");
    assert_eq!(body["capabilities"]["iotEdge"], true);
    assert_eq!(body["allocationPolicy"], "static");
    assert_eq!(
        count(
            &rig,
            "SELECT count(*) FROM certificates WHERE status = 'live' AND registration_id = ?1",
            "GW-000001"
        ),
        1
    );
    let runs: i64 = count(
        &rig,
        "SELECT count(*) FROM runs r JOIN units u ON u.id = r.unit_id WHERE u.serial = ?1",
        "GW-000001",
    );
    assert_eq!(runs, 2);
    rig.upload_now();
    let (e, a) = rig.dps_enrollment("GW-000001");
    assert!(e.capabilities.unwrap().iot_edge);
    assert_eq!(e.iot_hubs.unwrap(), vec!["hub-a.local".to_owned()]);
    assert!(
        a.x509
            .unwrap()
            .client_certificates
            .unwrap()
            .primary
            .unwrap()
            .certificate
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(rig.state("GW-000001").as_deref(), Some("uploaded"));
    assert_outbox_drained(&rig);

    // End of line, the unit still on its fixture: the station registers it with DPS on its
    // behalf, the handshake signed in the unit's element. A wrong unit PIN: nothing happens.
    let register = ["unit", "register", "GW-000001", "--actor", "bob"];
    let out = rig.station_env(&register, &[("UNIT_SE_PIN", "000000")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unit GW-000001's secure element could not be used")
            && text(&out).contains("unit-GW-000001"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("GW-000001").as_deref(), Some("uploaded"));
    let out = rig.station_env(&register, &[("UNIT_SE_PIN", "246810")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "unit GW-000001: registered with DPS target local on its behalf: GW-000001 assigned to hub-a.local as device GW-000001"
        ) && text(&out).contains("unit GW-000001: recorded as registered"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("GW-000001").as_deref(), Some("registered"));
    let id = dps::RegistrationId::new("GW-000001".to_owned()).unwrap();
    let rec = rig.dps(|c| async move { c.get_registration_state(&id).await.unwrap() });
    assert_eq!(rec.assigned_hub.as_deref(), Some("hub-a.local"));
    assert_eq!(
        count(
            &rig,
            "SELECT count(*) FROM audit_log WHERE event = 'unit.register' AND actor = ?1",
            "bob"
        ),
        1
    );
    assert_audit_verifies(&rig);
}

#[test]
fn a_registration_id_already_used_by_another_unit_is_refused_and_nothing_is_issued() {
    let rig = LineRig::new();
    // A product whose template gives every unit the same registration ID (a typo'd template).
    std::fs::write(
        rig.home.join("products/sensor-x509.toml"),
        "model = \"SX-100\"\nserial_pattern = \"SX-[0-9]{6}\"\ndps_target = \"local\"\nattestation = { kind = \"x509-link\" }\nregistration_id = \"{product}\"\n",
    )
    .unwrap();
    let a = UnitSim::start(&rig.dir.path().join("a"), &["--serial", "SX-000011"]);
    let b = UnitSim::start(&rig.dir.path().join("b"), &["--serial", "SX-000012"]);
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.fx1]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n[fixtures.fx2]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n",
            a.pty.display(),
            b.pty.display()
        ),
    );
    rig.open_lot("sensor-x509");
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx1",
        "--serial",
        "SX-000011",
        "--actor",
        "alice",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx2",
        "--serial",
        "SX-000012",
        "--actor",
        "alice",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("FAIL SX-000012 at attest")
            && text(&out).contains("already belongs to unit SX-000011"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(&rig, "SELECT count(*) FROM certificates WHERE ?1 = ?1", ""),
        1,
        "no certificate for the second unit"
    );
    assert_eq!(rig.state("SX-000011").as_deref(), Some("queued"));
    assert_audit_verifies(&rig);
}
