#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Symmetric-key units through the line with real parts: the group key goes from DPS into the
//! HSM once (`station group sync`), each unit's key is derived from it inside the HSM (or drawn
//! from the HSM's RNG for individual enrollments), written to the unit over the serial link and
//! proven; individual keys wait in the outbox sealed under the HSM's outbox key and are erased
//! once DPS holds them. No key is ever in the database in the clear.

use base64::Engine as _;
use hmac::Mac as _;

use station_e2e::line::{DpsService, LineRig, dps_primary_key};
use station_e2e::{UnitSim, text};

fn unit_key(sim: &UnitSim) -> (Vec<u8>, serde_json::Value) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sim.state_dir.join("unit.json")).unwrap()).unwrap();
    (
        hex::decode(state["symkey_hex"].as_str().expect("unit holds a key")).unwrap(),
        state,
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Neither the raw key nor its base64 is in the database or its WAL.
fn assert_key_not_stored(rig: &LineRig, key: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    for f in ["station.db", "station.db-wal"] {
        let Ok(bytes) = std::fs::read(rig.home.join(f)) else {
            continue;
        };
        assert!(!contains(&bytes, key), "raw key in {f}");
        assert!(!contains(&bytes, b64.as_bytes()), "base64 key in {f}");
    }
}

/// Random unit keys the station keeps sealed until their units are recorded.
fn kept_keys(rig: &LineRig) -> i64 {
    rig.db()
        .query_row("SELECT count(*) FROM unit_keys", [], |r| r.get(0))
        .unwrap()
}

/// A recorded random-key unit `serial` no longer has its key kept; once uploaded, DPS holds
/// `key`, the key the unit was locked with, and the station's files never held it in the clear.
fn uploaded_with_the_kept_key(rig: &LineRig, serial: &str, key: &[u8]) {
    assert_eq!(
        kept_keys(rig),
        0,
        "the key is erased once the outbox row holds it"
    );
    rig.upload_now();
    assert_eq!(rig.state(serial).as_deref(), Some("uploaded"));
    let (_, a) = rig.dps_enrollment(serial);
    let held = dps_primary_key(a).expect("DPS holds a primary key");
    assert_eq!(held, key, "DPS holds the key the unit was locked with");
    assert_key_not_stored(rig, key);
}

/// The arguments of `station provision` of `serial` on `fixture`, by alice.
fn provision_args<'a>(fixture: &'a str, serial: &'a str) -> [&'a str; 7] {
    [
        "provision",
        "--fixture",
        fixture,
        "--serial",
        serial,
        "--actor",
        "alice",
    ]
}

/// `station provision` of `serial` on `fixture`, by alice.
fn provision(rig: &LineRig, fixture: &str, serial: &str) -> std::process::Output {
    rig.station(&provision_args(fixture, serial))
}

/// A rig with one fixture `name` running `product` on a simulated unit `serial`, its lot open.
fn one_unit(name: &str, product: &str, serial: &str, model: &str) -> (LineRig, UnitSim) {
    let rig = LineRig::new();
    let sim = UnitSim::start(
        &rig.dir.path().join(serial),
        &["--serial", serial, "--model", model],
    );
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.{name}]\nproduct = \"{product}\"\nserial_port = \"{}\"\n",
            sim.pty.display()
        ),
    );
    rig.open_lot(product);
    (rig, sim)
}

/// Kills `station provision` in the record transaction of `serial`, after the unit was locked
/// with its key, then provisions again: the restart resumes the unit. Returns the key the unit
/// was locked with.
fn killed_in_the_record_then_resumed(
    rig: &LineRig,
    sim: &UnitSim,
    fixture: &str,
    serial: &str,
) -> Vec<u8> {
    let provision = provision_args(fixture, serial);
    let out = rig.station_env(&provision, &[("STATION_CRASH_AT", "before:recorded")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("aborting at before:recorded"),
        "{}",
        text(&out)
    );
    let (key, state) = unit_key(sim);
    assert_eq!(
        state["locked"], true,
        "the unit was locked before the record step"
    );
    assert_eq!(rig.state(serial).as_deref(), Some("key-injected"));
    let out = rig.station(&provision);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("recovered: "), "{}", text(&out));
    assert_eq!(rig.state(serial).as_deref(), Some("queued"));
    key
}

#[test]
fn a_group_unit_gets_a_key_derived_in_the_hsm_that_dps_accepts() {
    let (rig, sim) = one_unit("sym1", "sensor-sym", "SY-000001", "SY-10");
    // Without the group key in the HSM the unit fails with what to do.
    let out = provision(&rig, "sym1", "SY-000001");
    assert!(!out.status.success());
    assert!(text(&out).contains("station group sync"), "{}", text(&out));
    let out = rig.station(&["group", "sync", "--actor", "sup"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = provision(&rig, "sym1", "SY-000001");
    assert!(out.status.success(), "{}", text(&out));
    let (key, state) = unit_key(&sim);
    assert_eq!(state["locked"], true);
    let meta = state["symkey_meta"].as_array().unwrap();
    assert_eq!(meta[0], "sy-SY-000001");
    let scope = std::fs::read_to_string(rig.dir.path().join("dps/id-scope")).unwrap();
    assert_eq!(meta[1], scope.trim());
    // The unit's key is DPS's rule over the group key DPS holds.
    let group = dps::EnrollmentGroupId::new("sy-10-fleet".to_owned()).unwrap();
    let a = rig.dps(|c| async move { c.group_attestation(&group).await.unwrap() });
    let group_key = dps_primary_key(a).expect("DPS holds a primary key");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&group_key).unwrap();
    mac.update(b"sy-SY-000001");
    assert_eq!(mac.finalize().into_bytes().to_vec(), key);
    // The group covers the unit: its row is delivered once the group is confirmed.
    rig.upload_now();
    assert_eq!(rig.state("SY-000001").as_deref(), Some("uploaded"));
    assert_key_not_stored(&rig, &key);
    assert_key_not_stored(&rig, &group_key);
}

#[test]
fn an_individual_unit_key_is_sealed_in_the_outbox_and_erased_after_upload() {
    let (rig, sim) = one_unit("key1", "sensor-key", "SK-000001", "SK-20");
    let out = provision(&rig, "key1", "SK-000001");
    assert!(out.status.success(), "{}", text(&out));
    let (key, _) = unit_key(&sim);
    assert_eq!(key.len(), 64);
    let sealed: i64 = rig
        .db()
        .query_row(
            "SELECT sealed FROM outbox WHERE item_key = 'SK-000001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sealed, 1);
    assert_key_not_stored(&rig, &key);
    // The recorded enrollment body carries no keys.
    let body: String = rig
        .db()
        .query_row(
            "SELECT body FROM enrollments WHERE enrollment_id = 'SK-000001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!body.contains("primaryKey"), "{body}");

    rig.upload_now();
    assert_eq!(rig.state("SK-000001").as_deref(), Some("uploaded"));
    let (e, a) = rig.dps_enrollment("SK-000001");
    assert_eq!(
        serde_json::to_value(e.initial_twin.unwrap()).unwrap()["tags"]["operator"],
        "alice"
    );
    let held = dps_primary_key(a).expect("DPS holds a primary key");
    assert_eq!(held, key);
    let payload: Option<Vec<u8>> = rig
        .db()
        .query_row(
            "SELECT payload FROM outbox WHERE item_key = 'SK-000001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        payload.is_none(),
        "the sealed payload is erased after upload"
    );
    assert_key_not_stored(&rig, &key);
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_individual_unit_killed_after_its_key_was_locked_in_is_recorded_with_that_key_on_restart() {
    let (rig, sim) = one_unit("key1", "sensor-key", "SK-000002", "SK-20");
    // Killed before the record: the key left the station's memory with the process, but it
    // was kept sealed under the HSM's outbox key before the unit got it.
    let out = rig.station_env(
        &provision_args("key1", "SK-000002"),
        &[("STATION_CRASH_AT", "before:recorded")],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(kept_keys(&rig), 1);
    let (key, _) = unit_key(&sim);
    assert_key_not_stored(&rig, &key);
    // Killed once more at the same point of the resumed run, then resumed: still that key.
    let key = killed_in_the_record_then_resumed(&rig, &sim, "key1", "SK-000002");
    uploaded_with_the_kept_key(&rig, "SK-000002", &key);
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_individual_unit_found_verified_after_a_restart_is_recorded_with_its_kept_key() {
    let (rig, sim) = one_unit("key2", "sensor-key", "SK-000003", "SK-20");
    let provision = provision_args("key2", "SK-000003");
    let out = rig.station_env(&provision, &[("STATION_CRASH_AT", "before:recorded")]);
    assert!(!out.status.success(), "{}", text(&out));
    let (key, state) = unit_key(&sim);
    assert_eq!(state["locked"], true, "{state}");
    // The unit proved its key before the kill. A station that committed Verified on its own
    // left it there: the record is all that is left, from what the store kept.
    let changed = rig
        .db()
        .execute(
            "UPDATE units SET state = 'verified' WHERE serial = 'SK-000003'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let out = rig.station(&provision);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("recovered: "), "{}", text(&out));
    assert_eq!(rig.state("SK-000003").as_deref(), Some("queued"));
    uploaded_with_the_kept_key(&rig, "SK-000003", &key);
}

#[test]
fn a_group_unit_killed_after_its_key_was_locked_in_proves_the_derived_key_on_restart() {
    let (rig, sim) = one_unit("sym1", "sensor-sym", "SY-000002", "SY-10");
    let out = rig.station(&["group", "sync", "--actor", "sup"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = killed_in_the_record_then_resumed(&rig, &sim, "sym1", "SY-000002");
    assert_eq!(unit_key(&sim).0, key, "the unit kept its key");
    rig.upload_now();
    assert_eq!(rig.state("SY-000002").as_deref(), Some("uploaded"));
    assert_key_not_stored(&rig, &key);
}

/// The `unit.register` audit entries: (actor, whether DPS assigned the unit, what it said).
fn on_behalf_audits(rig: &LineRig) -> Vec<(String, bool, String)> {
    let db = rig.db();
    let mut st = db
        .prepare("SELECT actor, details FROM audit_log WHERE event = 'unit.register' ORDER BY seq")
        .unwrap();
    st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|row| {
            let (actor, details) = row.unwrap();
            let d: serde_json::Value = serde_json::from_str(&details).unwrap();
            (
                actor,
                d["assigned"].as_bool().unwrap(),
                d["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The hub the station recorded for `serial` (`dps_registrations`), if any.
fn recorded_hub(rig: &LineRig, serial: &str) -> Option<String> {
    rig.db()
        .query_row(
            "SELECT r.assigned_hub FROM dps_registrations r JOIN units u ON u.id = r.unit_id
             WHERE u.serial = ?1",
            [serial],
            |r| r.get(0),
        )
        .ok()
        .flatten()
}

/// Neither the key nor its base64 appears in what a command printed.
fn assert_key_not_printed(out: &std::process::Output, key: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    for stream in [&out.stdout, &out.stderr] {
        assert!(!contains(stream, b64.as_bytes()), "{}", text(out));
    }
}

#[test]
fn the_station_registers_a_group_unit_on_its_behalf_with_the_key_derived_again_in_the_hsm() {
    let (mut rig, sim) = one_unit("sym1", "sensor-sym", "SY-000003", "SY-10");
    let out = rig.station(&["group", "sync", "--actor", "sup"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = provision(&rig, "sym1", "SY-000003");
    assert!(out.status.success(), "{}", text(&out));
    let (key, _) = unit_key(&sim);
    let register = ["unit", "register", "SY-000003", "--actor", "eve"];

    // Before DPS holds its enrollment, the unit cannot register: said so, nothing recorded.
    let out = rig.station(&register);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unit SY-000003 is queued for DPS (outbox #")
            && text(&out)
                .contains("): DPS does not hold its enrollment yet, so it cannot register"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SY-000003").as_deref(), Some("queued"));
    assert!(on_behalf_audits(&rig).is_empty());

    rig.upload_now();
    assert_eq!(rig.state("SY-000003").as_deref(), Some("uploaded"));
    // Found by its registration ID too, in any case, as DPS compares them.
    let out = rig.station(&["unit", "register", "SY-SY-000003", "--actor", "eve"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("unit SY-000003: registered with DPS target local on its behalf: sy-SY-000003 assigned to hub-"),
        "{said}"
    );
    assert!(
        said.contains("unit SY-000003: recorded as registered"),
        "{said}"
    );
    assert_key_not_printed(&out, &key);
    assert_eq!(rig.state("SY-000003").as_deref(), Some("registered"));
    let hub = recorded_hub(&rig, "SY-000003").expect("the hub is recorded");
    // DPS's own record: the station's registration is the unit's, at the recorded hub.
    let rid = dps::RegistrationId::new("sy-SY-000003".to_owned()).unwrap();
    let rec = rig.dps(|c| async move { c.get_registration_state(&rid).await.unwrap() });
    assert_eq!(rec.assigned_hub.as_deref(), Some(hub.as_str()));
    assert_eq!(
        on_behalf_audits(&rig),
        vec![(
            "eve".to_owned(),
            true,
            format!("sy-SY-000003 assigned to {hub} as device sy-SY-000003 (initialAssignment)")
        )]
    );

    // Again: DPS assigns it again, the unit stays registered (not moved twice).
    let out = rig.station(&register);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unit SY-000003: recorded as registered already"),
        "{}",
        text(&out)
    );
    assert_eq!(on_behalf_audits(&rig).len(), 2);

    // DPS gone: a clear error, nothing recorded, the unit as it was.
    rig.dps.take().unwrap().stop();
    let out = rig.station(&[
        "unit",
        "register",
        "SY-000003",
        "--actor",
        "eve",
        "--wait-s",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(
            "registering unit SY-000003 with DPS target local failed (nothing was recorded)"
        ),
        "{}",
        text(&out)
    );
    assert_key_not_printed(&out, &key);
    assert_eq!(on_behalf_audits(&rig).len(), 2);
    assert_eq!(rig.state("SY-000003").as_deref(), Some("registered"));
    assert_key_not_stored(&rig, &key);
    rig.audit_verify();
}

#[test]
fn the_station_registers_an_individual_unit_with_the_key_its_enrollment_holds_and_records_a_refusal()
 {
    let (rig, sim) = one_unit("key1", "sensor-key", "SK-000004", "SK-20");
    let out = provision(&rig, "key1", "SK-000004");
    assert!(out.status.success(), "{}", text(&out));
    let (key, _) = unit_key(&sim);
    rig.upload_now();
    assert_eq!(rig.state("SK-000004").as_deref(), Some("uploaded"));

    // DPS disables the enrollment: the registration the station makes is refused, the refusal
    // audited and recorded, and the unit stays uploaded.
    let id = dps::RegistrationId::new("SK-000004".to_owned()).unwrap();
    let disable = |status| {
        let id = id.clone();
        rig.dps(|c| async move {
            let mut e = c.get_enrollment(&id).await.unwrap();
            e.attestation = c.enrollment_attestation(&id).await.unwrap();
            e.provisioning_status = Some(status);
            let etag = e.etag.clone();
            c.create_or_update_enrollment(&e, etag.as_deref())
                .await
                .unwrap();
        });
    };
    disable(dps::wire::ProvisioningStatus::Disabled);
    let register = ["unit", "register", "SK-000004", "--actor", "eve"];
    let out = rig.station(&register);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("DPS target local refused unit SK-000004's registration:")
            && text(&out).contains("disabled"),
        "{}",
        text(&out)
    );
    assert_key_not_printed(&out, &key);
    let audits = on_behalf_audits(&rig);
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert!(
        !audits[0].1 && audits[0].2.contains("disabled"),
        "{audits:?}"
    );
    assert_eq!(rig.state("SK-000004").as_deref(), Some("uploaded"));

    // Enabled again: the station reads the unit's key back from its enrollment and registers.
    disable(dps::wire::ProvisioningStatus::Enabled);
    let out = rig.station(&register);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unit SK-000004: recorded as registered"),
        "{}",
        text(&out)
    );
    assert_key_not_printed(&out, &key);
    assert_eq!(rig.state("SK-000004").as_deref(), Some("registered"));
    assert!(recorded_hub(&rig, "SK-000004").is_some());
    let shown = text(&rig.station(&["unit", "show", "SK-000004"]));
    assert!(
        shown.contains("DPS checked      local: assigned to hub-"),
        "{shown}"
    );
    assert_key_not_stored(&rig, &key);
    rig.audit_verify();
}

#[test]
fn a_lots_end_of_line_pass_registers_each_uploaded_unit_the_station_can_register() {
    let mut rig = LineRig::new();
    let sims: Vec<UnitSim> = ["SY-000011", "SY-000012"]
        .iter()
        .map(|s| {
            UnitSim::start(
                &rig.dir.path().join(s),
                &["--serial", s, "--model", "SY-10"],
            )
        })
        .collect();
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.sym1]\nproduct = \"sensor-sym\"\nserial_port = \"{}\"\n\
             [fixtures.sym2]\nproduct = \"sensor-sym\"\nserial_port = \"{}\"\n",
            sims[0].pty.display(),
            sims[1].pty.display()
        ),
    );
    rig.open_lot("sensor-sym");
    let out = rig.station(&["group", "sync", "--actor", "sup"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = provision(&rig, "sym1", "SY-000011");
    assert!(out.status.success(), "{}", text(&out));
    rig.upload_now();
    let out = provision(&rig, "sym2", "SY-000012");
    assert!(out.status.success(), "{}", text(&out));
    let lot: String = rig
        .db()
        .query_row(
            "SELECT lot_id FROM units WHERE serial = 'SY-000011'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let pass = |rig: &LineRig| rig.station(&["unit", "register", "--lot", &lot, "--actor", "eve"]);

    // One unit uploaded, one still queued: the uploaded one is registered, the other counted.
    let out = pass(&rig);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unit SY-000011: recorded as registered")
            && !text(&out).contains("unit SY-000012:")
            && text(&out).contains(&format!(
                "lot {lot}: 1 registered now, 0 refused or failed, 0 registered before, 1 not uploaded yet"
            )),
        "{}",
        text(&out)
    );
    // A lot-release gate fails while a unit that passed the line has not reached DPS, and
    // names it; it takes the unit's registration ID as well as its serial.
    let gate = |rig: &LineRig, extra: &[&str]| {
        let mut args = vec![
            "registrations",
            "--lot",
            &lot,
            "--expect-all",
            "--actor",
            "eve",
        ];
        args.extend_from_slice(extra);
        rig.station(&args)
    };
    let out = gate(&rig, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(
            "  not uploaded yet, so not registered (1 unit(s); see station upload --status):\n    SY-000012    queued\n"
        ) && text(&out).contains("station: not every unit is registered (--expect-all)"),
        "{}",
        text(&out)
    );
    let out = gate(&rig, &["--serial", "sy-SY-000011"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = gate(&rig, &["--serial", "SY-999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(
            "error: no unit with serial, registration ID or device ID \"SY-999999\" in this station's database"
        ),
        "{}",
        text(&out)
    );
    rig.upload_now();
    // DPS gone for a moment: the unit is not registered, the pass says so and fails.
    let dps = rig.dps.take().unwrap();
    let (dir, port) = (dps.dir.clone(), dps.port);
    dps.stop();
    let out = rig.station(&[
        "unit", "register", "--lot", &lot, "--actor", "eve", "--wait-s", "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "unit SY-000012: not registered: registering unit SY-000012 with DPS target local failed (nothing was recorded)"
        ) && text(&out).contains(&format!(
            "lot {lot}: 0 registered now, 1 refused or failed, 1 registered before, 0 not uploaded yet"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SY-000012").as_deref(), Some("uploaded"));
    // Without --wait-s the configured wait holds: 0 is one try, where a second try would come
    // only after the client's poll interval.
    rig.config(
        "75-register-wait.toml",
        "[registrations]\nregister_wait_s = 0\n",
    );
    let out = rig.station(&["unit", "register", "SY-000012", "--actor", "eve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "registering unit SY-000012 with DPS target local failed (nothing was recorded)"
        ) && text(&out).contains("gave up after 1 attempt"),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SY-000012").as_deref(), Some("uploaded"));
    std::fs::remove_file(rig.home.join("config.d/75-register-wait.toml")).unwrap();
    rig.dps = Some(DpsService::start_at(
        &dir,
        &format!("127.0.0.1:{port}"),
        &[],
    ));
    let out = pass(&rig);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unit SY-000012: recorded as registered")
            && text(&out).contains(&format!(
                "lot {lot}: 1 registered now, 0 refused or failed, 1 registered before, 0 not uploaded yet"
            )),
        "{}",
        text(&out)
    );
    for s in ["SY-000011", "SY-000012"] {
        assert_eq!(rig.state(s).as_deref(), Some("registered"));
    }
    let out = gate(&rig, &["--recheck"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(on_behalf_audits(&rig).len(), 2);
    rig.audit_verify();
}

/// The unit registering with DPS as it would in the field, with the key it holds.
fn field_register(rig: &LineRig, rid: &str, key: &[u8]) -> std::process::Output {
    let dps = rig.dps.as_ref().expect("DPS running");
    std::process::Command::new(station_e2e::bin("dps"))
        .args(["register", "--data"])
        .arg(&dps.dir)
        .args(["--registration-id", rid, "--key-env", "UNIT_KEY"])
        .args(["--max-wait", "10"])
        .env(
            "UNIT_KEY",
            base64::engine::general_purpose::STANDARD.encode(key),
        )
        .output()
        .unwrap()
}

/// A group member that failed a later test is scrapped: a disabled individual enrollment made
/// for it blocks it in DPS though its group would take it, and the line never runs it again.
#[test]
fn a_scrapped_group_member_can_no_longer_register_and_is_never_provisioned_again() {
    let (rig, sim) = one_unit("sym1", "sensor-sym", "SY-000021", "SY-10");
    let out = rig.station(&["group", "sync", "--actor", "sup"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = provision(&rig, "sym1", "SY-000021");
    assert!(out.status.success(), "{}", text(&out));
    rig.upload_now();
    let (key, _) = unit_key(&sim);
    let out = field_register(&rig, "sy-SY-000021", &key);
    assert!(out.status.success(), "{}", text(&out));

    // Bad input changes nothing: no reason, an unknown unit.
    let out = rig.station(&[
        "unit",
        "scrap",
        "SY-000021",
        "--reason",
        " ",
        "--actor",
        "sup",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("give the reason the unit is scrapped (1 to 200 characters)"),
        "{}",
        text(&out)
    );
    let out = rig.station(&[
        "unit",
        "scrap",
        "SY-999999",
        "--reason",
        "x",
        "--actor",
        "sup",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(rig.state("SY-000021").as_deref(), Some("uploaded"));

    let out = rig.station(&[
        "unit",
        "scrap",
        "sy-SY-000021",
        "--reason",
        "failed final RF test",
        "--actor",
        "sup",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unit SY-000021: scrapped (it was uploaded): failed final RF test")
            && text(&out).contains(
                "DPS target local will refuse sy-SY-000021: the block is queued; station serve's uploader sends it, or `station upload --now`"
            ),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SY-000021").as_deref(), Some("scrapped"));
    let shown = rig.station(&["unit", "show", "SY-000021"]);
    assert!(
        text(&shown).contains("scrapped (was uploaded): failed final RF test"),
        "{}",
        text(&shown)
    );

    // Delivered: DPS holds a disabled individual enrollment for it, and refuses it.
    rig.upload_now();
    let (held, _) = rig.dps_enrollment("sy-SY-000021");
    assert_eq!(
        held.provisioning_status,
        Some(dps::wire::ProvisioningStatus::Disabled)
    );
    let out = field_register(&rig, "sy-SY-000021", &key);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the individual enrollment sy-SY-000021"),
        "refused for its own enrollment, not let in by the group: {}",
        text(&out)
    );
    let blocked: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE event = 'dps.blocked' AND subject = 'sy-SY-000021'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(blocked, 1);

    // The station does not register it on its behalf either.
    let out = rig.station(&["unit", "register", "SY-000021", "--actor", "sup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("unit SY-000021 was scrapped (failed final RF test): DPS is told to refuse it, and the station does not register it"),
        "{}",
        text(&out)
    );

    // Scrapping is final: again changes nothing, and a scan is refused.
    let out = rig.station(&[
        "unit",
        "scrap",
        "SY-000021",
        "--reason",
        "again",
        "--actor",
        "sup",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out)
            .contains("unit SY-000021: scrapped already (failed final RF test); nothing changed"),
        "{}",
        text(&out)
    );
    let out = provision(&rig, "sym1", "SY-000021");
    assert!(!out.status.success());
    assert!(
        text(&out).contains(
            "unit SY-000021 was scrapped (failed final RF test): it is never provisioned again"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(rig.state("SY-000021").as_deref(), Some("scrapped"));
    rig.audit_verify();
}

/// An individual unit scrapped before its enrollment reached DPS: the enrollment (with the
/// unit's sealed key) is cancelled, never sent, and there is nothing to block.
#[test]
fn an_individual_unit_scrapped_before_upload_never_reaches_dps() {
    let (rig, sim) = one_unit("key1", "sensor-key", "SK-000021", "SK-20");
    let out = provision(&rig, "key1", "SK-000021");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rig.state("SK-000021").as_deref(), Some("queued"));
    let out = rig.station(&[
        "unit",
        "scrap",
        "SK-000021",
        "--reason",
        "bent pins",
        "--actor",
        "sup",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("never reached DPS, cancelled: outbox #")
            && text(&out).contains("DPS holds nothing that lets it register: nothing to block"),
        "{}",
        text(&out)
    );
    rig.upload_now();
    let rid = dps::RegistrationId::new("SK-000021").unwrap();
    let missing =
        rig.dps(|c| async move { c.get_enrollment(&rid).await.err().and_then(|e| e.status()) });
    assert_eq!(
        missing,
        Some(404),
        "the cancelled enrollment never reached DPS"
    );
    let (key, _) = unit_key(&sim);
    assert_key_not_stored(&rig, &key);
    let cancelled: String = rig
        .db()
        .query_row(
            "SELECT status FROM enrollments WHERE enrollment_id = 'SK-000021'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cancelled, "cancelled");
    rig.audit_verify();
}

/// A group member whose key reached it but whose proof failed holds a key its group accepts:
/// scrapping it blocks it in the group's DPS target though the station never queued it.
#[test]
fn a_group_member_that_failed_after_its_key_was_injected_is_blocked_when_scrapped() {
    let rig = LineRig::new();
    let sim = UnitSim::start(
        &rig.dir.path().join("SY-000031"),
        &["--serial", "SY-000031", "--model", "SY-10", "--wrong-key"],
    );
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.sym1]\nproduct = \"sensor-sym\"\nserial_port = \"{}\"\n",
            sim.pty.display()
        ),
    );
    rig.open_lot("sensor-sym");
    let out = rig.station(&["group", "sync", "--actor", "sup"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = provision(&rig, "sym1", "SY-000031");
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(rig.state("SY-000031").as_deref(), Some("failed"));
    let (key, _) = unit_key(&sim);
    let out = field_register(&rig, "sy-SY-000031", &key);
    assert!(
        out.status.success(),
        "its group takes the key it holds: {}",
        text(&out)
    );

    let out = rig.station(&[
        "unit",
        "scrap",
        "SY-000031",
        "--reason",
        "proof failed",
        "--actor",
        "sup",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unit SY-000031: scrapped (it was failed): proof failed")
            && text(&out).contains("DPS target local will refuse sy-SY-000031"),
        "{}",
        text(&out)
    );
    rig.upload_now();
    let out = field_register(&rig, "sy-SY-000031", &key);
    assert!(!out.status.success(), "{}", text(&out));
    rig.audit_verify();
}
