//! The outbox uploader against the local DPS service over TLS: bulk uploads, sealed payloads
//! erased, DPS down then back, 429 with Retry-After, and 5xx answers. Nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod upload;

use std::time::{Duration, Instant};

use station::line::state::UnitState;
use station::outbox::{RowState, Uploader};
use upload::{LocalDps, SoftwareTestCipher, Station, contains, symmetric, tpm};

#[test]
fn a_bulk_of_23_sealed_enrollments_goes_in_3_calls_and_leaves_no_key_in_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let cipher = SoftwareTestCipher::new();
    let mut queued = Vec::new();
    let mut keys = Vec::new();
    for i in 0..23 {
        let e = symmetric(&format!("sym-unit-{i:02}"));
        let sk = e.attestation.symmetric_key.clone().unwrap();
        keys.push(sk.primary_key.unwrap().expose().to_owned());
        keys.push(sk.secondary_key.unwrap().expose().to_owned());
        let (unit, row) = st.queue_unit(&e, Some(&cipher));
        queued.push((e, unit, row));
    }
    // Sealed at rest: the row says so and holds no key text.
    let r0 = st.row(queued[0].2);
    assert!(r0.sealed);
    assert!(!contains(r0.payload.as_ref().unwrap(), keys[0].as_bytes()));

    let mut up = Uploader::new(&st.home, &st.config, Some(&cipher)).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 23, "{report:?}");
    assert_eq!(
        report.bulk_calls, 3,
        "23 enrollments in bulks of at most 10"
    );
    assert_eq!(report.remaining, 0);
    assert!(report.failures.is_empty(), "{report:?}");
    drop(up);

    let client = dps.client();
    for (e, unit, row) in &queued {
        let rid = e.registration_id.to_string();
        let r = st.row(*row);
        assert_eq!(r.state, RowState::Done);
        assert!(r.payload.is_none(), "payload of {rid} erased after upload");
        let held = dps
            .block_on(client.get_enrollment(&e.registration_id))
            .unwrap();
        assert_eq!(r.etag, held.etag, "{rid}: the etag DPS holds is recorded");
        assert_eq!(
            st.unit_state(*unit),
            UnitState::Uploaded {
                etag: held.etag.clone().unwrap()
            }
        );
        assert_eq!(
            st.enrollment_row(*unit),
            (held.etag.clone(), "uploaded".into())
        );
        // DPS holds the unit's keys exactly.
        let att = dps
            .block_on(client.enrollment_attestation(&e.registration_id))
            .unwrap();
        assert_eq!(att.symmetric_key, e.attestation.symmetric_key);
    }
    assert_eq!(st.audit_events("unit.uploaded").len(), 23);

    // No key, in base64 or raw, anywhere in the database files.
    let mut bytes = std::fs::read(st.db_path()).unwrap();
    let wal = st.db_path().with_extension("db-wal");
    if let Ok(w) = std::fs::read(&wal) {
        bytes.extend(w);
    }
    for k in &keys {
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k).unwrap();
        assert!(
            !contains(&bytes, k.as_bytes()),
            "a key's base64 text is in the database"
        );
        assert!(!contains(&bytes, &raw), "a key's bytes are in the database");
    }
}

#[test]
fn with_dps_down_rows_wait_and_drain_when_it_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dps");
    let mut dps = LocalDps::start(&data, 0);
    let port = dps.port;
    let st = Station::new(&dps, 10);
    let mut rows = Vec::new();
    for i in 0..4 {
        rows.push(st.queue_unit(&tpm(&format!("tpm-unit-{i}"), &[1, 2, 3, i]), None));
    }
    dps.stop();

    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 0);
    assert_eq!(report.retrying, 4);
    assert_eq!(report.remaining, 4);
    for (unit, row) in &rows {
        let r = st.row(*row);
        assert_eq!(r.state, RowState::Pending);
        assert_eq!(r.attempts, 1);
        assert!(r.payload.is_some(), "nothing is lost while DPS is down");
        let err = r.last_error.unwrap();
        assert!(err.contains("DPS target local"), "{err}");
        assert!(
            matches!(st.unit_state(*unit), UnitState::Queued { outbox_id } if outbox_id == *row)
        );
    }
    // Still down at the next attempt: the back-off grows.
    std::thread::sleep(Duration::from_millis(50));
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 4);
    assert_eq!(st.row(rows[0].1).attempts, 2);

    // Back on the same address.
    let dps = LocalDps::start(&data, port);
    std::thread::sleep(Duration::from_millis(250));
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 4, "{report:?}");
    assert_eq!(report.remaining, 0);
    let client = dps.client();
    for (unit, row) in &rows {
        let r = st.row(*row);
        assert_eq!(r.state, RowState::Done);
        assert!(matches!(st.unit_state(*unit), UnitState::Uploaded { .. }));
    }
    assert_eq!(dps.block_on(client.list_enrollments(50)).unwrap().len(), 4);
}

#[test]
fn a_429_waits_for_its_retry_after_and_then_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let (unit, row) = st.queue_unit(&tpm("tpm-throttled", b"ek-429"), None);
    // Two 429s with Retry-After: 1 s; the uploader's own back-off is 20 ms, so only the
    // service's delay can make the call take two seconds.
    dps.faults.throttle_next(2, 1);
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let t0 = Instant::now();
    let report = up.drain_once().unwrap();
    let took = t0.elapsed();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(dps.faults.left().0, 0, "both 429s were answered");
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After not honoured: {took:?}"
    );
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    assert_eq!(st.row(row).state, RowState::Done);

    // More 429s than the call's attempts: the row waits at least the Retry-After.
    let (_, row2) = st.queue_unit(&tpm("tpm-throttled-2", b"ek-429-2"), None);
    dps.faults.throttle_next(3, 2);
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let r = st.row(row2);
    assert_eq!(r.state, RowState::Pending);
    assert!(
        r.last_error.as_deref().unwrap().contains("429"),
        "{:?}",
        r.last_error
    );
    assert!(r.payload.is_some());
    // The row's own back-off is 20 ms, but it waits for the service's 2 s.
    let next = chrono::DateTime::parse_from_rfc3339(r.next_attempt_at.as_deref().unwrap()).unwrap();
    let wait = next.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::milliseconds(1500),
        "row due too soon: {wait:?}"
    );
    let report = up.drain_once().unwrap();
    assert_eq!(
        report.delivered + report.retrying,
        0,
        "not due yet: {report:?}"
    );
    std::thread::sleep(wait.to_std().unwrap() + Duration::from_millis(50));
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
}

#[test]
fn server_errors_are_retried_in_the_call_then_by_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let mut rows: Vec<_> = (0..3)
        .map(|i| st.queue_unit(&tpm(&format!("tpm-5xx-{i}"), &[5, 0, 3, i]), None))
        .collect();
    // Two 503s: the client's own retries get through.
    dps.faults.fail_next(2);
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 3, "{report:?}");
    assert_eq!(dps.faults.left().1, 0);

    // A long outage of 503s: the rows wait with the reason, and go later.
    rows.push(st.queue_unit(&tpm("tpm-5xx-late", b"ek-late"), None));
    dps.faults.fail_next(1000);
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let (unit, row) = rows[3];
    let r = st.row(row);
    assert_eq!(r.attempts, 1);
    assert!(
        r.last_error.as_deref().unwrap().contains("503"),
        "{:?}",
        r.last_error
    );
    assert!(matches!(st.unit_state(unit), UnitState::Queued { .. }));
    dps.faults.fail_next(0);
    std::thread::sleep(Duration::from_millis(250));
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
}

#[test]
fn the_background_loop_wakes_on_new_rows_and_stops_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let signal = station::outbox::UploadSignal::new();
    let (home, config, sig) = (st.home.clone(), st.config.clone(), signal.clone());
    // As `station serve` does: the uploader lives on its own thread.
    let worker = std::thread::spawn(move || {
        Uploader::new(&home, &config, None).unwrap().run(&sig);
    });
    let (unit, _) = st.queue_unit(&tpm("tpm-loop", b"ek-loop"), None);
    signal.wake();
    let t0 = Instant::now();
    while !matches!(st.unit_state(unit), UnitState::Uploaded { .. }) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the loop never delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal.stop();
    worker.join().unwrap();
    assert!(signal.is_stopped());
}

#[test]
fn on_a_busy_line_the_units_recorded_within_the_gather_window_go_to_dps_together() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let mut st = Station::new(&dps, 10);
    // A window far longer than queueing three rows takes, so the test does not depend on speed.
    std::fs::write(
        st.home.config_dir().join("60-gather.toml"),
        "[upload]\ngather_ms = 5000\n",
    )
    .unwrap();
    st.config = station::config::Config::load(&st.home).unwrap().config;
    assert_eq!(st.config.upload.gather_ms, 5000);
    let signal = station::outbox::UploadSignal::new();
    let (home, config, sig) = (st.home.clone(), st.config.clone(), signal.clone());
    let worker = std::thread::spawn(move || {
        Uploader::new(&home, &config, None).unwrap().run(&sig);
    });
    let uploaded = |unit| matches!(st.unit_state(unit), UnitState::Uploaded { .. });
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what} never happened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // The first unit after a quiet spell goes in the pass its wake starts.
    let (first, _) = st.queue_unit(&tpm("tpm-gather-0", b"ek-gather-0"), None);
    signal.wake();
    wait_for("the first upload", &|| uploaded(first));

    // Three more, recorded a fifth of a second apart (each wakes the uploader): they wait out
    // the window and go in one pass, one transaction, so they are never seen uploaded apart.
    // Without the window each would go on its own wake.
    let rest: Vec<i64> = (1..=3u8)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(200));
            let ek = format!("ek-gather-{i}");
            let (unit, _) = st.queue_unit(&tpm(&format!("tpm-gather-{i}"), ek.as_bytes()), None);
            signal.wake();
            unit
        })
        .collect();
    wait_for("the next pass", &|| {
        // One statement, one snapshot: the three states as of one moment.
        let done: i64 = st
            .store()
            .conn()
            .query_row(
                "SELECT count(*) FROM units WHERE id IN (?1, ?2, ?3) AND state = 'uploaded'",
                [rest[0], rest[1], rest[2]],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            done == 0 || done == 3,
            "units recorded within one window were uploaded in different passes: {done} of 3 uploaded"
        );
        done == 3
    });
    assert!(rest.iter().all(|u| uploaded(*u)));
    signal.stop();
    worker.join().unwrap();
    let bulks = st.audit_events("unit.uploaded");
    assert_eq!(bulks.len(), 4, "{bulks:?}");
}

#[test]
fn one_refused_enrollment_does_not_hold_back_its_bulk() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let good: Vec<_> = (0..3)
        .map(|i| st.queue_unit(&tpm(&format!("tpm-good-{i}"), &[7, 7, 7, i]), None))
        .collect();
    // The service refuses an EK this short, and with it the whole bulk call.
    let (bad_unit, bad_row) = st.queue_unit(&tpm("tpm-bad-ek", &[1]), None);
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 3, "{report:?}");
    assert_eq!(report.retrying, 1);
    for (unit, _) in good {
        assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    }
    let r = st.row(bad_row);
    let err = r.last_error.unwrap();
    assert!(
        err.contains("tpm-bad-ek") && err.contains("endorsementKey"),
        "{err}"
    );
    assert!(r.payload.is_some());
    assert!(matches!(st.unit_state(bad_unit), UnitState::Queued { .. }));
}

#[test]
fn a_sealed_row_waits_for_the_cipher_and_is_never_sent_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let cipher = SoftwareTestCipher::new();
    let (unit, row) = st.queue_unit(&symmetric("sym-needs-cipher"), Some(&cipher));
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let err = st.row(row).last_error.unwrap();
    assert!(err.contains("sealed") && err.contains("cipher"), "{err}");
    drop(up);
    std::thread::sleep(Duration::from_millis(250));
    let mut up = Uploader::new(&st.home, &st.config, Some(&cipher)).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    assert!(st.row(row).payload.is_none());
}

#[test]
fn a_malformed_payload_waits_with_a_reason_that_quotes_none_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let mut store = st.store();
    let tx = store.conn_mut().transaction().unwrap();
    let id = station::outbox::enqueue(
        &tx,
        &station::outbox::NewItem {
            destination: "dps:local",
            kind: station::outbox::dps::KIND_INDIVIDUAL,
            item_key: "broken",
            unit_id: None,
            payload: br#"{"target":"local","enrollment":"c2VjcmV0LWtleQ=="}"#,
        },
        None,
    )
    .unwrap();
    tx.commit().unwrap();
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let err = st.row(id).last_error.unwrap();
    assert!(err.contains("payload is not a valid"), "{err}");
    assert!(
        !err.contains("c2VjcmV0"),
        "the error quotes the payload: {err}"
    );
}

#[test]
fn stop_abandons_a_long_wait_and_the_row_stays_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let (unit, row) = st.queue_unit(&tpm("tpm-stop", b"ek-stop"), None);
    // The service asks for a 30 s pause: stopping must not wait for it.
    dps.faults.throttle_next(100, 30);
    let signal = station::outbox::UploadSignal::new();
    let (home, config, sig) = (st.home.clone(), st.config.clone(), signal.clone());
    let worker = std::thread::spawn(move || {
        Uploader::new(&home, &config, None).unwrap().run(&sig);
    });
    while dps.faults.left().0 == 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    signal.stop();
    worker.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stop waited {:?}",
        t0.elapsed()
    );
    assert_eq!(st.row(row).state, RowState::Pending);
    assert!(st.row(row).payload.is_some());
    assert!(matches!(st.unit_state(unit), UnitState::Queued { .. }));
}
