//! The command line: `station <command>`. Each command group lives in a file of its own;
//! a command parses its arguments, makes one call into the station, and prints the result.

mod audit;
mod backup;
pub mod ca;
mod check;
mod group;
mod init;
mod line;
pub mod link;
mod lot;
mod pkcs11;
mod registrations;
pub mod tpm;
mod upload;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Loaded};
use crate::home::{Home, HomeError, init::InitError};
use crate::logging::LogFormat;
use crate::store::{Store, StoreError};

/// Provisioning station: gives every manufactured IoT device its cloud identity.
#[derive(Debug, Parser)]
#[command(name = "station", version, about, long_about = None)]
pub struct Cli {
    /// The station home (configuration, database, logs).
    #[arg(
        long,
        global = true,
        env = "STATION_HOME",
        default_value = "./var/station"
    )]
    pub home: PathBuf,
    /// Log line format (logs go to standard error; filter with STATION_LOG).
    #[arg(long, global = true, env = "STATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a station home with embedded defaults (changes nothing if it exists).
    Init(init::InitArgs),
    /// Check the station: configuration, database, audit chain, clock.
    Check,
    /// Inspect and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Back up the database now (a checked copy, taken while the station runs; `station serve`
    /// makes one every `[backup] every_h`), list the backups, check one, or restore one.
    Backup(backup::BackupArgs),
    /// Talk to a unit over its device link (serial, MCUmgr SMP).
    #[command(subcommand)]
    Link(link::LinkCommand),
    /// The HSM-backed certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Units whose key lives in a PKCS#11 secure element.
    #[command(subcommand)]
    Pkcs11(pkcs11::Pkcs11Command),
    /// Lots (work orders): open, close, list, show.
    #[command(subcommand)]
    Lot(lot::LotCommand),
    /// Manage the people who work the line: operators, supervisors, admins.
    #[command(subcommand)]
    User(user::UserCommand),
    /// TPM diagnostics.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
    /// Run the line: every fixture (scanner, device link, TPM, unit token), the uploader, the
    /// registration check (`[registrations] check_every_s`: uploaded units DPS assigned a hub
    /// turn registered) and, when `[web] listen` is set, the operator web UI, until Ctrl-C or
    /// SIGTERM. Units left unfinished by a crash are resumed or failed first.
    Serve(line::ServeArgs),
    /// Provision one unit on one fixture from the command line (the fixture must not be run
    /// by a `station serve` at the same time).
    Provision(line::ProvisionArgs),
    /// Units: one unit's whole story or a list; end-of-line registration; scrapping a unit.
    #[command(subcommand)]
    Unit(line::UnitCommand),
    /// Enrollment groups in DPS and their keys in the HSM.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// The outbox: queue status, drain now, requeue a resolved conflict; air-gapped export,
    /// delivery and receipt.
    Upload(upload::UploadArgs),
    /// Ask DPS which passed units have registered (at the end of the line or in the field):
    /// record the hub each was assigned (the unit becomes `registered`) and list the units not
    /// registered yet or refused, with DPS's reason. Exits 1 if DPS could not be asked about
    /// every unit.
    Registrations(registrations::RegistrationsArgs),
}

impl Command {
    /// Whether this command is the daemon (it sets up its own logging).
    #[must_use]
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Serve(_))
    }
}

/// Who changes state, for commands that do: recorded in the audit log.
#[derive(Debug, Clone, Args)]
pub struct ActorArg {
    /// Who is doing this (recorded in the audit log); default: the OS user.
    #[arg(long)]
    pub actor: Option<String>,
}

impl ActorArg {
    /// The actor name: given, else the OS user name, else the numeric uid.
    pub fn resolve(&self) -> Result<String, CliError> {
        let name = match &self.actor {
            Some(a) => a.clone(),
            None => {
                let uid = nix::unistd::getuid();
                nix::unistd::User::from_uid(uid)
                    .ok()
                    .flatten()
                    .map_or_else(|| format!("uid:{uid}"), |u| u.name)
            }
        };
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(CliError::BadActor(name.escape_debug().to_string()));
        }
        Ok(name)
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The home cannot be used.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The configuration is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Init failed.
    #[error("station init failed")]
    Init(#[from] InitError),
    /// The actor name is not usable.
    #[error("--actor {0:?} is not valid: 1 to 64 characters, no control characters")]
    BadActor(String),
    /// A device-link command failed.
    #[error(transparent)]
    Link(#[from] link::LinkCliError),
    /// The certificate authority refused or failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The HSM refused or failed.
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
    /// A CA operation that records in the database failed.
    #[error(transparent)]
    CaService(#[from] crate::ca::service::CaServiceError),
    /// A secure element could not be provisioned.
    #[error(transparent)]
    Pkcs11(#[from] pkcs11::Pkcs11CliError),
    /// A lot operation failed.
    #[error(transparent)]
    Lot(#[from] crate::line::lots::LotError),
    /// The product profiles could not be read.
    #[error("cannot load the product profiles")]
    Profiles(#[from] crate::enroll::profile::ProfileError),
    /// A user operation failed.
    #[error(transparent)]
    Operator(#[from] crate::operators::OperatorError),
    /// A password or badge could not be read.
    #[error(transparent)]
    SecretInput(#[from] user::SecretInputError),
    /// Output could not be written.
    #[error("cannot write output")]
    Output(#[from] std::io::Error),
    /// A TPM command failed.
    #[error(transparent)]
    Tpm(#[from] tpm::TpmCliError),
    /// A line command failed.
    #[error(transparent)]
    Line(#[from] line::LineCliError),
    /// An enrollment-group command failed.
    #[error(transparent)]
    Group(Box<group::GroupCliError>),
    /// An upload command failed.
    #[error(transparent)]
    Upload(#[from] upload::UploadCliError),
    /// The registration check failed.
    #[error(transparent)]
    Registrations(#[from] registrations::RegistrationsCliError),
    /// The command line is inconsistent in a way its parser cannot see.
    #[error("{0}")]
    Usage(String),
    /// A backup could not be made or read.
    #[error(transparent)]
    Backup(#[from] crate::store::backup::BackupError),
    /// A restore did not happen.
    #[error(transparent)]
    Restore(#[from] crate::backup::RestoreError),
}

/// What every command gets: the home, and its configuration once loaded.
#[derive(Debug, Clone)]
pub struct Context {
    /// The station home.
    pub home: Home,
}

impl Context {
    /// The station's product profiles; none when the products directory does not exist yet
    /// (a fresh home), so a command can say which products there are.
    pub fn product_profiles(
        &self,
        config: &Config,
    ) -> Result<Vec<crate::enroll::profile::Product>, CliError> {
        let dir = self.home.resolve(&config.line.products_dir);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        Ok(crate::enroll::profile::load_dir(&dir)?)
    }

    /// Loads the configuration (the home must exist).
    pub fn config(&self) -> Result<Loaded, CliError> {
        self.home.ensure_usable()?;
        Ok(Config::load(&self.home)?)
    }

    /// Opens the database for a command that writes (pending migrations are applied).
    pub fn open_store(&self, config: &Config) -> Result<Store, CliError> {
        Ok(Store::open(
            &self.home.resolve(&config.store.path),
            &config.store,
        )?)
    }

    /// Seals the audit checkpoint with the HSM key over the newest entry, after a command
    /// wrote audit entries outside an HSM transaction. Best effort: with the HSM unreachable
    /// the entries stay protected by the hash chain, the next sealed write covers them, and
    /// `station audit verify` says how many are not yet under the keyed checkpoint.
    pub fn seal_audit(&self, config: &Config, store: &mut Store) {
        let sealed = (|| -> Result<(), CliError> {
            let hsm = crate::ca::service::open_hsm(&self.home, config)?;
            crate::ca::service::seal_checkpoint(&hsm, &self.home, config, store)?;
            Ok(())
        })();
        if let Err(e) = sealed {
            tracing::warn!(error = %e, "could not seal the audit checkpoint with the HSM key; the hash chain still covers the new entries");
            eprintln!(
                "warning: audit checkpoint not sealed with the HSM key ({e}); it will be at the next sealed write"
            );
        }
    }

    /// Opens the database for a command that only reads (nothing is migrated).
    pub fn open_store_read(&self, config: &Config) -> Result<Store, CliError> {
        Ok(Store::open_unmigrated(
            &self.home.resolve(&config.store.path),
            &config.store,
        )?)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let ctx = Context {
        home: Home::new(&cli.home),
    };
    match cli.command {
        Command::Init(args) => init::run(&ctx, &args),
        Command::Check => check::run(&ctx),
        Command::Audit(cmd) => audit::run(&ctx, &cmd),
        Command::Backup(args) => backup::run(&ctx, &args),
        Command::Link(cmd) => link::run(&ctx, &cmd),
        Command::Ca(cmd) => ca::run(&ctx, &cmd),
        Command::Lot(cmd) => lot::run(&ctx, cmd),
        Command::Pkcs11(cmd) => pkcs11::run(&ctx, &cmd),
        Command::User(cmd) => user::run(&ctx, cmd),
        Command::Tpm(cmd) => tpm::run_cli(&ctx, cmd),
        Command::Serve(args) => line::serve(&ctx, &args, cli.log_format),
        Command::Provision(args) => line::provision(&ctx, &args),
        Command::Unit(cmd) => line::unit(&ctx, &cmd),
        Command::Group(cmd) => group::run(&ctx, cmd),
        Command::Upload(args) => upload::run(&ctx, &args),
        Command::Registrations(args) => registrations::run(&ctx, &args),
    }
}
