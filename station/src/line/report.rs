//! What the station knows about units, as people read it: one unit's whole record (`station
//! unit show`, the web UI's unit page) and the newest units (`station unit list`, the web UI's
//! unit list). Reads only.

use rusqlite::Connection;

use super::state::UnitState;
use super::units::{self, TransitionRow, UnitRow, UnitStoreError};
use crate::store::sql;

/// One unit's record.
#[derive(Debug)]
pub struct UnitReport {
    /// The unit row.
    pub unit: UnitRow,
    /// Its state, in words.
    pub state: String,
    /// Every step of every run, oldest first.
    pub steps: Vec<TransitionRow>,
    /// Certificates issued to it.
    pub certificates: Vec<CertificateLine>,
    /// Its enrollments.
    pub enrollments: Vec<EnrollmentLine>,
    /// Where each of its outbox rows is, in words.
    pub uploads: Vec<String>,
    /// The DPS targets the unit was enrolled with, each once (see [`dps_targets`]).
    pub dps_targets: Vec<String>,
    /// What DPS last said about its registration when `station registrations` asked: per
    /// target, `(target, answer in words, checked at)`.
    pub registration_checks: Vec<(String, String, String)>,
}

/// The DPS targets a unit was enrolled with, each once, in name order: those of its individual
/// enrollments, and those its group membership was queued for (a group member has no
/// enrollment of its own, only its outbox row).
pub fn dps_targets(conn: &Connection, unit_id: i64) -> Result<Vec<String>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT dps_target FROM enrollments WHERE unit_id = ?1
         UNION SELECT substr(destination, 5) FROM outbox
               WHERE unit_id = ?1 AND destination LIKE 'dps:%'
         ORDER BY 1",
    )?
    .query_map([unit_id], |r| r.get(0))?
    .collect()
}

/// A certificate issued to a unit.
#[derive(Debug)]
pub struct CertificateLine {
    /// Serial number, hex.
    pub serial_hex: String,
    /// `issued`, `live`, `superseded`.
    pub status: String,
    /// SHA-256 fingerprint, hex.
    pub fingerprint: String,
    /// When.
    pub issued_at: String,
}

/// A unit's enrollment.
#[derive(Debug)]
pub struct EnrollmentLine {
    /// The DPS target.
    pub target: String,
    /// Registration ID or group ID.
    pub enrollment_id: String,
    /// Its status.
    pub status: String,
    /// DPS's etag once delivered; empty before.
    pub etag: String,
}

/// A unit in a list.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitListRow {
    /// Serial.
    pub serial: String,
    /// Product.
    pub product: String,
    /// Lot, or empty.
    pub lot: String,
    /// State tag.
    pub state: String,
    /// Registration ID, or empty.
    pub registration_id: String,
    /// How the unit proves who it is (`tpm`, `x509-link`, ...), or empty before it is known.
    pub attestation: String,
    /// The hub DPS assigned a registered unit, or empty.
    pub hub: String,
    /// Its device ID in that hub, or empty.
    pub device_id: String,
    /// Fixture, or empty.
    pub fixture: String,
    /// Operator, or empty.
    pub operator: String,
    /// Last change.
    pub updated_at: String,
}

/// Which units [`list`] lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// Only this lot.
    pub lot: Option<&'a str>,
    /// Only units in this state (a [`UnitState::NAMES`](super::state::UnitState::NAMES) tag).
    pub state: Option<&'a str>,
}

/// Everything about the unit with this serial; `None` when there is no such unit.
pub fn unit(conn: &Connection, serial: &str) -> Result<Option<UnitReport>, UnitStoreError> {
    let Some(unit) = units::by_serial(conn, serial)? else {
        return Ok(None);
    };
    let steps = units::history(conn, unit.id)?;
    let certificates = conn
        .prepare(
            "SELECT serial_hex, status, fingerprint_sha256, issued_at FROM certificates
             WHERE unit_id = ?1 ORDER BY id",
        )
        .and_then(|mut st| {
            st.query_map([unit.id], |r| {
                Ok(CertificateLine {
                    serial_hex: r.get(0)?,
                    status: r.get(1)?,
                    fingerprint: r.get(2)?,
                    issued_at: r.get(3)?,
                })
            })?
            .collect()
        })
        .map_err(sql("read the unit's certificates"))?;
    let enrollments = conn
        .prepare(
            "SELECT dps_target, enrollment_id, status, coalesce(etag, '') FROM enrollments
             WHERE unit_id = ?1",
        )
        .and_then(|mut st| {
            st.query_map([unit.id], |r| {
                Ok(EnrollmentLine {
                    target: r.get(0)?,
                    enrollment_id: r.get(1)?,
                    status: r.get(2)?,
                    etag: r.get(3)?,
                })
            })?
            .collect()
        })
        .map_err(sql("read the unit's enrollments"))?;
    let uploads = upload_rows(conn, unit.id).map_err(sql("read the unit's outbox rows"))?;
    let dps_targets = dps_targets(conn, unit.id).map_err(sql("read the unit's DPS targets"))?;
    let registration_checks = crate::dps_target::check::last_answers(conn, unit.id)
        .map_err(sql("read the unit's registration checks"))?;
    Ok(Some(UnitReport {
        state: describe_state(&unit.state),
        unit,
        steps,
        certificates,
        enrollments,
        uploads,
        dps_targets,
        registration_checks,
    }))
}

/// The serials of the units known by `q`: their serial, registration ID (case-insensitive, as
/// DPS compares them) or device ID, which is what someone tracing a unit from the cloud side
/// has in hand. At most 20.
pub fn find(conn: &Connection, q: &str) -> Result<Vec<String>, UnitStoreError> {
    conn.prepare(
        "SELECT serial FROM units WHERE serial = ?1 OR registration_id = ?1 OR device_id = ?1
         ORDER BY id DESC LIMIT 20",
    )
    .and_then(|mut st| st.query_map([q], |r| r.get(0))?.collect())
    .map_err(|e| sql("find units")(e).into())
}

/// The newest units `filter` picks; at most `limit`.
pub fn list(
    conn: &Connection,
    filter: ListFilter<'_>,
    limit: u32,
) -> Result<Vec<UnitListRow>, UnitStoreError> {
    conn.prepare(
        "SELECT serial, product, coalesce(lot_id,''), state, coalesce(registration_id,''),
         coalesce(attestation,''),
         CASE state WHEN 'registered' THEN coalesce(json_extract(state_data, '$.hub'), '') ELSE '' END,
         CASE state WHEN 'registered' THEN coalesce(json_extract(state_data, '$.device_id'), '') ELSE '' END,
         coalesce(fixture,''), coalesce(operator,''), updated_at FROM units
         WHERE (?1 IS NULL OR lot_id = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY id DESC LIMIT ?3",
    )
    .and_then(|mut st| {
        st.query_map(rusqlite::params![filter.lot, filter.state, limit], |r| {
            Ok(UnitListRow {
                serial: r.get(0)?,
                product: r.get(1)?,
                lot: r.get(2)?,
                state: r.get(3)?,
                registration_id: r.get(4)?,
                attestation: r.get(5)?,
                hub: r.get(6)?,
                device_id: r.get(7)?,
                fixture: r.get(8)?,
                operator: r.get(9)?,
                updated_at: r.get(10)?,
            })
        })?
        .collect()
    })
    .map_err(|e| sql("list units")(e).into())
}

/// How many units there are in each state, of the units `filter` picks, most common first.
pub fn count_by_state(
    conn: &Connection,
    filter: ListFilter<'_>,
) -> Result<Vec<(String, u64)>, UnitStoreError> {
    conn.prepare(
        "SELECT state, count(*) AS n FROM units
         WHERE (?1 IS NULL OR lot_id = ?1) AND (?2 IS NULL OR state = ?2)
         GROUP BY state ORDER BY n DESC, state",
    )
    .and_then(|mut st| {
        st.query_map(rusqlite::params![filter.lot, filter.state], |r| {
            let n: i64 = r.get(1)?;
            Ok((r.get(0)?, u64::try_from(n).unwrap_or(0)))
        })?
        .collect()
    })
    .map_err(|e| sql("count units by state")(e).into())
}

/// Where each of a unit's outbox rows is: delivered, waiting (attempts, next try, last error),
/// travelling in an air-gapped export, or in conflict (the supervisor's message).
fn upload_rows(conn: &Connection, unit_id: i64) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT o.id, o.destination, o.state, o.attempts, coalesce(o.next_attempt_at, ''),
            o.last_error, coalesce(o.etag, ''), coalesce(o.done_at, ''), o.export_id,
            coalesce(e.created_at, ''), coalesce(e.created_by, ''), coalesce(e.file_name, '')
         FROM outbox o LEFT JOIN exports e ON e.id = o.export_id
         WHERE o.unit_id = ?1 ORDER BY o.id",
    )?;
    st.query_map([unit_id], |r| {
        let (id, dest, state): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let attempts: u32 = r.get(3)?;
        let last_error: Option<String> = r.get(5)?;
        let export: Option<String> = r.get(8)?;
        let head = format!("#{id} {dest}");
        Ok(match (state.as_str(), export) {
            ("done", _) => format!(
                "{head} delivered {} (etag {})",
                r.get::<_, String>(7)?,
                r.get::<_, String>(6)?
            ),
            ("conflict", _) => format!(
                "{head} in conflict: {}",
                last_error.unwrap_or_default()
            ),
            (_, Some(x)) => format!(
                "{head} travelling in export {x} (file {}, written {} by {}); waits for its receipt",
                r.get::<_, String>(11)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?
            ),
            _ if attempts == 0 => format!("{head} waiting for its first delivery"),
            _ => format!(
                "{head} waiting: {attempts} failed attempts, next at {}, last error: {}",
                r.get::<_, String>(4)?,
                last_error.unwrap_or_default()
            ),
        })
    })?
    .collect()
}

/// A unit's state in words: a failure with its step and reason, an upload with its etag.
#[must_use]
pub fn describe_state(s: &UnitState) -> String {
    match s {
        UnitState::Failed { step, reason } => format!("failed at {}: {reason}", step.as_str()),
        UnitState::Uploaded { etag } => format!("uploaded (etag {etag})"),
        UnitState::Queued { outbox_id } => format!("queued for DPS (outbox #{outbox_id})"),
        UnitState::Registered { hub, device_id } => {
            format!("registered: assigned to {hub} as device {device_id}")
        }
        UnitState::Scrapped { reason, from } => format!("scrapped (was {from}): {reason}"),
        other => other.name().to_owned(),
    }
}
