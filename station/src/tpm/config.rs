//! The `[tpm]` section of the station configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Persistent handle of the RSA EK (TCG EK Credential Profile; what Azure's SDKs use).
pub const DEFAULT_EK_HANDLE: u32 = 0x8101_0001;
/// Persistent handle of the SRK as Azure's SDKs make it.
pub const SRK_HANDLE: u32 = 0x8100_0001;
/// Shortest allowed EK creation timeout: real TPMs take seconds up to minutes.
pub const MIN_EK_CREATE_TIMEOUT_SECS: u64 = 300;

/// What to do when no EK is persisted at the configured handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EkPolicy {
    /// Only read the persisted EK; a missing one fails the unit.
    #[default]
    Read,
    /// Create it from the TCG template and persist it (slow on real TPMs).
    CreateIfAbsent,
}

/// What to do when no SRK is persisted at 0x81000001.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SrkPolicy {
    /// Only read it; a missing SRK is reported with a warning (the unit's DPS client makes it).
    #[default]
    Read,
    /// Create it with the Azure SDK's template and persist it.
    CreateIfAbsent,
}

/// Key type of an EK the station creates under `ek = "create-if-absent"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EkAlgorithm {
    /// RSA-2048, TCG template L-1.
    #[default]
    Rsa2048,
    /// ECC NIST P-256, TCG template L-2.
    EccP256,
    /// ECC NIST P-384, TCG template H-3.
    EccP384,
}

/// Settings of the TPM attestation step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TpmConfig {
    /// Default TCTI string (`device:/dev/tpmrm0`, `swtpm:host=..,port=..`, `mssim:..`, `tabrmd`);
    /// fixtures may name their own.
    pub tcti: Option<String>,
    /// Read the persisted EK, or create it when absent.
    pub ek: EkPolicy,
    /// Persistent handle of the EK (RSA 0x81010001, or the ECC EK's handle).
    pub ek_handle: u32,
    /// Key type used when the EK is created.
    pub ek_create_algorithm: EkAlgorithm,
    /// Read the SRK, or create it when absent.
    pub srk: SrkPolicy,
    /// Directory of trusted TPM-vendor EK CA certificates (relative to the home).
    pub trust_dir: PathBuf,
    /// Refuse a unit whose TPM has no EK certificate.
    pub require_ek_cert: bool,
    /// Accept software TPMs (swtpm, simulators); only for development and tests.
    pub allow_software_tpm: bool,
    /// Longest wait for one TPM session (connect and all reads), in seconds.
    pub timeout_secs: u64,
    /// Longest wait for creating an EK, in seconds (at least 300).
    pub ek_create_timeout_secs: u64,
}

impl Default for TpmConfig {
    fn default() -> Self {
        Self {
            tcti: None,
            ek: EkPolicy::Read,
            ek_handle: DEFAULT_EK_HANDLE,
            ek_create_algorithm: EkAlgorithm::Rsa2048,
            srk: SrkPolicy::Read,
            trust_dir: PathBuf::from("trust/tpm"),
            require_ek_cert: true,
            allow_software_tpm: false,
            timeout_secs: 30,
            ek_create_timeout_secs: 600,
        }
    }
}

/// A `[tpm]` setting that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmConfigError {
    /// The EK handle is outside the persistent range.
    #[error("tpm.ek_handle {0:#010x} is not a persistent handle (0x81000000..=0x81ffffff)")]
    EkHandleNotPersistent(u32),
    /// The EK creation timeout is too short for real TPMs.
    #[error(
        "tpm.ek_create_timeout_secs is {0}; real TPMs need at least {MIN_EK_CREATE_TIMEOUT_SECS}"
    )]
    EkCreateTimeoutTooShort(u64),
    /// The session timeout is zero.
    #[error("tpm.timeout_secs must be at least 1")]
    ZeroTimeout,
}

impl TpmConfigError {
    /// The dotted configuration key at fault.
    #[must_use]
    pub fn key(&self) -> &'static str {
        match self {
            Self::EkHandleNotPersistent(_) => "tpm.ek_handle",
            Self::EkCreateTimeoutTooShort(_) => "tpm.ek_create_timeout_secs",
            Self::ZeroTimeout => "tpm.timeout_secs",
        }
    }
}

impl TpmConfig {
    /// Checks the rules serde cannot express.
    pub fn check(&self) -> Result<(), TpmConfigError> {
        if !(0x8100_0000..=0x81ff_ffff).contains(&self.ek_handle) {
            return Err(TpmConfigError::EkHandleNotPersistent(self.ek_handle));
        }
        if self.ek_create_timeout_secs < MIN_EK_CREATE_TIMEOUT_SECS {
            return Err(TpmConfigError::EkCreateTimeoutTooShort(
                self.ek_create_timeout_secs,
            ));
        }
        if self.timeout_secs == 0 {
            return Err(TpmConfigError::ZeroTimeout);
        }
        Ok(())
    }

    /// The options the reader needs, from this configuration.
    #[must_use]
    pub fn read_options(&self) -> super::ReadOptions {
        super::ReadOptions {
            ek: self.ek,
            ek_handle: self.ek_handle,
            ek_create_algorithm: self.ek_create_algorithm,
            srk: self.srk,
            timeout: Duration::from_secs(self.timeout_secs),
            ek_create_timeout: Duration::from_secs(
                self.ek_create_timeout_secs.max(MIN_EK_CREATE_TIMEOUT_SECS),
            ),
        }
    }

    /// The genuineness policy, from this configuration.
    #[must_use]
    pub fn policy(&self) -> super::Policy {
        super::Policy {
            require_ek_cert: self.require_ek_cert,
            allow_software_tpm: self.allow_software_tpm,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_strict() {
        let c: TpmConfig = toml::from_str("").unwrap();
        assert_eq!(c, TpmConfig::default());
        assert!(c.require_ek_cert);
        assert!(!c.allow_software_tpm);
        assert_eq!(c.ek_handle, 0x8101_0001);
        assert_eq!(c.trust_dir, PathBuf::from("trust/tpm"));
        c.check().unwrap();
    }

    #[test]
    fn parses_every_key_and_rejects_unknown_ones() {
        let c: TpmConfig = toml::from_str(
            r#"
            tcti = "swtpm:host=127.0.0.1,port=2321"
            ek = "create-if-absent"
            ek_handle = 0x81010016
            ek_create_algorithm = "ecc-p384"
            srk = "create-if-absent"
            trust_dir = "/etc/station/tpm-roots"
            require_ek_cert = false
            allow_software_tpm = true
            timeout_secs = 5
            ek_create_timeout_secs = 900
            "#,
        )
        .unwrap();
        assert_eq!(c.ek, EkPolicy::CreateIfAbsent);
        assert_eq!(c.srk, SrkPolicy::CreateIfAbsent);
        assert_eq!(c.ek_handle, 0x8101_0016);
        assert_eq!(c.ek_create_algorithm, EkAlgorithm::EccP384);
        c.check().unwrap();
        assert!(toml::from_str::<TpmConfig>("ek_hande = 1").is_err());
        assert!(toml::from_str::<TpmConfig>("ek = \"make\"").is_err());
    }

    #[test]
    fn check_refuses_short_ek_timeouts_and_bad_handles() {
        let c = TpmConfig {
            ek_create_timeout_secs: 60,
            ..TpmConfig::default()
        };
        assert_eq!(c.check(), Err(TpmConfigError::EkCreateTimeoutTooShort(60)));
        let c = TpmConfig {
            ek_handle: 0x0100_0001,
            ..TpmConfig::default()
        };
        assert_eq!(
            c.check(),
            Err(TpmConfigError::EkHandleNotPersistent(0x0100_0001))
        );
    }
}
