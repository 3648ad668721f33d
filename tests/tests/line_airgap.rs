#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A lot run by `station serve` + `line-sim` where two products (TPM and X.509 over the link)
//! are made for an air-gapped plant: their DPS target has `delivery = "export"`. The uploader
//! delivers the other products' enrollments and never tries theirs; while `serve` keeps
//! running, `station upload --export`, `--deliver` (with no station home) and `--receipt`
//! carry them to DPS by file. In the end DPS holds exactly one enrollment per unit enrolled
//! individually, every unit is uploaded once, and the audit chain holds.

use std::collections::BTreeSet;
use std::process::Command;

use station_e2e::line::{LineRig, wait_until};
use station_e2e::{bin, text};

const UNITS: i64 = 12;
const OFFLINE: &str = "plant-offline";

fn count(rig: &LineRig, sql: &str) -> i64 {
    rig.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
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
    let status = rig.station(&["upload", "--status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("still travelling"),
        "{}",
        text(&status)
    );
    let d = Command::new(bin("station"))
        .env_remove("STATION_HOME")
        .current_dir(rig.dir.path())
        .args(["upload", "--deliver"])
        .arg(&file)
        .arg("--connection-string-file")
        .arg(dps_dir.join("connection-string"))
        .arg("--ca-file")
        .arg(dps_dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(d.status.success(), "deliver: {}", text(&d));
    assert!(
        !rig.dir.path().join("var").exists(),
        "--deliver made no station home"
    );
    let receipt = rig.dir.path().join("offline.export.receipt");
    let r = rig.station(&[
        "upload",
        "--receipt",
        receipt.to_str().unwrap(),
        "--actor",
        "alice",
    ]);
    assert!(r.status.success(), "receipt: {}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains(&format!("delivered {offline}")),
        "{}",
        text(&r)
    );

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
    rig.audit_verify();
}
