//! `/outbox`: the upload to DPS as `station upload --status` shows it (queues per destination,
//! conflicts, exports travelling), where the uploaded units stand with DPS (registered, not yet,
//! refused and why, as the registration checks recorded it), a supervisor's requeue of a
//! conflict they resolved, a supervisor's "Ask DPS now" (`station registrations`), and the
//! station's backups with a supervisor's "Back up now" (`station backup`).

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::session::{Flash, SignedIn};
use super::{WebError, WebState};
use crate::dps_target::check;
use crate::outbox::{self, Status};

#[derive(Template, WebTemplate)]
#[template(path = "outbox.html")]
struct OutboxPage {
    user: String,
    role: String,
    supervises: bool,
    flash: Option<Flash>,
    status: Status,
    registrations: check::Summary,
    /// `[registrations] check_every_s` (0: serve does not ask).
    check_every_s: u64,
    /// The backups, in one line.
    backup: String,
    /// Why someone should look at the backups, if they should.
    backup_warning: Option<String>,
}

/// `GET /outbox`
pub async fn page(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
) -> Result<impl IntoResponse, WebError> {
    let setup = Arc::clone(&state.setup);
    let (status, registrations, backups) = state
        .read(move |conn| {
            Ok((
                outbox::status(conn)?,
                check::summary(conn).map_err(crate::store::sql("read the registration answers"))?,
                crate::backup::Status::read(&setup.home, &setup.cfg, conn),
            ))
        })
        .await?;
    let now = chrono::Utc::now();
    let (backup, backup_warning) = match backups {
        Ok(b) => (b.summary(now), b.warning(now)),
        Err(e) => (String::new(), Some(e.to_string())),
    };
    Ok(OutboxPage {
        backup,
        backup_warning,
        check_every_s: state.setup.cfg.registrations.check_every_s,
        registrations,
        supervises: who.supervises(),
        flash: state.sessions.take_flash(&who.token),
        user: who.user,
        role: who.role.to_string(),
        status,
    })
}

/// `POST /outbox/ID/requeue`: a conflict the supervisor resolved goes back in the queue.
pub async fn requeue(
    State(state): State<Arc<WebState>>,
    Path(id): Path<i64>,
    who: SignedIn,
) -> Result<Response, WebError> {
    state
        .supervise(
            &who,
            "requeue a conflict",
            "/outbox",
            move |store, station, actor| match outbox::requeue_conflict(store, station, actor, id) {
                Ok(true) => Ok(format!(
                    "Outbox row #{id} requeued: it is delivered at the next pass."
                )),
                Ok(false) => Err(format!("Outbox row #{id} is not in conflict.")),
                Err(e) => Err(crate::line::worker::error_text(&e)),
            },
        )
        .await
}

/// `POST /outbox/registrations`: a supervisor asks DPS now which uploaded units registered, as
/// `station registrations` does; the answers are recorded under their name. DPS is asked
/// before the database is touched, so a slow DPS holds no other page up.
pub async fn check_registrations(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let (candidates, answers) = if who.supervises() {
        let candidates = state
            .read(|conn| {
                check::candidates(conn, &check::Selection::default())
                    .map_err(crate::store::sql("find the units to check"))
                    .map_err(Into::into)
            })
            .await?;
        let answers = check::ask(&state.setup.home, &state.setup.cfg, &candidates).await;
        (candidates, answers)
    } else {
        (Vec::new(), Vec::new())
    };
    state
        .supervise(
            &who,
            "ask DPS which units registered",
            "/outbox",
            move |store, station, actor| {
                if candidates.is_empty() {
                    return Ok("No unit to ask DPS about: none is uploaded and waiting to register.".into());
                }
                let findings = check::record_committed(
                    store.conn_mut(),
                    station,
                    actor,
                    &candidates,
                    &answers,
                    |_| {},
                )
                .map_err(|e| crate::line::worker::error_text(&e))?;
                let t = check::Tally::of(&findings);
                let mut text = format!(
                    "Asked DPS about {} unit(s): {} newly registered, {} refused, {} not registered yet",
                    candidates.len(),
                    t.newly,
                    t.refused,
                    t.not_yet,
                );
                if t.export_only > 0 {
                    text.push_str(&format!(
                        ", {} in a target delivered by export (ask by file: station registrations --export-query)",
                        t.export_only
                    ));
                }
                if let Some(check::Finding::NotAsked(why)) = findings
                    .iter()
                    .find(|f| matches!(f, check::Finding::NotAsked(_)))
                {
                    text.push_str(&format!(", {} not asked: {why}", t.not_asked));
                    return Err(text + ".");
                }
                Ok(text + ".")
            },
        )
        .await
}

/// `POST /outbox/backup`: a supervisor's backup of the station database now, as `station
/// backup` makes it (checked, the keyed checkpoint against the HSM key, audited under their
/// name, the oldest pruned).
pub async fn backup_now(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let setup = Arc::clone(&state.setup);
    let hsm = state.hsm.clone();
    state
        .supervise(&who, "back up the database", "/outbox", move |store, station, actor| {
            let (home, cfg) = (&setup.home, &setup.cfg);
            let hsm = hsm
                .as_ref()
                .ok_or_else(|| "the station HSM is not open".to_owned());
            let made = crate::backup::with_audit_key(hsm, home, cfg, |key| {
                crate::backup::make(store, (home, cfg), None, (station, actor), key)
            })
            .map_err(|e| crate::line::worker::error_text(&e))?;
            let name = made
                .written
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            let text = format!(
                "Backup {name} written: {} unit(s), {} certificate(s); integrity ok, audit chain intact, {}.",
                made.written.contents.units,
                made.written.contents.certificates,
                made.keyed.describe()
            );
            if made.keyed.is_broken() {
                Err(text)
            } else {
                Ok(text)
            }
        })
        .await
}
