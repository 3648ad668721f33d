//! `station serve`'s own registration check: every `[registrations] check_every_s` it asks DPS
//! about the uploaded units that are due ([`check::due`]) and records the answers as
//! `station registrations` does ([`check::record`]: a unit DPS assigned turns `registered`,
//! audited under the actor `station`). The lot and unit pages then show units registering in
//! the field without anyone running the command.
//!
//! It runs on a thread of its own with its own connection for reads and the process's shared
//! writer for the recording, so a slow DPS never holds up a fixture or the uploader.

use std::time::Duration;

use super::check::{self, Finding, Schedule};
use crate::config::{Config, Delivery};
use crate::home::Home;
use crate::line::worker::error_text;
use crate::outbox::{AuditSealer, UploadSignal, until_stopped};
use crate::store::{Store, StoreError, Writer, now_utc, sql};

/// The actor of the audit entries the check writes.
pub const ACTOR: &str = "station";

/// Why the check could not start or a round failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Recording the answers.
    #[error("recording DPS's answers failed (nothing was recorded)")]
    Record(#[source] crate::line::units::UnitStoreError),
    /// No async runtime.
    #[error("the registration check cannot start its async runtime")]
    Runtime(#[source] std::io::Error),
}

/// What one round found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Units asked about (each once, whatever its number of targets).
    pub units: usize,
    /// Units that turned `registered` (or moved hub) in this round.
    pub registered: usize,
    /// Answers that were refusals.
    pub refused: usize,
    /// Answers without a hub yet.
    pub not_yet: usize,
    /// Per target that could not be asked: (target, why, units).
    pub not_asked: Vec<(String, String, usize)>,
}

/// The check, with its connection, writer and runtime.
pub struct Sweeper<'c> {
    home: Home,
    cfg: Config,
    store: Store,
    writer: Writer,
    rt: tokio::runtime::Runtime,
    sealer: Option<&'c AuditSealer<'c>>,
}

impl<'c> Sweeper<'c> {
    /// The check for the station in `home`.
    pub fn new(home: &Home, cfg: &Config) -> Result<Self, SweepError> {
        let db = home.resolve(&cfg.store.path);
        let store = Store::open(&db, &cfg.store)?;
        let writer = Writer::open(&db, &cfg.store)?;
        let rt = super::runtime().map_err(SweepError::Runtime)?;
        Ok(Self {
            home: home.clone(),
            cfg: cfg.clone(),
            store,
            writer,
            rt,
            sealer: None,
        })
    }

    /// Seals the audit checkpoint of each round's transaction with `sealer` (the HSM audit
    /// key). Best effort, as the uploader's: the hash chain covers the entries regardless.
    #[must_use]
    pub fn with_audit_sealer(mut self, sealer: &'c AuditSealer<'c>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// The targets the check asks: those the station reaches online (an export-only target's
    /// DPS is not reachable from here, and an unknown one has no client).
    fn askable(&self, target: &str) -> bool {
        self.cfg
            .dps
            .targets
            .get(target)
            .is_some_and(|t| t.delivery == Delivery::Online)
    }

    fn schedule(&self) -> Schedule {
        let r = &self.cfg.registrations;
        Schedule {
            every_s: r.check_every_s,
            longest_s: r.longest_wait_s.max(r.check_every_s),
            units: r.units_per_round.max(1),
        }
    }

    /// One round: asks about the units due now and records the answers. `None` when `signal`
    /// stopped it while DPS was being asked (nothing is recorded then).
    pub fn round(
        &mut self,
        signal: Option<&UploadSignal>,
    ) -> Result<Option<RoundReport>, SweepError> {
        let schedule = self.schedule();
        let candidates = check::due(self.store.conn(), &now_utc(), &schedule, |t| {
            self.askable(t)
        })
        .map_err(sql("find the units due for a registration check"))?;
        let mut report = RoundReport::default();
        if candidates.is_empty() {
            return Ok(Some(report));
        }
        let ask = check::ask(&self.home, &self.cfg, &candidates);
        let Some(answers) = until_stopped(&self.rt, signal, ask) else {
            return Ok(None);
        };
        // DPS answered nothing (it could not be reached): nothing to record, no write.
        let findings = match answers.iter().map(check::Answer::unasked).collect() {
            Some(unasked) => unasked,
            None => self.record(&candidates, &answers)?,
        };
        let mut units: Vec<i64> = candidates.iter().map(|c| c.unit_id).collect();
        units.dedup();
        report.units = units.len();
        for (c, f) in candidates.iter().zip(&findings) {
            match f {
                Finding::Assigned {
                    newly: true,
                    hub,
                    device_id,
                } => {
                    report.registered += 1;
                    tracing::info!(serial = %c.serial, target = %c.target, %hub, %device_id, "unit registered with DPS");
                }
                Finding::Assigned { .. } => {}
                Finding::Refused(why) => {
                    report.refused += 1;
                    tracing::warn!(serial = %c.serial, target = %c.target, reason = %why, "DPS refused the unit's registration");
                }
                Finding::NotYet(_) => report.not_yet += 1,
                Finding::NotAsked(why) | Finding::ExportOnly(why) => {
                    match report
                        .not_asked
                        .iter_mut()
                        .find(|(t, w, _)| *t == c.target && w == why)
                    {
                        Some(entry) => entry.2 += 1,
                        None => report.not_asked.push((c.target.clone(), why.clone(), 1)),
                    }
                }
            }
        }
        Ok(Some(report))
    }

    /// Records `answers` in one transaction on the shared writer, sealed, on disk before it
    /// returns.
    fn record(
        &self,
        candidates: &[check::Candidate],
        answers: &[check::Answer],
    ) -> Result<Vec<Finding>, SweepError> {
        let mut writer = self.writer.turn();
        let findings = check::record_committed(
            writer.conn_mut(),
            &self.cfg.station_id(),
            ACTOR,
            candidates,
            answers,
            |tx| {
                if let Some(seal) = self.sealer
                    && let Err(e) = seal(tx)
                {
                    tracing::warn!(error = %e, "registration check: audit checkpoint not sealed with the HSM key; the hash chain covers the entries");
                }
            },
        )
        .map_err(SweepError::Record)?;
        let durable = writer.durable();
        drop(writer);
        durable.wait()?;
        crate::line::units::committed();
        Ok(findings)
    }

    /// Rounds every `check_every_s` until `signal` stops it, the first `check_every_s` after
    /// the start (a restarted line gets its fixtures going first).
    pub fn run(mut self, signal: &UploadSignal) {
        let every = Duration::from_secs(self.cfg.registrations.check_every_s.max(1));
        loop {
            // The sleep is made inside the runtime (async block): its timer needs it.
            until_stopped(&self.rt, Some(signal), async {
                tokio::time::sleep(every).await;
            });
            if signal.is_stopped() {
                break;
            }
            match self.round(Some(signal)) {
                Ok(Some(r)) if r.units > 0 => {
                    tracing::info!(
                        asked = r.units,
                        registered = r.registered,
                        refused = r.refused,
                        not_yet = r.not_yet,
                        "registration check"
                    );
                    for (target, why, units) in &r.not_asked {
                        tracing::warn!(%target, units, reason = %why, "registration check: DPS could not be asked; the units stay due");
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %error_text(&e), "registration check failed; the units stay due");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A home whose DPS target `local` is online but unreachable (nothing listens on its
    /// port), and `plant` is delivered by export. Uploaded: Z and A, enrolled in `local` (Z's
    /// stored registration ID one DPS would refuse), and B in `plant`.
    fn station() -> (tempfile::TempDir, Home, Config) {
        let d = tempfile::tempdir().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        std::fs::write(
            d.path().join("cs"),
            format!(
                "HostName=127.0.0.1:{port};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="
            ),
        )
        .unwrap();
        std::fs::write(
            d.path().join("station.toml"),
            "[dps.targets.local]\nconnection_string_file = \"cs\"\nid_scope = \"0ne00000001\"\n\
             [dps.targets.plant]\ndelivery = \"export\"\nid_scope = \"0ne00000002\"\n",
        )
        .unwrap();
        let home = Home::new(d.path());
        let cfg = Config::load(&home).unwrap().config;
        let store = Store::create(&home.resolve(&cfg.store.path), &cfg.store).unwrap();
        store
            .conn()
            .execute_batch(
                "INSERT INTO lots (id, product, quantity, status, opened_at, opened_by)
                   VALUES ('L1', 'p', 5, 'open', 't', 'a');
                 INSERT INTO units (id, serial, lot_id, product, registration_id, state, state_data, created_at, updated_at) VALUES
                   (0, 'Z', 'L1', 'p', 'not an id!', 'uploaded', '{\"etag\":\"e\"}', 't', 't'),
                   (1, 'A', 'L1', 'p', 'a-1', 'uploaded', '{\"etag\":\"e\"}', 't', 't'),
                   (2, 'B', 'L1', 'p', 'b-1', 'uploaded', '{\"etag\":\"e\"}', 't', 't');
                 INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
                   (0, 'local', 'individual', 'z', '{}', 'uploaded', 't'),
                   (1, 'local', 'individual', 'a-1', '{}', 'uploaded', 't'),
                   (2, 'plant', 'individual', 'b-1', '{}', 'uploaded', 't');",
            )
            .unwrap();
        (d, home, cfg)
    }

    #[test]
    fn a_round_that_cannot_reach_dps_records_nothing_says_why_and_leaves_export_targets_alone() {
        let (_d, home, cfg) = station();
        let mut sweeper = Sweeper::new(&home, &cfg).unwrap();
        let report = sweeper.round(None).unwrap().unwrap();
        assert_eq!(
            report.units, 2,
            "the units of the online target: {report:?}"
        );
        assert_eq!(report.registered + report.refused + report.not_yet, 0);
        // Z's stored ID is its own answer; A was still tried, and says why DPS could not be
        // asked.
        let reasons: Vec<(&str, &str, usize)> = report
            .not_asked
            .iter()
            .map(|(t, w, n)| (t.as_str(), w.as_str(), *n))
            .collect();
        assert_eq!(reasons.len(), 2, "{report:?}");
        assert!(
            reasons[0]
                .1
                .starts_with("not an id! is not a DPS registration ID"),
            "{reasons:?}"
        );
        let (target, why, units) = reasons[1];
        assert_eq!((target, units), ("local", 1));
        assert!(!why.contains("registration ID"), "{why}");
        assert!(!why.contains("c2VjcmV0"), "no key in the reason: {why}");
        let conn = sweeper.store.conn();
        let recorded: i64 = conn
            .query_row("SELECT count(*) FROM dps_registrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(recorded, 0, "nothing recorded for units not asked");
        let states: Vec<String> = conn
            .prepare("SELECT state FROM units ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(states, ["uploaded", "uploaded", "uploaded"]);
        // The units stay due: the next round asks about them again.
        let schedule = sweeper.schedule();
        let due = check::due(conn, &now_utc(), &schedule, |t| sweeper.askable(t)).unwrap();
        let due: Vec<(&str, &str)> = due
            .iter()
            .map(|c| (c.serial.as_str(), c.target.as_str()))
            .collect();
        assert_eq!(due, [("Z", "local"), ("A", "local")]);
    }
}
