//! `station link`: talk to a unit over its device link (MCUmgr SMP on a serial port).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::{ActorArg, CliError, Context};
use crate::link::symkey::SymkeyFlowError;
use crate::link::x509::{LeafIssuer, X509FlowError, provision_x509};
use crate::link::{LinkError, LinkSettings, SerialLink, Transport, UnitClient, port::OpenError};
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
    /// No certificate authority is configured in this build.
    #[error("provision-x509 needs the station CA, which this build does not have yet")]
    NoCa,
    /// Writing the audit entry failed (the unit was provisioned).
    #[error("the unit was provisioned but the audit entry could not be written")]
    Audit(#[source] Box<CliError>),
}

/// Runs a `station link` command.
pub fn run(ctx: &Context, cmd: &LinkCommand) -> Result<ExitCode, CliError> {
    match cmd {
        LinkCommand::Probe(args) => probe(args).map_err(CliError::from),
        // The CA (issue 3) is wired in by `run_provision_x509` with the real issuer.
        LinkCommand::ProvisionX509(_) => {
            let _ = ctx;
            Err(LinkCliError::NoCa.into())
        }
    }
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
    let done = provision_x509(&mut unit, args.serial.as_deref(), &rid, issuer)
        .map_err(|e| CliError::from(LinkCliError::X509(e)))?;
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
                event: "link.provision_x509",
                subject: &done.serial,
                details: serde_json::json!({
                    "registration_id": done.registration_id.as_str(),
                    "subject": done.subject,
                    "fingerprint_sha256": done.fingerprint_sha256,
                }),
            },
        )?;
        tx.commit()
            .map_err(crate::store::sql("commit link audit transaction"))?;
        Ok(())
    };
    audit().map_err(|e| CliError::from(LinkCliError::Audit(Box::new(e))))?;
    println!("serial      {}", done.serial);
    println!("subject     {}", done.subject);
    println!("sha256      {}", done.fingerprint_sha256);
    Ok(ExitCode::SUCCESS)
}
