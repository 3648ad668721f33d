#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A lot run by `station serve` + `line-sim` where two products (TPM and X.509 over the link)
//! are made for an air-gapped plant: their DPS target has `delivery = "export"`. The uploader
//! delivers the other products' enrollments and never tries theirs; while `serve` keeps
//! running, `station upload --export`, `--deliver` (with no station home) and `--receipt`
//! carry them to DPS by file. In the end DPS holds exactly one enrollment per unit enrolled
//! individually, every unit is uploaded once, and the audit chain holds. Once the units have
//! registered in the field, the station learns which did the same way: `station registrations
//! --export-query`, `--ask` (no station home) and `--answers`; an answers file changed in
//! transfer is refused and records nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use station_e2e::line::{LineRig, wait_until};
use station_e2e::{bin, text};

const UNITS: i64 = 12;
const OFFLINE: &str = "plant-offline";

fn count(rig: &LineRig, sql: &str) -> i64 {
    rig.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// `station ARGS FILE` where DPS is reachable: no station home, the service's connection
/// string and CA given on the command line; it must make no home either.
fn where_dps_is(rig: &LineRig, args: &[&str], file: &Path) -> std::process::Output {
    let dps_dir = rig.dir.path().join("dps");
    let out = Command::new(bin("station"))
        .env_remove("STATION_HOME")
        .current_dir(rig.dir.path())
        .args(args)
        .arg(file)
        .arg("--connection-string-file")
        .arg(dps_dir.join("connection-string"))
        .arg("--ca-file")
        .arg(dps_dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        !rig.dir.path().join("var").exists(),
        "{args:?} made a station home"
    );
    out
}

/// `station upload --export FILE --target OFFLINE` on the station; the export's stdout.
fn export(rig: &LineRig, file: &Path) -> String {
    let o = rig.station(&[
        "upload",
        "--export",
        file.to_str().unwrap(),
        "--target",
        OFFLINE,
        "--actor",
        "alice",
    ]);
    assert!(o.status.success(), "export: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An export delivered where DPS is reachable and its receipt recorded back on the station;
/// the receipt's stdout.
fn deliver_and_receipt(rig: &LineRig, file: &Path) -> String {
    let d = where_dps_is(rig, &["upload", "--deliver"], file);
    assert!(d.status.success(), "deliver: {}", text(&d));
    let mut receipt = file.as_os_str().to_owned();
    receipt.push(".receipt");
    let r = rig.station(&[
        "upload",
        "--receipt",
        Path::new(&receipt).to_str().unwrap(),
        "--actor",
        "alice",
    ]);
    assert!(r.status.success(), "receipt: {}", text(&r));
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[test]
fn an_air_gapped_target_reaches_dps_by_file_while_the_line_runs() {
    let rig = LineRig::new();
    let badge = "BADGE-7733-alice";
    let dps_dir = rig.dir.path().join("dps");
    let id_scope = std::fs::read_to_string(dps_dir.join("id-scope")).unwrap();
    rig.config(
        "30-offline.toml",
        &format!(
            "[dps.targets.{OFFLINE}]\ndelivery = \"export\"\nid_scope = \"{}\"\n",
            id_scope.trim()
        ),
    );
    for p in ["sensor-tpm", "sensor-x509"] {
        let path = rig.home.join(format!("products/{p}.toml"));
        let profile = std::fs::read_to_string(&path).unwrap();
        assert!(profile.contains("dps_target = \"local\""), "{profile}");
        std::fs::write(
            &path,
            profile.replace(
                "dps_target = \"local\"",
                &format!("dps_target = \"{OFFLINE}\""),
            ),
        )
        .unwrap();
    }
    let serve = rig.run_demo_lot(badge, UNITS);
    let offline_rows = format!(
        "SELECT count(*) FROM outbox WHERE destination = 'dps:{OFFLINE}' AND state = 'pending'"
    );
    let offline = count(&rig, &offline_rows);
    assert!(offline > 0, "some units are for the air-gapped target");
    // The online target drains; the air-gapped one is never tried.
    wait_until("the online target's rows delivered", 120, || {
        count(
            &rig,
            &format!(
                "SELECT count(*) FROM outbox WHERE destination != 'dps:{OFFLINE}' AND state != 'done'"
            ),
        ) == 0
    });
    assert_eq!(
        count(
            &rig,
            &format!(
                "SELECT count(*) FROM outbox WHERE destination = 'dps:{OFFLINE}'
                 AND (attempts > 0 OR last_error IS NOT NULL)"
            )
        ),
        0,
        "the uploader tried an air-gapped row"
    );
    assert_eq!(
        count(&rig, "SELECT count(*) FROM units WHERE state = 'queued'"),
        offline
    );

    // While serve runs: export, deliver elsewhere, bring the receipt back.
    let file = rig.dir.path().join("offline.export");
    export(&rig, &file);
    let status = rig.station(&["upload", "--status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("still travelling"),
        "{}",
        text(&status)
    );
    let r = deliver_and_receipt(&rig, &file);
    assert!(r.contains(&format!("delivered {offline}")), "{r}");

    assert_eq!(
        count(&rig, "SELECT count(*) FROM units WHERE state = 'uploaded'"),
        UNITS
    );
    assert_eq!(
        count(&rig, "SELECT count(*) FROM outbox WHERE state != 'done'"),
        0
    );
    let wanted: BTreeSet<String> = {
        let db = rig.db();
        let mut st = db
            .prepare(
                "SELECT u.registration_id FROM units u JOIN outbox o ON o.unit_id = u.id
                 WHERE o.kind = 'dps.individual-enrollment'",
            )
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let held = rig.dps(|c| async move { c.list_enrollments(100).await.unwrap() });
    let held_ids: Vec<String> = held
        .iter()
        .map(|e| e.registration_id.as_str().to_owned())
        .collect();
    assert_eq!(held_ids.len(), wanted.len(), "one enrollment per unit");
    assert_eq!(held_ids.into_iter().collect::<BTreeSet<_>>(), wanted);
    let log = serve.log_text();
    assert!(
        !log.contains("outbox delivery failed"),
        "the uploader reported a failed delivery:\n{log}"
    );
    drop(serve);

    // In the field every unit registers; the station cannot ask DPS about the air-gapped ones.
    let out = Command::new(bin("unit-register"))
        .arg(rig.dir.path().join("line"))
        .args(["--id-scope", id_scope.trim()])
        .args([
            "--endpoint",
            &format!("localhost:{}", rig.dps.as_ref().unwrap().port),
        ])
        .arg("--ca-file")
        .arg(dps_dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "unit-register: {}", text(&out));
    let offline_units = format!(
        "SELECT count(*) FROM units u JOIN enrollments e ON e.unit_id = u.id
         WHERE e.dps_target = '{OFFLINE}' AND u.state = 'registered'"
    );
    let c = rig.station(&["registrations", "--actor", "alice"]);
    assert!(
        String::from_utf8_lossy(&c.stdout).contains("not asked, delivered by export"),
        "{}",
        text(&c)
    );
    assert_eq!(count(&rig, &offline_units), 0);

    // So it asks by file.
    let query = rig.dir.path().join("offline.query");
    let q = rig.station(&[
        "registrations",
        "--export-query",
        query.to_str().unwrap(),
        "--actor",
        "alice",
    ]);
    assert!(q.status.success(), "export-query: {}", text(&q));
    assert!(
        String::from_utf8_lossy(&q.stdout)
            .contains(&format!("{offline} unit(s) of DPS target {OFFLINE}")),
        "{}",
        text(&q)
    );
    let a = where_dps_is(&rig, &["registrations", "--ask"], &query);
    assert!(a.status.success(), "ask: {}", text(&a));
    assert!(
        String::from_utf8_lossy(&a.stdout).contains(&format!("{offline} assigned a hub")),
        "{}",
        text(&a)
    );
    let answers = rig.dir.path().join("offline.query.answers");

    // A file changed on the way is refused, and nothing is recorded.
    let changed = rig.dir.path().join("changed.answers");
    let text_of = std::fs::read_to_string(&answers).unwrap();
    std::fs::write(&changed, text_of.replacen("hub-", "hub-x", 1)).unwrap();
    let bad = rig.station(&[
        "registrations",
        "--answers",
        changed.to_str().unwrap(),
        "--actor",
        "alice",
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("SHA-256"), "{}", text(&bad));
    assert_eq!(count(&rig, &offline_units), 0);

    // Answers to another station's query are refused too.
    let theirs = rig.dir.path().join("theirs.answers");
    let mut read = station::outbox::transfer::read_answers(&answers).unwrap();
    read.header.station = "station-7".into();
    station::outbox::transfer::write_answers(&theirs, &read.header, &read.items).unwrap();
    let other = rig.station(&[
        "registrations",
        "--answers",
        theirs.to_str().unwrap(),
        "--actor",
        "alice",
    ]);
    assert!(!other.status.success());
    assert!(
        text(&other).contains("answers a query of station station-7, not of this station"),
        "{}",
        text(&other)
    );
    assert_eq!(count(&rig, &offline_units), 0);

    let audited =
        "SELECT count(*) FROM audit_log WHERE event = 'unit.registered' AND actor = 'alice'";
    let before = count(&rig, audited);
    let r = rig.station(&[
        "registrations",
        "--answers",
        answers.to_str().unwrap(),
        "--actor",
        "alice",
    ]);
    assert!(r.status.success(), "answers: {}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains(&format!("({offline} newly recorded)")),
        "{}",
        text(&r)
    );
    assert_eq!(count(&rig, &offline_units), offline);
    assert_eq!(
        count(&rig, audited) - before,
        offline,
        "each recorded unit is audited"
    );

    // One of them is scrapped: its block travels by file as its enrollment did, and DPS
    // disables its enrollment when the export is delivered.
    let (serial, rid): (String, String) = rig
        .db()
        .query_row(
            &format!(
                "SELECT u.serial, u.registration_id FROM units u JOIN enrollments e ON e.unit_id = u.id
                 WHERE e.dps_target = '{OFFLINE}' ORDER BY u.id LIMIT 1"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let out = rig.station(&[
        "unit",
        "scrap",
        &serial,
        "--reason",
        "water damage",
        "--actor",
        "alice",
    ]);
    assert!(out.status.success(), "scrap: {}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "DPS target {OFFLINE} will refuse {rid}: the block is queued; it goes with the next `station upload --export FILE --target {OFFLINE}`"
        )),
        "{}",
        text(&out)
    );
    let file = rig.dir.path().join("blocks.export");
    let o = export(&rig, &file);
    assert!(
        o.contains("0 individual enrollments, 0 group members, 1 scrapped unit(s) to block"),
        "{o}"
    );
    let r = deliver_and_receipt(&rig, &file);
    assert!(r.contains("delivered 1"), "{r}");
    let (held, _) = rig.dps_enrollment(&rid);
    assert_eq!(
        held.provisioning_status,
        Some(dps::wire::ProvisioningStatus::Disabled)
    );
    assert_eq!(
        count(&rig, "SELECT count(*) FROM outbox WHERE state != 'done'"),
        0
    );
    assert_eq!(
        count(
            &rig,
            &format!(
                "SELECT count(*) FROM audit_log WHERE event = 'dps.blocked' AND subject = '{rid}'"
            )
        ),
        1
    );
    rig.audit_verify();
}
