//! Typed configuration: `station.toml` plus `config.d/*.toml`, merged in name order.
//!
//! Each file is first checked on its own, so an error names the file and the key; then the
//! files are merged table by table and checked across fields by [`Config::check`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::home::Home;
use crate::ids::StationId;
use crate::logging::LogFormat;

mod line;
mod web;
pub use line::{
    Delivery, DpsConfig, DpsTarget, FixtureConfig, LineConfig, RegistrationsConfig, UploadConfig,
};
pub use web::WebConfig;

/// The reference configuration, written by `station init` as `station.toml`.
pub const REFERENCE: &str = include_str!("reference.toml");

/// Why the configuration could not be used. Nothing starts with a bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `station.toml` is not there.
    #[error("config file {path} is missing (run `station init --home {home}`)")]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// The station home.
        home: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, has the wrong type or a value that is not allowed.
    #[error("{path}: key `{key}`: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The dotted key path.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A value breaks a rule that spans keys or files.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// The dotted key path.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole configuration of one station.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This station.
    #[serde(default)]
    pub station: StationConfig,
    /// The database.
    #[serde(default)]
    pub store: StoreConfig,
    /// Backups of the database.
    #[serde(default)]
    pub backup: BackupConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The PKCS#11 module and tokens holding the CA keys.
    #[serde(default)]
    pub hsm: crate::hsm::HsmConfig,
    /// The certificate authority.
    #[serde(default)]
    pub ca: crate::ca::CaConfig,
    /// TPM attestation.
    #[serde(default)]
    pub tpm: crate::tpm::TpmConfig,
    /// DPS targets.
    #[serde(default)]
    pub dps: DpsConfig,
    /// The line.
    #[serde(default)]
    pub line: LineConfig,
    /// The outbox uploader.
    #[serde(default)]
    pub upload: UploadConfig,
    /// `station serve`'s registration check.
    #[serde(default)]
    pub registrations: RegistrationsConfig,
    /// The fixtures, by name.
    #[serde(default)]
    pub fixtures: BTreeMap<String, FixtureConfig>,
    /// The operator web UI.
    #[serde(default)]
    pub web: WebConfig,
}

/// `[station]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Name written into audit entries; empty means the host name.
    #[serde(default)]
    pub id: String,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Database file, relative to the home.
    #[serde(default = "default_db_path")]
    pub path: PathBuf,
    /// Commit durability.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// Writer wait, in milliseconds.
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout_ms: u32,
    /// Largest size the database may grow to, in MiB (0: no limit but the disk's).
    #[serde(default)]
    pub max_size_mb: u32,
    /// A thread holding the shared writer's turn runs at real-time priority
    /// (`store::priority`).
    #[serde(default = "default_true")]
    pub realtime_write_turn: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_db_path(),
            synchronous: Synchronous::default(),
            busy_timeout_ms: default_busy_timeout(),
            max_size_mb: 0,
            realtime_write_turn: true,
        }
    }
}

/// `[backup]`: backups of the database (`crate::backup`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Directory of the backups `station serve` and `station backup` make, relative to the
    /// home.
    #[serde(default = "default_backup_dir")]
    pub dir: PathBuf,
    /// `station serve` makes a backup once the newest in `dir` is this many hours old (or
    /// there is none); 0: only `station backup` makes them.
    #[serde(default = "default_backup_every_h")]
    pub every_h: u32,
    /// Backups kept in `dir`; the oldest go first.
    #[serde(default = "default_backup_keep")]
    pub keep: u32,
    /// `station serve` looks for a due backup this many seconds after it starts, not at once,
    /// so a line's start is not slowed by a copy.
    #[serde(default = "default_backup_start_delay_s")]
    pub start_delay_s: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            dir: default_backup_dir(),
            every_h: default_backup_every_h(),
            keep: default_backup_keep(),
            start_delay_s: default_backup_start_delay_s(),
        }
    }
}

fn default_backup_dir() -> PathBuf {
    PathBuf::from("backups")
}
fn default_backup_every_h() -> u32 {
    24
}
fn default_backup_keep() -> u32 {
    14
}
fn default_backup_start_delay_s() -> u64 {
    600
}

fn default_db_path() -> PathBuf {
    PathBuf::from("station.db")
}

fn default_busy_timeout() -> u32 {
    5000
}

fn default_true() -> bool {
    true
}

/// SQLite `synchronous` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit.
    #[default]
    Full,
    /// fsync at WAL checkpoints only.
    Normal,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Line format for the daemon.
    #[serde(default)]
    pub format: LogFormat,
    /// Directory for log files, relative to the home.
    #[serde(default = "default_log_dir")]
    pub dir: PathBuf,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            dir: default_log_dir(),
        }
    }
}

fn default_log_dir() -> PathBuf {
    PathBuf::from("logs")
}

/// A configuration with the list of files it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged, checked configuration.
    pub config: Config,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// Reads, merges and checks the configuration of a station home.
    pub fn load(home: &Home) -> Result<Loaded, ConfigError> {
        let main = home.config_file();
        if !main.exists() {
            return Err(ConfigError::Missing {
                path: main,
                home: home.root().to_path_buf(),
            });
        }
        let mut files = vec![main];
        let dir = home.config_dir();
        if dir.exists() {
            let entries = std::fs::read_dir(&dir).map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut extra = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| ConfigError::Read {
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    extra.push(path);
                }
            }
            extra.sort();
            files.extend(extra);
        }
        let mut merged = toml::Table::new();
        for path in &files {
            let table = parse_file(path)?;
            merge(&mut merged, table);
        }
        let config: Config = from_table(merged, &files[0])?;
        config.check()?;
        Ok(Loaded { config, files })
    }

    /// Cross-field rules that a single key's type cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.station.id.is_empty() {
            StationId::new(self.station.id.clone()).map_err(|e| ConfigError::Invalid {
                key: "station.id".into(),
                message: e.rule.into(),
            })?;
        }
        self.hsm.check().map_err(|e| ConfigError::Invalid {
            key: "hsm".into(),
            message: e.to_string(),
        })?;
        self.tpm.check().map_err(|e| ConfigError::Invalid {
            key: e.key().into(),
            message: e.to_string(),
        })?;
        line::check(&self.dps, &self.upload, &self.fixtures)?;
        self.web.check()?;
        if self.store.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "store.path".into(),
                message: "must name a file".into(),
            });
        }
        if self.backup.keep == 0 {
            return Err(ConfigError::Invalid {
                key: "backup.keep".into(),
                message: "must be at least 1 (set every_h = 0 for no scheduled backups)".into(),
            });
        }
        if self.backup.dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "backup.dir".into(),
                message: "must name a directory".into(),
            });
        }
        Ok(())
    }

    /// The station ID: the configured one, else the host name (made valid), else `station`.
    #[must_use]
    pub fn station_id(&self) -> StationId {
        if let Ok(id) = StationId::new(self.station.id.clone()) {
            return id;
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let cleaned: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        StationId::new(cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
            .unwrap_or_else(|_| StationId::fallback())
    }
}

/// Parses one file and checks it alone against the schema, so errors name the file.
fn parse_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_owned(),
        })?;
    let _: Config = from_table(table.clone(), path)?;
    Ok(table)
}

fn from_table(table: toml::Table, path: &Path) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Key {
            path: path.to_path_buf(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// Later files override earlier ones key by key; tables merge, everything else replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home_with(main: &str, extra: &[(&str, &str)]) -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("station.toml"), main).unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        for (name, text) in extra {
            std::fs::write(dir.path().join("config.d").join(name), text).unwrap();
        }
        let home = Home::new(dir.path());
        (dir, home)
    }

    #[test]
    fn reference_config_is_valid_and_gives_the_defaults() {
        let (_d, home) = home_with(REFERENCE, &[]);
        let loaded = Config::load(&home).unwrap();
        assert_eq!(loaded.config.store.synchronous, Synchronous::Full);
        assert_eq!(loaded.config.store.path, PathBuf::from("station.db"));
        assert_eq!(loaded.config.store.busy_timeout_ms, 5000);
        assert_eq!(loaded.config.registrations.check_every_s, 300);
        assert_eq!(loaded.config.registrations.longest_wait_s, 86_400);
        assert_eq!(loaded.config.registrations.units_per_round, 500);
        assert_eq!(loaded.config.registrations.register_wait_s, 30);
        assert_eq!(loaded.files.len(), 1);
    }

    #[test]
    fn config_d_overrides_in_name_order() {
        let (_d, home) = home_with(
            REFERENCE,
            &[
                ("20-b.toml", "[station]\nid = \"second\"\n"),
                (
                    "10-a.toml",
                    "[station]\nid = \"first\"\n[store]\nsynchronous = \"normal\"\n",
                ),
                ("notes.txt", "ignored"),
            ],
        );
        let loaded = Config::load(&home).unwrap();
        assert_eq!(loaded.config.station.id, "second");
        assert_eq!(loaded.config.store.synchronous, Synchronous::Normal);
        assert_eq!(loaded.config.store.busy_timeout_ms, 5000);
        assert_eq!(loaded.files.len(), 3);
    }

    #[test]
    fn errors_name_file_and_key() {
        let (_d, home) = home_with("[store]\nsynchronous = \"fast\"\n", &[]);
        let err = Config::load(&home).unwrap_err().to_string();
        assert!(err.contains("station.toml"), "{err}");
        assert!(err.contains("store.synchronous"), "{err}");
        assert!(err.contains("full") && err.contains("normal"), "{err}");

        let (_d, home) = home_with(REFERENCE, &[("50-x.toml", "[store]\nbogus = 1\n")]);
        let err = Config::load(&home).unwrap_err().to_string();
        assert!(err.contains("50-x.toml"), "{err}");
        assert!(err.contains("bogus"), "{err}");

        let (_d, home) = home_with("[station]\nid = \"has space\"\n", &[]);
        let err = Config::load(&home).unwrap_err().to_string();
        assert!(err.contains("station.id"), "{err}");
    }
}
