//! One process per fixture: `station serve` and `station provision` take an exclusive lock on
//! `H/run/fixture-<name>.lock` for as long as they drive the fixture, so the CLI cannot talk to a
//! unit the daemon is provisioning. A running `station serve` also holds `H/run/serve.lock`
//! (shared), which a restore of the database needs whole.

use std::fs::OpenOptions;

use nix::fcntl::{Flock, FlockArg};

use crate::home::Home;

/// Why a fixture could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process drives the fixture.
    #[error(
        "fixture {0} is driven by another station process (a running `station serve`?); scan there, or stop it first"
    )]
    Busy(String),
    /// A `station serve` runs on this home (for a restore).
    #[error("a `station serve` is running on this home; stop it first")]
    Serving,
    /// A restore of the database is under way (for a `station serve`).
    #[error(
        "the database is being restored (`station backup restore`); start again once it is done"
    )]
    Restoring,
    /// The lock file could not be made.
    #[error("cannot create the fixture lock {path}")]
    Io {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A held fixture lock; released on drop.
#[derive(Debug)]
pub struct FixtureLock {
    _lock: Flock<std::fs::File>,
}

impl FixtureLock {
    /// Takes fixture `name`'s lock, or says who has it.
    pub fn take(home: &Home, name: &str) -> Result<Self, LockError> {
        let lock = lock_file(
            home,
            &format!("fixture-{name}.lock"),
            FlockArg::LockExclusiveNonblock,
        )?
        .map_err(|()| LockError::Busy(name.to_owned()))?;
        Ok(Self { _lock: lock })
    }
}

/// Takes `how` on `H/run/NAME`, made if missing: `Err(())` inside when someone else holds it.
fn lock_file(
    home: &Home,
    name: &str,
    how: FlockArg,
) -> Result<Result<Flock<std::fs::File>, ()>, LockError> {
    let dir = home.run_dir();
    let path = dir.join(name);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    Ok(Flock::lock(file, how).map_err(|_| ()))
}

/// Held by every `station serve` (shared: several may run, each with its own fixtures) for as
/// long as it runs, on `H/run/serve.lock`; a restore of the database takes it exclusively, so
/// it never swaps the file under a running station.
#[derive(Debug)]
pub struct ServeLock {
    _lock: Flock<std::fs::File>,
}

impl ServeLock {
    /// A running `station serve`'s share of the lock.
    pub fn shared(home: &Home) -> Result<Self, LockError> {
        Self::take(home, FlockArg::LockSharedNonblock, LockError::Restoring)
    }

    /// The whole lock: no `station serve` runs on this home while it is held.
    pub fn exclusive(home: &Home) -> Result<Self, LockError> {
        Self::take(home, FlockArg::LockExclusiveNonblock, LockError::Serving)
    }

    fn take(home: &Home, how: FlockArg, held: LockError) -> Result<Self, LockError> {
        let lock = lock_file(home, "serve.lock", how)?.map_err(|()| held)?;
        Ok(Self { _lock: lock })
    }
}
