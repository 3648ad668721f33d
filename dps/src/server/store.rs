//! The local service's SQLite store: records (sealed JSON), policies (sealed keys), linked
//! hubs and the daily operation count. One file, `dps.sqlite`, in the data directory.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::seal::{SealError, Sealer};

/// Current schema version; a newer database is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = r"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE policies (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    rights TEXT NOT NULL,
    primary_key BLOB NOT NULL,
    secondary_key BLOB NOT NULL
);
CREATE TABLE enrollments (id TEXT PRIMARY KEY, etag TEXT NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE enrollment_groups (id TEXT PRIMARY KEY, etag TEXT NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE registrations (
    id TEXT PRIMARY KEY, group_id TEXT, etag TEXT NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX registrations_by_group ON registrations (group_id, id);
CREATE TABLE linked_hubs (
    host_name TEXT PRIMARY KEY COLLATE NOCASE,
    allocation_weight INTEGER NOT NULL DEFAULT 1,
    apply_allocation_policy INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE operations_daily (day TEXT PRIMARY KEY, count INTEGER NOT NULL);
";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating or opening the database failed.
    #[error("opening the database {path} failed")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer version.
    #[error("database schema {found} is newer than this program's {SCHEMA_VERSION}")]
    NewerSchema {
        /// Version found.
        found: i64,
    },
    /// Creating the schema failed.
    #[error("creating the database schema failed")]
    Migrate(#[source] rusqlite::Error),
    /// A query failed.
    #[error("a database query failed")]
    Query(#[from] rusqlite::Error),
    /// Sealing or opening a stored secret failed.
    #[error("a stored secret could not be processed")]
    Seal(#[from] SealError),
    /// The database lock was poisoned by a panic.
    #[error("the database lock is poisoned")]
    Poisoned,
}

/// Which record table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Individual enrollments.
    Enrollments,
    /// Enrollment groups.
    Groups,
    /// Registration records.
    Registrations,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Enrollments => "enrollments",
            Self::Groups => "enrollment_groups",
            Self::Registrations => "registrations",
        }
    }
}

/// A stored record: id key (lower-case), etag and the JSON body.
pub struct Row {
    /// Lower-case id.
    pub key: String,
    /// Etag.
    pub etag: String,
    /// JSON body (opened).
    pub json: Vec<u8>,
}

/// The body is shown by its length only: an enrollment's body holds its symmetric keys.
impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("key", &self.key)
            .field("etag", &self.etag)
            .field("json_len", &self.json.len())
            .finish()
    }
}

/// A linked IoT hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHub {
    /// Hub host name.
    pub host_name: String,
    /// Allocation weight (1-1000).
    pub allocation_weight: u32,
    /// Whether the hub takes part in allocation.
    pub apply_allocation_policy: bool,
}

/// A policy with its opened primary and secondary base64 key texts.
pub type PolicyKeys = (
    PolicyRow,
    zeroize::Zeroizing<Vec<u8>>,
    zeroize::Zeroizing<Vec<u8>>,
);

/// A shared access policy with its rights (keys stay sealed until asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// Policy name.
    pub name: String,
    /// Rights, comma-separated.
    pub rights: String,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    sealer: Sealer,
}

impl Store {
    /// Opens (creating if needed) `dps.sqlite` in `dir`, and its sealing key.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("dps.sqlite");
        if !path.exists() {
            // Create the file with mode 0600 before SQLite does, so it never exists wider.
            super::files::write_private(&path, b"").map_err(|e| StoreError::Open {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found });
        }
        if found < 1 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))
            .map_err(StoreError::Migrate)?;
        }
        let sealer = Sealer::load_or_create(&dir.join("store.key"))?;
        Ok(Self {
            conn: Mutex::new(conn),
            sealer,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `f` in one IMMEDIATE transaction; commits when it returns Ok.
    pub fn write<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let r = f(&Tx {
            tx: &tx,
            sealer: &self.sealer,
        })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(r)
    }

    /// Runs `f` for reading (no transaction needed for single statements).
    pub fn read<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let conn = self.lock()?;
        f(&Tx {
            tx: &conn,
            sealer: &self.sealer,
        })
    }
}

/// Operations inside a lock (and, for writes, a transaction).
pub struct Tx<'a> {
    tx: &'a Connection,
    sealer: &'a Sealer,
}

impl Tx<'_> {
    /// A record by lower-case key.
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Row>, StoreError> {
        let t = table.name();
        let row = self
            .tx
            .prepare_cached(&format!("SELECT etag, body FROM {t} WHERE id = ?1"))?
            .query_row([key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((etag, sealed)) => Ok(Some(Row {
                key: key.to_owned(),
                etag,
                json: self.sealer.open(&format!("{t}/{key}"), &sealed)?.to_vec(),
            })),
        }
    }

    /// Inserts or replaces a record.
    pub fn put(
        &self,
        table: Table,
        key: &str,
        group: Option<&str>,
        etag: &str,
        json: &[u8],
    ) -> Result<(), StoreError> {
        let t = table.name();
        let sealed = self.sealer.seal(&format!("{t}/{key}"), json)?;
        if table == Table::Registrations {
            self.tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO registrations (id, group_id, etag, body) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![key, group, etag, sealed])?;
        } else {
            self.tx
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO {t} (id, etag, body) VALUES (?1, ?2, ?3)"
                ))?
                .execute(params![key, etag, sealed])?;
        }
        Ok(())
    }

    /// Deletes a record; false when it did not exist.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let t = table.name();
        let n = self
            .tx
            .prepare_cached(&format!("DELETE FROM {t} WHERE id = ?1"))?
            .execute([key])?;
        Ok(n > 0)
    }

    /// Up to `limit` records with key > `after`, in key order; `group` filters registrations.
    pub fn page(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
        group: Option<&str>,
    ) -> Result<Vec<Row>, StoreError> {
        let t = table.name();
        let after = after.unwrap_or("");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String, Vec<u8>)> = if let Some(g) = group {
            self.tx
                .prepare_cached(
                    "SELECT id, etag, body FROM registrations WHERE group_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )?
                .query_map(params![g, after, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        } else {
            self.tx
                .prepare_cached(&format!(
                    "SELECT id, etag, body FROM {t} WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![after, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?
        };
        rows.into_iter()
            .map(|(key, etag, sealed)| {
                let json = self.sealer.open(&format!("{t}/{key}"), &sealed)?.to_vec();
                Ok(Row { key, etag, json })
            })
            .collect()
    }

    /// Number of records in a table.
    pub fn count(&self, table: Table) -> Result<u64, StoreError> {
        let n: i64 =
            self.tx
                .query_row(&format!("SELECT COUNT(*) FROM {}", table.name()), [], |r| {
                    r.get(0)
                })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// A meta value.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a meta value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(())
    }

    /// All linked hubs, by name.
    pub fn linked_hubs(&self) -> Result<Vec<LinkedHub>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT host_name, allocation_weight, apply_allocation_policy FROM linked_hubs ORDER BY host_name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(LinkedHub {
                host_name: r.get(0)?,
                allocation_weight: r.get(1)?,
                apply_allocation_policy: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds or updates a linked hub.
    pub fn upsert_linked_hub(&self, hub: &LinkedHub) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO linked_hubs (host_name, allocation_weight, apply_allocation_policy) VALUES (?1, ?2, ?3)
             ON CONFLICT (host_name) DO UPDATE SET allocation_weight = ?2, apply_allocation_policy = ?3",
            params![hub.host_name, hub.allocation_weight, hub.apply_allocation_policy],
        )?;
        Ok(())
    }

    /// Removes a linked hub; false when absent.
    pub fn remove_linked_hub(&self, host_name: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .execute("DELETE FROM linked_hubs WHERE host_name = ?1", [host_name])?
            > 0)
    }

    /// All policies (names and rights only).
    pub fn policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT name, rights FROM policies ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(PolicyRow {
                name: r.get(0)?,
                rights: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A policy's rights and its (opened) primary and secondary base64 keys.
    pub fn policy(&self, name: &str) -> Result<Option<PolicyKeys>, StoreError> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT name, rights, primary_key, secondary_key FROM policies WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((
                    PolicyRow {
                        name: r.get(0)?,
                        rights: r.get(1)?,
                    },
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .optional()?;
        let Some((p, a, b)) = row else {
            return Ok(None);
        };
        let ctx = format!("policies/{}", p.name.to_ascii_lowercase());
        let a = self.sealer.open(&format!("{ctx}/primary"), &a)?;
        let b = self.sealer.open(&format!("{ctx}/secondary"), &b)?;
        Ok(Some((p, a, b)))
    }

    /// Creates or replaces a policy with base64 key texts.
    pub fn put_policy(
        &self,
        name: &str,
        rights: &str,
        primary_b64: &[u8],
        secondary_b64: &[u8],
    ) -> Result<(), StoreError> {
        let ctx = format!("policies/{}", name.to_ascii_lowercase());
        let a = self.sealer.seal(&format!("{ctx}/primary"), primary_b64)?;
        let b = self
            .sealer
            .seal(&format!("{ctx}/secondary"), secondary_b64)?;
        self.tx.execute(
            "INSERT OR REPLACE INTO policies (name, rights, primary_key, secondary_key) VALUES (?1, ?2, ?3, ?4)",
            params![name, rights, a, b],
        )?;
        Ok(())
    }

    /// Adds `n` to the operation count of `day` (YYYY-MM-DD).
    pub fn add_operations(&self, day: &str, n: u64) -> Result<(), StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.tx.execute(
            "INSERT INTO operations_daily (day, count) VALUES (?1, ?2)
             ON CONFLICT (day) DO UPDATE SET count = count + ?2",
            params![day, n],
        )?;
        Ok(())
    }

    /// Operation counts per day, oldest first.
    pub fn operations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT day, count FROM operations_daily ORDER BY day")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::Row;

    #[test]
    fn row_debug_leaves_out_the_body() {
        let row = Row {
            key: "unit-1".into(),
            etag: "\"3\"".into(),
            json: br#"{"attestation":{"symmetricKey":{"primaryKey":"c2VjcmV0LWtleQ=="}}}"#.to_vec(),
        };
        let shown = format!("{row:?}");
        let len = format!("json_len: {}", row.json.len());
        assert!(shown.contains("unit-1") && shown.contains(&len), "{shown}");
        assert!(!shown.contains("99, 50"), "{shown}");
    }
}
