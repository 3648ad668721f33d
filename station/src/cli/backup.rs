//! `station backup [--out FILE]`, `backup list`, `backup check FILE`, `backup restore FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{ActorArg, CliError, Context};
use crate::backup::{self, Keyed};
use crate::ca::service::{self, AuditKey};
use crate::config::Config;
use crate::line::worker::error_text;
use crate::store::backup::Contents;

/// `station backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// list, check or restore; without one, make a backup now.
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Write the backup to this file (it must not exist) rather than into the backup directory
    /// (`[backup] dir`) under a name with the time; such a file is not pruned.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Who makes the backup.
    #[command(flatten)]
    pub actor: ActorArg,
}

/// The backup subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// The backups in the backup directory, oldest first, with their age and size.
    List,
    /// Check a backup file as a restore would: integrity, audit chain, and its audit checkpoint
    /// against this station's HSM key. Exits 1 if the checkpoint does not verify.
    Check {
        /// The backup file.
        file: PathBuf,
    },
    /// Put a backup back as the station's database. Refused while a `station serve` runs on
    /// this home. The current database is set aside (renamed `station.db.replaced-TIME`, never
    /// deleted); if it holds records the backup lacks, --force is needed.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Restore even though the current database holds records the backup lacks (they stay
        /// in the file set aside).
        #[arg(long)]
        force: bool,
        /// Who restores.
        #[command(flatten)]
        actor: ActorArg,
    },
}

pub(super) fn run(ctx: &Context, args: &BackupArgs) -> Result<ExitCode, CliError> {
    if args.command.is_some() && (args.out.is_some() || args.actor.actor.is_some()) {
        return Err(CliError::Usage(
            "--out and --actor before a backup subcommand belong to `station backup` itself; put --actor after `restore`".into(),
        ));
    }
    let loaded = ctx.config()?;
    let cfg = &loaded.config;
    match &args.command {
        None => make(ctx, cfg, args.out.as_deref(), &args.actor),
        Some(BackupCommand::List) => list(ctx, cfg),
        Some(BackupCommand::Check { file }) => with_audit_key(ctx, cfg, |key| {
            let checked = backup::check(file, key)?;
            println!(
                "{}: a sound station backup ({}, sha256 {})",
                file.display(),
                size(checked.bytes),
                checked.sha256
            );
            println!("  {}", holds(&checked.contents));
            println!(
                "  integrity ok, audit chain intact, {}",
                checked.keyed.describe()
            );
            Ok(if checked.keyed.is_broken() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }),
        Some(BackupCommand::Restore { file, force, actor }) => {
            let actor = actor.resolve()?;
            let station = cfg.station_id();
            with_audit_key(ctx, cfg, |key| {
                let done =
                    backup::restore((&ctx.home, cfg), file, *force, (&station, &actor), key)?;
                println!(
                    "restored {} as {}",
                    done.from.display(),
                    ctx.home.resolve(&cfg.store.path).display()
                );
                println!("  {}", holds(&done.contents));
                match (&done.set_aside, &done.replaced) {
                    (Some(aside), Some(what)) => println!(
                        "  the database it replaced is set aside as {} ({what})",
                        aside.display()
                    ),
                    (Some(aside), None) => println!(
                        "  the database it replaced is set aside as {}",
                        aside.display()
                    ),
                    _ => println!("  there was no database to replace"),
                }
                println!(
                    "  units provisioned after the backup are not in it: their records are in the file set aside, and a unit scanned again is provisioned anew. Enrollments the backup still has waiting are sent again; DPS holding the same one counts as delivered"
                );
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// `station backup [--out FILE]`.
fn make(
    ctx: &Context,
    cfg: &Config,
    out: Option<&Path>,
    actor: &ActorArg,
) -> Result<ExitCode, CliError> {
    let actor = actor.resolve()?;
    let station = cfg.station_id();
    let mut store = ctx.open_store(cfg)?;
    with_audit_key(ctx, cfg, |key| {
        let made = backup::make(&mut store, (&ctx.home, cfg), out, (&station, &actor), key)?;
        let w = &made.written;
        println!(
            "backup written: {} ({}, sha256 {})",
            w.path.display(),
            size(w.bytes),
            w.sha256
        );
        println!("  {}", holds(&w.contents));
        println!(
            "  integrity ok, audit chain intact, {}",
            made.keyed.describe()
        );
        if let Keyed::Unchecked(_) = made.keyed {
            eprintln!(
                "warning: the backup's audit checkpoint was not checked against the HSM key; `station backup check FILE` checks it later"
            );
        }
        if !made.pruned.is_empty() {
            let names: Vec<String> = made
                .pruned
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            println!(
                "  removed {} older backup(s) to keep {}: {}",
                made.pruned.len(),
                cfg.backup.keep,
                names.join(", ")
            );
        }
        if let Some(note) = backup::same_disk(&ctx.home.resolve(&cfg.store.path), &w.path) {
            println!("  {note}");
        }
        Ok(if made.keyed.is_broken() {
            eprintln!(
                "the database's audit checkpoint does not verify (so neither does its copy): run `station audit verify`"
            );
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// `station backup list`.
fn list(ctx: &Context, cfg: &Config) -> Result<ExitCode, CliError> {
    let dir = backup::dir(&ctx.home, cfg);
    let all = crate::store::backup::in_dir(&dir)?;
    let schedule = backup::schedule(cfg.backup.every_h);
    if all.is_empty() {
        println!(
            "no backup in {} yet ({schedule}; `station backup` makes one now)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono::Utc::now();
    for (path, at) in &all {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}  {:>10}  {:>9}",
            path.display(),
            age(now - *at),
            size(bytes)
        );
    }
    println!(
        "{} backup(s) in {} (keep {}; {schedule})",
        all.len(),
        dir.display(),
        cfg.backup.keep
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` with the station's audit key, or with why it cannot be used.
fn with_audit_key(
    ctx: &Context,
    cfg: &Config,
    f: impl FnOnce(Result<&AuditKey<'_>, String>) -> Result<ExitCode, CliError>,
) -> Result<ExitCode, CliError> {
    let hsm = service::open_hsm(&ctx.home, cfg).map_err(|e| error_text(&e));
    backup::with_audit_key(hsm.as_ref().map_err(Clone::clone), &ctx.home, cfg, f)
}

/// What a backup holds, in one line.
fn holds(c: &Contents) -> String {
    let audit = match &c.audit_head {
        Some(h) => format!(
            "audit entries 1 to {} (the last at {} by station {})",
            h.seq, h.ts, h.station_id
        ),
        None => "no audit entry".into(),
    };
    format!(
        "holds {} unit(s), {} certificate(s), {audit}; schema version {}",
        c.units, c.certificates, c.schema
    )
}

fn size(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KiB", (b / 1024.0).ceil())
    }
}

fn age(d: chrono::Duration) -> String {
    let m = d.num_minutes().max(0);
    if m < 120 {
        format!("{m} min old")
    } else if m < 48 * 60 {
        format!("{} h old", m / 60)
    } else {
        format!("{} days old", m / (24 * 60))
    }
}
