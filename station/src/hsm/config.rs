//! The `[hsm]` section: which PKCS#11 module, which tokens, where their PINs come from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Module path of SoftHSM2 as Debian installs it (the embedded default).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// PKCS#11 settings: one module, the CA token and (optionally) the root token.
///
/// An absent `[hsm]` section means the embedded SoftHSM default (`Default`); inside a written
/// section each key defaults on its own, so `token_serial` alone does not clash with a label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (shared library).
    #[serde(default = "default_module")]
    pub module: PathBuf,
    /// SoftHSM2 configuration the station exports as `SOFTHSM2_CONF` before loading the
    /// module; only for the embedded SoftHSM default, `None` for a hardware HSM.
    #[serde(default)]
    pub softhsm_conf: Option<PathBuf>,
    /// Label of the token holding the issuing (intermediate) CA key and the audit HMAC key.
    #[serde(default)]
    pub token: Option<String>,
    /// Serial number of that token, used instead of the label.
    #[serde(default)]
    pub token_serial: Option<String>,
    /// File holding the CA token's user PIN; relative paths resolve against the home.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the CA token's user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// The token holding the root CA key; absent when the root lives offline.
    #[serde(default)]
    pub root: Option<TokenConfig>,
}

fn default_module() -> PathBuf {
    PathBuf::from(SOFTHSM_MODULE)
}

impl Default for HsmConfig {
    fn default() -> Self {
        let ca = TokenConfig::embedded("station-ca");
        Self {
            module: default_module(),
            softhsm_conf: Some(PathBuf::from("hsm/softhsm2.conf")),
            token: ca.token,
            token_serial: None,
            pin_file: ca.pin_file,
            pin_env: None,
            root: Some(TokenConfig::embedded("station-root")),
        }
    }
}

impl HsmConfig {
    /// The CA token's section, in the same shape as the root's.
    pub fn ca_token(&self) -> TokenConfig {
        TokenConfig {
            token: self.token.clone(),
            token_serial: self.token_serial.clone(),
            pin_file: self.pin_file.clone(),
            pin_env: self.pin_env.clone(),
        }
    }
}

/// One token: found by label or by serial (never by slot number, which changes), and its PIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Token label (CKA_LABEL of the token).
    pub token: Option<String>,
    /// Token serial number, used instead of the label when set.
    pub token_serial: Option<String>,
    /// File holding the user PIN (first line); relative paths resolve against the home.
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
}

impl TokenConfig {
    /// The embedded default for a token named `label`: PIN in `hsm/<label>.pin`.
    pub fn embedded(label: &str) -> Self {
        Self {
            token: Some(label.to_owned()),
            token_serial: None,
            pin_file: Some(PathBuf::from(format!("hsm/{label}.pin"))),
            pin_env: None,
        }
    }

    /// How the token is selected, or why the section cannot select one.
    pub fn selector(&self) -> Result<TokenSelector, ConfigProblem> {
        match (&self.token, &self.token_serial) {
            (Some(_), Some(_)) => Err(ConfigProblem::BothLabelAndSerial),
            (Some(l), None) => Ok(TokenSelector::Label(l.clone())),
            (None, Some(s)) => Ok(TokenSelector::Serial(s.clone())),
            (None, None) => Err(ConfigProblem::NoToken),
        }
    }

    /// Where the PIN comes from, or why the section names none or two.
    pub fn pin_source(&self) -> Result<PinSource, ConfigProblem> {
        match (&self.pin_file, &self.pin_env) {
            (Some(_), Some(_)) => Err(ConfigProblem::BothPinSources),
            (Some(f), None) => Ok(PinSource::File(f.clone())),
            (None, Some(e)) => Ok(PinSource::Env(e.clone())),
            (None, None) => Err(ConfigProblem::NoPin),
        }
    }
}

/// How a token is picked among the module's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// By token label.
    Label(String),
    /// By token serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Label(l) => write!(f, "label {l:?}"),
            Self::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// Where a PIN is read from (the PIN itself never sits in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file, first line.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// A token section that cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// Neither `token` nor `token_serial`.
    #[error("set `token` (label) or `token_serial`")]
    NoToken,
    /// Both `token` and `token_serial`.
    #[error("set only one of `token` and `token_serial`")]
    BothLabelAndSerial,
    /// Neither `pin_file` nor `pin_env`.
    #[error("set `pin_file` or `pin_env` (the PIN is never written in station.toml)")]
    NoPin,
    /// Both `pin_file` and `pin_env`.
    #[error("set only one of `pin_file` and `pin_env`")]
    BothPinSources,
}

impl HsmConfig {
    /// Cross-field rules of the section.
    pub fn check(&self) -> Result<(), ConfigProblem> {
        let ca = self.ca_token();
        ca.selector()?;
        ca.pin_source()?;
        if let Some(root) = &self.root {
            root.selector()?;
            root.pin_source()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pin_is_not_a_config_key() {
        let err = toml::from_str::<HsmConfig>("token = \"x\"\npin = \"1234\"\n")
            .expect_err("a `pin` key must be refused");
        assert!(err.to_string().contains("unknown field `pin`"), "{err}");
    }

    #[test]
    fn label_or_serial_but_not_both() {
        let c: HsmConfig = toml::from_str("token = \"a\"\ntoken_serial = \"b\"\npin_env = \"P\"\n")
            .expect("parse");
        assert_eq!(c.check(), Err(ConfigProblem::BothLabelAndSerial));
        let c: HsmConfig = toml::from_str(
            "token_serial = \"b\"\npin_env = \"P\"\nroot = { token = \"r\", pin_env = \"R\" }\n",
        )
        .expect("parse");
        assert_eq!(
            c.ca_token().selector(),
            Ok(TokenSelector::Serial("b".into()))
        );
        assert_eq!(c.check(), Ok(()));
    }

    #[test]
    fn default_is_embedded_softhsm() {
        let c = HsmConfig::default();
        assert_eq!(c.check(), Ok(()));
        assert_eq!(
            c.ca_token().pin_source(),
            Ok(PinSource::File("hsm/station-ca.pin".into()))
        );
    }
}
