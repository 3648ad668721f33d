//! Loading the PKCS#11 module and finding tokens by label or serial.

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::slot::Slot;

use super::config::{HsmConfig, TokenConfig, TokenSelector};
use super::error::HsmError;
use super::pin::Pin;
use super::session::TokenSession;

/// A loaded and initialised PKCS#11 module. One per process: SoftHSM reads its
/// configuration once, at C_Initialize.
#[derive(Clone)]
pub struct Hsm {
    ctx: Pkcs11,
    module: PathBuf,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm").field("module", &self.module).finish()
    }
}

impl Hsm {
    /// Loads the configured module. For the embedded SoftHSM default, exports
    /// `SOFTHSM2_CONF` first (resolved against the home by `resolve`).
    pub fn load(cfg: &HsmConfig, resolve: impl Fn(&Path) -> PathBuf) -> Result<Self, HsmError> {
        if let Some(conf) = &cfg.softhsm_conf {
            let conf = resolve(conf);
            if std::env::var_os("SOFTHSM2_CONF").as_deref() != Some(conf.as_os_str()) {
                // SAFETY: called while the process is still single-threaded with respect
                // to the environment (CLI start-up, before any worker or runtime thread
                // reads it); SoftHSM reads the variable at C_Initialize just below.
                unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
            }
        }
        Self::load_module(&resolve(&cfg.module))
    }

    /// Loads and initialises a module by path, with the environment as it is.
    pub fn load_module(module: &Path) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(module).map_err(|source| HsmError::LoadModule {
            path: module.to_path_buf(),
            source,
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // A second `Hsm` in the same process shares the module's one initialisation.
            Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(source) => {
                return Err(HsmError::Initialize {
                    path: module.to_path_buf(),
                    source,
                });
            }
        }
        Ok(Self {
            ctx,
            module: module.to_path_buf(),
        })
    }

    /// The module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// Library description as the module reports it.
    pub fn description(&self) -> Result<String, HsmError> {
        let info = self.ctx.get_library_info().map_err(HsmError::ListTokens)?;
        Ok(format!(
            "{} {} {}.{}",
            info.manufacturer_id(),
            info.library_description(),
            info.library_version().major(),
            info.library_version().minor()
        ))
    }

    pub(crate) fn context(&self) -> &Pkcs11 {
        &self.ctx
    }

    /// Every initialised token the module shows, with its info. A slot whose token cannot be
    /// read right now (another process is writing that token, or its file is damaged) is
    /// skipped: it must not hide the others. (cryptoki's `get_slots_with_initialized_token`
    /// fails as a whole on the first such slot.)
    fn initialized_tokens(&self) -> Result<Vec<(Slot, cryptoki::slot::TokenInfo)>, HsmError> {
        let mut out = Vec::new();
        for slot in self
            .ctx
            .get_slots_with_token()
            .map_err(HsmError::ListTokens)?
        {
            match self.ctx.get_token_info(slot) {
                Ok(info) if info.token_initialized() => out.push((slot, info)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(?slot, error = %e, "skipping a PKCS#11 token that cannot be read");
                }
            }
        }
        Ok(out)
    }

    /// Labels of every initialised token the module shows.
    pub fn token_labels(&self) -> Result<Vec<String>, HsmError> {
        Ok(self
            .initialized_tokens()?
            .into_iter()
            .map(|(_, info)| info.label().trim().to_owned())
            .collect())
    }

    /// The slot holding the selected token, looked up afresh (slot numbers change).
    pub fn find_token(&self, selector: &TokenSelector) -> Result<Slot, HsmError> {
        let mut present = Vec::new();
        for (slot, info) in self.initialized_tokens()? {
            let label = info.label().trim();
            let hit = match selector {
                TokenSelector::Label(l) => label == l,
                TokenSelector::Serial(s) => info.serial_number().trim() == s,
            };
            if hit {
                return Ok(slot);
            }
            present.push(label.to_owned());
        }
        Err(HsmError::TokenNotFound {
            selector: selector.clone(),
            present: if present.is_empty() {
                "none".to_owned()
            } else {
                present.join(", ")
            },
        })
    }

    /// Opens a logged-in read-write session on a token already found by label.
    pub fn open_slot(&self, slot: Slot, token: &str, pin: &Pin) -> Result<TokenSession, HsmError> {
        TokenSession::open(self, slot, token, pin)
    }

    /// Opens a logged-in read-write session on a configured token (one per worker).
    pub fn open(
        &self,
        token: &TokenConfig,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<TokenSession, HsmError> {
        let selector = token.selector().map_err(HsmError::Config)?;
        let source = token.pin_source().map_err(HsmError::Config)?;
        let slot = self.find_token(&selector)?;
        let name = selector_name(&selector);
        let pin = Pin::load(&source, &name, resolve)?;
        TokenSession::open(self, slot, &name, &pin)
    }
}

/// The name used for a token in messages.
pub(crate) fn selector_name(selector: &TokenSelector) -> String {
    match selector {
        TokenSelector::Label(l) => l.clone(),
        TokenSelector::Serial(s) => format!("serial {s}"),
    }
}
