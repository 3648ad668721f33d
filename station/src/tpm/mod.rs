//! TPM attestation: read a unit's EK and SRK through a TCTI string, judge whether its TPM is
//! genuine, and derive its registration ID and enrollment material.
//!
//! The EK is read from its persisted handle (0x81010001 for RSA) and not re-created from a
//! template: the unit's DPS client presents whatever is persisted there, and Azure's SDK
//! template differs from the TCG one, so a re-created key could differ from what DPS sees.

pub mod config;
pub mod dps_unit;
pub mod ek_cert;
pub mod enrollment;
mod genuine;
pub mod public;
pub mod read;
pub mod record;
pub mod registration_id;
pub mod roca;

use std::path::Path;

use dps::ids::RegistrationId;

pub use config::{EkAlgorithm, EkPolicy, SrkPolicy, TpmConfig};
pub use ek_cert::{EkCertInfo, EkCertProblem, EkCertificate, TrustStore, TrustStoreError};
pub use enrollment::TpmEnrollmentAttestation;
pub use genuine::software_tpm_sign;
pub use public::{PublicArea, PublicKey};
pub use read::{ReadOptions, TpmProperties, TpmRead, probe, read};
pub use record::{EkRecordError, Recorded, record_endorsement_key};
pub use registration_id::registration_id;

/// Why a TPM could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string does not parse.
    #[error("TCTI string {tcti:?} is not valid")]
    ParseTcti {
        /// The string.
        tcti: String,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TPM cannot be reached.
    #[error("connecting to the TPM at {tcti} failed; is it present and reachable?")]
    Connect {
        /// The TCTI string.
        tcti: String,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TPM did not answer in time.
    #[error(
        "the TPM at {tcti} did not answer within {secs} s while {stage}; it may be in use by another client"
    )]
    Timeout {
        /// The TCTI string.
        tcti: String,
        /// What the session was doing.
        stage: &'static str,
        /// Seconds waited.
        secs: u64,
    },
    /// The session thread could not start.
    #[error("starting the TPM session thread failed")]
    SpawnSession(#[source] std::io::Error),
    /// The session thread ended without an answer.
    #[error("the TPM session ended without an answer")]
    SessionLost,
    /// Reading TPM properties failed.
    #[error("reading the TPM's properties failed")]
    ReadProperties(#[source] tss_esapi::Error),
    /// The TPM answered something unexpected.
    #[error("the TPM answered an unexpected structure for {0}")]
    UnexpectedAnswer(&'static str),
    /// Listing handles failed.
    #[error("listing the TPM's handles failed")]
    ListHandles(#[source] tss_esapi::Error),
    /// No EK is persisted and creating one is not configured.
    #[error(
        "no endorsement key is persisted at {handle:#010x}; provision the TPM or set tpm.ek = \"create-if-absent\""
    )]
    EkAbsent {
        /// The handle looked at.
        handle: u32,
    },
    /// Reading a persistent key failed.
    #[error("reading the key at {handle:#010x} failed")]
    ReadKey {
        /// The handle.
        handle: u32,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// The key is of a type the station does not handle.
    #[error("the key at {handle:#010x} is not a supported EK ({detail})")]
    UnsupportedEk {
        /// The handle.
        handle: u32,
        /// What it is.
        detail: String,
    },
    /// Creating the EK failed.
    #[error("creating the EK failed")]
    CreateEk(#[source] tss_esapi::Error),
    /// Creating the SRK failed.
    #[error("creating the SRK failed")]
    CreateSrk(#[source] tss_esapi::Error),
    /// Persisting a created key failed.
    #[error("persisting the created key failed")]
    PersistKey(#[source] tss_esapi::Error),
    /// Reading an NV index failed.
    #[error("reading NV index {index:#010x} failed")]
    ReadNv {
        /// The index.
        index: u32,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
}

/// The genuineness policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Refuse a TPM without an EK certificate.
    pub require_ek_cert: bool,
    /// Accept software TPMs.
    pub allow_software_tpm: bool,
}

impl Default for Policy {
    fn default() -> Self {
        TpmConfig::default().policy()
    }
}

/// Why a unit's TPM is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A software TPM while they are not allowed.
    #[error("software TPM ({0}) refused; set tpm.allow_software_tpm = true for development only")]
    SoftwareTpm(String),
    /// The RSA EK has the ROCA weakness.
    #[error("the RSA EK is vulnerable to ROCA (CVE-2017-15361)")]
    Roca,
    /// No EK certificate in NV.
    #[error("no EK certificate at NV index {0:#010x}")]
    NoEkCertificate(u32),
    /// The EK certificate is not acceptable.
    #[error(transparent)]
    EkCertificate(#[from] EkCertProblem),
}

/// The judgement on one unit's TPM.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// The unit's registration ID (derived even when refused, for display).
    pub registration_id: RegistrationId,
    /// What the EK certificate says, when it parses.
    pub ek_certificate: Option<EkCertInfo>,
    /// Why the TPM looks like a software TPM, if it does.
    pub software_tpm: Option<String>,
    /// Things to show the operator (allowed software TPM, absent SRK, no EK certificate).
    pub warnings: Vec<String>,
    /// Accepted, or why not.
    pub verdict: Result<(), Refusal>,
}

impl Assessment {
    /// The enrollment attestation for this TPM.
    #[must_use]
    pub fn attestation(read: &TpmRead) -> TpmEnrollmentAttestation {
        TpmEnrollmentAttestation::new(
            read.endorsement_key.bytes(),
            read.storage_root_key.as_ref().map(PublicArea::bytes),
        )
    }
}

/// Judges what was read from a TPM against the policy and the trusted vendor roots.
#[must_use]
pub fn assess(read: &TpmRead, policy: Policy, trust: &TrustStore) -> Assessment {
    let cert = read.ek_certificate.as_deref().map(EkCertificate::parse);
    let info = match &cert {
        Some(Ok(c)) => Some(c.info().clone()),
        _ => None,
    };
    let software = software_tpm_sign(&read.properties, info.as_ref());
    let mut warnings = Vec::new();
    if let Some(sign) = &software
        && policy.allow_software_tpm
    {
        let w =
            format!("SOFTWARE TPM in use ({sign}): this unit has no hardware-protected identity");
        tracing::warn!("{w}");
        warnings.push(w);
    }
    if read.storage_root_key.is_none() {
        warnings.push(
            "no SRK persisted at 0x81000001; the unit's DPS client will create it at first registration"
                .into(),
        );
    }
    let verdict = judge(read, policy, trust, software.as_ref(), cert, &mut warnings);
    Assessment {
        registration_id: registration_id(read.endorsement_key.bytes()),
        ek_certificate: info,
        software_tpm: software,
        warnings,
        verdict,
    }
}

fn judge(
    read: &TpmRead,
    policy: Policy,
    trust: &TrustStore,
    software: Option<&String>,
    cert: Option<Result<EkCertificate, EkCertProblem>>,
    warnings: &mut Vec<String>,
) -> Result<(), Refusal> {
    if let (Some(sign), false) = (software, policy.allow_software_tpm) {
        return Err(Refusal::SoftwareTpm(sign.clone()));
    }
    if let PublicKey::Rsa { modulus, .. } = read.endorsement_key.key()
        && roca::is_vulnerable(modulus)
    {
        return Err(Refusal::Roca);
    }
    let cert = match cert {
        None if policy.require_ek_cert => {
            return Err(Refusal::NoEkCertificate(read.ek_certificate_index));
        }
        None => {
            warnings.push(format!(
                "no EK certificate at NV index {:#010x}; accepted because tpm.require_ek_cert = false",
                read.ek_certificate_index
            ));
            return Ok(());
        }
        Some(c) => c?,
    };
    cert.check_key(read.endorsement_key.key())?;
    cert.check_eku()?;
    cert.check_chain(trust)?;
    Ok(())
}

/// Reads and judges one TPM: the station's whole TPM step for a unit.
pub fn read_and_assess(
    tcti: &str,
    opts: &ReadOptions,
    policy: Policy,
    trust: &TrustStore,
) -> Result<(TpmRead, Assessment), TpmError> {
    let r = read(tcti, opts)?;
    let a = assess(&r, policy, trust);
    Ok((r, a))
}

/// Loads the trust directory, resolving it against `home` when relative.
pub fn load_trust(home: Option<&Path>, dir: &Path) -> Result<TrustStore, TrustStoreError> {
    match home {
        Some(h) if dir.is_relative() => TrustStore::load(&h.join(dir)),
        _ => TrustStore::load(dir),
    }
}

#[cfg(test)]
mod tests;
