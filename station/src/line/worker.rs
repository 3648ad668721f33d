//! One fixture's worker: it owns the fixture's hardware calls (device link, TPM, unit token, the
//! HSM session that signs) and its own database connection, and runs one unit at a time through
//! the state machine. Every step that changes what exists in the world (a key made, a
//! certificate signed, a key written, a record queued) is persisted before the next one starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::TransactionBehavior;
use sha2::{Digest as _, Sha256};

use super::lots;
use super::setup::LineSetup;
use super::state::{Step, UnitState};
use super::units::{self, Begin, Facts, Known, NewRun, UnitStoreError};
use crate::ca::service::{self, AuditKey, RecordContext};
use crate::ca::{Authority, CommonName, IssuedCert, Profile, SubjectKey, UnitSubject};
use crate::config::FixtureConfig;
use crate::element::{self, ElementTarget};
use crate::enroll::build::{self, Identity, UnitValues};
use crate::enroll::profile::{Attestation, Enrollment, Product};
use crate::hsm::{Hsm, TokenSession};
use crate::ids::FixtureName;
use crate::link::{LinkSettings, SerialLink, Transport, UnitClient};
use crate::outbox::dps as outbox_dps;
use crate::store::{Store, StoreError, Writer, audit, now_utc, sql};

/// How a scanned unit ended, as shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitOutcome {
    /// The unit has its identity; its enrollment is queued for DPS.
    Passed {
        /// Serial.
        serial: String,
        /// Registration ID.
        registration_id: String,
    },
    /// The unit had passed before: nothing was issued.
    AlreadyPassed {
        /// Serial.
        serial: String,
        /// Registration ID.
        registration_id: String,
        /// Its state now.
        state: String,
    },
    /// The run failed at `step`.
    Failed {
        /// Serial.
        serial: String,
        /// The fixture it ran on.
        fixture: String,
        /// Step.
        step: Step,
        /// Why.
        reason: String,
    },
    /// The scan started nothing.
    Refused {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for UnitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitOutcome::Passed {
                serial,
                registration_id,
            } => write!(
                f,
                "PASS {serial}: registration ID {registration_id}, enrollment queued for DPS"
            ),
            UnitOutcome::AlreadyPassed {
                serial,
                registration_id,
                state,
            } => write!(
                f,
                "ALREADY DONE {serial}: passed earlier (registration ID {registration_id}, {state}); nothing issued"
            ),
            UnitOutcome::Failed {
                serial,
                fixture,
                step,
                reason,
            } => write!(
                f,
                "FAIL {serial} at {}, fixture {fixture}: {reason}",
                step.as_str()
            ),
            UnitOutcome::Refused { reason } => write!(f, "REFUSED: {reason}"),
        }
    }
}

/// How a unit transaction commits. Every entry is in the audit hash chain at once; what differs
/// is when it must be on disk and when the HSM-keyed seal is taken.
///
/// A step is durable (on disk before the worker goes on, keyed seal) where something outside
/// the station acts on it next: a signed certificate leaves for the unit, the unit is recorded
/// (PASS shown, enrollment queued for DPS), or the run failed. The steps between (scanned,
/// identified, key ready, key injected, verified) are written to the WAL without waiting for
/// the disk: a killed process keeps them, and the unit's next durable commit carries them to
/// disk with it. A power cut can take a unit back to its last durable state, which the restart
/// recovery resumes from as if the station had been killed just before the lost commit.
/// Durable commits of all fixtures share their fsyncs (group commit, `store::durable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// On disk and sealed before `persist` returns.
    Durable,
    /// In the chain; the unit's next durable transaction carries it to disk and seals it.
    Step,
}

/// Starts timing a unit: clears this thread's hardware and database times.
fn start_timing() -> std::time::Instant {
    crate::timing::take();
    crate::timing::take_store();
    std::time::Instant::now()
}

/// Why a step did not complete.
#[derive(Debug)]
enum Stop {
    /// The unit failed this step; the run ends failed.
    Unit(Step, String),
    /// The station itself failed (database, HSM): the unit keeps its persisted state and a
    /// restart resumes or fails it.
    Station(String),
}

impl From<UnitStoreError> for Stop {
    fn from(e: UnitStoreError) -> Self {
        Stop::Station(error_text(&e))
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Station(error_text(&e))
    }
}

/// An error and its causes on one line.
#[must_use]
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Everything a fixture's worker holds for the life of the fixture.
pub struct Worker<'s> {
    setup: &'s LineSetup,
    fixture: FixtureName,
    fcfg: FixtureConfig,
    product: Arc<Product>,
    store: Store,
    session: &'s TokenSession,
    ca: Authority<'s>,
    audit_key: AuditKey<'s>,
    leaf_profile: Profile,
    root_der: Vec<u8>,
    station_hsm: &'s Hsm,
    abort: Arc<AtomicBool>,
    operator: Option<String>,
    last_failed: Option<String>,
    /// Bytes over the device link (all, and those whose wire time no exchange can hide: see
    /// `TransportStats::serial_bytes`) and its baud, for the unit just run.
    wire: Option<(u64, u64, u32)>,
    /// The unit being run is resumed after a restart.
    resuming: bool,
    /// When the unit being run was scanned.
    unit_started: Option<std::time::Instant>,
    /// The process's shared writer connection (every unit transaction goes through it).
    writer: Writer,
    /// Steps of the running unit that nothing outside the station acts on, recorded at the
    /// start of its next transaction rather than in one of their own (see `later`).
    deferred: Vec<Deferred>,
}

/// A step recorded with the unit's next transaction.
type Deferred =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>, &crate::ids::StationId) -> Result<(), Stop>>;

/// What a fixture keeps when its worker is rebuilt (after the HSM came back): who is logged
/// on and which unit `CMD:RETRY` retries.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    operator: Option<String>,
    last_failed: Option<String>,
}

/// Loads the station's HSM module. Call it once, before starting threads: SoftHSM's
/// configuration is passed through the environment.
pub fn open_station_hsm(setup: &LineSetup) -> Result<Hsm, String> {
    service::open_hsm(&setup.home, &setup.cfg).map_err(|e| error_text(&e))
}

/// The HSM pieces a worker borrows (kept by the caller, since the authority borrows the session).
pub struct WorkerHsm {
    /// The station's PKCS#11 module.
    pub hsm: Hsm,
    /// The CA token session of this worker.
    pub session: TokenSession,
}

impl WorkerHsm {
    /// Opens a CA-token session for one worker on the station's HSM module (loaded once per
    /// process, before any thread starts: see [`open_station_hsm`]).
    pub fn open(setup: &LineSetup, hsm: &Hsm) -> Result<Self, String> {
        let hsm = hsm.clone();
        let session =
            service::open_ca_token(&hsm, &setup.home, &setup.cfg).map_err(|e| error_text(&e))?;
        Ok(Self { hsm, session })
    }
}

impl<'s> Worker<'s> {
    /// A worker for fixture `name`.
    pub fn new(
        setup: &'s LineSetup,
        name: &str,
        hsm: &'s WorkerHsm,
        abort: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let (fixture, fcfg, product) = setup.fixture(name).map_err(|e| error_text(&e))?;
        let cfg = &setup.cfg;
        let db = setup.home.resolve(&cfg.store.path);
        // Reads on the fixture's own connection; writes on the process's shared one, whose
        // durable commits share fsyncs taken outside the write turn.
        let store = Store::open(&db, &cfg.store).map_err(|e| error_text(&e))?;
        let writer = Writer::open(&db, &cfg.store).map_err(|e| error_text(&e))?;
        let ca =
            service::load_issuing(&hsm.session, &setup.home, cfg).map_err(|e| error_text(&e))?;
        let audit_key = AuditKey::find(&hsm.session, &cfg.ca.audit_key_label)
            .map_err(|e| format!("the audit key: {}", error_text(&e)))?;
        if product.profile.attestation == Attestation::SymmetricIndividual {
            // Found now rather than at the first unit's record step, when its key would
            // already be in the unit and nowhere else.
            crate::keys::OutboxCipher::new(&hsm.session)
                .and_then(|c| c.self_test())
                .map_err(|e| {
                    format!(
                        "product {} keeps each unit's key in the outbox sealed with AES-256-GCM inside the HSM, and the HSM cannot do that: {}; use a PKCS#11 module with CKM_AES_GCM for this product",
                        product.name,
                        error_text(&e)
                    )
                })?;
        }
        let profiles = service::profiles(&setup.home, cfg).map_err(|e| error_text(&e))?;
        let leaf_profile = profiles.get("device").map_err(|e| error_text(&e))?.clone();
        let root_der = service::read_cert(&service::root_path(&setup.home, cfg))
            .map_err(|e| error_text(&e))?;
        Ok(Self {
            setup,
            fixture,
            fcfg: fcfg.clone(),
            product,
            store,
            session: &hsm.session,
            ca,
            audit_key,
            leaf_profile,
            root_der,
            station_hsm: &hsm.hsm,
            abort,
            operator: None,
            last_failed: None,
            wire: None,
            resuming: false,
            unit_started: None,
            writer,
            deferred: Vec::new(),
        })
    }

    /// This fixture's units whose run did not end (for restart recovery).
    pub fn unfinished_here(&self) -> Result<Vec<units::UnitRow>, String> {
        Ok(units::unfinished(self.store.conn())
            .map_err(|e| error_text(&e))?
            .into_iter()
            .filter(|u| u.fixture.as_deref() == Some(self.fixture.as_str()))
            .collect())
    }

    /// Fails a unit found after a restart in a state that cannot be resumed.
    pub fn fail_unit(&mut self, unit: &units::UnitRow, step: Step, reason: &str) -> UnitOutcome {
        let actor = unit
            .operator
            .clone()
            .unwrap_or_else(|| "station".to_owned());
        match self.persist(Commit::Durable, |tx, st| {
            units::fail(tx, st, &actor, unit.id, step, reason)?;
            Ok(())
        }) {
            Ok(()) => {
                self.last_failed = Some(unit.serial.clone());
                UnitOutcome::Failed {
                    serial: unit.serial.clone(),
                    fixture: self.fixture.to_string(),
                    step,
                    reason: reason.to_owned(),
                }
            }
            Err(e) => UnitOutcome::Refused {
                reason: format!(
                    "fixture {}: could not record the failure of unit {}: {}",
                    self.fixture,
                    unit.serial,
                    stop_text(&e)
                ),
            },
        }
    }

    /// Why the HSM does not answer this worker's session, or `None` when it does (a cheap
    /// object search for the audit key).
    #[must_use]
    pub fn hsm_unavailable(&self) -> Option<String> {
        crate::timing::hardware(|| {
            self.session.has_key(
                &self.setup.cfg.ca.audit_key_label,
                cryptoki::object::ObjectClass::SECRET_KEY,
            )
        })
        .err()
        .map(|e| error_text(&e))
    }

    /// What a rebuilt worker for this fixture takes over.
    #[must_use]
    pub fn carry(&self) -> Carry {
        Carry {
            operator: self.operator.clone(),
            last_failed: self.last_failed.clone(),
        }
    }

    /// Takes over what the fixture's previous worker kept (the logon was audited then).
    pub fn restore(&mut self, carry: Carry) {
        if self.operator.is_none() {
            self.operator = carry.operator;
        }
        if self.last_failed.is_none() {
            self.last_failed = carry.last_failed;
        }
    }

    /// The fixture's name.
    #[must_use]
    pub fn fixture(&self) -> &FixtureName {
        &self.fixture
    }

    /// The fixture's product.
    #[must_use]
    pub fn product(&self) -> &Product {
        &self.product
    }

    /// Who is logged on.
    #[must_use]
    pub fn operator(&self) -> Option<&str> {
        self.operator.as_deref()
    }

    /// Logs `username` on to the fixture (after a badge scan), audited. A web user is not
    /// logged on: each of their scans carries their name.
    pub fn log_on(&mut self, username: &str) -> Result<(), String> {
        self.audit("fixture.logon", username, serde_json::json!({}))
            .map_err(|e| error_text(&e))?;
        self.operator = Some(username.to_owned());
        Ok(())
    }

    /// Handles an operator badge: logs its holder on, or says why not.
    pub fn badge(
        &mut self,
        key: &crate::operators::BadgeKey,
        badge: &crate::trigger::parse::Badge,
    ) -> Result<String, String> {
        match crate::operators::by_badge(self.store.conn(), key, badge) {
            Ok(op) => {
                self.log_on(&op.username)?;
                Ok(op.username)
            }
            Err(e) => {
                let reason = format!("fixture {}: badge refused: {e}", self.fixture);
                // The badge itself is never written anywhere.
                let _ = self.audit(
                    "fixture.badge_refused",
                    "",
                    serde_json::json!({"reason": e.to_string()}),
                );
                Err(reason)
            }
        }
    }

    /// The serial of the last unit that failed here (for `CMD:RETRY`).
    #[must_use]
    pub fn last_failed(&self) -> Option<&str> {
        self.last_failed.as_deref()
    }

    fn audit(
        &mut self,
        event: &str,
        subject: &str,
        mut details: serde_json::Value,
    ) -> Result<(), StoreError> {
        if let Some(o) = details.as_object_mut() {
            o.insert("fixture".into(), self.fixture.as_str().into());
        }
        let mut writer = self.writer.turn();
        let tx = writer
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin fixture audit"))?;
        audit::append(
            &tx,
            &self.setup.station,
            &audit::AuditEvent {
                actor: self.operator.as_deref().unwrap_or("station"),
                event,
                subject,
                details,
            },
        )?;
        let _ = self.audit_key.seal(&tx);
        tx.commit().map_err(sql("commit fixture audit"))?;
        let durable = writer.durable();
        drop(writer);
        durable.wait()
    }

    /// Runs a scanned serial on this fixture. `operator` overrides the logged-on operator (the
    /// CLI's user).
    pub fn run_serial(&mut self, serial: &str, operator: Option<&str>) -> UnitOutcome {
        // A unit's time runs from its scan: the checks and the scan's own transaction count.
        self.unit_started = Some(start_timing());
        self.abort.store(false, Ordering::Relaxed);
        let operator = operator
            .map(str::to_owned)
            .or_else(|| self.operator.clone());
        let product = Arc::clone(&self.product);
        if !product.serial_pattern.is_match(serial) {
            return UnitOutcome::Refused {
                reason: format!(
                    "fixture {}: {serial:?} is not a {} serial (pattern {})",
                    self.fixture, product.name, product.profile.serial_pattern
                ),
            };
        }
        if operator.is_none() && !product.profile.anonymous_runs {
            return UnitOutcome::Refused {
                reason: format!(
                    "fixture {}: nobody is logged on; scan your badge first",
                    self.fixture
                ),
            };
        }
        // A full database refuses the unit before anything about it is written, so the room
        // left stays for the units already running.
        match self.store.full_for_new_units() {
            Ok(None) => {}
            Ok(Some(why)) => {
                tracing::error!(fixture = %self.fixture, serial, "{why}");
                return UnitOutcome::Refused {
                    reason: format!("fixture {}: unit {serial} refused: {why}", self.fixture),
                };
            }
            Err(e) => {
                return UnitOutcome::Refused {
                    reason: format!("fixture {}: {}", self.fixture, error_text(&e)),
                };
            }
        }
        let lot = match lots::open_id_for(self.store.conn(), &product.name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: no open lot for product {}; a supervisor opens one with `station lot open --product {} --quantity N`",
                        self.fixture, product.name, product.name
                    ),
                };
            }
            Err(e) => {
                return UnitOutcome::Refused {
                    reason: format!("fixture {}: {}", self.fixture, error_text(&e)),
                };
            }
        };
        let begun = crate::timing::database(|| -> Result<Begin, UnitStoreError> {
            let mut writer = self.writer.turn();
            let tx = writer
                .conn_mut()
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin scan"))?;
            let b = units::begin(
                &tx,
                &self.setup.station,
                &NewRun {
                    serial,
                    product: product.name.as_str(),
                    lot_id: lot.as_str(),
                    fixture: self.fixture.as_str(),
                    operator: operator.as_deref(),
                    attestation: product.profile.attestation.kind(),
                },
            )?;
            // The scan's entries are sealed, and carried to disk, with the unit's next durable
            // transaction (see Commit).
            if matches!(b, Begin::Started { .. }) {
                tx.commit().map_err(sql("commit scan"))?;
                units::committed();
            } else {
                units::take_entered();
            }
            Ok(b)
        });
        let unit_id = match begun {
            Ok(Begin::Started { unit_id, .. }) => unit_id,
            Ok(Begin::AlreadyPassed(u)) => {
                return UnitOutcome::AlreadyPassed {
                    serial: u.serial,
                    registration_id: u.registration_id.unwrap_or_default(),
                    state: u.state.name().to_owned(),
                };
            }
            Ok(Begin::InProgress { fixture, state }) => {
                return UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: unit {serial} is being provisioned on fixture {fixture} ({state}); wait for it, or abort it there",
                        self.fixture
                    ),
                };
            }
            Ok(Begin::Scrapped { reason }) => {
                return UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: unit {serial} was scrapped ({reason}): it is never provisioned again",
                        self.fixture
                    ),
                };
            }
            Ok(Begin::OtherProduct { product: other }) => {
                return UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: unit {serial} was made as product {other}, not {}",
                        self.fixture, product.name
                    ),
                };
            }
            Err(e) if crate::store::is_full(&e) => {
                return UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: unit {serial} refused: database full (the disk or [store] max_size_mb): {}; nothing was recorded for it",
                        self.fixture,
                        error_text(&e)
                    ),
                };
            }
            Err(e) => {
                return UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: cannot record the scan: {}",
                        self.fixture,
                        error_text(&e)
                    ),
                };
            }
        };
        let actor = operator.clone().unwrap_or_else(|| "station".to_owned());
        let values = UnitValues {
            serial: serial.to_owned(),
            lot,
            product: product.name.as_str().to_owned(),
            model: product.profile.model.clone(),
            fixture: self.fixture.as_str().to_owned(),
            station: self.setup.station.as_str().to_owned(),
            operator: operator.clone().unwrap_or_default(),
            manufactured_at: now_utc(),
            ..UnitValues::default()
        };
        self.drive(unit_id, &actor, values)
    }

    /// Continues a unit after a restart (`Recovery::Resume`): the flow runs again from its
    /// first idempotent step; states already reached are re-entered, never skipped.
    pub fn resume(&mut self, unit: &units::UnitRow) -> UnitOutcome {
        let actor = unit
            .operator
            .clone()
            .unwrap_or_else(|| "station".to_owned());
        let values = UnitValues {
            serial: unit.serial.clone(),
            lot: unit.lot_id.clone().unwrap_or_default(),
            product: unit.product.clone(),
            model: unit
                .model
                .clone()
                .unwrap_or_else(|| self.product.profile.model.clone()),
            hw_rev: unit.hw_rev.clone().unwrap_or_default(),
            fw_version: unit.fw_version.clone().unwrap_or_default(),
            fixture: self.fixture.as_str().to_owned(),
            station: self.setup.station.as_str().to_owned(),
            operator: unit.operator.clone().unwrap_or_default(),
            manufactured_at: unit.created_at.clone(),
            registration_id: String::new(),
        };
        // A resumed element unit may hold the key its interrupted run made: that run's own
        // key is replaced (its certificate, if any, was never confirmed).
        self.resuming = true;
        if unit.state == UnitState::Verified {
            return self.finish(unit.id, &actor, values, |w, values| {
                w.record_from_store(unit, values)
            });
        }
        let o = self.drive(unit.id, &actor, values);
        self.resuming = false;
        o
    }

    /// A unit found Verified after a restart: its identity is in the store (EK, live
    /// certificate, or group membership), so only the record step is left.
    fn record_from_store(
        &mut self,
        unit: &units::UnitRow,
        values: &mut UnitValues,
    ) -> Result<(), Stop> {
        let rid_text = unit.registration_id.clone().unwrap_or_default();
        values.registration_id = rid_text.clone();
        let rid = dps::RegistrationId::new(rid_text)
            .map_err(|e| Stop::Unit(Step::Record, error_text(&e)))?;
        let device_id = build::device_id(&self.product, values)
            .map_err(|e| Stop::Unit(Step::Record, error_text(&e)))?;
        let conn = self.store.conn();
        let identity = match (
            &self.product.profile.attestation,
            &self.product.profile.enrollment,
        ) {
            (_, Enrollment::Group { .. }) => Identity::X509 {
                leaf_pem: String::new(),
            },
            (Attestation::Tpm, _) => {
                let ek: String = conn
                    .query_row(
                        "SELECT ek_public FROM tpm_endorsement_keys WHERE unit_id = ?1",
                        [unit.id],
                        |r| r.get(0),
                    )
                    .map_err(sql("read the unit's EK"))?;
                Identity::Tpm {
                    endorsement_key: ek,
                    storage_root_key: None,
                }
            }
            (Attestation::X509Link | Attestation::X509Pkcs11 { .. }, _) => {
                let der: Vec<u8> = conn
                    .query_row(
                        "SELECT der FROM certificates WHERE unit_id = ?1 AND status = 'live'",
                        [unit.id],
                        |r| r.get(0),
                    )
                    .map_err(sql("read the unit's certificate"))?;
                Identity::X509 {
                    leaf_pem: crate::ca::verify::to_pem(&[&der]),
                }
            }
            (Attestation::SymmetricIndividual | Attestation::SymmetricGroup, _) => {
                // The unit proved its key before it was verified; the station kept that key
                // sealed until the record (a station older than the kept keys did not).
                let Some(sealed) = units::kept_key(conn, unit.id)? else {
                    return Err(Stop::Unit(
                        Step::Record,
                        "the station stopped before the unit's key was recorded; factory-reset the unit and retry".into(),
                    ));
                };
                let key = self.open_kept_key(unit.id, &unit.serial, &sealed)?;
                let actor = unit
                    .operator
                    .clone()
                    .unwrap_or_else(|| "station".to_owned());
                return self.record_symmetric(unit.id, &actor, values, (rid, device_id), &key);
            }
        };
        let actor = unit
            .operator
            .clone()
            .unwrap_or_else(|| "station".to_owned());
        self.record(unit.id, &actor, values, rid, device_id, || Ok(identity))
    }

    fn drive(&mut self, unit_id: i64, actor: &str, values: UnitValues) -> UnitOutcome {
        self.finish(unit_id, actor, values, |w, values| {
            w.run_kind(unit_id, actor, values)
        })
    }

    fn run_kind(&mut self, unit_id: i64, actor: &str, values: &mut UnitValues) -> Result<(), Stop> {
        let product = Arc::clone(&self.product);
        tracing::info!(fixture = %self.fixture, serial = %values.serial, product = %product.name, "unit started");
        match &product.profile.attestation {
            Attestation::Tpm => self.drive_tpm(unit_id, actor, values),
            Attestation::X509Link => self.drive_x509_link(unit_id, actor, values),
            Attestation::X509Pkcs11 {
                module,
                token,
                pin_file,
                pin_env,
            } => {
                let address = crate::element::ElementAddress::new(
                    self.fcfg.pkcs11_module.clone().unwrap_or(module.clone()),
                    self.fcfg.pkcs11_token.clone().unwrap_or(token.clone()),
                    pin_env.as_ref(),
                    pin_file.as_ref(),
                );
                self.drive_pkcs11(unit_id, actor, values, &address)
            }
            Attestation::SymmetricIndividual | Attestation::SymmetricGroup => {
                self.drive_symmetric(unit_id, actor, values)
            }
        }
    }

    /// Runs `step` and turns its result into the operator's outcome, recording a failure.
    fn finish(
        &mut self,
        unit_id: i64,
        actor: &str,
        mut values: UnitValues,
        step: impl FnOnce(&mut Self, &mut UnitValues) -> Result<(), Stop>,
    ) -> UnitOutcome {
        let serial = values.serial.clone();
        let started = self.unit_started.take().unwrap_or_else(start_timing);
        self.wire = None;
        self.deferred.clear();
        let result = step(self, &mut values);
        let total = started.elapsed();
        let hardware = crate::timing::take();
        let store = crate::timing::take_store();
        let (wire_bytes, wire_serial_bytes, baud) = self.wire.unwrap_or((0, 0, 0));
        tracing::info!(
            target: "station::timing",
            fixture = %self.fixture,
            %serial,
            total_us = total.as_micros() as u64,
            hardware_us = hardware.as_micros() as u64,
            overhead_us = total.saturating_sub(hardware).as_micros() as u64,
            database_us = store.database.as_micros() as u64,
            turn_wait_us = store.turn_wait.as_micros() as u64,
            disk_sync_us = store.disk_sync.as_micros() as u64,
            wire_bytes,
            wire_serial_bytes,
            baud,
            passed = result.is_ok(),
            "unit timing"
        );
        match result {
            Ok(()) => {
                self.last_failed = None;
                tracing::info!(fixture = %self.fixture, %serial, registration_id = %values.registration_id, "unit passed");
                UnitOutcome::Passed {
                    serial,
                    registration_id: values.registration_id,
                }
            }
            Err(Stop::Unit(step, reason)) => {
                self.last_failed = Some(serial.clone());
                tracing::warn!(fixture = %self.fixture, %serial, step = step.as_str(), %reason, "unit failed");
                if let Err(e) = self.persist(Commit::Durable, |tx, st| {
                    units::fail(tx, st, actor, unit_id, step, &reason)?;
                    Ok(())
                }) {
                    return UnitOutcome::Refused {
                        reason: format!(
                            "fixture {}: unit {serial} failed at {} ({reason}) and the failure could not be recorded: {}",
                            self.fixture,
                            step.as_str(),
                            stop_text(&e)
                        ),
                    };
                }
                UnitOutcome::Failed {
                    serial,
                    fixture: self.fixture.to_string(),
                    step,
                    reason,
                }
            }
            Err(Stop::Station(reason)) => {
                // Steps not yet recorded stay unrecorded: the unit resumes from its last commit.
                self.deferred.clear();
                tracing::error!(fixture = %self.fixture, %serial, %reason, "station failure during a unit");
                UnitOutcome::Refused {
                    reason: format!(
                        "fixture {}: the station failed during unit {serial}: {reason}; the unit keeps its recorded state and is resumed or failed when the fixture starts again (or its HSM is back)",
                        self.fixture
                    ),
                }
            }
        }
    }

    /// One transaction: the deferred steps, `f`, then (when durable) the HSM-keyed audit
    /// seal, then commit; a durable commit then waits for the disk after giving up the write
    /// turn.
    fn persist<T>(
        &mut self,
        commit: Commit,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &crate::ids::StationId) -> Result<T, Stop>,
    ) -> Result<T, Stop> {
        let (out, durable) = self.commit(commit, f)?;
        settle(durable.as_ref()).map_err(Stop::Station)?;
        Ok(out)
    }

    /// [`Worker::persist`] up to the commit: the caller settles it ([`settle`]: the wait for
    /// the disk of a durable commit, then the crash-test points).
    fn commit<T>(
        &mut self,
        commit: Commit,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &crate::ids::StationId) -> Result<T, Stop>,
    ) -> Result<(T, Option<crate::store::Durable>), Stop> {
        let deferred = std::mem::take(&mut self.deferred);
        let (out, durable) = crate::timing::database(|| -> Result<_, Stop> {
            // Writers of this process queue here, not in SQLite's busy handler (see Writer).
            let mut writer = self.writer.turn();
            let tx = writer
                .conn_mut()
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("begin unit transaction"))?;
            for step in deferred {
                step(&tx, &self.setup.station)?;
            }
            let out = f(&tx, &self.setup.station)?;
            if commit == Commit::Durable {
                self.audit_key.seal(&tx).map_err(|e| {
                    Stop::Station(format!("sealing the audit log: {}", error_text(&e)))
                })?;
            }
            tx.commit().map_err(sql("commit unit transaction"))?;
            let durable = (commit == Commit::Durable).then(|| writer.durable());
            Ok((out, durable))
        })?;
        Ok((out, durable))
    }

    fn advance(
        &mut self,
        unit_id: i64,
        actor: &str,
        step: Step,
        next: UnitState,
        facts: &Facts<'_>,
    ) -> Result<(), Stop> {
        self.persist(Commit::Step, |tx, st| {
            units::transition(tx, st, actor, unit_id, next, facts)
                .map_err(|e| unique_clash(e, step))?;
            Ok(())
        })
    }

    /// Moves the unit to `next` in its next transaction, for a step nothing outside the
    /// station acts on (identified, verified): a commit of its own would cost a turn on the
    /// shared writer and WAL pages. A kill before that transaction finds the unit where it was
    /// before the step, as a kill before the step's own commit would, and the resumed unit
    /// passes the step again; a unit that fails first has the step recorded before its
    /// failure.
    fn later(&mut self, unit_id: i64, actor: &str, step: Step, next: UnitState, facts: Known) {
        let actor = actor.to_owned();
        self.deferred.push(Box::new(move |tx, st| {
            units::transition(tx, st, &actor, unit_id, next, &facts.as_facts())
                .map_err(|e| unique_clash(e, step))?;
            Ok(())
        }));
    }

    fn check_abort(&self, step: Step) -> Result<(), Stop> {
        if self.abort.swap(false, Ordering::Relaxed) {
            return Err(Stop::Unit(
                step,
                "aborted by the operator (CMD:ABORT)".into(),
            ));
        }
        Ok(())
    }

    fn note_wire(&mut self, unit: &UnitClient<SerialLink>) {
        let st = unit.transport().stats();
        self.wire = Some((
            st.bytes_out + st.bytes_in,
            st.serial_bytes(),
            self.fcfg.baud,
        ));
    }

    /// A unit failure over the device link, naming the fixture and its port (what the
    /// operator checks when a cable came loose).
    fn link_fail(&self, step: Step, e: &(dyn std::error::Error + 'static)) -> Stop {
        let port = self
            .fcfg
            .serial_port
            .as_ref()
            .map(|p| self.setup.home.resolve(p).display().to_string())
            .unwrap_or_default();
        Stop::Unit(step, format!("device link {port}: {}", error_text(e)))
    }

    fn open_link(&self) -> Result<UnitClient<SerialLink>, Stop> {
        let port =
            self.fcfg.serial_port.as_ref().ok_or_else(|| {
                Stop::Unit(Step::Identify, "the fixture has no serial_port".into())
            })?;
        let port = self.setup.home.resolve(port);
        let link =
            crate::timing::hardware(|| SerialLink::open(&port, self.fcfg.baud)).map_err(|e| {
                Stop::Unit(
                    Step::Identify,
                    format!(
                        "cannot open the device link {}: {}",
                        port.display(),
                        error_text(&e)
                    ),
                )
            })?;
        Ok(UnitClient::new(Transport::new(
            link,
            LinkSettings {
                baud: self.fcfg.baud,
                timeout: std::time::Duration::from_millis(self.fcfg.link_timeout_ms),
                retries: self.fcfg.link_retries,
                ..LinkSettings::default()
            },
        )))
    }

    /// Signs a leaf for `key`, records it for the unit and moves the unit to
    /// CertificateIssued, all in one transaction; returns the certificate once recorded.
    fn issue_for_unit(
        &mut self,
        unit_id: i64,
        actor: &str,
        key: &SubjectKey,
        rid: &str,
    ) -> Result<IssuedCert, Stop> {
        let (cert, durable) = self.issue_for_unit_pending(unit_id, actor, key, rid)?;
        settle(durable.as_ref()).map_err(Stop::Station)?;
        Ok(cert)
    }

    /// [`Worker::issue_for_unit`] whose commit is still on its way to the disk (syncing in the
    /// background): nothing of the certificate's signature may leave before the caller has
    /// settled the returned commit ([`settle`]).
    fn issue_for_unit_pending(
        &mut self,
        unit_id: i64,
        actor: &str,
        key: &SubjectKey,
        rid: &str,
    ) -> Result<(IssuedCert, Option<crate::store::Durable>), Stop> {
        let cn = CommonName::registration_id(rid)
            .map_err(|e| Stop::Unit(Step::Issue, error_text(&e)))?;
        let cert = self
            .ca
            .issue(
                &self.leaf_profile,
                key,
                cn.as_str(),
                &UnitSubject::default(),
            )
            .map_err(|e| match e {
                // The HSM failing to sign is the station's failure, not the unit's: the unit
                // keeps its state and is resumed once the HSM is back.
                crate::ca::CaError::Hsm(_)
                | crate::ca::CaError::Build(rcgen::Error::RemoteKeyError) => {
                    Stop::Station(format!("the HSM did not sign: {}", error_text(&e)))
                }
                e => Stop::Unit(Step::Issue, error_text(&e)),
            })?;
        let issuer = self.ca.issuer_key_id().to_owned();
        let ((), durable) = self.commit(Commit::Durable, |tx, st| {
            let rec = RecordContext {
                station: st,
                actor,
                event: "ca.issue",
                registration_id: Some(cn.as_str()),
                unit_id: Some(unit_id),
            };
            let id = service::record_issued(tx, &issuer, &cert, &rec)
                .map_err(|e| Stop::Station(error_text(&e)))?;
            units::transition(
                tx,
                st,
                actor,
                unit_id,
                UnitState::CertificateIssued { certificate_id: id },
                &Facts::default(),
            )?;
            Ok(())
        })?;
        if let Some(d) = &durable {
            d.start();
        }
        Ok((cert, durable))
    }

    /// The certificate reached the unit and was read back: it becomes the unit's live one, and
    /// the unit is recorded, in one transaction.
    fn record_confirmed(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &UnitValues,
        (rid, device_id): (dps::RegistrationId, dps::DeviceId),
        leaf_der: &[u8],
    ) -> Result<(), Stop> {
        let confirming = actor.to_owned();
        self.deferred.push(Box::new(move |tx, st| {
            tx.prepare_cached(
                "UPDATE certificates SET status = 'live' WHERE unit_id = ?1 AND status = 'issued'",
            )
            .and_then(|mut st| st.execute([unit_id]))
            .map_err(sql("confirm certificate"))?;
            units::transition(
                tx,
                st,
                &confirming,
                unit_id,
                UnitState::Verified,
                &Facts::default(),
            )?;
            Ok(())
        }));
        let leaf_pem = crate::ca::verify::to_pem(&[leaf_der]);
        self.record(unit_id, actor, values, rid, device_id, || {
            Ok(Identity::X509 { leaf_pem })
        })
    }

    fn drive_x509_link(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &mut UnitValues,
    ) -> Result<(), Stop> {
        use crate::link::x509;
        let mut unit = self.open_link()?;
        let id = x509::identify_for_x509(&mut unit, Some(&values.serial))
            .map_err(|e| self.link_fail(Step::Identify, &e))?;
        let (rid, device_id) = self.identified(unit_id, actor, values, &id)?;
        let csr =
            x509::keygen_checked(&mut unit, &rid).map_err(|e| self.link_fail(Step::Attest, &e))?;
        // Key-ready is written with the certificate (nothing outside the station acts on it,
        // and a restart resumes a key-ready unit as an identified one), one transaction fewer
        // per unit. The registration ID it claims is checked first, so that a clash fails the
        // unit before the CA signs, not after; the database's UNIQUE index still decides.
        self.registration_id_free(unit_id, &rid)?;
        self.later(
            unit_id,
            actor,
            Step::Attest,
            UnitState::KeyReady {
                registration_id: rid.to_string(),
                material: format!("spki-sha256:{}", hex::encode(Sha256::digest(&csr.spki_der))),
            },
            Known {
                registration_id: Some(rid.to_string()),
                device_id: Some(device_id.to_string()),
                ..Known::default()
            },
        );
        self.check_abort(Step::Issue)?;
        // keygen_checked verified the CSR's signature, name, nonce and key type already.
        let key = SubjectKey::from_spki(&csr.spki_der)
            .and_then(|k| k.check_allowed(&self.leaf_profile).map(|()| k))
            .map_err(|e| Stop::Unit(Step::Issue, error_text(&e)))?;
        // The certificate's record syncs to disk while its first bytes travel (see
        // deliver_gated): its signature leaves only once the record is durable.
        let (cert, durable) = self.issue_for_unit_pending(unit_id, actor, &key, rid.as_str())?;
        let chain = x509::IssuedChain {
            leaf_der: cert.der.clone(),
            chain_der: vec![self.ca.cert_der().to_vec(), self.root_der.clone()],
        };
        // The CA verified the leaf's signature with its key before releasing it.
        x509::check_issued_key(&chain.leaf_der, &csr.spki_der)
            .map_err(|e| Stop::Unit(Step::Issue, error_text(&e)))?;
        self.check_abort(Step::Inject)?;
        let ready = || durable.as_ref().is_none_or(crate::store::Durable::is_done);
        let passed = std::cell::Cell::new(false);
        let mut on_disk = || -> Result<(), String> {
            settle(durable.as_ref())?;
            passed.set(true);
            Ok(())
        };
        let delivered = x509::deliver_gated(&mut unit, &chain, &csr.spki_der, &ready, &mut on_disk);
        if let Err(x509::X509FlowError::Link(crate::link::LinkError::Held { reason, .. })) =
            &delivered
        {
            return Err(Stop::Station(format!(
                "the certificate's record did not reach the disk: {reason}"
            )));
        }
        if !passed.get() {
            // The upload ended before the leaf's signature: the record still reaches the disk
            // and passes its crash-test points, as after any commit.
            settle(durable.as_ref()).map_err(Stop::Station)?;
        }
        delivered.map_err(|e| {
            let step = if matches!(
                e,
                x509::X509FlowError::ReadbackDigest | x509::X509FlowError::ReadbackKey
            ) {
                Step::Verify
            } else {
                Step::Inject
            };
            self.link_fail(step, &e)
        })?;
        unit.lock().map_err(|e| self.link_fail(Step::Verify, &e))?;
        self.note_wire(&unit);
        self.record_confirmed(unit_id, actor, values, (rid, device_id), &cert.der)
    }

    fn drive_symmetric(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &mut UnitValues,
    ) -> Result<(), Stop> {
        use crate::link::symkey::{self, SymkeyIdentity};
        let product = Arc::clone(&self.product);
        let target = crate::dps_target::target(&self.setup.cfg, &product.profile.dps_target)
            .map_err(|e| Stop::Station(error_text(&e)))?
            .clone();
        // What the unit is given, or asked to prove: its key and where to register with it.
        let identity_for =
            |key: &crate::keys::DeviceKey, rid: &dps::RegistrationId| SymkeyIdentity {
                key: secrecy::SecretBox::new(Box::new(key.expose().to_vec())),
                registration_id: rid.clone(),
                id_scope: target.id_scope.clone(),
                global_endpoint: target.global_endpoint.clone(),
            };
        let mut unit = self.open_link()?;
        // A resumed unit may have been locked with its key by the interrupted run. A locked
        // unit still answers `prove`: if it proves the key the station can name (derived for a
        // group member, kept sealed for an individual unit), that key is recorded.
        enum Named {
            Derived(String),
            Kept(Vec<u8>),
        }
        let named = match &product.profile.enrollment {
            _ if !self.resuming => None,
            Enrollment::Group { group_id } => Some(Named::Derived(group_id.clone())),
            Enrollment::Individual => units::kept_key(self.store.conn(), unit_id)?.map(Named::Kept),
        };
        if let Some(named) = named {
            let id = unit
                .identify()
                .map_err(|e| self.link_fail(Step::Identify, &e))?;
            if id.locked && id.serial == values.serial {
                values.model = id.model.clone();
                values.hw_rev = id.hw.clone();
                values.fw_version = id.fw.clone();
                let (rid, device_id) = self.ids(values)?;
                let key = match named {
                    Named::Derived(group_id) => {
                        crate::keys::derive_device_key(self.session, &group_id, rid.as_str())
                            .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?
                    }
                    Named::Kept(sealed) => self.open_kept_key(unit_id, &values.serial, &sealed)?,
                };
                symkey::prove(&mut unit, &identity_for(&key, &rid))
                    .map_err(|e| self.link_fail(Step::Verify, &e))?;
                self.note_wire(&unit);
                self.later(
                    unit_id,
                    actor,
                    Step::Verify,
                    UnitState::Verified,
                    Known::default(),
                );
                return self.record_symmetric(unit_id, actor, values, (rid, device_id), &key);
            }
        }
        let id = symkey::identify_for_symkey(&mut unit, Some(&values.serial))
            .map_err(|e| self.link_fail(Step::Identify, &e))?;
        let (rid, device_id) = self.identified(unit_id, actor, values, &id)?;
        // The key is made inside the HSM: derived from the group key (which never leaves it),
        // or drawn from its RNG. It exists in the clear only on its way to the unit.
        let (key, material) = match &product.profile.enrollment {
            Enrollment::Group { group_id } => (
                crate::keys::derive_device_key(self.session, group_id, rid.as_str())
                    .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?,
                format!("derived:{}", crate::keys::group_key_label(group_id)),
            ),
            Enrollment::Individual => (
                crate::keys::random_device_key(self.session)
                    .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?,
                "hsm-random".to_owned(),
            ),
        };
        let key_ready = UnitState::KeyReady {
            registration_id: rid.to_string(),
            material,
        };
        let facts = Facts {
            registration_id: Some(rid.as_str()),
            device_id: Some(device_id.as_str()),
            ..Facts::default()
        };
        if product.profile.enrollment == Enrollment::Individual {
            // A random key exists only here until it is recorded: it is kept sealed, on disk,
            // before the unit gets it, so that a unit locked with it by a run the station did
            // not finish is recorded with it on restart (units::keep_key).
            let sealed = crate::keys::OutboxCipher::new(self.session)
                .and_then(|c| c.seal_kept(unit_id, key.expose()))
                .map_err(|e| {
                    Stop::Station(format!("sealing the unit's key: {}", error_text(&e)))
                })?;
            self.persist(Commit::Durable, |tx, st| {
                units::transition(tx, st, actor, unit_id, key_ready, &facts)
                    .map_err(|e| unique_clash(e, Step::Attest))?;
                units::keep_key(tx, unit_id, &sealed)?;
                Ok(())
            })?;
        } else {
            self.advance(unit_id, actor, Step::Attest, key_ready, &facts)?;
        }
        self.check_abort(Step::Inject)?;
        let identity = identity_for(&key, &rid);
        symkey::inject(&mut unit, &identity).map_err(|e| self.link_fail(Step::Inject, &e))?;
        self.advance(
            unit_id,
            actor,
            Step::Inject,
            UnitState::KeyInjected,
            &Facts::default(),
        )?;
        symkey::prove(&mut unit, &identity).map_err(|e| self.link_fail(Step::Verify, &e))?;
        unit.lock().map_err(|e| self.link_fail(Step::Verify, &e))?;
        self.note_wire(&unit);
        self.later(
            unit_id,
            actor,
            Step::Verify,
            UnitState::Verified,
            Known::default(),
        );
        self.record_symmetric(unit_id, actor, values, (rid, device_id), &key)
    }

    /// Records a symmetric-key unit holding `key`. An individual enrollment gets a new
    /// secondary key drawn in the HSM; a group member's record carries no key (DPS derives
    /// it from the group's), so none is drawn for it.
    /// The random key kept sealed for unit `unit_id` (see `units::keep_key`).
    fn open_kept_key(
        &self,
        unit_id: i64,
        serial: &str,
        sealed: &[u8],
    ) -> Result<crate::keys::DeviceKey, Stop> {
        crate::keys::OutboxCipher::new(self.session)
            .and_then(|c| c.open_kept(unit_id, sealed))
            .map(|plain| crate::keys::DeviceKey::from_bytes(plain.to_vec()))
            .map_err(|e| {
                Stop::Station(format!(
                    "opening the key kept for unit {serial}: {}",
                    error_text(&e)
                ))
            })
    }

    fn record_symmetric(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &UnitValues,
        (rid, device_id): (dps::RegistrationId, dps::DeviceId),
        key: &crate::keys::DeviceKey,
    ) -> Result<(), Stop> {
        use secrecy::ExposeSecret as _;
        let session = self.session;
        self.record(unit_id, actor, values, rid, device_id, || {
            let primary = dps::wire::KeyText::new(key.to_base64().expose_secret());
            let secondary = crate::keys::random_device_key(session)
                .map_err(|e| Stop::Unit(Step::Record, error_text(&e)))?;
            let secondary = dps::wire::KeyText::new(secondary.to_base64().expose_secret());
            Ok(Identity::Symmetric { primary, secondary })
        })
    }

    fn drive_pkcs11(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &mut UnitValues,
        address: &crate::element::ElementAddress,
    ) -> Result<(), Stop> {
        let (rid, device_id) = self.ids(values)?;
        let home = self.setup.home.clone();
        let element_hsm = address
            .module(self.station_hsm, |p| home.resolve(p))
            .map_err(|e| {
                Stop::Unit(
                    Step::Attest,
                    format!(
                        "unit element module {}: {}",
                        address.module.display(),
                        error_text(&e)
                    ),
                )
            })?;
        let target = ElementTarget {
            token: address.token_pattern(&values.serial),
            pin: address.pin.clone(),
            rework: self.resuming,
        };
        let mut issued = false;
        let mut failure: Option<Stop> = None;
        // The unit token's calls are the element's time; the CA's work called back from inside
        // is the station's.
        let result = crate::timing::hardware(|| {
            element::provision(
                &element_hsm,
                &target,
                |p| home.resolve(p),
                |spki| {
                    crate::timing::station(|| {
                        let mut go = || -> Result<Vec<u8>, Stop> {
                            self.advance(
                                unit_id,
                                actor,
                                Step::Attest,
                                UnitState::KeyReady {
                                    registration_id: rid.to_string(),
                                    material: format!(
                                        "spki-sha256:{}",
                                        hex::encode(Sha256::digest(spki))
                                    ),
                                },
                                &Facts {
                                    registration_id: Some(rid.as_str()),
                                    device_id: Some(device_id.as_str()),
                                    ..Facts::default()
                                },
                            )?;
                            let key = SubjectKey::from_spki(spki)
                                .map_err(|e| Stop::Unit(Step::Issue, error_text(&e)))?;
                            let cert = self.issue_for_unit(unit_id, actor, &key, rid.as_str())?;
                            issued = true;
                            Ok(cert.der)
                        };
                        go().map_err(|stop| {
                            let text = stop_text(&stop);
                            failure = Some(stop);
                            text
                        })
                    })
                },
            )
        });
        match result {
            Ok(p) => {
                self.record_confirmed(unit_id, actor, values, (rid, device_id), &p.certificate)
            }
            Err(e) => Err(failure.unwrap_or_else(|| {
                Stop::Unit(
                    if issued { Step::Inject } else { Step::Attest },
                    error_text(&e),
                )
            })),
        }
    }

    fn drive_tpm(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &mut UnitValues,
    ) -> Result<(), Stop> {
        let cfg = &self.setup.cfg;
        let tcti = self
            .fcfg
            .tcti
            .clone()
            .or_else(|| cfg.tpm.tcti.clone())
            .ok_or_else(|| Stop::Unit(Step::Attest, "the fixture has no TCTI".into()))?;
        let trust = crate::tpm::load_trust(Some(self.setup.home.root()), &cfg.tpm.trust_dir)
            .map_err(|e| Stop::Station(format!("TPM trust directory: {}", error_text(&e))))?;
        let read = crate::timing::hardware(|| crate::tpm::read(&tcti, &cfg.tpm.read_options()))
            .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?;
        let assessment = crate::tpm::assess(&read, cfg.tpm.policy(), &trust);
        for w in &assessment.warnings {
            tracing::warn!(fixture = %self.fixture, serial = %values.serial, "{w}");
        }
        let rid = assessment.registration_id.clone();
        values.registration_id = rid.to_string();
        let device_id = build::device_id(&self.product, values)
            .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?;
        let ek = read.endorsement_key.clone();
        self.persist(Commit::Step, |tx, st| {
            crate::tpm::record_endorsement_key(tx, unit_id, &ek)
                .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?;
            units::transition(
                tx,
                st,
                actor,
                unit_id,
                UnitState::KeyReady {
                    registration_id: rid.to_string(),
                    material: format!("ek-sha256:{}", crate::tpm::record::ek_sha256(&ek)),
                },
                &Facts {
                    registration_id: Some(rid.as_str()),
                    device_id: Some(device_id.as_str()),
                    ..Facts::default()
                },
            )
            .map_err(|e| unique_clash(e, Step::Attest))?;
            Ok(())
        })?;
        if let Err(refusal) = &assessment.verdict {
            return Err(Stop::Unit(Step::Verify, refusal.to_string()));
        }
        self.later(
            unit_id,
            actor,
            Step::Verify,
            UnitState::Verified,
            Known::default(),
        );
        let att = crate::tpm::Assessment::attestation(&read);
        self.record(unit_id, actor, values, rid, device_id, || {
            Ok(Identity::Tpm {
                endorsement_key: att.tpm.endorsement_key,
                storage_root_key: att.tpm.storage_root_key,
            })
        })
    }

    /// The unit answered identify: its model, hardware and firmware go into the record and the
    /// templates, the unit moves to Identified, and its registration and device IDs are made.
    fn identified(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &mut UnitValues,
        id: &crate::link::proto::IdentifyRsp,
    ) -> Result<(dps::RegistrationId, dps::DeviceId), Stop> {
        values.model = id.model.clone();
        values.hw_rev = id.hw.clone();
        values.fw_version = id.fw.clone();
        self.later(
            unit_id,
            actor,
            Step::Identify,
            UnitState::Identified {
                model: id.model.clone(),
                hw_rev: id.hw.clone(),
                fw_version: id.fw.clone(),
            },
            Known {
                model: Some(id.model.clone()),
                hw_rev: Some(id.hw.clone()),
                fw_version: Some(id.fw.clone()),
                ..Known::default()
            },
        );
        self.check_abort(Step::Attest)?;
        self.ids(values)
    }

    /// Fails the unit at attestation when another unit already holds `rid` (read on the
    /// fixture's own connection, before anything is signed for it).
    fn registration_id_free(&self, unit_id: i64, rid: &dps::RegistrationId) -> Result<(), Stop> {
        match units::holder_of_registration_id(self.store.conn(), rid.as_str(), unit_id) {
            Ok(None) => Ok(()),
            Ok(Some(holder)) => Err(Stop::Unit(
                Step::Attest,
                format!(
                    "this registration ID already belongs to unit {holder}; one identity cannot serve two units"
                ),
            )),
            Err(e) => Err(Stop::Station(error_text(&e))),
        }
    }

    /// The registration and device IDs of a non-TPM unit.
    fn ids(&self, values: &mut UnitValues) -> Result<(dps::RegistrationId, dps::DeviceId), Stop> {
        let rid = build::registration_id(&self.product, values)
            .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?;
        values.registration_id = rid.to_string();
        let did = build::device_id(&self.product, values)
            .map_err(|e| Stop::Unit(Step::Attest, error_text(&e)))?;
        Ok((rid, did))
    }

    /// Verified -> Recorded -> Queued in one transaction: the enrollment as the station means
    /// it (without secrets) and its outbox row.
    fn record(
        &mut self,
        unit_id: i64,
        actor: &str,
        values: &UnitValues,
        rid: dps::RegistrationId,
        device_id: dps::DeviceId,
        identity: impl FnOnce() -> Result<Identity, Stop>,
    ) -> Result<(), Stop> {
        let product = Arc::clone(&self.product);
        let target = product.profile.dps_target.clone();
        // Symmetric keys travel in the payload: it is sealed under the HSM's outbox key and
        // erased once DPS holds the enrollment; the recorded body never carries them.
        let mut secret = false;
        // The unit's identity goes into an individual enrollment only: a group member is
        // covered by its group's.
        let (kind, enrollment, payload) = match &product.profile.enrollment {
            Enrollment::Individual => {
                let identity = identity()?;
                secret = matches!(identity, Identity::Symmetric { .. });
                let e = build::individual_enrollment(
                    &product,
                    values,
                    rid.clone(),
                    device_id,
                    identity,
                );
                let payload = serde_json::to_vec(&outbox_dps::IndividualPayload {
                    target: target.clone(),
                    enrollment: e.clone(),
                });
                (outbox_dps::KIND_INDIVIDUAL, Some(e), payload)
            }
            Enrollment::Group { group_id } => (
                outbox_dps::KIND_GROUP_MEMBER,
                None,
                serde_json::to_vec(&outbox_dps::GroupMemberPayload {
                    target: target.clone(),
                    group_id: group_id.clone(),
                }),
            ),
        };
        let payload = zeroize::Zeroizing::new(
            payload.map_err(|e| Stop::Station(format!("encoding the enrollment: {e}")))?,
        );
        let cipher = if secret {
            Some(
                crate::keys::OutboxCipher::new(self.session)
                    .map_err(|e| Stop::Station(format!("the outbox key: {}", error_text(&e))))?,
            )
        } else {
            None
        };
        self.persist(Commit::Durable, |tx, st| {
            if let Some(e) = &enrollment {
                tx.prepare_cached(
                    "INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at)
                     VALUES (?1, ?2, 'individual', ?3, ?4, 'queued', ?5)",
                )
                .and_then(|mut st| {
                    st.execute(rusqlite::params![
                        unit_id,
                        target,
                        rid.as_str(),
                        build::without_secrets(e).to_string(),
                        now_utc()
                    ])
                })
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        Stop::Unit(
                            Step::Record,
                            format!(
                                "an enrollment for registration ID {rid} in DPS target {target} is already recorded for another unit"
                            ),
                        )
                    }
                    e => Stop::Station(format!("record enrollment: {e}")),
                })?;
            }
            units::transition(tx, st, actor, unit_id, UnitState::Recorded, &Facts::default())?;
            if secret {
                // The outbox row now holds the key (sealed): the kept copy goes.
                units::erase_key(tx, unit_id)?;
            }
            let outbox_id = crate::outbox::enqueue(
                tx,
                &crate::outbox::NewItem {
                    destination: &outbox_dps::destination(&target),
                    kind,
                    item_key: rid.as_str(),
                    unit_id: Some(unit_id),
                    payload: &payload,
                },
                cipher.as_ref().map(|c| c as &dyn crate::outbox::PayloadCipher),
            )?;
            units::transition(
                tx,
                st,
                actor,
                unit_id,
                UnitState::Queued { outbox_id },
                &Facts::default(),
            )?;
            Ok(())
        })
    }
}

/// After a commit ([`Worker::commit`]): waits for a durable one to reach the disk, timed as
/// the unit's disk-sync time, then passes the crash-test points of the states it entered.
fn settle(durable: Option<&crate::store::Durable>) -> Result<(), String> {
    if let Some(d) = durable {
        crate::timing::disk_sync(|| d.wait()).map_err(|e| error_text(&e))?;
    }
    units::committed();
    Ok(())
}

fn stop_text(s: &Stop) -> String {
    match s {
        Stop::Unit(step, r) => format!("{}: {r}", step.as_str()),
        Stop::Station(r) => r.clone(),
    }
}

/// A UNIQUE clash on a unit's registration ID is the unit's failure (two units, one ID), not
/// the station's.
fn unique_clash(e: UnitStoreError, step: Step) -> Stop {
    if let UnitStoreError::Store(StoreError::Sql {
        source: rusqlite::Error::SqliteFailure(f, Some(msg)),
        ..
    }) = &e
        && f.code == rusqlite::ErrorCode::ConstraintViolation
        && msg.contains("registration_id")
    {
        return Stop::Unit(
            step,
            "this registration ID already belongs to another unit; one identity cannot serve two units".into(),
        );
    }
    e.into()
}
