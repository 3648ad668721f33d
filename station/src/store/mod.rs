//! The SQLite store: WAL, `synchronous=FULL` by default (or group commit, see [`durable`]),
//! mode 0600, a schema version table, numbered migrations each in one transaction, and refusal
//! to open a newer schema.

pub mod audit;
pub mod backup;
pub mod checkpoint;
pub mod durable;
pub mod migrations;
pub mod priority;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::config::{StoreConfig, Synchronous};
use durable::{Ticket, WalSync};
use migrations::{MIGRATIONS, Migration};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file does not exist.
    #[error("database {0} does not exist (run `station init`)")]
    Missing(PathBuf),
    /// The database file already exists where a new one was to be made.
    #[error("database {0} already exists")]
    Exists(PathBuf),
    /// The file could not be created.
    #[error("cannot create database {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open the file.
    #[error("cannot open database {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a SQLite database, or is damaged.
    #[error(
        "database {path} is damaged or is not a SQLite database (nothing was changed); `station backup list` shows the backups and `station backup restore FILE` puts one back"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a SQLite database, but not a station's.
    #[error("database {0} is a SQLite database but not a station database")]
    Foreign(PathBuf),
    /// The schema is newer than this build knows.
    #[error(
        "database {path} has schema version {found}, newer than this station supports ({supported}); use the station version that wrote it"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Latest version this build knows.
        supported: u32,
    },
    /// A migration failed; it was rolled back.
    #[error("migration {version} ({name}) failed and was rolled back")]
    Migrate {
        /// The migration's version.
        version: u32,
        /// Its name.
        name: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The WAL could not be synced to disk after a commit (group commit): the commit is in
    /// the file but may not survive a power cut.
    #[error("cannot sync the database log {path} to disk")]
    Sync {
        /// The WAL file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store's checkpointer thread (see [`checkpoint`]) could not be started.
    #[error("cannot start the database checkpointer thread")]
    Thread {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A database operation failed.
    #[error("database operation failed: {op}")]
    Sql {
        /// What was being done.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

/// Whether SQLite refused a write because the database or its disk is full.
#[must_use]
pub fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = c.downcast_ref::<rusqlite::Error>()
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Maps a SQLite error of an operation into a [`StoreError`].
pub(crate) fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

/// The current UTC time as stored: RFC 3339 with microseconds and `Z`.
#[must_use]
pub fn now_utc() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn sync_pragma(s: Synchronous) -> &'static str {
    match s {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

/// The process's shared writer connection to one database, in group-commit mode, for the
/// line's fixtures and the uploader. Its mutex is the process's write turn: writers queue on
/// it, not in SQLite's busy handler, where one waiting on `BEGIN IMMEDIATE` sleeps with a
/// growing back-off (1, 2, 5, 10 ms...) and an unlucky one waits hundreds of ms while others
/// keep winning. One connection also keeps its page cache and prepared statements warm across
/// every writer's transactions, where a connection per writer re-reads the pages the others
/// changed each time it writes. Other processes (the CLI) still meet `busy_timeout_ms`.
/// A holder of the turn runs at real-time priority (`[store] realtime_write_turn`, see
/// [`priority`]).
#[derive(Debug, Clone)]
pub struct Writer {
    store: Arc<std::sync::Mutex<Store>>,
    realtime: bool,
}

/// The write turn on the shared connection; dropping it gives the turn back, then the
/// holder's real-time priority (fields drop in this order).
pub struct WriterTurn<'a> {
    store: std::sync::MutexGuard<'a, Store>,
    _raised: priority::Raised,
}

impl std::ops::Deref for WriterTurn<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl std::ops::DerefMut for WriterTurn<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

impl Writer {
    /// The shared writer for the database at `path`, opened on first use; it closes when the
    /// last holder drops it.
    pub fn open(path: &Path, cfg: &StoreConfig) -> Result<Self, StoreError> {
        type Writers = std::collections::HashMap<PathBuf, std::sync::Weak<std::sync::Mutex<Store>>>;
        static ALL: std::sync::OnceLock<std::sync::Mutex<Writers>> = std::sync::OnceLock::new();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = all.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(Self {
                store,
                realtime: cfg.realtime_write_turn,
            });
        }
        let mut store = Store::open(path, cfg)?;
        store.group_commit()?;
        let store = Arc::new(std::sync::Mutex::new(store));
        all.insert(key, Arc::downgrade(&store));
        Ok(Self {
            store,
            realtime: cfg.realtime_write_turn,
        })
    }

    /// Takes the process's write turn on this database (and real-time priority until it is
    /// given back, see [`priority`]).
    pub fn turn(&self) -> WriterTurn<'_> {
        let store = crate::timing::turn_wait(|| {
            self.store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        let raised = if self.realtime {
            priority::raise()
        } else {
            priority::Raised::NOTHING
        };
        WriterTurn {
            store,
            _raised: raised,
        }
    }
}

/// Prepared statements kept per connection (see `open_unmigrated`).
const STATEMENT_CACHE: usize = 96;

/// An open station database.
pub struct Store {
    /// Set in group-commit mode (see [`checkpoint`]). Declared before `conn`: stopped before
    /// the writer's connection closes.
    checkpointer: Option<checkpoint::Checkpointer>,
    conn: Connection,
    path: PathBuf,
    /// SQLite's max_page_count when `[store] max_size_mb` is set.
    max_pages: Option<i64>,
    /// `[store] synchronous` as configured.
    synchronous: Synchronous,
    /// `[store] busy_timeout_ms` as configured.
    busy_timeout: std::time::Duration,
    /// Set in group-commit mode (see [`durable`]).
    group: Option<Arc<WalSync>>,
}

/// A durable commit's last step: the fsync still to come in group-commit mode, or nothing.
#[derive(Debug)]
#[must_use = "the commit is durable only once `wait` returns"]
pub struct Durable(Option<(Arc<WalSync>, Ticket)>);

impl Durable {
    /// Returns once the commit is on disk. Call it after giving up the write turn.
    pub fn wait(&self) -> Result<(), StoreError> {
        match &self.0 {
            None => Ok(()),
            Some((wal, ticket)) => wal
                .sync_through(*ticket)
                .map_err(|source| StoreError::Sync {
                    path: wal.path().to_path_buf(),
                    source,
                }),
        }
    }

    /// Has the commit synced in the background while the caller works on (see
    /// `WalSync::start_sync`); [`Durable::wait`] still decides.
    pub fn start(&self) {
        if let Some((wal, ticket)) = &self.0 {
            wal.start_sync(*ticket);
        }
    }

    /// Whether the commit is on disk already (does not block).
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|(wal, ticket)| wal.is_synced(*ticket))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Creates a new database file (mode 0600) and applies every migration.
    pub fn create(path: &Path, cfg: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    StoreError::Exists(path.to_path_buf())
                } else {
                    StoreError::Create {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        let mut store = Self::open_unmigrated(path, cfg)?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database and applies pending migrations (for commands that write).
    pub fn open(path: &Path, cfg: &StoreConfig) -> Result<Self, StoreError> {
        let mut store = Self::open_unmigrated(path, cfg)?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database without migrating it. Refuses a damaged file, a foreign
    /// database and a newer schema before anything is written to the file.
    pub fn open_unmigrated(path: &Path, cfg: &StoreConfig) -> Result<Self, StoreError> {
        // The version is read before any pragma: setting WAL on a rollback-journal file (or on
        // a file we must refuse) would rewrite its header.
        let conn = open_known(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", sync_pragma(cfg.synchronous))
            .map_err(sql("set synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("enable foreign keys"))?;
        let busy_timeout = std::time::Duration::from_millis(u64::from(cfg.busy_timeout_ms));
        conn.busy_timeout(busy_timeout)
            .map_err(sql("set busy timeout"))?;
        // A unit's run and the uploader's deliveries use a few dozen distinct statements on the
        // shared writer; rusqlite's default cache of 16 would evict and re-parse them.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let max_pages = if cfg.max_size_mb > 0 {
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(sql("read page_size"))?;
            let pages = i64::from(cfg.max_size_mb) * 1024 * 1024 / page_size.max(512);
            // SQLite answers SQLITE_FULL once a write would grow the file past this; it never
            // shrinks an existing file, so a limit below the current size means "no growth".
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(sql("set max_page_count"))?;
            Some(pages)
        } else {
            None
        };
        Ok(Self {
            checkpointer: None,
            conn,
            path: path.to_path_buf(),
            max_pages,
            synchronous: cfg.synchronous,
            busy_timeout,
            group: None,
        })
    }

    /// Opens a database file as it is, read-only: nothing is migrated and no setting is
    /// written to it (a backup being checked). Refuses a damaged file, a foreign database and a
    /// newer schema as [`Store::open_unmigrated`] does.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let conn = open_known(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let cfg = StoreConfig::default();
        Ok(Self {
            checkpointer: None,
            conn,
            path: path.to_path_buf(),
            max_pages: None,
            synchronous: cfg.synchronous,
            busy_timeout: std::time::Duration::from_millis(u64::from(cfg.busy_timeout_ms)),
            group: None,
        })
    }

    /// When `[store] max_size_mb` is set and less room is left than a few units need: why new
    /// units are refused. Pages on SQLite's free list count as room.
    pub fn full_for_new_units(&self) -> Result<Option<String>, StoreError> {
        let Some(max) = self.max_pages else {
            return Ok(None);
        };
        let count = |pragma: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                .map_err(sql("read the database size"))
        };
        let used = count("page_count")?.saturating_sub(count("freelist_count")?);
        let page_size = count("page_size")?.max(512);
        let reserve = (max / 32).max(256 * 1024 / page_size);
        if used + reserve < max {
            return Ok(None);
        }
        Ok(Some(format!(
            "database full: {} uses {} of its {} KiB limit ([store] max_size_mb); new units are refused until it is raised or space is freed, units already recorded are kept",
            self.path.display(),
            used * page_size / 1024,
            max * page_size / 1024
        )))
    }

    /// Switches this connection to group commit (see [`durable`]): its transactions commit
    /// without an fsync of their own, and one that must be durable ends with
    /// [`Store::durable`] and, after the write turn is given up, [`Durable::wait`]. A station
    /// configured with `synchronous = "normal"` stays as configured. Either way its WAL is
    /// checkpointed on a background connection (see [`checkpoint`]), not inside its commits.
    pub fn group_commit(&mut self) -> Result<(), StoreError> {
        if self.synchronous == Synchronous::Full {
            self.conn
                .pragma_update(None, "synchronous", sync_pragma(Synchronous::Normal))
                .map_err(sql("set synchronous"))?;
            self.group = Some(WalSync::for_database(&self.path));
        }
        if self.checkpointer.is_none() {
            self.checkpointer = Some(checkpoint::Checkpointer::start(
                &mut self.conn,
                &self.path,
                self.busy_timeout,
                checkpoint::AFTER_FRAMES,
            )?);
        }
        Ok(())
    }

    /// Call right after a commit that must be durable has returned; `wait` on the result.
    /// Outside group-commit mode the commit already was as durable as configured.
    pub fn durable(&self) -> Durable {
        Durable(self.group.as_ref().map(|w| (Arc::clone(w), w.written())))
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for reads and for transactions of the layers above.
    #[must_use]
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The connection, mutable (to start transactions).
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        read_version(&self.conn, &self.path)
    }

    /// Migrations not yet applied.
    pub fn pending(&self) -> Result<Vec<&'static Migration>, StoreError> {
        let v = self.schema_version()?;
        Ok(MIGRATIONS.iter().filter(|m| m.version > v).collect())
    }

    /// Applies pending migrations, each in one transaction with its version bump.
    ///
    /// `[store] max_size_mb` is lifted while they run: it keeps room for units, and a
    /// migration that copies a table (7 rebuilds certificates) needs room for both copies for
    /// a moment. The old copy's pages are free again afterwards, and the limit holds again.
    pub fn migrate(&mut self) -> Result<Vec<u32>, StoreError> {
        let pending = self.pending()?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let Some(max) = self.max_pages else {
            return self.apply(&pending);
        };
        // SQLite's own ceiling for the pragma.
        self.set_max_pages(0xffff_fffe)?;
        let applied = self.apply(&pending);
        self.set_max_pages(max)?;
        applied
    }

    fn set_max_pages(&self, pages: i64) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "max_page_count", pages)
            .map_err(sql("set max_page_count"))
    }

    fn apply(&mut self, pending: &[&'static Migration]) -> Result<Vec<u32>, StoreError> {
        let mut applied = Vec::new();
        for m in pending {
            let err = |source| StoreError::Migrate {
                version: m.version,
                name: m.name,
                source,
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute_batch(m.sql).map_err(err)?;
            let now = now_utc();
            tx.execute(
                "INSERT INTO schema_version (id, version, updated_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                rusqlite::params![m.version, now],
            )
            .map_err(err)?;
            tx.execute(
                "INSERT INTO schema_history (version, name, applied_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![m.version, m.name, now],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
            applied.push(m.version);
        }
        Ok(applied)
    }

    /// SQLite's `quick_check`: `ok`, or the first problems found.
    pub fn quick_check(&self) -> Result<String, StoreError> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(sql("quick_check"))?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql("quick_check"))?
            .collect::<Result<_, _>>()
            .map_err(sql("quick_check"))?;
        Ok(rows.join("; "))
    }

    /// The file's permission bits.
    pub fn file_mode(&self) -> std::io::Result<u32> {
        Ok(std::fs::metadata(&self.path)?.permissions().mode() & 0o777)
    }
}

/// Opens an existing file (`flags` plus no-mutex) whose schema version this build knows,
/// writing nothing to it.
fn open_known(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(
        |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    )?;
    let found = read_version(&conn, path)?;
    if found > migrations::latest() {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: migrations::latest(),
        });
    }
    Ok(conn)
}

/// Reads the schema version; 0 for an empty file. Classifies "not a database" as corruption.
fn read_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let corrupt = |source: rusqlite::Error| match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                source,
            }
        }
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    };
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(corrupt)?;
    let has_version: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
        .map_err(corrupt)?;
    if !has_version {
        return if tables == 0 {
            Ok(0)
        } else {
            Err(StoreError::Foreign(path.to_path_buf()))
        };
    }
    let v: Option<i64> = conn
        .query_row("SELECT version FROM schema_version WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(corrupt)?;
    Ok(v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &Store) -> i64 {
        store
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn writers_share_one_group_commit_connection_whose_durable_commits_wait_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let cfg = StoreConfig::default();
        drop(Store::create(&path, &cfg).unwrap());
        let a = Writer::open(&path, &cfg).unwrap();
        let b = Writer::open(&dir.path().join(".").join("s.db"), &cfg).unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store), "one connection per file");

        let mut turn = a.turn();
        // NORMAL (1) inside the turn: the fsync comes after it, from Durable::wait.
        assert_eq!(synchronous(&turn), 1);
        let tx = turn.conn_mut().transaction().unwrap();
        tx.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42)")
            .unwrap();
        tx.commit().unwrap();
        let durable = turn.durable();
        assert!(
            durable.0.is_some(),
            "a group-commit connection owes an fsync"
        );
        drop(turn);
        durable.wait().unwrap();
        let fresh = Store::open(&path, &cfg).unwrap();
        assert_eq!(synchronous(&fresh), 2, "other connections stay FULL");
        let x: i64 = fresh
            .conn()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 42);
    }

    /// A writer on a fresh database, with `[store] realtime_write_turn` as given.
    fn writer(realtime: bool) -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let cfg = StoreConfig {
            realtime_write_turn: realtime,
            ..StoreConfig::default()
        };
        drop(Store::create(&path, &cfg).unwrap());
        let w = Writer::open(&path, &cfg).unwrap();
        (dir, w)
    }

    fn own_nice() -> i32 {
        // SAFETY: plain system calls about the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn the_write_turn_holder_runs_at_real_time_priority_and_returns_to_its_own_after() {
        let (_dir, w) = writer(true);
        std::thread::scope(|s| {
            s.spawn(|| {
                // A station started with `nice`: the thread keeps its nice value.
                // SAFETY: a plain system call about the calling thread.
                let set = unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 5)
                };
                assert_eq!(set, 0);
                assert_eq!(priority::current_policy(), libc::SCHED_OTHER);
                {
                    let mut turn = w.turn();
                    let expected = match priority::available() {
                        Ok(()) => libc::SCHED_FIFO,
                        // Without the right to it (not root, no RTPRIO limit), the turn runs
                        // at normal priority and says so once.
                        Err(_) => libc::SCHED_OTHER,
                    };
                    assert_eq!(priority::current_policy(), expected);
                    assert_eq!(priority::refused(), expected == libc::SCHED_OTHER);
                    turn.conn_mut()
                        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
                        .unwrap();
                }
                assert_eq!(priority::current_policy(), libc::SCHED_OTHER);
                assert_eq!(own_nice(), 5);
                // The turn was given back: another thread takes it.
                std::thread::scope(|s2| {
                    s2.spawn(|| drop(w.turn())).join().unwrap();
                });
            })
            .join()
            .unwrap();
        });
    }

    #[test]
    fn the_write_turn_leaves_the_priority_alone_when_turned_off_or_the_thread_has_its_own() {
        let (_dir, off) = writer(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _turn = off.turn();
                assert_eq!(priority::current_policy(), libc::SCHED_OTHER);
            })
            .join()
            .unwrap();
        });
        let (_dir2, on) = writer(true);
        std::thread::scope(|s| {
            s.spawn(|| {
                // A thread an operator put at idle priority stays there.
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: a system call on the calling thread; `param` outlives it.
                let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                assert_eq!(set, 0);
                let _turn = on.turn();
                assert_eq!(priority::current_policy(), libc::SCHED_IDLE);
            })
            .join()
            .unwrap();
        });
    }

    #[test]
    fn a_station_configured_normal_keeps_its_setting_and_owes_no_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let cfg = StoreConfig {
            synchronous: Synchronous::Normal,
            ..StoreConfig::default()
        };
        let mut store = Store::create(&path, &cfg).unwrap();
        store.group_commit().unwrap();
        assert_eq!(synchronous(&store), 1);
        assert!(store.durable().0.is_none());
    }

    #[test]
    fn a_size_limit_refuses_new_units_before_sqlite_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let cfg = StoreConfig {
            max_size_mb: 1,
            ..StoreConfig::default()
        };
        let store = Store::create(&path, &cfg).unwrap();
        assert_eq!(store.full_for_new_units().unwrap(), None);
        store
            .conn()
            .execute_batch("CREATE TABLE filler (b BLOB)")
            .unwrap();
        let mut refused_first = false;
        let err = loop {
            match store
                .conn()
                .execute("INSERT INTO filler VALUES (zeroblob(8192))", [])
            {
                Ok(_) => {
                    refused_first |= store.full_for_new_units().unwrap().is_some();
                }
                Err(e) => break e,
            }
        };
        // New units were refused while there was still room for running ones to finish.
        assert!(refused_first);
        assert!(is_full(&err), "{err}");
        let why = store.full_for_new_units().unwrap().unwrap();
        assert!(why.starts_with("database full: "), "{why}");
        assert!(
            why.contains("1024 KiB limit ([store] max_size_mb)"),
            "{why}"
        );
        // Without a limit nothing is refused.
        let open = Store::open(&path, &StoreConfig::default()).unwrap();
        assert_eq!(open.full_for_new_units().unwrap(), None);
    }

    /// The outbox keeps the indexes its queries search (the next test) and no other: each is
    /// written by every queued enrollment and every delivery. Migration 8 dropped
    /// `outbox_pending` (destination, done_at), which no query searched since migration 4.
    /// `outbox_export` (migration 9) is partial: only rows in an air-gapped export enter it, so
    /// a unit queued and delivered online never writes it.
    #[test]
    fn the_outbox_keeps_only_the_indexes_its_queries_search() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.db"), &StoreConfig::default()).unwrap();
        let names: Vec<String> = store
            .conn()
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'
                 AND sql IS NOT NULL ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["outbox_due", "outbox_export", "outbox_unit"]);
        let partial: String = store
            .conn()
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'outbox_export'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            partial.ends_with("WHERE export_id IS NOT NULL"),
            "{partial}"
        );
    }

    /// The lookups a unit's run and an upload pass make search an index, so their cost does
    /// not grow with the units recorded before: a line running for months must not slow down.
    /// Before migration 5, confirming a unit's certificate scanned the whole certificates
    /// table, and every scan counted its lot by scanning all units.
    #[test]
    fn the_lookups_of_a_unit_and_of_an_upload_pass_search_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.db"), &StoreConfig::default()).unwrap();
        for (q, key) in [
            (
                "UPDATE certificates SET status = 'live' WHERE unit_id = 1 AND status = 'issued'",
                "unit_id=?",
            ),
            (
                "SELECT der FROM certificates WHERE unit_id = 1 AND status = 'live'",
                "unit_id=?",
            ),
            (
                "SELECT count(*) FROM units u WHERE u.lot_id = 'L1'",
                "lot_id=?",
            ),
            (
                "SELECT max(r.id) FROM runs r WHERE r.unit_id = 1",
                "unit_id=?",
            ),
            (
                "SELECT etag FROM enrollments WHERE dps_target = 'a' AND unit_id = 1",
                "unit_id=?",
            ),
            ("SELECT id FROM outbox WHERE unit_id = 1", "unit_id=?"),
            (
                "SELECT id FROM run_transitions WHERE run_id = 1",
                "run_id=?",
            ),
            // The uploader's pass: its due rows and what is left, by delivery state.
            (
                "SELECT count(*) FROM outbox WHERE state IN ('pending', 'conflict') AND kind IN ('a')",
                "state=?",
            ),
            (
                "SELECT id FROM outbox WHERE state = 'pending' AND export_id IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= 'x') AND kind IN ('a') AND destination NOT IN ('dps:b') ORDER BY id LIMIT 64",
                "state=?",
            ),
            // An export's rows (a receipt, an export written again, the status).
            (
                "SELECT count(*) FROM outbox WHERE export_id = 'e' AND state = 'pending'",
                "export_id=?",
            ),
        ] {
            let mut st = store
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
                .unwrap();
            let plan: Vec<String> = st
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter()
                    .any(|d| d.starts_with("SEARCH") && d.contains("USING") && d.contains(key)),
                "{q}: {plan:?}"
            );
            assert!(!plan.iter().any(|d| d.starts_with("SCAN")), "{q}: {plan:?}");
        }
    }

    /// A database file as a station built before migration `version + 1` left it.
    fn database_at_version(path: &Path, version: u32) -> Connection {
        let c = Connection::open(path).unwrap();
        for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
            c.execute_batch(m.sql).unwrap();
        }
        c.execute(
            "INSERT INTO schema_version (id, version, updated_at) VALUES (1, ?1, 't')",
            [version],
        )
        .unwrap();
        c
    }

    /// Migration 7 rebuilds the certificates table for its compact serial index: a database
    /// from before keeps every certificate (ids, bytes, status), and the new index still
    /// refuses a serial twice for one issuer while another issuer may reuse it.
    #[test]
    fn migration_7_keeps_every_certificate_and_refuses_a_serial_twice_per_issuer() {
        let issuer = "9f".repeat(32);
        let other = "0a".repeat(32);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = database_at_version(&path, 6);
            for (i, status) in ["live", "superseded", "issued"].iter().enumerate() {
                let serial = format!("{:032x}", 0xabc0 + i);
                c.execute(
                    CERTIFICATE_INSERT,
                    rusqlite::params![issuer, serial, vec![i as u8; 3], status],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path, &StoreConfig::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::latest());
        let rows = certificate_rows(&store);
        assert_eq!(
            rows,
            vec![
                (1, format!("{:032x}", 0xabc0), vec![0; 3], "live".to_owned()),
                (
                    2,
                    format!("{:032x}", 0xabc1),
                    vec![1; 3],
                    "superseded".to_owned()
                ),
                (
                    3,
                    format!("{:032x}", 0xabc2),
                    vec![2; 3],
                    "issued".to_owned()
                ),
            ]
        );
        let insert = |issuer: &str, serial: &str| {
            store
                .conn()
                .execute(
                    CERTIFICATE_INSERT,
                    rusqlite::params![issuer, serial, vec![9u8], "issued"],
                )
                .map_err(|e| e.sqlite_error_code())
        };
        let taken = format!("{:032x}", 0xabc1);
        assert_eq!(
            insert(&issuer, &taken),
            Err(Some(rusqlite::ErrorCode::ConstraintViolation)),
            "a serial recorded before the migration is still taken"
        );
        // Serials are lowercase hex, so a serial has one spelling.
        assert_eq!(
            insert(&issuer, &taken.to_uppercase()),
            Err(Some(rusqlite::ErrorCode::ConstraintViolation))
        );
        assert_eq!(
            insert(&other, &taken),
            Ok(1),
            "another issuer's serial space"
        );
        assert_eq!(
            insert(&issuer, "not-hex"),
            Err(Some(rusqlite::ErrorCode::ConstraintViolation)),
            "a serial that is not lowercase hex is refused"
        );
        let indexes: String = store
            .conn()
            .query_row(
                "SELECT group_concat(sql, ';') FROM sqlite_master WHERE tbl_name = 'certificates' AND type = 'index'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            indexes.contains("certificates_unit") && indexes.contains("certificates_serial"),
            "{indexes}"
        );
        drop(store);

        // The schema uses no function newer than Debian 12's sqlite3 (3.40): an engineer can
        // still check and edit the file with the system's CLI.
        let (out, err) = sqlite3_cli(
            &path,
            "PRAGMA integrity_check; UPDATE certificates SET status = status; SELECT count(*) FROM certificates;",
        );
        assert_eq!(out, "ok\n4\n", "{err}");
    }

    /// Migration 11 spells the certificates' status check as comparisons: every certificate
    /// is kept, the same statuses are admitted and refused, and inserting a certificate no
    /// longer builds a temporary b-tree of the allowed statuses (SQLite's OpenEphemeral).
    #[test]
    fn migration_11_keeps_the_certificates_and_their_status_check_without_a_temporary_table() {
        let issuer = "9f".repeat(32);
        let statuses = ["issued", "live", "superseded", "revoked"];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = database_at_version(&path, 10);
            let plan = explain(&c, CERTIFICATE_INSERT);
            assert!(plan.contains("OpenEphemeral"), "before: {plan}");
            for (i, status) in statuses.iter().enumerate() {
                let serial = format!("{:032x}", 0xbee0 + i);
                c.execute(
                    CERTIFICATE_INSERT,
                    rusqlite::params![issuer, serial, vec![i as u8; 4], status],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path, &StoreConfig::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::latest());
        let rows = certificate_rows(&store);
        let expected: Vec<(i64, String, Vec<u8>, String)> = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    i as i64 + 1,
                    format!("{:032x}", 0xbee0 + i),
                    vec![i as u8; 4],
                    (*s).to_owned(),
                )
            })
            .collect();
        assert_eq!(rows, expected);
        let plan = explain(store.conn(), CERTIFICATE_INSERT);
        assert!(!plan.contains("OpenEphemeral"), "after: {plan}");
        let insert = |serial: &str, status: &str| {
            store
                .conn()
                .execute(
                    CERTIFICATE_INSERT,
                    rusqlite::params![issuer, serial, vec![9u8], status],
                )
                .map_err(|e| e.sqlite_error_code())
        };
        for (i, status) in statuses.iter().enumerate() {
            assert_eq!(insert(&format!("{:032x}", 0xcee0 + i), status), Ok(1));
        }
        for status in ["Issued", "expired", ""] {
            assert_eq!(
                insert(&format!("{:032x}", 0xdee0), status),
                Err(Some(rusqlite::ErrorCode::ConstraintViolation)),
                "status {status:?}"
            );
        }
        assert_eq!(
            store
                .conn()
                .execute("UPDATE certificates SET status = 'lost' WHERE id = 1", [])
                .map_err(|e| e.sqlite_error_code()),
            Err(Some(rusqlite::ErrorCode::ConstraintViolation))
        );
        assert_eq!(
            insert(&format!("{:032x}", 0xbee1), "issued"),
            Err(Some(rusqlite::ErrorCode::ConstraintViolation)),
            "a serial recorded before the migration is still taken"
        );
        drop(store);
        let (out, err) = sqlite3_cli(
            &path,
            "PRAGMA integrity_check; SELECT count(*) FROM certificates;",
        );
        assert_eq!(out, "ok\n8\n", "{err}");
    }

    /// A certificate row as the migration tests write it: issuer, serial, DER, status.
    const CERTIFICATE_INSERT: &str = "INSERT INTO certificates (issuer_key_id, serial_hex, unit_id,
         registration_id, subject, profile, not_before, not_after, fingerprint_sha256, der,
         status, issued_at) VALUES (?1, ?2, NULL, 'r', 'CN=r', 'device', 't', 't', 'f', ?3, ?4, 't')";

    /// Every certificate's id, serial, DER and status, in id order.
    fn certificate_rows(store: &Store) -> Vec<(i64, String, Vec<u8>, String)> {
        store
            .conn()
            .prepare("SELECT id, serial_hex, der, status FROM certificates ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The system's `sqlite3` CLI (Debian 12's is 3.40) run on `path`: its stdout and stderr.
    fn sqlite3_cli(path: &Path, sql: &str) -> (String, String) {
        let out = std::process::Command::new("sqlite3")
            .arg(path)
            .arg(sql)
            .output()
            .expect("the sqlite3 CLI (scripts/bootstrap installs it)");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The opcodes SQLite compiles `sql` to, one per line.
    fn explain(c: &Connection, sql: &str) -> String {
        c.prepare(&format!("EXPLAIN {sql}"))
            .unwrap()
            .query_map(["a", "b", "c", "d"], |r| r.get::<_, String>(1))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A migration that copies a table (7 rebuilds certificates) needs room for both copies
    /// for a moment. `[store] max_size_mb` keeps room for units, not for the schema: a capped
    /// station whose certificates fill most of its limit still upgrades, and the limit holds
    /// again afterwards.
    #[test]
    fn a_size_limit_does_not_stop_a_migration_and_holds_again_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = database_at_version(&path, 6);
            // ~0.6 MiB of certificates under a 1 MiB limit: two copies do not fit.
            c.execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
                 INSERT INTO certificates (issuer_key_id, serial_hex, registration_id, subject,
                   profile, not_before, not_after, fingerprint_sha256, der, status, issued_at)
                 SELECT 'k', printf('%032x', i), 'r', 'CN=r', 'device', 't', 't', 'f',
                   zeroblob(1000), 'live', 't' FROM n",
            )
            .unwrap();
        }
        let cfg = StoreConfig {
            max_size_mb: 1,
            ..StoreConfig::default()
        };
        let store = Store::open(&path, &cfg).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::latest());
        let count: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM certificates", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 600);
        let cap: i64 = store
            .conn()
            .query_row("PRAGMA max_page_count", [], |r| r.get(0))
            .unwrap();
        let page_count: i64 = store
            .conn()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            cap,
            (1024 * 1024 / 4096).max(page_count),
            "the configured limit again (never below the file's size)"
        );
    }

    #[test]
    fn create_migrates_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::create(&path, &StoreConfig::default()).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::latest());
        assert_eq!(store.file_mode().unwrap(), 0o600);
        assert!(store.pending().unwrap().is_empty());
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        assert!(matches!(
            Store::create(&path, &StoreConfig::default()),
            Err(StoreError::Exists(_))
        ));
    }

    #[test]
    fn refuses_newer_schema_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::create(&path, &StoreConfig::default()).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.execute("UPDATE schema_version SET version = 99", [])
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path, &StoreConfig::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn refuses_garbage_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path, &StoreConfig::default()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);

        let other = dir.path().join("o.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = Store::open(&other, &StoreConfig::default()).unwrap_err();
        assert!(matches!(err, StoreError::Foreign(_)), "{err}");
    }
}
