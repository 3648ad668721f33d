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
            match v.first_bad {
                None => {
                    println!("audit chain intact: {} entries", v.entries);
                    Ok(ExitCode::SUCCESS)
                }
                Some(bad) => {
                    println!("audit chain BROKEN at entry {}: {}", bad.seq, bad.reason);
                    Ok(ExitCode::from(1))
                }
            }
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
