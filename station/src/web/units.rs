//! `/units`: find a unit by its serial (type or scan it into the search box), registration ID
//! or device ID, or see the newest;
//! `/units/SERIAL`: everything the station knows about one unit, as `station unit show`.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::SignedIn;
use super::{WebError, WebState, path_segment};
use crate::dps_target::registration::{RegistrationLine, registration_lines};
use crate::line::report::{self, UnitListRow, UnitReport};

#[derive(Template, WebTemplate)]
#[template(path = "units.html")]
struct UnitsPage {
    user: String,
    role: String,
    q: String,
    lot: String,
    not_found: bool,
    /// Several units matched the search (a serial that is another's device ID).
    matches: Vec<String>,
    units: Vec<UnitListRow>,
}

#[derive(Template, WebTemplate)]
#[template(path = "unit.html")]
struct UnitPage {
    user: String,
    role: String,
    r: UnitReport,
    /// DPS's registration record of the unit, when asked for (`?dps=1`).
    dps: Option<Vec<RegistrationLine>>,
}

/// `?dps=1`: also ask DPS for the unit's registration record.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UnitShowQuery {
    #[serde(default)]
    dps: Option<String>,
}

/// The search box and filter.
#[derive(Debug, Default, serde::Deserialize)]
pub struct UnitQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    lot: String,
}

/// `GET /units[?q=SERIAL][&lot=LOT]`
pub async fn list(
    State(state): State<Arc<WebState>>,
    Query(query): Query<UnitQuery>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let q = query.q.trim().to_owned();
    let lot = query.lot.trim().to_owned();
    let (found, units) = {
        let (q, lot) = (q.clone(), lot.clone());
        state
            .read(move |conn| {
                let found = if q.is_empty() {
                    Vec::new()
                } else {
                    report::find(conn, &q)?
                };
                let units = report::list(conn, (!lot.is_empty()).then_some(lot.as_str()), 100)?;
                Ok((found, units))
            })
            .await?
    };
    if let [serial] = found.as_slice() {
        return Ok(Redirect::to(&format!("/units/{}", path_segment(serial))).into_response());
    }
    Ok(UnitsPage {
        user: who.user,
        role: who.role.to_string(),
        not_found: !q.is_empty() && found.is_empty(),
        matches: found,
        q,
        lot,
        units,
    }
    .into_response())
}

/// `GET /units/SERIAL[?dps=1]`
pub async fn show(
    State(state): State<Arc<WebState>>,
    Path(serial): Path<String>,
    Query(query): Query<UnitShowQuery>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let wanted = serial.clone();
    let r = state
        .read(move |conn| Ok(report::unit(conn, &wanted)?))
        .await?
        .ok_or_else(|| {
            WebError::NotFound(format!(
                "No unit with serial {serial} in this station's records."
            ))
        })?;
    let dps = match (query.dps.as_deref(), r.unit.registration_id.as_deref()) {
        (Some(_), Some(rid)) => {
            Some(registration_lines(&state.setup.home, &state.setup.cfg, rid, &r.dps_targets).await)
        }
        _ => None,
    };
    Ok(UnitPage {
        user: who.user,
        role: who.role.to_string(),
        r,
        dps,
    }
    .into_response())
}
