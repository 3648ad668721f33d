//! What a request that failed shows: a page with a clear message and what to do; internals go
//! to the log only.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// The station failed (the log has the details).
    #[error("{0}")]
    Internal(String),
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    title: &'static str,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            WebError::Internal(m) => {
                tracing::error!(error = %m, "web UI request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The station could not answer",
                    "The station could not read its records just now. Try again; if it persists, \
                     call a supervisor (the station log says why)."
                        .to_owned(),
                )
            }
        };
        (status, ErrorPage { title, message }).into_response()
    }
}

impl From<crate::line::units::UnitStoreError> for WebError {
    fn from(e: crate::line::units::UnitStoreError) -> Self {
        WebError::Internal(crate::line::worker::error_text(&e))
    }
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> Self {
        WebError::Internal(crate::line::worker::error_text(&e))
    }
}
