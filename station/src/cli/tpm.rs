//! `station tpm ...`: TPM diagnostics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::line::worker::error_text;
use crate::tpm::{self, TpmConfig};

/// TPM commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TpmCommand {
    /// Read a TPM's EK, SRK and EK certificate and judge it; works without a home.
    Read {
        /// TCTI string, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`
        /// (default: `tpm.tcti` of the configuration).
        #[arg(long)]
        tcti: Option<String>,
        /// Directory of trusted TPM-vendor CA certificates (default: `tpm.trust_dir`).
        #[arg(long)]
        trust_dir: Option<PathBuf>,
        /// Accept a software TPM (development only).
        #[arg(long)]
        allow_software_tpm: bool,
        /// Longest wait for the TPM, in seconds (default: `tpm.timeout_secs`).
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register this TPM's unit with DPS as the unit will in the field (the device API, DPS's
    /// TPM challenge answered in this TPM): prints the hub and device ID it gets, or why it is
    /// refused. Needs a home whose DPS target enrolled it. DPS's answer is audited
    /// (`tpm.register`), and a unit of this station's with that registration ID that DPS
    /// assigned turns `registered` at its hub, as `station registrations` records it.
    Register {
        /// TCTI string (default: `tpm.tcti` of the configuration).
        #[arg(long)]
        tcti: Option<String>,
        /// The DPS target (`[dps.targets.NAME]`; default: the only one configured).
        #[arg(long)]
        target: Option<String>,
        /// Who registers it (recorded in the audit log).
        #[command(flatten)]
        actor: super::ActorArg,
    },
}

/// Why a `station tpm` command failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmCliError {
    /// No TCTI given or configured.
    #[error("no TCTI string: pass --tcti or set tpm.tcti in the configuration")]
    NoTcti,
    /// The trust directory cannot be read.
    #[error("loading the TPM trust directory failed")]
    Trust(#[source] tpm::TrustStoreError),
    /// The TPM cannot be read.
    #[error("reading the TPM failed")]
    Read(#[source] tpm::TpmError),
    /// The TPM was read and refused.
    #[error("{0}")]
    Refused(String),
    /// Writing the output failed.
    #[error("writing the output failed")]
    Output(#[source] std::io::Error),
    /// `register` needs a station home (for the DPS target).
    #[error("station tpm register needs a station home with a DPS target (--home)")]
    NoHome,
    /// No target given, and not exactly one configured.
    #[error("name the DPS target with --target (configured: {0})")]
    WhichTarget(String),
    /// The target is not usable.
    #[error(transparent)]
    Target(#[from] crate::dps_target::TargetError),
    /// The TPM cannot be opened for DPS.
    #[error("opening the TPM failed")]
    Open(#[source] tpm::TpmError),
    /// The registration failed (DPS refused, or could not be reached).
    #[error("the registration failed")]
    Register(#[source] dps::client::ClientError),
}

/// The EK certificate fields `tpm read --json` shows.
#[derive(Debug, Serialize)]
pub struct EkCertificateJson {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// TPM manufacturer from the certificate.
    pub manufacturer: Option<String>,
    /// TPM model from the certificate.
    pub model: Option<String>,
}

/// The report of `tpm read --json` (its keys are a public interface).
#[derive(Debug, Serialize)]
pub struct TpmReadJson {
    /// The unit's registration ID.
    pub registration_id: String,
    /// Base64 TPM2B_PUBLIC of the EK.
    pub endorsement_key: String,
    /// Base64 TPM2B_PUBLIC of the SRK, or null when none is persisted.
    pub storage_root_key: Option<String>,
    /// The EK certificate, or null when absent or unparseable.
    pub ek_certificate: Option<EkCertificateJson>,
    /// `"ok"` or why the TPM is refused.
    pub validation: String,
    /// Whether this is a software TPM.
    pub software_tpm: bool,
}

/// Runs a `station tpm` command for the CLI: the home's configuration is used when there is
/// one, but the command works without a home.
pub(super) fn run_cli(ctx: &super::Context, cmd: TpmCommand) -> Result<ExitCode, super::CliError> {
    if let TpmCommand::Register {
        tcti,
        target,
        actor,
    } = cmd
    {
        if !ctx.home.config_file().exists() {
            return Err(TpmCliError::NoHome.into());
        }
        let cfg = ctx.config()?.config;
        let actor = actor.resolve()?;
        return register(ctx, &cfg, tcti, target.as_deref(), &actor);
    }
    let loaded = if ctx.home.config_file().exists() {
        Some(ctx.config()?)
    } else {
        None
    };
    let mut stdout = std::io::stdout().lock();
    run(
        loaded.as_ref().map(|l| &l.config.tpm),
        loaded.as_ref().map(|_| ctx.home.root()),
        cmd,
        &mut stdout,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a `station tpm` command. `config` and `home` are absent when there is no home.
pub fn run(
    config: Option<&TpmConfig>,
    home: Option<&Path>,
    cmd: TpmCommand,
    out: &mut dyn Write,
) -> Result<(), TpmCliError> {
    match cmd {
        TpmCommand::Read {
            tcti,
            trust_dir,
            allow_software_tpm,
            timeout_secs,
            json,
        } => {
            let defaults = TpmConfig::default();
            let config = config.unwrap_or(&defaults);
            let tcti = tcti
                .or_else(|| config.tcti.clone())
                .ok_or(TpmCliError::NoTcti)?;
            let trust = match (trust_dir, home) {
                (Some(dir), _) => tpm::TrustStore::load(&dir),
                (None, Some(h)) => tpm::load_trust(Some(h), &config.trust_dir),
                // No home and no --trust-dir: nothing is trusted, so any EK certificate fails.
                (None, None) => Ok(tpm::TrustStore::default()),
            }
            .map_err(TpmCliError::Trust)?;
            let mut opts = config.read_options();
            if let Some(s) = timeout_secs {
                opts.timeout = Duration::from_secs(s.max(1));
            }
            let mut policy = config.policy();
            policy.allow_software_tpm |= allow_software_tpm;

            let (read, assessment) =
                tpm::read_and_assess(&tcti, &opts, policy, &trust).map_err(TpmCliError::Read)?;
            let report = report(&read, &assessment);
            if json {
                serde_json::to_writer_pretty(&mut *out, &report)
                    .map_err(|e| TpmCliError::Output(e.into()))?;
                writeln!(out).map_err(TpmCliError::Output)?;
            } else {
                print_text(out, &tcti, &read, &assessment, &report).map_err(TpmCliError::Output)?;
            }
            match assessment.verdict {
                Ok(()) => Ok(()),
                Err(r) => Err(TpmCliError::Refused(r.to_string())),
            }
        }
        TpmCommand::Register { .. } => Err(TpmCliError::NoHome),
    }
}

/// `station tpm register`: the unit's registration made with its TPM, and DPS's answer
/// recorded.
fn register(
    ctx: &super::Context,
    cfg: &crate::config::Config,
    tcti: Option<String>,
    target: Option<&str>,
    actor: &str,
) -> Result<ExitCode, super::CliError> {
    use dps::client::device::{DeviceClient, DeviceCredential, DeviceOptions, TpmUnit as _};

    let tcti = tcti
        .or_else(|| cfg.tpm.tcti.clone())
        .ok_or(TpmCliError::NoTcti)?;
    let name = match target {
        Some(t) => t.to_owned(),
        None => match cfg.dps.targets.keys().collect::<Vec<_>>().as_slice() {
            [one] => (*one).clone(),
            all => {
                return Err(TpmCliError::WhichTarget(
                    all.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .into());
            }
        },
    };
    let t = crate::dps_target::target(cfg, &name).map_err(TpmCliError::from)?;
    let client = DeviceClient::new(
        &t.global_endpoint,
        &t.id_scope,
        DeviceCredential::Tpm,
        DeviceOptions {
            extra_ca_file: t.ca_file.as_ref().map(|p| ctx.home.resolve(p)),
            ..DeviceOptions::default()
        },
    )
    .map_err(TpmCliError::Register)?;
    let mut unit = tpm::dps_unit::DpsTpmUnit::open(&tcti).map_err(TpmCliError::Open)?;
    let rid = tpm::registration_id::registration_id(unit.endorsement_key());
    let rt = crate::dps_target::runtime().map_err(TpmCliError::Output)?;
    let done = rt.block_on(client.register_tpm(&rid, &mut unit, None));
    // What DPS said, in words. A failure to reach DPS changed nothing there and is not
    // recorded.
    let (said, state) = match done {
        Ok(d) => (d.outcome(rid.as_str()), d.registration_state),
        Err(e @ dps::client::ClientError::Service { .. }) => (Err(error_text(&e)), None),
        Err(e) => return Err(TpmCliError::Register(e).into()),
    };
    let mut store = ctx.open_store(cfg)?;
    let recorded = crate::dps_target::on_behalf::record(
        &mut store,
        &cfg.station_id(),
        actor,
        "tpm.register",
        &name,
        rid.as_str(),
        &said,
        state,
    )
    .map_err(super::registrations::RegistrationsCliError::Record)?
    .and_then(|(serial, newly)| newly.then_some(serial));
    ctx.seal_audit(cfg, &mut store);
    match said {
        Ok(line) => {
            println!("{line}");
            if let Some(serial) = recorded {
                println!("unit {serial}: recorded as registered");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => Err(TpmCliError::Refused(why).into()),
    }
}

fn report(read: &tpm::TpmRead, a: &tpm::Assessment) -> TpmReadJson {
    TpmReadJson {
        registration_id: a.registration_id.to_string(),
        endorsement_key: read.endorsement_key.to_base64(),
        storage_root_key: read
            .storage_root_key
            .as_ref()
            .map(tpm::PublicArea::to_base64),
        ek_certificate: a.ek_certificate.as_ref().map(|c| EkCertificateJson {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            not_after: c.not_after.clone(),
            manufacturer: c.manufacturer.clone(),
            model: c.model.clone(),
        }),
        validation: match &a.verdict {
            Ok(()) => "ok".into(),
            Err(r) => r.to_string(),
        },
        software_tpm: a.software_tpm.is_some(),
    }
}

fn print_text(
    out: &mut dyn Write,
    tcti: &str,
    read: &tpm::TpmRead,
    a: &tpm::Assessment,
    r: &TpmReadJson,
) -> std::io::Result<()> {
    writeln!(out, "TPM             {tcti}")?;
    writeln!(
        out,
        "  reports       manufacturer {:?}, vendor {:?}, firmware {:08x}.{:08x}",
        read.properties.manufacturer,
        read.properties.vendor,
        read.properties.firmware_version.0,
        read.properties.firmware_version.1
    )?;
    writeln!(out, "registration ID {}", r.registration_id)?;
    writeln!(
        out,
        "EK              {:#010x} {}{}",
        read.ek_handle,
        read.endorsement_key.key().describe(),
        if read.ek_created {
            " (created now)"
        } else {
            ""
        }
    )?;
    match &read.storage_root_key {
        Some(srk) => writeln!(
            out,
            "SRK             0x81000001 {}{}",
            srk.key().describe(),
            if read.srk_created {
                " (created now)"
            } else {
                ""
            }
        )?,
        None => writeln!(out, "SRK             absent")?,
    }
    match &a.ek_certificate {
        Some(c) => {
            writeln!(
                out,
                "EK certificate  NV {:#010x}",
                read.ek_certificate_index
            )?;
            writeln!(out, "  subject       {}", c.subject)?;
            writeln!(out, "  issuer        {}", c.issuer)?;
            writeln!(out, "  not after     {}", c.not_after)?;
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "  TPM           manufacturer {}, model {}, version {}",
                show(&c.manufacturer),
                show(&c.model),
                show(&c.version)
            )?;
        }
        None => writeln!(out, "EK certificate  none readable")?,
    }
    for w in &a.warnings {
        writeln!(out, "WARNING         {w}")?;
    }
    writeln!(out, "validation      {}", r.validation)
}
