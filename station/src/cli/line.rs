//! `station serve`, `station provision` and `station unit`: the line from the command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Args, Subcommand};

use super::{ActorArg, CliError, Context};
use crate::dps_target::on_behalf::{Recorded, Registrar};
use crate::dps_target::registration::registration_lines;
use crate::line::report;
use crate::line::serve::{self, ServeError};
use crate::line::setup::LineSetup;
use crate::line::worker::{UnitOutcome, Worker, WorkerHsm, error_text};

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
        /// Serial number, or the unit's registration ID (any case) or device ID.
        serial: String,
        /// Also ask DPS (each target the unit was enrolled with) for the unit's registration
        /// record: whether it registered, its hub and device ID, or why it was refused.
        #[arg(long)]
        dps: bool,
    },
    /// Take a unit out of production for good: certificates revoked, DPS told to refuse it.
    ///
    /// For a unit that failed a later test, was damaged or destroyed, or failed here and will
    /// not be retried, so that its identity can never be used: its
    /// certificates are revoked, its enrollment rows that never reached DPS are cancelled, and
    /// DPS is told to refuse it (its individual enrollment disabled; for a unit a group covers,
    /// a disabled individual enrollment made for it), through the outbox like any upload. Final:
    /// a scan of its serial is refused from then on. One audited transaction (`unit.scrap`).
    Scrap {
        /// Serial number, or the unit's registration ID (any case) or device ID.
        serial: String,
        /// Why (kept in the unit's record and the audit log).
        #[arg(long)]
        reason: String,
        /// Who scraps it (recorded in the audit log).
        #[command(flatten)]
        actor: ActorArg,
    },
    /// End-of-line registration: the station registers the unit with DPS on its behalf.
    ///
    /// The station registers the unit with the key it can use without the unit's firmware (a symmetric-key group member's key
    /// derived again in the HSM, an individual unit's own key read back from its enrollment in
    /// DPS, or, while the unit is on its fixture, the key in its own PKCS#11 secure element,
    /// which signs the TLS handshake there), and records DPS's answer as `station
    /// registrations` does: a unit DPS assigned turns `registered` at its hub. Audited
    /// (`unit.register`), refusals too. A TPM unit registers through its TPM (`station tpm
    /// register`); an X.509 unit that made its key over the serial link only with that key.
    Register {
        /// Serial number, or the unit's registration ID (any case) or device ID.
        #[arg(required_unless_present = "lot", conflicts_with = "lot")]
        serial: Option<String>,
        /// Every unit of this lot that is uploaded and whose key the station can use, one after
        /// the other (a lot's end-of-line pass); the others are counted, not tried.
        #[arg(long)]
        lot: Option<String>,
        /// The DPS target (needed only when the unit was enrolled with several).
        #[arg(long)]
        target: Option<String>,
        /// Seconds to keep trying while DPS does not answer, throttles or is still assigning
        /// [default: `[registrations] register_wait_s`, 30].
        #[arg(long)]
        wait_s: Option<u64>,
        /// Who registers it (recorded in the audit log).
        #[command(flatten)]
        actor: ActorArg,
    },
    /// Units, newest first.
    List {
        /// Only this lot.
        #[arg(long)]
        lot: Option<String>,
        /// Only units in this state (e.g. `uploaded`: DPS holds them, not registered yet).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::line::state::UnitState::NAMES))]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per unit (with its attestation, and its hub and device ID once
        /// registered), for a lot's manifest or a script, instead of the table and summary.
        #[arg(long)]
        json: bool,
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
    /// The home is locked (a restore under way).
    #[error(transparent)]
    Lock(#[from] crate::line::lock::LockError),
    /// The unit did not pass.
    #[error("{0}")]
    Unit(String),
    /// No such unit.
    #[error("no unit with serial, registration ID or device ID {0:?} in this station's database")]
    NoUnit(String),
    /// The unit could not be scrapped (nothing changed).
    #[error(transparent)]
    Scrap(#[from] crate::line::scrap::ScrapError),
    /// No such lot.
    #[error("no lot {0:?} in this station's database (station lot list shows the lots)")]
    NoLot(String),
    /// Several units answer to the name.
    #[error("{0:?} names several units ({1}): give the serial")]
    Ambiguous(String, String),
    /// The station could not register the unit on its behalf; nothing was recorded.
    #[error(transparent)]
    OnBehalf(#[from] Box<crate::dps_target::on_behalf::OnBehalfError>),
    /// DPS refused the registration the station made on the unit's behalf (audited).
    #[error("DPS target {target} refused unit {serial}'s registration: {why}")]
    Refused {
        /// Serial.
        serial: String,
        /// Target.
        target: String,
        /// DPS's answer in words.
        why: String,
    },
    /// Reading failed.
    #[error("reading the database failed: {0}")]
    Read(String),
    /// The web UI could not start.
    #[error("{0}")]
    Web(String),
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
    // Held while serving: a restore of the database waits for every serve to stop.
    let _serving = crate::line::lock::ServeLock::shared(&ctx.home).map_err(LineCliError::from)?;
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
    // Bound before any fixture starts: a taken port stops the daemon before it takes units.
    let web = crate::web::bind(&setup).map_err(|e| LineCliError::Web(error_text(&e)))?;
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
    let registrations = serve::start_registration_check(&setup, &station_hsm, &signal)
        .map_err(LineCliError::from)?;
    let backups =
        serve::start_backups(&setup, &station_hsm, &signal).map_err(LineCliError::from)?;
    let crl =
        serve::start_crl_publication(&setup, &station_hsm, &signal).map_err(LineCliError::from)?;
    let board = crate::line::board::Board::new(names.iter().filter_map(|n| {
        setup
            .cfg
            .fixtures
            .get(n)
            .map(|f| (n.as_str(), f.product.as_str()))
    }));
    let running = serve::start_fixtures(
        &setup,
        &station_hsm,
        uploader.as_ref().map(|_| &signal),
        &board,
        &names,
        rt.handle(),
    )
    .map_err(LineCliError::from)?;
    let web_stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let web_task = match web {
        Some(listener) => {
            let handles = running.iter().map(|f| (f.name.as_str(), &f.jobs, &f.abort));
            let state = match crate::web::WebState::new(
                &setup,
                handles,
                &board,
                (Some(&station_hsm), uploader.as_ref().map(|_| &signal)),
                listener.port,
            ) {
                Ok(s) => s,
                Err(e) => {
                    serve::stop_fixtures(running);
                    return Err(LineCliError::Web(error_text(&e)).into());
                }
            };
            tracing::info!(url = %listener.url, "web UI listening");
            eprintln!("station serve: web UI at {}", listener.url);
            let stop = std::sync::Arc::clone(&web_stop);
            Some(rt.spawn(async move {
                if let Err(e) = crate::web::serve(listener, state, stop).await {
                    tracing::error!(error = %e, "the web UI stopped");
                }
            }))
        }
        None => None,
    };
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
    web_stop.notify_one();
    if let Some(t) = web_task {
        // A browser's request in flight is given a moment; an open connection does not hold
        // the stop.
        let _ = rt.block_on(tokio::time::timeout(std::time::Duration::from_secs(2), t));
    }
    serve::stop_fixtures(running);
    signal.stop();
    if let Some(u) = uploader {
        let _ = u.join();
    }
    if let Some(r) = registrations {
        let _ = r.join();
    }
    for t in [backups, crl].into_iter().flatten() {
        let _ = t.join();
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

/// What each DPS target the unit was enrolled with holds as its registration record, one line
/// per target.
fn dps_registration(
    ctx: &Context,
    cfg: &crate::config::Config,
    r: &report::UnitReport,
) -> Vec<String> {
    let Some(rid) = r.unit.registration_id.as_deref() else {
        return vec!["- (the unit has no registration ID)".into()];
    };
    let targets = &r.dps_targets;
    if targets.is_empty() {
        return vec!["- (the unit was not enrolled)".into()];
    }
    match crate::dps_target::runtime() {
        Ok(rt) => rt
            .block_on(registration_lines(&ctx.home, cfg, rid, targets))
            .iter()
            .map(ToString::to_string)
            .collect(),
        Err(e) => vec![format!("- could not be asked: {e}")],
    }
}

/// The serial of the one unit known by `q` (its serial, registration ID or device ID).
pub(super) fn one_serial(conn: &rusqlite::Connection, q: &str) -> Result<String, LineCliError> {
    let found = report::find(conn, q).map_err(|e| LineCliError::Read(e.to_string()))?;
    match found.as_slice() {
        [] => Err(LineCliError::NoUnit(q.to_owned())),
        [one] => Ok(one.clone()),
        several => Err(LineCliError::Ambiguous(q.to_owned(), several.join(", "))),
    }
}

/// `station unit register`: one unit (`serial`) or each of a lot's that the station can
/// register (`lot`), registered with DPS on its behalf; the audit checkpoint sealed after.
fn register(
    ctx: &Context,
    (serial, lot): (Option<&str>, Option<&str>),
    target: Option<&str>,
    wait: std::time::Duration,
    actor: &ActorArg,
) -> Result<ExitCode, CliError> {
    let actor = actor.resolve()?;
    let cfg = ctx.config()?.config;
    let mut store = ctx.open_store(&cfg)?;
    let mut registrar = Registrar::new(&ctx.home, &cfg, target, &actor, wait);
    let done = match (serial, lot) {
        (_, Some(lot)) => register_lot(&mut registrar, &mut store, lot),
        (Some(q), None) => register_one(&mut registrar, &mut store, q),
        (None, None) => Err(LineCliError::Unit("name a unit (its serial) or --lot".into()).into()),
    };
    ctx.seal_audit(&cfg, &mut store);
    done
}

/// One unit registered on its behalf: exit 0 when DPS assigned it, an error otherwise.
fn register_one(
    registrar: &mut Registrar<'_>,
    store: &mut crate::store::Store,
    q: &str,
) -> Result<ExitCode, CliError> {
    let serial = one_serial(store.conn(), q)?;
    let done = registrar
        .register(store, &serial)
        .map_err(|e| LineCliError::OnBehalf(Box::new(e)))?;
    match done.said {
        Ok(_) => {
            for l in registered_lines(&done).0 {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => Err(LineCliError::Refused {
            serial: done.serial,
            target: done.target,
            why,
        }
        .into()),
    }
}

/// What DPS said to a registration on a unit's behalf, as printed: the lines, and whether it
/// assigned the unit.
fn registered_lines(done: &crate::dps_target::on_behalf::Registered) -> (Vec<String>, bool) {
    match &done.said {
        Ok(line) => {
            let mut lines = vec![format!(
                "unit {}: registered with DPS target {} on its behalf: {line}",
                done.serial, done.target
            )];
            match done.recorded {
                Recorded::NewlyRegistered => {
                    lines.push(format!("unit {}: recorded as registered", done.serial));
                }
                Recorded::AlreadyRegistered => {
                    lines.push(format!(
                        "unit {}: recorded as registered already",
                        done.serial
                    ));
                }
                Recorded::Unchanged => {}
            }
            (lines, true)
        }
        Err(why) => (
            vec![format!(
                "unit {}: DPS target {} refused its registration: {why}",
                done.serial, done.target
            )],
            false,
        ),
    }
}

/// `station unit register --lot L`: each uploaded unit of the lot whose key the station can
/// use, registered on its behalf in turn; a summary; exit 1 when any was refused or failed.
fn register_lot(
    registrar: &mut Registrar<'_>,
    store: &mut crate::store::Store,
    lot: &str,
) -> Result<ExitCode, CliError> {
    use crate::dps_target::on_behalf;
    let units: Vec<(String, Option<String>, String)> = store
        .conn()
        .prepare("SELECT serial, attestation, state FROM units WHERE lot_id = ?1 ORDER BY serial")
        .and_then(|mut st| {
            st.query_map([lot], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(|e| LineCliError::Read(e.to_string()))?;
    if units.is_empty() {
        known_lot(store.conn(), lot)?;
        return Err(LineCliError::Unit(format!("lot {lot} has no units")).into());
    }
    let (mut assigned, mut failed, mut not_uploaded, mut registered) = (0, 0, 0, 0);
    let mut not_by_station: std::collections::BTreeMap<String, usize> = Default::default();
    for (serial, attestation, state) in &units {
        match state.as_str() {
            "uploaded" => {}
            "registered" => {
                registered += 1;
                continue;
            }
            _ => {
                not_uploaded += 1;
                continue;
            }
        }
        if on_behalf::way(serial, attestation.as_deref()).is_err() {
            *not_by_station
                .entry(attestation.clone().unwrap_or_else(|| "-".into()))
                .or_default() += 1;
            continue;
        }
        match registrar.register(store, serial) {
            Ok(done) => {
                let (lines, ok) = registered_lines(&done);
                for l in lines {
                    println!("{l}");
                }
                if ok {
                    assigned += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("unit {serial}: not registered: {}", error_text(&e));
                failed += 1;
            }
        }
    }
    println!(
        "lot {lot}: {assigned} registered now, {failed} refused or failed, {registered} registered before, {not_uploaded} not uploaded yet"
    );
    for (kind, n) in &not_by_station {
        println!(
            "  {n} {kind} unit(s) the station cannot register itself (see `station unit register --help`)"
        );
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `station unit ...`
pub fn unit(ctx: &Context, cmd: &UnitCommand) -> Result<ExitCode, CliError> {
    let (serial, dps) = match cmd {
        UnitCommand::Scrap {
            serial,
            reason,
            actor,
        } => return scrap(ctx, serial, reason, actor),
        UnitCommand::Register {
            serial,
            lot,
            target,
            wait_s,
            actor,
        } => {
            let wait_s = match wait_s {
                Some(s) => *s,
                None => ctx.config()?.config.registrations.register_wait_s,
            };
            let wait = std::time::Duration::from_secs(wait_s);
            return register(
                ctx,
                (serial.as_deref(), lot.as_deref()),
                target.as_deref(),
                wait,
                actor,
            );
        }
        UnitCommand::List {
            lot,
            state,
            limit,
            json,
        } => {
            let filter = report::ListFilter {
                lot: lot.as_deref(),
                state: state.as_deref(),
            };
            return list(ctx, filter, *limit, *json);
        }
        UnitCommand::Show { serial, dps } => (serial, *dps),
    };
    let loaded = ctx.config()?;
    let store = ctx.open_store_read(&loaded.config)?;
    let conn = store.conn();
    let read = |e: &dyn std::error::Error| LineCliError::Read(e.to_string());
    let serial = &one_serial(conn, serial)?;
    let r = report::unit(conn, serial)
        .map_err(|e| read(&e))?
        .ok_or_else(|| LineCliError::NoUnit(serial.clone()))?;
    let u = &r.unit;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("serial           {}", u.serial);
    println!("product          {}", u.product);
    println!("lot              {}", or_dash(&u.lot_id));
    println!("state            {}", r.state);
    println!("registration ID  {}", or_dash(&u.registration_id));
    println!("device ID        {}", or_dash(&u.device_id));
    println!(
        "model/hw/fw      {} / {} / {}",
        or_dash(&u.model),
        or_dash(&u.hw_rev),
        or_dash(&u.fw_version)
    );
    println!("attestation      {}", or_dash(&u.attestation));
    println!("fixture          {}", or_dash(&u.fixture));
    println!("operator         {}", or_dash(&u.operator));
    println!("first scanned    {}", u.created_at);
    println!("steps:");
    for t in &r.steps {
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
    for c in &r.certificates {
        println!(
            "certificate      {} {} sha256 {} issued {}",
            c.serial_hex, c.status, c.fingerprint, c.issued_at
        );
    }
    for e in &r.enrollments {
        println!(
            "enrollment       {}: {} {} {}",
            e.target, e.enrollment_id, e.status, e.etag
        );
    }
    for line in &r.uploads {
        println!("upload           {line}");
    }
    for (target, text, at) in &r.registration_checks {
        println!("DPS checked      {target}: {text} (asked {at})");
    }
    if dps {
        for line in dps_registration(ctx, &loaded.config, &r) {
            println!("DPS registration {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `station unit scrap`: the unit scrapped in one transaction, the audit checkpoint sealed,
/// and what happened said, with what remains to be done elsewhere.
fn scrap(ctx: &Context, q: &str, reason: &str, actor: &ActorArg) -> Result<ExitCode, CliError> {
    let actor = actor.resolve()?;
    let cfg = ctx.config()?.config;
    let mut store = ctx.open_store(&cfg)?;
    let serial = one_serial(store.conn(), q)?;
    // A group-enrolled product's target: a unit of it may hold a working key or certificate
    // though it failed (see scrap::group_target).
    let product = crate::line::units::by_serial(store.conn(), &serial)
        .map_err(|e| LineCliError::Read(e.to_string()))?
        .map(|u| u.product)
        .unwrap_or_default();
    let profiles = ctx.product_profiles(&cfg)?;
    let group_target = profiles
        .iter()
        .find(|p| p.name.as_str() == product)
        .and_then(crate::line::scrap::group_target);
    let station = cfg.station_id();
    let done = crate::line::scrap::scrap(
        &mut store,
        (&station, &actor),
        &serial,
        reason,
        group_target,
    )
    .map_err(LineCliError::from)?;
    if let Some(earlier) = &done.already {
        println!("unit {serial}: scrapped already ({earlier}); nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    ctx.seal_audit(&cfg, &mut store);
    println!(
        "unit {serial}: scrapped (it was {}): {}",
        done.from,
        reason.trim()
    );
    if !done.revoked.is_empty() {
        println!("  certificates revoked: {}", done.revoked.join(", "));
    }
    if !done.cancelled.is_empty() {
        let ids: Vec<String> = done.cancelled.iter().map(|i| format!("#{i}")).collect();
        println!("  never reached DPS, cancelled: outbox {}", ids.join(", "));
    }
    for (target, rid) in &done.blocks {
        let how = if cfg.dps.export_only(target) {
            format!("it goes with the next `station upload --export FILE --target {target}`")
        } else {
            "station serve's uploader sends it, or `station upload --now`".to_owned()
        };
        println!("  DPS target {target} will refuse {rid}: the block is queued; {how}");
    }
    if done.blocks.is_empty() {
        println!("  DPS holds nothing that lets it register: nothing to block");
    }
    if let Some((hub, device)) = &done.registered_at {
        println!("  it had registered: device {device} stays in {hub} until it is deleted there");
    }
    Ok(ExitCode::SUCCESS)
}

/// `station unit list`.
fn list(
    ctx: &Context,
    filter: report::ListFilter<'_>,
    limit: u32,
    json: bool,
) -> Result<ExitCode, CliError> {
    let loaded = ctx.config()?;
    let store = ctx.open_store_read(&loaded.config)?;
    let read = |e: &dyn std::error::Error| LineCliError::Read(e.to_string());
    if let Some(lot) = filter.lot {
        known_lot(store.conn(), lot)?;
    }
    let rows = report::list(store.conn(), filter, limit).map_err(|e| read(&e))?;
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(|e| read(&e))?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12} {:<12} {:<24} {:<18} {:<28} {:<8} {:<10} updated",
        "serial", "product", "lot", "state", "registration ID", "fixture", "operator"
    );
    let listed = rows.len();
    for r in rows {
        let rid = if r.registration_id.len() > 28 {
            format!("{}...", &r.registration_id[..25])
        } else {
            r.registration_id.clone()
        };
        println!(
            "{:<12} {:<12} {:<24} {:<18} {:<28} {:<8} {:<10} {}",
            r.serial, r.product, r.lot, r.state, rid, r.fixture, r.operator, r.updated_at
        );
    }
    let states = report::count_by_state(store.conn(), filter).map_err(|e| read(&e))?;
    println!("{}", list_summary(filter.lot, &states, listed));
    Ok(ExitCode::SUCCESS)
}

/// Refuses a lot this station has never opened (a mistyped work order), rather than listing
/// or registering nothing.
pub(super) fn known_lot(conn: &rusqlite::Connection, lot: &str) -> Result<(), LineCliError> {
    match crate::line::lots::get(conn, lot) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(LineCliError::NoLot(lot.to_owned())),
        Err(e) => Err(LineCliError::Read(e.to_string())),
    }
}

/// The last line of `unit list`: how many units there are (in the lot), by state, and whether
/// the list above was cut short, e.g. `25 units: 20 registered, 5 uploaded`.
fn list_summary(lot: Option<&str>, states: &[(String, u64)], listed: usize) -> String {
    let total: u64 = states.iter().map(|(_, n)| n).sum();
    let mut line = match lot {
        Some(lot) => format!("lot {lot}: {total} unit(s)"),
        None => format!("{total} unit(s)"),
    };
    if !states.is_empty() {
        let parts: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        line.push_str(&format!(": {}", parts.join(", ")));
    }
    if (listed as u64) < total {
        line.push_str(&format!(
            " (the newest {listed} listed; --limit N lists more)"
        ));
    }
    line
}
