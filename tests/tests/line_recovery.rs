#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Restart recovery: units a crashed station left mid-run are resumed where the step is
//! idempotent (an identified unit runs on and passes) and failed where it is not (a certificate
//! issued but never confirmed stays recorded; the retry supersedes it, so the unit ends with
//! exactly one live certificate).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use station::config::StoreConfig;
use station::ids::StationId;
use station::line::state::UnitState;
use station::line::units::{self, Begin, Facts, NewRun};
use station::store::Store;
use station_e2e::line::LineRig;
use station_e2e::{UnitSim, bin};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Leaves `serial` as a crashed station would: run started on `fixture`, moved to `states`.
fn left_mid_run(rig: &LineRig, serial: &str, fixture: &str, states: Vec<UnitState>) -> i64 {
    let mut store = Store::open(&rig.home.join("station.db"), &StoreConfig::default()).unwrap();
    let lot: String = store
        .conn()
        .query_row(
            "SELECT id FROM lots WHERE product = 'sensor-x509' AND status = 'open'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let st = StationId::fallback();
    let tx = store.conn_mut().transaction().unwrap();
    let Begin::Started { unit_id, .. } = units::begin(
        &tx,
        &st,
        &NewRun {
            serial,
            product: "sensor-x509",
            lot_id: &lot,
            fixture,
            operator: Some("alice"),
            attestation: "x509-link",
        },
    )
    .unwrap() else {
        panic!("run not started")
    };
    for s in states {
        units::transition(&tx, &st, "alice", unit_id, s, &Facts::default()).unwrap();
    }
    tx.commit().unwrap();
    unit_id
}

#[test]
fn a_restart_resumes_what_is_idempotent_and_fails_an_unconfirmed_certificate() {
    let rig = LineRig::new();
    rig.open_lot("sensor-x509");
    let a = UnitSim::start(
        &rig.dir.path().join("a"),
        &["--serial", "SX-000005", "--model", "SX-100"],
    );
    let b = UnitSim::start(
        &rig.dir.path().join("b"),
        &["--serial", "SX-000006", "--model", "SX-100"],
    );
    rig.config(
        "30-fixtures.toml",
        &format!(
            "[fixtures.fx1]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n[fixtures.fx2]\nproduct = \"sensor-x509\"\nserial_port = \"{}\"\n",
            a.pty.display(),
            b.pty.display()
        ),
    );
    left_mid_run(
        &rig,
        "SX-000005",
        "fx1",
        vec![UnitState::Identified {
            model: "SX-100".into(),
            hw_rev: "A1".into(),
            fw_version: "1.0.0".into(),
        }],
    );
    let b_id = left_mid_run(
        &rig,
        "SX-000006",
        "fx2",
        vec![
            UnitState::KeyReady {
                registration_id: "SX-000006".into(),
                material: "spki-sha256:00".into(),
            },
            UnitState::CertificateIssued { certificate_id: 1 },
        ],
    );
    // The certificate the crashed run had signed and recorded.
    rig.db()
        .execute(
            "INSERT INTO certificates (issuer_key_id, serial_hex, unit_id, registration_id, subject, profile,
             not_before, not_after, fingerprint_sha256, der, status, issued_at)
             VALUES ('k', '01', ?1, 'SX-000006', 'CN=SX-000006', 'device', 't', 't', 'f', x'00', 'issued', 't')",
            [b_id],
        )
        .unwrap();

    let mut serve = Serve(
        Command::new(bin("station"))
            .arg("--home")
            .arg(&rig.home)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // The daemon's uploader may deliver the resumed unit at once: queued or uploaded.
    while !matches!(
        rig.state("SX-000005").as_deref(),
        Some("queued" | "uploaded")
    ) || rig.state("SX-000006").as_deref() != Some("failed")
    {
        assert!(
            Instant::now() < deadline,
            "recovery did not finish: {:?} {:?}",
            rig.state("SX-000005"),
            rig.state("SX-000006")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let reason: String = rig
        .db()
        .query_row("SELECT fail_reason FROM runs r JOIN units u ON u.id = r.unit_id WHERE u.serial = 'SX-000006'", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("before the unit confirmed it"), "{reason}");
    // The resumed unit ran on from identify and got exactly one live certificate.
    let live = |serial: &str| -> i64 {
        rig.db()
            .query_row(
                "SELECT count(*) FROM certificates c JOIN units u ON u.id = c.unit_id WHERE u.serial = ?1 AND c.status = 'live'",
                [serial],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(live("SX-000005"), 1);
    assert_eq!(live("SX-000006"), 0);

    // The operator retries SX-000006: the old certificate is superseded, a new one is live.
    let out = rig.station(&[
        "provision",
        "--fixture",
        "fx2",
        "--serial",
        "SX-000006",
        "--actor",
        "alice",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(live("SX-000006"), 1);
    let superseded: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM certificates WHERE serial_hex = '01' AND status = 'superseded'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(superseded, 1);
    let out = rig.station(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
