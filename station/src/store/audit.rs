//! The append-only, hash-chained audit log.
//!
//! Entry `n` stores `hash_n = SHA-256(canonical(n, ts, actor, station, event, subject, details,
//! hash_{n-1}))`, with `hash_0` all zeros. The canonical encoding is a domain tag followed by
//! each field as a big-endian u64 length and its UTF-8 bytes; `details` is hashed exactly as
//! stored (JSON written once with sorted keys), so verification never depends on re-encoding.
//! The checkpoint row (last sequence number and hash) is updated in the same transaction as
//! every append, so removing entries from the tail is detected as well.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{StoreError, now_utc, sql};
use crate::ids::StationId;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN: &[u8] = b"station-audit-v1\0";

/// An event to record.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Who did it: an operator, the CLI's OS user, or `station` for the daemon itself.
    pub actor: &'a str,
    /// Dotted event type, e.g. `station.init`, `ca.issue`.
    pub event: &'a str,
    /// What it concerns, e.g. a serial number or a certificate serial; may be empty.
    pub subject: &'a str,
    /// Structured details. Never secrets.
    pub details: serde_json::Value,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Sequence number, from 1, without gaps.
    pub seq: i64,
    /// UTC timestamp (RFC 3339).
    pub ts: String,
    /// Who.
    pub actor: String,
    /// Which station.
    pub station_id: String,
    /// Event type.
    pub event: String,
    /// Subject.
    pub subject: String,
    /// Details as stored (JSON text).
    pub details: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

impl AuditEntry {
    /// Recomputes this entry's hash from its fields.
    #[must_use]
    pub fn compute_hash(&self) -> String {
        entry_hash(
            self.seq,
            &self.ts,
            &self.actor,
            &self.station_id,
            &self.event,
            &self.subject,
            &self.details,
            &self.prev_hash,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn entry_hash(
    seq: i64,
    ts: &str,
    actor: &str,
    station: &str,
    event: &str,
    subject: &str,
    details: &str,
    prev: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    let seq = seq.to_string();
    for field in [
        seq.as_str(),
        ts,
        actor,
        station,
        event,
        subject,
        details,
        prev,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The checkpoint: the newest entry as last written by the station.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sequence number of the newest entry.
    pub last_seq: i64,
    /// Its hash.
    pub last_hash: String,
}

/// Appends an entry inside the caller's transaction and moves the checkpoint with it.
pub fn append(
    tx: &Transaction<'_>,
    station: &StationId,
    ev: &AuditEvent<'_>,
) -> Result<AuditEntry, StoreError> {
    let mut head = Head::read(tx)?;
    let entry = head.insert(tx, station, ev)?;
    head.write(tx)?;
    Ok(entry)
}

/// Appends `events` (each with its station) in order inside the caller's transaction,
/// reading the checkpoint once and moving it once, to the last of them (a batch of issued
/// certificates).
pub fn append_all<'a>(
    tx: &Transaction<'_>,
    events: impl IntoIterator<Item = (&'a StationId, AuditEvent<'a>)>,
) -> Result<(), StoreError> {
    let mut head = Head::read(tx)?;
    for (station, ev) in events {
        head.insert(tx, station, &ev)?;
    }
    head.write(tx)
}

/// The newest entry while a transaction appends.
struct Head {
    seq: i64,
    hash: String,
}

impl Head {
    fn read(tx: &Transaction<'_>) -> Result<Self, StoreError> {
        Ok(match read_checkpoint(tx)? {
            Some(cp) => Self {
                seq: cp.last_seq,
                hash: cp.last_hash,
            },
            None => Self {
                seq: 0,
                hash: GENESIS.to_owned(),
            },
        })
    }

    fn insert(
        &mut self,
        tx: &Transaction<'_>,
        station: &StationId,
        ev: &AuditEvent<'_>,
    ) -> Result<AuditEntry, StoreError> {
        // serde_json's default map is ordered by key: the stored text is canonical.
        let details = serde_json::to_string(&ev.details).unwrap_or_else(|_| "null".into());
        let mut entry = AuditEntry {
            seq: self.seq + 1,
            ts: now_utc(),
            actor: ev.actor.to_owned(),
            station_id: station.as_str().to_owned(),
            event: ev.event.to_owned(),
            subject: ev.subject.to_owned(),
            details,
            prev_hash: std::mem::take(&mut self.hash),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        // Cached statements: appends are on the issuance path, once per certificate.
        tx.prepare_cached(
            "INSERT INTO audit_log (seq, ts, actor, station_id, event, subject, details, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut st| {
            st.execute(params![
                entry.seq,
                entry.ts,
                entry.actor,
                entry.station_id,
                entry.event,
                entry.subject,
                entry.details,
                entry.prev_hash,
                entry.hash
            ])
        })
        .map_err(sql("append audit entry"))?;
        self.seq = entry.seq;
        self.hash.clone_from(&entry.hash);
        Ok(entry)
    }

    fn write(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO audit_checkpoint (id, last_seq, last_hash) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, last_hash = excluded.last_hash",
        )
        .and_then(|mut st| st.execute(params![self.seq, self.hash]))
        .map_err(sql("move audit checkpoint"))?;
        Ok(())
    }
}

/// Reads the checkpoint, if any entry was ever written.
pub fn read_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, StoreError> {
    conn.prepare_cached("SELECT last_seq, last_hash FROM audit_checkpoint WHERE id = 1")
        .and_then(|mut st| {
            st.query_row([], |r| {
                Ok(Checkpoint {
                    last_seq: r.get(0)?,
                    last_hash: r.get(1)?,
                })
            })
        })
        .optional()
        .map_err(sql("read audit checkpoint"))
}

const SELECT: &str =
    "SELECT seq, ts, actor, station_id, event, subject, details, prev_hash, hash FROM audit_log";

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        ts: r.get(1)?,
        actor: r.get(2)?,
        station_id: r.get(3)?,
        event: r.get(4)?,
        subject: r.get(5)?,
        details: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// The newest `limit` entries, oldest first.
pub fn list(conn: &Connection, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT * FROM ({SELECT} ORDER BY seq DESC LIMIT ?1) ORDER BY seq ASC"
        ))
        .map_err(sql("list audit entries"))?;
    stmt.query_map([limit], row_to_entry)
        .map_err(sql("list audit entries"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("list audit entries"))
}

/// The newest entry, if any.
pub fn newest(conn: &Connection) -> Result<Option<AuditEntry>, StoreError> {
    Ok(list(conn, 1)?.pop())
}

/// What is wrong with the chain, at the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    /// The sequence number of the first bad entry (or where one is missing).
    pub seq: i64,
    /// What is wrong.
    pub reason: String,
}

/// The result of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries read.
    pub entries: u64,
    /// The newest sequence number read.
    pub last_seq: i64,
    /// `None` when the chain and checkpoint are intact.
    pub first_bad: Option<BadEntry>,
}

/// Walks the whole chain in sequence order and checks links, hashes and the checkpoint.
/// Detects deletion, alteration, reordering, insertion and truncation.
pub fn verify(conn: &Connection) -> Result<Verification, StoreError> {
    let mut stmt = conn
        .prepare(&format!("{SELECT} ORDER BY seq ASC"))
        .map_err(sql("read audit log"))?;
    let mut rows = stmt.query([]).map_err(sql("read audit log"))?;
    let mut prev_hash = GENESIS.to_owned();
    let mut expected = 1i64;
    let mut entries = 0u64;
    let bad = |entries, last_seq, seq, reason: String| Verification {
        entries,
        last_seq,
        first_bad: Some(BadEntry { seq, reason }),
    };
    while let Some(row) = rows.next().map_err(sql("read audit log"))? {
        let e = row_to_entry(row).map_err(sql("read audit entry"))?;
        entries += 1;
        if e.seq != expected {
            let reason = if e.seq > expected {
                format!(
                    "entry {expected} is missing (the next entry is {}): entries were deleted",
                    e.seq
                )
            } else {
                format!("unexpected sequence number {} (expected {expected})", e.seq)
            };
            return Ok(bad(entries, e.seq, expected, reason));
        }
        if e.prev_hash != prev_hash {
            return Ok(bad(
                entries,
                e.seq,
                e.seq,
                format!(
                    "entry {} does not link to entry {}: entries were inserted, removed or reordered",
                    e.seq,
                    e.seq - 1
                ),
            ));
        }
        if e.compute_hash() != e.hash {
            return Ok(bad(
                entries,
                e.seq,
                e.seq,
                format!(
                    "entry {} was altered: its content does not match its hash",
                    e.seq
                ),
            ));
        }
        prev_hash = e.hash;
        expected += 1;
    }
    let last_seq = expected - 1;
    let cp = read_checkpoint(conn)?;
    match cp {
        None if last_seq > 0 => Ok(bad(
            entries,
            last_seq,
            last_seq,
            "the audit checkpoint is missing".into(),
        )),
        None => Ok(Verification {
            entries,
            last_seq,
            first_bad: None,
        }),
        Some(cp) if cp.last_seq > last_seq => Ok(bad(
            entries,
            last_seq,
            last_seq + 1,
            format!(
                "the log ends at entry {last_seq} but the checkpoint records entry {}: entries were removed from the end",
                cp.last_seq
            ),
        )),
        Some(cp) if cp.last_seq < last_seq => Ok(bad(
            entries,
            last_seq,
            cp.last_seq + 1,
            format!(
                "entries {} to {last_seq} come after the checkpoint (entry {}): they were added outside the station",
                cp.last_seq + 1,
                cp.last_seq
            ),
        )),
        Some(cp) if cp.last_hash != prev_hash => Ok(bad(
            entries,
            last_seq,
            last_seq,
            format!("entry {last_seq} does not match the checkpoint's hash"),
        )),
        Some(_) => Ok(Verification {
            entries,
            last_seq,
            first_bad: None,
        }),
    }
}

/// Domain tag of the keyed checkpoint's MAC input.
const SEAL_DOMAIN: &[u8] = b"station-audit-checkpoint-v1\0";

/// The bytes the HSM MACs for a keyed checkpoint over entry `seq` with hash `hash`.
#[must_use]
pub fn seal_message(seq: i64, hash: &str) -> Vec<u8> {
    let mut m = SEAL_DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

/// The keyed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The entry it covers.
    pub seq: i64,
    /// That entry's hash when sealed.
    pub hash: String,
    /// HMAC-SHA256 (hex) over [`seal_message`].
    pub mac: String,
}

/// Records a keyed checkpoint over the current newest entry, in the caller's transaction.
/// `mac` computes the HMAC (in the HSM). Returns the sealed sequence number, or `None` when
/// the log is empty.
pub fn seal<E>(
    tx: &Transaction<'_>,
    mac: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<Result<Option<i64>, E>, StoreError> {
    let Some(cp) = read_checkpoint(tx)? else {
        return Ok(Ok(None));
    };
    let tag = match mac(&seal_message(cp.last_seq, &cp.last_hash)) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    tx.prepare_cached(
        "UPDATE audit_checkpoint SET mac = ?1, mac_seq = ?2, mac_hash = ?3 WHERE id = 1",
    )
    .and_then(|mut st| st.execute(params![hex::encode(tag), cp.last_seq, cp.last_hash]))
    .map_err(sql("write keyed audit checkpoint"))?;
    Ok(Ok(Some(cp.last_seq)))
}

/// Reads the keyed checkpoint, if one was ever written.
pub fn read_seal(conn: &Connection) -> Result<Option<Seal>, StoreError> {
    let row: Option<(Option<i64>, Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT mac_seq, mac_hash, mac FROM audit_checkpoint WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql("read keyed audit checkpoint"))?;
    Ok(match row {
        Some((Some(seq), Some(hash), Some(mac))) => Some(Seal { seq, hash, mac }),
        _ => None,
    })
}

/// The stored hash of entry `seq`, if it exists.
pub fn entry_hash_at(conn: &Connection, seq: i64) -> Result<Option<String>, StoreError> {
    conn.query_row("SELECT hash FROM audit_log WHERE seq = ?1", [seq], |r| {
        r.get(0)
    })
    .optional()
    .map_err(sql("read audit entry hash"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store;

    fn store_with(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("a.db"), &StoreConfig::default()).unwrap();
        let station = StationId::new("st-1").unwrap();
        for i in 0..n {
            let tx = store.conn_mut().transaction().unwrap();
            append(
                &tx,
                &station,
                &AuditEvent {
                    actor: "tester",
                    event: "test.event",
                    subject: &format!("unit-{i}"),
                    details: serde_json::json!({"b": i, "a": "x"}),
                },
            )
            .unwrap();
            tx.commit().unwrap();
        }
        (dir, store)
    }

    fn tamper(store: &Store, sql: &str) {
        store
            .conn()
            .execute_batch(&format!(
                "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete; {sql}"
            ))
            .unwrap();
    }

    #[test]
    fn intact_chain_verifies_and_details_are_canonical() {
        let (_d, store) = store_with(5);
        let v = verify(store.conn()).unwrap();
        assert_eq!(v.entries, 5);
        assert_eq!(v.first_bad, None);
        let e = newest(store.conn()).unwrap().unwrap();
        assert_eq!(e.details, r#"{"a":"x","b":4}"#);
        assert_eq!(list(store.conn(), 2).unwrap().len(), 2);
    }

    #[test]
    fn a_batch_appended_at_once_chains_like_single_appends_and_moves_the_checkpoint_to_its_last() {
        let (_d, mut store) = store_with(2);
        let (a, b) = (
            StationId::new("st-1").unwrap(),
            StationId::new("st-2").unwrap(),
        );
        let tx = store.conn_mut().transaction().unwrap();
        let ev = |subject| AuditEvent {
            actor: "tester",
            event: "test.batch",
            subject,
            details: serde_json::json!({}),
        };
        append_all(&tx, [(&a, ev("x")), (&b, ev("y")), (&a, ev("z"))]).unwrap();
        tx.commit().unwrap();
        let v = verify(store.conn()).unwrap();
        assert_eq!((v.entries, v.last_seq, v.first_bad), (5, 5, None));
        let last = newest(store.conn()).unwrap().unwrap();
        assert_eq!(
            (last.subject.as_str(), last.station_id.as_str()),
            ("z", "st-1")
        );
        let stations: Vec<String> = list(store.conn(), 3)
            .unwrap()
            .into_iter()
            .map(|e| e.station_id)
            .collect();
        assert!(stations.contains(&"st-2".to_owned()), "{stations:?}");
        let cp = read_checkpoint(store.conn()).unwrap().unwrap();
        assert_eq!((cp.last_seq, cp.last_hash), (5, last.hash));
    }

    #[test]
    fn log_is_append_only_through_sql() {
        let (_d, store) = store_with(2);
        assert!(store.conn().execute("DELETE FROM audit_log", []).is_err());
        assert!(
            store
                .conn()
                .execute("UPDATE audit_log SET actor = 'x'", [])
                .is_err()
        );
    }

    #[test]
    fn each_tampering_names_the_entry() {
        let cases: &[(&str, i64)] = &[
            ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3", 3),
            ("DELETE FROM audit_log WHERE seq = 2", 2),
            ("DELETE FROM audit_log WHERE seq = 5", 5),
            (
                "UPDATE audit_log SET seq = 100 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 100",
                2,
            ),
            (
                "INSERT INTO audit_log SELECT 6, ts, actor, station_id, event, subject, details, hash, hash FROM audit_log WHERE seq = 5",
                6,
            ),
        ];
        for (sql, seq) in cases {
            let (_d, store) = store_with(5);
            tamper(&store, sql);
            let v = verify(store.conn()).unwrap();
            let bad = v.first_bad.unwrap_or_else(|| panic!("not detected: {sql}"));
            assert_eq!(bad.seq, *seq, "{sql}: {}", bad.reason);
        }
    }
}
