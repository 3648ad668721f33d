//! `station upload --status | --now | --requeue ID`: the outbox toward DPS (and later other
//! destinations); `--export FILE | --deliver FILE | --receipt FILE`: the same delivery carried
//! by hand to a place where DPS is reachable (`outbox::transfer`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args};

use super::{ActorArg, CliError, Context};
use crate::outbox::{self, Uploader, transfer};

/// What to do with the outbox.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["status", "now", "requeue", "export", "deliver", "receipt", "new_identity"])))]
pub struct UploadArgs {
    /// Show queue depth, oldest age, attempts, errors and conflicts per destination (offline).
    #[arg(long)]
    pub status: bool,
    /// Deliver every due row now; exits 1 if rows remain undelivered.
    #[arg(long)]
    pub now: bool,
    /// Put a conflict row back in the queue, once a supervisor resolved it at the destination.
    #[arg(long, value_name = "ID")]
    pub requeue: Option<i64>,
    /// Air-gapped transfer: write every row of a DPS target that waits (outside an export) to
    /// FILE, for `--deliver` where DPS is reachable; the uploader leaves them alone until
    /// `--receipt`. An export holding units' symmetric keys needs --recipient (or --in-clear).
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// With --export: encrypt the file to this age public key (`age1...`) of the delivering
    /// side (`station upload --new-identity FILE` there); repeatable.
    #[arg(long, value_name = "AGE_PUBLIC_KEY", requires = "export")]
    pub recipient: Vec<String>,
    /// With --export: allow units' symmetric keys in a file that is not encrypted.
    #[arg(long, requires = "export", conflicts_with = "recipient")]
    pub in_clear: bool,
    /// With --export: the DPS target (needed when more than one is configured).
    #[arg(long, value_name = "NAME", requires = "export")]
    pub target: Option<String>,
    /// With --export: write the rows still travelling in this export again (its file was lost).
    #[arg(
        long,
        value_name = "EXPORT_ID",
        requires = "export",
        conflicts_with = "target"
    )]
    pub again: Option<String>,
    /// Deliver an export file to DPS, where DPS is reachable (no station home needed), and
    /// write its receipt (default: FILE.receipt) to carry back for `--receipt`.
    #[arg(long, value_name = "FILE")]
    pub deliver: Option<PathBuf>,
    /// With --deliver: the file holding the DPS service connection string (else the
    /// environment variable DPS_CONNECTION_STRING).
    #[arg(long, value_name = "FILE", requires = "deliver")]
    pub connection_string_file: Option<PathBuf>,
    /// With --deliver: extra CA certificates (PEM) to trust for the service.
    #[arg(long, value_name = "PEM", requires = "deliver")]
    pub ca_file: Option<PathBuf>,
    /// With --deliver: the age identity file that opens an encrypted export.
    #[arg(long, value_name = "FILE", requires = "deliver")]
    pub identity: Option<PathBuf>,
    /// Make an age identity (key pair) in the new file FILE, mode 0600, and print its public
    /// key for `--export --recipient` at the station. No station home needed.
    #[arg(long, value_name = "FILE")]
    pub new_identity: Option<PathBuf>,
    /// With --deliver: where to write the receipt.
    #[arg(long, value_name = "FILE", requires = "deliver")]
    pub write_receipt: Option<PathBuf>,
    /// With --deliver: individual enrollments per bulk operation (1 to 10).
    #[arg(long, value_name = "N", default_value_t = 10, requires = "deliver")]
    pub batch: usize,
    /// Record a delivery's receipt: each exported row delivered, in conflict, or back in the
    /// queue.
    #[arg(long, value_name = "FILE")]
    pub receipt: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    actor: ActorArg,
}

/// Why an upload command failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadCliError {
    /// The uploader failed (rows stay queued).
    #[error(transparent)]
    Upload(#[from] outbox::UploadError),
    /// `--requeue` named a row that is not in conflict.
    #[error("outbox row #{0} is not in conflict (see `station upload --status`)")]
    NotInConflict(i64),
    /// JSON output failed.
    #[error("cannot encode the output as JSON")]
    Json(#[source] serde_json::Error),
    /// An export, delivery or receipt failed.
    #[error(transparent)]
    Transfer(#[from] transfer::TransferError),
    /// --target names no configured target.
    #[error(transparent)]
    Target(#[from] crate::dps_target::TargetError),
    /// --export without --target while several targets are configured.
    #[error("name the DPS target with --target (configured: {0})")]
    WhichTarget(String),
    /// --deliver without a connection string.
    #[error(
        "give the DPS service connection string with --connection-string-file FILE or in DPS_CONNECTION_STRING"
    )]
    NoConnectionString,
    /// A --recipient that is not an age public key.
    #[error("--recipient {0:?} is not an age public key (age1...): {1}")]
    BadRecipient(String, &'static str),
    /// The connection string could not be read or used (never quoted: it holds the key).
    #[error("the DPS service connection string {0}")]
    ConnectionString(String),
}

pub(super) fn run(ctx: &Context, args: &UploadArgs) -> Result<ExitCode, CliError> {
    if let Some(file) = &args.deliver {
        // Where DPS is reachable: no station home, config or HSM.
        return deliver(args, file);
    }
    if let Some(file) = &args.new_identity {
        let public = transfer::new_identity(file).map_err(UploadCliError::from)?;
        println!("{public}");
        eprintln!(
            "age identity written to {} (keep it secret); give the public key above to the station: station upload --export FILE --recipient {public}",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let loaded = ctx.config()?;
    let config = &loaded.config;
    if let Some(id) = args.requeue {
        let actor = args.actor.resolve()?;
        let mut store = ctx.open_store(config)?;
        if !outbox::requeue_conflict(&mut store, &config.station_id(), &actor, id)? {
            return Err(UploadCliError::NotInConflict(id).into());
        }
        ctx.seal_audit(config, &mut store);
        println!("outbox row #{id} requeued; it is delivered at the next pass");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(out) = &args.export {
        return export(ctx, config, args, out);
    }
    if let Some(file) = &args.receipt {
        return receipt(ctx, config, args, file);
    }
    if args.now {
        // Sealed rows (symmetric keys) need the HSM's outbox key; without the HSM they wait,
        // with an error naming the missing cipher, and everything else is delivered.
        let hsm = open_hsm(ctx, config, "sealed rows stay queued");
        let cipher = hsm
            .as_ref()
            .and_then(|(_, s)| crate::keys::OutboxCipher::new(s).ok());
        let mut up = Uploader::new(
            &ctx.home,
            config,
            cipher
                .as_ref()
                .map(|c| c as &dyn crate::outbox::PayloadCipher),
        )
        .map_err(UploadCliError::from)?;
        let report = up.drain_once().map_err(UploadCliError::from)?;
        drop(up);
        if report.delivered + report.conflicts > 0 {
            let mut store = ctx.open_store(config)?;
            ctx.seal_audit(config, &mut store);
        }
        if args.json {
            let text = serde_json::to_string_pretty(&report).map_err(UploadCliError::Json)?;
            println!("{text}");
        } else {
            println!(
                "delivered {} ({} already in DPS as ours), failed {}, conflicts {}, bulk calls {}; undelivered now {}",
                report.delivered,
                report.recovered,
                report.retrying,
                report.conflicts,
                report.bulk_calls,
                report.remaining
            );
            for f in &report.failures {
                let what = if f.conflict { "conflict" } else { "failed" };
                println!("  #{} {} {what}: {}", f.id, f.item_key, f.error);
            }
            if report.remaining > 0 {
                println!("see `station upload --status` for every undelivered row");
            }
        }
        return Ok(if report.remaining == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let store = ctx.open_store(config)?;
    let st = outbox::status(store.conn())?;
    if args.json {
        print_json(&st)?;
        return Ok(ExitCode::SUCCESS);
    }
    if st.queues.is_empty() {
        println!("outbox: empty");
        return Ok(ExitCode::SUCCESS);
    }
    println!("outbox: {} undelivered", st.undelivered());
    for q in &st.queues {
        let oldest = q
            .oldest_age_s
            .map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
        println!(
            "{} {}: pending {} (failing {}, max attempts {}, in an export {}), conflicts {}, delivered {}, oldest pending {}",
            q.destination,
            q.kind,
            q.pending,
            q.failing,
            q.max_attempts,
            q.in_export,
            q.conflicts,
            q.done,
            oldest
        );
        if let Some(e) = &q.last_error {
            println!("  last error: {e}");
        }
        let export_only = q
            .destination
            .strip_prefix("dps:")
            .is_some_and(|t| config.dps.export_only(t));
        if export_only && q.pending > q.in_export {
            println!(
                "  delivery = \"export\": {} rows wait for `station upload --export FILE --target {}`",
                q.pending - q.in_export,
                q.destination.trim_start_matches("dps:")
            );
        }
    }
    for e in &st.exports {
        println!(
            "export {} to {}: {} of {} rows still travelling (file {}, written {} by {}); apply its receipt with `station upload --receipt FILE`",
            e.id, e.target, e.travelling, e.rows, e.file_name, e.created_at, e.created_by
        );
    }
    if !st.conflicts.is_empty() {
        println!("conflicts (a supervisor must resolve each, then `station upload --requeue ID`):");
        for c in &st.conflicts {
            println!(
                "  #{} {} {}: {}",
                c.id, c.destination, c.item_key, c.message
            );
        }
    }
    let reg = crate::dps_target::check::summary(store.conn())
        .map_err(crate::store::sql("read the registration answers"))?;
    if reg.waiting + reg.registered > 0 {
        let said: Vec<String> = reg
            .answers
            .iter()
            .filter(|a| a.status != "assigned")
            .map(|a| {
                let status = if a.status == "none" {
                    "not registered yet"
                } else {
                    a.status.as_str()
                };
                format!("{} {status} in {}", a.units, a.target)
            })
            .collect();
        println!(
            "registration in the field: {} registered, {} uploaded and not registered yet{}",
            reg.registered,
            reg.waiting,
            if said.is_empty() {
                String::new()
            } else {
                format!(" (DPS last said: {})", said.join(", "))
            }
        );
        if !reg.refused.is_empty() {
            println!("refused by DPS (asked again at each check):");
            for r in &reg.refused {
                println!(
                    "  {} {}: {}: {} (asked {})",
                    r.serial, r.target, r.status, r.message, r.checked_at
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(UploadCliError::Json)?;
    println!("{text}");
    Ok(())
}

type HsmPair = (crate::hsm::Hsm, crate::hsm::TokenSession);

/// The HSM and the CA token's session, for the outbox cipher; a warning (ending in `then`)
/// when it is not reachable.
fn open_hsm(ctx: &Context, config: &crate::config::Config, then: &str) -> Option<HsmPair> {
    let hsm = crate::ca::service::open_hsm(&ctx.home, config)
        .and_then(|h| crate::ca::service::open_ca_token(&h, &ctx.home, config).map(|s| (h, s)));
    match hsm {
        Ok(pair) => Some(pair),
        Err(e) => {
            eprintln!("warning: the HSM is not reachable ({e}); {then}");
            None
        }
    }
}

fn export(
    ctx: &Context,
    config: &crate::config::Config,
    args: &UploadArgs,
    out: &Path,
) -> Result<ExitCode, CliError> {
    let actor = args.actor.resolve()?;
    let recipients = args
        .recipient
        .iter()
        .map(|r| {
            r.parse::<transfer::AgeRecipient>()
                .map_err(|e| UploadCliError::BadRecipient(r.clone(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target;
    let rows = if let Some(id) = &args.again {
        transfer::ExportRows::Again(id)
    } else {
        target = export_target(config, args.target.as_deref())?;
        transfer::ExportRows::Target(&target)
    };
    // Sealed rows (symmetric keys) are opened with the HSM's outbox key.
    let hsm = open_hsm(ctx, config, "rows holding keys cannot be exported");
    let cipher = hsm
        .as_ref()
        .and_then(|(_, s)| crate::keys::OutboxCipher::new(s).ok());
    let mut store = ctx.open_store(config)?;
    let scope = |t: &str| config.dps.targets.get(t).map(|t| t.id_scope.clone());
    let s = transfer::export(
        &mut store,
        &config.station_id(),
        cipher
            .as_ref()
            .map(|c| c as &dyn crate::outbox::PayloadCipher),
        &rows,
        scope,
        &transfer::ExportTo {
            path: out,
            recipients: &recipients,
            in_clear: args.in_clear,
        },
        &actor,
    )
    .map_err(UploadCliError::from)?;
    ctx.seal_audit(config, &mut store);
    if args.json {
        print_json(&s)?;
    } else {
        println!(
            "export {} to DPS target {}: {} individual enrollments, {} group members{}, written to {} (sha256 {})",
            s.export_id,
            s.target,
            s.individuals,
            s.group_members,
            if s.blocks > 0 {
                format!(", {} scrapped unit(s) to block", s.blocks)
            } else {
                String::new()
            },
            s.file.display(),
            s.sha256
        );
        println!(
            "deliver it where DPS is reachable: station upload --deliver {} --connection-string-file FILE{}; then bring the receipt back: station upload --receipt FILE",
            s.file.display(),
            if s.encrypted {
                " --identity FILE (it is encrypted to the recipient's key)"
            } else {
                ""
            }
        );
    }
    if s.with_keys > 0 && !s.encrypted {
        eprintln!(
            "{} holds the symmetric keys of {} units in clear: carry it as a secret and delete it once delivered",
            s.file.display(),
            s.with_keys
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The target named, or the only one configured.
fn export_target(config: &crate::config::Config, named: Option<&str>) -> Result<String, CliError> {
    if let Some(t) = named {
        crate::dps_target::target(config, t).map_err(UploadCliError::from)?;
        return Ok(t.to_owned());
    }
    let names: Vec<&str> = config.dps.targets.keys().map(String::as_str).collect();
    match names.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(UploadCliError::WhichTarget("none".into()).into()),
        _ => Err(UploadCliError::WhichTarget(names.join(", ")).into()),
    }
}

/// A DPS service client where DPS is reachable and there is no station home: the connection
/// string from `file` (else the environment variable DPS_CONNECTION_STRING), patient retries.
pub(super) fn service_client(
    file: Option<&Path>,
    ca_file: Option<PathBuf>,
) -> Result<dps::client::ServiceClient, UploadCliError> {
    use dps::client::{ClientOptions, RetryPolicy, ServiceClient};
    let text = match file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            UploadCliError::ConnectionString(format!("file {} cannot be read: {e}", p.display()))
        })?,
        None => std::env::var("DPS_CONNECTION_STRING")
            .map_err(|_| UploadCliError::NoConnectionString)?,
    };
    let cs: dps::sas::ConnectionString = text
        .trim()
        .parse()
        .map_err(|e| UploadCliError::ConnectionString(format!("is not valid: {e}")))?;
    ServiceClient::new(
        cs,
        ClientOptions {
            extra_ca_file: ca_file,
            retry: RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    )
    .map_err(|e| UploadCliError::ConnectionString(format!("cannot be used: {e}")))
}

fn deliver(args: &UploadArgs, file: &Path) -> Result<ExitCode, CliError> {
    let identities = match &args.identity {
        Some(p) => transfer::load_identities(p).map_err(UploadCliError::from)?,
        None => Vec::new(),
    };
    let export = transfer::read_export(file, &identities).map_err(UploadCliError::from)?;
    let client = service_client(args.connection_string_file.as_deref(), args.ca_file.clone())?;
    let receipt = args.write_receipt.clone().unwrap_or_else(|| {
        let mut p = file.as_os_str().to_owned();
        p.push(".receipt");
        PathBuf::from(p)
    });
    let (id, target, rows) = (
        export.header.export_id.clone(),
        export.header.target.clone(),
        export.items.len(),
    );
    let rt = crate::dps_target::runtime()
        .map_err(|e| UploadCliError::from(outbox::UploadError::Runtime(e)))?;
    let s = rt
        .block_on(transfer::deliver(&client, export, args.batch, &receipt))
        .map_err(UploadCliError::from)?;
    if args.json {
        print_json(&s)?;
    } else {
        println!(
            "export {id} ({rows} rows for DPS target {target}): delivered {} ({} already in DPS as the station's), failed {}, conflicts {}, bulk calls {}",
            s.delivered, s.recovered, s.retrying, s.conflicts, s.bulk_calls
        );
        println!(
            "receipt written to {}: carry it back and run `station upload --receipt {}` on the station",
            receipt.display(),
            receipt.display()
        );
    }
    Ok(if s.retrying + s.conflicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn receipt(
    ctx: &Context,
    config: &crate::config::Config,
    args: &UploadArgs,
    file: &Path,
) -> Result<ExitCode, CliError> {
    let actor = args.actor.resolve()?;
    let r = transfer::read_receipt(file).map_err(UploadCliError::from)?;
    let mut store = ctx.open_store(config)?;
    let s = transfer::apply_receipt(
        &mut store,
        &config.station_id(),
        r,
        &outbox::Backoff::from_config(&config.upload),
        &actor,
    )
    .map_err(UploadCliError::from)?;
    ctx.seal_audit(config, &mut store);
    if args.json {
        print_json(&s)?;
    } else {
        let rep = &s.report;
        println!(
            "receipt of export {}: delivered {} ({} already in DPS as the station's), back in the queue {}, conflicts {}, left alone {}, still travelling {}",
            s.export_id,
            rep.delivered,
            rep.recovered,
            rep.retrying,
            rep.conflicts,
            s.skipped.len(),
            s.still_travelling
        );
        for f in &rep.failures {
            let what = if f.conflict {
                "conflict"
            } else {
                "back in the queue"
            };
            println!("  #{} {} {what}: {}", f.id, f.item_key, f.error);
        }
        for k in &s.skipped {
            println!("  left alone: {k}");
        }
    }
    Ok(if s.report.retrying + s.report.conflicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
