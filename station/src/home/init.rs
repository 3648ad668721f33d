//! `station init`: makes a station home with embedded defaults.
//!
//! Every step creates what is absent and leaves what exists untouched, so running `init` on an
//! initialised home changes no byte of any file, and running it on a half-made home (a crash
//! during the first init) completes it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Home;
use crate::config::{Config, ConfigError, REFERENCE};
use crate::store::{Store, StoreError, audit};

/// Why init failed. What was made before the failure stays and is completed by the next run.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The home exists and is not a directory.
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    /// A directory could not be made.
    #[error("cannot create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration (written earlier, perhaps edited since) is not valid.
    #[error("the configuration is not valid")]
    Config(#[from] ConfigError),
    /// The database could not be made or opened.
    #[error("the database could not be prepared")]
    Store(#[from] StoreError),
    /// The HSM tokens, CA keys or CA certificates could not be made.
    #[error("the certificate authority could not be prepared")]
    Ca(#[from] crate::ca::CaError),
    /// The keyed audit checkpoint could not be written.
    #[error("the keyed audit checkpoint could not be written")]
    Seal(#[from] crate::ca::service::CaServiceError),
    /// The outbox AES key could not be made in the HSM.
    #[error("the outbox key could not be prepared in the HSM")]
    OutboxKey(#[from] crate::keys::KeyError),
}

/// What `init` did.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    /// Files and directories it made, in order.
    pub created: Vec<PathBuf>,
}

impl InitReport {
    /// Whether anything was made.
    #[must_use]
    pub fn changed(&self) -> bool {
        !self.created.is_empty()
    }
}

/// Makes (or completes) the station home.
pub fn init(home: &Home, actor: &str) -> Result<InitReport, InitError> {
    let mut report = InitReport::default();
    let root = home.root();
    if root.exists() && !root.is_dir() {
        return Err(InitError::NotADirectory(root.to_path_buf()));
    }
    make_dir(root, &mut report)?;
    make_file(&home.config_file(), REFERENCE.as_bytes(), &mut report)?;
    make_dir(&home.config_dir(), &mut report)?;
    let loaded = Config::load(home)?;
    let config = loaded.config;
    make_dir(&home.resolve(&config.log.dir), &mut report)?;
    crate::ca::init::init(home, &config, &mut report.created)?;
    outbox_key(home, &config, &mut report)?;
    make_dir(&home.secrets_dir(), &mut report)?;
    let key: [u8; 32] = rand::random();
    make_file(
        &home.badge_key_file(),
        hex::encode(key).as_bytes(),
        &mut report,
    )?;
    // Empty until the operator adds the TPM vendors' EK CA certificates.
    make_dir(&home.resolve(&config.tpm.trust_dir), &mut report)?;

    let db = home.resolve(&config.store.path);
    let station = config.station_id();
    if db.exists() {
        if report.changed() {
            let mut store = Store::open(&db, &config.store)?;
            record(
                &mut store,
                &station,
                actor,
                "station.init.repair",
                home,
                &report,
            )?;
        }
    } else {
        let mut store = Store::create(&db, &config.store)?;
        report.created.push(db.clone());
        record(&mut store, &station, actor, "station.init", home, &report)?;
    }
    Ok(report)
}

/// `H/hsm/outbox-key`: written once the CA token holds the outbox AES key, so that a later
/// `init` knows without logging in to the HSM (a SoftHSM login rewrites its token files, and
/// a second `init` must change no byte). Deleting it makes the next `init` look again.
fn outbox_key_marker(home: &Home) -> PathBuf {
    home.root().join("hsm").join("outbox-key")
}

/// Creates the outbox AES key in the CA token if absent (also on homes made before it existed).
fn outbox_key(home: &Home, config: &Config, report: &mut InitReport) -> Result<(), InitError> {
    let marker = outbox_key_marker(home);
    if marker.exists() {
        return Ok(());
    }
    let hsm = crate::ca::service::open_hsm(home, config)?;
    let session = crate::ca::service::open_ca_token(&hsm, home, config)?;
    crate::keys::ensure_outbox_key(&session)?;
    if let Some(dir) = marker.parent() {
        make_dir(dir, report)?;
    }
    let text = format!(
        "# The CA token holds the outbox AES-256 key {:?}; `station init` checks again if this file is gone.\n",
        crate::keys::OUTBOX_KEY_LABEL
    );
    make_file(&marker, text.as_bytes(), report)
}

/// Authenticates the audit checkpoint with the HSM's audit key (when one is configured).
fn seal_checkpoint(home: &Home, tx: &rusqlite::Transaction<'_>) -> Result<(), InitError> {
    let config = Config::load(home)?.config;
    let hsm = crate::ca::service::open_hsm(home, &config)?;
    let session = crate::ca::service::open_ca_token(&hsm, home, &config)?;
    let key = crate::ca::service::AuditKey::find(&session, &config.ca.audit_key_label)
        .map_err(crate::ca::CaError::from)?;
    key.seal(tx)?;
    Ok(())
}

fn record(
    store: &mut Store,
    station: &crate::ids::StationId,
    actor: &str,
    event: &str,
    home: &Home,
    report: &InitReport,
) -> Result<(), InitError> {
    let created: Vec<String> = report
        .created
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(home.root()).unwrap_or(p);
            if rel.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                rel.display().to_string()
            }
        })
        .collect();
    let schema = store.schema_version()?;
    let tx = store
        .conn_mut()
        .transaction()
        .map_err(crate::store::sql("begin init transaction"))?;
    audit::append(
        &tx,
        station,
        &audit::AuditEvent {
            actor,
            event,
            subject: &home.root().display().to_string(),
            details: serde_json::json!({
                "created": created,
                "schema_version": schema,
                "station_version": env!("CARGO_PKG_VERSION"),
            }),
        },
    )?;
    seal_checkpoint(home, &tx)?;
    tx.commit()
        .map_err(crate::store::sql("commit init transaction"))?;
    Ok(())
}

/// Makes a private directory (0700) if absent.
pub fn make_dir(path: &Path, report: &mut InitReport) -> Result<(), InitError> {
    if path.is_dir() {
        return Ok(());
    }
    if path.exists() {
        return Err(InitError::NotADirectory(path.to_path_buf()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| InitError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
    report.created.push(path.to_path_buf());
    Ok(())
}

/// Writes a private file (0600) if absent; an existing file is never touched.
pub fn make_file(path: &Path, contents: &[u8], report: &mut InitReport) -> Result<(), InitError> {
    let err = |source| InitError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    report.created.push(path.to_path_buf());
    Ok(())
}
