//! The station home: one directory holding the configuration, the database, logs, and (with
//! later parts) HSM configuration, CA certificates and trust anchors.
//!
//! ```text
//! H/station.toml     configuration (from the reference config)
//! H/config.d/*.toml  overrides, read in name order
//! H/station.db       SQLite database (mode 0600)
//! H/logs/            daemon logs
//! H/secrets/         station-local secrets that are not HSM keys (badge hashing key)
//! H/hsm/             embedded SoftHSM2: softhsm2.conf, tokens/, <token>.pin and .so-pin (0600)
//! H/ca/              CA certificates (root.pem, intermediate.pem) and profiles/*.toml
//! ```

pub mod init;

use std::path::{Path, PathBuf};

/// Why the home cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// The directory does not exist.
    #[error("station home {0} does not exist (create it with `station init --home {0}`)")]
    Missing(PathBuf),
    /// The path exists but is not a directory.
    #[error("station home {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The directory cannot be listed.
    #[error("station home {path} cannot be read")]
    Unreadable {
        /// The home.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A station home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at `root`, made absolute against the working directory.
    pub fn new(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(root))
                .unwrap_or_else(|_| root.to_path_buf())
        };
        Self { root }
    }

    /// The home directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `H/station.toml`.
    #[must_use]
    pub fn config_file(&self) -> PathBuf {
        self.root.join("station.toml")
    }

    /// `H/config.d`.
    #[must_use]
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config.d")
    }

    /// `H/secrets`: station-local secrets that are not HSM keys (mode 0700, files 0600).
    #[must_use]
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// `H/secrets/badge.key`: the key under which operator badge codes are hashed.
    #[must_use]
    pub fn badge_key_file(&self) -> PathBuf {
        self.secrets_dir().join("badge.key")
    }

    /// `H/run`: what a running daemon leaves for others (fixture locks, the web UI's URL).
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Resolves a configured path: absolute paths stay, relative ones are under the home.
    #[must_use]
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// Checks that the home exists and can be read.
    pub fn ensure_usable(&self) -> Result<(), HomeError> {
        match std::fs::metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(HomeError::Missing(self.root.clone()))
            }
            Err(source) => Err(HomeError::Unreadable {
                path: self.root.clone(),
                source,
            }),
            Ok(m) if !m.is_dir() => Err(HomeError::NotADirectory(self.root.clone())),
            Ok(_) => {
                std::fs::read_dir(&self.root)
                    .map(|_| ())
                    .map_err(|source| HomeError::Unreadable {
                        path: self.root.clone(),
                        source,
                    })
            }
        }
    }
}
