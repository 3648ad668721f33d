//! Checkpoints on a background connection, for connections in group-commit mode (the line's
//! shared writer, see [`super::durable`]).
//!
//! By default SQLite checkpoints the WAL into the database file inside the commit that takes the
//! WAL past 1,000 frames: that commit copies the pages back and fsyncs the database file while
//! its thread holds the write turn. In `scripts/bench line` (8 fixtures, 2 cores) that is
//! 1.5-4 ms once every ~25 units, and every fixture wanting the turn meanwhile waits: those
//! holds made the long write-turn waits of the slowest units.
//!
//! Here the writer connection's WAL hook wakes a checkpointer thread instead, which runs a
//! PASSIVE checkpoint on a connection of its own: it copies what no reader still needs and never
//! waits for, nor blocks, a writer or a reader. As after any checkpoint, the writer starts the WAL
//! over at its next transaction once every frame is copied and no reader still reads one.
//! Durability is SQLite's own: a checkpoint syncs the WAL before copying and the database file
//! before the WAL may be reset (`synchronous=NORMAL` on the checkpointer's connection, as on the
//! writer's). A kill during a checkpoint is SQLite's
//! ordinary case too.
//!
//! Should the checkpointer fall behind (the WAL past four times the threshold) or fail, the
//! writer checkpoints in its commit as SQLite would have; errors of such a checkpoint are
//! ignored, as SQLite ignores those of its own automatic checkpoints.

use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use super::{StoreError, sql};

/// WAL frames after which a checkpoint is wanted: SQLite's own `wal_autocheckpoint` default.
pub const AFTER_FRAMES: c_int = 1000;

/// The writer checkpoints itself once the WAL holds this many times [`AFTER_FRAMES`].
const BEHIND_FACTOR: c_int = 4;

/// State shared by the writer connection's WAL hook and the checkpointer thread.
#[derive(Debug, Default)]
struct Shared {
    wake: Mutex<Wake>,
    woken: Condvar,
    /// Set when the checkpointer's connection failed: the writer checkpoints from then on.
    failed: AtomicBool,
    /// Checkpoints the background thread completed.
    background: AtomicU64,
    /// Checkpoints the writer ran in its own commit.
    inline: AtomicU64,
    /// The WAL's frame count when the hook last woke the thread.
    woken_at: AtomicI32,
}

#[derive(Debug, Default)]
struct Wake {
    /// The hook asked for a checkpoint.
    wanted: bool,
    /// A checkpoint is under way (tests wait for the thread to be idle).
    running: bool,
    /// The writer is closing: the thread ends.
    stop: bool,
}

/// The checkpointer thread of one writer connection; stopped and joined when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens the checkpointer's connection to `path`, starts its thread and installs the WAL
    /// hook on `writer` that wakes it after `after` frames. The hook replaces the writer's
    /// automatic checkpoints.
    pub fn start(
        writer: &mut Connection,
        path: &Path,
        busy_timeout: std::time::Duration,
        after: c_int,
    ) -> Result<Self, StoreError> {
        // The writer's database exists: never create one.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open the checkpointer's connection"))?;
        conn.busy_timeout(busy_timeout)
            .map_err(sql("set the checkpointer's busy timeout"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("set the checkpointer's synchronous"))?;
        let shared = Arc::new(Shared::default());
        let hook = Arc::clone(&shared);
        writer
            .wal_hook(Some(move |wal: &mut Wal, frames: c_int| {
                if frames >= after.saturating_mul(BEHIND_FACTOR)
                    || (frames >= after && hook.failed.load(Ordering::SeqCst))
                {
                    // The commit has happened; a failed checkpoint must not fail it.
                    if wal.checkpoint_v2(CheckpointMode::PASSIVE).is_ok() {
                        hook.inline.fetch_add(1, Ordering::SeqCst);
                    }
                } else if frames < after {
                    // The WAL started over.
                    hook.woken_at.store(0, Ordering::SeqCst);
                } else {
                    // Once per WAL cycle, and again only after another eighth of the threshold:
                    // a commit landing during a checkpoint leaves a few frames to copy, and a
                    // checkpoint per commit would sync the files for each.
                    let last = hook.woken_at.load(Ordering::SeqCst);
                    if frames < last || frames - last >= after / 8 {
                        hook.woken_at.store(frames, Ordering::SeqCst);
                        hook.wake_up();
                    }
                }
                Ok(())
            }))
            .map_err(sql("install the WAL hook"))?;
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || worker.run(&conn))
            .map_err(|source| StoreError::Thread { source })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Checkpoints completed so far: (by the background thread, by the writer itself).
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (
            self.shared.background.load(Ordering::SeqCst),
            self.shared.inline.load(Ordering::SeqCst),
        )
    }
}

impl Shared {
    fn wake_up(&self) {
        self.wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wanted = true;
        self.woken.notify_one();
    }

    fn run(&self, conn: &Connection) {
        loop {
            let mut wake = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
            while !wake.wanted && !wake.stop {
                wake = self
                    .woken
                    .wait(wake)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wake.stop {
                return;
            }
            wake.wanted = false;
            wake.running = true;
            drop(wake);
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                Ok(()) => {
                    self.background.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "background checkpoint failed; the writer checkpoints in its commits from now on");
                    self.failed.store(true, Ordering::SeqCst);
                }
            }
            self.wake
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .running = false;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.woken.notify_one();
        if let Some(t) = self.thread.take() {
            // A panic in the thread has been reported by the panic hook already.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store;

    /// A new station database with a scratch table, in group-commit mode.
    fn store(dir: &Path) -> Store {
        let mut store = Store::create(&dir.join("station.db"), &StoreConfig::default()).unwrap();
        store
            .conn()
            .execute_batch("CREATE TABLE scratch (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
            .unwrap();
        store.group_commit().unwrap();
        store
    }

    /// Commits `n` rows of 8 KiB, one per transaction (three WAL frames or more each).
    fn write(conn: &mut Connection, n: usize) {
        for _ in 0..n {
            let tx = conn.transaction().unwrap();
            tx.execute("INSERT INTO scratch (data) VALUES (zeroblob(8192))", [])
                .unwrap();
            tx.commit().unwrap();
        }
    }

    fn rows(dir: &Path) -> i64 {
        let conn = Connection::open(dir.join("station.db")).unwrap();
        conn.query_row("SELECT count(*) FROM scratch", [], |r| r.get(0))
            .unwrap()
    }

    /// Waits (without a deadline that a slow machine could miss) for `done`, failing only
    /// after a minute, which no working checkpointer needs.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "never happened: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_group_commit_writer_has_its_wal_checkpointed_by_the_background_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let initial = std::fs::metadata(dir.path().join("station.db"))
            .unwrap()
            .len();
        // Past the threshold (1,000 frames), short of the writer's own fallback (4,000).
        write(store.conn_mut(), 450);
        let ckpt = store.checkpointer.as_ref().unwrap();
        let shared = Arc::clone(&ckpt.shared);
        eventually("a background checkpoint after the last commit", || {
            let wake = shared.wake.lock().unwrap();
            !wake.wanted && !wake.running && shared.background.load(Ordering::SeqCst) >= 1
        });
        assert_eq!(
            ckpt.counts().1,
            0,
            "the writer checkpointed in its own commit"
        );
        // The checkpoint copied frames into the database file itself: in WAL mode only a
        // checkpoint writes that file, so it grew from its few schema pages. (The file is not
        // read as a database here: a PASSIVE checkpoint that ran beside the writer's
        // transactions copies no page whose newest frame lies past the snapshot a transaction
        // still reads, and page 1 is rewritten by every commit that grows the file, so until a
        // checkpoint copies everything the file is consistent only with its WAL; a file-only
        // read failed as "malformed" about once in 30 runs of the store tests.)
        let grown = std::fs::metadata(dir.path().join("station.db"))
            .unwrap()
            .len();
        assert!(
            grown >= initial + 100 * 8192,
            "no rows reached the database file: {initial} bytes before, {grown} after"
        );
        write(store.conn_mut(), 10);
        // Dropping the store stops and joins the thread (a hang fails here, not CI's clock).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(store);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the store did not close: its checkpointer thread did not stop");
        assert_eq!(
            rows(dir.path()),
            460,
            "every committed row is in the database"
        );
    }

    /// Another writer connection to the database in `dir`, with a checkpointer woken after 20
    /// frames.
    fn writer_with_checkpointer(dir: &Path) -> (Connection, Checkpointer) {
        let path = dir.join("station.db");
        let mut writer = Connection::open(&path).unwrap();
        let ckpt =
            Checkpointer::start(&mut writer, &path, std::time::Duration::from_secs(5), 20).unwrap();
        (writer, ckpt)
    }

    #[test]
    fn a_writer_whose_checkpointer_fell_behind_or_failed_checkpoints_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path());
        let (mut writer, ckpt) = writer_with_checkpointer(dir.path());
        // A thread that never gets to run (faked: stopped): the WAL grows past four times the
        // threshold, and the writer's own commits checkpoint it.
        {
            let mut wake = ckpt.shared.wake.lock().unwrap();
            wake.stop = true;
        }
        ckpt.shared.woken.notify_one();
        eventually("the thread to stop", || {
            ckpt.thread
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished)
        });
        write(&mut writer, 40);
        assert!(ckpt.counts().1 >= 1, "{:?}", ckpt.counts());
        assert_eq!(ckpt.counts().0, 0);

        // A checkpointer whose connection failed: the writer checkpoints from the threshold on.
        let (mut writer, ckpt) = writer_with_checkpointer(dir.path());
        ckpt.shared.failed.store(true, Ordering::SeqCst);
        let before = ckpt.counts();
        write(&mut writer, 10);
        assert!(ckpt.counts().1 > before.1, "{:?}", ckpt.counts());
        drop(ckpt);
        drop(writer);
        write(store.conn_mut(), 1);
        assert_eq!(rows(dir.path()), 51);
    }
}
