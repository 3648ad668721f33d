//! `station lot open|close|list|show`

use std::process::ExitCode;

use clap::Subcommand;

use super::{ActorArg, CliError, Context};
use crate::ids::{LotId, ProductName};
use crate::line::lots;

/// Lots (work orders).
#[derive(Debug, Subcommand)]
pub enum LotCommand {
    /// Open a lot of a product (one open lot per product).
    Open {
        /// The product.
        #[arg(long)]
        product: ProductName,
        /// How many units the work order is for.
        #[arg(long)]
        quantity: u32,
        /// Lot ID; default `<product>-<YYYYMMDD>-<n>`.
        #[arg(long)]
        id: Option<LotId>,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Close a lot: its fixtures refuse new units until another lot opens.
    Close {
        /// The lot.
        id: LotId,
        #[command(flatten)]
        actor: ActorArg,
    },
    /// List lots, newest first.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts by state, first-pass yield, failures by step and reason, upload progress.
    Show {
        /// The lot.
        id: LotId,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(ctx: &Context, cmd: LotCommand) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let station = loaded.config.station_id();
    match cmd {
        LotCommand::Open {
            product,
            quantity,
            id,
            actor,
        } => {
            let actor = actor.resolve()?;
            let mut store = ctx.open_store(&loaded.config)?;
            let profiles = ctx.product_profiles(&loaded.config)?;
            let products: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
            let lot = lots::open(
                &mut store,
                (&station, &actor),
                &products,
                &product,
                quantity,
                id,
            )?;
            ctx.seal_audit(&loaded.config, &mut store);
            println!(
                "opened lot {} for {} x {}",
                lot.id, lot.quantity, lot.product
            );
        }
        LotCommand::Close { id, actor } => {
            let actor = actor.resolve()?;
            let mut store = ctx.open_store(&loaded.config)?;
            let lot = lots::close(&mut store, &station, &actor, &id)?;
            ctx.seal_audit(&loaded.config, &mut store);
            println!(
                "closed lot {} with {} of {} units",
                lot.id, lot.units, lot.quantity
            );
        }
        LotCommand::List { json } => {
            let store = ctx.open_store_read(&loaded.config)?;
            let all = lots::list(store.conn())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                println!(
                    "{:<28}  {:<16}  {:>9}  {:<6}  {:<27}  opened by",
                    "lot", "product", "units", "status", "opened"
                );
                for l in all {
                    println!(
                        "{:<28}  {:<16}  {:>9}  {:<6}  {:<27}  {}",
                        l.id,
                        l.product,
                        format!("{}/{}", l.units, l.quantity),
                        l.status,
                        l.opened_at,
                        l.opened_by
                    );
                }
            }
        }
        LotCommand::Show { id, json } => {
            let store = ctx.open_store_read(&loaded.config)?;
            let r = lots::report(store.conn(), &id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            let l = &r.lot;
            println!("lot {} ({}), {}", l.id, l.product, l.status);
            println!("  units:    {} of {}", l.units, l.quantity);
            println!("  opened:   {} by {}", l.opened_at, l.opened_by);
            if let Some(c) = &l.closed_at {
                println!("  closed:   {c}");
            }
            println!("  by state:");
            for (state, n) in &r.by_state {
                println!("    {state:<20} {n}");
            }
            match r.first_pass_yield {
                Some(y) => println!(
                    "  first-pass yield: {:.1}% ({} of {} units)",
                    y * 100.0,
                    r.first_pass,
                    r.attempted
                ),
                None => println!("  first-pass yield: - (no finished runs yet)"),
            }
            if !r.failures.is_empty() {
                println!("  failures by step and reason:");
                for f in &r.failures {
                    println!("    {:<14} {:<40} {}", f.step, f.reason, f.count);
                }
            }
            println!("  uploads:");
            if r.uploads.is_empty() {
                println!("    (no enrollments yet)");
            }
            for (status, n) in &r.uploads {
                println!("    {status:<20} {n}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
