//! `station init`

use std::process::ExitCode;

use clap::Args;

use super::{ActorArg, CliError, Context};
use crate::home::init;

/// Arguments of `station init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    actor: ActorArg,
}

pub(super) fn run(ctx: &Context, args: &InitArgs) -> Result<ExitCode, CliError> {
    let actor = args.actor.resolve()?;
    let report = init::init(&ctx.home, &actor)?;
    let root = ctx.home.root();
    if report.changed() {
        println!("initialised station home {}", root.display());
        for p in &report.created {
            let rel = p.strip_prefix(root).unwrap_or(p);
            if rel.as_os_str().is_empty() {
                println!("  created {} (the home directory)", root.display());
            } else {
                println!("  created {}", rel.display());
            }
        }
        println!("next: station check --home {}", root.display());
    } else {
        println!(
            "station home {} is already initialised; nothing changed",
            root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
