//! `station registrations`: asks DPS which passed units have registered, records the hub each
//! was assigned, and lists the units not registered yet or refused (`dps_target::check`).

use std::process::ExitCode;

use clap::Args;
use rusqlite::TransactionBehavior;

use super::{ActorArg, CliError, Context};
use crate::dps_target::check::{self, Answer, Candidate, Finding, Selection};
use crate::line::units::UnitStoreError;
use crate::store::sql;

/// Which units to check, and how to answer.
#[derive(Debug, Args)]
pub struct RegistrationsArgs {
    /// Only the units of this lot.
    #[arg(long)]
    pub lot: Option<String>,
    /// Only this unit (serial); repeatable.
    #[arg(long = "serial", value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// Also units already registered: DPS may have moved them to another hub since.
    #[arg(long)]
    pub recheck: bool,
    /// Exit 3 unless every unit checked is registered (an end-of-line or lot-release gate);
    /// a unit of an export-only target, which cannot be asked from here, counts as not.
    #[arg(long)]
    pub expect_all: bool,
    /// One JSON object per unit and DPS target instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub actor: ActorArg,
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationsCliError {
    /// Recording the answers failed; nothing was recorded.
    #[error("recording DPS's answers failed (nothing was recorded)")]
    Record(#[source] UnitStoreError),
    /// No async runtime.
    #[error("cannot start the DPS client: {0}")]
    Runtime(std::io::Error),
}

/// `station registrations ...`
pub fn run(ctx: &Context, args: &RegistrationsArgs) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let cfg = &loaded.config;
    let actor = args.actor.resolve()?;
    let mut store = ctx.open_store(cfg)?;
    let sel = Selection {
        lot: args.lot.clone(),
        serials: args.serials.clone(),
        recheck: args.recheck,
    };
    let candidates =
        check::candidates(store.conn(), &sel).map_err(sql("find the units to check"))?;
    if candidates.is_empty() {
        if !args.json {
            println!(
                "no unit to check: a unit is checked once DPS holds its enrollment (state uploaded{}); see `station upload --status`",
                if args.recheck { " or registered" } else { "" }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let answers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistrationsCliError::Runtime)?
        .block_on(check::ask(&ctx.home, cfg, &candidates));
    let findings = (|| {
        let tx = store
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin the registration check's transaction"))?;
        let findings = check::record(&tx, &cfg.station_id(), &actor, &candidates, &answers)?;
        tx.commit()
            .map_err(sql("commit the registration check's transaction"))?;
        Ok(findings)
    })()
    .map_err(RegistrationsCliError::Record)?;
    ctx.seal_audit(cfg, &mut store);

    if args.json {
        for ((c, a), f) in candidates.iter().zip(&answers).zip(&findings) {
            println!("{}", json_line(c, a, f));
        }
    } else {
        print_text(&candidates, &findings);
    }
    let not_asked = findings
        .iter()
        .filter(|f| matches!(f, Finding::NotAsked(_)))
        .count();
    let all_assigned = findings
        .iter()
        .all(|f| matches!(f, Finding::Assigned { .. }));
    Ok(if not_asked > 0 {
        eprintln!("station: {not_asked} unit(s) could not be checked with DPS (see above)");
        ExitCode::FAILURE
    } else if args.expect_all && !all_assigned {
        eprintln!("station: not every unit checked is registered (--expect-all)");
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn json_line(c: &Candidate, a: &Answer, f: &Finding) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("serial".into(), c.serial.as_str().into());
    o.insert("registrationId".into(), c.registration_id.as_str().into());
    o.insert("target".into(), c.target.as_str().into());
    match f {
        Finding::Assigned {
            hub,
            device_id,
            newly,
        } => {
            o.insert("status".into(), "assigned".into());
            o.insert("assignedHub".into(), hub.as_str().into());
            o.insert("deviceId".into(), device_id.as_str().into());
            o.insert("newlyRegistered".into(), (*newly).into());
        }
        Finding::Refused(why) | Finding::NotYet(why) => {
            let status = match a {
                Answer::Record(r) => r.status.map_or("unknown", |s| s.as_str()),
                _ => "none",
            };
            o.insert("status".into(), status.into());
            o.insert("detail".into(), why.as_str().into());
        }
        Finding::NotAsked(why) => {
            o.insert("status".into(), "not-asked".into());
            o.insert("detail".into(), why.as_str().into());
        }
        Finding::ExportOnly(why) => {
            o.insert("status".into(), "export-only".into());
            o.insert("detail".into(), why.as_str().into());
        }
    }
    serde_json::Value::Object(o)
}

fn print_text(candidates: &[Candidate], findings: &[Finding]) {
    let mut targets: Vec<&str> = candidates.iter().map(|c| c.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    let count = |p: fn(&Finding) -> bool| findings.iter().filter(|f| p(f)).count();
    let assigned = count(|f| matches!(f, Finding::Assigned { .. }));
    let newly = count(|f| matches!(f, Finding::Assigned { newly: true, .. }));
    println!(
        "asked DPS ({}) about {} unit(s):",
        targets.join(", "),
        candidates.len()
    );
    println!("  registered  {assigned:>5}   ({newly} newly recorded)");
    println!(
        "  refused     {:>5}",
        count(|f| matches!(f, Finding::Refused(_)))
    );
    println!(
        "  not yet     {:>5}",
        count(|f| matches!(f, Finding::NotYet(_)))
    );
    println!(
        "  not asked   {:>5}",
        count(|f| matches!(f, Finding::NotAsked(_)))
    );
    let export = count(|f| matches!(f, Finding::ExportOnly(_)));
    if export > 0 {
        println!("  export-only {export:>5}   (DPS is not reachable from here)");
    }
    let section = |title: &str, pick: &dyn Fn(&Finding) -> Option<String>| {
        let lines: Vec<String> = candidates
            .iter()
            .zip(findings)
            .filter_map(|(c, f)| pick(f).map(|t| format!("  {:<12} {}: {t}", c.serial, c.target)))
            .collect();
        if !lines.is_empty() {
            println!("{title}:");
            for l in lines {
                println!("{l}");
            }
        }
    };
    section("newly registered", &|f| match f {
        Finding::Assigned {
            hub,
            device_id,
            newly: true,
        } => Some(format!("{hub} as device {device_id}")),
        _ => None,
    });
    section("refused by DPS", &|f| match f {
        Finding::Refused(why) => Some(why.clone()),
        _ => None,
    });
    section("not registered yet", &|f| match f {
        Finding::NotYet(why) => Some(why.clone()),
        _ => None,
    });
    // Units DPS was not asked about, one paragraph per target and reason (a target that cannot
    // be reached, or is delivered by export, is the same story for each of its units).
    let mut unasked: Vec<(&str, &str, &str, &str)> = candidates
        .iter()
        .zip(findings)
        .filter_map(|(c, f)| match f {
            Finding::NotAsked(why) => Some((
                "not asked",
                c.target.as_str(),
                why.as_str(),
                c.serial.as_str(),
            )),
            Finding::ExportOnly(why) => Some((
                "not asked, delivered by export",
                c.target.as_str(),
                why.as_str(),
                c.serial.as_str(),
            )),
            _ => None,
        })
        .collect();
    unasked.sort_unstable();
    for group in unasked.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1 && a.2 == b.2) {
        let (title, target, why, _) = group[0];
        let serials: Vec<&str> = group.iter().map(|g| g.3).collect();
        println!("{title} ({} unit(s)):", serials.len());
        println!("  {target}: {why}");
        println!("    {}", serials.join(", "));
    }
}
