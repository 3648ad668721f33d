//! One process per fixture: `station serve` and `station provision` take an exclusive lock on
//! `H/run/fixture-<name>.lock` for as long as they drive the fixture, so the CLI cannot talk to a
//! unit the daemon is provisioning.

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
        let dir = home.run_dir();
        let path = dir.join(format!("fixture-{name}.lock"));
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
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| LockError::Busy(name.to_owned()))?;
        Ok(Self { _lock: lock })
    }
}
