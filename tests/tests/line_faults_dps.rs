#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A lot run by `station serve` + `line-sim` while the local DPS is first down, then back but
//! answering 429 with Retry-After and 503 for a while: the fixtures never wait for DPS, every
//! unit queues, and once DPS answers everything drains with exactly one enrollment per unit.
//! (Each of these answers is also tested on the uploader alone in station/tests/upload_*.rs.)

use std::collections::BTreeSet;

use station_e2e::line::{DpsService, LineRig, StationServe, poll_until, wait_until};

const UNITS: i64 = 16;

fn count(rig: &LineRig, sql: &str) -> i64 {
    rig.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn a_lot_drains_through_dps_down_throttled_and_failing() {
    let mut rig = LineRig::new();
    let badge = "BADGE-5120-alice";
    rig.demo_line(badge);
    rig.config(
        "60-upload.toml",
        "[upload]\ninterval_ms = 200\nmin_backoff_ms = 200\nmax_backoff_ms = 1000\n",
    );
    // DPS goes down before the lot starts.
    let dps = rig.dps.take().unwrap();
    let (dps_dir, port) = (dps.dir.clone(), dps.port);
    dps.stop();

    let serve = StationServe::start(&rig, &[("UNIT_SE_PIN", "864209")]);
    let mut sim = rig.line_sim(UNITS, badge, "864209");
    let sim = std::thread::spawn(move || sim.output().unwrap());
    // Part of the lot runs with DPS down: units queue, nothing is delivered, the uploader says so.
    wait_until("a third of the lot queued", 120, || {
        count(&rig, "SELECT count(*) FROM units WHERE state = 'queued'") >= UNITS / 3
    });
    serve.wait_logged("outbox delivery failed; will retry", 30);
    assert_eq!(
        count(&rig, "SELECT count(*) FROM units WHERE state = 'uploaded'"),
        0
    );

    // DPS back on its port, but throttling (429, Retry-After 1 s) and then failing (503).
    let listen = format!("127.0.0.1:{port}");
    let faulty = DpsService::start_at(
        &dps_dir,
        &listen,
        &[
            "--throttle-next",
            "3",
            "--throttle-retry-after",
            "1",
            "--fail-next",
            "3",
        ],
    );
    let out = sim.join().unwrap();
    let sim_text = station_e2e::text(&out);
    if !out.status.success() {
        // What the station said about it: its warnings, then the end of its log.
        let log = serve.log_text();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(60)
            .collect();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "line-sim: {sim_text}\nstation warnings:\n{}\nstation log (last 40 lines):\n{}",
            warned.join("\n"),
            tail.join("\n")
        );
    }
    let drained = poll_until(180, || {
        count(&rig, "SELECT count(*) FROM units WHERE state = 'uploaded'") == UNITS
    });
    if !drained {
        // What the outbox and the station say about it.
        let status = rig.station(&["upload", "--status"]);
        let log = serve.log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "the lot was not uploaded within 180 s; units by state: {:?}\n{}\nstation log (last 60 lines):\n{}",
            rig.db()
                .prepare("SELECT state, count(*) FROM units GROUP BY state")
                .unwrap()
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            station_e2e::text(&status),
            tail.join("\n")
        );
    }
    assert_eq!(count(&rig, "SELECT count(*) FROM units"), UNITS);
    assert_eq!(
        count(&rig, "SELECT count(*) FROM outbox WHERE state != 'done'"),
        0,
        "the outbox drained"
    );
    let log = serve.log_text();
    assert!(
        log.contains("429") || log.contains("throttl") || log.contains("Retry-After"),
        "the throttling was not reported:\n{log}"
    );
    assert!(
        log.contains("503") || log.contains("Service Unavailable"),
        "the failing DPS was not reported:\n{log}"
    );
    for l in log.lines().filter(|l| l.contains("will retry")).take(8) {
        eprintln!("{l}");
    }
    faulty.stop();

    // What DPS holds, asked of a healthy instance on the same data: exactly one enrollment per
    // unit enrolled individually, none else.
    rig.dps = Some(DpsService::start_at(&dps_dir, &listen, &[]));
    let wanted: Vec<String> = {
        let db = rig.db();
        let mut st = db
            .prepare(
                "SELECT u.registration_id FROM units u JOIN outbox o ON o.unit_id = u.id WHERE o.kind = 'dps.individual-enrollment'",
            )
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let wanted_set: BTreeSet<String> = wanted.iter().cloned().collect();
    assert_eq!(wanted.len(), wanted_set.len(), "one outbox row per unit");
    assert!(!wanted.is_empty());
    let held = rig.dps(|c| async move { c.list_enrollments(100).await.unwrap() });
    let held_ids: Vec<String> = held
        .iter()
        .map(|e| e.registration_id.as_str().to_owned())
        .collect();
    let held_set: BTreeSet<String> = held_ids.iter().cloned().collect();
    assert_eq!(held_ids.len(), held_set.len());
    assert_eq!(held_set, wanted_set);
    rig.audit_verify();
}
