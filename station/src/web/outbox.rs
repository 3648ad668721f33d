//! `/outbox`: the upload to DPS as `station upload --status` shows it (queues per destination,
//! conflicts, exports travelling), where the uploaded units stand with DPS (registered, not yet,
//! refused and why, as the registration checks recorded it), and a supervisor's requeue of a
//! conflict they resolved.

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
}

/// `GET /outbox`
pub async fn page(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
) -> Result<impl IntoResponse, WebError> {
    let (status, registrations) = state
        .read(|conn| {
            Ok((
                outbox::status(conn)?,
                check::summary(conn).map_err(crate::store::sql("read the registration answers"))?,
            ))
        })
        .await?;
    Ok(OutboxPage {
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
