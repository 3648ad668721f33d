//! `station pkcs11 provision`: one unit whose key lives in a PKCS#11 secure element.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{ActorArg, CliError, Context};
use crate::ca::service::{self, AuditKey, RecordContext};
use crate::ca::{CommonName, SubjectKey, UnitSubject, verify};
use crate::element::{self, ElementTarget};
use crate::hsm::config::PinSource;
use crate::hsm::module::Hsm;
use crate::store::audit::{self, AuditEvent};

/// Secure element commands.
#[derive(Debug, Subcommand)]
pub enum Pkcs11Command {
    /// Generate the unit's key in its element, certify it with the station CA, store the
    /// certificate under the key's CKA_ID and read it back.
    Provision {
        /// The element's PKCS#11 module.
        #[arg(long)]
        module: PathBuf,
        /// The unit's token label (exact). Without it or --token-pattern: the only token present.
        #[arg(long, conflicts_with = "token_pattern")]
        token: Option<String>,
        /// The unit's token label as a pattern (anchored regex), e.g. `unit-GW-[0-9]{6}`.
        #[arg(long)]
        token_pattern: Option<String>,
        /// The unit's DPS registration ID: the certificate's CN.
        #[arg(long)]
        registration_id: String,
        /// Environment variable holding the unit's user PIN.
        #[arg(
            long,
            value_name = "VAR",
            conflicts_with = "pin_file",
            required_unless_present = "pin_file"
        )]
        pin_env: Option<String>,
        /// File holding the unit's user PIN (first line).
        #[arg(long)]
        pin_file: Option<PathBuf>,
        /// Replace an existing provisioning key (supervisor rework).
        #[arg(long)]
        rework: bool,
        /// Certificate profile.
        #[arg(long, default_value = "device")]
        profile: String,
        /// Also write the certificate (PEM) here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        actor: ActorArg,
    },
}

/// Why the element could not be provisioned (wraps the element's error with the CLI's).
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11CliError {
    /// The element flow failed at a step (boxed: the error carries module details).
    #[error(transparent)]
    Element(Box<element::ElementError>),
}

#[allow(clippy::too_many_lines)]
pub(super) fn run(ctx: &Context, cmd: &Pkcs11Command) -> Result<ExitCode, CliError> {
    let Pkcs11Command::Provision {
        module,
        token,
        token_pattern,
        registration_id,
        pin_env,
        pin_file,
        rework,
        profile,
        out,
        actor,
    } = cmd;
    let actor = actor.resolve()?;
    let loaded = ctx.config()?;
    let cfg = &loaded.config;
    let home = &ctx.home;
    let cn = CommonName::registration_id(registration_id)?;
    let profiles = service::profiles(home, cfg)?;
    let profile = profiles.get(profile)?;
    let mut store = ctx.open_store(cfg)?;
    let station_hsm = service::open_hsm(home, cfg)?;
    let session = service::open_ca_token(&station_hsm, home, cfg)?;
    let ca = service::load_issuing(&session, home, cfg)?;
    let audit_key =
        AuditKey::find(&session, &cfg.ca.audit_key_label).map_err(crate::ca::CaError::from)?;

    // One module is initialised once per process: when the element is reached through the
    // same library as the station's HSM (SoftHSM in tests and the demo), share it.
    let same = std::fs::canonicalize(module).ok()
        == std::fs::canonicalize(home.resolve(&cfg.hsm.module)).ok();
    let element_hsm = if same {
        station_hsm.clone()
    } else {
        Hsm::load_module(module)?
    };
    let target = ElementTarget {
        token: token
            .as_ref()
            .map(|t| regex::escape(t))
            .or_else(|| token_pattern.clone()),
        pin: match (pin_env, pin_file) {
            (Some(var), _) => PinSource::Env(var.clone()),
            (None, Some(f)) => PinSource::File(f.clone()),
            (None, None) => PinSource::Env("UNIT_PIN".to_owned()),
        },
        rework: *rework,
    };

    let station_id = cfg.station_id();
    let mut issued_serial = String::new();
    let result = element::provision(
        &element_hsm,
        &target,
        |p| home.resolve(p),
        |spki| {
            let key = SubjectKey::from_spki(spki).map_err(|e| e.to_string())?;
            key.check_allowed(profile).map_err(|e| e.to_string())?;
            let cert = ca
                .issue(profile, &key, cn.as_str(), &UnitSubject::default())
                .map_err(|e| e.to_string())?;
            let rec = RecordContext {
                station: &station_id,
                actor: &actor,
                event: "ca.issue",
                registration_id: Some(cn.as_str()),
                unit_id: None,
            };
            service::commit_issued(&mut store, &ca, &audit_key, &cert, &rec)
                .map_err(|e| e.to_string())?;
            issued_serial = cert.serial.hex();
            Ok(cert.der)
        },
    );

    let tx = store
        .conn_mut()
        .transaction()
        .map_err(crate::store::sql("begin"))?;
    let (event, details) = match &result {
        Ok(p) => (
            "pkcs11.provision",
            serde_json::json!({
                "token": p.token, "key_id": p.key_id, "certificate_sha256": p.fingerprint,
                "certificate_serial": issued_serial, "rework": rework,
            }),
        ),
        Err(e) => (
            "pkcs11.provision.failed",
            serde_json::json!({"error": e.to_string(), "certificate_serial": issued_serial}),
        ),
    };
    audit::append(
        &tx,
        &station_id,
        &AuditEvent {
            actor: &actor,
            event,
            subject: cn.as_str(),
            details,
        },
    )?;
    audit_key.seal(&tx)?;
    tx.commit().map_err(crate::store::sql("commit"))?;
    let p = result.map_err(|e| Pkcs11CliError::Element(Box::new(e)))?;
    if let Some(out) = out {
        std::fs::write(out, verify::to_pem(&[&p.certificate]))?;
    }
    println!(
        "provisioned unit element {}: key {} certificate CN={} serial {} SHA-256 {}",
        p.token,
        p.key_id,
        cn.as_str(),
        issued_serial,
        p.fingerprint
    );
    Ok(ExitCode::SUCCESS)
}
