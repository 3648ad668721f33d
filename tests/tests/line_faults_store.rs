#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The database disk full, simulated with the station's own safety limit (`[store]
//! max_size_mb`, SQLite's max_page_count on every connection): a new unit is refused with
//! "database full" before anything about it is written; the units already recorded stay, the
//! audit chain verifies, and once the limit is raised the refused unit runs.

use station_e2e::line::{LineRig, plug};
use station_e2e::{UnitSim, text};

#[test]
fn a_full_database_refuses_new_units_and_loses_nothing() {
    let rig = LineRig::new();
    // The fixture's port is a stable name re-pointed at each unit as it is plugged in.
    let port = rig.x509_fixture();
    let a = UnitSim::start(
        &rig.dir.path().join("a"),
        &["--serial", "SX-000001", "--model", "SX-100"],
    );
    plug(&port, &a.pty);
    let out = rig.provision("SX-000001");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rig.state("SX-000001").as_deref(), Some("queued"));

    // Limit the database to 2 MiB and fill it to just below that with data that is not the
    // station's (TEST ONLY: stands in for a disk that filled up over a long run).
    rig.config("50-store.toml", "[store]\nmax_size_mb = 2\n");
    {
        let db = rig.db();
        db.execute_batch("CREATE TABLE test_only_filler (b BLOB)")
            .unwrap();
        let limit = 2 * 1024 * 1024;
        loop {
            let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            let size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
            if pages * size > limit - 100 * 1024 {
                break;
            }
            db.execute("INSERT INTO test_only_filler VALUES (zeroblob(16384))", [])
                .unwrap();
        }
        db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let audit_before: i64 = rig
        .db()
        .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
        .unwrap_or(-1);

    let b = UnitSim::start(
        &rig.dir.path().join("b"),
        &["--serial", "SX-000002", "--model", "SX-100"],
    );
    plug(&port, &b.pty);
    let out = rig.provision("SX-000002");
    let said = text(&out);
    assert!(
        !out.status.success(),
        "a unit ran on a full database: {said}"
    );
    assert!(
        said.contains("fixture fx1: unit SX-000002 refused: database full"),
        "{said}"
    );
    assert!(said.contains("max_size_mb"), "{said}");
    // Nothing about the refused unit was written; the recorded unit is intact.
    assert_eq!(rig.state("SX-000002"), None);
    assert_eq!(rig.state("SX-000001").as_deref(), Some("queued"));
    assert_eq!(rig.live_certs("SX-000001"), 1);
    let audit_after: i64 = rig
        .db()
        .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
        .unwrap_or(-1);
    assert_eq!(audit_before, audit_after);
    rig.audit_verify();
    let show = rig.station(&["unit", "show", "SX-000001"]);
    assert!(show.status.success(), "{}", text(&show));

    // Room again (the limit raised): the refused unit runs, the first one was delivered too.
    rig.config("50-store.toml", "[store]\nmax_size_mb = 64\n");
    let out = rig.provision("SX-000002");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rig.state("SX-000002").as_deref(), Some("queued"));
    assert_eq!(rig.live_certs("SX-000002"), 1);
    rig.upload_now();
    for s in ["SX-000001", "SX-000002"] {
        assert_eq!(rig.state(s).as_deref(), Some("uploaded"), "{s}");
    }
    rig.audit_verify();
}
