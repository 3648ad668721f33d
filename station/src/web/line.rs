//! `/`: the line. Every fixture with what it is doing (a card each, linking to its page),
//! and the outbox at a glance. `/board` is the cards alone, which the page fetches again
//! every `[web] refresh_ms`.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

use super::session::SignedIn;
use super::{WebError, WebState};
use crate::line::board::{FixtureStatus, Verdict};

/// A fixture as a page shows it.
pub struct FixtureView {
    /// Name.
    pub name: String,
    /// Product.
    pub product: String,
    /// Who is logged on at the fixture.
    pub operator: String,
    /// CSS class of the banner: `pass`, `done`, `fail`, `refused`, `info`, `running`, `idle`.
    pub class: &'static str,
    /// The banner's word.
    pub word: &'static str,
    /// The banner's text.
    pub text: String,
    /// The serial the last message is about.
    pub serial: Option<String>,
    /// When it was said.
    pub at: String,
    /// Counts up with each message (a page plays a sound, or flashes, on a new one).
    pub seq: u64,
    /// Why the HSM does not answer.
    pub hsm_down: Option<String>,
    /// Why the scanner is not connected.
    pub scanner_down: Option<String>,
    /// Passed since start.
    pub passed: u64,
    /// Failed since start.
    pub failed: u64,
    /// The last units: verdict class, word, serial, time.
    pub recent: Vec<RecentView>,
}

/// One of a fixture's last units.
pub struct RecentView {
    /// CSS class.
    pub class: &'static str,
    /// PASS, FAIL, ALREADY DONE.
    pub word: &'static str,
    /// Serial.
    pub serial: String,
    /// When (time of day, UTC).
    pub at: String,
    /// The outcome's text (shown for a failure: its step and reason).
    pub text: String,
}

fn class_of(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::AlreadyDone => "done",
        Verdict::Fail => "fail",
        Verdict::Refused => "refused",
        Verdict::Info => "info",
    }
}

fn view(
    conn: &rusqlite::Connection,
    name: &str,
    s: FixtureStatus,
) -> Result<FixtureView, WebError> {
    let running = match s.running {
        Some(serial) => {
            let state = crate::line::units::by_serial(conn, &serial)?
                .map_or_else(|| "scanned".to_owned(), |u| u.state.name().to_owned());
            Some((serial, state))
        }
        None => None,
    };
    let (class, word) = match (&running, s.last.as_ref().map(|m| m.verdict)) {
        (Some(_), _) => ("running", "RUNNING"),
        (None, None) => ("idle", "READY"),
        (None, Some(v)) => (class_of(v), v.word()),
    };
    let (text, serial, at, seq) = match (&running, s.last) {
        (Some((serial, state)), last) => (
            format!("{serial}: {state}"),
            Some(serial.clone()),
            String::new(),
            last.map_or(0, |m| m.seq),
        ),
        (None, Some(m)) => (
            // The banner's word says what the text's first word said.
            m.text
                .strip_prefix(word)
                .map_or(m.text.as_str(), |t| t.trim_start_matches([':', ' ']))
                .to_owned(),
            m.serial,
            clock(&m.at),
            m.seq,
        ),
        (None, None) => ("Scan a unit's serial.".to_owned(), None, String::new(), 0),
    };
    let recent = s
        .recent
        .iter()
        .map(|m| RecentView {
            class: class_of(m.verdict),
            word: m.verdict.word(),
            serial: m.serial.clone().unwrap_or_default(),
            at: clock(&m.at),
            text: m.text.clone(),
        })
        .collect();
    Ok(FixtureView {
        recent,
        name: name.to_owned(),
        product: s.product,
        operator: s.operator.unwrap_or_default(),
        class,
        word,
        text,
        serial,
        at,
        seq,
        hsm_down: s.hsm_down,
        scanner_down: s.scanner_down,
        passed: s.passed,
        failed: s.failed,
    })
}

/// `2026-11-30T18:30:30.280687Z` as `18:30:30 UTC`: what a person at the line reads.
fn clock(at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| t.format("%H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| at.to_owned())
}

/// The views of the named fixture (`Some`), or of all.
pub async fn views(
    state: &Arc<WebState>,
    only: Option<&str>,
) -> Result<Vec<FixtureView>, WebError> {
    let mut snapshot = state.board.snapshot();
    if let Some(name) = only {
        snapshot.retain(|n, _| n == name);
    }
    state
        .read(move |conn| {
            snapshot
                .into_iter()
                .map(|(name, s)| view(conn, &name, s))
                .collect()
        })
        .await
}

/// The outbox in one line.
pub struct OutboxView {
    /// Waiting rows.
    pub waiting: i64,
    /// Of them, in air-gapped exports.
    pub in_export: i64,
    /// Conflicts for a supervisor.
    pub conflicts: i64,
    /// Delivered.
    pub done: i64,
    /// Newest error of a waiting row.
    pub last_error: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "line.html")]
struct LinePage {
    user: String,
    role: String,
    fixtures: Vec<FixtureView>,
    outbox: OutboxView,
    refresh_ms: u32,
}

#[derive(Template, WebTemplate)]
#[template(path = "board.html")]
struct BoardFragment {
    fixtures: Vec<FixtureView>,
}

/// `GET /`
pub async fn page(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
) -> Result<impl axum::response::IntoResponse, WebError> {
    let fixtures = views(&state, None).await?;
    let outbox = state
        .read(|conn| {
            let s = crate::outbox::status(conn)?;
            Ok(OutboxView {
                waiting: s.queues.iter().map(|q| q.pending).sum(),
                in_export: s.queues.iter().map(|q| q.in_export).sum(),
                conflicts: s.queues.iter().map(|q| q.conflicts).sum(),
                done: s.queues.iter().map(|q| q.done).sum(),
                last_error: s
                    .queues
                    .iter()
                    .find_map(|q| q.last_error.clone())
                    .unwrap_or_default(),
            })
        })
        .await?;
    Ok(LinePage {
        user: who.user,
        role: who.role.to_string(),
        fixtures,
        outbox,
        refresh_ms: state.setup.cfg.web.refresh_ms,
    })
}

/// `GET /board`
pub async fn board(
    State(state): State<Arc<WebState>>,
    _who: SignedIn,
) -> Result<impl axum::response::IntoResponse, WebError> {
    Ok(BoardFragment {
        fixtures: views(&state, None).await?,
    })
}
