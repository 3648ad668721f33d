//! `station serve`: the fixtures in parallel, each a tokio task fed by its scanner, handing
//! units to its own hardware thread (device link, TPM, unit token and HSM calls block); after a
//! restart each fixture first resumes or fails the units it left unfinished.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;

use super::board::Board;
use super::setup::LineSetup;
use super::state::{Recovery, Step};
use super::units::{self, UnitRow};
use super::worker::{Carry, UnitOutcome, Worker, WorkerHsm, error_text};
use crate::hsm::restart::FollowingSession;
use crate::operators::BadgeKey;
use crate::outbox::{UploadSignal, Uploader};
use crate::store::Store;
use crate::trigger::parse::{Scan, ScanParser};
use crate::trigger::scanner::{Scanner, ScannerEvent, ScannerSettings};

/// What a fixture's hardware thread is asked to do.
pub enum FixtureJob {
    /// A scan from the fixture's scanner, or from the web scan box by a signed-in user (who
    /// then runs the unit, whoever is logged on at the fixture).
    Scan {
        /// What was scanned.
        scan: Scan,
        /// The web user who scanned it.
        operator: Option<String>,
    },
    /// Run this serial with this operator (the CLI), answering on `reply`.
    Provision {
        /// Serial.
        serial: String,
        /// Operator.
        operator: Option<String>,
        /// Where the outcome goes.
        reply: mpsc::Sender<UnitOutcome>,
    },
    /// Stop after the current unit.
    Stop,
}

/// Why the line could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A fixture's worker could not start (HSM, CA, database).
    #[error("fixture {fixture} could not start: {reason}")]
    Fixture {
        /// Fixture.
        fixture: String,
        /// Why.
        reason: String,
    },
    /// The runtime could not start.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The database failed during recovery.
    #[error("recovering unfinished units failed: {0}")]
    Recovery(String),
}

/// What happened to the units a fixture left unfinished.
pub fn recover_fixture(worker: &mut Worker<'_>, units: &[UnitRow]) -> Vec<UnitOutcome> {
    let mut out = Vec::new();
    for unit in units {
        match unit.state.recovery() {
            Recovery::Keep => {}
            Recovery::Resume => {
                tracing::info!(fixture = %worker.fixture(), serial = %unit.serial, state = unit.state.name(), "resuming unit left unfinished");
                out.push(worker.resume(unit));
            }
            Recovery::Fail(step, reason) => {
                tracing::warn!(fixture = %worker.fixture(), serial = %unit.serial, state = unit.state.name(), %reason, "failing unit left unfinished");
                out.push(worker.fail_unit(unit, step, reason));
            }
        }
    }
    out
}

/// Fails unfinished units whose fixture is not configured any more (nobody can resume them).
pub fn fail_orphans(setup: &LineSetup, store: &mut Store) -> Result<usize, ServeError> {
    let orphans: Vec<UnitRow> = units::unfinished(store.conn())
        .map_err(|e| ServeError::Recovery(error_text(&e)))?
        .into_iter()
        .filter(|u| {
            u.fixture
                .as_ref()
                .is_none_or(|f| !setup.cfg.fixtures.contains_key(f))
        })
        .collect();
    for u in &orphans {
        let tx = store
            .conn_mut()
            .transaction()
            .map_err(|e| ServeError::Recovery(e.to_string()))?;
        let reason = format!(
            "its fixture {} is no longer configured; retry the unit on another fixture",
            u.fixture.as_deref().unwrap_or("?")
        );
        units::fail(&tx, &setup.station, "station", u.id, Step::Scan, &reason)
            .map_err(|e| ServeError::Recovery(error_text(&e)))?;
        tx.commit()
            .map_err(|e| ServeError::Recovery(e.to_string()))?;
    }
    Ok(orphans.len())
}

/// The fixtures that will run: all configured ones, or the named ones.
pub fn selected(setup: &LineSetup, only: &[String]) -> Result<Vec<String>, ServeError> {
    if only.is_empty() {
        return Ok(setup.cfg.fixtures.keys().cloned().collect());
    }
    for f in only {
        setup.fixture(f).map_err(|e| ServeError::Fixture {
            fixture: f.clone(),
            reason: error_text(&e),
        })?;
    }
    Ok(only.to_vec())
}

/// What every fixture thread shares.
#[derive(Clone)]
pub struct Shared {
    /// Products, fixtures, configuration.
    pub setup: Arc<LineSetup>,
    /// The station's HSM module (each thread opens its own session on it).
    pub station_hsm: crate::hsm::Hsm,
    /// The key badges are checked with.
    pub badge_key: Option<Arc<BadgeKey>>,
    /// Woken when a unit was queued.
    pub upload: Option<UploadSignal>,
    /// What each fixture is doing, for the web UI.
    pub board: Arc<Board>,
}

/// How a fixture's stretch of work on one HSM session ended.
enum EpochEnd {
    /// Told to stop (or the daemon went away).
    Stopped,
    /// The HSM stopped answering; the text says how, and what the fixture keeps.
    HsmLost(String, Carry),
    /// The worker could not start at all (first start only).
    CouldNotStart,
}

/// Runs a fixture's hardware thread: opens its HSM session and database, recovers its
/// unfinished units, then takes jobs until told to stop. `ready` gets `Ok` once it runs. When
/// the HSM goes away the thread says so once, refuses scans while it waits, re-opens its
/// session (and the CA and audit keys) when the HSM is back, and resumes or fails the unit it
/// was running, without a restart of the daemon.
pub fn fixture_thread(
    shared: &Shared,
    name: &str,
    abort: Arc<AtomicBool>,
    jobs: &mpsc::Receiver<FixtureJob>,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let setup = &*shared.setup;
    let _lock = match super::lock::FixtureLock::take(&setup.home, name) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut seen = crate::hsm::restart::epoch();
    let mut hsm = match WorkerHsm::open(setup, &shared.station_hsm) {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ready = Some(ready);
    let mut carry = Carry::default();
    loop {
        match run_epoch(shared, name, &abort, jobs, &hsm, ready.take(), carry) {
            EpochEnd::Stopped | EpochEnd::CouldNotStart => break,
            EpochEnd::HsmLost(reason, kept) => {
                carry = kept;
                tracing::error!(
                    fixture = name,
                    "fixture {name}: HSM unavailable: {reason}; retrying"
                );
                shared.board.hsm(name, Some(reason));
                // The old session's handle may, once the module restarts, number a session
                // another thread opened: closing it could close that one, so it is left.
                let WorkerHsm { hsm: _, session } = hsm;
                std::mem::forget(session);
                match wait_for_hsm(shared, name, jobs, &mut seen) {
                    Some(h) => {
                        tracing::info!(fixture = name, "fixture {name}: HSM back");
                        shared.board.hsm(name, None);
                        hsm = h;
                    }
                    None => break,
                }
            }
        }
    }
    tracing::info!(fixture = name, "fixture stopped");
}

/// Waits for the HSM to answer again, refusing the jobs that arrive meanwhile; `None` when the
/// fixture is told to stop.
fn wait_for_hsm(
    shared: &Shared,
    name: &str,
    jobs: &mpsc::Receiver<FixtureJob>,
    seen: &mut u64,
) -> Option<WorkerHsm> {
    let refusal = |serial: &str| {
        format!(
            "fixture {name}: unit {serial} refused: the HSM is unavailable; scan it again when the HSM is back"
        )
    };
    loop {
        crate::hsm::restart::restart_module(&shared.station_hsm, seen);
        if let Ok(h) = WorkerHsm::open(&shared.setup, &shared.station_hsm) {
            return Some(h);
        }
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(FixtureJob::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Ok(FixtureJob::Provision { serial, reply, .. }) => {
                let o = UnitOutcome::Refused {
                    reason: refusal(&serial),
                };
                shared.board.outcome(name, &o);
                let _ = reply.send(o);
            }
            Ok(FixtureJob::Scan {
                scan: Scan::Serial(serial),
                ..
            }) => {
                let text = refusal(serial.as_str());
                tracing::warn!(fixture = name, "{text}");
                shared.board.refused(name, text);
            }
            Ok(FixtureJob::Scan { scan: other, .. }) => {
                let text = format!(
                    "fixture {name}: {} ignored: the HSM is unavailable",
                    other.describe()
                );
                tracing::warn!(fixture = name, "{text}");
                shared.board.refused(name, text);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// One stretch of a fixture's work on one HSM session: builds the worker, resumes or fails
/// the units left unfinished here, then serves jobs.
fn run_epoch(
    shared: &Shared,
    name: &str,
    abort: &Arc<AtomicBool>,
    jobs: &mpsc::Receiver<FixtureJob>,
    hsm: &WorkerHsm,
    ready: Option<&mpsc::Sender<Result<(), String>>>,
    carry: Carry,
) -> EpochEnd {
    let setup = &*shared.setup;
    let badge_key = shared.badge_key.as_deref();
    let upload = shared.upload.as_ref();
    let board = &*shared.board;
    let fail = |e: String| match ready {
        Some(r) => {
            let _ = r.send(Err(e));
            EpochEnd::CouldNotStart
        }
        None => EpochEnd::HsmLost(e, carry.clone()),
    };
    let mut worker = match Worker::new(setup, name, hsm, Arc::clone(abort)) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    worker.restore(carry.clone());
    let mine: Vec<UnitRow> = match worker.unfinished_here() {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let wake = |o: &UnitOutcome| {
        if let (UnitOutcome::Passed { .. }, Some(u)) = (o, upload) {
            u.wake();
        }
    };
    for o in recover_fixture(&mut worker, &mine) {
        tracing::info!(fixture = name, "recovered: {o}");
        board.outcome(name, &o);
        wake(&o);
    }
    if let Some(r) = ready {
        let _ = r.send(Ok(()));
        tracing::info!(fixture = name, product = %worker.product().name, "fixture ready");
    }
    // After an outcome that is not a pass the HSM is asked whether it still answers: a unit
    // stopped by a vanished HSM must not leave the fixture taking units it cannot finish.
    let lost = |worker: &Worker<'_>, o: &UnitOutcome| -> Option<String> {
        match o {
            UnitOutcome::Passed { .. } | UnitOutcome::AlreadyPassed { .. } => None,
            _ => worker.hsm_unavailable(),
        }
    };
    while let Ok(job) = jobs.recv() {
        match job {
            FixtureJob::Stop => return EpochEnd::Stopped,
            FixtureJob::Provision {
                serial,
                operator,
                reply,
            } => {
                board.started(name, &serial);
                let o = worker.run_serial(&serial, operator.as_deref());
                board.outcome(name, &o);
                wake(&o);
                let gone = lost(&worker, &o);
                let _ = reply.send(o);
                if let Some(why) = gone {
                    return EpochEnd::HsmLost(why, worker.carry());
                }
            }
            FixtureJob::Scan { scan, operator } => {
                if let Some(o) = handle_scan(&mut worker, board, badge_key, scan, operator) {
                    wake(&o);
                    if let Some(why) = lost(&worker, &o) {
                        return EpochEnd::HsmLost(why, worker.carry());
                    }
                }
            }
        }
    }
    EpochEnd::Stopped
}

fn report(worker: &Worker<'_>, o: &UnitOutcome) {
    match o {
        UnitOutcome::Passed { .. } | UnitOutcome::AlreadyPassed { .. } => {
            tracing::info!(fixture = %worker.fixture(), "{o}");
        }
        UnitOutcome::Failed { .. } | UnitOutcome::Refused { .. } => {
            tracing::warn!(fixture = %worker.fixture(), "{o}");
        }
    }
}

/// Runs one scan on the fixture: a serial (run by `operator`, the web user who scanned it, else
/// by whoever is logged on at the fixture), a badge, or a command; the board shows what came
/// of it.
fn handle_scan(
    worker: &mut Worker<'_>,
    board: &Board,
    badge_key: Option<&BadgeKey>,
    scan: Scan,
    operator: Option<String>,
) -> Option<UnitOutcome> {
    let fixture = worker.fixture().as_str().to_owned();
    // `run_serial` falls back to whoever is logged on at the fixture.
    let run = |worker: &mut Worker<'_>, serial: &str| {
        board.started(&fixture, serial);
        let o = worker.run_serial(serial, operator.as_deref());
        report(worker, &o);
        board.outcome(&fixture, &o);
        Some(o)
    };
    match scan {
        Scan::Serial(serial) => return run(worker, serial.as_str()),
        Scan::Operator(badge) => match badge_key {
            Some(key) => match worker.badge(key, &badge) {
                Ok(user) => {
                    tracing::info!(fixture = %fixture, operator = %user, "operator logged on");
                    board.logged_on(&fixture, &user);
                }
                Err(reason) => {
                    tracing::warn!(fixture = %fixture, "{reason}");
                    board.refused(&fixture, reason);
                }
            },
            None => {
                let text = "badge refused: this station has no badge key (run `station init`)";
                tracing::warn!(fixture = %fixture, "{text}");
                board.refused(&fixture, text.to_owned());
            }
        },
        Scan::Retry => match worker.last_failed().map(str::to_owned) {
            Some(serial) => return run(worker, &serial),
            None => {
                let text = format!(
                    "fixture {fixture}: CMD:RETRY: no failed unit on this fixture to retry"
                );
                tracing::warn!(fixture = %fixture, "{text}");
                board.refused(&fixture, text);
            }
        },
        // An abort is handled by the scanner task (it sets the flag the running unit checks);
        // between units there is nothing to abort.
        Scan::Abort => {
            tracing::info!(fixture = %fixture, "CMD:ABORT: no unit running");
            board.info(&fixture, "CMD:ABORT: no unit running".to_owned());
        }
    }
    None
}

/// The outbox cipher on a [`FollowingSession`]: the outbox key is found on each call, so a
/// session reopened after an outage serves the rows sealed before it.
struct SessionCipher<'a>(&'a FollowingSession<'a>);

impl SessionCipher<'_> {
    fn with<T>(
        &self,
        f: impl FnOnce(&crate::keys::OutboxCipher<'_>) -> Result<T, crate::keys::KeyError>,
    ) -> Result<T, crate::outbox::CipherError> {
        self.0
            .with(|s| {
                crate::keys::OutboxCipher::new(s)
                    .and_then(|c| f(&c))
                    .map_err(|e| error_text(&e))
            })
            .map_err(|e| crate::outbox::CipherError(e.into()))
    }
}

impl crate::outbox::PayloadCipher for SessionCipher<'_> {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, crate::outbox::CipherError> {
        self.with(|c| c.seal(plain))
    }

    fn open(
        &self,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::outbox::CipherError> {
        self.with(|c| c.open(sealed))
    }
}

/// Runs `f` on the calling thread with a session on the CA token that follows the HSM across
/// restarts (see crate::hsm::restart) and an audit sealer on that session.
fn with_ca_session<R>(
    setup: &LineSetup,
    hsm: &crate::hsm::Hsm,
    f: impl FnOnce(&FollowingSession<'_>, &crate::outbox::AuditSealer<'_>) -> R,
) -> R {
    let label = setup.cfg.ca.audit_key_label.clone();
    let session = FollowingSession::new(
        hsm,
        || {
            crate::ca::service::open_ca_token(hsm, &setup.home, &setup.cfg)
                .map_err(|e| error_text(&e))
        },
        |s| {
            s.has_key(&label, cryptoki::object::ObjectClass::SECRET_KEY)
                .is_ok()
        },
    );
    let seal = |tx: &rusqlite::Transaction<'_>| -> Result<(), String> {
        session.with(|s| {
            crate::ca::service::AuditKey::find(s, &label)
                .map_err(|e| error_text(&e))
                .and_then(|k| k.seal(tx).map_err(|e| error_text(&e)))
        })
    };
    f(&session, &seal)
}

/// Starts the uploader on its own thread, with its own HSM session for the outbox cipher and
/// the audit seal.
pub fn start_uploader(
    setup: &Arc<LineSetup>,
    station_hsm: &crate::hsm::Hsm,
    signal: &UploadSignal,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let setup = Arc::clone(setup);
    let hsm = station_hsm.clone();
    let signal = signal.clone();
    std::thread::Builder::new()
        .name("uploader".into())
        .spawn(move || {
            with_ca_session(&setup, &hsm, |session, seal| {
                let cipher = SessionCipher(session);
                match Uploader::new(&setup.home, &setup.cfg, Some(&cipher)) {
                    Ok(up) => {
                        let up = up.with_audit_sealer(seal);
                        tracing::info!("uploader running");
                        up.run(&signal);
                        tracing::info!("uploader stopped");
                    }
                    Err(e) => tracing::error!(error = %error_text(&e), "uploader could not start; units stay queued"),
                }
            });
        })
        .map_err(ServeError::Runtime)
}

/// Starts `station serve`'s registration check (`dps_target::sweep`) on its own thread, unless
/// `[registrations] check_every_s` is 0 or no DPS target is reachable online: then `None`.
pub fn start_registration_check(
    setup: &Arc<LineSetup>,
    station_hsm: &crate::hsm::Hsm,
    signal: &UploadSignal,
) -> Result<Option<std::thread::JoinHandle<()>>, ServeError> {
    let every = setup.cfg.registrations.check_every_s;
    let online = setup
        .cfg
        .dps
        .targets
        .values()
        .any(|t| t.delivery == crate::config::Delivery::Online);
    if every == 0 || !online {
        tracing::info!(
            check_every_s = every,
            online_targets = online,
            "no registration check in serve (`station registrations` asks DPS on request)"
        );
        return Ok(None);
    }
    let setup = Arc::clone(setup);
    let hsm = station_hsm.clone();
    let signal = signal.clone();
    std::thread::Builder::new()
        .name("registrations".into())
        .spawn(move || {
            with_ca_session(&setup, &hsm, |_, seal| {
                match crate::dps_target::sweep::Sweeper::new(&setup.home, &setup.cfg) {
                    Ok(sweeper) => {
                        tracing::info!(check_every_s = every, "registration check running");
                        sweeper.with_audit_sealer(seal).run(&signal);
                        tracing::info!("registration check stopped");
                    }
                    Err(e) => tracing::error!(error = %error_text(&e), "the registration check could not start; `station registrations` still asks DPS"),
                }
            });
        })
        .map(Some)
        .map_err(ServeError::Runtime)
}

/// Starts `station serve`'s backups (`crate::backup::schedule`) on their own thread, unless
/// `[backup] every_h` is 0: then `None`.
pub fn start_backups(
    setup: &Arc<LineSetup>,
    station_hsm: &crate::hsm::Hsm,
    signal: &UploadSignal,
) -> Result<Option<std::thread::JoinHandle<()>>, ServeError> {
    let b = &setup.cfg.backup;
    if b.every_h == 0 {
        tracing::info!("no backups in serve ([backup] every_h = 0): run `station backup`");
        return Ok(None);
    }
    tracing::info!(
        every_h = b.every_h,
        keep = b.keep,
        dir = %crate::backup::dir(&setup.home, &setup.cfg).display(),
        "backups scheduled"
    );
    spawn_job(
        setup,
        station_hsm,
        signal,
        "backups",
        crate::backup::schedule::run,
    )
    .map(Some)
}

/// Runs `job` (home, configuration, the station's HSM, the stop signal) on a thread of its
/// own named `name`.
fn spawn_job(
    setup: &Arc<LineSetup>,
    station_hsm: &crate::hsm::Hsm,
    signal: &UploadSignal,
    name: &str,
    job: fn(&crate::home::Home, &crate::config::Config, &crate::hsm::Hsm, &UploadSignal),
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let setup = Arc::clone(setup);
    let hsm = station_hsm.clone();
    let signal = signal.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || job(&setup.home, &setup.cfg, &hsm, &signal))
        .map_err(ServeError::Runtime)
}

/// Starts `station serve`'s CRL publication (`crate::ca::publish`) on its own thread, when
/// `[ca] crl_file` is set; else `None`.
pub fn start_crl_publication(
    setup: &Arc<LineSetup>,
    station_hsm: &crate::hsm::Hsm,
    signal: &UploadSignal,
) -> Result<Option<std::thread::JoinHandle<()>>, ServeError> {
    if setup.cfg.ca.crl_file.as_os_str().is_empty() {
        return Ok(None);
    }
    spawn_job(setup, station_hsm, signal, "crl", crate::ca::publish::run).map(Some)
}

/// A started fixture: its job queue and abort flag.
pub struct RunningFixture {
    /// Name.
    pub name: String,
    /// Jobs for its hardware thread.
    pub jobs: mpsc::Sender<FixtureJob>,
    /// The abort flag of the unit it runs.
    pub abort: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    scanner: Option<Scanner>,
}

/// Starts the fixtures' hardware threads and scanners; returns once every fixture has
/// recovered its units and is ready, or the first that could not start.
pub fn start_fixtures(
    setup: &Arc<LineSetup>,
    station_hsm: &crate::hsm::Hsm,
    upload: Option<&UploadSignal>,
    board: &Arc<Board>,
    names: &[String],
    rt: &tokio::runtime::Handle,
) -> Result<Vec<RunningFixture>, ServeError> {
    let badge_key = BadgeKey::load(&setup.home.badge_key_file())
        .ok()
        .map(Arc::new);
    let mut running = Vec::new();
    for name in names {
        // A fixture that cannot start at once (a token being written by another process just
        // then, a busy database) is tried again before the whole line gives up.
        let mut attempt = 0;
        let (thread, jobs_tx, abort) = loop {
            attempt += 1;
            let (jobs_tx, jobs_rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::channel();
            let abort = Arc::new(AtomicBool::new(false));
            let thread = {
                let setup = Arc::clone(setup);
                let name = name.clone();
                let abort = Arc::clone(&abort);
                let badge_key = badge_key.clone();
                let station_hsm = station_hsm.clone();
                let upload = upload.cloned();
                let board = Arc::clone(board);
                std::thread::Builder::new()
                    .name(format!("fixture-{name}"))
                    .spawn(move || {
                        let shared = Shared {
                            setup,
                            station_hsm,
                            badge_key,
                            upload,
                            board,
                        };
                        fixture_thread(&shared, &name, abort, &jobs_rx, &ready_tx);
                    })
                    .map_err(ServeError::Runtime)?
            };
            let reason = match ready_rx.recv() {
                Ok(Ok(())) => break (thread, jobs_tx, abort),
                Ok(Err(reason)) => reason,
                Err(_) => "its thread ended before it was ready".to_owned(),
            };
            let _ = thread.join();
            let busy = reason.contains("driven by another station process");
            if busy || attempt >= 3 {
                stop_fixtures(running);
                return Err(ServeError::Fixture {
                    fixture: name.clone(),
                    reason,
                });
            }
            tracing::warn!(fixture = %name, attempt, %reason, "fixture could not start; trying again");
            std::thread::sleep(std::time::Duration::from_millis(500 * attempt));
        };
        let scanner = start_scanner(setup, name, &jobs_tx, &abort, board, rt)?;
        running.push(RunningFixture {
            name: name.clone(),
            jobs: jobs_tx,
            abort,
            thread,
            scanner,
        });
    }
    Ok(running)
}

fn start_scanner(
    setup: &LineSetup,
    name: &str,
    jobs: &mpsc::Sender<FixtureJob>,
    abort: &Arc<AtomicBool>,
    board: &Arc<Board>,
    rt: &tokio::runtime::Handle,
) -> Result<Option<Scanner>, ServeError> {
    let (fixture, fcfg, product) = setup.fixture(name).map_err(|e| ServeError::Fixture {
        fixture: name.to_owned(),
        reason: error_text(&e),
    })?;
    let Some(port) = fcfg.scanner.clone() else {
        return Ok(None);
    };
    let parser = ScanParser::new(&product.profile.serial_pattern, setup.cfg.line.max_scan_len)
        .map_err(|e| ServeError::Fixture {
            fixture: name.to_owned(),
            reason: format!("serial pattern: {e}"),
        })?;
    let (tx, mut rx) = unbounded_channel();
    let scanner = Scanner::spawn(
        fixture,
        ScannerSettings {
            port: setup.home.resolve(&port),
            baud: fcfg.scanner_baud,
            debounce: Duration::from_millis(setup.cfg.line.debounce_ms),
            max_line: setup.cfg.line.max_scan_len,
            reopen_every: Duration::from_millis(500),
        },
        parser,
        tx,
    )
    .map_err(ServeError::Runtime)?;
    let jobs = jobs.clone();
    let abort = Arc::clone(abort);
    let board = Arc::clone(board);
    rt.spawn(async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                ScannerEvent::Scan {
                    scan: Scan::Abort,
                    fixture,
                } => {
                    abort_unit(&abort, &board, fixture.as_str());
                }
                ScannerEvent::Scan { scan, fixture } => {
                    tracing::info!(%fixture, "scanned {}", scan.describe());
                    let job = FixtureJob::Scan {
                        scan,
                        operator: None,
                    };
                    if jobs.send(job).is_err() {
                        break;
                    }
                }
                ScannerEvent::Rejected { fixture, reason } => {
                    tracing::warn!(%fixture, "scan refused: {reason}");
                    board.refused(fixture.as_str(), reason.to_string());
                }
                ScannerEvent::Repeated { fixture } => {
                    tracing::info!(%fixture, "repeated scan ignored (debounce)");
                }
                ScannerEvent::Connected { fixture, port } => {
                    tracing::info!(%fixture, port = %port.display(), "scanner connected");
                    board.scanner(fixture.as_str(), None);
                }
                ScannerEvent::Disconnected { fixture, reason } => {
                    tracing::warn!(%fixture, %reason, "scanner disconnected; waiting for it to come back");
                    board.scanner(fixture.as_str(), Some(reason));
                }
            }
        }
    });
    Ok(Some(scanner))
}

/// `CMD:ABORT` from a scanner or the web: the unit running on the fixture stops at its next
/// step (the flag is cleared when the next unit starts). With no unit running, the board says
/// so and nothing is raised.
pub fn abort_unit(abort: &AtomicBool, board: &Board, fixture: &str) {
    if board.running(fixture) {
        tracing::warn!(%fixture, "CMD:ABORT: the running unit stops at its next step");
        abort.store(true, Ordering::Relaxed);
        board.info(
            fixture,
            "CMD:ABORT: the running unit stops at its next step".to_owned(),
        );
    } else {
        board.info(fixture, "CMD:ABORT: no unit running".to_owned());
    }
}

/// Stops fixtures after their current units. All are told first, then each is waited for:
/// a scanner reader notices its stop only after its read timeout or its wait before
/// reopening the port (up to 0.5 s), and eight fixtures stopped one after another took ~3 s.
pub fn stop_fixtures(fixtures: Vec<RunningFixture>) {
    for f in &fixtures {
        if let Some(s) = &f.scanner {
            s.request_stop();
        }
        let _ = f.jobs.send(FixtureJob::Stop);
    }
    for f in fixtures {
        if let Some(s) = f.scanner {
            s.stop();
        }
        let _ = f.thread.join();
    }
}
