//! `/login` and `/logout`: sign in with a badge (a keyboard-mode scanner types it into the
//! badge box) or a user name and password; sign out.

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret as _, SecretString};

use super::WebState;
use super::session::{self, SignedIn};
use crate::operators::{self, OperatorError};
use crate::trigger::parse::Badge;

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    user: String,
}

/// `GET /login`
pub async fn form() -> impl IntoResponse {
    LoginPage {
        error: None,
        user: String::new(),
    }
}

/// The sign-in form: a badge, or a user name and password.
#[derive(serde::Deserialize)]
pub struct Credentials {
    #[serde(default)]
    badge: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `POST /login`
pub async fn submit(
    State(state): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<Credentials>,
) -> Response {
    let Credentials {
        badge,
        user,
        password,
    } = form;
    let badge = SecretString::from(badge);
    let password = SecretString::from(password);
    let user = user.trim().to_owned();
    let by_badge = user.is_empty();
    // Lock-outs count per user name, and for badges per browser address.
    let key = if by_badge {
        format!("badge@{}", peer.ip())
    } else {
        format!("user:{user}")
    };
    let refuse = |error: String, user: String| {
        LoginPage {
            error: Some(error),
            user,
        }
        .into_response()
    };
    if by_badge && badge.expose_secret().trim().is_empty() {
        return refuse(
            "Scan your badge, or enter your user name and password.".to_owned(),
            user,
        );
    }
    if let Some(wait) = state.sessions.locked(&key) {
        return refuse(
            format!(
                "Too many wrong attempts: wait {} s, or ask a supervisor.",
                wait.as_secs() + 1
            ),
            user,
        );
    }
    let me = Arc::clone(&state);
    let name = user.clone();
    let checked = tokio::task::spawn_blocking(move || check(&me, &name, &badge, &password)).await;
    match checked {
        Ok(Ok(op)) => {
            state.sessions.succeeded(&key);
            let how = if by_badge { "badge" } else { "password" };
            tracing::info!(user = %op.username, how, "signed in to the web UI");
            let token = state.sessions.create(&op.username, op.role);
            (
                [(
                    header::SET_COOKIE,
                    session::cookie(&state.cookie_name, &token, state.secure_cookie),
                )],
                Redirect::to("/"),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            // The station's own failures are not the person's wrong attempts.
            if !matches!(e, OperatorError::Store(_) | OperatorError::Hash) {
                state.sessions.failed(&key);
            }
            let message = match &e {
                OperatorError::Store(_) | OperatorError::Hash => {
                    tracing::error!(error = %crate::line::worker::error_text(&e), "web sign-in failed");
                    "The station could not check that just now; try again.".to_owned()
                }
                OperatorError::BadgeKey { .. } => {
                    "This station has no badge key: sign in with your password.".to_owned()
                }
                other => capitalised(&other.to_string()),
            };
            tracing::warn!(user = %user, reason = %message, "web sign-in refused");
            refuse(message, user)
        }
        Err(e) => refuse(format!("The sign-in stopped: {e}"), user),
    }
}

fn check(
    state: &WebState,
    user: &str,
    badge: &SecretString,
    password: &SecretString,
) -> Result<operators::Operator, OperatorError> {
    let db = state.db.lock().map_err(|_| OperatorError::Hash)?;
    if user.is_empty() {
        let code = badge.expose_secret().trim();
        // A scanner types the badge as it scans it at a fixture: `OP:<code>`.
        let code = code.strip_prefix("OP:").unwrap_or(code);
        if code.is_empty() {
            return Err(OperatorError::UnknownBadge);
        }
        let key = state
            .badge_key
            .as_deref()
            .ok_or_else(|| OperatorError::BadgeKey {
                path: state.setup.home.badge_key_file(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        operators::by_badge(
            db.conn(),
            key,
            &Badge::new(SecretString::from(code.to_owned())),
        )
    } else {
        operators::authenticate(db.conn(), user, password)
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect::<String>() + ".")
        .unwrap_or_default()
}

/// `POST /logout`
pub async fn logout(State(state): State<Arc<WebState>>, who: SignedIn) -> Response {
    state.sessions.remove(&who.token);
    tracing::info!(user = %who.user, "signed out of the web UI");
    (
        [(header::SET_COOKIE, session::cleared(&state.cookie_name))],
        Redirect::to("/login"),
    )
        .into_response()
}
