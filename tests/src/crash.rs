//! The crash run: `station serve` killed with SIGKILL during a lot, again and again, on the
//! demo's four fixtures and a fifth whose units get their own random key; restarted each time
//! while the units stay on their fixtures, as on a real line; then the invariants that a crash
//! must never break are checked.
//!
//! Each kill is one round: a fresh unit is placed on every fixture (with the same placing code
//! `line-sim` uses: `fixtures::line::place`), the station is started and the units scanned.
//! Half the kills are deterministic (`STATION_CRASH_AT=<point>[:<n>]`, cycling through every
//! state a unit passes, `before:<state>` and `upload:accepted`); the other half are SIGKILLs at
//! a time drawn from a seeded RNG. The station is then restarted and the harness plays the
//! operator: it scans its badge again (the logon lives in the process), scans again a unit whose
//! scan the crash swallowed, and retries a unit the restart failed (a locked link unit is
//! factory-reset first, a unit token is re-initialised: what a rework bench does).
//!
//! Line-sim itself (the binary) cannot be the driver: after a restart nobody is logged on, and
//! line-sim scans the badge only once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixtures::line::link::DeviceLink;
use fixtures::line::place::{Kind, LinkUnitSpec, Placed, TctiPort, UnitHost, Vendor};
use fixtures::line::scanner::SimScanner;
use secrecy::SecretString;

use crate::bin;
use crate::line::LineRig;

/// The badge of the run's operator.
const BADGE: &str = "BADGE-crash-run-0001";
/// The PIN of the simulated unit tokens.
const UNIT_PIN: &str = "246810";

/// The crash points, as chains of three for one round each. Each chain follows the path one
/// unit takes through restarts (a kill before a commit rolls back, and the resumed unit passes
/// the same step again), so the later points fire even when other fixtures' units are ahead. `certificate-issued` is followed
/// by the failure the restart records and the retry that supersedes it. `scanned` and
/// `superseded` are entered by a scan (`units::begin`), so `scanned` opens a round.
pub const CHAINS: &[[&str; 3]] = &[
    ["before:scanned", "scanned", "before:identified"],
    ["identified", "before:key-ready", "key-ready"],
    ["before:key-injected", "key-injected", "before:verified"],
    [
        "before:certificate-issued",
        "certificate-issued",
        "before:failed",
    ],
    ["certificate-issued", "before:superseded", "superseded"],
    ["certificate-issued", "failed", "verified"],
    ["before:verified", "before:recorded", "recorded"],
    ["before:queued", "queued", "upload:accepted"],
    ["upload:accepted", "before:uploaded", "uploaded"],
];

/// Every distinct crash point.
#[must_use]
pub fn crash_points() -> BTreeSet<String> {
    CHAINS
        .iter()
        .flat_map(|c| c.iter().map(|p| (*p).to_owned()))
        .collect()
}

/// A small seeded RNG (splitmix64): the same seed replays the same kills.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct CrashConfig {
    /// Seed of the kill schedule.
    pub seed: u64,
    /// Kills (rounds).
    pub kills: usize,
    /// Longest random kill delay after the station starts, in milliseconds.
    pub max_delay_ms: u64,
    /// Print each kill as it happens.
    pub verbose: bool,
    /// Run every chain of crash points at least once (and count a point that never fired as a
    /// violation), however few kills were asked for.
    pub cover_all: bool,
}

impl CrashConfig {
    /// `kills` kills with the seed of `CRASH_SEED` (to replay) or a fresh one.
    #[must_use]
    pub fn from_env(kills: usize) -> Self {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        Self {
            seed,
            kills,
            max_delay_ms: 1500,
            verbose: true,
            cover_all: true,
        }
    }
}

/// What the run found.
#[derive(Debug, Default)]
pub struct CrashReport {
    /// The seed (`CRASH_SEED` replays it).
    pub seed: u64,
    /// SIGKILLs and crash-point aborts of `station serve`.
    pub kills: usize,
    /// Units placed.
    pub units: usize,
    /// Units that passed.
    pub passed: usize,
    /// Retries of units the station failed after a crash.
    pub retries: usize,
    /// Crash points that fired, with how often.
    pub points_hit: BTreeMap<String, usize>,
    /// Crash points asked for that never fired.
    pub points_missed: BTreeSet<String>,
    /// Every broken invariant, with its kill.
    pub violations: Vec<String>,
    /// Starts of the station that ended by themselves (with why); the operator started it
    /// again. Three in a row are a fatal violation.
    pub start_failures: Vec<String>,
    /// The run stopped early on a fatal violation.
    pub stopped_early: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// A running `station serve`.
struct Serve {
    child: Child,
    started: Instant,
    log: std::path::PathBuf,
    log_start: u64,
    ready_at: Option<Instant>,
}

impl Serve {
    fn start(rig: &LineRig, crash_at: Option<&str>, log: &Path) -> Self {
        let mut c = Command::new(bin("station"));
        c.arg("--home")
            .arg(&rig.home)
            .arg("serve")
            .env("UNIT_SE_PIN", UNIT_PIN)
            .env_remove(station::line::crash::ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("serve log"),
            );
        if let Some(p) = crash_at {
            c.env(station::line::crash::ENV, p);
        }
        let log_start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        Self {
            child: c.spawn().expect("spawn station serve"),
            started: Instant::now(),
            log: log.to_path_buf(),
            log_start,
            ready_at: None,
        }
    }

    /// Time since this start said its fixtures are ready (logged on to the HSM), if it has.
    ///
    /// Random kills are timed from here: a SIGKILL while SoftHSM logs in can leave its token
    /// file empty (SoftHSM rewrites `token.object` at each login; see the closing notes), a
    /// durability flaw of the software HSM the embedded default uses, not of the station.
    fn ready_for(&mut self) -> Option<Duration> {
        if self.ready_at.is_none() {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let from = usize::try_from(self.log_start).unwrap_or(0).min(text.len());
            if String::from_utf8_lossy(&text[from..]).contains("fixture(s) ready") {
                self.ready_at = Some(Instant::now());
            }
        }
        self.ready_at.map(|t| t.elapsed())
    }

    /// Whether it ended by itself (a crash point aborted it).
    fn exited(&mut self) -> bool {
        self.status().is_some()
    }

    /// How it ended, once it has.
    fn status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill9(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One fixture of the demo line, as the harness drives it.
struct Fixture {
    name: &'static str,
    prefix: &'static str,
    kind: Kind,
    scanner: SimScanner,
    dir: PathBuf,
    link_baud: Option<u32>,
}

/// A unit on a fixture during a round.
struct OnFixture {
    fixture: usize,
    serial: String,
    placed: Option<Placed>,
}

/// Unit states in the order a passed unit goes through them after recording.
fn passed_rank(state: &str) -> Option<u8> {
    match state {
        "recorded" => Some(1),
        "queued" => Some(2),
        "uploaded" => Some(3),
        "registered" => Some(4),
        _ => None,
    }
}

fn is_final(state: &str) -> bool {
    state == "failed" || passed_rank(state).is_some()
}

/// The demo line, set up in a fresh rig.
struct Line {
    rig: LineRig,
    fixtures: Vec<Fixture>,
    log: PathBuf,
    next_serial: u64,
}

impl Line {
    fn new() -> Self {
        let rig = LineRig::new();
        rig.demo_line(BADGE);
        // And a unit with its own random key (symmetric-individual): a kill after the unit was
        // locked with it must not cost the key.
        rig.config(
            "45-crash-key.toml",
            "[fixtures.key-1]\nproduct = \"sensor-key\"\nscanner = \"dev/scanner-key-1\"\nserial_port = \"dev/unit-key-1\"\n",
        );
        rig.open_lot("sensor-key");
        // No simulated wire time: the kills land in the station's own work.
        let home = &rig.home;
        let work = rig.dir.path().join("units");
        let h = station::home::Home::new(home);
        let cfg = station::config::Config::load(&h).expect("config").config;
        // The vendor CA demo_line made and the station already trusts.
        let vendor = Arc::new(
            Vendor::new(
                &rig.dir.path().join("tpm-vendor"),
                &h.resolve(&cfg.tpm.trust_dir),
                "crash-run-vendor",
            )
            .expect("vendor"),
        );
        vendor.ensure_ca().expect("vendor CA");
        let tcti = cfg.fixtures["tpm-1"].tcti.clone().expect("tcti");
        let spec = |model: &str| LinkUnitSpec {
            host: UnitHost::Process,
            unit_sim: bin("unit-sim"),
            model: model.to_owned(),
            hw: "B2".into(),
            fw: "2.4.1".into(),
            baud: 0,
        };
        // A fixture of units on a serial link: its name, its serials' prefix, their model.
        let link = |name: &'static str, prefix: &'static str, model: &str| {
            (
                name,
                prefix,
                Kind::Link {
                    spec: spec(model),
                    port: DeviceLink::claim(&home.join(format!("dev/unit-{name}"))).expect("link"),
                },
                Some(cfg.fixtures[name].baud),
            )
        };
        let plan: Vec<(&'static str, &'static str, Kind, Option<u32>)> = vec![
            (
                "tpm-1",
                "ST-",
                Kind::Tpm {
                    vendor,
                    at: TctiPort::parse(&tcti).expect("tcti port"),
                    next: None,
                },
                None,
            ),
            link("link-1", "SX-", "SX-100"),
            link("sym-1", "SY-", "SY-10"),
            link("key-1", "SK-", "SK-20"),
            (
                "se-1",
                "GW-",
                Kind::Token {
                    softhsm_conf: rig.softhsm_conf(),
                    pin: SecretString::from(UNIT_PIN.to_owned()),
                    keep: false,
                },
                None,
            ),
        ];
        let fixtures = plan
            .into_iter()
            .map(|(name, prefix, kind, link_baud)| Fixture {
                name,
                prefix,
                kind,
                scanner: SimScanner::plug(&home.join(format!("dev/scanner-{name}")))
                    .expect("scanner"),
                dir: work.join(name),
                link_baud,
            })
            .collect();
        let log = rig.dir.path().join("serve.log");
        Self {
            rig,
            fixtures,
            log,
            next_serial: 1,
        }
    }

    fn state(&self, serial: &str) -> Option<String> {
        self.rig.state(serial)
    }

    /// Why a failed unit failed (its state data).
    fn failure(&self, serial: &str) -> String {
        self.rig
            .db()
            .query_row(
                "SELECT state_data FROM units WHERE serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .unwrap_or_default()
    }

    fn place_round(&mut self) -> Vec<OnFixture> {
        let n = self.next_serial;
        self.next_serial += 1;
        let mut out = Vec::new();
        for (i, f) in self.fixtures.iter_mut().enumerate() {
            let serial = format!("{}{n:06}", f.prefix);
            let placed = f
                .kind
                .place(&f.dir, &serial, false, &|| false)
                .unwrap_or_else(|e| panic!("placing {serial} on {}: {e}", f.name));
            out.push(OnFixture {
                fixture: i,
                serial,
                placed: Some(placed),
            });
        }
        out
    }

    fn scan(&mut self, fixture: usize, text: &str) {
        self.fixtures[fixture]
            .scanner
            .scan(text)
            .expect("write a scan");
    }

    /// The operator logs on at every fixture (after every start: the logon is in memory).
    fn badge_all(&mut self) {
        for i in 0..self.fixtures.len() {
            self.scan(i, &format!("OP:{BADGE}"));
        }
    }

    /// Puts a failed unit back into a state a retry can start from: a locked link unit is
    /// factory-reset over its link, a unit token is initialised again (rework).
    fn rework(&mut self, unit: &mut OnFixture) {
        let f = &mut self.fixtures[unit.fixture];
        match (&mut unit.placed, &f.kind) {
            (Some(Placed::Link(sim)), _) => {
                // A failed reset is seen again: the retry fails and is reworked once more.
                let reset = station::link::SerialLink::open(&sim.pty, f.link_baud.unwrap_or(0))
                    .map_err(|e| e.to_string())
                    .and_then(|port| {
                        station::link::UnitClient::new(station::link::Transport::new(
                            port,
                            station::link::LinkSettings {
                                baud: f.link_baud.unwrap_or(115_200),
                                ..station::link::LinkSettings::default()
                            },
                        ))
                        .factory_reset(&unit.serial)
                        .map_err(|e| e.to_string())
                    });
                if let Err(e) = reset {
                    println!("rework {}: factory reset failed: {e}", unit.serial);
                }
            }
            (Some(Placed::Token(_)), Kind::Token { .. }) => {
                // Taking the element off deletes its token (a token a kill left half-written
                // may not even be listed any more); a fresh one is fitted in its place.
                unit.placed = None;
                unit.placed = Some(
                    f.kind
                        .place(&f.dir, &unit.serial, false, &|| false)
                        .expect("token again"),
                );
            }
            _ => {}
        }
    }
}

/// How one life of the station ends.
#[derive(Debug, Clone)]
enum Plan {
    /// Aborted by `STATION_CRASH_AT` at this point (with its `:n`).
    Point(String),
    /// SIGKILL after this long.
    Random(Duration),
    /// No kill: run until the round's units are uploaded.
    Finish,
}

/// How a life ended.
enum Ended {
    /// Killed (by its crash point or SIGKILL); the text says where.
    Killed(String),
    /// Every unit of the round uploaded (the crash point was not reached).
    Done,
}

/// The round's bookkeeping of the operator.
#[derive(Default)]
struct Operator {
    retries: BTreeMap<String, usize>,
    scanned_at: BTreeMap<String, Instant>,
}

/// Runs the crash loop and checks the invariants.
pub fn run(cfg: &CrashConfig) -> CrashReport {
    run_with(cfg, &|_| {})
}

/// Runs the crash loop, then `before_check` on the rig (the harness's own test breaks an
/// invariant there on purpose), then checks the invariants.
pub fn run_with(cfg: &CrashConfig, before_check: &dyn Fn(&LineRig)) -> CrashReport {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let mut report = CrashReport {
        seed: cfg.seed,
        ..CrashReport::default()
    };
    println!(
        "crash run: seed {} (replay with CRASH_SEED={}), {} kills",
        cfg.seed, cfg.seed, cfg.kills
    );
    let mut line = Line::new();
    let mut chains_run = 0usize;
    // Highest passed state each unit was seen in ("acknowledged").
    let mut seen: BTreeMap<String, u8> = BTreeMap::new();
    let mut all_units: Vec<(String, usize)> = Vec::new();
    let mut round = 0usize;
    // Rounds alternate: a chain of three crash points in flow order, then two SIGKILLs at
    // random moments (the second lands on the restart's recovery or the resumed units). Every
    // chain runs at least once, with each point's first pass; later passes draw `:n` (1 or 2).
    'rounds: while report.kills < cfg.kills || (cfg.cover_all && chains_run < CHAINS.len()) {
        round += 1;
        let mut units = line.place_round();
        report.units += units.len();
        for u in &units {
            all_units.push((u.serial.clone(), u.fixture));
        }
        let mut plans = Vec::new();
        if round % 2 == 1 {
            let first_pass = chains_run < CHAINS.len();
            for p in CHAINS[chains_run % CHAINS.len()] {
                let nth = if first_pass { 1 } else { 1 + rng.below(4) / 3 };
                plans.push(Plan::Point(if nth == 1 {
                    p.to_owned()
                } else {
                    format!("{p}:{nth}")
                }));
            }
            chains_run += 1;
        } else {
            for _ in 0..2 {
                plans.push(Plan::Random(Duration::from_millis(
                    rng.below(cfg.max_delay_ms + 1),
                )));
            }
        }
        plans.push(Plan::Finish);
        let mut op = Operator::default();
        for plan in plans {
            let ended = life(
                &mut line,
                &mut units,
                &plan,
                &mut op,
                &mut report,
                &mut seen,
                cfg.verbose,
            );
            match ended {
                Ok(Ended::Killed(what)) => {
                    report.kills += 1;
                    if let Plan::Point(p) = &plan {
                        let base = p
                            .rsplit_once(':')
                            .filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
                            .map_or(p.as_str(), |(b, _)| b);
                        *report.points_hit.entry(base.to_owned()).or_default() += 1;
                    }
                    if cfg.verbose {
                        let states: Vec<String> = units
                            .iter()
                            .map(|u| {
                                format!(
                                    "{}={}",
                                    u.serial,
                                    line.state(&u.serial).unwrap_or_else(|| "-".into())
                                )
                            })
                            .collect();
                        println!(
                            "kill {:>4} (round {round}): {what}; units {}",
                            report.kills,
                            states.join(" ")
                        );
                    }
                }
                Ok(Ended::Done) => {
                    if cfg.verbose && !matches!(plan, Plan::Finish) {
                        println!("round {round}: {plan:?} not reached before the units were done");
                    }
                }
                Err(v) => {
                    let fatal = v.starts_with("FATAL");
                    let v = format!("round {round} ({plan:?}; seed {}): {v}", cfg.seed);
                    println!("VIOLATION: {v}");
                    report.violations.push(v);
                    if fatal {
                        report.stopped_early = true;
                        keep_evidence(&line, cfg.seed);
                        // The station cannot run any more: the rest would only repeat it.
                        break 'rounds;
                    }
                }
            }
        }
        observe(&line, &units, &mut seen, &mut report, round);
        for u in &mut units {
            u.placed = None;
        }
    }
    for p in crash_points() {
        if cfg.cover_all && !report.stopped_early && !report.points_hit.contains_key(&p) {
            report.violations.push(format!(
                "crash point {p} never fired: the kills do not cover its state"
            ));
            report.points_missed.insert(p);
        }
    }
    before_check(&line.rig);
    check_invariants(&line, &all_units, &seen, &mut report);
    report.elapsed = started.elapsed();
    report
}

/// One life of `station serve`: started (with its crash point), the operator logs on, scans
/// what the station has not seen, reworks and retries failed units; ends at the kill, or
/// (for `Plan::Finish`, or a point not reached) when every unit is uploaded.
fn life(
    line: &mut Line,
    units: &mut [OnFixture],
    plan: &Plan,
    op: &mut Operator,
    report: &mut CrashReport,
    seen: &mut BTreeMap<String, u8>,
    verbose: bool,
) -> Result<Ended, String> {
    let point = match plan {
        Plan::Point(p) => Some(p.as_str()),
        _ => None,
    };
    let mut serve = Serve::start(&line.rig, point, &line.log);
    line.badge_all();
    let mut failed_starts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = serve.status() {
            use std::os::unix::process::ExitStatusExt as _;
            let at = serve.started.elapsed().as_millis();
            // A crash point aborts (SIGABRT); anything else is the station failing.
            if let Some(p) = point
                && status.signal() == Some(6)
            {
                return Ok(Ended::Killed(format!("crash point {p} after {at} ms")));
            }
            let why = format!(
                "the station exited by itself ({status}) after {at} ms: {}",
                log_tail(&line.log)
            );
            // The operator starts it again; a station that cannot start three times running
            // stops the run.
            if failed_starts >= 2 {
                return Err(format!("FATAL: {why} (3 starts in a row)"));
            }
            failed_starts += 1;
            println!("START FAILURE: {why}");
            report.start_failures.push(why);
            serve = Serve::start(&line.rig, None, &line.log);
            line.badge_all();
            continue;
        }
        if let Plan::Random(d) = plan
            && serve.ready_for().is_some_and(|r| r >= *d)
        {
            serve.kill9();
            return Ok(Ended::Killed(format!("SIGKILL after {} ms", d.as_millis())));
        }
        let mut all_uploaded = true;
        for unit in units.iter_mut() {
            let serial = unit.serial.clone();
            let state = line.state(&serial);
            if let Some(r) = state.as_deref().and_then(passed_rank) {
                let e = seen.entry(serial.clone()).or_default();
                *e = (*e).max(r);
            }
            match state.as_deref() {
                Some("uploaded" | "registered") => {}
                Some("failed") => {
                    all_uploaded = false;
                    if op
                        .scanned_at
                        .get(&serial)
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
                    {
                        continue;
                    }
                    let n = op.retries.entry(serial.clone()).or_default();
                    if *n >= 6 {
                        return Err(format!("unit {serial} still failed after 6 retries"));
                    }
                    *n += 1;
                    report.retries += 1;
                    if verbose {
                        println!("retry {serial}: {}", line.failure(&serial));
                    }
                    line.rework(unit);
                    line.scan(unit.fixture, &serial);
                    op.scanned_at.insert(serial, Instant::now());
                }
                Some(_) => all_uploaded = false,
                None => {
                    all_uploaded = false;
                    // The first scan of the round, or one a crash swallowed: the operator
                    // scans the unit (again, if nothing happened within 2 s).
                    if op
                        .scanned_at
                        .get(&serial)
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
                    {
                        line.scan(unit.fixture, &serial);
                        op.scanned_at.insert(serial, Instant::now());
                    }
                }
            }
        }
        if all_uploaded {
            match plan {
                Plan::Random(d) => {
                    // Done before the moment: the kill lands on an idle station.
                    serve.kill9();
                    return Ok(Ended::Killed(format!(
                        "SIGKILL after {} ms (drawn {} ms; units done)",
                        serve.started.elapsed().as_millis(),
                        d.as_millis()
                    )));
                }
                _ => {
                    serve.stop();
                    return Ok(Ended::Done);
                }
            }
        }
        if Instant::now() > deadline {
            let states: Vec<String> = units
                .iter()
                .map(|u| format!("{}={:?}", u.serial, line.state(&u.serial)))
                .collect();
            return Err(format!(
                "the units did not finish within 60 s: {}",
                states.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Copies the station's SoftHSM token directory and log to `$TMPDIR/crash-evidence-<seed>`
/// (the run's own directory is removed at its end), for the post-mortem of a fatal stop.
fn keep_evidence(line: &Line, seed: u64) {
    let to = std::env::temp_dir().join(format!("crash-evidence-{seed}"));
    let _ = std::fs::create_dir_all(&to);
    let _ = Command::new("cp")
        .arg("-a")
        .arg(line.rig.home.join("hsm/tokens"))
        .arg(&line.log)
        .arg(&to)
        .status();
    println!("evidence kept in {}", to.display());
}

/// The last lines of the station's log.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Records what the round's units ended as; a unit never seen passed is checked later.
fn observe(
    line: &Line,
    units: &[OnFixture],
    seen: &mut BTreeMap<String, u8>,
    report: &mut CrashReport,
    k: usize,
) {
    for u in units {
        let state = line.state(&u.serial);
        if let Some(r) = state.as_deref().and_then(passed_rank) {
            let e = seen.entry(u.serial.clone()).or_default();
            if r < *e {
                report.violations.push(format!(
                    "kill {k}: unit {} went back from a passed state to {state:?}",
                    u.serial
                ));
            }
            *e = (*e).max(r);
        } else if state.as_deref().is_none_or(|s| !is_final(s)) {
            report.violations.push(format!(
                "kill {k}: unit {} left unfinished ({state:?})",
                u.serial
            ));
        }
    }
}

/// The DER of the first certificate in a concatenation of DER certificates.
fn first_der(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < 2 || bytes[0] != 0x30 {
        return None;
    }
    let (len, hdr) = match bytes[1] {
        l if l < 0x80 => (usize::from(l), 2),
        0x81 => (usize::from(*bytes.get(2)?), 3),
        0x82 => (
            usize::from(*bytes.get(2)?) << 8 | usize::from(*bytes.get(3)?),
            4,
        ),
        _ => return None,
    };
    bytes.get(..hdr + len)
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// The invariants after the whole run.
fn check_invariants(
    line: &Line,
    units: &[(String, usize)],
    seen: &BTreeMap<String, u8>,
    report: &mut CrashReport,
) {
    let rig = &line.rig;
    let v = &mut report.violations;
    // The outbox drains.
    let out = rig.station(&["upload", "--now"]);
    if !out.status.success() {
        v.push(format!(
            "upload --now failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let db = rig.db();
    let pending = count(&db, "SELECT count(*) FROM outbox WHERE state <> 'done'");
    if pending != 0 {
        v.push(format!(
            "{pending} outbox rows not delivered after upload --now"
        ));
    }
    let kept = count(
        &db,
        "SELECT count(*) FROM outbox WHERE state = 'done' AND payload IS NOT NULL",
    );
    if kept != 0 {
        v.push(format!(
            "{kept} delivered outbox rows still hold their payload"
        ));
    }
    // No acknowledged record lost.
    for (serial, rank) in seen {
        let now = rig.state(serial);
        if now
            .as_deref()
            .and_then(passed_rank)
            .is_none_or(|r| r < *rank)
        {
            v.push(format!(
                "unit {serial} was seen passed (rank {rank}) and is now {now:?}"
            ));
        }
    }
    // At most one live certificate per unit; exactly one per passed X.509 unit.
    let mut st = db
        .prepare(
            "SELECT u.serial, count(*) FROM certificates c JOIN units u ON u.id = c.unit_id
             WHERE c.status = 'live' GROUP BY u.id HAVING count(*) > 1",
        )
        .expect("query");
    let doubles: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(Iterator::collect)
        .expect("live certificates");
    for (s, n) in doubles {
        v.push(format!("unit {s} has {n} live certificates"));
    }
    // Every certificate the CA signed is recorded.
    let certs = count(&db, "SELECT count(*) FROM certificates");
    let issued = count(
        &db,
        "SELECT count(*) FROM audit_log WHERE event = 'ca.issue'",
    );
    if certs != issued {
        v.push(format!(
            "{certs} certificate rows but {issued} ca.issue audit entries"
        ));
    }
    let passed: BTreeSet<String> = {
        let mut st = db
            .prepare("SELECT serial FROM units WHERE state IN ('recorded','queued','uploaded','registered')")
            .expect("query");
        st.query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .expect("passed units")
    };
    report.passed = passed.len();
    for (serial, fixture) in units {
        if !passed.contains(serial) {
            v.push(format!("unit {serial} did not pass"));
        }
        let f = &line.fixtures[*fixture];
        let x509 = matches!(f.name, "link-1" | "se-1");
        if x509 && passed.contains(serial) {
            let live: i64 = db
                .query_row(
                    "SELECT count(*) FROM certificates c JOIN units u ON u.id = c.unit_id WHERE u.serial = ?1 AND c.status = 'live'",
                    [serial],
                    |r| r.get(0),
                )
                .expect("live");
            if live != 1 {
                v.push(format!("passed unit {serial} has {live} live certificates"));
            }
        }
        // The certificate in the unit's flash is one the station recorded, and its live one.
        if f.name == "link-1" {
            let file = f.dir.join(serial).join("unit.json");
            let state: serde_json::Value = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let Some(chain) = state["cert_chain_hex"].as_str() else {
                v.push(format!("unit {serial} holds no certificate"));
                continue;
            };
            let chain = hex::decode(chain).unwrap_or_default();
            let Some(leaf) = first_der(&chain) else {
                v.push(format!("unit {serial}: its certificate does not parse"));
                continue;
            };
            let status: Option<String> = db
                .query_row(
                    "SELECT status FROM certificates WHERE der = ?1",
                    [leaf],
                    |r| r.get(0),
                )
                .ok();
            if status.as_deref() != Some("live") {
                v.push(format!(
                    "unit {serial}: the certificate it holds is {status:?} in the station (want live)"
                ));
            }
        }
    }
    // A passed unit with its own key: DPS holds the key the unit holds.
    for (serial, fixture) in units {
        if line.fixtures[*fixture].name != "key-1" || !passed.contains(serial) {
            continue;
        }
        let file = line.fixtures[*fixture].dir.join(serial).join("unit.json");
        let held_by_unit = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["symkey_hex"].as_str().and_then(|h| hex::decode(h).ok()));
        let rid: Option<String> = db
            .query_row(
                "SELECT e.enrollment_id FROM enrollments e JOIN units u ON u.id = e.unit_id WHERE u.serial = ?1",
                [serial],
                |r| r.get(0),
            )
            .ok();
        let (Some(key), Some(rid)) = (held_by_unit, rid) else {
            v.push(format!(
                "passed unit {serial} holds no key, or has no recorded enrollment"
            ));
            continue;
        };
        let Ok(rid) = dps::RegistrationId::new(rid) else {
            v.push(format!(
                "unit {serial}: its recorded registration ID is invalid"
            ));
            continue;
        };
        let in_dps = rig.dps(|c| async move { c.enrollment_attestation(&rid).await });
        let in_dps = in_dps.ok().and_then(crate::line::dps_primary_key);
        if in_dps.as_deref() != Some(key.as_slice()) {
            v.push(format!(
                "unit {serial}: DPS does not hold the key the unit was locked with"
            ));
        }
    }
    // DPS holds exactly one individual enrollment per passed individual unit, none other.
    let want: BTreeMap<String, String> = {
        let mut st = db
            .prepare(
                "SELECT lower(e.enrollment_id), u.serial FROM enrollments e JOIN units u ON u.id = e.unit_id
                 WHERE e.kind = 'individual' AND u.state IN ('recorded','queued','uploaded','registered')",
            )
            .expect("query");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .expect("enrollments")
    };
    let held = rig.dps(|c| async move { c.list_enrollments(100).await });
    match held {
        Ok(list) => {
            let mut ids: BTreeMap<String, usize> = BTreeMap::new();
            for e in &list {
                *ids.entry(e.registration_id.as_str().to_lowercase())
                    .or_default() += 1;
            }
            for (id, n) in &ids {
                if *n > 1 {
                    v.push(format!("DPS holds {n} enrollments for {id}"));
                }
                if !want.contains_key(id) {
                    v.push(format!("DPS holds {id}, which is no passed unit's"));
                }
            }
            for (id, serial) in &want {
                if !ids.contains_key(id) {
                    v.push(format!(
                        "DPS lacks the enrollment of passed unit {serial} ({id})"
                    ));
                }
            }
            let expected = units
                .iter()
                .filter(|(_, f)| line.fixtures[*f].name != "sym-1")
                .count();
            if want.len() != expected {
                v.push(format!(
                    "{} individual enrollments recorded for {expected} individual units",
                    want.len()
                ));
            }
        }
        Err(e) => v.push(format!("listing DPS enrollments failed: {e}")),
    }
    let out = rig.station(&["audit", "verify"]);
    if !out.status.success() {
        v.push(format!(
            "audit verify failed: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
}

/// Prints the figures and the last line `crash: kills=<n> units=<n> violations=<n>`.
pub fn print_report(r: &CrashReport) {
    println!(
        "seed {} (replay: CRASH_SEED={}); {:.1} s, {:.2} s per kill",
        r.seed,
        r.seed,
        r.elapsed.as_secs_f64(),
        r.elapsed.as_secs_f64() / r.kills.max(1) as f64
    );
    println!(
        "units {} passed {} retried {}",
        r.units, r.passed, r.retries
    );
    for (p, n) in &r.points_hit {
        println!("crash point {p:<28} fired {n}");
    }
    for p in &r.points_missed {
        println!("crash point {p:<28} never fired");
    }
    for s in &r.start_failures {
        println!("start failure (restarted): {s}");
    }
    println!("station start failures: {}", r.start_failures.len());
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    println!(
        "crash: kills={} units={} violations={}",
        r.kills,
        r.units,
        r.violations.len()
    );
}
