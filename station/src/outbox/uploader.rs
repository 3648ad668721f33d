//! The uploader: drains due outbox rows to their destinations. It runs on a thread of its own
//! with a current-thread tokio runtime, its own database connection and (for sealed rows) its
//! own payload cipher; `station serve` spawns [`Uploader::run`], `station upload --now` calls
//! [`Uploader::drain_once`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dps::client::{RetryPolicy, ServiceClient};
use dps::wire::IndividualEnrollment;
use rusqlite::{TransactionBehavior, params};
use serde::Serialize;

use super::dps::{
    BlockPayload, GroupMemberPayload, IndividualPayload, KIND_BLOCK, KIND_INDIVIDUAL, KINDS,
    Outcome, deliver_block, deliver_bulk, member_outcomes,
};
use super::{Backoff, Item, PayloadCipher};
use crate::config::{Config, Delivery};
use crate::dps_target::{self, TargetError};
use crate::home::Home;
use crate::ids::StationId;
use crate::line::state::UnitState;
use crate::line::units::{self, Facts, UnitStoreError};
use crate::store::audit::{self, AuditEvent};
use crate::store::{Store, StoreError, Writer, now_utc, sql};

/// Rows taken per pass; a pass ends and the next begins at once while rows stay due.
const ROWS_PER_PASS: usize = 1000;
/// Attempts of one DPS call inside a pass (the row's own back-off does the long waiting).
const CALL_ATTEMPTS: u32 = 3;
/// Actor of the uploader's audit entries and transitions.
const ACTOR: &str = "station";

/// Why the uploader failed (rows stay as they were: nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The database could not be opened.
    #[error("the uploader cannot open the station database")]
    OpenStore(#[source] StoreError),
    /// Reading or writing the outbox failed.
    #[error("the uploader's database work failed")]
    Store(#[from] StoreError),
    /// The async runtime could not start.
    #[error("the uploader cannot start its async runtime")]
    Runtime(#[source] std::io::Error),
    /// Recording a delivered row's unit failed.
    #[error("recording the delivery of outbox row #{id} failed")]
    Record {
        /// The outbox row.
        id: i64,
        /// Cause.
        #[source]
        source: UnitStoreError,
    },
}

/// A row that did not go through in a pass.
#[derive(Debug, Clone, Serialize)]
pub struct RowFailure {
    /// Outbox row.
    pub id: i64,
    /// Its key (registration ID).
    pub item_key: String,
    /// Why.
    pub error: String,
    /// True for a conflict (waits for a supervisor), false for a retry later.
    pub conflict: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UploadReport {
    /// Rows delivered.
    pub delivered: usize,
    /// Of those, enrollments DPS already held as ours (a 409 resolved by an update).
    pub recovered: usize,
    /// Rows that failed and wait for a retry.
    pub retrying: usize,
    /// Rows newly in conflict.
    pub conflicts: usize,
    /// Bulk calls sent.
    pub bulk_calls: usize,
    /// Rows still undelivered after the pass (waiting or in conflict, due or not).
    pub remaining: i64,
    /// The rows that did not go through, with the reason.
    pub failures: Vec<RowFailure>,
}

struct SignalInner {
    stop: AtomicBool,
    /// Wakes the uploader's wait between passes; only the uploader waits on it, so a wake
    /// (a permit for one waiter) never goes to a thread that waits for the stop.
    wake: tokio::sync::Notify,
    /// Wakes every wait for the stop (the registration check, the uploader's DPS calls).
    stopping: tokio::sync::Notify,
}

/// Wakes the uploader (new rows) or stops it. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct UploadSignal {
    inner: Arc<SignalInner>,
}

impl Default for UploadSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for UploadSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSignal")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl UploadSignal {
    /// A fresh signal.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(SignalInner {
                stop: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
                stopping: tokio::sync::Notify::new(),
            }),
        }
    }

    /// New rows are waiting: look now instead of at the next interval.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stop: the current DPS call is abandoned (a later pass recovers it) and `run` returns.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.stopping.notify_waiters();
        self.inner.wake.notify_one();
    }

    /// Whether `stop` was called.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.inner.stop.load(Ordering::SeqCst)
    }

    /// Returns at the next `wake` (or one made since the last such wait returned) or `stop`.
    /// For the uploader alone: each wake is for one waiter.
    pub async fn woken(&self) {
        self.inner.wake.notified().await;
    }

    /// Returns once `stop` has been called.
    pub async fn stopped(&self) {
        loop {
            let n = self.inner.stopping.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            n.await;
        }
    }
}

/// Runs `f` on `rt` to completion, or until `signal` is stopped (then `None`); without a
/// signal, to completion. `f` is built outside the runtime: a future that needs it when made
/// (`tokio::time::sleep`) goes in an `async` block.
pub fn until_stopped<F: Future>(
    rt: &tokio::runtime::Runtime,
    signal: Option<&UploadSignal>,
    f: F,
) -> Option<F::Output> {
    match signal {
        None => Some(rt.block_on(f)),
        Some(s) => rt.block_on(async {
            tokio::select! {
                r = f => Some(r),
                () = s.stopped() => None,
            }
        }),
    }
}

/// Drains the outbox. Holds its own database connection, runtime and service clients.
pub struct Uploader<'c> {
    cfg: Config,
    store: Store,
    /// The process's shared writer (see `store::Writer`): deliveries are recorded through it.
    writer: Writer,
    cipher: Option<&'c dyn PayloadCipher>,
    rt: tokio::runtime::Runtime,
    clients: BTreeMap<String, Result<ServiceClient, String>>,
    station: StationId,
    backoff: Backoff,
    signal: Option<UploadSignal>,
    sealer: Option<&'c AuditSealer<'c>>,
    /// Destinations of targets with `delivery = "export"`: their rows wait for an export.
    held: Vec<String>,
}

/// Seals the audit checkpoint with the HSM key inside a delivery's transaction.
pub type AuditSealer<'c> = dyn Fn(&rusqlite::Transaction<'_>) -> Result<(), String> + 'c;

impl std::fmt::Debug for Uploader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("store", &self.store)
            .field("targets", &self.clients.keys().collect::<Vec<_>>())
            .field("has_cipher", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

/// A service client for a target with the uploader's retry policy: a few quick attempts per
/// call, since a row that fails waits on its own back-off and nothing is lost.
fn target_client(home: &Home, cfg: &Config, name: &str) -> Result<ServiceClient, TargetError> {
    let min = Duration::from_millis(cfg.upload.min_backoff_ms);
    dps_target::client_with(home, cfg, name, |opts| {
        opts.retry = RetryPolicy {
            max_attempts: CALL_ATTEMPTS,
            min_backoff: min,
            max_backoff: Duration::from_millis(cfg.upload.max_backoff_ms).max(min),
            default_retry_after: min,
        };
    })
}

/// One decoded row waiting for its delivery.
pub(super) enum Work {
    Individual(Item, Box<IndividualPayload>),
    GroupMember(Item, GroupMemberPayload),
    Block(Item, Box<BlockPayload>),
}

impl Work {
    /// The outbox row.
    pub(super) fn into_item(self) -> Item {
        match self {
            Work::Individual(i, _) | Work::GroupMember(i, _) | Work::Block(i, _) => i,
        }
    }
}

/// A row's payload opened (with `cipher` when sealed) and parsed: its target and its work; or
/// the row with the reason it cannot be read (never quoting the payload, which may hold keys).
pub(super) fn decode(
    item: Item,
    cipher: Option<&dyn PayloadCipher>,
) -> Result<(String, Work), Box<(Item, String)>> {
    let plain = match item.open_payload(cipher) {
        Ok(p) => p,
        Err(e) => {
            let msg = super::dps::chain(&e);
            return Err(Box::new((item, msg)));
        }
    };
    // Position only: serde's message may quote a value, and the payload may hold keys.
    let bad = |e: serde_json::Error| {
        format!(
            "outbox row #{}: payload is not a valid {} ({:?} error at line {}, column {})",
            item.id,
            item.kind,
            e.classify(),
            e.line(),
            e.column()
        )
    };
    if item.kind == KIND_INDIVIDUAL {
        match serde_json::from_slice::<IndividualPayload>(&plain) {
            Ok(p) => Ok((p.target.clone(), Work::Individual(item, Box::new(p)))),
            Err(e) => {
                let m = bad(e);
                Err(Box::new((item, m)))
            }
        }
    } else if item.kind == KIND_BLOCK {
        match serde_json::from_slice::<BlockPayload>(&plain) {
            Ok(p) => Ok((p.target.clone(), Work::Block(item, Box::new(p)))),
            Err(e) => {
                let m = bad(e);
                Err(Box::new((item, m)))
            }
        }
    } else {
        match serde_json::from_slice::<GroupMemberPayload>(&plain) {
            Ok(p) => Ok((p.target.clone(), Work::GroupMember(item, p))),
            Err(e) => {
                let m = bad(e);
                Err(Box::new((item, m)))
            }
        }
    }
}

impl<'c> Uploader<'c> {
    /// An uploader for the station in `home`: opens its own database connection and a client
    /// per configured DPS target. `cipher` opens sealed rows; without it sealed rows wait
    /// with an error saying so.
    pub fn new(
        home: &Home,
        cfg: &Config,
        cipher: Option<&'c dyn PayloadCipher>,
    ) -> Result<Self, UploadError> {
        let db = home.resolve(&cfg.store.path);
        let store = Store::open(&db, &cfg.store).map_err(UploadError::OpenStore)?;
        // Deliveries are written through the process's shared writer, whose durable commits
        // share fsyncs with the fixtures', outside the write turn.
        let writer = Writer::open(&db, &cfg.store).map_err(UploadError::OpenStore)?;
        let rt = crate::dps_target::runtime().map_err(UploadError::Runtime)?;
        let held = cfg
            .dps
            .targets
            .iter()
            .filter(|(_, t)| t.delivery == Delivery::Export)
            .map(|(name, _)| super::dps::destination(name))
            .collect();
        let clients = cfg
            .dps
            .targets
            .iter()
            .filter(|(_, t)| t.delivery == Delivery::Online)
            .map(|(name, _)| {
                let c = target_client(home, cfg, name).map_err(|e| super::dps::chain(&e));
                (name.clone(), c)
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            store,
            writer,
            cipher,
            rt,
            clients,
            station: cfg.station_id(),
            backoff: Backoff::from_config(&cfg.upload),
            signal: None,
            sealer: None,
            held,
        })
    }

    /// Seals the audit checkpoint of every delivery transaction with `sealer` (the HSM audit
    /// key). Best effort: if sealing fails the delivery is still recorded, covered by the hash
    /// chain, and the next sealed write covers it.
    #[must_use]
    pub fn with_audit_sealer(mut self, sealer: &'c AuditSealer<'c>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// Runs `f` to completion, or until a stop signal (then `None`).
    fn block_on<F: Future>(&self, f: F) -> Option<F::Output> {
        until_stopped(&self.rt, self.signal.as_ref(), f)
    }

    /// One pass over every due row: delivers what it can, schedules retries, flags conflicts.
    pub fn drain_once(&mut self) -> Result<UploadReport, UploadError> {
        let mut report = UploadReport::default();
        let rows = super::due(
            self.store.conn(),
            &KINDS,
            &self.held,
            &now_utc(),
            ROWS_PER_PASS,
        )?;
        let mut work: BTreeMap<String, Vec<Work>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for item in rows {
            match decode(item, self.cipher) {
                Ok((target, w)) => work.entry(target).or_default().push(w),
                Err(bad) => {
                    let (item, error) = *bad;
                    unreadable.push((
                        item,
                        Outcome::Retry {
                            error,
                            retry_after: None,
                        },
                    ));
                }
            }
        }
        self.apply(unreadable, &mut report)?;
        for (target, rows) in work {
            let client = match self.clients.get(&target) {
                Some(Ok(c)) => c.clone(),
                Some(Err(e)) => {
                    self.fail_all(rows, &format!("DPS target {target}: {e}"), &mut report)?;
                    continue;
                }
                None => {
                    let e = format!(
                        "DPS target {target:?} is not configured (add [dps.targets.{target}] to the station config)"
                    );
                    self.fail_all(rows, &e, &mut report)?;
                    continue;
                }
            };
            if !self.deliver_target(&client, &target, rows, &mut report)? {
                // Stopped.
                break;
            }
        }
        report.remaining = super::undelivered(self.store.conn(), &KINDS)?;
        Ok(report)
    }

    fn fail_all(
        &mut self,
        rows: Vec<Work>,
        error: &str,
        report: &mut UploadReport,
    ) -> Result<(), UploadError> {
        let outcomes = rows
            .into_iter()
            .map(|w| {
                (
                    w.into_item(),
                    Outcome::Retry {
                        error: error.to_owned(),
                        retry_after: None,
                    },
                )
            })
            .collect();
        self.apply(outcomes, report)
    }

    /// Delivers one target's rows; false when stopped midway.
    fn deliver_target(
        &mut self,
        client: &ServiceClient,
        target: &str,
        rows: Vec<Work>,
        report: &mut UploadReport,
    ) -> Result<bool, UploadError> {
        let mut individuals: Vec<(Item, IndividualEnrollment)> = Vec::new();
        let mut members: Vec<(Item, String)> = Vec::new();
        let mut blocks: Vec<(Item, Box<BlockPayload>)> = Vec::new();
        for w in rows {
            match w {
                Work::Individual(i, p) => individuals.push((i, p.enrollment)),
                Work::GroupMember(i, p) => members.push((i, p.group_id)),
                Work::Block(i, p) => blocks.push((i, p)),
            }
        }
        let mut down: Option<String> = None;
        let batch = self.cfg.upload.batch.clamp(1, dps::wire::MAX_BULK_ITEMS);
        let mut chunks = Vec::new();
        while !individuals.is_empty() {
            let rest = individuals.split_off(batch.min(individuals.len()));
            chunks.push(std::mem::replace(&mut individuals, rest));
        }
        for chunk in chunks {
            let (items, enrollments): (Vec<Item>, Vec<IndividualEnrollment>) =
                chunk.into_iter().unzip();
            let mut calls = 0;
            let Some(outcomes) = self.block_on(deliver_bulk(
                client,
                target,
                &enrollments,
                &mut down,
                &mut calls,
            )) else {
                return Ok(false);
            };
            report.bulk_calls += calls;
            self.apply(items.into_iter().zip(outcomes).collect(), report)?;
        }
        if !members.is_empty() {
            let groups: Vec<&str> = members.iter().map(|(_, g)| g.as_str()).collect();
            let Some(outcomes) =
                self.block_on(member_outcomes(client, target, &groups, down.as_deref()))
            else {
                return Ok(false);
            };
            let rows = members.into_iter().map(|(item, _)| item);
            self.apply(rows.zip(outcomes).collect(), report)?;
        }
        // Blocks last: an enrollment created in this pass is disabled in the same pass.
        for (item, p) in blocks {
            let Some(outcome) = self.block_on(deliver_block(client, target, &p, &mut down)) else {
                return Ok(false);
            };
            self.apply(vec![(item, outcome)], report)?;
        }
        Ok(true)
    }

    /// Records the outcomes of a batch in one transaction.
    fn apply(
        &mut self,
        outcomes: Vec<(Item, Outcome)>,
        report: &mut UploadReport,
    ) -> Result<(), UploadError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let station = self.station.clone();
        let backoff = self.backoff;
        let sealer = self.sealer;
        crate::line::crash::point("upload:accepted");
        let mut writer = self.writer.turn();
        let tx = writer
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin outbox delivery"))?;
        let mut counts = UploadReport::default();
        for (item, outcome) in outcomes {
            apply_outcome(&tx, &station, item, outcome, &backoff, &mut counts)?;
        }
        if let Some(seal) = sealer
            && let Err(e) = seal(&tx)
        {
            tracing::warn!(error = %e, "uploader: audit checkpoint not sealed with the HSM key; the hash chain covers the entries");
        }
        tx.commit().map_err(sql("commit outbox delivery"))?;
        // On disk after the write turn is given up (group commit, store::durable).
        let durable = writer.durable();
        drop(writer);
        durable.wait()?;
        crate::line::units::committed();
        report.delivered += counts.delivered;
        report.recovered += counts.recovered;
        report.retrying += counts.retrying;
        report.conflicts += counts.conflicts;
        report.failures.append(&mut counts.failures);
        Ok(())
    }

    /// Drains until `signal` stops it: a pass whenever rows are due, otherwise waits for the
    /// next due row, a wake, or `[upload] interval_ms`, whichever comes first. Passes start at
    /// least `[upload] gather_ms` apart, so a busy line's rows go out in full bulk requests.
    pub fn run(mut self, signal: &UploadSignal) {
        self.signal = Some(signal.clone());
        let interval = Duration::from_millis(self.cfg.upload.interval_ms.max(10));
        let gather = Duration::from_millis(self.cfg.upload.gather_ms);
        let mut last_pass: Option<std::time::Instant> = None;
        while !signal.is_stopped() {
            if let Some(rest) = last_pass.map(|at| gather.saturating_sub(at.elapsed()))
                && !rest.is_zero()
            {
                // The sleep is made inside the runtime (async block): its timer needs it.
                until_stopped(&self.rt, Some(signal), async {
                    tokio::time::sleep(rest).await;
                });
                if signal.is_stopped() {
                    break;
                }
            }
            last_pass = Some(std::time::Instant::now());
            match self.drain_once() {
                Ok(r) if r.delivered + r.retrying + r.conflicts > 0 => {
                    tracing::info!(
                        delivered = r.delivered,
                        retrying = r.retrying,
                        conflicts = r.conflicts,
                        remaining = r.remaining,
                        "outbox pass"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %super::dps::chain(&e), "outbox pass failed; rows stay queued");
                }
            }
            let wait = self.until_next_due().unwrap_or(interval).min(interval);
            if wait.is_zero() {
                continue;
            }
            self.rt.block_on(async {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = signal.woken() => {}
                }
            });
        }
    }

    fn until_next_due(&self) -> Option<Duration> {
        let next = super::next_due(self.store.conn(), &KINDS, &self.held).ok()??;
        let at = chrono::DateTime::parse_from_rfc3339(&next).ok()?;
        let d = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
        Some(d.to_std().unwrap_or(Duration::ZERO))
    }
}

/// Records how one row's delivery ended, in the caller's transaction: delivered (row done, unit
/// uploaded), retried later (with its back-off), or in conflict (audited, for a supervisor).
/// Shared by the uploader and by an air-gapped transfer's receipt.
pub(super) fn apply_outcome(
    tx: &rusqlite::Transaction<'_>,
    station: &StationId,
    item: Item,
    outcome: Outcome,
    backoff: &Backoff,
    counts: &mut UploadReport,
) -> Result<(), UploadError> {
    match outcome {
        Outcome::Delivered { etag, recovered } => {
            record_delivery(tx, station, &item, &etag, recovered)?;
            counts.delivered += 1;
            counts.recovered += usize::from(recovered);
        }
        Outcome::Retry { error, retry_after } => {
            let next = super::mark_retry(tx, item.id, &error, retry_after, backoff)?;
            tracing::warn!(row = item.id, key = %item.item_key, next_attempt_at = %next, %error, "outbox delivery failed; will retry");
            counts.retrying += 1;
            counts.failures.push(RowFailure {
                id: item.id,
                item_key: item.item_key,
                error,
                conflict: false,
            });
        }
        Outcome::Conflict { message, details } => {
            let message = format!(
                "{message}, then run `station upload --requeue {}`)",
                item.id
            );
            super::mark_conflict(tx, item.id, &message)?;
            let mut details = details;
            if let Some(o) = details.as_object_mut() {
                o.insert("outbox_id".into(), item.id.into());
                o.insert("unit_id".into(), item.unit_id.into());
            }
            audit::append(
                tx,
                station,
                &AuditEvent {
                    actor: ACTOR,
                    event: "outbox.conflict",
                    subject: &item.item_key,
                    details,
                },
            )?;
            tracing::error!(row = item.id, key = %item.item_key, %message, "outbox conflict");
            counts.conflicts += 1;
            counts.failures.push(RowFailure {
                id: item.id,
                item_key: item.item_key,
                error: message,
                conflict: true,
            });
        }
    }
    Ok(())
}

/// A row delivered while its unit was scrapped (`line/scrap.rs` cancelled the row as DPS was
/// taking it): DPS holds the enrollment after all, so a block is queued for it, and audited.
fn delivered_after_cancel(
    tx: &rusqlite::Transaction<'_>,
    station: &StationId,
    item: &Item,
    target: &str,
    etag: &str,
) -> Result<(), UploadError> {
    if item.kind != KIND_INDIVIDUAL {
        // A group member's block was queued when it was scrapped.
        return Ok(());
    }
    let payload = serde_json::to_vec(&BlockPayload {
        target: target.to_owned(),
        registration_id: item.item_key.clone(),
        attestation: None,
    })
    .map_err(|e| {
        UploadError::Store(sql("encode the block")(
            rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        ))
    })?;
    let block = super::enqueue(
        tx,
        &super::NewItem {
            destination: &item.destination,
            kind: KIND_BLOCK,
            item_key: &item.item_key,
            unit_id: item.unit_id,
            payload: &payload,
        },
        None,
    )?;
    audit::append(
        tx,
        station,
        &AuditEvent {
            actor: ACTOR,
            event: "outbox.delivered-after-cancel",
            subject: &item.item_key,
            details: serde_json::json!({
                "outbox_id": item.id,
                "etag": etag,
                "block_outbox_id": block,
                "why": "the unit was scrapped while DPS was taking its enrollment; the enrollment is blocked instead",
            }),
        },
    )?;
    Ok(())
}

/// A delivered block, in the caller's transaction: the unit's enrollments in that target
/// marked `disabled` with the etag DPS gave, and the block audited.
fn record_block(
    tx: &rusqlite::Transaction<'_>,
    station: &StationId,
    item: &Item,
    target: &str,
    etag: &str,
) -> Result<(), UploadError> {
    if let Some(unit) = item.unit_id {
        tx.prepare_cached(
            "UPDATE enrollments SET status = 'disabled', updated_at = ?3
             WHERE dps_target = ?1 AND unit_id = ?2",
        )
        .and_then(|mut st| st.execute(params![target, unit, now_utc()]))
        .map_err(sql("record the block"))?;
    }
    audit::append(
        tx,
        station,
        &AuditEvent {
            actor: ACTOR,
            event: "dps.blocked",
            subject: &item.item_key,
            details: serde_json::json!({
                "outbox_id": item.id,
                "unit_id": item.unit_id,
                "target": target,
                "etag": etag,
            }),
        },
    )?;
    Ok(())
}

pub(super) fn not_reached(target: &str, why: &str) -> Outcome {
    Outcome::Retry {
        error: format!("DPS target {target}: not reached: {why}"),
        retry_after: None,
    }
}

/// A delivered row, in the caller's transaction: the row done (payload erased), the
/// `enrollments` row uploaded with its etag, and the unit moved Queued -> Uploaded.
fn record_delivery(
    tx: &rusqlite::Transaction<'_>,
    station: &StationId,
    item: &Item,
    etag: &str,
    recovered: bool,
) -> Result<(), UploadError> {
    let target = item
        .destination
        .strip_prefix("dps:")
        .unwrap_or(&item.destination);
    if !super::mark_done(tx, item.id, Some(etag))? {
        return delivered_after_cancel(tx, station, item, target, etag);
    }
    let now = now_utc();
    if item.kind == KIND_BLOCK {
        return record_block(tx, station, item, target, etag);
    }
    if item.kind == KIND_INDIVIDUAL {
        tx.prepare_cached(
            "UPDATE enrollments SET etag = ?3, status = 'uploaded', updated_at = ?4
             WHERE dps_target = ?1 AND kind = 'individual' AND enrollment_id = ?2",
        )
        .and_then(|mut st| st.execute(params![target, item.item_key, etag, now]))
        .map_err(sql("record uploaded enrollment"))?;
    } else if let Some(unit) = item.unit_id {
        tx.prepare_cached(
            "UPDATE enrollments SET etag = ?3, status = 'uploaded', updated_at = ?4
             WHERE dps_target = ?1 AND unit_id = ?2",
        )
        .and_then(|mut st| st.execute(params![target, unit, etag, now]))
        .map_err(sql("record uploaded enrollment"))?;
    }
    if recovered {
        audit::append(
            tx,
            station,
            &AuditEvent {
                actor: ACTOR,
                event: "outbox.recovered",
                subject: &item.item_key,
                details: serde_json::json!({
                    "outbox_id": item.id,
                    "why": "DPS already held this enrollment with the station's attestation (an earlier upload not recorded); updated over its etag",
                    "etag": etag,
                }),
            },
        )?;
    }
    let Some(unit_id) = item.unit_id else {
        return Ok(());
    };
    let unit = units::by_id(tx, unit_id).map_err(|source| UploadError::Record {
        id: item.id,
        source,
    })?;
    match unit.map(|u| u.state) {
        Some(UnitState::Queued { outbox_id }) if outbox_id == item.id => {
            units::transition(
                tx,
                station,
                ACTOR,
                unit_id,
                UnitState::Uploaded {
                    etag: etag.to_owned(),
                },
                &Facts::default(),
            )
            .map_err(|source| UploadError::Record {
                id: item.id,
                source,
            })?;
        }
        other => {
            // The unit moved on (retried, superseded) or waits on another row: the
            // delivery is recorded on the row only.
            tracing::info!(row = item.id, unit_id, state = ?other.map(|s| s.name()), "delivered row's unit is not queued on it; unit left as is");
        }
    }
    Ok(())
}

#[cfg(test)]
mod signal_tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::UploadSignal;

    fn ready(f: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    /// The registration check waits for the stop on the same signal as the uploader; a wake
    /// (new rows) must reach the uploader, not end up with the check.
    #[test]
    fn a_wait_for_the_stop_leaves_the_wake_to_the_uploader() {
        let signal = UploadSignal::new();
        let mut check = pin!(signal.stopped());
        assert!(!ready(check.as_mut()), "nothing stopped yet");
        signal.wake();
        assert!(!ready(check.as_mut()), "a wake is not a stop");
        let mut uploader = pin!(signal.woken());
        assert!(ready(uploader.as_mut()), "the uploader gets the wake");
        let mut again = pin!(signal.woken());
        assert!(!ready(again.as_mut()), "one wake, one pass");
        signal.stop();
        assert!(ready(check.as_mut()), "the stop reaches the check");
        assert!(ready(again.as_mut()), "and the uploader's wait");
    }
}
