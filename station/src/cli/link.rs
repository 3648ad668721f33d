//! `station link`: talk to a unit over its device link (MCUmgr SMP on a serial port).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::{ActorArg, CliError, Context};
use crate::ca::service::{self, AuditKey, RecordContext};
use crate::ca::{Authority, CaError, CommonName, Profile, SubjectKey, UnitSubject};
use crate::link::symkey::SymkeyFlowError;
use crate::link::x509::{IssueError, IssuedChain, LeafIssuer, X509FlowError, provision_x509};
use crate::link::{LinkError, LinkSettings, SerialLink, Transport, UnitClient, port::OpenError};
use crate::store::Store;
use crate::store::audit::{self, AuditEvent};
use dps::ids::{IdError, RegistrationId};

/// `station link ...`
#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Check the link to a unit: OS echo, the unit's SMP buffer, and identify.
    Probe(PortArgs),
    /// Give one unit an x509 identity: keygen, issue from the station CA, put_cert, read-back,
    /// lock. Prints the certificate's subject and fingerprint.
    ProvisionX509(ProvisionX509Args),
}

/// Which port and how to talk on it.
#[derive(Debug, Clone, Args)]
pub struct PortArgs {
    /// Serial port path, e.g. /dev/serial/by-id/usb-ACME_Unit_1234-if00 or /dev/ttyUSB0.
    #[arg(long)]
    pub port: PathBuf,
    /// Line speed.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Time to wait for each answer, in milliseconds (wire time is added).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Retries of a command after no or a corrupt answer.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
}

impl PortArgs {
    fn settings(&self) -> LinkSettings {
        LinkSettings {
            baud: self.baud,
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
            ..LinkSettings::default()
        }
    }

    fn connect(&self) -> Result<UnitClient<SerialLink>, LinkCliError> {
        let port = SerialLink::open(&self.port, self.baud).map_err(LinkCliError::Open)?;
        Ok(UnitClient::new(Transport::new(port, self.settings())))
    }
}

/// Arguments of `station link provision-x509`.
#[derive(Debug, Clone, Args)]
pub struct ProvisionX509Args {
    /// The port.
    #[command(flatten)]
    pub port: PortArgs,
    /// Registration ID: the certificate's CN and the device's DPS registration ID.
    #[arg(long)]
    pub registration_id: String,
    /// Serial the unit must report (as scanned); refuses any other unit.
    #[arg(long)]
    pub serial: Option<String>,
    /// Also write the unit's certificate (PEM) here, e.g. for an enrollment.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Who does this.
    #[command(flatten)]
    pub actor: ActorArg,
}

/// Why a `station link` command failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkCliError {
    /// The port could not be opened.
    #[error("cannot open the device link")]
    Open(#[source] OpenError),
    /// A command over the link failed.
    #[error("the unit did not complete the probe")]
    Probe(#[source] LinkError),
    /// The x509 exchange failed; the unit is not provisioned.
    #[error("x509 provisioning failed; the unit is NOT provisioned")]
    X509(#[source] X509FlowError),
    /// The symmetric-key exchange failed; the unit is not provisioned.
    #[error("symmetric-key provisioning failed; the unit is NOT provisioned")]
    Symkey(#[source] SymkeyFlowError),
    /// The registration ID is not valid for DPS.
    #[error("--registration-id is not valid")]
    RegistrationId(#[source] IdError),
    /// Writing the audit entry failed (the unit was provisioned).
    #[error("the unit was provisioned but the audit entry could not be written")]
    Audit(#[source] Box<CliError>),
}

/// Runs a `station link` command.
pub fn run(ctx: &Context, cmd: &LinkCommand) -> Result<ExitCode, CliError> {
    match cmd {
        LinkCommand::Probe(args) => probe(args).map_err(CliError::from),
        LinkCommand::ProvisionX509(args) => provision_with_station_ca(ctx, args),
    }
}

/// The station's HSM-backed CA behind the link's issuer seam: checks the CSR, issues from the
/// device profile, records the certificate (row + audit entry + keyed checkpoint in one
/// transaction) and only then releases it with the CA chain (issuing CA, then root).
struct StationCa<'a> {
    store: std::cell::RefCell<&'a mut Store>,
    ca: &'a Authority<'a>,
    audit_key: &'a AuditKey<'a>,
    profile: &'a Profile,
    root_der: Vec<u8>,
    station: crate::ids::StationId,
    actor: String,
}

impl LeafIssuer for StationCa<'_> {
    fn issue(
        &self,
        csr_der: &[u8],
        registration_id: &RegistrationId,
    ) -> Result<IssuedChain, IssueError> {
        let key = SubjectKey::from_csr(csr_der, self.profile)?;
        let cn = CommonName::registration_id(registration_id.as_str())?;
        let cert = self
            .ca
            .issue(self.profile, &key, cn.as_str(), &UnitSubject::default())?;
        let rec = RecordContext {
            station: &self.station,
            actor: &self.actor,
            event: "ca.issue",
            registration_id: Some(cn.as_str()),
            unit_id: None,
        };
        let mut store = self.store.borrow_mut();
        service::commit_issued(&mut store, self.ca, self.audit_key, &cert, &rec)
            .map_err(|e| e.to_string())?;
        Ok(IssuedChain {
            leaf_der: cert.der,
            chain_der: vec![self.ca.cert_der().to_vec(), self.root_der.clone()],
        })
    }
}

fn provision_with_station_ca(
    ctx: &Context,
    args: &ProvisionX509Args,
) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let cfg = &loaded.config;
    let home = &ctx.home;
    let profiles = service::profiles(home, cfg)?;
    let profile = profiles.get("device")?;
    let mut store = ctx.open_store(cfg)?;
    let hsm = service::open_hsm(home, cfg)?;
    let session = service::open_ca_token(&hsm, home, cfg)?;
    let ca = service::load_issuing(&session, home, cfg)?;
    let audit_key = AuditKey::find(&session, &cfg.ca.audit_key_label).map_err(CaError::from)?;
    let root_der = service::read_cert(&service::root_path(home, cfg))?;
    let code = {
        let issuer = StationCa {
            store: std::cell::RefCell::new(&mut store),
            ca: &ca,
            audit_key: &audit_key,
            profile,
            root_der,
            station: cfg.station_id(),
            actor: args.actor.resolve()?,
        };
        run_provision_x509(ctx, args, &issuer)
    };
    // The link's audit entry (success or failure) is written by run_provision_x509; seal the
    // checkpoint over it with the HSM key.
    ctx.seal_audit(cfg, &mut store);
    code
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `station link probe`: echo, MCUmgr parameters, identify.
pub fn probe(args: &PortArgs) -> Result<ExitCode, LinkCliError> {
    let mut unit = args.connect()?;
    let device = unit.transport().port().device().to_owned();
    println!("port        {} ({})", args.port.display(), device.display());
    let text = format!("station-probe-{:08x}", rand::random::<u32>());
    let started = Instant::now();
    let echoed = unit.echo(&text).map_err(LinkCliError::Probe)?;
    if echoed != text {
        return Err(LinkCliError::Probe(LinkError::Refused {
            step: "echo",
            group: None,
            rc: crate::link::proto::rc::EINVAL,
        }));
    }
    println!("echo        ok ({} ms)", started.elapsed().as_millis());
    match unit.read_params() {
        Ok(p) => println!("smp buffer  {} bytes x {}", p.buf_size, p.buf_count),
        // Units without the parameters command get Zephyr's default buffer assumed.
        Err(LinkError::Refused { .. }) => println!(
            "smp buffer  unknown (assuming {} bytes)",
            unit.transport().settings().unit_buf_size
        ),
        Err(e) => return Err(LinkCliError::Probe(e)),
    }
    let id = unit.identify().map_err(LinkCliError::Probe)?;
    println!("serial      {}", id.serial);
    println!("model       {}", id.model);
    println!("hardware    {}", id.hw);
    println!("firmware    {}", id.fw);
    println!("caps        {}", id.caps.join(", "));
    println!("locked      {}", yes_no(id.locked));
    Ok(ExitCode::SUCCESS)
}

/// `station link provision-x509` with a given issuer (the station CA): runs the exchange,
/// records an audit entry, prints the certificate's subject and fingerprint.
pub fn run_provision_x509(
    ctx: &Context,
    args: &ProvisionX509Args,
    issuer: &dyn LeafIssuer,
) -> Result<ExitCode, CliError> {
    let actor = args.actor.resolve()?;
    let rid = RegistrationId::new(args.registration_id.clone())
        .map_err(|e| CliError::from(LinkCliError::RegistrationId(e)))?;
    let mut unit = args.port.connect()?;
    let outcome = provision_x509(&mut unit, args.serial.as_deref(), &rid, issuer);
    // Failures are audited too: what was issued before the failure stays explainable.
    let (event, subject, details) = match &outcome {
        Ok(done) => (
            "link.provision_x509",
            done.serial.clone(),
            serde_json::json!({
                "registration_id": done.registration_id.as_str(),
                "subject": done.subject,
                "fingerprint_sha256": done.fingerprint_sha256,
            }),
        ),
        Err(e) => (
            "link.provision_x509.failed",
            args.serial.clone().unwrap_or_default(),
            serde_json::json!({
                "registration_id": rid.as_str(),
                "error": e.to_string(),
            }),
        ),
    };
    let audit = || -> Result<(), CliError> {
        let loaded = ctx.config()?;
        let mut store = ctx.open_store(&loaded.config)?;
        let tx = store
            .conn_mut()
            .transaction()
            .map_err(crate::store::sql("begin link audit transaction"))?;
        audit::append(
            &tx,
            &loaded.config.station_id(),
            &AuditEvent {
                actor: &actor,
                event,
                subject: &subject,
                details,
            },
        )?;
        tx.commit()
            .map_err(crate::store::sql("commit link audit transaction"))?;
        Ok(())
    };
    audit().map_err(|e| CliError::from(LinkCliError::Audit(Box::new(e))))?;
    let done = outcome.map_err(|e| CliError::from(LinkCliError::X509(e)))?;
    println!("serial      {}", done.serial);
    println!("subject     {}", done.subject);
    println!("sha256      {}", done.fingerprint_sha256);
    if let Some(out) = &args.out {
        std::fs::write(out, crate::ca::verify::to_pem(&[&done.chain.leaf_der]))?;
        println!("written     {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}
