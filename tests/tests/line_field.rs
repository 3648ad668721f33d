#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The promise of the station: a unit it marked passed can register with DPS in the field.
//! A lot runs through `station serve` + `line-sim` on the demo line and is uploaded to the
//! local DPS; then every unit on a serial link registers through the device API with only
//! what the station left in it (`unit-register`): X.509 units with the certificate chain the
//! station wrote back and their own key, symmetric-group units with the injected key and the
//! registration ID, ID scope and endpoint that came with it; TPM units answer DPS's challenge
//! in their own TPM (served again from the state line-sim made). DPS assigns each a hub, and its
//! record names the registration ID the station recorded. A unit whose enrollment was
//! disabled afterwards is refused, and `unit-register` says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use dps::RegistrationId;
use dps::wire::{ProvisioningStatus, RegistrationStatus};
use station_e2e::line::{LineRig, StationServe, poll_until, wait_until};
use station_e2e::{UnitSim, bin, text};

const UNITS: i64 = 8;
/// The hubs `DpsService` links.
const HUBS: [&str; 2] = ["hub-a.local", "hub-b.local"];

fn unit_register(rig: &LineRig, dirs: &[&Path]) -> std::process::Output {
    let dps = rig.dps.as_ref().unwrap();
    let scope = std::fs::read_to_string(dps.dir.join("id-scope")).unwrap();
    Command::new(bin("unit-register"))
        .args(dirs)
        .args(["--id-scope", scope.trim()])
        .args(["--endpoint", &format!("localhost:{}", dps.port)])
        .arg("--ca-file")
        .arg(dps.dir.join("ca.pem"))
        .arg("--json")
        .output()
        .unwrap()
}

/// Signed in to the web UI as eve, each of `requests` (POST or GET, path) in turn in one
/// session; the body of the last.
fn web_as_eve(rig: &LineRig, requests: &[(bool, &str)]) -> String {
    let url = std::fs::read_to_string(rig.home.join("run/web.url")).unwrap();
    let url = url.trim().trim_end_matches('/');
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let signed_in = http
                .post(format!("{url}/login"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("user=eve&password=field-check-pw-1")
                .send()
                .await
                .unwrap();
            let cookie = signed_in
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|c| c.split(';').next())
                .expect("a session cookie")
                .to_owned();
            let mut body = String::new();
            for (post, path) in requests {
                let req = if *post {
                    http.post(format!("{url}{path}"))
                        .header("Content-Type", "application/x-www-form-urlencoded")
                } else {
                    http.get(format!("{url}{path}"))
                };
                body = req
                    .header("Cookie", &cookie)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
            }
            body
        })
}

/// The web page of `serial` with DPS asked (`?dps=1`), signed in as eve.
fn web_unit_page(rig: &LineRig, serial: &str) -> String {
    web_as_eve(rig, &[(false, &format!("/units/{serial}?dps=1"))])
}

#[test]
fn units_the_station_passed_register_with_dps_using_what_it_left_in_them() {
    let mut rig = LineRig::new();
    let badge = "BADGE-7301-alice";
    // The web UI too: an engineer looks the unit up there.
    rig.config("70-web.toml", "[web]\nlisten = \"127.0.0.1:0\"\n");
    rig.add_user("eve", "supervisor", Some("field-check-pw-1"), None);
    let serve = rig.run_demo_lot(badge, UNITS);
    let uploaded = poll_until(120, || {
        rig.db()
            .query_row(
                "SELECT count(*) FROM units WHERE state != 'uploaded'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 0
    });
    assert!(uploaded, "{}", text(&rig.station(&["upload", "--status"])));

    // What the station recorded for each unit on a serial link.
    let recorded = registration_ids(&rig, "fixture IN ('link-1', 'sym-1')");
    assert!(recorded.len() >= 2, "{recorded:?}");

    // Before the units power up, the station can tell that DPS has no registration yet.
    let (first_serial, first_rid) = recorded.iter().next().unwrap();
    let shown = |serial: &str| {
        let out = rig.station(&["unit", "show", serial, "--dps"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("DPS registration"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = shown(first_serial);
    assert_eq!(
        before,
        format!("DPS registration local: none: {first_rid} has not registered yet")
    );

    // The station cannot register an X.509 unit on its behalf: it says who does, and records
    // nothing.
    let x509 = recorded
        .keys()
        .find(|s| s.starts_with("SX"))
        .expect("an X.509 unit");
    let out = rig.station(&["unit", "register", x509, "--actor", "eve"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "unit {x509} (x509-link) registers with its own private key, which only the unit holds"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state(x509).as_deref(), Some("uploaded"));

    let work = rig.dir.path().join("line");
    let out = unit_register(&rig, &[&work]);
    assert!(out.status.success(), "unit-register: {}", text(&out));
    let lines = json_lines(&out);
    let mut registered = BTreeMap::new();
    let mut tpm_registered = BTreeSet::new();
    for l in &lines {
        assert_eq!(l["status"], "assigned", "{l}");
        assert!(HUBS.contains(&l["assignedHub"].as_str().unwrap()), "{l}");
        let (unit, rid) = (
            l["unit"].as_str().unwrap().to_owned(),
            l["registrationId"].as_str().unwrap().to_owned(),
        );
        if unit.starts_with("tpm-") {
            tpm_registered.insert(rid);
        } else {
            registered.insert(unit, rid);
        }
    }
    assert_eq!(
        registered, recorded,
        "every link unit registered as recorded"
    );
    // TPM units took DPS's challenge in their own TPM and registered by their EK.
    let tpm_recorded: BTreeSet<String> = rig
        .db()
        .prepare("SELECT registration_id FROM units WHERE fixture = 'tpm-1'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!tpm_recorded.is_empty());
    assert_eq!(tpm_registered, tpm_recorded, "every TPM unit registered");

    // DPS's own records say the same.
    for rid in recorded.values() {
        let rid = RegistrationId::new(rid).unwrap();
        let rec = rig.dps(|c| async move { c.get_registration_state(&rid).await.unwrap() });
        assert_eq!(rec.status, Some(RegistrationStatus::Assigned), "{rec:?}");
    }

    let after = shown(first_serial);
    // The unit's web page asks DPS on request and says the same.
    serve.wait_logged("web UI listening", 60);
    let page = web_unit_page(&rig, first_serial);
    assert!(
        page.contains("local: assigned to hub-")
            && page.contains(&format!("as device {first_rid} (initialAssignment)")),
        "{page}"
    );
    assert!(
        after.starts_with("DPS registration local: assigned to hub-")
            && after.contains(&format!("as device {first_rid} (initialAssignment), last ")),
        "{after}"
    );

    // The station asks DPS which units registered, and records each one's hub.
    let passed = registration_ids(&rig, "state = 'uploaded'");
    let checked = registrations(&rig, &["--json", "--actor", "eve"]);
    assert!(checked.status.success(), "{}", text(&checked));
    let lines = json_lines(&checked);
    assert_eq!(
        lines.len(),
        passed.len(),
        "one answer per passed unit: {lines:?}"
    );
    let mut assigned = 0i64;
    for l in &lines {
        let serial = l["serial"].as_str().unwrap();
        let rid = l["registrationId"].as_str().unwrap();
        assert_eq!(passed[serial], rid, "{l}");
        assert_eq!(l["target"], "local", "{l}");
        if registered.values().any(|r| r == rid) || tpm_registered.contains(rid) {
            // What the station recorded is what DPS holds.
            let id = RegistrationId::new(rid).unwrap();
            let rec = rig.dps(|c| async move { c.get_registration_state(&id).await.unwrap() });
            assert_eq!(l["status"], "assigned", "{l}");
            assert_eq!(l["newlyRegistered"], true, "{l}");
            assert_eq!(
                l["assignedHub"].as_str(),
                rec.assigned_hub.as_deref(),
                "{l}"
            );
            assert_eq!(l["deviceId"].as_str(), rec.device_id.as_deref(), "{l}");
            let (state, data): (String, String) = rig
                .db()
                .query_row(
                    "SELECT state, state_data FROM units WHERE serial = ?1",
                    [serial],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let data: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(state, "registered");
            assert_eq!(data["hub"], l["assignedHub"], "{data}");
            assert_eq!(data["device_id"], l["deviceId"], "{data}");
            assigned += 1;
        } else {
            // Units whose key is in their own token do not power up in this simulation.
            assert_eq!(l["status"], "none", "{l}");
            assert_eq!(
                l["detail"].as_str().unwrap(),
                format!("{rid} has not registered yet")
            );
        }
    }
    assert_eq!(
        usize::try_from(assigned).unwrap(),
        registered.len() + tpm_registered.len()
    );
    let audited: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE event = 'unit.registered' AND actor = 'eve'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        audited, assigned,
        "each unit's move to registered is audited"
    );
    // The unit's own record shows the answer, offline.
    let out = rig.station(&["unit", "show", first_serial]);
    let record = String::from_utf8_lossy(&out.stdout);
    assert!(
        record.contains("state            registered: assigned to hub-")
            && record.contains("DPS checked      local: assigned to hub-")
            && record.contains(&format!("as device {first_rid} (asked ")),
        "{record}"
    );
    // Asking again finds nothing new, and an end-of-line gate over every unit says which
    // ones are missing (exit 3).
    let again = registrations(&rig, &["--recheck", "--expect-all"]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    let again_text = String::from_utf8_lossy(&again.stdout);
    assert!(
        again_text.contains(&format!("  registered  {assigned:>5}   (0 newly recorded)"))
            && again_text.contains("not registered yet:\n"),
        "{again_text}"
    );
    // Those are the units with their key in their own element, which the station can
    // register itself at the end of the line; it says so.
    let in_elements: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM units WHERE attestation = 'x509-pkcs11' AND state = 'uploaded'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(in_elements > 0);
    assert!(
        again_text.contains(&format!(
            "the station can register {in_elements} of the units not registered yet itself, at the end of the line: station unit register SERIAL (or --lot LOT)"
        )),
        "{again_text}"
    );

    // The unit list ends with the units by state, and says when it was cut short; a mistyped
    // lot is refused rather than listed as empty.
    let count = |sql: &str| -> i64 { rig.db().query_row(sql, [], |r| r.get(0)).unwrap() };
    let (total, now_registered, waiting) = (
        count("SELECT count(*) FROM units"),
        count("SELECT count(*) FROM units WHERE state = 'registered'"),
        count("SELECT count(*) FROM units WHERE state = 'uploaded'"),
    );
    assert_eq!(total, now_registered + waiting);
    let out = rig.station(&["unit", "list", "--limit", "2"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let (most, fewest) = if now_registered >= waiting {
        ((now_registered, "registered"), (waiting, "uploaded"))
    } else {
        ((waiting, "uploaded"), (now_registered, "registered"))
    };
    assert_eq!(
        listed.lines().last().unwrap(),
        format!(
            "{total} unit(s): {} {}, {} {} (the newest 2 listed; --limit N lists more)",
            most.0, most.1, fewest.0, fewest.1
        ),
        "{listed}"
    );
    assert_eq!(
        listed.lines().count(),
        4,
        "header, two units, summary: {listed}"
    );
    // A lot's manifest for a script: one JSON object per unit of a state, a registered unit
    // with the hub and device ID DPS gave it.
    let json_list = |state: &str| -> Vec<serde_json::Value> {
        let out = rig.station(&[
            "unit", "list", "--state", state, "--json", "--limit", "1000",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        json_lines(&out)
    };
    let registered_units = json_list("registered");
    assert_eq!(registered_units.len() as i64, now_registered);
    for u in &registered_units {
        assert_eq!(u["state"], "registered");
        assert!(u["hub"].as_str().unwrap().starts_with("hub-"), "{u}");
        assert!(!u["deviceId"].as_str().unwrap().is_empty(), "{u}");
        assert!(!u["attestation"].as_str().unwrap().is_empty(), "{u}");
    }
    let waiting_units = json_list("uploaded");
    assert_eq!(waiting_units.len() as i64, waiting);
    assert!(
        waiting_units
            .iter()
            .all(|u| u["state"] == "uploaded" && u["hub"] == "")
    );
    let out = rig.station(&["unit", "list", "--lot", "WO-TYPO"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: no lot \"WO-TYPO\" in this station's database (station lot list shows the lots)"
    );

    // A supervisor disables one X.509 unit's enrollment in DPS: that unit is refused now,
    // and told why.
    let (serial, rid) = recorded
        .iter()
        .find(|(s, _)| s.starts_with("SX"))
        .map(|(s, r)| (s.clone(), r.clone()))
        .expect("an X.509 unit");
    let id = RegistrationId::new(&rid).unwrap();
    rig.dps(|c| async move {
        let mut e = c.get_enrollment(&id).await.unwrap();
        let att = c.enrollment_attestation(&id).await.unwrap();
        e.attestation = att;
        e.provisioning_status = Some(ProvisioningStatus::Disabled);
        let etag = e.etag.clone();
        c.create_or_update_enrollment(&e, etag.as_deref())
            .await
            .unwrap();
    });
    let unit_dir = std::fs::read_dir(&work)
        .unwrap()
        .map(|d| d.unwrap().path().join(&serial))
        .find(|p| p.join("unit.json").is_file())
        .expect("the unit's state");
    let out = unit_register(&rig, &[&unit_dir]);
    assert!(!out.status.success());
    let l: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(l["status"], "disabled", "{l}");
    assert!(
        l["errorMessage"]
            .as_str()
            .unwrap()
            .contains(&format!("individual enrollment {rid} is disabled")),
        "{l}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 unit(s) were not assigned"),
        "{}",
        text(&out)
    );
    // The engineer asking why that unit did not register gets DPS's answer from the station.
    let why = shown(&serial);
    assert!(
        why.starts_with("DPS registration local: disabled")
            && why.contains(&format!("the individual enrollment {rid} is disabled")),
        "{why}"
    );
    // The registration check records the refusal; the unit keeps the hub it was given.
    let gate = registrations(&rig, &["--recheck", "--serial", &serial, "--expect-all"]);
    assert_eq!(gate.status.code(), Some(3), "{}", text(&gate));
    let gate_text = String::from_utf8_lossy(&gate.stdout);
    assert!(
        gate_text.contains("refused by DPS:\n")
            && gate_text.contains(&format!("  {serial:<12} local: disabled"))
            && gate_text.contains(&format!("the individual enrollment {rid} is disabled")),
        "{gate_text}"
    );
    let (status, error): (String, String) = rig
        .db()
        .query_row(
            "SELECT r.status, r.error_message FROM dps_registrations r JOIN units u ON u.id = r.unit_id
             WHERE u.serial = ?1",
            [&serial],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "disabled");
    assert!(error.contains("is disabled"), "{error}");
    // The upload status (and the upload page) list it with DPS's reason.
    let st = rig.station(&["upload", "--status"]);
    let st_text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st_text.contains("registration in the field: ")
            && st_text.contains("refused by DPS (asked again at each check):\n")
            && st_text.contains(&format!(
                "  {serial} local: disabled: the individual enrollment {rid} is disabled"
            )),
        "{st_text}"
    );

    // `station check` warns of it.
    let checked = rig.station(&["check"]);
    assert!(
        String::from_utf8_lossy(&checked.stdout)
            .contains(&format!("DPS refused 1 unit(s), e.g. {serial} (local): ")),
        "{}",
        text(&checked)
    );
    // A supervisor asks DPS from the upload page: the units still waiting (the gateways,
    // which did not register) are asked about, with the real DPS.
    let waiting: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM units WHERE state = 'uploaded'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(waiting > 0);
    let page = web_as_eve(&rig, &[(true, "/outbox/registrations"), (false, "/outbox")]);
    assert!(
        page.contains(&format!(
            "Asked DPS about {waiting} unit(s): 0 newly registered, 0 refused, {waiting} not registered yet."
        )),
        "{page}"
    );
    assert!(
        page.contains("id=\"registration-refused\"") && page.contains(&format!(">{serial}</a>")),
        "the unit whose enrollment was disabled is listed as refused: {page}"
    );

    // With DPS gone, the check says so and changes nothing.
    drop(serve);
    let before = registration_records(&rig);
    rig.dps.take().unwrap().stop();
    let down = registrations(&rig, &["--recheck"]);
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    let down_text = String::from_utf8_lossy(&down.stdout);
    assert!(
        down_text.contains("not asked (") && down_text.contains("\n  local: "),
        "{down_text}"
    );
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("could not be checked with DPS"),
        "{}",
        text(&down)
    );
    assert_eq!(registration_records(&rig), before, "nothing recorded");
}

/// `station serve` asks DPS by itself (`[registrations] check_every_s`): a unit it uploaded is
/// asked about without anyone running `station registrations`, and once the unit registers in
/// the field it turns `registered` at its hub, audited under the actor `station`, with the
/// audit checkpoint sealed.
#[test]
fn serve_records_by_itself_that_a_unit_registered_in_the_field() {
    let rig = LineRig::new();
    let serial = "SK-000301";
    rig.config(
        "60-upload.toml",
        "[upload]\ninterval_ms = 200\nmin_backoff_ms = 200\nmax_backoff_ms = 1000\n\
         [registrations]\ncheck_every_s = 1\n",
    );
    let sim = provisioned_key_unit(&rig, serial);
    let serve = StationServe::start(&rig, &[]);
    serve.wait_state(&rig, serial, "uploaded", 60);
    let answer = || -> Option<(String, Option<String>)> {
        rig.db()
            .query_row(
                "SELECT r.status, r.assigned_hub FROM dps_registrations r
                 JOIN units u ON u.id = r.unit_id WHERE u.serial = ?1",
                [serial],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok()
    };
    // Asked about with no command run: DPS has no registration for it yet.
    wait_until("serve's first answer from DPS", 60, || {
        answer().is_some_and(|(status, _)| status == "none")
    });
    assert_eq!(rig.state(serial).as_deref(), Some("uploaded"));

    let out = unit_register(&rig, &[&sim.state_dir]);
    assert!(out.status.success(), "unit-register: {}", text(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["status"], "assigned", "{line}");
    let hub = line["assignedHub"].as_str().unwrap().to_owned();
    let device = line["deviceId"].as_str().unwrap().to_owned();

    serve.wait_state(&rig, serial, "registered", 90);
    assert_eq!(answer(), Some(("assigned".into(), Some(hub.clone()))));
    let state_data: serde_json::Value = rig
        .db()
        .query_row(
            "SELECT state_data FROM units WHERE serial = ?1",
            [serial],
            |r| r.get::<_, String>(0),
        )
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(state_data["hub"], hub.as_str());
    assert_eq!(state_data["device_id"], device.as_str());
    let actors: Vec<String> = rig
        .db()
        .prepare("SELECT actor FROM audit_log WHERE event = 'unit.registered'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actors, ["station"]);
    serve.wait_logged("unit registered with DPS", 10);
    let log = serve.log_text();
    let noted = log
        .lines()
        .find(|l| l.contains("unit registered with DPS"))
        .unwrap();
    assert!(noted.contains(serial) && noted.contains(&hub), "{noted}");
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = rig.station(&["unit", "show", serial]);
    assert!(
        text(&shown).contains(&format!("registered: assigned to {hub} as device {device}")),
        "{}",
        text(&shown)
    );

    // The unit fails a later test and is scrapped while serve runs: serve's uploader disables
    // its enrollment in DPS, and the unit, registering again with its key, is refused.
    let out = rig.station(&[
        "unit",
        "scrap",
        serial,
        "--reason",
        "failed burn-in",
        "--actor",
        "eve",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "it had registered: device {device} stays in {hub} until it is deleted there"
        )),
        "{}",
        text(&out)
    );
    wait_until("serve's uploader delivers the block", 60, || {
        rig.db()
            .query_row(
                "SELECT count(*) FROM outbox WHERE kind = 'dps.block' AND state = 'done'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    });
    let (held, _) = rig.dps_enrollment(serial);
    assert_eq!(held.provisioning_status, Some(ProvisioningStatus::Disabled));
    let out = unit_register(&rig, &[&sim.state_dir]);
    let line = &json_lines(&out)[0];
    assert_eq!(line["status"], "disabled", "{line}");
    assert_eq!(rig.state(serial).as_deref(), Some("scrapped"));
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `station registrations ARGS`.
/// A symmetric-key unit `serial` (product sensor-key) on fixture key1, its lot open, provisioned
/// by alice with `station provision`; the simulated unit.
fn provisioned_key_unit(rig: &LineRig, serial: &str) -> UnitSim {
    let sim = UnitSim::start(
        &rig.dir.path().join(serial),
        &["--serial", serial, "--model", "SK-20"],
    );
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.key1]\nproduct = \"sensor-key\"\nserial_port = \"{}\"\n",
            sim.pty.display()
        ),
    );
    rig.open_lot("sensor-key");
    let out = rig.station(&[
        "provision",
        "--fixture",
        "key1",
        "--serial",
        serial,
        "--actor",
        "alice",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    sim
}

fn registrations(rig: &LineRig, args: &[&str]) -> std::process::Output {
    let mut all = vec!["registrations"];
    all.extend_from_slice(args);
    rig.station(&all)
}

/// Serial -> registration ID of the units matching `filter` (an SQL condition on `units`).
fn registration_ids(rig: &LineRig, filter: &str) -> BTreeMap<String, String> {
    rig.db()
        .prepare(&format!(
            "SELECT serial, registration_id FROM units WHERE {filter}"
        ))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Each unit's state and what the registration check recorded for it.
fn registration_records(rig: &LineRig) -> Vec<(String, String, String, String)> {
    rig.db()
        .prepare(
            "SELECT u.serial, u.state, u.state_data, coalesce(r.status || ' ' || r.checked_at, '')
             FROM units u LEFT JOIN dps_registrations r ON r.unit_id = u.id ORDER BY u.serial",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A supervisor's end-of-line registration from the unit's web page: the station registers a
/// symmetric-key unit with DPS on its behalf (as `station unit register`), and the page says
/// what DPS assigned; the unit turns `registered`, audited under the supervisor's name.
#[test]
fn a_supervisor_registers_a_unit_with_dps_from_its_web_page() {
    let rig = LineRig::new();
    let serial = "SK-000302";
    // serve's own check stays out of the way: the page's registration is what is recorded.
    rig.config(
        "60-upload.toml",
        "[upload]\ninterval_ms = 200\n[registrations]\ncheck_every_s = 0\n",
    );
    rig.config("70-web.toml", "[web]\nlisten = \"127.0.0.1:0\"\n");
    rig.add_user("eve", "supervisor", Some("field-check-pw-1"), None);
    let _sim = provisioned_key_unit(&rig, serial);
    let serve = StationServe::start(&rig, &[]);
    serve.wait_state(&rig, serial, "uploaded", 60);
    serve.wait_logged("web UI listening", 60);

    let page = web_as_eve(
        &rig,
        &[
            (true, &format!("/units/{serial}/register")),
            (false, &format!("/units/{serial}")),
        ],
    );
    assert!(
        page.contains(&format!(
            "Unit {serial} registered with DPS (local) by the station on its behalf: {serial} assigned to hub-"
        )) && page.contains("Recorded as registered."),
        "{page}"
    );
    assert_eq!(rig.state(serial).as_deref(), Some("registered"));
    let actors: Vec<String> = rig
        .db()
        .prepare("SELECT actor FROM audit_log WHERE event IN ('unit.register', 'unit.registered')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actors, ["eve", "eve"]);
    let id = RegistrationId::new(serial).unwrap();
    let rec = rig.dps(|c| async move { c.get_registration_state(&id).await.unwrap() });
    assert_eq!(rec.status, Some(RegistrationStatus::Assigned));
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}
