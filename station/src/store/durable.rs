//! Group commit: the fixtures' transactions reach the disk together, outside the write turn.
//!
//! With `synchronous=FULL` every commit fsyncs the WAL while it holds SQLite's write lock, so
//! eight fixtures queue behind each other's fsyncs. A connection in group-commit mode commits
//! with `synchronous=NORMAL` instead (the frames are written to the WAL, no fsync) and, where
//! the commit must be durable, then waits for [`WalSync::sync_through`] after giving up the
//! write turn: one `fdatasync` of the WAL file covers every commit written before it, so a
//! thread that finds its commit already covered by another's sync returns at once.
//!
//! Why this is as durable as FULL: a commit is acknowledged only after an fdatasync of the WAL
//! that started after its frames were written. If a checkpoint moved those frames into the
//! database file first, SQLite (NORMAL, WAL) synced the database file when that checkpoint
//! completed, before the WAL could be reset or deleted. A power cut before the sync loses only
//! commits nobody was told about, and SQLite's WAL recovery keeps the file consistent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

/// The WAL of one database file, shared by every connection of this process to it.
#[derive(Debug)]
pub struct WalSync {
    wal: PathBuf,
    /// Durable commits written so far (counted after each returned).
    written: AtomicU64,
    /// The count the last completed fdatasync covered.
    synced: AtomicU64,
    /// fdatasync calls made.
    syncs: AtomicU64,
    /// The syncs under way, each by the count it covers (waiters they cover wait on `done`).
    syncing: Mutex<Vec<u64>>,
    done: Condvar,
    /// What the background syncer was asked to cover (see [`WalSync::start_sync`]).
    background: Mutex<Background>,
    asked: Condvar,
}

#[derive(Debug, Default)]
struct Background {
    /// The highest ticket asked for.
    want: u64,
    /// Its thread runs.
    started: bool,
}

/// A commit waiting to be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a group commit is durable only after WalSync::sync_through"]
pub struct Ticket(u64);

impl WalSync {
    /// The shared state for the database at `db` (one per file and process).
    pub fn for_database(db: &Path) -> Arc<Self> {
        static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<WalSync>>>> = OnceLock::new();
        let key = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
        let mut all = ALL
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(all.entry(key.clone()).or_insert_with(|| {
            let mut wal = key.into_os_string();
            wal.push("-wal");
            Arc::new(WalSync {
                wal: PathBuf::from(wal),
                written: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                syncs: AtomicU64::new(0),
                syncing: Mutex::new(Vec::new()),
                done: Condvar::new(),
                background: Mutex::default(),
                asked: Condvar::new(),
            })
        }))
    }

    /// The WAL file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.wal
    }

    /// Counts a commit that has just returned; its ticket is covered by the next sync that
    /// starts after this call.
    pub fn written(&self) -> Ticket {
        Ticket(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Whether a completed sync covers `ticket`.
    pub fn is_synced(&self, ticket: Ticket) -> bool {
        self.synced.load(Ordering::SeqCst) >= ticket.0
    }

    /// Starts a sync covering `ticket` on the background syncer thread (started at the first
    /// call) and returns at once, so that the caller works while the disk does. Its later
    /// [`WalSync::sync_through`] returns at once or joins that sync; should the syncer fail or
    /// not run yet, the caller syncs itself there, as without this call.
    pub fn start_sync(self: &Arc<Self>, ticket: Ticket) {
        if self.is_synced(ticket) {
            return;
        }
        let mut b = self
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        b.want = b.want.max(ticket.0);
        if !b.started {
            let me = Arc::clone(self);
            b.started = std::thread::Builder::new()
                .name("wal-sync".into())
                .spawn(move || me.run_syncer())
                .is_ok();
        }
        drop(b);
        self.asked.notify_one();
    }

    /// The background syncer: syncs whenever asked for a ticket no sync covers yet. It lives as
    /// long as the process, as this state does.
    fn run_syncer(&self) {
        loop {
            let mut b = self
                .background
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while self.is_synced(Ticket(b.want)) {
                b = self.asked.wait(b).unwrap_or_else(PoisonError::into_inner);
            }
            let want = Ticket(b.want);
            drop(b);
            // A failure reaches the waiter: its own sync_through syncs again and returns it.
            if self.sync_through(want).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Returns once the commit of `ticket` is on disk: at once if a sync already covered it,
    /// after the sync under way if that one started after the commit was written, otherwise
    /// after an fdatasync of its own, started at once.
    ///
    /// A waiter never queues behind a sync that cannot cover it: it starts its own alongside
    /// (fdatasync calls on one file may overlap; each returns once everything written to the
    /// file before it began is on disk, whoever started writing it back). Waiting for the
    /// sync under way to end and then syncing would cost up to two syncs. The syncs run
    /// outside the lock, and when one ends every waiter is woken at once.
    pub fn sync_through(&self, ticket: Ticket) -> std::io::Result<()> {
        if self.is_synced(ticket) {
            return Ok(());
        }
        let mut syncing = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_synced(ticket) {
                return Ok(());
            }
            if !syncing.iter().any(|&covers| covers >= ticket.0) {
                break;
            }
            syncing = self
                .done
                .wait(syncing)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Every commit counted up to here has its frames written: the sync covers them all.
        let covers = self.written.load(Ordering::SeqCst);
        syncing.push(covers);
        drop(syncing);
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let result = match std::fs::File::open(&self.wal) {
            Ok(f) => f.sync_data(),
            // No WAL: the last connection checkpointed it into the database file (synced by
            // that checkpoint) and deleted it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.synced.fetch_max(covers, Ordering::SeqCst);
        }
        let mut syncing = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = syncing.iter().position(|&c| c == covers) {
            syncing.swap_remove(i);
        }
        drop(syncing);
        // On failure too: a waiter then tries the sync itself and gets its own error.
        self.done.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file and its WAL in a fresh directory, and their sync state.
    fn database() -> (tempfile::TempDir, Arc<WalSync>) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("station.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dir.path().join("station.db-wal"), b"frames").unwrap();
        let wal = WalSync::for_database(&db);
        (dir, wal)
    }

    #[test]
    fn one_sync_covers_every_commit_written_before_it() {
        let (dir, a) = database();
        let b = WalSync::for_database(&dir.path().join(".").join("station.db"));
        assert!(
            Arc::ptr_eq(&a, &b),
            "one state per file, however it is named"
        );
        let first = a.written();
        let second = b.written();
        a.sync_through(second).unwrap();
        assert_eq!(a.synced.load(Ordering::SeqCst), 2);
        // Already covered: no second sync needed, and none is taken.
        b.sync_through(first).unwrap();
        assert_eq!(a.synced.load(Ordering::SeqCst), 2);
        let third = a.written();
        std::fs::remove_file(dir.path().join("station.db-wal")).unwrap();
        a.sync_through(third).unwrap();
        assert_eq!(a.synced.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_sync_started_in_the_background_covers_the_commit_while_the_caller_works() {
        let (_dir, wal) = database();
        let first = wal.written();
        assert!(!wal.is_synced(first));
        wal.start_sync(first);
        let start = std::time::Instant::now();
        while !wal.is_synced(first) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the background syncer never synced"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(wal.syncs.load(Ordering::SeqCst), 1);
        // The waiter finds its commit covered: no sync of its own.
        wal.sync_through(first).unwrap();
        assert_eq!(wal.syncs.load(Ordering::SeqCst), 1);
        // The syncer serves later requests too.
        let second = wal.written();
        wal.start_sync(second);
        wal.sync_through(second).unwrap();
        assert!(wal.is_synced(second));
    }

    #[test]
    fn concurrent_waiters_each_return_only_once_a_sync_covers_their_commit() {
        let (_dir, wal) = database();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..50 {
                        let ticket = wal.written();
                        wal.sync_through(ticket).unwrap();
                        assert!(
                            wal.synced.load(Ordering::SeqCst) >= ticket.0,
                            "returned before a sync covered ticket {}",
                            ticket.0
                        );
                    }
                });
            }
        });
        assert_eq!(wal.synced.load(Ordering::SeqCst), 400);
        assert!(
            wal.syncing.lock().unwrap().is_empty(),
            "no sync left marked running"
        );
    }

    #[test]
    fn a_waiter_does_not_queue_behind_a_sync_that_started_before_its_commit() {
        let (_dir, wal) = database();
        let first = wal.written();
        // A sync of the first commit under way (one that will never end, here).
        wal.syncing.lock().unwrap().push(first.0);
        let second = wal.written();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(wal.sync_through(second).is_ok()).unwrap());
            // A hang (waiting for the sync under way) fails here instead of stalling CI.
            let ok = rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("the waiter queued behind a sync that cannot cover its commit");
            assert!(ok);
        });
        assert_eq!(
            wal.syncs.load(Ordering::SeqCst),
            1,
            "it took a sync of its own"
        );
        assert!(wal.synced.load(Ordering::SeqCst) >= second.0);
        // Its own sync covered the first commit too.
        assert!(wal.synced.load(Ordering::SeqCst) >= first.0);
    }

    #[test]
    fn a_waiter_covered_by_the_sync_under_way_waits_for_it_and_takes_none_of_its_own() {
        let (_dir, wal) = database();
        let first = wal.written();
        let second = wal.written();
        // A sync started after both commits were written, under way.
        wal.syncing.lock().unwrap().push(second.0);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| wal.sync_through(first));
            std::thread::sleep(std::time::Duration::from_millis(50));
            // That sync ends.
            wal.synced.fetch_max(second.0, Ordering::SeqCst);
            wal.syncing.lock().unwrap().clear();
            wal.done.notify_all();
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(
            wal.syncs.load(Ordering::SeqCst),
            0,
            "the sync under way covered the commit: no second fdatasync"
        );
    }
}
