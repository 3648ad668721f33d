//! `station serve`, `station provision` and `station unit`: the line from the command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Args, Subcommand};

use super::{ActorArg, CliError, Context};
use crate::line::serve::{self, ServeError};
use crate::line::setup::LineSetup;
use crate::line::units;
use crate::line::worker::{UnitOutcome, Worker, WorkerHsm};

/// Arguments of `station serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Run only these fixtures (repeatable); default: every configured fixture.
    #[arg(long = "fixture")]
    pub fixtures: Vec<String>,
    /// Do not run the uploader (units stay queued; `station upload --now` sends them).
    #[arg(long)]
    pub no_upload: bool,
}

/// Arguments of `station provision`.
#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// The fixture the unit sits on (`[fixtures.NAME]`).
    #[arg(long)]
    pub fixture: String,
    /// The unit's serial number, as its label reads.
    #[arg(long)]
    pub serial: String,
    /// Who runs it (the unit's operator).
    #[command(flatten)]
    pub actor: ActorArg,
}

/// `station unit ...`
#[derive(Debug, Clone, Subcommand)]
pub enum UnitCommand {
    /// Everything the station knows about one unit: state, every run and step, certificates,
    /// enrollment and upload.
    Show {
        /// Serial number.
        serial: String,
    },
    /// Units, newest first.
    List {
        /// Only this lot.
        #[arg(long)]
        lot: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Why a line command failed.
#[derive(Debug, thiserror::Error)]
pub enum LineCliError {
    /// The products or fixtures are not usable.
    #[error("the line is not set up")]
    Setup(#[source] crate::line::setup::SetupError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A fixture could not start.
    #[error("fixture {fixture}: {reason}")]
    Fixture {
        /// Fixture.
        fixture: String,
        /// Why.
        reason: String,
    },
    /// The unit did not pass.
    #[error("{0}")]
    Unit(String),
    /// No such unit.
    #[error("no unit with serial {0:?} in this station's database")]
    NoUnit(String),
    /// Reading failed.
    #[error("reading the database failed: {0}")]
    Read(String),
}

fn setup(ctx: &Context) -> Result<LineSetup, CliError> {
    let loaded = ctx.config()?;
    // Opening the store applies pending migrations before any fixture starts.
    drop(ctx.open_store(&loaded.config)?);
    LineSetup::load(&ctx.home, &loaded.config).map_err(|e| CliError::from(LineCliError::Setup(e)))
}

/// `station serve`.
pub fn serve(
    ctx: &Context,
    args: &ServeArgs,
    format: crate::logging::LogFormat,
) -> Result<ExitCode, CliError> {
    let setup = Arc::new(setup(ctx)?);
    let log_file = ctx.home.resolve(&setup.cfg.log.dir).join("station.log");
    crate::logging::init_daemon(format, &log_file)?;
    let names = serve::selected(&setup, &args.fixtures).map_err(LineCliError::from)?;
    sync_groups(ctx, &setup, &names);
    {
        let mut store = ctx.open_store(&setup.cfg)?;
        let n = serve::fail_orphans(&setup, &mut store).map_err(LineCliError::from)?;
        if n > 0 {
            tracing::warn!(
                units = n,
                "failed units whose fixture is no longer configured"
            );
        }
    }
    // Loaded before any thread starts: SoftHSM's configuration goes through the environment.
    let station_hsm =
        crate::line::worker::open_station_hsm(&setup).map_err(|reason| LineCliError::Fixture {
            fixture: "(all)".into(),
            reason: format!("the station HSM: {reason}"),
        })?;
    // aws-lc seeds its random generator from a jitter-entropy pool at its first use: ~50 ms of
    // CPU on this project's 2-core VM. Paid here, before any fixture starts, rather than in
    // the uploader's first TLS handshake, where it took a core from the first units.
    aws_lc_rs::rand::fill(&mut [0u8; 16])
        .map_err(|_| std::io::Error::other("the crypto library's random generator failed"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let signal = crate::outbox::UploadSignal::new();
    let uploader = if args.no_upload {
        None
    } else {
        Some(serve::start_uploader(&setup, &station_hsm, &signal).map_err(LineCliError::from)?)
    };
    let running = serve::start_fixtures(
        &setup,
        &station_hsm,
        uploader.as_ref().map(|_| &signal),
        &names,
        rt.handle(),
    )
    .map_err(LineCliError::from)?;
    tracing::info!(
        fixtures = running.len(),
        station = %setup.station,
        log = %log_file.display(),
        "station serving"
    );
    eprintln!(
        "station serve: {} fixture(s) ready ({}); log {}; Ctrl-C stops after the running units",
        running.len(),
        names.join(", "),
        log_file.display()
    );
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    });
    tracing::info!("stopping: finishing the running units");
    serve::stop_fixtures(running);
    signal.stop();
    if let Some(u) = uploader {
        let _ = u.join();
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    tracing::info!("station stopped");
    Ok(ExitCode::SUCCESS)
}

/// Creates or updates the enrollment group of every group-enrolled product the fixtures make
/// (as `station group sync` does), so that group members can be confirmed and symmetric group
/// keys are in the HSM. A DPS that cannot be reached is not fatal: the line runs, members wait
/// in the outbox, and symmetric group units say to run `station group sync`.
fn sync_groups(ctx: &Context, setup: &LineSetup, fixtures: &[String]) {
    let mut products: Vec<&crate::ids::ProductName> = fixtures
        .iter()
        .filter_map(|f| setup.fixture(f).ok())
        .filter(|(_, _, p)| {
            matches!(
                p.profile.enrollment,
                crate::enroll::profile::Enrollment::Group { .. }
            )
        })
        .filter_map(|(_, _, p)| setup.products.get(p.name.as_str()).map(|p| &p.name))
        .collect();
    products.sort();
    products.dedup();
    let actor = ActorArg {
        actor: Some("station".into()),
    };
    for p in products {
        if let Err(e) = super::group::sync_with(ctx, Some(p), &actor, true) {
            tracing::warn!(product = %p, error = %crate::line::worker::error_text(&e), "enrollment group not synchronised; its units wait in the outbox (symmetric units need `station group sync`)");
        }
    }
}

/// `station provision`: one unit on one fixture, from the command line.
pub fn provision(ctx: &Context, args: &ProvisionArgs) -> Result<ExitCode, CliError> {
    let setup = setup(ctx)?;
    let actor = args.actor.resolve()?;
    let fixture_err = |reason: String| {
        CliError::from(LineCliError::Fixture {
            fixture: args.fixture.clone(),
            reason,
        })
    };
    let _lock = crate::line::lock::FixtureLock::take(&ctx.home, &args.fixture)
        .map_err(|e| fixture_err(e.to_string()))?;
    let station_hsm = crate::line::worker::open_station_hsm(&setup).map_err(&fixture_err)?;
    let hsm = WorkerHsm::open(&setup, &station_hsm).map_err(&fixture_err)?;
    let mut worker = Worker::new(
        &setup,
        &args.fixture,
        &hsm,
        Arc::new(AtomicBool::new(false)),
    )
    .map_err(fixture_err)?;
    let left = worker.unfinished_here().map_err(fixture_err)?;
    for o in serve::recover_fixture(&mut worker, &left) {
        println!("recovered: {o}");
    }
    let outcome = worker.run_serial(&args.serial, Some(&actor));
    match outcome {
        UnitOutcome::Passed { .. } | UnitOutcome::AlreadyPassed { .. } => {
            println!("{outcome}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(LineCliError::Unit(other.to_string()).into()),
    }
}

/// `station unit ...`
pub fn unit(ctx: &Context, cmd: &UnitCommand) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let store = ctx.open_store_read(&loaded.config)?;
    let conn = store.conn();
    let read = |e: &dyn std::error::Error| LineCliError::Read(e.to_string());
    match cmd {
        UnitCommand::Show { serial } => {
            let u = units::by_serial(conn, serial)
                .map_err(|e| read(&e))?
                .ok_or_else(|| LineCliError::NoUnit(serial.clone()))?;
            println!("serial           {}", u.serial);
            println!("product          {}", u.product);
            println!("lot              {}", u.lot_id.as_deref().unwrap_or("-"));
            println!("state            {}", describe_state(&u.state));
            println!(
                "registration ID  {}",
                u.registration_id.as_deref().unwrap_or("-")
            );
            println!("device ID        {}", u.device_id.as_deref().unwrap_or("-"));
            println!(
                "model/hw/fw      {} / {} / {}",
                u.model.as_deref().unwrap_or("-"),
                u.hw_rev.as_deref().unwrap_or("-"),
                u.fw_version.as_deref().unwrap_or("-")
            );
            println!(
                "attestation      {}",
                u.attestation.as_deref().unwrap_or("-")
            );
            println!("fixture          {}", u.fixture.as_deref().unwrap_or("-"));
            println!("operator         {}", u.operator.as_deref().unwrap_or("-"));
            println!("first scanned    {}", u.created_at);
            println!("steps:");
            for t in units::history(conn, u.id).map_err(|e| read(&e))? {
                let data = if t.data == "{}" {
                    String::new()
                } else {
                    format!(" {}", t.data)
                };
                println!(
                    "  run {:<4} {}  {} -> {}{}",
                    t.run_id,
                    t.at,
                    t.from.as_deref().unwrap_or("(new)"),
                    t.to,
                    data
                );
            }
            let mut st = conn
                .prepare(
                    "SELECT serial_hex, status, fingerprint_sha256, issued_at FROM certificates WHERE unit_id = ?1 ORDER BY id",
                )
                .map_err(|e| read(&e))?;
            let certs: Vec<(String, String, String, String)> = st
                .query_map([u.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .and_then(Iterator::collect)
                .map_err(|e| read(&e))?;
            for (serial_hex, status, fp, at) in certs {
                println!("certificate      {serial_hex} {status} sha256 {fp} issued {at}");
            }
            let mut st = conn
                .prepare("SELECT dps_target, enrollment_id, status, coalesce(etag, '') FROM enrollments WHERE unit_id = ?1")
                .map_err(|e| read(&e))?;
            let enr: Vec<(String, String, String, String)> = st
                .query_map([u.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .and_then(Iterator::collect)
                .map_err(|e| read(&e))?;
            for (target, id, status, etag) in enr {
                println!("enrollment       {target}: {id} {status} {etag}");
            }
            for line in upload_rows(conn, u.id).map_err(|e| read(&e))? {
                println!("upload           {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        UnitCommand::List { lot, limit } => {
            let mut st = conn
                .prepare(
                    "SELECT serial, product, coalesce(lot_id,''), state, coalesce(registration_id,''),
                     coalesce(fixture,''), coalesce(operator,''), updated_at FROM units
                     WHERE (?1 IS NULL OR lot_id = ?1) ORDER BY id DESC LIMIT ?2",
                )
                .map_err(|e| read(&e))?;
            let rows: Vec<[String; 8]> = st
                .query_map(rusqlite::params![lot, limit], |r| {
                    Ok([
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ])
                })
                .and_then(Iterator::collect)
                .map_err(|e| read(&e))?;
            println!(
                "{:<12} {:<12} {:<24} {:<18} {:<28} {:<8} {:<10} updated",
                "serial", "product", "lot", "state", "registration ID", "fixture", "operator"
            );
            for r in rows {
                let rid = if r[4].len() > 28 {
                    format!("{}...", &r[4][..25])
                } else {
                    r[4].clone()
                };
                println!(
                    "{:<12} {:<12} {:<24} {:<18} {:<28} {:<8} {:<10} {}",
                    r[0], r[1], r[2], r[3], rid, r[5], r[6], r[7]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where each of a unit's outbox rows is: delivered, waiting (attempts, next try, last error),
/// travelling in an air-gapped export, or in conflict (the supervisor's message).
fn upload_rows(conn: &rusqlite::Connection, unit_id: i64) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT o.id, o.destination, o.state, o.attempts, coalesce(o.next_attempt_at, ''),
            o.last_error, coalesce(o.etag, ''), coalesce(o.done_at, ''), o.export_id,
            coalesce(e.created_at, ''), coalesce(e.created_by, ''), coalesce(e.file_name, '')
         FROM outbox o LEFT JOIN exports e ON e.id = o.export_id
         WHERE o.unit_id = ?1 ORDER BY o.id",
    )?;
    st.query_map([unit_id], |r| {
        let (id, dest, state): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let attempts: u32 = r.get(3)?;
        let last_error: Option<String> = r.get(5)?;
        let export: Option<String> = r.get(8)?;
        let head = format!("#{id} {dest}");
        Ok(match (state.as_str(), export) {
            ("done", _) => format!(
                "{head} delivered {} (etag {})",
                r.get::<_, String>(7)?,
                r.get::<_, String>(6)?
            ),
            ("conflict", _) => format!(
                "{head} in conflict: {}",
                last_error.unwrap_or_default()
            ),
            (_, Some(x)) => format!(
                "{head} travelling in export {x} (file {}, written {} by {}); waits for its receipt",
                r.get::<_, String>(11)?,
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?
            ),
            _ if attempts == 0 => format!("{head} waiting for its first delivery"),
            _ => format!(
                "{head} waiting: {attempts} failed attempts, next at {}, last error: {}",
                r.get::<_, String>(4)?,
                last_error.unwrap_or_default()
            ),
        })
    })?
    .collect()
}

fn describe_state(s: &crate::line::state::UnitState) -> String {
    use crate::line::state::UnitState as S;
    match s {
        S::Failed { step, reason } => format!("failed at {}: {reason}", step.as_str()),
        S::Uploaded { etag } => format!("uploaded (etag {etag})"),
        S::Queued { outbox_id } => format!("queued for DPS (outbox #{outbox_id})"),
        other => other.name().to_owned(),
    }
}
