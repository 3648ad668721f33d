//! Units and runs in the store: starting a run at a scan, and persisting every transition of the
//! unit state machine (unit row + `run_transitions` row + audit entry, in the caller's
//! transaction). `state.rs` decides which transitions exist; this module only writes them.

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::state::{BadTransition, Step, UnitState};
use crate::ids::StationId;
use crate::store::audit::{self, AuditEvent};
use crate::store::{StoreError, now_utc, sql};

/// Why a unit could not be written.
#[derive(Debug, thiserror::Error)]
pub enum UnitStoreError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state machine has no such edge.
    #[error(transparent)]
    Transition(#[from] BadTransition),
    /// The unit row is gone.
    #[error("unit #{0} is not in the database")]
    NoUnit(i64),
    /// The stored state does not parse (written by a newer station, or altered by hand).
    #[error("unit #{unit_id} has an unreadable state {state:?}: {message}")]
    BadState {
        /// The unit.
        unit_id: i64,
        /// The stored tag.
        state: String,
        /// The parser's message.
        message: String,
    },
}

/// A unit as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRow {
    /// Row id.
    pub id: i64,
    /// Serial number.
    pub serial: String,
    /// Lot (work order).
    pub lot_id: Option<String>,
    /// Product.
    pub product: String,
    /// DPS registration ID, once known.
    pub registration_id: Option<String>,
    /// Device ID, once known.
    pub device_id: Option<String>,
    /// Model the unit reported (or the product's).
    pub model: Option<String>,
    /// Hardware revision.
    pub hw_rev: Option<String>,
    /// Firmware version.
    pub fw_version: Option<String>,
    /// Attestation kind.
    pub attestation: Option<String>,
    /// Where it is.
    pub state: UnitState,
    /// The fixture of its current run.
    pub fixture: Option<String>,
    /// The operator of its current run.
    pub operator: Option<String>,
    /// First scan.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Its newest run.
    pub run_id: Option<i64>,
}

/// What a scan needs to start a run.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Serial as scanned (already checked against the product's pattern).
    pub serial: &'a str,
    /// Product.
    pub product: &'a str,
    /// The open lot of the product.
    pub lot_id: &'a str,
    /// Fixture.
    pub fixture: &'a str,
    /// Logged-on operator; `None` for anonymous runs.
    pub operator: Option<&'a str>,
    /// Attestation kind of the product.
    pub attestation: &'a str,
}

/// What a scan led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// A new run started (for a new unit, or a retry of a failed one).
    Started {
        /// The unit.
        unit_id: i64,
        /// The run.
        run_id: i64,
        /// Whether it is a retry (the earlier run was superseded).
        retry: bool,
    },
    /// The unit already passed: nothing is issued; here is its record.
    AlreadyPassed(Box<UnitRow>),
    /// The unit is being provisioned (on this or another fixture) right now.
    InProgress {
        /// The fixture running it.
        fixture: String,
        /// Its state.
        state: String,
    },
    /// The serial belongs to another product.
    OtherProduct {
        /// The product it was first scanned as.
        product: String,
    },
    /// The unit was scrapped: it is never provisioned again.
    Scrapped {
        /// Why it was scrapped.
        reason: String,
    },
}

const UNIT_COLUMNS: &str = "u.id, u.serial, u.lot_id, u.product, u.registration_id, u.device_id,
    u.model, u.hw_rev, u.fw_version, u.attestation, u.state, u.state_data, u.fixture, u.operator,
    u.created_at, u.updated_at, (SELECT max(r.id) FROM runs r WHERE r.unit_id = u.id)";

fn unit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(UnitRow, String, String)> {
    let tag: String = r.get(10)?;
    let data: String = r.get(11)?;
    Ok((
        UnitRow {
            id: r.get(0)?,
            serial: r.get(1)?,
            lot_id: r.get(2)?,
            product: r.get(3)?,
            registration_id: r.get(4)?,
            device_id: r.get(5)?,
            model: r.get(6)?,
            hw_rev: r.get(7)?,
            fw_version: r.get(8)?,
            attestation: r.get(9)?,
            state: UnitState::Scanned,
            fixture: r.get(12)?,
            operator: r.get(13)?,
            created_at: r.get(14)?,
            updated_at: r.get(15)?,
            run_id: r.get(16)?,
        },
        tag,
        data,
    ))
}

fn finish_row((mut row, tag, data): (UnitRow, String, String)) -> Result<UnitRow, UnitStoreError> {
    row.state = decode_state(row.id, &tag, &data)?;
    Ok(row)
}

/// Rebuilds a state from its stored tag and data.
pub fn decode_state(unit_id: i64, tag: &str, data: &str) -> Result<UnitState, UnitStoreError> {
    let mut v: serde_json::Value =
        serde_json::from_str(data).map_err(|e| UnitStoreError::BadState {
            unit_id,
            state: tag.to_owned(),
            message: e.to_string(),
        })?;
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), serde_json::Value::String(tag.to_owned()));
    }
    serde_json::from_value(v).map_err(|e| UnitStoreError::BadState {
        unit_id,
        state: tag.to_owned(),
        message: e.to_string(),
    })
}

/// The stored form of a state: its tag and its data without the tag.
#[must_use]
pub fn encode_state(state: &UnitState) -> (&'static str, String) {
    let mut v = serde_json::to_value(state).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("state");
    }
    let data = if v.is_object() {
        v.to_string()
    } else {
        "{}".to_owned()
    };
    (state.name(), data)
}

/// The unit with this serial.
pub fn by_serial(conn: &Connection, serial: &str) -> Result<Option<UnitRow>, UnitStoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {UNIT_COLUMNS} FROM units u WHERE u.serial = ?1"
        ))
        .and_then(|mut st| st.query_row([serial], unit_from_row).optional())
        .map_err(sql("read unit"))?;
    row.map(finish_row).transpose()
}

/// The serial of the unit other than `unit_id` that holds registration ID `rid`, if any
/// (compared as the UNIQUE index compares: without case).
pub fn holder_of_registration_id(
    conn: &Connection,
    rid: &str,
    unit_id: i64,
) -> Result<Option<String>, UnitStoreError> {
    Ok(conn
        .prepare_cached("SELECT serial FROM units WHERE registration_id = ?1 AND id <> ?2")
        .and_then(|mut st| {
            st.query_row(rusqlite::params![rid, unit_id], |r| r.get(0))
                .optional()
        })
        .map_err(sql("look up the unit holding a registration ID"))?)
}

/// The unit with this row id.
pub fn by_id(conn: &Connection, id: i64) -> Result<Option<UnitRow>, UnitStoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {UNIT_COLUMNS} FROM units u WHERE u.id = ?1"
        ))
        .and_then(|mut st| st.query_row([id], unit_from_row).optional())
        .map_err(sql("read unit"))?;
    row.map(finish_row).transpose()
}

/// Units whose run has not ended (for restart recovery), oldest first.
pub fn unfinished(conn: &Connection) -> Result<Vec<UnitRow>, UnitStoreError> {
    let mut st = conn
        .prepare(&format!(
            "SELECT {UNIT_COLUMNS} FROM units u WHERE u.state IN
             ('scanned','identified','key-ready','certificate-issued','key-injected','verified','recorded')
             ORDER BY u.id"
        ))
        .map_err(sql("read unfinished units"))?;
    let rows = st
        .query_map([], unit_from_row)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(sql("read unfinished units"))?;
    rows.into_iter().map(finish_row).collect()
}

/// One stored transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRow {
    /// The run it belongs to.
    pub run_id: i64,
    /// State before (none for a run's first).
    pub from: Option<String>,
    /// State after.
    pub to: String,
    /// The new state's data (JSON).
    pub data: String,
    /// When.
    pub at: String,
}

/// Every transition of a unit's runs, oldest first.
pub fn history(conn: &Connection, unit_id: i64) -> Result<Vec<TransitionRow>, UnitStoreError> {
    let mut st = conn
        .prepare(
            "SELECT t.run_id, t.from_state, t.to_state, t.data, t.at FROM run_transitions t
             JOIN runs r ON r.id = t.run_id WHERE r.unit_id = ?1 ORDER BY t.id",
        )
        .map_err(sql("read unit history"))?;
    st.query_map([unit_id], |r| {
        Ok(TransitionRow {
            run_id: r.get(0)?,
            from: r.get(1)?,
            to: r.get(2)?,
            data: r.get(3)?,
            at: r.get(4)?,
        })
    })
    .and_then(Iterator::collect)
    .map_err(|e| sql("read unit history")(e).into())
}

fn insert_transition(
    tx: &Transaction<'_>,
    run_id: i64,
    from: Option<&str>,
    to: &UnitState,
    now: &str,
) -> Result<(), StoreError> {
    let (tag, data) = encode_state(to);
    tx.prepare_cached(
        "INSERT INTO run_transitions (run_id, from_state, to_state, data, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| st.execute(params![run_id, from, tag, data, now]))
    .map_err(sql("record transition"))?;
    Ok(())
}

/// Starts a run for a scanned serial, in the caller's transaction: a new unit, or a retry of a
/// failed one (its run is superseded and certificates it was issued but never confirmed are
/// marked superseded). A passed unit or one in progress starts nothing.
pub fn begin(
    tx: &Transaction<'_>,
    station: &StationId,
    new: &NewRun<'_>,
) -> Result<Begin, UnitStoreError> {
    let now = now_utc();
    let actor = new.operator.unwrap_or("station");
    if let Some(unit) = by_serial(tx, new.serial)? {
        if unit.product != new.product {
            return Ok(Begin::OtherProduct {
                product: unit.product,
            });
        }
        if unit.state.passed() {
            return Ok(Begin::AlreadyPassed(Box::new(unit)));
        }
        if let UnitState::Scrapped { reason, .. } = unit.state {
            return Ok(Begin::Scrapped { reason });
        }
        if !matches!(unit.state, UnitState::Failed { .. }) {
            return Ok(Begin::InProgress {
                fixture: unit.fixture.unwrap_or_default(),
                state: unit.state.name().to_owned(),
            });
        }
        // A retry: the failed run is superseded, and so is any certificate it was issued.
        let superseded = unit.state.to(UnitState::Superseded)?;
        ENTERED.with(|e| e.borrow_mut().extend(["superseded", "scanned"]));
        super::crash::point("before:superseded");
        if let Some(old_run) = unit.run_id {
            insert_transition(tx, old_run, Some(unit.state.name()), &superseded, &now)?;
        }
        let certs = tx
            .prepare_cached(
                "UPDATE certificates SET status = 'superseded', revoked_at = ?2
                 WHERE unit_id = ?1 AND status = 'issued'",
            )
            .and_then(|mut st| st.execute(params![unit.id, now]))
            .map_err(sql("supersede certificates"))?;
        let run_id = insert_run(tx, unit.id, new, &now)?;
        let (tag, data) = encode_state(&UnitState::Scanned);
        tx.prepare_cached(
            "UPDATE units SET state = ?2, state_data = ?3, fixture = ?4, operator = ?5,
             lot_id = ?6, updated_at = ?7 WHERE id = ?1",
        )
        .and_then(|mut st| {
            st.execute(params![
                unit.id,
                tag,
                data,
                new.fixture,
                new.operator,
                new.lot_id,
                now
            ])
        })
        .map_err(sql("restart unit"))?;
        insert_transition(tx, run_id, Some("superseded"), &UnitState::Scanned, &now)?;
        audit::append(
            tx,
            station,
            &AuditEvent {
                actor,
                event: "unit.retry",
                subject: new.serial,
                details: serde_json::json!({
                    "run": run_id,
                    "fixture": new.fixture,
                    "lot": new.lot_id,
                    "superseded_certificates": certs,
                }),
            },
        )?;
        return Ok(Begin::Started {
            unit_id: unit.id,
            run_id,
            retry: true,
        });
    }
    let (tag, data) = encode_state(&UnitState::Scanned);
    tx.prepare_cached(
        "INSERT INTO units (serial, lot_id, product, attestation, state, state_data, fixture,
         operator, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )
    .and_then(|mut st| {
        st.execute(params![
            new.serial,
            new.lot_id,
            new.product,
            new.attestation,
            tag,
            data,
            new.fixture,
            new.operator,
            now
        ])
    })
    .map_err(sql("insert unit"))?;
    let unit_id = tx.last_insert_rowid();
    let run_id = insert_run(tx, unit_id, new, &now)?;
    insert_transition(tx, run_id, None, &UnitState::Scanned, &now)?;
    ENTERED.with(|e| e.borrow_mut().push("scanned"));
    super::crash::point("before:scanned");
    audit::append(
        tx,
        station,
        &AuditEvent {
            actor,
            event: "unit.scanned",
            subject: new.serial,
            details: serde_json::json!({
                "run": run_id,
                "fixture": new.fixture,
                "lot": new.lot_id,
                "product": new.product,
            }),
        },
    )?;
    Ok(Begin::Started {
        unit_id,
        run_id,
        retry: false,
    })
}

fn insert_run(
    tx: &Transaction<'_>,
    unit_id: i64,
    new: &NewRun<'_>,
    now: &str,
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO runs (unit_id, fixture, operator, started_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![unit_id, new.fixture, new.operator, now]))
    .map_err(sql("insert run"))?;
    Ok(tx.last_insert_rowid())
}

/// Unit columns a transition may fill in (set once known; `None` leaves a column as it is).
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// DPS registration ID.
    pub registration_id: Option<&'a str>,
    /// Device ID.
    pub device_id: Option<&'a str>,
    /// Model.
    pub model: Option<&'a str>,
    /// Hardware revision.
    pub hw_rev: Option<&'a str>,
    /// Firmware version.
    pub fw_version: Option<&'a str>,
}

/// [`Facts`] owned, for a transition recorded later.
#[derive(Debug, Default, Clone)]
pub struct Known {
    /// DPS registration ID.
    pub registration_id: Option<String>,
    /// Device ID.
    pub device_id: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Hardware revision.
    pub hw_rev: Option<String>,
    /// Firmware version.
    pub fw_version: Option<String>,
}

impl Known {
    /// Borrowed, as [`transition`] takes them.
    #[must_use]
    pub fn as_facts(&self) -> Facts<'_> {
        Facts {
            registration_id: self.registration_id.as_deref(),
            device_id: self.device_id.as_deref(),
            model: self.model.as_deref(),
            hw_rev: self.hw_rev.as_deref(),
            fw_version: self.fw_version.as_deref(),
        }
    }
}

thread_local! {
    /// States entered by transitions on this thread since the last `take_entered` (for the
    /// crash-test points that fire after the commit).
    static ENTERED: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The states this thread's transitions entered since the last call.
pub fn take_entered() -> Vec<&'static str> {
    ENTERED.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

/// After a commit: passes the crash-test point of every state the transaction entered.
pub fn committed() {
    for state in take_entered() {
        super::crash::point(state);
    }
}

/// Moves a unit to `next`, in the caller's transaction: checks the edge against the stored
/// state, writes the unit row, a transition row on its newest run and an audit entry. Moving to
/// an early state again (a resumed run, see `UnitState::resumes_to`) is allowed.
pub fn transition(
    tx: &Transaction<'_>,
    station: &StationId,
    actor: &str,
    unit_id: i64,
    next: UnitState,
    facts: &Facts<'_>,
) -> Result<UnitState, UnitStoreError> {
    let unit = by_id(tx, unit_id)?.ok_or(UnitStoreError::NoUnit(unit_id))?;
    let resumed = unit.state.resumes_to(&next);
    let next = if resumed { next } else { unit.state.to(next)? };
    let now = now_utc();
    let (tag, data) = encode_state(&next);
    let learned = facts.registration_id.is_some()
        || facts.device_id.is_some()
        || facts.model.is_some()
        || facts.hw_rev.is_some()
        || facts.fw_version.is_some();
    if learned {
        tx.prepare_cached(
            "UPDATE units SET state = ?2, state_data = ?3, updated_at = ?4,
                registration_id = coalesce(?5, registration_id),
                device_id = coalesce(?6, device_id),
                model = coalesce(?7, model),
                hw_rev = coalesce(?8, hw_rev),
                fw_version = coalesce(?9, fw_version)
             WHERE id = ?1",
        )
        .and_then(|mut st| {
            st.execute(params![
                unit_id,
                tag,
                data,
                now,
                facts.registration_id,
                facts.device_id,
                facts.model,
                facts.hw_rev,
                facts.fw_version
            ])
        })
    } else {
        // Most steps learn nothing about the unit. Naming its identity columns anyway would
        // make SQLite rewrite the registration ID's UNIQUE index entry (a WAL page and a
        // uniqueness check per transition, in the shared writer's turn), even when the value
        // does not change.
        tx.prepare_cached(
            "UPDATE units SET state = ?2, state_data = ?3, updated_at = ?4 WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![unit_id, tag, data, now]))
    }
    .map_err(sql("update unit state"))?;
    if let Some(run_id) = unit.run_id {
        insert_transition(tx, run_id, Some(unit.state.name()), &next, &now)?;
        match &next {
            UnitState::Failed { step, reason } => {
                tx.prepare_cached(
                    "UPDATE runs SET ended_at = ?2, result = 'failed', fail_step = ?3, fail_reason = ?4 WHERE id = ?1",
                )
                .and_then(|mut st| st.execute(params![run_id, now, step.as_str(), reason]))
                .map_err(sql("end run"))?;
            }
            UnitState::Recorded => {
                tx.prepare_cached("UPDATE runs SET ended_at = ?2, result = 'passed' WHERE id = ?1")
                    .and_then(|mut st| st.execute(params![run_id, now]))
                    .map_err(sql("end run"))?;
            }
            _ => {}
        }
    }
    ENTERED.with(|e| e.borrow_mut().push(next.name()));
    super::crash::point(&format!("before:{}", next.name()));
    let mut details = serde_json::to_value(&next).unwrap_or(serde_json::Value::Null);
    if let Some(o) = details.as_object_mut() {
        o.insert("from".into(), unit.state.name().into());
        o.insert("run".into(), unit.run_id.into());
        if let Some(r) = facts.registration_id {
            o.insert("registration_id".into(), r.into());
        }
    }
    audit::append(
        tx,
        station,
        &AuditEvent {
            actor,
            event: &format!("unit.{}", next.name()),
            subject: &unit.serial,
            details,
        },
    )?;
    Ok(next)
}

/// Fails a unit at `step` with `reason`, in the caller's transaction.
pub fn fail(
    tx: &Transaction<'_>,
    station: &StationId,
    actor: &str,
    unit_id: i64,
    step: Step,
    reason: &str,
) -> Result<UnitState, UnitStoreError> {
    // A failed unit's kept key goes with its run: a retry gives the unit a new one.
    erase_key(tx, unit_id)?;
    transition(
        tx,
        station,
        actor,
        unit_id,
        UnitState::Failed {
            step,
            reason: reason.to_owned(),
        },
        &Facts::default(),
    )
}

/// Keeps a symmetric-individual unit's key, sealed under the HSM's outbox key, until the unit
/// is recorded (`unit_keys`, migration 6): replaces a key kept for an earlier attempt.
pub fn keep_key(tx: &Transaction<'_>, unit_id: i64, sealed: &[u8]) -> Result<(), UnitStoreError> {
    tx.prepare_cached(
        "INSERT INTO unit_keys (unit_id, sealed, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (unit_id) DO UPDATE SET sealed = excluded.sealed, created_at = excluded.created_at",
    )
    .and_then(|mut st| st.execute(params![unit_id, sealed, now_utc()]))
    .map_err(sql("keep the unit's sealed key"))?;
    Ok(())
}

/// The sealed key kept for `unit_id`, if any.
pub fn kept_key(conn: &Connection, unit_id: i64) -> Result<Option<Vec<u8>>, UnitStoreError> {
    Ok(conn
        .query_row(
            "SELECT sealed FROM unit_keys WHERE unit_id = ?1",
            [unit_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("read the unit's sealed key"))?)
}

/// Erases the key kept for `unit_id` (recorded: the outbox row holds it; or failed).
pub fn erase_key(tx: &Transaction<'_>, unit_id: i64) -> Result<(), UnitStoreError> {
    tx.prepare_cached("DELETE FROM unit_keys WHERE unit_id = ?1")
        .and_then(|mut st| st.execute([unit_id]))
        .map_err(sql("erase the unit's sealed key"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store;

    /// A fresh database with lot L1 open.
    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::create(&d.path().join("t.db"), &StoreConfig::default()).unwrap();
        s.conn()
            .execute(
                "INSERT INTO lots (id, product, quantity, status, opened_at, opened_by) VALUES ('L1','sensor-x509',5,'open','t','a')",
                [],
            )
            .unwrap();
        (d, s)
    }

    fn run<'a>(serial: &'a str, fixture: &'a str) -> NewRun<'a> {
        NewRun {
            serial,
            product: "sensor-x509",
            lot_id: "L1",
            fixture,
            operator: Some("alice"),
            attestation: "x509-link",
        }
    }

    #[test]
    fn a_kept_key_is_replaced_by_a_new_attempt_and_goes_when_the_unit_fails() {
        let (_d, mut s) = store();
        let st = StationId::fallback();
        let tx = s.conn_mut().transaction().unwrap();
        let Begin::Started { unit_id, .. } = begin(&tx, &st, &run("SK-1", "fx1")).unwrap() else {
            panic!("not started")
        };
        assert_eq!(kept_key(&tx, unit_id).unwrap(), None);
        keep_key(&tx, unit_id, b"sealed-1").unwrap();
        keep_key(&tx, unit_id, b"sealed-2").unwrap();
        assert_eq!(
            kept_key(&tx, unit_id).unwrap().as_deref(),
            Some(&b"sealed-2"[..])
        );
        fail(&tx, &st, "alice", unit_id, Step::Verify, "no answer").unwrap();
        assert_eq!(kept_key(&tx, unit_id).unwrap(), None);
        keep_key(&tx, unit_id, b"sealed-3").unwrap();
        erase_key(&tx, unit_id).unwrap();
        assert_eq!(kept_key(&tx, unit_id).unwrap(), None);
        tx.commit().unwrap();
    }

    /// The database pages the last commit wrote, by the b-tree (table or index) they belong
    /// to: read from the frame headers of a WAL that held only that commit.
    fn pages_written_by_the_last_commit(s: &Store, wal: &std::path::Path) -> Vec<String> {
        let bytes = std::fs::read(wal).unwrap();
        let page_size = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let owners: std::collections::HashMap<u32, String> = s
            .conn()
            .prepare("SELECT pageno, name FROM dbstat")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        bytes[32..]
            .chunks(24 + page_size)
            .map(|frame| {
                let page = u32::from_be_bytes(frame[..4].try_into().unwrap());
                owners
                    .get(&page)
                    .cloned()
                    .unwrap_or_else(|| page.to_string())
            })
            .collect()
    }

    #[test]
    fn a_step_that_learns_nothing_about_the_unit_leaves_its_registration_id_index_alone() {
        let (d, mut s) = store();
        let st = StationId::fallback();
        let tx = s.conn_mut().transaction().unwrap();
        let Begin::Started { unit_id, .. } = begin(&tx, &st, &run("SX-9", "fx1")).unwrap() else {
            panic!("not started")
        };
        let identified = UnitState::Identified {
            model: "SX-100".into(),
            hw_rev: "B".into(),
            fw_version: "1".into(),
        };
        let facts = Facts {
            registration_id: Some("sx-9"),
            model: Some("SX-100"),
            ..Facts::default()
        };
        transition(&tx, &st, "alice", unit_id, identified, &facts).unwrap();
        tx.commit().unwrap();
        let rid_index: String = s
            .conn()
            .query_row(
                "SELECT il.name FROM pragma_index_list('units') il
                 JOIN pragma_index_info(il.name) ii WHERE ii.name = 'registration_id'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let wal = d.path().join("t.db-wal");
        let step = |s: &mut Store, next: UnitState, facts: &Facts<'_>| {
            s.conn()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            let tx = s.conn_mut().transaction().unwrap();
            transition(&tx, &st, "alice", unit_id, next, facts).unwrap();
            tx.commit().unwrap();
            pages_written_by_the_last_commit(s, &wal)
        };
        let key_ready = |m: &str| UnitState::KeyReady {
            registration_id: "sx-9".into(),
            material: m.into(),
        };
        // A step that names the registration ID writes its index (the test sees index writes).
        let naming = step(&mut s, key_ready("m1"), &facts);
        assert!(naming.contains(&rid_index), "{naming:?}");
        // A step that learns nothing writes the unit's row, not that index.
        let plain = step(&mut s, key_ready("m2"), &Facts::default());
        assert!(plain.iter().any(|p| p == "units"), "{plain:?}");
        assert!(!plain.contains(&rid_index), "{plain:?}");
        let u = by_serial(s.conn(), "SX-9").unwrap().unwrap();
        assert_eq!(u.registration_id.as_deref(), Some("sx-9"), "kept");
        assert_eq!(u.model.as_deref(), Some("SX-100"));
    }

    #[test]
    fn a_unit_runs_fails_retries_and_passes_with_every_step_recorded() {
        let (_d, mut s) = store();
        let st = StationId::fallback();
        let tx = s.conn_mut().transaction().unwrap();
        let Begin::Started {
            unit_id,
            run_id,
            retry,
        } = begin(&tx, &st, &run("SX-1", "fx1")).unwrap()
        else {
            panic!("not started")
        };
        assert!(!retry);
        // The same serial on another fixture while it runs is refused.
        assert_eq!(
            begin(&tx, &st, &run("SX-1", "fx2")).unwrap(),
            Begin::InProgress {
                fixture: "fx1".into(),
                state: "scanned".into()
            }
        );
        fail(&tx, &st, "alice", unit_id, Step::Identify, "no answer").unwrap();
        let Begin::Started {
            run_id: run2,
            retry,
            ..
        } = begin(&tx, &st, &run("SX-1", "fx2")).unwrap()
        else {
            panic!("not restarted")
        };
        assert!(retry);
        assert_ne!(run_id, run2);
        let facts = Facts {
            registration_id: Some("SX-1"),
            model: Some("SX-100"),
            ..Facts::default()
        };
        for next in [
            UnitState::Identified {
                model: "SX-100".into(),
                hw_rev: "B".into(),
                fw_version: "1".into(),
            },
            UnitState::KeyReady {
                registration_id: "SX-1".into(),
                material: "m".into(),
            },
            // A resumed step may repeat its state.
            UnitState::KeyReady {
                registration_id: "SX-1".into(),
                material: "m2".into(),
            },
            UnitState::CertificateIssued { certificate_id: 1 },
            UnitState::Verified,
            UnitState::Recorded,
        ] {
            transition(&tx, &st, "alice", unit_id, next, &facts).unwrap();
        }
        // Skipping is refused.
        assert!(matches!(
            transition(
                &tx,
                &st,
                "alice",
                unit_id,
                UnitState::Uploaded { etag: "e".into() },
                &facts
            ),
            Err(UnitStoreError::Transition(_))
        ));
        tx.commit().unwrap();
        let u = by_serial(s.conn(), "SX-1").unwrap().unwrap();
        assert_eq!(u.state, UnitState::Recorded);
        assert_eq!(u.registration_id.as_deref(), Some("SX-1"));
        assert_eq!(u.fixture.as_deref(), Some("fx2"));
        // A passed unit scanned again starts nothing.
        let tx = s.conn_mut().transaction().unwrap();
        assert!(matches!(
            begin(&tx, &st, &run("SX-1", "fx1")).unwrap(),
            Begin::AlreadyPassed(_)
        ));
        drop(tx);
        let h = history(s.conn(), unit_id).unwrap();
        let tags: Vec<&str> = h.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(
            tags,
            [
                "scanned",
                "failed",
                "superseded",
                "scanned",
                "identified",
                "key-ready",
                "key-ready",
                "certificate-issued",
                "verified",
                "recorded"
            ]
        );
        let results: Vec<(String, Option<String>)> = s
            .conn()
            .prepare("SELECT coalesce(result,''), fail_step FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            results,
            [
                ("failed".to_owned(), Some("identify".to_owned())),
                ("passed".to_owned(), None)
            ]
        );
        assert!(
            crate::store::audit::verify(s.conn())
                .unwrap()
                .first_bad
                .is_none()
        );
    }
}
