//! Backups of the station database, made by `station backup` and on `station serve`'s schedule
//! (`[backup]`), and put back by `station backup restore`.
//!
//! A backup is a copy the station checked before keeping it (`store::backup`: SQLite's
//! integrity check and the audit hash chain) and whose HSM-keyed audit checkpoint it checked
//! with this station's audit key: a backup that passes is this station's, unaltered. Each is
//! recorded in the audit log (`store.backup`), and the oldest in the backup directory are
//! pruned to `[backup] keep`.
//!
//! A restore sets the current database aside (renamed, never deleted), copies the backup in,
//! and records `store.restore` in the restored log. It refuses while a `station serve` runs on
//! the home, and, unless forced, when the current database holds records the backup lacks.

pub mod schedule;

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::json;

use crate::ca::service::{AuditKey, SealCheck};
use crate::config::Config;
use crate::home::Home;
use crate::ids::StationId;
use crate::store::audit::{self, AuditEvent};
use crate::store::backup::{self as file, BackupError, Contents, Written};
use crate::store::{Store, StoreError};

/// What the HSM-keyed audit checkpoint of a backup showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyed {
    /// Checked with this station's audit key.
    Checked(SealCheck),
    /// The HSM could not be used: why.
    Unchecked(String),
}

impl Keyed {
    /// Checks the keyed checkpoint of the database `store` is open on, when the key is at hand.
    pub fn check(store: &Store, key: Result<&AuditKey<'_>, String>) -> Self {
        match key {
            Ok(k) => match crate::ca::service::check_seal(store, k) {
                Ok(c) => Self::Checked(c),
                Err(e) => Self::Unchecked(crate::line::worker::error_text(&e)),
            },
            Err(why) => Self::Unchecked(why),
        }
    }

    /// Whether the checkpoint was checked and found altered.
    #[must_use]
    pub fn is_broken(&self) -> bool {
        matches!(self, Self::Checked(SealCheck::Broken(_)))
    }

    /// One line for people and logs.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Checked(SealCheck::Valid { seq, .. }) => {
                format!("keyed checkpoint verified with this station's HSM key (entry {seq})")
            }
            Self::Checked(SealCheck::Empty) => "no audit entry to authenticate".into(),
            Self::Checked(SealCheck::Broken(why)) => format!("keyed checkpoint BROKEN: {why}"),
            Self::Unchecked(why) => format!("keyed checkpoint not checked ({why})"),
        }
    }

    fn word(&self) -> &'static str {
        match self {
            Self::Checked(SealCheck::Valid { .. }) => "verified",
            Self::Checked(SealCheck::Empty) => "empty",
            Self::Checked(SealCheck::Broken(_)) => "broken",
            Self::Unchecked(_) => "unchecked",
        }
    }
}

/// A backup made: the file, what the keyed check showed, and the old backups pruned.
#[derive(Debug)]
pub struct Made {
    /// The checked file.
    pub written: Written,
    /// Its keyed checkpoint.
    pub keyed: Keyed,
    /// Backups removed from the backup directory to keep `[backup] keep`.
    pub pruned: Vec<PathBuf>,
}

/// The backup directory of a home.
#[must_use]
pub fn dir(home: &Home, cfg: &Config) -> PathBuf {
    home.resolve(&cfg.backup.dir)
}

/// Makes a backup of the database `store` is open on: into `out`, or into the backup
/// directory under a name with the time (then the oldest there beyond `[backup] keep` go).
/// The copy is checked, its keyed checkpoint checked with `key` when the HSM is at hand, and
/// the backup recorded in the audit log (`store.backup`), sealed in the same transaction with
/// `key`.
pub fn make(
    store: &mut Store,
    (home, cfg): (&Home, &Config),
    out: Option<&Path>,
    (station, actor): (&StationId, &str),
    key: Result<&AuditKey<'_>, String>,
) -> Result<Made, BackupError> {
    let scheduled = out.is_none();
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => {
            let d = dir(home, cfg);
            std::fs::create_dir_all(&d).map_err(|source| BackupError::Io {
                op: "create the backup directory",
                path: d.clone(),
                source,
            })?;
            d.join(file::stamped_name(Utc::now()))
        }
    };
    let written = file::write(store.conn(), &path)?;
    let keyed = Keyed::check(&Store::open_read_only(&written.path)?, key.clone());
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(crate::store::sql("begin the backup's audit entry"))?;
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "store.backup",
            subject: &written.path.display().to_string(),
            details: json!({
                "bytes": written.bytes,
                "sha256": written.sha256,
                "auditSeq": written.contents.audit_head.as_ref().map(|h| h.seq),
                "units": written.contents.units,
                "certificates": written.contents.certificates,
                "keyedCheckpoint": keyed.word(),
            }),
        },
    )?;
    if let Ok(k) = key
        && let Err(e) = k.seal(&tx)
    {
        tracing::warn!(error = %crate::line::worker::error_text(&e), "backup: audit checkpoint not sealed with the HSM key; the hash chain covers the entry");
    }
    tx.commit()
        .map_err(crate::store::sql("commit the backup's audit entry"))?;
    let pruned = if scheduled {
        file::prune(&dir(home, cfg), cfg.backup.keep as usize)?
    } else {
        Vec::new()
    };
    Ok(Made {
        written,
        keyed,
        pruned,
    })
}

/// Runs `f` with the audit key in the CA token of `hsm`, or with why it cannot be had (no HSM,
/// the token or the key not found): a backup is made and checked without it, its keyed
/// checkpoint left unchecked.
pub fn with_audit_key<R>(
    hsm: Result<&crate::hsm::Hsm, String>,
    home: &Home,
    cfg: &Config,
    f: impl FnOnce(Result<&AuditKey<'_>, String>) -> R,
) -> R {
    use crate::line::worker::error_text;
    let hsm = match hsm {
        Ok(h) => h,
        Err(e) => return f(Err(e)),
    };
    let session = match crate::ca::service::open_ca_token(hsm, home, cfg) {
        Ok(s) => s,
        Err(e) => return f(Err(error_text(&e))),
    };
    match AuditKey::find(&session, &cfg.ca.audit_key_label) {
        Ok(key) => f(Ok(&key)),
        Err(e) => f(Err(error_text(&e))),
    }
}

/// How `station serve` makes backups, given `[backup] every_h`.
#[must_use]
pub fn schedule(every_h: u32) -> String {
    if every_h == 0 {
        "station serve makes none ([backup] every_h = 0)".to_owned()
    } else {
        format!("station serve makes one every {every_h} h")
    }
}

/// Where a station's backups stand: the newest, how many, against `[backup] every_h`. Shown
/// by `station check` and the web UI's Upload page.
#[derive(Debug, Clone)]
pub struct Status {
    /// The backup directory.
    pub dir: PathBuf,
    /// The newest backup and when it was taken.
    pub newest: Option<(PathBuf, chrono::DateTime<Utc>)>,
    /// Backups in the directory.
    pub kept: usize,
    /// `[backup] every_h`.
    pub every_h: u32,
    /// Units the database holds.
    pub units: i64,
}

impl Status {
    /// Reads the backup directory, and the unit count from `conn`.
    pub fn read(
        home: &Home,
        cfg: &Config,
        conn: &rusqlite::Connection,
    ) -> Result<Self, BackupError> {
        let dir = dir(home, cfg);
        let mut all = file::in_dir(&dir)?;
        let units = conn
            .query_row("SELECT count(*) FROM units", [], |r| r.get(0))
            .map_err(crate::store::sql("count units"))?;
        Ok(Self {
            kept: all.len(),
            newest: all.pop(),
            dir,
            every_h: cfg.backup.every_h,
            units,
        })
    }

    /// How serve makes backups.
    #[must_use]
    pub fn schedule(&self) -> String {
        schedule(self.every_h)
    }

    /// What there is, in one line.
    #[must_use]
    pub fn summary(&self, now: chrono::DateTime<Utc>) -> String {
        match &self.newest {
            None => format!(
                "none in {} yet ({}; `station backup` makes one now)",
                self.dir.display(),
                self.schedule()
            ),
            Some((path, at)) => format!(
                "newest {}, {} h old, {} kept in {} ({})",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                (now - *at).num_hours().max(0),
                self.kept,
                self.dir.display(),
                self.schedule()
            ),
        }
    }

    /// Why someone should look, if they should: units recorded and no backup, or the newest
    /// more than twice `every_h` old.
    #[must_use]
    pub fn warning(&self, now: chrono::DateTime<Utc>) -> Option<String> {
        match &self.newest {
            None if self.units > 0 => {
                Some(format!("{} unit(s) recorded and no backup", self.units))
            }
            None => None,
            Some((_, at)) => {
                let age_h = (now - *at).num_hours();
                (self.every_h > 0 && age_h > 2 * i64::from(self.every_h)).then(|| {
                    format!(
                        "overdue: the newest backup is {age_h} h old; is station serve running, and can it write to {}?",
                        self.dir.display()
                    )
                })
            }
        }
    }
}

/// A note when the backup is on the database's own disk.
pub fn same_disk(db: &Path, backup: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).ok().map(|m| m.dev());
    (dev(db)? == dev(backup)?).then(|| {
        "on the database's own disk: it does not survive that disk; point [backup] dir at another disk or copy the backups off this machine".to_owned()
    })
}

/// A backup file checked as a restore would check it.
#[derive(Debug)]
pub struct Checked {
    /// What it holds.
    pub contents: Contents,
    /// Its keyed checkpoint.
    pub keyed: Keyed,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// Checks a backup file: a sound station database with an intact audit chain, and its keyed
/// checkpoint against this station's key.
pub fn check(path: &Path, key: Result<&AuditKey<'_>, String>) -> Result<Checked, BackupError> {
    let contents = file::check(path)?;
    let keyed = Keyed::check(&Store::open_read_only(path)?, key);
    let (bytes, sha256) = file::digest(path)?;
    Ok(Checked {
        contents,
        keyed,
        bytes,
        sha256,
    })
}

/// The newest backup in the backup directory and when it was taken.
pub fn newest(
    home: &Home,
    cfg: &Config,
) -> Result<Option<(PathBuf, chrono::DateTime<Utc>)>, BackupError> {
    Ok(file::in_dir(&dir(home, cfg))?.pop())
}

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A `station serve` or `station provision` runs on the home.
    #[error("cannot restore now: {0}")]
    Busy(String),
    /// The backup is not sound.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Without the HSM the backup cannot be shown to be this station's.
    #[error(
        "cannot restore {path}: the station's HSM is needed to check that the backup is this station's ({why})"
    )]
    NoKey {
        /// The backup.
        path: PathBuf,
        /// Why the HSM key could not be used.
        why: String,
    },
    /// The backup's keyed checkpoint does not verify.
    #[error(
        "cannot restore {path}: its audit checkpoint does not verify with this station's HSM key, so it is another station's backup or was altered ({why})"
    )]
    NotOurs {
        /// The backup.
        path: PathBuf,
        /// What the check found.
        why: String,
    },
    /// The current database holds what the backup lacks.
    #[error(
        "the current database {current} holds {newer}; a restore sets it aside (renamed, not deleted) and the station forgets them. Run again with --force to restore anyway"
    )]
    Newer {
        /// The current database.
        current: PathBuf,
        /// What it holds beyond the backup.
        newer: String,
    },
    /// Setting the current file aside or copying the backup in failed.
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
    /// The restored database could not be opened or recorded in.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A restore done.
#[derive(Debug)]
pub struct Restored {
    /// The backup restored.
    pub from: PathBuf,
    /// What it holds.
    pub contents: Contents,
    /// Where the database it replaced now is, if there was one.
    pub set_aside: Option<PathBuf>,
    /// The state of the replaced database: what it held beyond the backup, or why it could
    /// not be read.
    pub replaced: Option<String>,
}

/// What the current database holds beyond a backup; `None` if nothing.
fn beyond(current: &Store, backup: &Contents) -> Result<Option<String>, StoreError> {
    let conn = current.conn();
    let units: i64 = conn
        .query_row("SELECT count(*) FROM units", [], |r| r.get(0))
        .map_err(crate::store::sql("count units"))?;
    let backup_seq = backup.audit_head.as_ref().map_or(0, |h| h.seq);
    // The backup is an earlier state of this database when the entry it ends with is here,
    // unchanged.
    let ancestor = match &backup.audit_head {
        None => true,
        Some(h) => audit::entry_hash_at(conn, h.seq)?.as_deref() == Some(h.hash.as_str()),
    };
    if !ancestor {
        return Ok(Some(format!(
            "{units} units and an audit log that did not grow from the backup (its entry {backup_seq} is not here as it is in the backup)"
        )));
    }
    // The backup's own entry, later backups' and a restore's are not records it lacks.
    let newer: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_log WHERE seq > ?1 AND event NOT IN ('store.backup', 'store.restore')",
            [backup_seq],
            |r| r.get(0),
        )
        .map_err(crate::store::sql("count newer audit entries"))?;
    if newer > 0 {
        return Ok(Some(format!(
            "{newer} audit entries newer than the backup, and {units} units where the backup has {}",
            backup.units
        )));
    }
    Ok(None)
}

/// Restores the backup `from` over the home's database (see the module doc).
pub fn restore(
    (home, cfg): (&Home, &Config),
    from: &Path,
    force: bool,
    (station, actor): (&StationId, &str),
    key: Result<&AuditKey<'_>, String>,
) -> Result<Restored, RestoreError> {
    let _serving = crate::line::lock::ServeLock::exclusive(home)
        .map_err(|e| RestoreError::Busy(e.to_string()))?;
    let _fixtures = cfg
        .fixtures
        .keys()
        .map(|f| crate::line::lock::FixtureLock::take(home, f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RestoreError::Busy(e.to_string()))?;
    let key = key.map_err(|why| RestoreError::NoKey {
        path: from.to_path_buf(),
        why,
    })?;
    let checked = check(from, Ok(key))?;
    if let Keyed::Checked(SealCheck::Broken(why)) = &checked.keyed {
        return Err(RestoreError::NotOurs {
            path: from.to_path_buf(),
            why: why.clone(),
        });
    }
    let db = home.resolve(&cfg.store.path);
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { op, path, source }
    };
    // The current database: compared with the backup if it opens, then closed with its log
    // folded in, so its file alone holds it once set aside.
    let replaced = if db.exists() {
        match Store::open_unmigrated(&db, &cfg.store) {
            Ok(current) => {
                let newer = beyond(&current, &checked.contents)?;
                if let Some(n) = &newer
                    && !force
                {
                    return Err(RestoreError::Newer {
                        current: db.clone(),
                        newer: n.clone(),
                    });
                }
                let _ = current
                    .conn()
                    .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                drop(current);
                Some(newer.unwrap_or_else(|| "nothing the backup lacks".into()))
            }
            Err(e) => Some(format!("it could not be read: {e}")),
        }
    } else {
        None
    };
    let set_aside = if db.exists() {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let aside = (1..)
            .map(|n| {
                let mut a = db.as_os_str().to_owned();
                a.push(format!(".replaced-{stamp}"));
                if n > 1 {
                    a.push(format!("-{n}"));
                }
                PathBuf::from(a)
            })
            .find(|a| !a.exists())
            .unwrap_or_else(|| db.with_extension("replaced"));
        std::fs::rename(&db, &aside).map_err(io("set the current database aside as", &aside))?;
        // Its log and shared-memory files keep their names' pairing with it.
        for suffix in ["-wal", "-shm"] {
            let mut from_side = db.as_os_str().to_owned();
            from_side.push(suffix);
            let from_side = PathBuf::from(from_side);
            if from_side.exists() {
                let mut to = aside.as_os_str().to_owned();
                to.push(suffix);
                std::fs::rename(&from_side, PathBuf::from(&to))
                    .map_err(io("set aside", &from_side))?;
            }
        }
        Some(aside)
    } else {
        None
    };
    let mut incoming = db.as_os_str().to_owned();
    incoming.push(".restoring");
    let incoming = PathBuf::from(incoming);
    let _ = std::fs::remove_file(&incoming);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut src = std::fs::File::open(from).map_err(io("read", from))?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&incoming)
            .map_err(io("create", &incoming))?;
        std::io::copy(&mut src, &mut dst).map_err(io("copy the backup into", &incoming))?;
        dst.sync_all().map_err(io("sync", &incoming))?;
    }
    std::fs::rename(&incoming, &db).map_err(io("move the restored database to", &db))?;
    file::sync_dir(&db).map_err(io("sync the directory of", &db))?;

    let mut store = Store::open(&db, &cfg.store)?;
    let tx = store
        .conn_mut()
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(crate::store::sql("begin the restore's audit entry"))?;
    audit::append(
        &tx,
        station,
        &AuditEvent {
            actor,
            event: "store.restore",
            subject: &from.display().to_string(),
            details: json!({
                "sha256": checked.sha256,
                "auditSeq": checked.contents.audit_head.as_ref().map(|h| h.seq),
                "units": checked.contents.units,
                "setAside": set_aside.as_ref().map(|p| p.display().to_string()),
                "replaced": replaced,
            }),
        },
    )?;
    if let Err(e) = key.seal(&tx) {
        tracing::warn!(error = %crate::line::worker::error_text(&e), "restore: audit checkpoint not sealed with the HSM key; the hash chain covers the entry");
    }
    tx.commit()
        .map_err(crate::store::sql("commit the restore's audit entry"))?;
    Ok(Restored {
        from: from.to_path_buf(),
        contents: checked.contents,
        set_aside,
        replaced,
    })
}
