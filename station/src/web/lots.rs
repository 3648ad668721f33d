//! `/lots`: every lot, and for each its counts by state, first-pass yield, failures by step and
//! reason, and upload progress (as `station lot show`).

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::IntoResponse;

use super::session::SignedIn;
use super::{WebError, WebState};
use crate::line::lots::{self, LotReport};

#[derive(Template, WebTemplate)]
#[template(path = "lots.html")]
struct LotsPage {
    user: String,
    role: String,
    lots: Vec<LotReport>,
}

/// `GET /lots`
pub async fn list(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
) -> Result<impl IntoResponse, WebError> {
    let lots = state
        .read(|conn| {
            lots::list(conn)?
                .into_iter()
                .map(|l| {
                    let id = crate::ids::LotId::new(l.id.clone())
                        .map_err(|e| WebError::Internal(format!("lot {}: {}", l.id, e.rule)))?;
                    lots::report(conn, &id)
                        .map_err(|e| WebError::Internal(crate::line::worker::error_text(&e)))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(LotsPage {
        user: who.user,
        role: who.role.to_string(),
        lots,
    })
}
