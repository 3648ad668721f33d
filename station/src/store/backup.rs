//! Backup files of the database: a consistent copy taken while the station runs (SQLite's
//! `VACUUM INTO`, one read transaction: the line's writers go on), checked before it is kept,
//! named by the time it was taken, the oldest pruned. The HSM-keyed part of the check, the
//! audit entries and the restore are the caller's (`crate::backup`).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::Connection;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Store, StoreError, audit};

/// Why a backup could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A backup never replaces a file.
    #[error("{0} exists already; a backup never overwrites a file (choose another name)")]
    Exists(PathBuf),
    /// The file or its directory could not be written or read.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite takes the file name as text.
    #[error("backup path {0} is not valid UTF-8; choose another name")]
    NotUtf8(PathBuf),
    /// SQLite could not copy the database.
    #[error("the database could not be copied into {path}")]
    Copy {
        /// The file being written.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a sound station database.
    #[error("{path} is not a usable station backup: {why}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Reading the file as a database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The newest audit entry of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditHead {
    /// Its sequence number (the number of entries).
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// When it was written.
    pub ts: String,
    /// The station that wrote it.
    pub station_id: String,
}

/// What a checked database holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Contents {
    /// Schema version.
    pub schema: u32,
    /// Units recorded.
    pub units: i64,
    /// Certificates recorded.
    pub certificates: i64,
    /// The newest audit entry, if any.
    pub audit_head: Option<AuditHead>,
}

/// A backup written and checked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// What it holds.
    pub contents: Contents,
}

/// Copies the database `conn` is open on into `out`, which must not exist: first into
/// `out.partial` (mode 0600), synced and checked ([`check`]), then renamed to `out`, so `out`
/// only ever names a whole, sound copy.
pub fn write(conn: &Connection, out: &Path) -> Result<Written, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    let partial = partial_path(out);
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { op, path, source }
    };
    // One left by a backup that was cut short (a crash, a full disk).
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("remove the unfinished backup", &partial)(e));
        }
        _ => {}
    }
    let name = partial
        .to_str()
        .ok_or_else(|| BackupError::NotUtf8(out.to_path_buf()))?;
    // SQLite writes into an empty file it finds, keeping its mode: the copy holds sealed keys
    // and manufacturing records, and is never readable by others.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io("create", &partial))?;
    let copied = conn
        .execute("VACUUM INTO ?1", [name])
        .map_err(|source| BackupError::Copy {
            path: out.to_path_buf(),
            source,
        })
        .and_then(|_| {
            std::fs::File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &partial))
        })
        .and_then(|()| check(&partial));
    let contents = match copied {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(io("rename the finished backup to", out))?;
    sync_dir(out).map_err(io("sync the directory of", out))?;
    let (bytes, sha256) = digest(out)?;
    Ok(Written {
        path: out.to_path_buf(),
        bytes,
        sha256,
        contents,
    })
}

/// Where a backup is written before it is checked and renamed.
#[must_use]
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Syncs the directory holding `file`, so a rename into it survives a power cut.
pub fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Opens `path` read-only and checks it ([`check_store`]).
pub fn check(path: &Path) -> Result<Contents, BackupError> {
    if !path.is_file() {
        return Err(BackupError::Unusable {
            path: path.to_path_buf(),
            why: "there is no such file".into(),
        });
    }
    let store = Store::open_read_only(path).map_err(|e| BackupError::Unusable {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    check_store(&store)
}

/// Checks a station database as a backup must be: a station schema, SQLite's full
/// `integrity_check`, and an intact audit hash chain; says what it holds. (The HSM-keyed
/// checkpoint needs the station's HSM: see `crate::backup`.)
pub fn check_store(store: &Store) -> Result<Contents, BackupError> {
    let path = store.path();
    let unusable = |why: String| BackupError::Unusable {
        path: path.to_path_buf(),
        why,
    };
    let schema = store.schema_version()?;
    if schema == 0 {
        return Err(unusable("it is an empty database".into()));
    }
    let conn = store.conn();
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check(5)")
        .and_then(|mut st| {
            st.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(super::sql("integrity_check"))?;
    if problems != ["ok"] {
        return Err(unusable(format!("damaged ({})", problems.join("; "))));
    }
    let v = audit::verify(conn)?;
    if let Some(bad) = v.first_bad {
        return Err(unusable(format!(
            "its audit chain is broken at entry {}: {}",
            bad.seq, bad.reason
        )));
    }
    let count = |table: &str| -> Result<i64, StoreError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(super::sql("count rows"))
    };
    let audit_head = audit::newest(conn)?.map(|e| AuditHead {
        seq: e.seq,
        hash: e.hash,
        ts: e.ts,
        station_id: e.station_id,
    });
    Ok(Contents {
        schema,
        units: count("units")?,
        certificates: count("certificates")?,
        audit_head,
    })
}

/// Size and SHA-256 (hex) of a file.
pub fn digest(path: &Path) -> Result<(u64, String), BackupError> {
    let io = |source| BackupError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(h.finalize())))
}

/// The name of a backup taken at `at` in the backup directory: `station-YYYYMMDDTHHMMSSZ.db`.
#[must_use]
pub fn stamped_name(at: DateTime<Utc>) -> String {
    format!("station-{}.db", at.format(STAMP))
}

const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// When the backup named `name` was taken; `None` for any other name.
#[must_use]
pub fn taken_at(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix("station-")?.strip_suffix(".db")?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// The backups in `dir` (files named by [`stamped_name`]), oldest first; none when `dir` does
/// not exist.
pub fn in_dir(dir: &Path) -> Result<Vec<(PathBuf, DateTime<Utc>)>, BackupError> {
    let io = |source| BackupError::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        if let Some(at) = entry.file_name().to_str().and_then(taken_at)
            && entry.file_type().map_err(io)?.is_file()
        {
            found.push((entry.path(), at));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(found)
}

/// Removes the oldest backups in `dir` beyond the newest `keep`; returns those removed. Only
/// files named by [`stamped_name`] are touched.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let all = in_dir(dir)?;
    let extra = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (path, _) in all.into_iter().take(extra) {
        std::fs::remove_file(&path).map_err(|source| BackupError::Io {
            op: "remove the old backup",
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::StoreConfig;
    use crate::ids::StationId;
    use crate::store::audit::AuditEvent;

    fn database(dir: &Path) -> Store {
        let store = Store::create(&dir.join("station.db"), &StoreConfig::default()).unwrap();
        let tx = store.conn().unchecked_transaction().unwrap();
        for i in 0..3 {
            audit::append(
                &tx,
                &StationId::new("st-1").unwrap(),
                &AuditEvent {
                    actor: "test",
                    event: "test.event",
                    subject: &format!("s{i}"),
                    details: serde_json::json!({}),
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
        store
    }

    #[test]
    fn a_backup_is_a_checked_private_copy_that_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = database(dir.path());
        let out = dir.path().join("b.db");
        let w = write(store.conn(), &out).unwrap();
        assert_eq!(w.contents.audit_head.as_ref().map(|h| h.seq), Some(3));
        assert_eq!(w.contents.audit_head.as_ref().unwrap().station_id, "st-1");
        assert_eq!(w.contents.schema, crate::store::migrations::latest());
        assert_eq!(w.bytes, std::fs::metadata(&out).unwrap().len());
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!partial_path(&out).exists());
        assert_eq!(check(&out).unwrap(), w.contents);

        let before = std::fs::read(&out).unwrap();
        let again = write(store.conn(), &out).unwrap_err();
        assert!(matches!(again, BackupError::Exists(_)), "{again}");
        assert_eq!(std::fs::read(&out).unwrap(), before, "left as it was");
    }

    #[test]
    fn a_copy_with_a_broken_audit_chain_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = database(dir.path());
        // Edited as someone with the file would: past the append-only trigger.
        store
            .conn()
            .execute_batch(
                "DROP TRIGGER audit_log_no_update;
                 UPDATE audit_log SET subject = 'edited' WHERE seq = 2;",
            )
            .unwrap();
        let out = dir.path().join("b.db");
        let e = write(store.conn(), &out).unwrap_err();
        assert!(
            e.to_string()
                .contains("is not a usable station backup: its audit chain is broken at entry 2"),
            "{e}"
        );
        assert!(!out.exists() && !partial_path(&out).exists());
    }

    #[test]
    fn a_file_that_is_not_a_station_database_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(
            &junk,
            b"this is not a database at all, just some text\n".repeat(100),
        )
        .unwrap();
        let e = check(&junk).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{} is not a usable station backup: database",
                junk.display()
            )),
            "{e}"
        );
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let e = check(&empty).unwrap_err().to_string();
        assert!(e.ends_with("it is an empty database"), "{e}");
        let e = check(&dir.path().join("gone.db")).unwrap_err().to_string();
        assert!(
            e.ends_with("is not a usable station backup: there is no such file"),
            "{e}"
        );
    }

    #[test]
    fn names_carry_the_time_and_pruning_keeps_the_newest_and_nothing_else() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:44:12Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(stamped_name(at), "station-20261201T104412Z.db");
        assert_eq!(taken_at("station-20261201T104412Z.db"), Some(at));
        assert_eq!(taken_at("station-2026.db"), None);
        assert_eq!(taken_at("station.db"), None);

        let dir = tempfile::tempdir().unwrap();
        assert!(in_dir(&dir.path().join("none")).unwrap().is_empty());
        for day in ["03", "01", "04", "02"] {
            std::fs::write(
                dir.path().join(format!("station-202612{day}T000000Z.db")),
                day,
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("station-manual.db"), "mine").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let removed = prune(dir.path(), 2).unwrap();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(removed),
            ["station-20261201T000000Z.db", "station-20261202T000000Z.db"]
        );
        let left = in_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            names(left),
            ["station-20261203T000000Z.db", "station-20261204T000000Z.db"]
        );
        assert!(dir.path().join("station-manual.db").exists());
        assert!(dir.path().join("notes.txt").exists());
    }
}
