//! The data directory: created on first start with its own CA, a server certificate (SAN
//! localhost and 127.0.0.1), policies, an ID scope; and refreshed on each start (the
//! `connection-string` names the current port).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret;

use super::auth::{Right, format_rights};
use super::files::{write_private, write_public};
use super::store::{Store, StoreError};
use crate::sas::{ConnectionString, SharedAccessKey};

/// The policy written into `connection-string` (all rights).
pub const OWNER_POLICY: &str = "provisioningserviceowner";
/// A read-only policy created with the service.
pub const READ_POLICY: &str = "enrollmentread";

/// Why preparing the data directory failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be written or read.
    #[error("accessing {path} failed")]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating the service certificates failed")]
    Certificate(#[from] rcgen::Error),
    /// The stored certificate or key does not load.
    #[error("loading the server certificate and key from {dir} failed")]
    LoadTls {
        /// The data directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the configuration.
    #[error("building the TLS configuration failed")]
    Tls(#[from] rustls::Error),
    /// The store failed.
    #[error("preparing the store failed")]
    Store(#[from] StoreError),
    /// The owner policy is missing or its key unreadable.
    #[error("the {OWNER_POLICY} policy is missing or damaged")]
    OwnerPolicy,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::File {
        path: path.to_owned(),
        source,
    }
}

/// Paths of the files in the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub root: PathBuf,
}

impl DataDir {
    /// `ca.pem`: the CA clients must trust.
    #[must_use]
    pub fn ca_pem(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// `connection-string` (owner policy).
    #[must_use]
    pub fn connection_string(&self) -> PathBuf {
        self.root.join("connection-string")
    }
    /// `id-scope`.
    #[must_use]
    pub fn id_scope(&self) -> PathBuf {
        self.root.join("id-scope")
    }
    fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    fn server_pem(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
}

/// Creates the directory (0700) if needed.
pub fn ensure_dir(root: &Path) -> Result<DataDir, SetupError> {
    use std::os::unix::fs::DirBuilderExt;
    if !root.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(file_err(root))?;
    }
    Ok(DataDir {
        root: root.to_owned(),
    })
}

fn validity(params: &mut CertificateParams, years: i32) {
    // Start a day back so that a client with a slightly slow clock accepts the certificate.
    let s = chrono::Utc::now() - chrono::Duration::days(1);
    let (y, m, d) = (
        s.year(),
        u8::try_from(s.month()).unwrap_or(1),
        u8::try_from(s.day()).unwrap_or(1),
    );
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

/// Creates the CA and server certificate unless both exist.
fn ensure_certificates(dir: &DataDir) -> Result<(), SetupError> {
    if dir.ca_pem().exists() && dir.server_pem().exists() && dir.server_key().exists() {
        return Ok(());
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "DPS local service CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, 10);
    let ca_cert = ca.self_signed(&ca_key)?;
    write_private(&dir.ca_key(), ca_key.serialize_pem().as_bytes())
        .map_err(file_err(&dir.ca_key()))?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict verifiers (openssl -x509_strict) require an AKI on non-root certificates.
    leaf.use_authority_key_identifier_extension = true;
    validity(&mut leaf, 5);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    write_private(&dir.server_key(), leaf_key.serialize_pem().as_bytes())
        .map_err(file_err(&dir.server_key()))?;
    let chain = format!("{}{}", leaf_cert.pem(), ca_cert.pem());
    write_public(&dir.server_pem(), chain.as_bytes()).map_err(file_err(&dir.server_pem()))?;
    write_public(&dir.ca_pem(), ca_cert.pem().as_bytes()).map_err(file_err(&dir.ca_pem()))?;
    Ok(())
}

/// Loads the server certificate chain and key into a rustls config offering TLS 1.2 and 1.3,
/// asking clients for a certificate without requiring one.
pub fn tls_config(dir: &DataDir) -> Result<Arc<rustls::ServerConfig>, SetupError> {
    let load_err = |source| SetupError::LoadTls {
        dir: dir.root.clone(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(dir.server_pem())
        .map_err(load_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(load_err)?;
    let key = PrivateKeyDer::from_pem_file(dir.server_key()).map_err(load_err)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // X.509 devices authenticate with a client certificate; the service API and SAS devices
    // present none (`peer.rs`).
    let verifier = Arc::new(super::peer::AnyClientCert::new(&provider));
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

fn new_key_b64() -> String {
    SharedAccessKey::generate()
        .to_base64()
        .expose_secret()
        .to_owned()
}

/// Creates the default policies and the ID scope on first start.
fn ensure_store_defaults(store: &Store) -> Result<String, SetupError> {
    Ok(store.write(|tx| {
        if tx.policies()?.is_empty() {
            tx.put_policy(
                OWNER_POLICY,
                &format_rights(&Right::ALL),
                new_key_b64().as_bytes(),
                new_key_b64().as_bytes(),
            )?;
            tx.put_policy(
                READ_POLICY,
                &format_rights(&[Right::EnrollmentRead, Right::RegistrationStatusRead]),
                new_key_b64().as_bytes(),
                new_key_b64().as_bytes(),
            )?;
        }
        let scope = match tx.meta("id_scope")? {
            Some(s) => s,
            None => {
                let mut b = [0u8; 4];
                rand::fill(&mut b[..]);
                let s = format!("0ne{}", hex::encode_upper(b));
                tx.set_meta("id_scope", &s)?;
                s
            }
        };
        Ok::<_, StoreError>(scope)
    })?)
}

/// Writes `connection-string` for the owner policy and `host_name`, and records the host.
pub fn write_connection_string(
    dir: &DataDir,
    store: &Store,
    host_name: &str,
) -> Result<(), SetupError> {
    let key = store
        .write(|tx| {
            tx.set_meta("host_name", host_name)?;
            tx.policy(OWNER_POLICY)
        })?
        .ok_or(SetupError::OwnerPolicy)?
        .1;
    let key = std::str::from_utf8(&key)
        .ok()
        .and_then(|t| SharedAccessKey::from_base64(t).ok())
        .ok_or(SetupError::OwnerPolicy)?;
    let cs = ConnectionString::new(host_name, OWNER_POLICY, key);
    let mut text = cs.to_secret_string().expose_secret().to_owned();
    text.push('\n');
    let path = dir.connection_string();
    write_private(&path, text.as_bytes()).map_err(file_err(&path))
}

/// What the service needs from its data directory.
#[derive(Debug)]
pub struct Prepared {
    /// Paths.
    pub dir: DataDir,
    /// The store.
    pub store: Store,
    /// TLS config.
    pub tls: Arc<rustls::ServerConfig>,
    /// ID scope.
    pub id_scope: String,
}

/// Prepares the data directory for a service that will listen on `host_name` (`host:port`).
pub fn prepare(root: &Path, host_name: &str) -> Result<Prepared, SetupError> {
    let dir = ensure_dir(root)?;
    ensure_certificates(&dir)?;
    let store = Store::open(&dir.root)?;
    let id_scope = ensure_store_defaults(&store)?;
    let scope_path = dir.id_scope();
    if !scope_path.exists() {
        write_public(&scope_path, format!("{id_scope}\n").as_bytes())
            .map_err(file_err(&scope_path))?;
    }
    write_connection_string(&dir, &store, host_name)?;
    let tls = tls_config(&dir)?;
    Ok(Prepared {
        dir,
        store,
        tls,
        id_scope,
    })
}
