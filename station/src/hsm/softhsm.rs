//! The embedded SoftHSM2 default: a private configuration, token directory and tokens
//! with random PINs, created once by `station init`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use rand::RngCore;

use super::config::TokenSelector;
use super::error::HsmError;
use super::module::Hsm;

/// Writes `dir/softhsm2.conf` and creates `dir/tokens/` unless the conf already exists.
/// Returns whether anything was created.
pub fn write_conf(dir: &Path) -> Result<bool, HsmError> {
    let conf = dir.join("softhsm2.conf");
    let tokens = dir.join("tokens");
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HsmError::WriteFile { path, source }
    };
    std::fs::create_dir_all(&tokens).map_err(werr(&tokens))?;
    set_mode(&tokens, 0o700).map_err(werr(&tokens))?;
    if conf.exists() {
        return Ok(false);
    }
    let text = format!(
        "# Written by `station init`: the station's private SoftHSM2 token store.\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n",
        tokens.display()
    );
    write_new(&conf, text.as_bytes(), 0o644)?;
    Ok(true)
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HsmError> {
    let werr = |source| HsmError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)
}

fn random_pin() -> AuthPin {
    let mut b = zeroize::Zeroizing::new([0u8; 16]);
    rand::rng().fill_bytes(b.as_mut());
    AuthPin::from(hex::encode(b.as_ref()))
}

/// Ensures a token labelled `label` exists; when absent, initialises a free slot with random
/// user and SO PINs written to `pin_file` and `so_pin_file` (mode 0600). Returns whether the
/// token was created.
pub fn ensure_token(
    hsm: &Hsm,
    label: &str,
    pin_file: &Path,
    so_pin_file: &Path,
) -> Result<bool, HsmError> {
    match hsm.find_token(&TokenSelector::Label(label.to_owned())) {
        Ok(_) => return Ok(false),
        Err(HsmError::TokenNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let ctx = hsm.context();
    let slots = ctx.get_slots_with_token().map_err(HsmError::ListTokens)?;
    let mut free = None;
    for slot in slots {
        // A token another process is writing cannot be read: it is not the free one.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            free = Some(slot);
            break;
        }
    }
    let slot = free.ok_or_else(|| HsmError::NoFreeSlot {
        label: label.to_owned(),
    })?;
    let ierr = |source| HsmError::InitToken {
        label: label.to_owned(),
        source,
    };
    let user_pin = random_pin();
    let so_pin = random_pin();
    ctx.init_token(slot, &so_pin, label).map_err(ierr)?;
    // The slot is renumbered after C_InitToken: find the token again by its label.
    let slot = hsm.find_token(&TokenSelector::Label(label.to_owned()))?;
    let session = ctx.open_rw_session(slot).map_err(ierr)?;
    session.login(UserType::So, Some(&so_pin)).map_err(ierr)?;
    session.init_pin(&user_pin).map_err(ierr)?;
    session.logout().map_err(ierr)?;
    drop(session);
    use secrecy::ExposeSecret;
    write_pin(pin_file, user_pin.expose_secret())?;
    write_pin(so_pin_file, so_pin.expose_secret())?;
    Ok(true)
}

fn write_pin(path: &Path, pin: &str) -> Result<(), HsmError> {
    let line = zeroize::Zeroizing::new(format!("{pin}\n"));
    write_new(path, line.as_bytes(), 0o600)
}

/// Paths of a token's PIN files in the embedded layout: `dir/<label>.pin`, `dir/<label>.so-pin`.
pub fn pin_paths(dir: &Path, label: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{label}.pin")),
        dir.join(format!("{label}.so-pin")),
    )
}
