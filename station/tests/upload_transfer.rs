//! Air-gapped transfer of the outbox (`station upload --export / --deliver / --receipt`)
//! against the local DPS service over TLS: rows travel in a file, the uploader leaves them
//! alone, the delivery is the uploader's own (bulks, a recovered 409, a conflict), and the
//! receipt records each unit exactly once. Damaged, cut-short, foreign and repeated files are
//! refused with a clear message and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod upload;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use dps::wire::{AttestationMechanism, EnrollmentGroup, KeyText};
use station::line::state::UnitState;
use station::outbox::transfer::{
    self, ExportRows, ExportSummary, ExportTo, ReceiptSummary, TransferError, TransferFile,
};
use station::outbox::{self, Backoff, PayloadCipher, RowState, Uploader};
use upload::{
    LocalDps, SoftwareTestCipher, Station, TARGET, contains, primary_key, random_key, symmetric,
    tpm,
};

fn scope(_: &str) -> Option<String> {
    Some("0ne00000001".into())
}

fn export_to(
    st: &Station,
    cipher: Option<&dyn PayloadCipher>,
    rows: &ExportRows<'_>,
    to: &ExportTo<'_>,
) -> Result<ExportSummary, TransferError> {
    transfer::export(
        &mut st.store(),
        &st.station,
        cipher,
        rows,
        scope,
        to,
        "tester",
    )
}

/// An export in clear (keys allowed).
fn export(
    st: &Station,
    cipher: Option<&dyn PayloadCipher>,
    rows: &ExportRows<'_>,
    out: &Path,
) -> Result<ExportSummary, TransferError> {
    let to = ExportTo {
        path: out,
        recipients: &[],
        in_clear: true,
    };
    export_to(st, cipher, rows, &to)
}

fn deliver_with(
    dps: &LocalDps,
    file: &Path,
    identities: &[Box<dyn age::Identity>],
    receipt: &Path,
) -> transfer::DeliverySummary {
    let client = dps.client();
    let export = transfer::read_export(file, identities).unwrap();
    dps.block_on(transfer::deliver(&client, export, 10, receipt))
        .unwrap()
}

fn deliver(dps: &LocalDps, file: &Path, receipt: &Path) -> transfer::DeliverySummary {
    deliver_with(dps, file, &[], receipt)
}

fn apply(st: &Station, receipt: &Path) -> Result<ReceiptSummary, TransferError> {
    let r: TransferFile<_> = transfer::read_receipt(receipt)?;
    transfer::apply_receipt(
        &mut st.store(),
        &st.station,
        r,
        &Backoff::from_config(&st.config.upload),
        "tester",
    )
}

/// `station upload --deliver FILE` with the service's connection string and CA, run with
/// `home` as the (absent) station home: whether it succeeded, stdout, stderr.
fn cli_deliver(
    dps: &LocalDps,
    home: &Path,
    file: &Path,
    identity: Option<&Path>,
) -> (bool, String, String) {
    let mut args = vec![
        "upload".to_owned(),
        "--deliver".into(),
        file.to_str().unwrap().into(),
        "--connection-string-file".into(),
        dps.data.join("connection-string").to_str().unwrap().into(),
        "--ca-file".into(),
        dps.data.join("ca.pem").to_str().unwrap().into(),
    ];
    if let Some(i) = identity {
        args.push("--identity".into());
        args.push(i.to_str().unwrap().into());
    }
    common::run(home, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `station upload --receipt FILE` on the station in `home`: success, stdout, stderr.
fn cli_receipt(home: &Path, receipt: &Path) -> (bool, String, String) {
    common::run(
        home,
        &[
            "upload",
            "--receipt",
            receipt.to_str().unwrap(),
            "--actor",
            "tester",
        ],
    )
}

/// Rows travelling in an export.
fn travelling(st: &Station) -> i64 {
    st.store()
        .conn()
        .query_row(
            "SELECT count(*) FROM outbox WHERE export_id IS NOT NULL AND state = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn an_export_travels_to_dps_and_its_receipt_records_every_unit_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let cipher = SoftwareTestCipher::new();
    let client = dps.client();

    // 12 symmetric-key units (keys sealed at rest), 2 TPM units, 2 members of a group.
    let mut sym = Vec::new();
    let mut keys = Vec::new();
    for i in 0..12 {
        let e = symmetric(&format!("gap-sym-{i:02}"));
        keys.push(primary_key(&e));
        let (unit, row) = st.queue_unit(&e, Some(&cipher));
        sym.push((e, unit, row));
    }
    let ours = tpm("gap-tpm-ours", b"ek-ours");
    let (u_ours, _) = st.queue_unit(&ours, None);
    let clash = tpm("gap-tpm-clash", b"ek-station");
    let (u_clash, r_clash) = st.queue_unit(&clash, None);
    let (u_m1, _) = st.queue_member("gap-member-1", "gap-sensors");
    let (u_m2, _) = st.queue_member("gap-member-2", "gap-sensors");

    let out = tmp.path().join("lot-7.export");
    // Keys in a file: not in clear unless asked for; nothing is marked.
    let unsafe_to = ExportTo {
        path: &out,
        recipients: &[],
        in_clear: false,
    };
    let e = export_to(&st, Some(&cipher), &ExportRows::Target(TARGET), &unsafe_to).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the export would hold the symmetric keys of 12 units in clear"),
        "{e}"
    );
    assert_eq!(travelling(&st), 0);
    assert!(!out.exists());
    // Encrypted to the key of the place where it is delivered.
    let id_file = tmp.path().join("delivery.identity");
    let recipient = transfer::new_identity(&id_file).unwrap();
    let s = export_to(
        &st,
        Some(&cipher),
        &ExportRows::Target(TARGET),
        &ExportTo {
            path: &out,
            recipients: &[recipient],
            in_clear: false,
        },
    )
    .unwrap();
    assert_eq!((s.individuals, s.group_members, s.with_keys), (14, 2, 12));
    assert!(s.encrypted);
    assert_eq!(travelling(&st), 16);
    // The file is the owner's alone, and holds no key (nor anything else) in clear.
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "export file mode {mode:o}");
    let sealed = std::fs::read(&out).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    assert!(!contains(&sealed, keys[0].as_bytes()));
    assert!(!contains(&sealed, b"gap-sym-00"));
    let mode = std::fs::metadata(&id_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
    // Without the identity, or with another one, nothing is read.
    let e = transfer::read_export(&out, &[]).unwrap_err().to_string();
    assert!(e.contains("is encrypted: give the identity"), "{e}");
    let other = tmp.path().join("other.identity");
    transfer::new_identity(&other).unwrap();
    let e = transfer::read_export(&out, &transfer::load_identities(&other).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be decrypted with the identity given"),
        "{e}"
    );
    let ids = transfer::load_identities(&id_file).unwrap();
    // The database still holds them sealed only.
    assert!(!contains(
        st.row(sym[0].2).payload.as_ref().unwrap(),
        keys[0].as_bytes()
    ));

    // The uploader leaves travelling rows alone: nothing reaches DPS from the station.
    let mut up = Uploader::new(&st.home, &st.config, Some(&cipher)).unwrap();
    let r = up.drain_once().unwrap();
    assert_eq!((r.delivered, r.retrying, r.bulk_calls), (0, 0, 0), "{r:?}");
    drop(up);
    assert!(
        dps.block_on(client.get_enrollment(&sym[0].0.registration_id))
            .is_err()
    );
    // Nothing else waits outside the export.
    let again = export(
        &st,
        Some(&cipher),
        &ExportRows::Target(TARGET),
        &tmp.path().join("second.export"),
    )
    .unwrap_err();
    assert!(
        again.to_string().starts_with("nothing to export"),
        "{again}"
    );

    // Where DPS is reachable: one enrollment is already there as the station's (an earlier
    // delivery not recorded), another registration ID is held with a different EK, and the
    // members' group exists.
    dps.block_on(client.create_or_update_enrollment(&ours, None))
        .unwrap();
    dps.block_on(client.create_or_update_enrollment(&tpm("gap-tpm-clash", b"ek-foreign"), None))
        .unwrap();
    let g = dps
        .block_on(client.create_or_update_group(
            &EnrollmentGroup::new(
                "gap-sensors".parse().unwrap(),
                AttestationMechanism::symmetric_key(Some(KeyText::new(random_key())), None),
            ),
            None,
        ))
        .unwrap();
    let receipt = tmp.path().join("lot-7.receipt");
    let d = deliver_with(&dps, &out, &ids, &receipt);
    assert_eq!(
        (d.delivered, d.recovered, d.conflicts, d.retrying),
        (15, 1, 1, 0),
        "{d:?}"
    );
    assert_eq!(d.bulk_calls, 2, "14 enrollments in bulks of at most 10");
    assert!(
        !contains(&std::fs::read(&receipt).unwrap(), keys[0].as_bytes()),
        "a receipt holds no key"
    );

    // Back on the station: every unit recorded as the uploader would have.
    let a = apply(&st, &receipt).unwrap();
    assert_eq!(
        (
            a.report.delivered,
            a.report.recovered,
            a.report.conflicts,
            a.report.retrying
        ),
        (15, 1, 1, 0),
        "{a:?}"
    );
    assert!(a.skipped.is_empty() && a.still_travelling == 0, "{a:?}");
    for (e, unit, row) in &sym {
        let held = dps
            .block_on(client.get_enrollment(&e.registration_id))
            .unwrap();
        let r = st.row(*row);
        assert_eq!(r.state, RowState::Done);
        assert!(r.payload.is_none(), "payload erased once delivered");
        assert_eq!(r.etag, held.etag);
        assert_eq!(
            st.unit_state(*unit),
            UnitState::Uploaded {
                etag: held.etag.unwrap()
            }
        );
    }
    assert!(matches!(st.unit_state(u_ours), UnitState::Uploaded { .. }));
    let etag = g.etag.unwrap();
    for u in [u_m1, u_m2] {
        assert_eq!(st.unit_state(u), UnitState::Uploaded { etag: etag.clone() });
    }
    // The clash waits for a supervisor, who is told how to requeue it.
    let c = st.row(r_clash);
    assert_eq!(c.state, RowState::Conflict);
    assert!(c.export_id.is_none(), "a conflict leaves its export");
    let msg = c.last_error.unwrap();
    assert!(
        msg.contains("already holds enrollment gap-tpm-clash")
            && msg.contains(&format!("station upload --requeue {r_clash}")),
        "{msg}"
    );
    assert!(matches!(st.unit_state(u_clash), UnitState::Queued { .. }));
    assert_eq!(st.audit_events("outbox.conflict").len(), 1);
    assert_eq!(st.audit_events("outbox.recovered").len(), 1);
    let exp = st.audit_events("outbox.export");
    assert_eq!(exp.len(), 1);
    assert!(exp[0].starts_with(&s.export_id) && exp[0].contains(&s.sha256));
    assert_eq!(st.audit_events("outbox.receipt").len(), 1);

    // The same receipt again changes nothing and says why.
    let e = apply(&st, &receipt).unwrap_err();
    assert!(
        matches!(e, TransferError::AlreadyApplied { .. }) && e.to_string().contains(&s.export_id),
        "{e}"
    );
    assert_eq!(st.audit_events("outbox.receipt").len(), 1);
    assert_eq!(
        outbox::status(st.store().conn()).unwrap().undelivered(),
        1,
        "only the conflict is undelivered"
    );
}

/// Rewrites a transfer file's lines with `edit` and closes it with a correct digest, as a
/// careful forger (or a different station) would.
fn reseal(path: &Path, edit: impl Fn(usize, &mut serde_json::Value)) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut body = String::new();
    for (i, l) in lines[..lines.len() - 1].iter().enumerate() {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        edit(i, &mut v);
        body.push_str(&serde_json::to_string(&v).unwrap());
        body.push('\n');
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
    let sha: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut closing: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    closing["sha256"] = sha.into();
    body.push_str(&serde_json::to_string(&closing).unwrap());
    body.push('\n');
    std::fs::write(path, body).unwrap();
}

#[test]
fn damaged_cut_short_foreign_and_mistaken_files_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let cipher = SoftwareTestCipher::new();
    let e = symmetric("gap-bad-1");
    let key = primary_key(&e);
    let (unit, row) = st.queue_unit(&e, Some(&cipher));
    st.queue_unit(&tpm("gap-bad-2", b"ek-2"), None);

    // A sealed row without the HSM's key: nothing is exported, nothing is marked.
    let e0 = export(
        &st,
        None,
        &ExportRows::Target(TARGET),
        &tmp.path().join("no-key.export"),
    )
    .unwrap_err();
    assert!(
        e0.to_string().contains("sealed") && e0.to_string().ends_with("nothing was exported"),
        "{e0}"
    );
    assert_eq!(travelling(&st), 0);
    assert!(!tmp.path().join("no-key.export").exists());

    let out = tmp.path().join("good.export");
    let s = export(&st, Some(&cipher), &ExportRows::Target(TARGET), &out).unwrap();
    let good = std::fs::read(&out).unwrap();
    // Never overwritten.
    let e1 = export(&st, Some(&cipher), &ExportRows::Again(&s.export_id), &out).unwrap_err();
    assert!(matches!(e1, TransferError::Exists(_)), "{e1}");

    let check = |bytes: &[u8], want: &str| {
        let p = tmp.path().join("copy.export");
        std::fs::write(&p, bytes).unwrap();
        let err = transfer::read_export(&p, &[]).unwrap_err().to_string();
        assert!(err.contains(want), "{want:?} not in {err:?}");
        assert!(err.ends_with("nothing was read from it"), "{err}");
        assert!(!err.contains(&key), "an error quotes no key: {err}");
        std::fs::remove_file(&p).unwrap();
    };
    // One bit flipped in the key's line.
    let mut flipped = good.clone();
    let at = good
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap();
    flipped[at] ^= 0x01;
    check(&flipped, "changed or damaged after it was written");
    // Cut short in transfer: the closing line is gone, or half of it.
    let body_end = good[..good.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap();
    check(&good[..=body_end], "is incomplete");
    check(&good[..good.len() - 20], "is incomplete");
    check(b"", "is incomplete");
    check(b"\x00\xffnot a transfer file at all\n", "is incomplete");
    // A receipt is not an export.
    let receipt = tmp.path().join("good.receipt");
    deliver(&dps, &out, &receipt);
    let err = transfer::read_export(&receipt, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is a station-outbox-receipt (version 1) file, not a station-outbox-export"),
        "{err}"
    );

    // Receipts for another station, or for an export this station never made.
    for (field, value, want) in [
        ("station", "line-9", "for station line-9, not this station"),
        (
            "export_id",
            "20260101T000000Z-deadbeef",
            "export 20260101T000000Z-deadbeef, which this station did not make",
        ),
    ] {
        let forged = tmp.path().join(format!("{field}.receipt"));
        std::fs::copy(&receipt, &forged).unwrap();
        reseal(&forged, |i, v| {
            if i == 0 {
                v[field] = value.into();
            }
        });
        let e = apply(&st, &forged).unwrap_err().to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
    // None of it touched a row or a unit.
    assert_eq!(travelling(&st), 2);
    assert!(matches!(st.unit_state(unit), UnitState::Queued { .. }));
    assert!(st.row(row).payload.is_some());
    assert!(st.audit_events("outbox.receipt").is_empty());
    // The genuine receipt still applies.
    let a = apply(&st, &receipt).unwrap();
    assert_eq!(a.report.delivered, 2, "{a:?}");
}

#[test]
fn a_lost_export_is_written_again_and_a_failed_delivery_puts_rows_back_in_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let (u1, r1) = st.queue_unit(&tpm("gap-lost-1", b"ek-1"), None);
    let (u2, _) = st.queue_unit(&tpm("gap-lost-2", b"ek-2"), None);

    let first = tmp.path().join("first.export");
    let s = export(&st, None, &ExportRows::Target(TARGET), &first).unwrap();
    // The USB stick is lost: the same rows, under the same export, to a new file.
    std::fs::remove_file(&first).unwrap();
    let second = tmp.path().join("second.export");
    let s2 = export(&st, None, &ExportRows::Again(&s.export_id), &second).unwrap();
    assert_eq!(
        (s2.export_id.as_str(), s2.individuals),
        (s.export_id.as_str(), 2)
    );
    assert_eq!(st.audit_events("outbox.export-again").len(), 1);

    // Delivered while DPS is down: every row fails, and the receipt says so.
    let client_dps_port = dps.port;
    let data = dps.data.clone();
    let client = dps.client();
    dps.stop();
    let receipt = tmp.path().join("second.receipt");
    let d = dps
        .block_on(transfer::deliver(
            &client,
            transfer::read_export(&second, &[]).unwrap(),
            10,
            &receipt,
        ))
        .unwrap();
    assert_eq!((d.delivered, d.retrying), (0, 2), "{d:?}");
    let a = apply(&st, &receipt).unwrap();
    assert_eq!(a.report.retrying, 2, "{a:?}");
    // Back in the queue, out of the export, with the reason.
    let r = st.row(r1);
    assert_eq!((r.state, r.export_id.as_deref()), (RowState::Pending, None));
    assert!(r.last_error.unwrap().contains("DPS target"));
    assert_eq!(travelling(&st), 0);
    assert!(
        outbox::status(st.store().conn())
            .unwrap()
            .exports
            .is_empty()
    );
    let o = common::ok(st.home.root(), &["unit", "show", "gap-lost-1"]);
    assert!(
        o.contains("waiting: 1 failed attempts, next at") && o.contains("last error: DPS target"),
        "{o}"
    );

    // Now the station's own uploader (DPS reachable again) delivers them.
    let dps = LocalDps::start(&data, client_dps_port);
    std::thread::sleep(std::time::Duration::from_millis(250));
    let mut up = Uploader::new(&st.home, &st.config, None).unwrap();
    let rep = up.drain_once().unwrap();
    assert_eq!(rep.delivered, 2, "{rep:?}");
    for u in [u1, u2] {
        assert!(matches!(st.unit_state(u), UnitState::Uploaded { .. }));
    }
    drop(dps);
}

#[test]
fn the_cli_exports_delivers_and_records_and_says_what_to_do_next() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let (unit, _) = st.queue_unit(&tpm("gap-cli-1", b"ek-cli"), None);
    let home = st.home.root().to_owned();
    let out = tmp.path().join("cli.export");
    let o = common::ok(
        &home,
        &[
            "upload",
            "--export",
            out.to_str().unwrap(),
            "--actor",
            "tester",
        ],
    );
    assert!(
        o.contains("1 individual enrollments, 0 group members")
            && o.contains("station upload --deliver"),
        "{o}"
    );
    let o = common::ok(&home, &["upload", "--status"]);
    assert!(
        o.contains("in an export 1") && o.contains("still travelling"),
        "{o}"
    );
    // station check counts it, and warns once its receipt is a week overdue.
    let (_, o, _) = common::run(&home, &["check"]);
    assert!(o.contains("1 undelivered (1 travelling in exports)"), "{o}");
    st.store()
        .conn()
        .execute(
            "UPDATE exports SET created_at = '2020-01-01T00:00:00.000000Z'",
            [],
        )
        .unwrap();
    let (_, o, _) = common::run(&home, &["check"]);
    assert!(
        o.contains("1 rows travelling for") && o.contains("days without a receipt"),
        "{o}"
    );
    // Where the unit's enrollment is, for whoever wonders why it is not in DPS yet.
    let o = common::ok(&home, &["unit", "show", "gap-cli-1"]);
    assert!(
        o.contains("dps:local travelling in export") && o.contains("(file cli.export, written"),
        "{o}"
    );

    // A damaged export: refused, no receipt written.
    let bad = tmp.path().join("bad.export");
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&bad, bytes).unwrap();
    // --deliver needs no station home.
    let nowhere = tmp.path().join("no-home");
    let (good, _, err) = cli_deliver(&dps, &nowhere, &bad, None);
    assert!(!good);
    assert!(err.contains("was changed or damaged"), "{err}");
    assert!(!tmp.path().join("bad.export.receipt").exists());

    let (good, o, err) = cli_deliver(&dps, &nowhere, &out, None);
    assert!(good && o.contains("delivered 1"), "{o}{err}");
    let receipt = tmp.path().join("cli.export.receipt");
    assert!(receipt.exists(), "{o}");
    let (good, o, err) = cli_receipt(&home, &receipt);
    assert!(good && o.contains("delivered 1"), "{o}{err}");
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    let o = common::ok(&home, &["unit", "show", "gap-cli-1"]);
    assert!(o.contains("dps:local delivered 20"), "{o}");
    let (good, _, err) = cli_receipt(&home, &receipt);
    assert!(!good && err.contains("was applied at"), "{err}");
    let (good, _, err) = common::run(&home, &["upload", "--export", out.to_str().unwrap()]);
    assert!(!good && err.contains("exists already"), "{err}");
    let (good, _, err) = common::run(
        &home,
        &["upload", "--export", tmp.path().join("x").to_str().unwrap()],
    );
    assert!(!good && err.contains("nothing to export"), "{err}");
    common::ok(&home, &["audit", "verify"]);
}

#[test]
fn a_target_delivered_by_export_is_left_alone_by_the_uploader_and_needs_no_connection_string() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let (unit, row) = st.queue_unit(&tpm("gap-offline-1", b"ek-off"), None);
    let mut cfg = st.config.clone();
    let t = cfg.dps.targets.get_mut(TARGET).unwrap();
    t.delivery = station::config::Delivery::Export;
    t.connection_string_file = None;

    // The uploader neither tries nor counts a failure, and has nothing due to wake up for.
    let mut up = Uploader::new(&st.home, &cfg, None).unwrap();
    let r = up.drain_once().unwrap();
    assert_eq!((r.delivered, r.retrying, r.bulk_calls), (0, 0, 0), "{r:?}");
    assert_eq!(r.remaining, 1, "the row still counts as undelivered");
    drop(up);
    let held = [outbox::dps::destination(TARGET)];
    assert_eq!(
        outbox::next_due(st.store().conn(), &outbox::dps::KINDS, &held).unwrap(),
        None
    );
    let row_now = st.row(row);
    assert_eq!((row_now.attempts, row_now.last_error), (0, None));
    assert!(matches!(st.unit_state(unit), UnitState::Queued { .. }));
    // A station-side DPS call says why it cannot be made.
    let e = station::dps_target::client(&st.home, &cfg, TARGET).unwrap_err();
    assert!(
        e.to_string()
            .contains("has no connection string (delivery = \"export\")"),
        "{e}"
    );

    // In the config file: `export` needs no connection string; `online` does.
    let home = st.home.root().to_owned();
    let extra = home.join("config.d/70-offline.toml");
    std::fs::write(
        &extra,
        "[dps.targets.offline]\ndelivery = \"export\"\nid_scope = \"0ne00000002\"\n",
    )
    .unwrap();
    let o = common::ok(&home, &["upload", "--status"]);
    assert!(o.contains("dps:local"), "{o}");
    std::fs::write(
        &extra,
        "[dps.targets.offline]\nid_scope = \"0ne00000002\"\n",
    )
    .unwrap();
    let (good, _, err) = common::run(&home, &["upload", "--status"]);
    assert!(
        !good
            && err.contains("dps.targets.offline.connection_string_file")
            && err.contains("delivery = \"export\""),
        "{err}"
    );
    // With two targets, --export asks which.
    std::fs::write(
        &extra,
        "[dps.targets.offline]\ndelivery = \"export\"\nid_scope = \"0ne00000002\"\n",
    )
    .unwrap();
    let (good, _, err) = common::run(
        &home,
        &["upload", "--export", tmp.path().join("e").to_str().unwrap()],
    );
    assert!(
        !good && err.contains("name the DPS target with --target (configured: local, offline)"),
        "{err}"
    );
}

#[test]
fn the_cli_encrypts_an_export_holding_keys_to_the_delivering_side() {
    let tmp = tempfile::tempdir().unwrap();
    let dps = LocalDps::start(&tmp.path().join("dps"), 0);
    let st = Station::new(&dps, 10);
    let e = symmetric("gap-enc-1");
    let key = primary_key(&e);
    let (unit, _) = st.queue_unit(&e, None);
    let home = st.home.root().to_owned();
    let out = tmp.path().join("enc.export");
    let out_s = out.to_str().unwrap();
    let (good, _, err) = common::run(&home, &["upload", "--export", out_s, "--actor", "t"]);
    assert!(
        !good && err.contains("would hold the symmetric keys of 1 units in clear"),
        "{err}"
    );

    // Where it is delivered: a key pair, made without a station home.
    let nowhere = tmp.path().join("no-home");
    let id_file = tmp.path().join("plant-it.identity");
    let (good, public, err) = common::run(
        &nowhere,
        &["upload", "--new-identity", id_file.to_str().unwrap()],
    );
    assert!(good && err.contains("keep it secret"), "{err}");
    let public = public.trim().to_owned();
    assert!(public.starts_with("age1"), "{public}");
    let (good, _, err) = common::run(
        &home,
        &["upload", "--export", out_s, "--recipient", "age1nope"],
    );
    assert!(!good && err.contains("is not an age public key"), "{err}");
    let o = common::ok(
        &home,
        &[
            "upload",
            "--export",
            out_s,
            "--recipient",
            &public,
            "--actor",
            "t",
        ],
    );
    assert!(o.contains("--identity FILE"), "{o}");
    assert!(!contains(&std::fs::read(&out).unwrap(), key.as_bytes()));

    let deliver =
        |file: &Path, identity: Option<&Path>| cli_deliver(&dps, &nowhere, file, identity);
    let (good, _, err) = deliver(&out, None);
    assert!(
        !good && err.contains("is encrypted: give the identity"),
        "{err}"
    );
    // A bit flipped in transfer: the encryption's own check refuses it.
    let bad = tmp.path().join("bad.export");
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();
    let (good, _, err) = deliver(&bad, Some(&id_file));
    assert!(
        !good && err.contains("cannot be decrypted with the identity given"),
        "{err}"
    );
    assert!(!tmp.path().join("bad.export.receipt").exists());
    let (good, o, err) = deliver(&out, Some(&id_file));
    assert!(good && o.contains("delivered 1"), "{o}{err}");
    let receipt = tmp.path().join("enc.export.receipt");
    assert!(!contains(&std::fs::read(&receipt).unwrap(), key.as_bytes()));
    let (good, o, err) = cli_receipt(&home, &receipt);
    assert!(good && o.contains("delivered 1"), "{o}{err}");
    assert!(matches!(st.unit_state(unit), UnitState::Uploaded { .. }));
    // DPS holds the unit's own key.
    let held = dps
        .block_on(dps.client().enrollment_attestation(&e.registration_id))
        .unwrap();
    assert_eq!(
        held.symmetric_key.unwrap().primary_key.unwrap().expose(),
        key
    );
}
