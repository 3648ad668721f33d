//! `/fixtures/NAME`: one fixture, as the operator working it sees it. A big banner with the
//! running unit or the last outcome and its reason, the scan box (a keyboard-mode scanner types
//! the serial and Enter into it), and Retry and Abort buttons. The box takes what a fixture's
//! scanner takes: a serial, `OP:<badge>`, `CMD:RETRY`, `CMD:ABORT`.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::line::{FixtureView, views};
use super::session::SignedIn;
use super::{FixtureHandle, WebError, WebState, path_segment};
use crate::line::serve::{FixtureJob, abort_unit};
use crate::trigger::parse::Scan;

#[derive(Template, WebTemplate)]
#[template(path = "fixture.html")]
struct FixturePage {
    user: String,
    role: String,
    f: FixtureView,
    refresh_ms: u32,
}

#[derive(Template, WebTemplate)]
#[template(path = "fixture_status.html")]
struct StatusFragment {
    f: FixtureView,
}

async fn one(state: &Arc<WebState>, name: &str) -> Result<FixtureView, WebError> {
    views(state, Some(name))
        .await?
        .pop()
        .ok_or_else(|| WebError::NotFound(format!("This station runs no fixture called {name}.")))
}

fn handle<'a>(state: &'a WebState, name: &str) -> Result<&'a FixtureHandle, WebError> {
    state
        .fixtures
        .get(name)
        .ok_or_else(|| WebError::NotFound(format!("This station runs no fixture called {name}.")))
}

/// `GET /fixtures/NAME`
pub async fn page(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    who: SignedIn,
) -> Result<impl IntoResponse, WebError> {
    Ok(FixturePage {
        user: who.user,
        role: who.role.to_string(),
        f: one(&state, &name).await?,
        refresh_ms: state.setup.cfg.web.refresh_ms,
    })
}

/// `GET /fixtures/NAME/status`
pub async fn status(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    _who: SignedIn,
) -> Result<impl IntoResponse, WebError> {
    Ok(StatusFragment {
        f: one(&state, &name).await?,
    })
}

/// The scan box.
#[derive(Debug, serde::Deserialize)]
pub struct ScanForm {
    #[serde(default)]
    code: String,
}

fn back(name: &str) -> Response {
    Redirect::to(&format!("/fixtures/{}", path_segment(name))).into_response()
}

/// `POST /fixtures/NAME/scan`: what was typed or scanned into the box. The outcome shows on
/// the fixture's banner, as a scanner's does.
pub async fn scan(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    who: SignedIn,
    Form(form): Form<ScanForm>,
) -> Result<Response, WebError> {
    let f = handle(&state, &name)?;
    let code = form.code.trim_end_matches(['\r', '\n']);
    let fresh = f.debounce.lock().map_or(true, |mut d| {
        d.accept(code.as_bytes(), std::time::Instant::now())
    });
    if !fresh {
        tracing::info!(fixture = %name, user = %who.user, "web scan repeated within the debounce window; ignored");
        return Ok(back(&name));
    }
    match f.parser.parse(code.as_bytes()) {
        Ok(Scan::Abort) => abort(&state, f, &name, &who.user),
        Ok(scan) => {
            tracing::info!(fixture = %name, user = %who.user, "web scan: {}", scan.describe());
            send(&state, f, &name, scan, who.user);
        }
        Err(reason) => {
            tracing::warn!(fixture = %name, user = %who.user, "web scan refused: {reason}");
            state.board.refused(&name, reason.to_string());
        }
    }
    Ok(back(&name))
}

/// `POST /fixtures/NAME/retry`: `CMD:RETRY`.
pub async fn retry(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let f = handle(&state, &name)?;
    tracing::info!(fixture = %name, user = %who.user, "web: retry");
    send(&state, f, &name, Scan::Retry, who.user);
    Ok(back(&name))
}

/// `POST /fixtures/NAME/abort`: `CMD:ABORT`.
pub async fn abort_button(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let f = handle(&state, &name)?;
    abort(&state, f, &name, &who.user);
    Ok(back(&name))
}

fn abort(state: &WebState, f: &FixtureHandle, name: &str, user: &str) {
    tracing::info!(fixture = %name, %user, "web: CMD:ABORT");
    abort_unit(&f.abort, &state.board, name);
}

fn send(state: &WebState, f: &FixtureHandle, name: &str, scan: Scan, user: String) {
    let job = FixtureJob::Scan {
        scan,
        operator: Some(user),
    };
    if f.jobs.send(job).is_err() {
        state.board.refused(
            name,
            format!("fixture {name} has stopped; nothing was started"),
        );
    }
}
