//! The official Azure DPS clients against `dps serve`: the Node service client
//! (azure-iot-provisioning-service 1.11.2); the Node device client over HTTPS
//! (azure-iot-provisioning-device and -device-http 1.9.1, azure-iot-security-symmetric-key
//! 1.8.2, azure-iot-security-x509 1.7.12) and over MQTT (azure-iot-provisioning-device-mqtt
//! 1.8.1); the Python device client over MQTT (azure-iot-device 2.14.0). Needs Node and
//! `npm ci` in tests/interop, and the repository's .venv (scripts/test-deps); fails (never
//! skips) without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dps::client::ServiceClient;
use dps::sas::{SharedAccessKey, derive_device_key};
use dps::wire::{
    AllocationPolicy, AttestationMechanism, EnrollmentGroup, IndividualEnrollment,
    ProvisioningStatus, RegistrationStatus,
};
use dps::{DeviceId, EnrollmentGroupId};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use support::{Service, TestIssuer, ca, cert_pem, leaf, new_key, rid, sym};
use tokio::runtime::Runtime;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("interop")
}

/// tests/interop, after checking that Node and the pinned npm `packages` are there: a test
/// that needs them fails without them, never skips.
fn node_with(packages: &[&str]) -> PathBuf {
    let dir = interop_dir();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "Node.js is missing: install nodejs (Debian package `nodejs`, Node 18 or 20)"
    );
    for p in packages {
        assert!(
            dir.join("node_modules")
                .join(p)
                .join("package.json")
                .exists(),
            "the pinned npm package {p} is missing: run `cd tests/interop && npm ci`"
        );
    }
    dir
}

#[test]
fn official_node_service_client_works_against_the_local_service() {
    let dir = node_with(&["azure-iot-provisioning-service"]);
    let svc = Service::start(&["--link-hub", "hub-a.example.test"]);
    let tmp = tempfile::tempdir().unwrap();
    let leaf = tmp.path().join("leaf.pem");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&leaf, cert_pem("interop-x509-1", false)).unwrap();
    std::fs::write(&ca, cert_pem("Interop CA", true)).unwrap();
    let cs = std::fs::read_to_string(svc.dir.join("connection-string")).unwrap();
    let out = Command::new("node")
        .arg(dir.join("service-client.js"))
        .current_dir(&dir)
        .env("DPS_CONNECTION_STRING", cs.trim())
        .env("DPS_CA_FILE", svc.dir.join("ca.pem"))
        .env("DPS_X509_LEAF_PEM", &leaf)
        .env("DPS_X509_CA_PEM", &ca)
        .env("DPS_HUB", "hub-a.example.test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("interop: ok"), "{stdout}\n{stderr}");
    // Cross-check from our side: what the Node client wrote is there.
    let rt = Runtime::new().unwrap();
    let all = rt.block_on(svc.client().list_enrollments(100)).unwrap();
    assert_eq!(all.len(), 25);
    let groups = rt.block_on(svc.client().list_groups(100)).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].enrollment_group_id.as_str(), "interop-grp-sym");
}

const HUB_A: &str = "hub-a.example.test";
const HUB_B: &str = "hub-b.example.test";

/// A unit's leaf (CN = `cn`, EKU clientAuth), signed by `issuer` or self-signed, written with
/// its key to `dir`: (cert PEM, cert file, key file).
fn leaf_files(dir: &Path, cn: &str, issuer: Option<&TestIssuer>) -> (String, PathBuf, PathBuf) {
    let (cert, key) = leaf(cn, issuer);
    let (cert_file, key_file) = (
        dir.join(format!("{cn}.cert.pem")),
        dir.join(format!("{cn}.key.pem")),
    );
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (cert, cert_file, key_file)
}

/// A symmetric-key individual enrollment for `id` with fresh keys, after `edit`; returns its
/// primary key.
fn enroll_symmetric(
    rt: &Runtime,
    c: &ServiceClient,
    id: &str,
    edit: impl FnOnce(&mut IndividualEnrollment),
) -> String {
    let primary = new_key();
    let mut e = IndividualEnrollment::new(rid(id), sym(&primary, &new_key()));
    edit(&mut e);
    rt.block_on(c.create_or_update_enrollment(&e, None))
        .unwrap();
    primary
}

/// A symmetric-key enrollment group with fresh keys, and the key its unit `unit` signs with
/// (derived from the group's primary key): (group key, unit key).
fn symmetric_group_unit(
    rt: &Runtime,
    c: &ServiceClient,
    group: &str,
    unit: &str,
) -> (String, String) {
    let group_key = new_key();
    rt.block_on(c.create_or_update_group(
        &EnrollmentGroup::new(
            EnrollmentGroupId::new(group).unwrap(),
            sym(&group_key, &new_key()),
        ),
        None,
    ))
    .unwrap();
    let derived = derive_device_key(&SharedAccessKey::from_base64(&group_key).unwrap(), unit);
    let derived = derived.to_base64().expose_secret().to_owned();
    (group_key, derived)
}

/// An X.509 individual enrollment for `id` with a self-signed leaf written to `dir`:
/// (cert file, key file).
fn enroll_x509(rt: &Runtime, c: &ServiceClient, dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    let (cert, cert_file, key_file) = leaf_files(dir, id, None);
    rt.block_on(c.create_or_update_enrollment(
        &IndividualEnrollment::new(rid(id), AttestationMechanism::x509_client(cert)),
        None,
    ))
    .unwrap();
    (cert_file, key_file)
}

/// The JSON lines a device-client script printed, by registration id.
fn unit_lines(stdout: &str) -> HashMap<String, Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["registrationId"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// What tests/interop/device-client.js printed.
struct NodeRun {
    lines: HashMap<String, Value>,
    stdout: String,
    stderr: String,
}

/// Runs tests/interop/device-client.js (in `dir`) over `transport` (`http` or `mqtt`) against
/// `localhost:port` of `svc`, and checks that every one of `units` ended as expected.
fn run_node_device_client(
    dir: &Path,
    svc: &Service,
    transport: &str,
    port: u16,
    units: &Value,
) -> NodeRun {
    let n = units.as_array().unwrap().len();
    let out = Command::new("node")
        .arg(dir.join("device-client.js"))
        .current_dir(dir)
        .env("DPS_TRANSPORT", transport)
        .env("DPS_HOST", format!("localhost:{port}"))
        .env("DPS_ID_SCOPE", svc.id_scope())
        .env("DPS_CA_FILE", svc.dir.join("ca.pem"))
        .env("DPS_DEVICE_UNITS", units.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "node failed:\n{stdout}\n{stderr}");
    // Shown with --nocapture or when an assertion below fails.
    eprint!("{stdout}");
    assert!(
        stdout.contains(&format!("device interop: ok {n} units over {transport}")),
        "{stdout}\n{stderr}"
    );
    let lines = unit_lines(&stdout);
    assert_eq!(lines.len(), n, "{stdout}");
    NodeRun {
        lines,
        stdout,
        stderr,
    }
}

/// `id`'s registration record says what its client printed (`line`): assigned, to the same
/// hub (one of ours), with the same device ID.
fn assert_record_agrees(rt: &Runtime, c: &ServiceClient, id: &str, line: &Value) {
    assert_eq!(line["outcome"], "assigned", "{line}");
    let rec = rt.block_on(c.get_registration_state(&rid(id))).unwrap();
    assert_eq!(rec.status, Some(RegistrationStatus::Assigned), "{id}");
    assert_eq!(
        rec.assigned_hub.as_deref(),
        line["assignedHub"].as_str(),
        "{id}"
    );
    assert_eq!(rec.device_id.as_deref(), line["deviceId"].as_str(), "{id}");
    assert!(
        matches!(rec.assigned_hub.as_deref(), Some(HUB_A | HUB_B)),
        "{id}: {rec:?}"
    );
}

/// `id` has no registration record.
fn assert_no_record(rt: &Runtime, c: &ServiceClient, id: &str) {
    let e = rt.block_on(c.get_registration_state(&rid(id))).unwrap_err();
    assert_eq!(e.status(), Some(404), "{id}: a record exists: {e:?}");
}

/// None of `keys` appears in what a client printed.
fn assert_no_key_in(printed: &[&str], keys: &[&str]) {
    for k in keys {
        assert!(printed.iter().all(|p| !p.contains(k)), "a key was printed");
    }
}

/// Six units register at once through the official Node device client over HTTPS
/// (tests/interop/device-client.js): symmetric key (individual, group), X.509 (individual,
/// group); a wrong key and a disabled enrollment are refused. The records then say what the
/// client was told.
#[test]
fn official_node_device_client_registers_units_over_https_against_the_local_service() {
    let dir = node_with(&[
        "azure-iot-provisioning-device",
        "azure-iot-provisioning-device-http",
        "azure-iot-security-symmetric-key",
        "azure-iot-security-x509",
    ]);
    let svc = Service::start(&["--link-hub", HUB_A, "--link-hub", HUB_B]);
    let c = svc.client();
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // A symmetric-key individual enrollment: its own keys, a device ID, a static hub.
    let primary = enroll_symmetric(&rt, &c, "node-sym-1", |e| {
        e.device_id = Some(DeviceId::new("node-device-1").unwrap());
        e.allocation_policy = Some(AllocationPolicy::Static);
        e.iot_hubs = Some(vec![HUB_B.into()]);
    });
    // A symmetric-key group: its unit signs with the key derived from the group's.
    let (group_key, derived) = symmetric_group_unit(&rt, &c, "node-line-1", "node-grp-unit-1");
    // An X.509 individual enrollment with a self-signed leaf.
    let (x509_cert, x509_key) = enroll_x509(&rt, &c, tmp.path(), "node-x509-1");
    // An X.509 group whose signing certificate is the CA of its unit's leaf.
    let (ca_pem, issuer) = ca("Node Interop Line CA", None);
    rt.block_on(c.create_or_update_group(
        &EnrollmentGroup::new(
            EnrollmentGroupId::new("node-x509-line").unwrap(),
            AttestationMechanism::x509_signing(ca_pem),
        ),
        None,
    ))
    .unwrap();
    let (_, grp_cert, grp_key) = leaf_files(tmp.path(), "node-x509-grp-1", Some(&issuer));
    // Two units to refuse: a wrong key, and a disabled enrollment (with the right key).
    enroll_symmetric(&rt, &c, "node-wrong-key-1", |_| {});
    let disabled_key = enroll_symmetric(&rt, &c, "node-disabled-1", |e| {
        e.provisioning_status = Some(ProvisioningStatus::Disabled);
    });

    // keepAlive false: register and poll each open a TLS connection (the second one resumes
    // the first's session), so the unit's credential must hold on each.
    let units = json!([
        {"registrationId": "node-sym-1", "kind": "symmetric", "key": primary,
         "expect": "assigned", "expectHub": HUB_B, "expectDeviceId": "node-device-1"},
        {"registrationId": "node-grp-unit-1", "kind": "symmetric",
         "key": derived, "keepAlive": false,
         "expect": "assigned", "expectDeviceId": "node-grp-unit-1"},
        {"registrationId": "node-x509-1", "kind": "x509", "certFile": x509_cert,
         "keyFile": x509_key, "keepAlive": false,
         "expect": "assigned", "expectDeviceId": "node-x509-1"},
        {"registrationId": "node-x509-grp-1", "kind": "x509", "certFile": grp_cert,
         "keyFile": grp_key, "expect": "assigned", "expectDeviceId": "node-x509-grp-1"},
        {"registrationId": "node-wrong-key-1", "kind": "symmetric", "key": new_key(),
         "expect": "refused"},
        {"registrationId": "node-disabled-1", "kind": "symmetric", "key": disabled_key,
         "expect": "refused"},
    ]);
    let run = run_node_device_client(&dir, &svc, "http", svc.port, &units);
    let lines = &run.lines;

    // Cross-check from our side: the records say what the Node client was told.
    for id in [
        "node-sym-1",
        "node-grp-unit-1",
        "node-x509-1",
        "node-x509-grp-1",
    ] {
        assert_record_agrees(&rt, &c, id, &lines[id]);
    }
    assert_eq!(lines["node-sym-1"]["assignedHub"], HUB_B);
    // The wrong key: a 401, and no record.
    let wrong = &lines["node-wrong-key-1"];
    assert_eq!(wrong["outcome"], "refused", "{wrong}");
    assert_eq!(wrong["statusCode"], 401, "{wrong}");
    assert_no_record(&rt, &c, "node-wrong-key-1");
    // The disabled enrollment: refused; a record, if there is one, says so.
    let disabled = &lines["node-disabled-1"];
    assert_eq!(disabled["outcome"], "refused", "{disabled}");
    if let Some(status) = disabled["status"].as_str() {
        let rec = rt
            .block_on(c.get_registration_state(&rid("node-disabled-1")))
            .unwrap();
        assert_eq!(rec.status.map(RegistrationStatus::as_str), Some(status));
        assert!(rec.assigned_hub.is_none(), "{rec:?}");
    }
    // No key reached the output.
    assert_no_key_in(
        &[&run.stdout, &run.stderr],
        &[&primary, &group_key, &disabled_key, &derived],
    );
}

/// Units register at once through the official Node device client over MQTT 3.1.1 and TLS
/// (azure-iot-provisioning-device-mqtt 1.8.1 on azure-iot-mqtt-base 1.13.1 and mqtt.js 4.3.8;
/// tests/interop/device-client.js with DPS_TRANSPORT=mqtt) against `dps serve --mqtt-listen`:
/// a symmetric-key individual enrollment (the SDK's literal `sr`, `skn=registration`), a group
/// unit with its derived key, an X.509 unit by its client certificate (no MQTT password); a
/// wrong key is refused at CONNECT (CONNACK 5, which the SDK turns into
/// `Error("Connection refused: Not authorized")`). The script checks that each unit registers
/// and polls on one MQTT session. The records say what the client was told.
#[test]
fn official_node_device_client_registers_units_over_mqtt_against_the_local_service() {
    let dir = node_with(&[
        "azure-iot-provisioning-device",
        "azure-iot-provisioning-device-mqtt",
        "azure-iot-security-symmetric-key",
        "azure-iot-security-x509",
    ]);
    let svc = Service::start(&[
        "--link-hub",
        HUB_A,
        "--link-hub",
        HUB_B,
        "--mqtt-listen",
        "127.0.0.1:0",
    ]);
    let c = svc.client();
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let primary = enroll_symmetric(&rt, &c, "node-mqtt-sym-1", |e| {
        e.device_id = Some(DeviceId::new("node-mqtt-device-1").unwrap());
        e.allocation_policy = Some(AllocationPolicy::Static);
        e.iot_hubs = Some(vec![HUB_B.into()]);
    });
    let (group_key, derived) =
        symmetric_group_unit(&rt, &c, "node-mqtt-line-1", "node-mqtt-grp-unit-1");
    let (cert_file, key_file) = enroll_x509(&rt, &c, tmp.path(), "node-mqtt-x509-1");
    let wrong_key = enroll_symmetric(&rt, &c, "node-mqtt-wrong-1", |_| {});
    let units = json!([
        {"registrationId": "node-mqtt-sym-1", "kind": "symmetric", "key": primary,
         "expect": "assigned", "expectHub": HUB_B, "expectDeviceId": "node-mqtt-device-1"},
        {"registrationId": "node-mqtt-grp-unit-1", "kind": "symmetric", "key": derived,
         "expect": "assigned", "expectDeviceId": "node-mqtt-grp-unit-1"},
        {"registrationId": "node-mqtt-x509-1", "kind": "x509", "certFile": cert_file,
         "keyFile": key_file, "expect": "assigned", "expectDeviceId": "node-mqtt-x509-1"},
        {"registrationId": "node-mqtt-wrong-1", "kind": "symmetric", "key": new_key(),
         "expect": "refused"},
    ]);
    let run = run_node_device_client(&dir, &svc, "mqtt", svc.mqtt_port.unwrap(), &units);
    let lines = &run.lines;

    for id in [
        "node-mqtt-sym-1",
        "node-mqtt-grp-unit-1",
        "node-mqtt-x509-1",
    ] {
        assert_record_agrees(&rt, &c, id, &lines[id]);
    }
    assert_eq!(lines["node-mqtt-sym-1"]["assignedHub"], HUB_B);
    // The wrong key: refused at CONNECT, and no record.
    let wrong = &lines["node-mqtt-wrong-1"];
    assert_eq!(wrong["outcome"], "refused", "{wrong}");
    assert_eq!(wrong["connack"], 5, "{wrong}");
    assert_eq!(
        wrong["message"], "Connection refused: Not authorized",
        "{wrong}"
    );
    assert_no_record(&rt, &c, "node-mqtt-wrong-1");
    assert_no_key_in(
        &[&run.stdout, &run.stderr],
        &[&primary, &group_key, &derived, &wrong_key],
    );
}

/// The repository's Python (`.venv`, made by scripts/test-deps) with the pinned official SDK;
/// a test that needs it fails without it, never skips.
fn python_with_sdk() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import azure.iot.device, paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the pinned Python packages are missing: run scripts/test-deps (tests/interop/requirements.txt into .venv)"
    );
    python
}

/// Units register through the official Python device client (azure-iot-device 2.14.0: MQTT
/// over TLS 1.2, paho-mqtt 1.6.1) against `dps serve --mqtt-listen`: a symmetric-key unit
/// (the SDK's percent-encoded `sr`, no `skn`), a group unit with its derived key, an X.509
/// unit by its client certificate; a wrong key is refused (CONNACK 5). The records say the
/// same.
#[test]
fn official_python_device_client_registers_units_over_mqtt_against_the_local_service() {
    let python = python_with_sdk();
    let svc = Service::start(&[
        "--link-hub",
        HUB_A,
        "--link-hub",
        HUB_B,
        "--mqtt-listen",
        "127.0.0.1:0",
    ]);
    let c = svc.client();
    let rt = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let primary = enroll_symmetric(&rt, &c, "py-sym-1", |e| {
        e.allocation_policy = Some(AllocationPolicy::Static);
        e.iot_hubs = Some(vec![HUB_B.into()]);
    });
    let (_, derived) = symmetric_group_unit(&rt, &c, "py-line-1", "py-grp-unit-1");
    let (cert_file, key_file) = enroll_x509(&rt, &c, tmp.path(), "py-x509-1");
    enroll_symmetric(&rt, &c, "py-wrong-1", |_| {});
    let units = json!([
        {"registrationId": "py-sym-1", "kind": "symmetric", "key": primary,
         "expect": "assigned", "expectHub": HUB_B},
        {"registrationId": "py-grp-unit-1", "kind": "symmetric",
         "key": derived, "expect": "assigned"},
        {"registrationId": "py-x509-1", "kind": "x509", "certFile": cert_file,
         "keyFile": key_file, "expect": "assigned"},
        {"registrationId": "py-wrong-1", "kind": "symmetric", "key": new_key(),
         "expect": "refused"},
    ]);
    let out = Command::new(&python)
        .arg(interop_dir().join("device-client.py"))
        .env("DPS_MQTT_PORT", svc.mqtt_port.unwrap().to_string())
        .env("DPS_ID_SCOPE", svc.id_scope())
        .env("DPS_CA_FILE", svc.dir.join("ca.pem"))
        .env("DPS_DEVICE_UNITS", units.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("python device interop: ok 4 units"),
        "{stdout}"
    );
    assert_no_key_in(&[&stdout], &[&primary]);
    let printed = unit_lines(&stdout);
    for id in ["py-sym-1", "py-grp-unit-1", "py-x509-1"] {
        assert_record_agrees(&rt, &c, id, &printed[id]);
    }
    assert_no_record(&rt, &c, "py-wrong-1");
}
