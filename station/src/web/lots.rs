//! `/lots`: every lot, and for each its counts by state, first-pass yield, failures by step and
//! reason, and upload progress (as `station lot show`). A supervisor opens a lot for a product
//! and closes one here, as with `station lot open|close`.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::session::{Flash, SignedIn};
use super::{WebError, WebState};
use crate::ids::{LotId, ProductName};
use crate::line::lots::{self, LotReport};
use crate::line::worker::error_text;

#[derive(Template, WebTemplate)]
#[template(path = "lots.html")]
struct LotsPage {
    user: String,
    role: String,
    supervises: bool,
    flash: Option<Flash>,
    products: Vec<String>,
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
                    let id = LotId::new(l.id.clone())
                        .map_err(|e| WebError::Internal(format!("lot {}: {}", l.id, e.rule)))?;
                    lots::report(conn, &id).map_err(|e| WebError::Internal(error_text(&e)))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(LotsPage {
        supervises: who.supervises(),
        flash: state.sessions.take_flash(&who.token),
        products: state.setup.products.keys().cloned().collect(),
        user: who.user,
        role: who.role.to_string(),
        lots,
    })
}

/// The open-a-lot form.
#[derive(Debug, serde::Deserialize)]
pub struct OpenForm {
    product: String,
    quantity: String,
    #[serde(default)]
    id: String,
}

/// `POST /lots`: opens a lot.
pub async fn open(
    State(state): State<Arc<WebState>>,
    who: SignedIn,
    Form(form): Form<OpenForm>,
) -> Result<Response, WebError> {
    let products: Vec<String> = state.setup.products.keys().cloned().collect();
    state
        .supervise(&who, "open a lot", "/lots", move |store, station, actor| {
            let product = ProductName::new(form.product.trim().to_owned())
                .map_err(|e| format!("Product: {}.", e.rule))?;
            let quantity: u32 = form
                .quantity
                .trim()
                .parse()
                .map_err(|_| format!("Quantity {:?} is not a whole number.", form.quantity))?;
            let id = match form.id.trim() {
                "" => None,
                id => Some(LotId::new(id.to_owned()).map_err(|e| format!("Lot ID: {}.", e.rule))?),
            };
            let products: Vec<&str> = products.iter().map(String::as_str).collect();
            lots::open(store, (station, actor), &products, &product, quantity, id)
                .map(|l| format!("Opened lot {} for {} × {}.", l.id, l.quantity, l.product))
                .map_err(|e| error_text(&e))
        })
        .await
}

/// `POST /lots/ID/close`: closes a lot; its fixtures refuse new units until another opens.
pub async fn close(
    State(state): State<Arc<WebState>>,
    Path(id): Path<String>,
    who: SignedIn,
) -> Result<Response, WebError> {
    state
        .supervise(
            &who,
            "close a lot",
            "/lots",
            move |store, station, actor| {
                let id = LotId::new(id).map_err(|e| format!("Lot ID: {}.", e.rule))?;
                lots::close(store, station, actor, &id)
                    .map(|l| {
                        format!(
                            "Closed lot {} with {} of {} units.",
                            l.id, l.units, l.quantity
                        )
                    })
                    .map_err(|e| error_text(&e))
            },
        )
        .await
}
