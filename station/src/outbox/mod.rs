//! The outbox: work to deliver elsewhere, one row per item, each naming its destination (DPS
//! targets first; later a plant database or MES webhooks). Rows are written in the same
//! transaction as the record they come from, so nothing acknowledged is lost; a deliverer
//! takes the rows that are due, and marks each done (its payload erased), retried later
//! (with a per-row back-off), or in conflict (for a supervisor).
//!
//! Payloads that hold secrets (a unit's symmetric keys) are sealed with a [`PayloadCipher`]
//! before they reach the database and erased once delivered.

pub mod dps;
pub mod transfer;
pub mod uploader;

pub use uploader::{AuditSealer, UploadError, UploadReport, UploadSignal, Uploader, until_stopped};

use std::time::Duration;

use rusqlite::{Connection, Transaction, params};
use zeroize::Zeroizing;

use crate::config::UploadConfig;
use crate::store::{StoreError, now_utc, sql};

/// Encrypts/decrypts outbox payloads that hold secrets (an HSM AES key in production).
pub trait PayloadCipher {
    /// Seals a payload for storage.
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CipherError>;
    /// Opens a sealed payload.
    fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CipherError>;
}

/// A cipher failure, with its cause (the HSM's answer); no message holds key material.
#[derive(Debug, thiserror::Error)]
#[error("outbox payload cipher")]
pub struct CipherError(#[source] pub Box<dyn std::error::Error + Send + Sync + 'static>);

/// A row to add.
#[derive(Clone, Copy)]
pub struct NewItem<'a> {
    /// Where it goes, e.g. `dps:plant` (see [`dps::destination`]).
    pub destination: &'a str,
    /// What it is, e.g. [`dps::KIND_INDIVIDUAL`].
    pub kind: &'a str,
    /// The item's key at the destination (a registration ID).
    pub item_key: &'a str,
    /// The unit it delivers, moved Queued -> Uploaded when delivered.
    pub unit_id: Option<i64>,
    /// The payload (JSON); sealed before storage when a cipher is given.
    pub payload: &'a [u8],
}

impl std::fmt::Debug for NewItem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload may hold keys.
        f.debug_struct("NewItem")
            .field("destination", &self.destination)
            .field("kind", &self.kind)
            .field("item_key", &self.item_key)
            .field("unit_id", &self.unit_id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Adds a row, in the caller's transaction; with a cipher the payload is sealed and the row
/// marked sealed. Returns the row id. A cipher failure is reported as a store error whose
/// source is a SQL conversion failure carrying the [`CipherError`].
pub fn enqueue(
    tx: &Transaction<'_>,
    row: &NewItem<'_>,
    cipher: Option<&dyn PayloadCipher>,
) -> Result<i64, StoreError> {
    let (payload, sealed) = match cipher {
        Some(c) => (
            c.seal(row.payload).map_err(|e| {
                sql("seal outbox payload")(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
            })?,
            true,
        ),
        None => (row.payload.to_vec(), false),
    };
    let now = now_utc();
    tx.prepare_cached(
        "INSERT INTO outbox (destination, kind, item_key, payload, created_at, unit_id, sealed,
         state, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            row.destination,
            row.kind,
            row.item_key,
            payload,
            now,
            row.unit_id,
            sealed
        ])
    })
    .map_err(sql("enqueue outbox row"))?;
    Ok(tx.last_insert_rowid())
}

/// Where a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Waiting for delivery (maybe after failures).
    Pending,
    /// Delivered; the payload is erased.
    Done,
    /// The destination holds something else under this key; a supervisor must resolve it.
    Conflict,
}

impl RowState {
    /// The stored name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Done => "done",
            RowState::Conflict => "conflict",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "done" => RowState::Done,
            "conflict" => RowState::Conflict,
            _ => RowState::Pending,
        }
    }
}

/// A stored row.
#[derive(Clone)]
pub struct Item {
    /// Row id.
    pub id: i64,
    /// Destination.
    pub destination: String,
    /// Kind.
    pub kind: String,
    /// Key at the destination.
    pub item_key: String,
    /// The unit it delivers.
    pub unit_id: Option<i64>,
    /// The stored payload (sealed if `sealed`); `None` once delivered.
    pub payload: Option<Vec<u8>>,
    /// Whether the payload is sealed.
    pub sealed: bool,
    /// State.
    pub state: RowState,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: String,
    /// Earliest next delivery.
    pub next_attempt_at: Option<String>,
    /// Why the last delivery failed.
    pub last_error: Option<String>,
    /// The destination's version of the delivered item (a DPS etag).
    pub etag: Option<String>,
    /// The export (air-gapped transfer) the row travels in; the uploader leaves it alone.
    pub export_id: Option<String>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("id", &self.id)
            .field("destination", &self.destination)
            .field("kind", &self.kind)
            .field("item_key", &self.item_key)
            .field("unit_id", &self.unit_id)
            .field("payload_len", &self.payload.as_ref().map(Vec::len))
            .field("sealed", &self.sealed)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("last_error", &self.last_error)
            .field("etag", &self.etag)
            .field("export_id", &self.export_id)
            .finish()
    }
}

/// Why a payload cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The row was delivered and its payload erased.
    #[error("outbox row #{0} has no payload (already delivered)")]
    Erased(i64),
    /// The row is sealed and no cipher is available.
    #[error(
        "outbox row #{0} is sealed and this uploader has no payload cipher (the HSM outbox key)"
    )]
    NoCipher(i64),
    /// The cipher could not open it.
    #[error("outbox row #{id} could not be opened")]
    Open {
        /// Row.
        id: i64,
        /// Cause.
        #[source]
        source: CipherError,
    },
}

impl Item {
    /// The payload in clear (opened with `cipher` when sealed); zeroised on drop.
    pub fn open_payload(
        &self,
        cipher: Option<&dyn PayloadCipher>,
    ) -> Result<Zeroizing<Vec<u8>>, PayloadError> {
        let stored = self.payload.as_ref().ok_or(PayloadError::Erased(self.id))?;
        if !self.sealed {
            return Ok(Zeroizing::new(stored.clone()));
        }
        let c = cipher.ok_or(PayloadError::NoCipher(self.id))?;
        c.open(stored).map_err(|source| PayloadError::Open {
            id: self.id,
            source,
        })
    }
}

const ITEM_COLUMNS: &str = "id, destination, kind, item_key, unit_id, payload, sealed, state,
    attempts, created_at, next_attempt_at, last_error, etag, export_id";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let state: String = r.get(7)?;
    Ok(Item {
        id: r.get(0)?,
        destination: r.get(1)?,
        kind: r.get(2)?,
        item_key: r.get(3)?,
        unit_id: r.get(4)?,
        payload: r.get(5)?,
        sealed: r.get(6)?,
        state: RowState::parse(&state),
        attempts: r.get(8)?,
        created_at: r.get(9)?,
        next_attempt_at: r.get(10)?,
        last_error: r.get(11)?,
        etag: r.get(12)?,
        export_id: r.get(13)?,
    })
}

/// `AND destination NOT IN (...)` for `held` (empty when none), with its arguments.
fn not_held(held: &[String]) -> String {
    if held.is_empty() {
        String::new()
    } else {
        format!(
            " AND destination NOT IN ({})",
            vec!["?"; held.len()].join(", ")
        )
    }
}

/// Pending rows of these kinds due at `now` (oldest first, at most `limit`). Rows travelling
/// in an export, and rows of the `held` destinations (delivered by export only), are not due.
pub fn due(
    conn: &Connection,
    kinds: &[&str],
    held: &[String],
    now: &str,
    limit: usize,
) -> Result<Vec<Item>, StoreError> {
    let marks = vec!["?"; kinds.len()].join(", ");
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM outbox WHERE state = 'pending' AND export_id IS NULL
             AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             AND kind IN ({marks}){} ORDER BY id LIMIT {limit}",
            not_held(held)
        ))
        .map_err(sql("read due outbox rows"))?;
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&now];
    for k in kinds {
        args.push(k);
    }
    for h in held {
        args.push(h);
    }
    st.query_map(args.as_slice(), item_from_row)
        .and_then(Iterator::collect)
        .map_err(sql("read due outbox rows"))
}

/// One row by id.
pub fn get(conn: &Connection, id: i64) -> Result<Option<Item>, StoreError> {
    use rusqlite::OptionalExtension as _;
    conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM outbox WHERE id = ?1"))
        .and_then(|mut st| st.query_row([id], item_from_row).optional())
        .map_err(sql("read outbox row"))
}

/// How many rows of these kinds are still to deliver or wait for a supervisor (conflicts).
/// Searches the state index: its cost follows the queue, not every row ever delivered.
pub fn undelivered(conn: &Connection, kinds: &[&str]) -> Result<i64, StoreError> {
    let marks = vec!["?"; kinds.len()].join(", ");
    let args: Vec<&dyn rusqlite::ToSql> = kinds.iter().map(|k| k as &dyn rusqlite::ToSql).collect();
    conn.prepare_cached(&format!(
        "SELECT count(*) FROM outbox WHERE state IN ('pending', 'conflict') AND kind IN ({marks})"
    ))
    .and_then(|mut st| st.query_row(args.as_slice(), |r| r.get(0)))
    .map_err(sql("count undelivered outbox rows"))
}

/// The earliest `next_attempt_at` of a row of these kinds that [`due`] would take, if any.
pub fn next_due(
    conn: &Connection,
    kinds: &[&str],
    held: &[String],
) -> Result<Option<String>, StoreError> {
    let marks = vec!["?"; kinds.len()].join(", ");
    let mut args: Vec<&dyn rusqlite::ToSql> =
        kinds.iter().map(|k| k as &dyn rusqlite::ToSql).collect();
    for h in held {
        args.push(h);
    }
    conn.query_row(
        &format!(
            "SELECT min(coalesce(next_attempt_at, created_at)) FROM outbox
             WHERE state = 'pending' AND export_id IS NULL AND kind IN ({marks}){}",
            not_held(held)
        ),
        args.as_slice(),
        |r| r.get(0),
    )
    .map_err(sql("read next due outbox row"))
}

/// Marks a row delivered, in the caller's transaction: its payload is erased (NULL), and the
/// destination's version (`etag`) kept. False when the row is gone (scrapping a unit cancels
/// its undelivered rows).
pub fn mark_done(tx: &Transaction<'_>, id: i64, etag: Option<&str>) -> Result<bool, StoreError> {
    let now = now_utc();
    tx.prepare_cached(
        "UPDATE outbox SET state = 'done', done_at = ?2, last_attempt_at = ?2, payload = NULL,
         etag = ?3, last_error = NULL, next_attempt_at = NULL WHERE id = ?1",
    )
    .and_then(|mut st| st.execute(params![id, now, etag]))
    .map(|changed| changed == 1)
    .map_err(sql("mark outbox row done"))
}

/// The per-row retry schedule.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait after the first failure.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// From `[upload]`.
    #[must_use]
    pub fn from_config(cfg: &UploadConfig) -> Self {
        Self {
            min: Duration::from_millis(cfg.min_backoff_ms),
            max: Duration::from_millis(cfg.max_backoff_ms.max(cfg.min_backoff_ms)),
        }
    }

    /// The wait after `attempts` failures (1 = first failure): doubling from `min` up to
    /// `max`, and never shorter than a service's `Retry-After`.
    #[must_use]
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let d = doubled.min(self.max);
        retry_after.map_or(d, |r| d.max(r))
    }
}

fn time_after(d: Duration) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let at = chrono::Utc::now()
        .checked_add_signed(d)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Records a failed delivery, in the caller's transaction: attempts + 1, the error, and the
/// next attempt after the back-off (or the service's `Retry-After`, whichever is longer).
/// Returns the time of the next attempt.
pub fn mark_retry(
    tx: &Transaction<'_>,
    id: i64,
    error: &str,
    retry_after: Option<Duration>,
    backoff: &Backoff,
) -> Result<String, StoreError> {
    let attempts: u32 = tx
        .query_row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .map_err(sql("read outbox attempts"))?;
    let attempts = attempts.saturating_add(1);
    let next = time_after(backoff.delay(attempts, retry_after));
    tx.prepare_cached(
        "UPDATE outbox SET attempts = ?2, last_error = ?3, next_attempt_at = ?4,
         last_attempt_at = ?5 WHERE id = ?1 AND state = 'pending'",
    )
    .and_then(|mut st| st.execute(params![id, attempts, error, next, now_utc()]))
    .map_err(sql("schedule outbox retry"))?;
    Ok(next)
}

/// Marks a row in conflict, in the caller's transaction: it is not retried until a
/// supervisor resolves it ([`requeue`]).
pub fn mark_conflict(tx: &Transaction<'_>, id: i64, message: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE outbox SET state = 'conflict', attempts = attempts + 1, last_error = ?2,
         next_attempt_at = NULL, last_attempt_at = ?3 WHERE id = ?1",
    )
    .and_then(|mut st| st.execute(params![id, message, now_utc()]))
    .map_err(sql("mark outbox row in conflict"))?;
    Ok(())
}

/// Puts a conflict row back in the queue (after a supervisor resolved it at the
/// destination), due now. Returns whether a conflict row was requeued.
pub fn requeue(tx: &Transaction<'_>, id: i64) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE outbox SET state = 'pending', next_attempt_at = ?2 WHERE id = ?1 AND state = 'conflict'",
            params![id, now_utc()],
        )
        .map_err(sql("requeue outbox row"))?;
    Ok(n == 1)
}

/// A supervisor's requeue of a conflict row, with its audit entry, in one transaction.
/// Returns whether the row was in conflict (nothing changes otherwise).
pub fn requeue_conflict(
    store: &mut crate::store::Store,
    station: &crate::ids::StationId,
    actor: &str,
    id: i64,
) -> Result<bool, StoreError> {
    // Immediate: the audit append reads the chain's head, then writes after it; a deferred
    // transaction could find the head moved by a fixture's commit and fail instead of waiting.
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("begin outbox requeue"))?;
    let row = get(&tx, id)?;
    let key = row.as_ref().map(|r| r.item_key.clone()).unwrap_or_default();
    if !requeue(&tx, id)? {
        return Ok(false);
    }
    crate::store::audit::append(
        &tx,
        station,
        &crate::store::audit::AuditEvent {
            actor,
            event: "outbox.requeue",
            subject: &key,
            details: serde_json::json!({
                "outbox_id": id,
                "was": row.and_then(|r| r.last_error),
            }),
        },
    )?;
    tx.commit().map_err(sql("commit outbox requeue"))?;
    Ok(true)
}

/// The queue of one destination and kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStatus {
    /// Destination.
    pub destination: String,
    /// Kind.
    pub kind: String,
    /// Rows waiting (including those in an export).
    pub pending: i64,
    /// Waiting rows that travel in an export (air-gapped transfer) until its receipt.
    pub in_export: i64,
    /// Waiting rows that failed at least once.
    pub failing: i64,
    /// Rows waiting for a supervisor.
    pub conflicts: i64,
    /// Rows delivered.
    pub done: i64,
    /// When the oldest waiting row was queued.
    pub oldest_pending_at: Option<String>,
    /// Its age in seconds.
    pub oldest_age_s: Option<i64>,
    /// Most failed deliveries of a waiting row.
    pub max_attempts: u32,
    /// The newest delivery error of a waiting row (conflicts are listed on their own).
    pub last_error: Option<String>,
}

/// A conflict row, for the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConflictRow {
    /// Row id.
    pub id: i64,
    /// Destination.
    pub destination: String,
    /// Key at the destination.
    pub item_key: String,
    /// The unit.
    pub unit_id: Option<i64>,
    /// What differs and what to do.
    pub message: String,
}

/// An export (air-gapped transfer) with rows still travelling.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenExport {
    /// The export's id.
    pub id: String,
    /// Its DPS target.
    pub target: String,
    /// When it was written.
    pub created_at: String,
    /// Who wrote it.
    pub created_by: String,
    /// The file's name.
    pub file_name: String,
    /// Rows written.
    pub rows: i64,
    /// Rows still waiting for its receipt.
    pub travelling: i64,
}

/// The outbox at a glance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Per destination and kind.
    pub queues: Vec<QueueStatus>,
    /// Every conflict row.
    pub conflicts: Vec<ConflictRow>,
    /// Exports with rows still travelling.
    pub exports: Vec<OpenExport>,
}

impl Status {
    /// Rows not delivered (waiting or in conflict).
    #[must_use]
    pub fn undelivered(&self) -> i64 {
        self.queues.iter().map(|q| q.pending + q.conflicts).sum()
    }
}

fn age_s(at: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(at).ok()?;
    Some((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// The queue depth, oldest age, attempts, last error and conflicts per destination and kind.
pub fn status(conn: &Connection) -> Result<Status, StoreError> {
    let mut st = conn
        .prepare(
            "SELECT destination, kind,
                sum(state = 'pending'), sum(state = 'pending' AND attempts > 0),
                sum(state = 'pending' AND export_id IS NOT NULL),
                sum(state = 'conflict'), sum(state = 'done'),
                min(CASE WHEN state = 'pending' THEN created_at END),
                coalesce(max(CASE WHEN state = 'pending' THEN attempts END), 0),
                (SELECT o2.last_error FROM outbox o2 WHERE o2.destination = o.destination
                    AND o2.kind = o.kind AND o2.state = 'pending' AND o2.last_error IS NOT NULL
                    AND o2.export_id IS NULL
                    ORDER BY o2.last_attempt_at DESC, o2.id DESC LIMIT 1)
             FROM outbox o GROUP BY destination, kind ORDER BY destination, kind",
        )
        .map_err(sql("read outbox status"))?;
    let queues = st
        .query_map([], |r| {
            let oldest: Option<String> = r.get(7)?;
            Ok(QueueStatus {
                destination: r.get(0)?,
                kind: r.get(1)?,
                pending: r.get(2)?,
                failing: r.get(3)?,
                in_export: r.get(4)?,
                conflicts: r.get(5)?,
                done: r.get(6)?,
                oldest_age_s: oldest.as_deref().and_then(age_s),
                oldest_pending_at: oldest,
                max_attempts: r.get(8)?,
                last_error: r.get(9)?,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(sql("read outbox status"))?;
    let mut st = conn
        .prepare(
            "SELECT id, destination, item_key, unit_id, coalesce(last_error, '') FROM outbox
             WHERE state = 'conflict' ORDER BY id",
        )
        .map_err(sql("read outbox conflicts"))?;
    let conflicts = st
        .query_map([], |r| {
            Ok(ConflictRow {
                id: r.get(0)?,
                destination: r.get(1)?,
                item_key: r.get(2)?,
                unit_id: r.get(3)?,
                message: r.get(4)?,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(sql("read outbox conflicts"))?;
    let mut st = conn
        .prepare(
            "SELECT e.id, e.target, e.created_at, e.created_by, e.file_name, e.row_count,
                count(o.id)
             FROM exports e JOIN outbox o ON o.export_id = e.id AND o.state = 'pending'
             GROUP BY e.id ORDER BY e.created_at",
        )
        .map_err(sql("read open exports"))?;
    let exports = st
        .query_map([], |r| {
            Ok(OpenExport {
                id: r.get(0)?,
                target: r.get(1)?,
                created_at: r.get(2)?,
                created_by: r.get(3)?,
                file_name: r.get(4)?,
                rows: r.get(5)?,
                travelling: r.get(6)?,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(sql("read open exports"))?;
    Ok(Status {
        queues,
        conflicts,
        exports,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store;

    #[test]
    fn backoff_doubles_caps_and_respects_retry_after() {
        let b = Backoff {
            min: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1, None), Duration::from_secs(5));
        assert_eq!(b.delay(2, None), Duration::from_secs(10));
        assert_eq!(b.delay(4, None), Duration::from_secs(40));
        assert_eq!(b.delay(9, None), Duration::from_secs(60));
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.delay(2, Some(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
    }

    /// A unit scrapped while DPS was taking its enrollment: the row was cancelled under the
    /// uploader, so when DPS's answer comes back the enrollment it now holds is blocked.
    #[test]
    fn an_enrollment_delivered_after_its_row_was_cancelled_is_blocked() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::create(&d.path().join("t.db"), &StoreConfig::default()).unwrap();
        let tx = s.conn_mut().transaction().unwrap();
        for key in ["SK-1", "SK-2"] {
            enqueue(
                &tx,
                &NewItem {
                    destination: "dps:local",
                    kind: dps::KIND_INDIVIDUAL,
                    item_key: key,
                    unit_id: None,
                    payload: b"{}",
                },
                None,
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let far = "9999-01-01T00:00:00.000000Z";
        let taken = due(s.conn(), &[dps::KIND_INDIVIDUAL], &[], far, 10).unwrap();
        // Scrapping SK-1 cancels its row while the uploader holds it.
        s.conn()
            .execute("DELETE FROM outbox WHERE item_key = 'SK-1'", [])
            .unwrap();
        let station = crate::ids::StationId::new("st").unwrap();
        let backoff = Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(2),
        };
        let tx = s.conn_mut().transaction().unwrap();
        let mut report = uploader::UploadReport::default();
        for item in taken {
            let delivered = dps::Outcome::Delivered {
                etag: "e1".into(),
                recovered: false,
            };
            uploader::apply_outcome(&tx, &station, item, delivered, &backoff, &mut report).unwrap();
        }
        tx.commit().unwrap();
        let rows: Vec<(String, String, String)> = s
            .conn()
            .prepare("SELECT kind, item_key, state FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            [
                (dps::KIND_INDIVIDUAL.into(), "SK-2".into(), "done".into()),
                (dps::KIND_BLOCK.into(), "SK-1".into(), "pending".into()),
            ]
        );
        let audited: String = s
            .conn()
            .query_row(
                "SELECT subject FROM audit_log WHERE event = 'outbox.delivered-after-cancel'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(audited, "SK-1");
    }

    #[test]
    fn rows_queue_fail_conflict_and_finish_with_the_payload_erased() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::create(&d.path().join("t.db"), &StoreConfig::default()).unwrap();
        let tx = s.conn_mut().transaction().unwrap();
        let mut ids = Vec::new();
        for key in ["a", "b", "c"] {
            ids.push(
                enqueue(
                    &tx,
                    &NewItem {
                        destination: "dps:t",
                        kind: "k",
                        item_key: key,
                        unit_id: None,
                        payload: b"{}",
                    },
                    None,
                )
                .unwrap(),
            );
        }
        tx.commit().unwrap();
        let far = "9999-01-01T00:00:00.000000Z";
        assert_eq!(due(s.conn(), &["k"], &[], far, 10).unwrap().len(), 3);
        assert!(due(s.conn(), &["other"], &[], far, 10).unwrap().is_empty());
        let b = Backoff {
            min: Duration::from_secs(60),
            max: Duration::from_secs(600),
        };
        let tx = s.conn_mut().transaction().unwrap();
        assert!(mark_done(&tx, ids[0], Some("e1")).unwrap());
        mark_retry(&tx, ids[1], "DPS down", None, &b).unwrap();
        mark_conflict(&tx, ids[2], "not ours").unwrap();
        tx.commit().unwrap();
        // The failed row is not due now, only after its back-off.
        assert!(
            due(s.conn(), &["k"], &[], &now_utc(), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(due(s.conn(), &["k"], &[], far, 10).unwrap()[0].id, ids[1]);
        let done = get(s.conn(), ids[0]).unwrap().unwrap();
        assert_eq!(done.state, RowState::Done);
        assert!(done.payload.is_none());
        assert_eq!(done.etag.as_deref(), Some("e1"));
        let st = status(s.conn()).unwrap();
        assert_eq!(st.queues.len(), 1);
        let q = &st.queues[0];
        assert_eq!((q.pending, q.failing, q.conflicts, q.done), (1, 1, 1, 1));
        assert_eq!(q.max_attempts, 1);
        assert_eq!(q.last_error.as_deref(), Some("DPS down"));
        assert_eq!(st.conflicts.len(), 1);
        assert_eq!(st.conflicts[0].message, "not ours");
        assert_eq!(st.undelivered(), 2);
        let tx = s.conn_mut().transaction().unwrap();
        assert!(requeue(&tx, ids[2]).unwrap());
        assert!(!requeue(&tx, ids[0]).unwrap());
        tx.commit().unwrap();
        assert_eq!(
            due(s.conn(), &["k"], &[], &now_utc(), 10).unwrap()[0].id,
            ids[2]
        );
    }
}
