//! `station upload --status | --now | --requeue ID`: the outbox toward DPS (and later other
//! destinations).

use std::process::ExitCode;

use clap::{ArgGroup, Args};

use super::{ActorArg, CliError, Context};
use crate::outbox::{self, Uploader};
use crate::store::audit::{self, AuditEvent};
use crate::store::sql;

/// What to do with the outbox.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["status", "now", "requeue"])))]
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
}

pub(super) fn run(ctx: &Context, args: &UploadArgs) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let config = &loaded.config;
    if let Some(id) = args.requeue {
        let actor = args.actor.resolve()?;
        let mut store = ctx.open_store(config)?;
        let tx = store
            .conn_mut()
            .transaction()
            .map_err(sql("begin outbox requeue"))?;
        let row = outbox::get(&tx, id)?;
        let key = row.as_ref().map(|r| r.item_key.clone()).unwrap_or_default();
        if !outbox::requeue(&tx, id)? {
            return Err(UploadCliError::NotInConflict(id).into());
        }
        audit::append(
            &tx,
            &config.station_id(),
            &AuditEvent {
                actor: &actor,
                event: "outbox.requeue",
                subject: &key,
                details: serde_json::json!({
                    "outbox_id": id,
                    "was": row.and_then(|r| r.last_error),
                }),
            },
        )?;
        tx.commit().map_err(sql("commit outbox requeue"))?;
        ctx.seal_audit(config, &mut store);
        println!("outbox row #{id} requeued; it is delivered at the next pass");
        return Ok(ExitCode::SUCCESS);
    }
    if args.now {
        // Sealed rows (symmetric keys) need the HSM's outbox key; without the HSM they wait,
        // with an error naming the missing cipher, and everything else is delivered.
        let hsm = crate::ca::service::open_hsm(&ctx.home, config)
            .and_then(|h| crate::ca::service::open_ca_token(&h, &ctx.home, config).map(|s| (h, s)));
        let hsm = match hsm {
            Ok(pair) => Some(pair),
            Err(e) => {
                eprintln!("warning: the HSM is not reachable ({e}); sealed rows stay queued");
                None
            }
        };
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
        let text = serde_json::to_string_pretty(&st).map_err(UploadCliError::Json)?;
        println!("{text}");
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
            "{} {}: pending {} (failing {}, max attempts {}), conflicts {}, delivered {}, oldest pending {}",
            q.destination,
            q.kind,
            q.pending,
            q.failing,
            q.max_attempts,
            q.conflicts,
            q.done,
            oldest
        );
        if let Some(e) = &q.last_error {
            println!("  last error: {e}");
        }
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
    Ok(ExitCode::SUCCESS)
}
