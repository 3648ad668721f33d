//! `station audit verify|list`

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::{CliError, Context};
use crate::store::audit;

/// Audit log commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain and checkpoint; names the first bad entry and exits 1 if broken.
    Verify,
    /// List the newest entries, oldest first.
    List {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(ctx: &Context, cmd: &AuditCommand) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let store = ctx.open_store_read(&loaded.config)?;
    match cmd {
        AuditCommand::Verify => {
            let v = audit::verify(store.conn())?;
            let chain_ok = match v.first_bad {
                None => {
                    println!("audit chain intact: {} entries", v.entries);
                    true
                }
                Some(bad) => {
                    println!("audit chain BROKEN at entry {}: {}", bad.seq, bad.reason);
                    false
                }
            };
            // The unkeyed chain can be recomputed by anyone who can write the file; the
            // checkpoint's HMAC, made in the HSM, cannot.
            let keyed_ok = verify_keyed(ctx, &loaded.config, &store)?;
            Ok(if chain_ok && keyed_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::List { limit, json } => {
            let entries = audit::list(store.conn(), *limit)?;
            let mut out = std::io::stdout().lock();
            for e in entries {
                if *json {
                    let line = serde_json::to_string(&e).unwrap_or_default();
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{:>6}  {}  {:<12}  {:<22}  {}  {}",
                        e.seq, e.ts, e.actor, e.event, e.subject, e.details
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify_keyed(
    ctx: &Context,
    cfg: &crate::config::Config,
    store: &crate::store::Store,
) -> Result<bool, CliError> {
    use crate::ca::service::{self, AuditKey, SealCheck};
    let hsm = service::open_hsm(&ctx.home, cfg)?;
    let session = service::open_ca_token(&hsm, &ctx.home, cfg)?;
    let key = AuditKey::find(&session, &cfg.ca.audit_key_label)?;
    Ok(match service::check_seal(store, &key)? {
        SealCheck::Valid { seq, unsealed } => {
            println!(
                "keyed checkpoint intact: entry {seq} authenticated by the HSM key{}",
                if unsealed > 0 {
                    format!(" ({unsealed} newer entries are covered by the hash chain only)")
                } else {
                    String::new()
                }
            );
            true
        }
        SealCheck::Empty => true,
        SealCheck::Broken(why) => {
            println!("keyed checkpoint BROKEN: {why}");
            false
        }
    })
}
