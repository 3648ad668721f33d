//! `station registrations`: asks DPS which passed units have registered, records the hub each
//! was assigned, and lists the units not registered yet or refused (`dps_target::check`).
//!
//! An air-gapped station asks by file, as its enrollments travel: `--export-query FILE` writes
//! the units of an export-only target, `--ask FILE` where DPS is reachable (no station home)
//! writes DPS's answers, and `--answers FILE` back on the station records them exactly as a
//! check from here would. The files are framed as the outbox's exports (header, lines, closing
//! line with the count and SHA-256), so a file cut short or changed is refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use rusqlite::OptionalExtension as _;

use super::{ActorArg, CliError, Context};
use crate::dps_target::check::{self, Answer, Candidate, Finding, Selection};
use crate::line::units::UnitStoreError;
use crate::outbox::transfer::{self, AnswerItem, Header, QueryItem, TransferError};
use crate::store::{now_utc, sql};

/// Which units to check, and how to answer.
#[derive(Debug, Args)]
pub struct RegistrationsArgs {
    /// Only the units of this lot.
    #[arg(long)]
    pub lot: Option<String>,
    /// Only this unit (serial, registration ID or device ID); repeatable.
    #[arg(long = "serial", value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// Also units already registered: DPS may have moved them to another hub since.
    #[arg(long)]
    pub recheck: bool,
    /// Exit 3 unless every unit checked is registered (an end-of-line or lot-release gate);
    /// a unit of an export-only target, which cannot be asked from here, counts as not, and so
    /// does a unit that passed the line but whose enrollment has not reached DPS yet.
    #[arg(long)]
    pub expect_all: bool,
    /// One JSON object per unit and DPS target instead of text.
    #[arg(long)]
    pub json: bool,
    /// Air-gapped: write the units to ask about (those of one DPS target; --lot, --serial and
    /// --recheck as above) to FILE, for `--ask` where DPS is reachable.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ask", "answers", "json", "expect_all"])]
    pub export_query: Option<PathBuf>,
    /// With --export-query: the DPS target (default: the only one delivered by export).
    #[arg(long, value_name = "NAME", requires = "export_query")]
    pub target: Option<String>,
    /// Where DPS is reachable (no station home needed): ask DPS about the units of a query
    /// file and write its answers (default: FILE.answers) to carry back for `--answers`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["answers", "lot", "serials", "recheck", "expect_all", "json"])]
    pub ask: Option<PathBuf>,
    /// With --ask: the file holding the DPS service connection string (else the environment
    /// variable DPS_CONNECTION_STRING).
    #[arg(long, value_name = "FILE", requires = "ask")]
    pub connection_string_file: Option<PathBuf>,
    /// With --ask: extra CA certificates (PEM) to trust for the service.
    #[arg(long, value_name = "PEM", requires = "ask")]
    pub ca_file: Option<PathBuf>,
    /// With --ask: where to write the answers.
    #[arg(long, value_name = "FILE", requires = "ask")]
    pub write_answers: Option<PathBuf>,
    /// Record the answers `--ask` wrote, as a check from here would.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["lot", "serials", "recheck"])]
    pub answers: Option<PathBuf>,
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
    /// A query or answers file could not be written or read.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// --export-query without --target, and not exactly one export-only target.
    #[error("name the DPS target with --target (delivered by export: {0})")]
    WhichTarget(String),
    /// The target named is not configured.
    #[error(transparent)]
    Target(#[from] crate::dps_target::TargetError),
    /// No unit to put in a query.
    #[error(
        "no unit of DPS target {0} to ask about (a unit is asked about once DPS holds its enrollment: state uploaded, or registered with --recheck); nothing was written"
    )]
    NothingToAsk(String),
    /// Answers made for another station's query.
    #[error(
        "{file} answers a query of station {theirs}, not of this station ({ours}); nothing was recorded"
    )]
    OtherStation {
        /// The file.
        file: PathBuf,
        /// The station its query came from.
        theirs: String,
        /// This station.
        ours: String,
    },
    /// The DPS connection for --ask.
    #[error(transparent)]
    Connection(#[from] super::upload::UploadCliError),
}

/// `station registrations ...`
pub fn run(ctx: &Context, args: &RegistrationsArgs) -> Result<ExitCode, CliError> {
    if let Some(file) = &args.ask {
        // Where DPS is reachable: no station home, config or HSM.
        return ask_file(args, file);
    }
    let loaded = ctx.config()?;
    let cfg = &loaded.config;
    let actor = args.actor.resolve()?;
    let mut store = ctx.open_store(cfg)?;
    // A mistyped lot or unit is refused, not reported as "no unit to check"; a unit may be
    // named by its serial, registration ID or device ID, as in `unit show`.
    if let Some(lot) = &args.lot {
        super::line::known_lot(store.conn(), lot)?;
    }
    let serials = args
        .serials
        .iter()
        .map(|q| super::line::one_serial(store.conn(), q))
        .collect::<Result<Vec<_>, _>>()?;
    let sel = Selection {
        lot: args.lot.clone(),
        serials,
        recheck: args.recheck,
    };
    if let Some(file) = &args.export_query {
        return export_query(cfg, &store, &sel, args.target.as_deref(), file);
    }
    let (candidates, answered) = match &args.answers {
        Some(file) => {
            let (c, a) = from_answers(cfg, &store, file)?;
            (c, Some(a))
        }
        None => (
            check::candidates(store.conn(), &sel).map_err(sql("find the units to check"))?,
            None,
        ),
    };
    // A gate passes only when every unit that passed the line is registered: one whose
    // enrollment has not reached DPS yet fails it too.
    let not_uploaded = if args.expect_all && args.answers.is_none() {
        check::not_uploaded(store.conn(), &sel).map_err(sql("find the units not uploaded"))?
    } else {
        Vec::new()
    };
    if candidates.is_empty() {
        if !not_uploaded.is_empty() {
            print_not_uploaded(&not_uploaded, args.json);
            eprintln!("station: not every unit is registered (--expect-all)");
            return Ok(ExitCode::from(3));
        }
        if !args.json {
            println!(
                "no unit to check: a unit is checked once DPS holds its enrollment (state uploaded{}); see `station upload --status`",
                if args.recheck { " or registered" } else { "" }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let answers = match answered {
        Some(a) => a,
        None => runtime()?.block_on(check::ask(&ctx.home, cfg, &candidates)),
    };
    let findings = check::record_committed(
        store.conn_mut(),
        &cfg.station_id(),
        &actor,
        &candidates,
        &answers,
        |_| {},
    )
    .map_err(RegistrationsCliError::Record)?;
    ctx.seal_audit(cfg, &mut store);

    if args.json {
        for ((c, a), f) in candidates.iter().zip(&answers).zip(&findings) {
            println!("{}", json_line(c, a, f));
        }
        print_not_uploaded(&not_uploaded, true);
    } else {
        print_text(&candidates, &findings);
        print_not_uploaded(&not_uploaded, false);
        let by_station = registrable_by_station(store.conn(), &candidates, &findings);
        if by_station > 0 {
            println!(
                "the station can register {by_station} of the units not registered yet itself, at the end of the line: station unit register SERIAL (or --lot LOT)"
            );
        }
    }
    let t = check::Tally::of(&findings);
    Ok(if t.not_asked > 0 {
        eprintln!(
            "station: {} unit(s) could not be checked with DPS (see above)",
            t.not_asked
        );
        ExitCode::FAILURE
    } else if args.expect_all && (t.assigned < findings.len() || !not_uploaded.is_empty()) {
        eprintln!("station: not every unit checked is registered (--expect-all)");
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// The units an `--expect-all` gate counts as not registered because DPS does not hold their
/// enrollment yet: a list, or one JSON object each (status `not-uploaded`).
fn print_not_uploaded(units: &[(String, String)], json: bool) {
    if json {
        for (serial, state) in units {
            let o = serde_json::json!({"serial": serial, "status": "not-uploaded", "state": state});
            println!("{o}");
        }
        return;
    }
    if units.is_empty() {
        return;
    }
    println!(
        "  not uploaded yet, so not registered ({} unit(s); see station upload --status):",
        units.len()
    );
    for (serial, state) in units {
        println!("    {serial:<12} {state}");
    }
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

/// How many of the units DPS has no registration for the station could register on their
/// behalf (`dps_target::on_behalf`): those whose key it can use.
fn registrable_by_station(
    conn: &rusqlite::Connection,
    candidates: &[Candidate],
    findings: &[Finding],
) -> usize {
    candidates
        .iter()
        .zip(findings)
        .filter(|(c, f)| {
            matches!(f, Finding::NotYet(_))
                && conn
                    .query_row(
                        "SELECT attestation FROM units WHERE id = ?1",
                        [c.unit_id],
                        |r| r.get::<_, Option<String>>(0),
                    )
                    .ok()
                    .flatten()
                    .is_some_and(|a| crate::dps_target::on_behalf::way(&c.serial, Some(&a)).is_ok())
        })
        .count()
}

fn print_text(candidates: &[Candidate], findings: &[Finding]) {
    let mut targets: Vec<&str> = candidates.iter().map(|c| c.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    let t = check::Tally::of(findings);
    println!(
        "asked DPS ({}) about {} unit(s):",
        targets.join(", "),
        candidates.len()
    );
    println!(
        "  registered  {:>5}   ({} newly recorded)",
        t.assigned, t.newly
    );
    println!("  refused     {:>5}", t.refused);
    println!("  not yet     {:>5}", t.not_yet);
    println!("  not asked   {:>5}", t.not_asked);
    if t.export_only > 0 {
        println!(
            "  export-only {:>5}   (DPS is not reachable from here)",
            t.export_only
        );
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

fn runtime() -> Result<tokio::runtime::Runtime, RegistrationsCliError> {
    crate::dps_target::runtime().map_err(RegistrationsCliError::Runtime)
}

/// `--export-query FILE`: the units `sel` picks in one DPS target, written for `--ask`.
fn export_query(
    cfg: &crate::config::Config,
    store: &crate::store::Store,
    sel: &Selection,
    target: Option<&str>,
    file: &Path,
) -> Result<ExitCode, CliError> {
    let target = match target {
        Some(t) => {
            crate::dps_target::target(cfg, t).map_err(RegistrationsCliError::from)?;
            t.to_owned()
        }
        None => {
            let export: Vec<&str> = cfg
                .dps
                .targets
                .keys()
                .map(String::as_str)
                .filter(|t| cfg.dps.export_only(t))
                .collect();
            match export.as_slice() {
                [one] => (*one).to_owned(),
                [] => return Err(RegistrationsCliError::WhichTarget("none".into()).into()),
                _ => return Err(RegistrationsCliError::WhichTarget(export.join(", ")).into()),
            }
        }
    };
    let items: Vec<QueryItem> = check::candidates(store.conn(), sel)
        .map_err(sql("find the units to ask about"))?
        .into_iter()
        .filter(|c| c.target == target)
        .map(|c| QueryItem {
            registration_id: c.registration_id,
        })
        .collect();
    if items.is_empty() {
        return Err(RegistrationsCliError::NothingToAsk(target).into());
    }
    let now = now_utc();
    let header = Header {
        format: transfer::QUERY_FORMAT.into(),
        version: transfer::VERSION,
        export_id: chrono::Utc::now()
            .format("query-%Y%m%dT%H%M%SZ")
            .to_string(),
        station: cfg.station_id().as_str().to_owned(),
        target: target.clone(),
        id_scope: cfg.dps.targets.get(&target).map(|t| t.id_scope.clone()),
        written_at: now,
    };
    transfer::write_query(file, &header, &items).map_err(RegistrationsCliError::from)?;
    println!(
        "query {} for {} unit(s) of DPS target {target} written to {}",
        header.export_id,
        items.len(),
        file.display()
    );
    println!(
        "where DPS is reachable: `station registrations --ask {}` writes DPS's answers; carry them back and run `station registrations --answers FILE` here",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--ask FILE`: DPS's answers about the units of a query, written for `--answers`.
fn ask_file(args: &RegistrationsArgs, file: &Path) -> Result<ExitCode, CliError> {
    let query = transfer::read_query(file).map_err(RegistrationsCliError::from)?;
    let client =
        super::upload::service_client(args.connection_string_file.as_deref(), args.ca_file.clone())
            .map_err(RegistrationsCliError::from)?;
    let rids: Vec<&str> = query
        .items
        .iter()
        .map(|q| q.registration_id.as_str())
        .collect();
    let answers = runtime()?.block_on(check::ask_client(&client, &rids));
    let items: Vec<AnswerItem> = query
        .items
        .iter()
        .zip(answers)
        .map(|(q, a)| {
            let registration_id = q.registration_id.clone();
            match a {
                Answer::Record(record) => AnswerItem::Record {
                    registration_id,
                    record,
                },
                Answer::None => AnswerItem::None { registration_id },
                Answer::NotAsked(error) | Answer::ExportOnly(error) => AnswerItem::NotAsked {
                    registration_id,
                    error,
                },
            }
        })
        .collect();
    let out = args.write_answers.clone().unwrap_or_else(|| {
        let mut p = file.as_os_str().to_owned();
        p.push(".answers");
        PathBuf::from(p)
    });
    let header = Header {
        format: transfer::ANSWERS_FORMAT.into(),
        written_at: now_utc(),
        ..query.header
    };
    transfer::write_answers(&out, &header, &items).map_err(RegistrationsCliError::from)?;
    let count = |p: fn(&AnswerItem) -> bool| items.iter().filter(|i| p(i)).count();
    let assigned = count(|i| {
        matches!(i, AnswerItem::Record { record, .. }
            if record.status == Some(dps::wire::RegistrationStatus::Assigned))
    });
    let none = count(|i| matches!(i, AnswerItem::None { .. }));
    let not_asked = count(|i| matches!(i, AnswerItem::NotAsked { .. }));
    println!(
        "query {} (station {}, DPS target {}): asked DPS about {} unit(s): {assigned} assigned a hub, {none} not registered yet, {} other answers, {not_asked} not asked",
        header.export_id,
        header.station,
        header.target,
        items.len(),
        items.len() - assigned - none - not_asked
    );
    if let Some(AnswerItem::NotAsked { error, .. }) = items
        .iter()
        .find(|i| matches!(i, AnswerItem::NotAsked { .. }))
    {
        println!("  not asked: {error}");
    }
    println!(
        "answers written to {}: carry them back and run `station registrations --answers {}` on the station",
        out.display(),
        out.display()
    );
    Ok(if not_asked > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `--answers FILE`: the units the answers are about, in the query's target, with DPS's
/// answers. A registration ID that is no longer a unit DPS holds the enrollment of here
/// (state uploaded or registered) is passed over, with a note.
fn from_answers(
    cfg: &crate::config::Config,
    store: &crate::store::Store,
    file: &Path,
) -> Result<(Vec<Candidate>, Vec<Answer>), CliError> {
    let read = transfer::read_answers(file).map_err(RegistrationsCliError::from)?;
    let ours = cfg.station_id().as_str().to_owned();
    if read.header.station != ours {
        return Err(RegistrationsCliError::OtherStation {
            file: file.to_owned(),
            theirs: read.header.station,
            ours,
        }
        .into());
    }
    let target = read.header.target;
    let conn = store.conn();
    let mut candidates = Vec::new();
    let mut answers = Vec::new();
    let mut passed_over = Vec::new();
    for item in read.items {
        let unit: Option<(i64, String, String)> = conn
            .query_row(
                "SELECT id, serial, registration_id FROM units
                 WHERE registration_id = ?1 AND state IN ('uploaded', 'registered')",
                [item.registration_id()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql("find the unit of an answer"))?;
        let in_target = match &unit {
            Some((id, ..)) => crate::line::report::dps_targets(conn, *id)
                .map_err(sql("read the unit's DPS targets"))?
                .contains(&target),
            None => false,
        };
        let Some((unit_id, serial, registration_id)) = unit.filter(|_| in_target) else {
            passed_over.push(item.registration_id().to_owned());
            continue;
        };
        candidates.push(Candidate {
            unit_id,
            serial,
            registration_id,
            target: target.clone(),
        });
        answers.push(match item {
            AnswerItem::Record { record, .. } => Answer::Record(record),
            AnswerItem::None { .. } => Answer::None,
            AnswerItem::NotAsked { error, .. } => Answer::NotAsked(error),
        });
    }
    if !passed_over.is_empty() {
        eprintln!(
            "note: {} answer(s) passed over: no unit of DPS target {target} here waits with that registration ID (already recorded, or reprovisioned): {}",
            passed_over.len(),
            passed_over.join(", ")
        );
    }
    Ok((candidates, answers))
}
