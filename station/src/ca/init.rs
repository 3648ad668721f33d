//! The CA part of `station init`: the embedded SoftHSM tokens, root and intermediate keys
//! and certificates, the audit HMAC key and the profiles. Each step makes only what is
//! absent, so a second `init` changes nothing.

use std::path::{Path, PathBuf};

use cryptoki::object::ObjectClass;

use super::authority::{create_root, find_or_generate};
use super::error::CaError;
use super::profile::Profiles;
use super::service;
use super::verify;
use crate::config::Config;
use crate::home::Home;
use crate::hsm::config::PinSource;
use crate::hsm::{HsmSigner, TokenConfig, softhsm};

fn write_pem(path: &Path, ders: &[&[u8]], created: &mut Vec<PathBuf>) -> Result<(), CaError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CaError::WriteFile {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // Certificates are public: 0644 so tools and other users can read the chain.
    softhsm::write_new(path, verify::to_pem(ders).as_bytes(), 0o644)?;
    created.push(path.to_path_buf());
    Ok(())
}

fn ensure_embedded_token(
    hsm: &crate::hsm::Hsm,
    home: &Home,
    token: &TokenConfig,
    created: &mut Vec<PathBuf>,
) -> Result<(), CaError> {
    let (Some(label), Ok(PinSource::File(pin))) = (&token.token, token.pin_source()) else {
        // A token selected by serial or with its PIN in the environment is not ours to make.
        return Ok(());
    };
    let pin = home.resolve(&pin);
    let so_pin = pin.with_extension("so-pin");
    if softhsm::ensure_token(hsm, label, &pin, &so_pin)? {
        created.push(pin);
        created.push(so_pin);
    }
    Ok(())
}

/// Runs the CA init steps; `created` receives every file made.
pub fn init(home: &Home, cfg: &Config, created: &mut Vec<PathBuf>) -> Result<(), CaError> {
    let profiles_dir = home.resolve(&cfg.ca.profiles_dir);
    let before: Vec<bool> = super::profile::EMBEDDED
        .iter()
        .map(|(n, _)| profiles_dir.join(format!("{n}.toml")).exists())
        .collect();
    Profiles::write_embedded(&profiles_dir)?;
    for ((n, _), existed) in super::profile::EMBEDDED.iter().zip(before) {
        if !existed {
            created.push(profiles_dir.join(format!("{n}.toml")));
        }
    }

    let root_path = service::root_path(home, cfg);
    let cert_path = service::cert_path(home, cfg);
    // The CA certificate is written last, after every HSM object exists: when it is there
    // the HSM is complete, and a second init does not log in (a SoftHSM login rewrites
    // its token file).
    if cert_path.exists() {
        return Ok(());
    }
    let embedded = cfg.hsm.softhsm_conf.is_some();
    if let Some(conf) = &cfg.hsm.softhsm_conf {
        let conf = home.resolve(conf);
        let dir = conf.parent().unwrap_or(home.root()).to_path_buf();
        if softhsm::write_conf(&dir)? {
            created.push(conf);
        }
    }
    let hsm = service::open_hsm(home, cfg)?;
    if embedded {
        if let Some(root) = &cfg.hsm.root {
            ensure_embedded_token(&hsm, home, root, created)?;
        }
        ensure_embedded_token(&hsm, home, &cfg.hsm.ca_token(), created)?;
    }

    let profiles = service::profiles(home, cfg)?;
    let ca = service::open_ca_token(&hsm, home, cfg)?;
    if !ca.has_key(&cfg.ca.audit_key_label, ObjectClass::SECRET_KEY)? {
        ca.generate_hmac_key(&cfg.ca.audit_key_label)?;
    }
    {
        // Without a root token the intermediate comes from `station ca csr` + `ca import`.
        if let Some(root_session) = service::open_root_token(&hsm, home, cfg)? {
            if !root_path.exists() {
                let der =
                    create_root(&root_session, &cfg.ca.root_key_label, profiles.get("root")?)?;
                write_pem(&root_path, &[&der], created)?;
            }
            let root = service::load_root(&root_session, home, cfg)?;
            let key = find_or_generate(&ca, &cfg.ca.key_label)?;
            ca.require_protected(&key)?;
            let signer = HsmSigner::new(&ca, key);
            let int = root.issue_ca(profiles.get("intermediate")?, &signer)?;
            write_pem(&cert_path, &[&int.der], created)?;
        }
    }
    Ok(())
}
