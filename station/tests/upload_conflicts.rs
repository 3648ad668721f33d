//! The uploader when DPS already holds an enrollment: someone else's (a conflict for a
//! supervisor), our own (recorded after a crash), a 412 between read and write; group members;
//! and the `station upload` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod upload;

use common::station as station_bin;
use dps::wire::{AttestationMechanism, EnrollmentGroup, KeyText};
use predicates::prelude::*;
use station::line::state::UnitState;
use station::outbox::{RowState, Uploader};
use upload::{LocalDps, SoftwareTestCipher, Station, random_key, symmetric, tpm};

#[test]
fn a_foreign_enrollment_is_a_conflict_for_a_supervisor_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let client = dps.client();
    // Someone else enrolled this registration ID with another TPM.
    let theirs = tpm("tpm-taken", b"someone else's EK");
    dps.block_on(client.create_or_update_enrollment(&theirs, None))
        .unwrap();
    let (unit, row) = st.queue_unit(&tpm("tpm-taken", b"our unit's EK"), None);
    let (unit_ok, _) = st.queue_unit(&tpm("tpm-free", b"another EK"), None);

    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert_eq!(
        report.delivered, 1,
        "the other unit in the same bulk goes through"
    );
    assert!(matches!(st.unit_state(unit_ok), UnitState::Uploaded { .. }));
    let r = st.row(row);
    assert_eq!(r.state, RowState::Conflict);
    assert!(r.payload.is_some(), "the conflict row keeps its payload");
    let msg = r.last_error.unwrap();
    let requeue = format!("station upload --requeue {row}");
    for part in [
        "tpm-taken",
        "TPM EK sha256:",
        "a supervisor must resolve it",
        &requeue,
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(matches!(st.unit_state(unit), UnitState::Queued { outbox_id } if outbox_id == row));
    let audit = st.audit_events("outbox.conflict");
    assert_eq!(audit.len(), 1);
    assert!(audit[0].starts_with("tpm-taken "), "{}", audit[0]);
    // DPS still holds their enrollment.
    let att = dps
        .block_on(client.enrollment_attestation(&theirs.registration_id))
        .unwrap();
    assert_eq!(att.tpm, theirs.attestation.tpm);
    // A conflict row is not retried on its own.
    let report = up.drain_once().unwrap();
    assert_eq!(report.conflicts + report.delivered + report.retrying, 0);
    drop(up);

    // The command line shows it and `--now` fails while it stands.
    let home = st.home.root().to_owned();
    station_bin()
        .args(["upload", "--status", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("conflicts 1"))
        .stdout(predicate::str::contains("a supervisor must resolve it"));
    station_bin()
        .args(["upload", "--now", "--home"])
        .arg(&home)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("undelivered now 1"));

    // The supervisor removes the stray enrollment and requeues the row.
    dps.block_on(client.delete_enrollment(&theirs.registration_id, None))
        .unwrap();
    station_bin()
        .args([
            "upload",
            "--requeue",
            &row.to_string(),
            "--actor",
            "sup",
            "--home",
        ])
        .arg(&home)
        .assert()
        .success();
    station_bin()
        .args(["upload", "--now", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("delivered 1"));
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    assert_eq!(st.audit_events("outbox.requeue").len(), 1);
}

#[test]
fn our_own_enrollment_already_in_dps_is_recorded_as_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let client = dps.client();
    let cipher = SoftwareTestCipher::new();
    // DPS accepted our enrollment but the station crashed before recording it.
    let ours = symmetric("sym-crashed");
    dps.block_on(client.create_or_update_enrollment(&ours, None))
        .unwrap();
    let (unit, row) = st.queue_unit(&ours, Some(&cipher));

    let mut up = Uploader::new(&st.home, &st.config, Some(&cipher)).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!((report.delivered, report.recovered), (1, 1), "{report:?}");
    let held = dps
        .block_on(client.get_enrollment(&ours.registration_id))
        .unwrap();
    let r = st.row(row);
    assert_eq!(r.state, RowState::Done);
    assert!(r.payload.is_none());
    assert_eq!(r.etag, held.etag);
    assert_eq!(
        st.unit_state(unit),
        UnitState::Uploaded {
            etag: held.etag.unwrap()
        }
    );
    assert_eq!(st.audit_events("outbox.recovered").len(), 1);
}

#[test]
fn a_412_between_read_and_update_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let client = dps.client();
    let ours = tpm("tpm-412", b"our EK");
    dps.block_on(client.create_or_update_enrollment(&ours, None))
        .unwrap();
    let (unit, _) = st.queue_unit(&ours, None);
    let (unit2, row2) = st.queue_unit(&tpm("tpm-412-b", b"our EK b"), None);
    dps.block_on(client.create_or_update_enrollment(&tpm("tpm-412-b", b"our EK b"), None))
        .unwrap();

    // One 412: read again, update, done.
    dps.faults.stale_if_match_next(1);
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(dps.faults.left().2, 0, "the forced 412 was answered");
    assert_eq!(report.recovered, 2, "{report:?}");
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    assert!(matches!(st.unit_state(unit2), UnitState::Uploaded { .. }));

    // A record that keeps changing: the row waits and says why.
    let ours3 = tpm("tpm-412-c", b"our EK c");
    dps.block_on(client.create_or_update_enrollment(&ours3, None))
        .unwrap();
    let (unit3, row3) = st.queue_unit(&ours3, None);
    dps.faults.stale_if_match_next(100);
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 1, "{report:?}");
    let r = st.row(row3);
    assert_eq!(r.state, RowState::Pending);
    assert!(
        r.last_error.as_deref().unwrap().contains("412"),
        "{:?}",
        r.last_error
    );
    assert!(matches!(st.unit_state(unit3), UnitState::Queued { .. }));
    assert_eq!(st.row(row2).state, RowState::Done);
}

#[test]
fn group_members_are_delivered_once_their_group_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let client = dps.client();
    let (u1, r1) = st.queue_member("grp-unit-1", "sensors");
    let (u2, _) = st.queue_member("grp-unit-2", "sensors");

    // No group yet: the rows wait with a clear reason.
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!(report.retrying, 2, "{report:?}");
    let err = st.row(r1).last_error.unwrap();
    assert!(err.contains("has no enrollment group sensors"), "{err}");
    assert!(matches!(st.unit_state(u1), UnitState::Queued { .. }));

    let g = dps
        .block_on(client.create_or_update_group(
            &EnrollmentGroup::new(
                "sensors".parse().unwrap(),
                AttestationMechanism::symmetric_key(Some(KeyText::new(random_key())), None),
            ),
            None,
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(250));
    let report = up.drain_once().unwrap();
    assert_eq!(report.delivered, 2, "{report:?}");
    let etag = g.etag.unwrap();
    for u in [u1, u2] {
        assert_eq!(st.unit_state(u), UnitState::Uploaded { etag: etag.clone() });
        assert_eq!(
            st.enrollment_row(u),
            (Some(etag.clone()), "uploaded".into())
        );
    }
}

fn x509(rid: &str) -> dps::wire::IndividualEnrollment {
    let ck = rcgen::generate_simple_self_signed(vec![rid.to_owned()]).unwrap();
    dps::wire::IndividualEnrollment::new(
        rid.parse().unwrap(),
        AttestationMechanism::x509_client(ck.cert.pem()),
    )
}

#[test]
fn x509_enrollments_compare_by_certificate_thumbprint() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let client = dps.client();
    // Another certificate under our registration ID, and our own certificate already there.
    dps.block_on(client.create_or_update_enrollment(&x509("x509-taken"), None))
        .unwrap();
    let own = x509("x509-own");
    dps.block_on(client.create_or_update_enrollment(&own, None))
        .unwrap();
    let (unit_taken, row_taken) = st.queue_unit(&x509("x509-taken"), None);
    let (unit_own, _) = st.queue_unit(&own, None);

    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let report = up.drain_once().unwrap();
    assert_eq!((report.conflicts, report.recovered), (1, 1), "{report:?}");
    assert!(matches!(
        st.unit_state(unit_own),
        UnitState::Uploaded { .. }
    ));
    assert!(matches!(
        st.unit_state(unit_taken),
        UnitState::Queued { .. }
    ));
    let msg = st.row(row_taken).last_error.unwrap();
    assert_eq!(
        msg.matches("X.509 client certificate thumbprint").count(),
        2,
        "both thumbprints are named: {msg}"
    );
}
