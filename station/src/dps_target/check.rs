//! The registration check (`station registrations`): asks DPS which passed units have
//! registered. A unit DPS assigned a hub moves `uploaded -> registered` (audited, with the hub
//! and device ID); for every unit DPS answered about, its answer is kept in
//! `dps_registrations`, so the engineer sees which units have not registered yet, or were
//! refused and why, without asking DPS unit by unit.
//!
//! DPS is asked with the service API (one `GET registrations/{id}` per unit and target, up to
//! [`IN_FLIGHT`] at once, within the target's `ops_per_min`). A target that cannot be reached
//! is reported for its units and nothing is recorded for them.

use std::collections::BTreeMap;
use std::time::Duration;

use dps::wire::{DeviceRegistrationState, RegistrationStatus};
use rusqlite::{Connection, Transaction, params};

use super::registration::describe;
use crate::config::Config;
use crate::home::Home;
use crate::ids::StationId;
use crate::line::state::UnitState;
use crate::line::units::{self, Facts, UnitStoreError};
use crate::line::worker::error_text;
use crate::store::{now_utc, sql};

/// Requests to one DPS target at a time.
pub const IN_FLIGHT: usize = 8;

/// Which units to ask about: passed units DPS holds the enrollment of (`uploaded`), and with
/// `recheck` those already `registered` too.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this lot.
    pub lot: Option<String>,
    /// Only these serials (empty: all).
    pub serials: Vec<String>,
    /// Also units already registered (DPS may have moved them since).
    pub recheck: bool,
}

/// A unit to ask about, in one DPS target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The unit's row.
    pub unit_id: i64,
    /// Serial.
    pub serial: String,
    /// Registration ID.
    pub registration_id: String,
    /// The DPS target.
    pub target: String,
}

/// DPS's answer about one unit.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The registration record.
    Record(Box<DeviceRegistrationState>),
    /// No registration record: the unit has not registered.
    None,
    /// DPS was not asked or did not answer: why.
    NotAsked(String),
    /// The target is delivered by export: DPS is not reachable from the station.
    ExportOnly(String),
}

impl Answer {
    /// What was found when DPS gave no answer to record (not asked, or export-only); `None`
    /// for an answer to record.
    #[must_use]
    pub fn unasked(&self) -> Option<Finding> {
        match self {
            Answer::NotAsked(why) => Some(Finding::NotAsked(why.clone())),
            Answer::ExportOnly(why) => Some(Finding::ExportOnly(why.clone())),
            Answer::Record(_) | Answer::None => None,
        }
    }
}

/// What the check found for one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// DPS assigned the unit a hub.
    Assigned {
        /// The hub.
        hub: String,
        /// The device ID there.
        device_id: String,
        /// Whether the unit became `registered` (or moved hub) with this check.
        newly: bool,
    },
    /// The unit tried and DPS refused it (`failed`, `disabled`): DPS's words.
    Refused(String),
    /// No registration yet, or one still being assigned.
    NotYet(String),
    /// DPS could not be asked: why.
    NotAsked(String),
    /// The unit's target is delivered by export; ask where DPS is reachable.
    ExportOnly(String),
}

/// How many findings of each kind a check made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// DPS assigned a hub.
    pub assigned: usize,
    /// Of those, units that became registered (or moved hub) with this check.
    pub newly: usize,
    /// DPS refused the unit.
    pub refused: usize,
    /// Not registered yet.
    pub not_yet: usize,
    /// DPS could not be asked.
    pub not_asked: usize,
    /// In a target delivered by export.
    pub export_only: usize,
}

impl Tally {
    /// The counts of `findings`.
    #[must_use]
    pub fn of(findings: &[Finding]) -> Self {
        let mut t = Self::default();
        for f in findings {
            match f {
                Finding::Assigned { newly, .. } => {
                    t.assigned += 1;
                    t.newly += usize::from(*newly);
                }
                Finding::Refused(_) => t.refused += 1,
                Finding::NotYet(_) => t.not_yet += 1,
                Finding::NotAsked(_) => t.not_asked += 1,
                Finding::ExportOnly(_) => t.export_only += 1,
            }
        }
        t
    }
}

impl Selection {
    /// The chosen serials as a JSON array for SQLite's `json_each`, or `None` for all.
    fn serials_json(&self) -> Option<String> {
        (!self.serials.is_empty())
            .then(|| serde_json::Value::from(self.serials.clone()).to_string())
    }
}

/// The units `sel` names, one entry per DPS target each was enrolled with, oldest first.
pub fn candidates(conn: &Connection, sel: &Selection) -> Result<Vec<Candidate>, rusqlite::Error> {
    let serials = sel.serials_json();
    let units: Vec<(i64, String, String)> = conn
        .prepare(
            "SELECT id, serial, registration_id FROM units
             WHERE registration_id IS NOT NULL
               AND (state = 'uploaded' OR (?1 AND state = 'registered'))
               AND (?2 IS NULL OR lot_id = ?2)
               AND (?3 IS NULL OR serial IN (SELECT value FROM json_each(?3)))
             ORDER BY id",
        )?
        .query_map(params![sel.recheck, sel.lot, serials], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(units.len());
    for (unit_id, serial, registration_id) in units {
        for target in crate::line::report::dps_targets(conn, unit_id)? {
            out.push(Candidate {
                unit_id,
                serial: serial.clone(),
                registration_id: registration_id.clone(),
                target,
            });
        }
    }
    Ok(out)
}

/// The selected units that passed the line but whose enrollment DPS does not hold yet
/// (`recorded` or `queued`): serial and state, oldest first.
pub fn not_uploaded(
    conn: &Connection,
    sel: &Selection,
) -> Result<Vec<(String, String)>, rusqlite::Error> {
    let serials = sel.serials_json();
    conn.prepare(
        "SELECT serial, state FROM units
         WHERE state IN ('recorded', 'queued')
           AND (?1 IS NULL OR lot_id = ?1)
           AND (?2 IS NULL OR serial IN (SELECT value FROM json_each(?2)))
         ORDER BY id",
    )?
    .query_map(params![sel.lot, serials], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// When `station serve`'s check asks about a unit that has not registered yet
/// (`[registrations]`, see `dps_target::sweep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The shortest wait between two checks of a unit, in seconds.
    pub every_s: u64,
    /// The longest, in seconds.
    pub longest_s: u64,
    /// At most this many units a round.
    pub units: usize,
}

/// The uploaded units due for a check at `now` (RFC 3339), each in the targets `askable`
/// admits (units with none are passed over), those due longest first, at most
/// `schedule.units` of them. A unit never answered about is due at once. After that it
/// waits for as long as it had waited since its upload when DPS last answered, at least
/// `every_s` and at most `longest_s`: the waits about double, so a unit that ships to a
/// warehouse is not asked about every few minutes for months. The last answer is the oldest
/// among the unit's targets; a round in which DPS could not be reached records nothing, so
/// such units stay due.
pub fn due(
    conn: &Connection,
    now: &str,
    schedule: &Schedule,
    askable: impl Fn(&str) -> bool,
) -> Result<Vec<Candidate>, rusqlite::Error> {
    let every = i64::try_from(schedule.every_s).unwrap_or(i64::MAX);
    let longest = i64::try_from(schedule.longest_s).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare(
        "WITH w AS (
             SELECT u.id, u.serial, u.registration_id, d.last,
                    d.last + max(?2, min(?3, coalesce(d.last - unixepoch(u.updated_at), 0))) AS next
             FROM units u
             LEFT JOIN (SELECT unit_id, min(unixepoch(checked_at)) AS last
                        FROM dps_registrations GROUP BY unit_id) d ON d.unit_id = u.id
             WHERE u.state = 'uploaded' AND u.registration_id IS NOT NULL)
         SELECT id, serial, registration_id FROM w
         WHERE last IS NULL OR next <= unixepoch(?1)
         ORDER BY last IS NOT NULL, next, id",
    )?;
    let mut rows = stmt.query(params![now, every, longest])?;
    let mut out = Vec::new();
    let mut units = 0;
    while units < schedule.units {
        let Some(row) = rows.next()? else { break };
        let (unit_id, serial, registration_id): (i64, String, String) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        let mut any = false;
        for target in crate::line::report::dps_targets(conn, unit_id)? {
            if askable(&target) {
                any = true;
                out.push(Candidate {
                    unit_id,
                    serial: serial.clone(),
                    registration_id: registration_id.clone(),
                    target,
                });
            }
        }
        units += usize::from(any);
    }
    Ok(out)
}

/// Asks DPS about each candidate; the answers come in the candidates' order.
pub async fn ask(home: &Home, cfg: &Config, candidates: &[Candidate]) -> Vec<Answer> {
    let mut by_target: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        by_target.entry(&c.target).or_default().push(i);
    }
    let mut answers: Vec<Option<Answer>> = vec![None; candidates.len()];
    for (target, idx) in by_target {
        let client = super::client_with(home, cfg, target, |o| {
            // A check is asked for by someone waiting: a few quick retries (a 429's
            // Retry-After is still honoured), not the uploader's patient ones.
            o.retry.max_attempts = 3;
            o.retry.min_backoff = Duration::from_secs(1);
            o.request_timeout = Duration::from_secs(15);
        });
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                let why = error_text(&e);
                let export = matches!(e, super::TargetError::ExportOnly(_));
                for i in idx {
                    answers[i] = Some(if export {
                        Answer::ExportOnly(why.clone())
                    } else {
                        Answer::NotAsked(why.clone())
                    });
                }
                continue;
            }
        };
        let rids: Vec<&str> = idx
            .iter()
            .map(|&i| candidates[i].registration_id.as_str())
            .collect();
        for (i, a) in idx.into_iter().zip(ask_client(&client, &rids).await) {
            answers[i] = Some(a);
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Answer::NotAsked("the lookup did not finish".into())))
        .collect()
}

/// Asks DPS through `client` about each of `registration_ids` (up to [`IN_FLIGHT`] at once);
/// the answers come in their order. An ID DPS would not take is its own answer; the first
/// valid one is asked alone first, so that a DPS that cannot be reached is reported for each
/// unit rather than tried once per unit.
pub async fn ask_client(
    client: &dps::client::ServiceClient,
    registration_ids: &[&str],
) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = vec![None; registration_ids.len()];
    let ids: Vec<(usize, dps::RegistrationId)> = registration_ids
        .iter()
        .enumerate()
        .filter_map(|(i, rid)| match dps::RegistrationId::new(*rid) {
            Ok(id) => Some((i, id)),
            Err(e) => {
                answers[i] = Some(Answer::NotAsked(format!(
                    "{rid} is not a DPS registration ID: {e}"
                )));
                None
            }
        })
        .collect();
    if let Some(((probe, probe_id), rest)) = ids.split_first() {
        let first = ask_one(client, probe_id).await;
        if let Answer::NotAsked(why) = &first {
            for (i, _) in &ids {
                answers[*i] = Some(Answer::NotAsked(why.clone()));
            }
        } else {
            answers[*probe] = Some(first);
            let mut pending = rest.iter().cloned();
            let mut running = tokio::task::JoinSet::new();
            loop {
                while running.len() < IN_FLIGHT {
                    let Some((i, id)) = pending.next() else { break };
                    let client = client.clone();
                    running.spawn(async move { (i, ask_one(&client, &id).await) });
                }
                match running.join_next().await {
                    Some(Ok((i, a))) => answers[i] = Some(a),
                    Some(Err(e)) => tracing::error!(error = %e, "a registration lookup panicked"),
                    None => break,
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Answer::NotAsked("the lookup did not finish".into())))
        .collect()
}

async fn ask_one(client: &dps::client::ServiceClient, id: &dps::RegistrationId) -> Answer {
    match client.get_registration_state(id).await {
        Ok(rec) => Answer::Record(Box::new(rec)),
        Err(e) if e.status() == Some(404) => Answer::None,
        Err(e) => Answer::NotAsked(error_text(&e)),
    }
}

/// Records the answers in the caller's transaction: each answered unit's row in
/// `dps_registrations`, and each unit DPS assigned moved to `registered` (from `uploaded`, or
/// from `registered` at another hub or device ID). Returns what was found for each candidate.
pub fn record(
    tx: &Transaction<'_>,
    station: &StationId,
    actor: &str,
    candidates: &[Candidate],
    answers: &[Answer],
) -> Result<Vec<Finding>, UnitStoreError> {
    let now = now_utc();
    let mut out = Vec::with_capacity(candidates.len());
    for (c, a) in candidates.iter().zip(answers) {
        if let Some(f) = a.unasked() {
            out.push(f);
            continue;
        }
        let rec = match a {
            Answer::Record(rec) => Some(rec.as_ref()),
            _ => None,
        };
        store_answer(tx, c, rec, &now)?;
        let finding = match rec {
            None => Finding::NotYet(format!("{} has not registered yet", c.registration_id)),
            Some(r) => match (r.status, &r.assigned_hub, &r.device_id) {
                (Some(RegistrationStatus::Assigned), Some(hub), Some(device_id)) => {
                    let newly = enter_registered(tx, station, actor, c.unit_id, hub, device_id)?;
                    Finding::Assigned {
                        hub: hub.clone(),
                        device_id: device_id.clone(),
                        newly,
                    }
                }
                (Some(RegistrationStatus::Failed | RegistrationStatus::Disabled), ..) => {
                    Finding::Refused(describe(r))
                }
                _ => Finding::NotYet(describe(r)),
            },
        };
        out.push(finding);
    }
    Ok(out)
}

/// [`record`] in a transaction of its own on `conn`, committed; `before_commit` runs in it
/// after the answers are written (the registration check seals the audit checkpoint there).
pub fn record_committed(
    conn: &mut Connection,
    station: &StationId,
    actor: &str,
    candidates: &[Candidate],
    answers: &[Answer],
    before_commit: impl FnOnce(&Transaction<'_>),
) -> Result<Vec<Finding>, UnitStoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("begin the registration check's transaction"))?;
    let findings = record(&tx, station, actor, candidates, answers)?;
    before_commit(&tx);
    tx.commit()
        .map_err(sql("commit the registration check's transaction"))?;
    Ok(findings)
}

fn store_answer(
    tx: &Transaction<'_>,
    c: &Candidate,
    rec: Option<&DeviceRegistrationState>,
    now: &str,
) -> Result<(), UnitStoreError> {
    let status = rec
        .and_then(|r| r.status)
        .map_or("none", RegistrationStatus::as_str);
    tx.prepare_cached(
        "INSERT INTO dps_registrations (unit_id, dps_target, registration_id, status,
             assigned_hub, device_id, substatus, error_message, dps_updated_at, checked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (unit_id, dps_target) DO UPDATE SET registration_id = excluded.registration_id,
             status = excluded.status, assigned_hub = excluded.assigned_hub,
             device_id = excluded.device_id, substatus = excluded.substatus,
             error_message = excluded.error_message, dps_updated_at = excluded.dps_updated_at,
             checked_at = excluded.checked_at",
    )
    .and_then(|mut st| {
        st.execute(params![
            c.unit_id,
            c.target,
            c.registration_id,
            status,
            rec.and_then(|r| r.assigned_hub.as_deref()),
            rec.and_then(|r| r.device_id.as_deref()),
            rec.and_then(|r| r.substatus).map(|s| s.as_str()),
            rec.and_then(|r| r.error_message.as_deref()),
            rec.and_then(|r| r.last_updated_date_time_utc)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            now,
        ])
    })
    .map_err(sql("record DPS's registration answer"))?;
    Ok(())
}

/// Moves the unit to `registered` at `hub` as `device_id`, unless it is there already.
/// Returns whether it moved.
fn enter_registered(
    tx: &Transaction<'_>,
    station: &StationId,
    actor: &str,
    unit_id: i64,
    hub: &str,
    device_id: &str,
) -> Result<bool, UnitStoreError> {
    let unit = units::by_id(tx, unit_id)?.ok_or(UnitStoreError::NoUnit(unit_id))?;
    let next = UnitState::Registered {
        hub: hub.to_owned(),
        device_id: device_id.to_owned(),
    };
    match &unit.state {
        UnitState::Uploaded { .. } => {}
        UnitState::Registered { .. } if unit.state != next => {}
        // Already there, or moved on meanwhile (a retry superseded it): left as it is.
        _ => return Ok(false),
    }
    units::transition(tx, station, actor, unit_id, next, &Facts::default())?;
    Ok(true)
}

/// Where the passed units stand with DPS, as the checks recorded it (the upload page shows it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Units DPS holds the enrollment of and that have not registered (state `uploaded`).
    pub waiting: i64,
    /// Units registered.
    pub registered: i64,
    /// DPS's last answers, per target and status.
    pub answers: Vec<AnswerCount>,
    /// Units whose latest answer from DPS was a refusal (`failed`, `disabled`; a registered
    /// unit too, when DPS refuses it since), the latest answers first, at most
    /// [`REFUSED_SHOWN`].
    pub refused: Vec<RefusedUnit>,
}

/// How many units DPS last answered about with one status, in one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerCount {
    /// The DPS target.
    pub target: String,
    /// DPS's registration status, or `none` (no registration yet).
    pub status: String,
    /// Units.
    pub units: i64,
    /// The latest of those answers (UTC).
    pub last_checked: String,
}

/// A unit DPS refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedUnit {
    /// Serial.
    pub serial: String,
    /// The DPS target.
    pub target: String,
    /// `failed` or `disabled`.
    pub status: String,
    /// DPS's reason.
    pub message: String,
    /// When DPS said so (UTC).
    pub checked_at: String,
}

/// Refused units listed by [`summary`].
pub const REFUSED_SHOWN: i64 = 50;

/// Where the passed units stand with DPS.
pub fn summary(conn: &Connection) -> Result<Summary, rusqlite::Error> {
    let (waiting, registered) = conn.query_row(
        "SELECT count(*) FILTER (WHERE state = 'uploaded'),
                count(*) FILTER (WHERE state = 'registered')
         FROM units WHERE state IN ('uploaded', 'registered')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let answers = conn
        .prepare(
            "SELECT r.dps_target, r.status, count(*), max(r.checked_at)
             FROM dps_registrations r JOIN units u ON u.id = r.unit_id
             WHERE u.state IN ('uploaded', 'registered')
             GROUP BY r.dps_target, r.status ORDER BY r.dps_target, r.status",
        )?
        .query_map([], |r| {
            Ok(AnswerCount {
                target: r.get(0)?,
                status: r.get(1)?,
                units: r.get(2)?,
                last_checked: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let refused = conn
        .prepare(
            "SELECT u.serial, r.dps_target, r.status, coalesce(r.error_message, ''), r.checked_at
             FROM dps_registrations r JOIN units u ON u.id = r.unit_id
             WHERE u.state IN ('uploaded', 'registered') AND r.status IN ('failed', 'disabled')
             ORDER BY r.checked_at DESC, u.serial LIMIT ?1",
        )?
        .query_map([REFUSED_SHOWN], |r| {
            Ok(RefusedUnit {
                serial: r.get(0)?,
                target: r.get(1)?,
                status: r.get(2)?,
                message: r.get(3)?,
                checked_at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Summary {
        waiting,
        registered,
        answers,
        refused,
    })
}

/// What DPS last said about a unit's registration, as the check recorded it: per DPS target,
/// `(target, answer in words, checked at)`; empty when the unit was never checked.
pub fn last_answers(
    conn: &Connection,
    unit_id: i64,
) -> Result<Vec<(String, String, String)>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT dps_target, status, coalesce(assigned_hub, ''), coalesce(device_id, ''),
                coalesce(error_message, ''), checked_at
         FROM dps_registrations WHERE unit_id = ?1 ORDER BY dps_target",
    )?
    .query_map([unit_id], |r| {
        let status: String = r.get(1)?;
        let hub: String = r.get(2)?;
        let device: String = r.get(3)?;
        let error: String = r.get(4)?;
        let mut text = status.clone();
        if !hub.is_empty() {
            text.push_str(&format!(" to {hub} as device {device}"));
        }
        if !error.is_empty() {
            text.push_str(&format!(": {error}"));
        }
        Ok((r.get(0)?, text, r.get(5)?))
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store;

    /// Units A (uploaded, lot L1, individual enrollment in `local`), B (uploaded, lot L2, a
    /// group member queued for `plant`), C (registered, L1), D (queued, L1).
    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::create(&d.path().join("t.db"), &StoreConfig::default()).unwrap();
        s.conn()
            .execute_batch(
                "INSERT INTO lots (id, product, quantity, status, opened_at, opened_by)
                   VALUES ('L1', 'p', 5, 'open', 't', 'a'), ('L2', 'p', 5, 'open', 't', 'a');
                 INSERT INTO units (id, serial, lot_id, product, registration_id, state, state_data, created_at, updated_at) VALUES
                   (1, 'A', 'L1', 'p', 'a-1', 'uploaded', '{\"etag\":\"e\"}', 't', 't'),
                   (2, 'B', 'L2', 'p', 'b-1', 'uploaded', '{\"etag\":\"e\"}', 't', 't'),
                   (3, 'C', 'L1', 'p', 'c-1', 'registered', '{\"hub\":\"hub-a\",\"device_id\":\"c-1\"}', 't', 't'),
                   (4, 'D', 'L1', 'p', 'd-1', 'queued', '{\"outbox_id\":9}', 't', 't');
                 INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at) VALUES
                   (1, 'local', 'individual', 'a-1', '{}', 'uploaded', 't'),
                   (3, 'local', 'individual', 'c-1', '{}', 'uploaded', 't'),
                   (4, 'local', 'individual', 'd-1', '{}', 'queued', 't');
                 INSERT INTO outbox (destination, kind, item_key, created_at, unit_id, state) VALUES
                   ('dps:plant', 'dps-group-member', 'b-1', 't', 2, 'done');",
            )
            .unwrap();
        (d, s)
    }

    fn picked(s: &Store, sel: &Selection) -> Vec<(String, String)> {
        candidates(s.conn(), sel)
            .unwrap()
            .into_iter()
            .map(|c| (c.serial, c.target))
            .collect()
    }

    fn pair(serial: &str, target: &str) -> (String, String) {
        (serial.into(), target.into())
    }

    #[test]
    fn the_check_asks_about_uploaded_units_and_group_members_in_their_own_target() {
        let (_d, s) = store();
        assert_eq!(
            picked(&s, &Selection::default()),
            [pair("A", "local"), pair("B", "plant")]
        );
        let lot = Selection {
            lot: Some("L1".into()),
            ..Selection::default()
        };
        assert_eq!(picked(&s, &lot), [pair("A", "local")]);
        let recheck = Selection {
            recheck: true,
            ..Selection::default()
        };
        assert_eq!(
            picked(&s, &recheck),
            [pair("A", "local"), pair("B", "plant"), pair("C", "local")]
        );
        // A named unit that DPS does not hold yet (D is queued) is not asked about.
        let named = Selection {
            serials: vec!["C".into(), "D".into(), "B".into()],
            recheck: true,
            ..Selection::default()
        };
        assert_eq!(picked(&s, &named), [pair("B", "plant"), pair("C", "local")]);
    }

    /// Uploaded at `uploaded`; DPS last answered at `checked` (per target), if ever.
    fn unit_waiting(s: &Store, id: i64, uploaded: &str, checked: &[(&str, &str)]) {
        let serial = format!("W{id}");
        s.conn()
            .execute(
                "INSERT INTO units (id, serial, lot_id, product, registration_id, state, state_data, created_at, updated_at)
                 VALUES (?1, ?2, 'L1', 'p', lower(?2), 'uploaded', '{\"etag\":\"e\"}', ?3, ?3)",
                params![id, serial, uploaded],
            )
            .unwrap();
        for target in ["local", "plant"] {
            s.conn()
                .execute(
                    "INSERT INTO enrollments (unit_id, dps_target, kind, enrollment_id, body, status, updated_at)
                     VALUES (?1, ?2, 'individual', lower(?3), '{}', 'uploaded', ?4)",
                    params![id, target, serial, uploaded],
                )
                .unwrap();
        }
        for (target, at) in checked {
            s.conn()
                .execute(
                    "INSERT INTO dps_registrations (unit_id, dps_target, registration_id, status, checked_at)
                     VALUES (?1, ?2, lower(?3), 'none', ?4)",
                    params![id, target, serial, at],
                )
                .unwrap();
        }
    }

    #[test]
    fn a_unit_waits_longer_between_checks_the_longer_it_has_waited() {
        let (_d, s) = store();
        s.conn()
            .execute_batch("DELETE FROM enrollments; DELETE FROM outbox; DELETE FROM units;")
            .unwrap();
        let day = "2026-12-01T";
        // Never asked about: due at once.
        unit_waiting(&s, 10, &format!("{day}11:59:00.000Z"), &[]);
        // Uploaded 10:00, answered 10:01: waits 5 min (the floor), due 10:06.
        unit_waiting(
            &s,
            11,
            &format!("{day}10:00:00.000Z"),
            &[
                ("local", &format!("{day}10:01:00.000Z")),
                ("plant", &format!("{day}10:01:00.000Z")),
            ],
        );
        // Uploaded 09:30, answered 10:00: waits 30 min, due 10:30.
        unit_waiting(
            &s,
            12,
            &format!("{day}09:30:00.000Z"),
            &[
                ("local", &format!("{day}10:00:00.000Z")),
                ("plant", &format!("{day}10:00:00.000Z")),
            ],
        );
        // Uploaded a month before, answered 11:00: waits the longest (1 h here), due 12:00.
        unit_waiting(
            &s,
            13,
            "2026-11-01T00:00:00.000Z",
            &[
                ("local", &format!("{day}11:00:00.000Z")),
                ("plant", &format!("{day}11:00:00.000Z")),
            ],
        );
        // One target answered just now, the other at 10:01 (DPS not reached since): the older
        // answer counts, due 10:06.
        unit_waiting(
            &s,
            14,
            &format!("{day}10:00:00.000Z"),
            &[
                ("local", &format!("{day}11:59:00.000Z")),
                ("plant", &format!("{day}10:01:00.000Z")),
            ],
        );
        let schedule = Schedule {
            every_s: 300,
            longest_s: 3600,
            units: 100,
        };
        let at = |time: &str,
                  schedule: &Schedule,
                  askable: &dyn Fn(&str) -> bool|
         -> Vec<(String, String)> {
            due(s.conn(), &format!("{day}{time}Z"), schedule, askable)
                .unwrap()
                .into_iter()
                .map(|c| (c.serial, c.target))
                .collect()
        };
        let all = |_: &str| true;
        let units = |found: Vec<(String, String)>| {
            let mut u: Vec<String> = found.into_iter().map(|(s, _)| s).collect();
            u.dedup();
            u
        };
        assert_eq!(units(at("10:05:00", &schedule, &all)), ["W10"]);
        assert_eq!(
            units(at("10:06:00", &schedule, &all)),
            ["W10", "W11", "W14"]
        );
        assert_eq!(
            units(at("10:29:59", &schedule, &all)),
            ["W10", "W11", "W14"]
        );
        assert_eq!(
            units(at("11:59:59", &schedule, &all)),
            ["W10", "W11", "W14", "W12"]
        );
        assert_eq!(
            units(at("12:00:00", &schedule, &all)),
            ["W10", "W11", "W14", "W12", "W13"]
        );
        // Each unit in each of its targets, unless a target is not to be asked (export).
        assert_eq!(
            at("10:06:00", &schedule, &|t: &str| t == "local"),
            [
                pair("W10", "local"),
                pair("W11", "local"),
                pair("W14", "local")
            ]
        );
        // At most `units` a round, never-asked units first, then the longest due.
        let two = Schedule {
            units: 2,
            ..schedule
        };
        assert_eq!(units(at("12:00:00", &two, &all)), ["W10", "W11"]);
        // A unit none of whose targets may be asked does not take a place in the round.
        let plant_only_for_w10 = |t: &str| t == "local";
        s.conn()
            .execute(
                "DELETE FROM enrollments WHERE unit_id = 10 AND dps_target = 'local'",
                [],
            )
            .unwrap();
        assert_eq!(
            units(at("12:00:00", &two, &plant_only_for_w10)),
            ["W11", "W14"]
        );
    }

    #[test]
    fn the_summary_counts_units_and_answers_and_lists_the_refused() {
        let (_d, mut s) = store();
        assert_eq!(
            summary(s.conn()).unwrap(),
            Summary {
                waiting: 2,
                registered: 1,
                ..Summary::default()
            }
        );
        let all = candidates(s.conn(), &Selection::default()).unwrap();
        let refused = Answer::Record(Box::new(DeviceRegistrationState {
            status: Some(RegistrationStatus::Disabled),
            error_message: Some("the individual enrollment a-1 is disabled".into()),
            ..DeviceRegistrationState::default()
        }));
        let station = StationId::new("s1").unwrap();
        let tx = s.conn_mut().transaction().unwrap();
        record(&tx, &station, "eve", &all, &[refused, Answer::None]).unwrap();
        tx.commit().unwrap();
        let sum = summary(s.conn()).unwrap();
        assert_eq!((sum.waiting, sum.registered), (2, 1));
        let answers: Vec<(&str, &str, i64)> = sum
            .answers
            .iter()
            .map(|a| (a.target.as_str(), a.status.as_str(), a.units))
            .collect();
        assert_eq!(answers, [("local", "disabled", 1), ("plant", "none", 1)]);
        assert_eq!(sum.refused.len(), 1);
        let r = &sum.refused[0];
        assert_eq!(
            (r.serial.as_str(), r.target.as_str(), r.status.as_str()),
            ("A", "local", "disabled")
        );
        assert_eq!(r.message, "the individual enrollment a-1 is disabled");
    }

    #[test]
    fn answers_are_recorded_and_an_assigned_unit_becomes_registered_once() {
        let (_d, mut s) = store();
        let all = candidates(
            s.conn(),
            &Selection {
                recheck: true,
                ..Selection::default()
            },
        )
        .unwrap();
        let assigned = |hub: &str, device: &str| {
            Answer::Record(Box::new(DeviceRegistrationState {
                status: Some(RegistrationStatus::Assigned),
                assigned_hub: Some(hub.into()),
                device_id: Some(device.into()),
                ..DeviceRegistrationState::default()
            }))
        };
        let answers = [
            assigned("hub-b", "a-1"),
            Answer::None,
            // C is where the station recorded it: nothing moves.
            assigned("hub-a", "c-1"),
        ];
        let station = StationId::new("s1").unwrap();
        let tx = s.conn_mut().transaction().unwrap();
        let found = record(&tx, &station, "eve", &all, &answers).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            found,
            [
                Finding::Assigned {
                    hub: "hub-b".into(),
                    device_id: "a-1".into(),
                    newly: true
                },
                Finding::NotYet("b-1 has not registered yet".into()),
                Finding::Assigned {
                    hub: "hub-a".into(),
                    device_id: "c-1".into(),
                    newly: false
                },
            ]
        );
        let a = units::by_id(s.conn(), 1).unwrap().unwrap();
        assert_eq!(
            a.state,
            UnitState::Registered {
                hub: "hub-b".into(),
                device_id: "a-1".into()
            }
        );
        let rows: Vec<(i64, String, String)> = s
            .conn()
            .prepare("SELECT unit_id, dps_target, status FROM dps_registrations ORDER BY unit_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            [
                (1, "local".into(), "assigned".into()),
                (2, "plant".into(), "none".into()),
                (3, "local".into(), "assigned".into())
            ]
        );
        let audited: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM audit_log WHERE event = 'unit.registered' AND actor = 'eve'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(audited, 1, "only A moved");

        // A refusal later is recorded as DPS's answer; a unit DPS could not be asked about
        // keeps what was recorded before.
        let refused = Answer::Record(Box::new(DeviceRegistrationState {
            status: Some(RegistrationStatus::Disabled),
            error_message: Some("the individual enrollment a-1 is disabled".into()),
            ..DeviceRegistrationState::default()
        }));
        let tx = s.conn_mut().transaction().unwrap();
        let found = record(
            &tx,
            &station,
            "eve",
            &all[..2],
            &[refused, Answer::NotAsked("not reached".into())],
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            found,
            [
                Finding::Refused("disabled: the individual enrollment a-1 is disabled".into()),
                Finding::NotAsked("not reached".into()),
            ]
        );
        let last = last_answers(s.conn(), 1).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(
            last[0].1,
            "disabled: the individual enrollment a-1 is disabled"
        );
        let b: String = s
            .conn()
            .query_row(
                "SELECT status FROM dps_registrations WHERE unit_id = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b, "none");
    }
}
