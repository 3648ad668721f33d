#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash safety: `station serve` is killed (SIGKILL, or an abort at a crash point) 22 times during
//! a lot on the demo's four fixtures (and one of random-key units) and restarted each time with the
//! units still on their fixtures. Afterwards no acknowledged record is lost, no unit has two live
//! certificates, every certificate signed is recorded (and the one each unit holds is its live
//! one), DPS holds exactly one enrollment per passed individual unit, the outbox drains and the
//! audit chain verifies. The run prints its seed and every kill; `CRASH_SEED=<n>` replays it.

use station_e2e::crash::{self, CrashConfig};

#[test]
fn killing_the_station_during_a_lot_loses_and_doubles_nothing() {
    let kills = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(22);
    let report = crash::run(&CrashConfig::from_env(kills));
    crash::print_report(&report);
    assert!(
        report.kills >= 20 || kills < 20,
        "only {} kills",
        report.kills
    );
    assert_eq!(report.passed, report.units, "every unit ends passed");
    assert!(
        report.violations.is_empty(),
        "seed {} (replay with CRASH_SEED={}): {:#?}",
        report.seed,
        report.seed,
        report.violations
    );
}

/// The checks themselves: a short run whose database and DPS are then broken on purpose (a
/// second live certificate nobody signed, a passed unit set back, an enrollment removed from
/// DPS, a random-key unit's key changed in its flash) must report each of those.
#[test]
fn the_crash_checks_catch_a_lost_record_a_second_certificate_and_a_missing_enrollment() {
    let mut cfg = CrashConfig::from_env(2);
    cfg.cover_all = false;
    let broken = std::cell::RefCell::new(Vec::<String>::new());
    let report = crash::run_with(&cfg, &|rig| {
        let db = rig.db();
        let x509: String = db
            .query_row(
                "SELECT serial FROM units WHERE serial LIKE 'SX-%' AND state = 'uploaded' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        db.execute(
            "INSERT INTO certificates (issuer_key_id, serial_hex, unit_id, registration_id, subject, profile,
             not_before, not_after, fingerprint_sha256, der, status, issued_at)
             SELECT c.issuer_key_id, c.serial_hex || 'ff', c.unit_id, c.registration_id, c.subject,
             c.profile, c.not_before, c.not_after, c.fingerprint_sha256, x'00', 'live', c.issued_at
             FROM certificates c JOIN units u ON u.id = c.unit_id WHERE u.serial = ?1 AND c.status = 'live'",
            [&x509],
        )
        .unwrap();
        let tpm: String = db
            .query_row(
                "SELECT serial FROM units WHERE serial LIKE 'ST-%' AND state = 'uploaded' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        db.execute(
            "UPDATE units SET state = 'verified', state_data = '{}' WHERE serial = ?1",
            [&tpm],
        )
        .unwrap();
        let gw: String = db
            .query_row(
                "SELECT registration_id FROM units WHERE serial LIKE 'GW-%' AND state = 'uploaded' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let rid = dps::RegistrationId::new(gw.clone()).unwrap();
        rig.dps(|c| async move { c.delete_enrollment(&rid, None).await })
            .unwrap();
        let tpm_rid: String = db
            .query_row(
                "SELECT registration_id FROM units WHERE serial = ?1",
                [&tpm],
                |r| r.get(0),
            )
            .unwrap();
        // The key in a random-key unit's flash changed behind the station's back.
        let sk: String = db
            .query_row(
                "SELECT serial FROM units WHERE serial LIKE 'SK-%' AND state = 'uploaded' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let flash = rig
            .dir
            .path()
            .join("units/key-1")
            .join(&sk)
            .join("unit.json");
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&flash).unwrap()).unwrap();
        let key = state["symkey_hex"].as_str().unwrap().to_owned();
        let other = if key.starts_with('0') { "1" } else { "0" };
        state["symkey_hex"] = format!("{other}{}", &key[1..]).into();
        std::fs::write(&flash, serde_json::to_vec(&state).unwrap()).unwrap();
        broken
            .borrow_mut()
            .extend([x509, tpm, gw, tpm_rid.to_lowercase(), sk]);
    });
    crash::print_report(&report);
    let all = report.violations.join("\n");
    assert!(all.contains("has 2 live certificates"), "{all}");
    assert!(all.contains("ca.issue audit entries"), "{all}");
    assert!(all.contains("was seen passed"), "{all}");
    assert!(all.contains("DPS lacks the enrollment"), "{all}");
    assert!(
        all.contains("DPS does not hold the key the unit was locked with"),
        "{all}"
    );
    // Nothing else: every violation is about what was broken here.
    let broken = broken.into_inner();
    for v in &report.violations {
        assert!(
            v.contains("ca.issue")
                || v.contains("individual enrollments recorded")
                || broken.iter().any(|b| v.contains(b.as_str())),
            "unexpected violation: {v}"
        );
    }
}
