//! `/units`: find a unit by its serial (type or scan it into the search box), registration ID
//! or device ID, or see the newest;
//! `/units/SERIAL`: everything the station knows about one unit, as `station unit show`;
//! `POST /units/SERIAL/register`: a supervisor's end-of-line registration of a symmetric-key
//! unit with DPS, made by the station on its behalf, as `station unit register`.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::{Flash, SignedIn};
use super::{WebError, WebState, path_segment};
use crate::dps_target::on_behalf::{self, Plan, Recorded, Said};
use crate::dps_target::registration::{RegistrationLine, registration_lines};
use crate::line::report::{self, UnitListRow, UnitReport};
use crate::line::worker::error_text;

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
    /// A supervisor may register a symmetric-key unit DPS holds on its behalf.
    can_register: bool,
    /// A supervisor may scrap a unit that is off its fixture and not scrapped yet.
    can_scrap: bool,
    flash: Option<Flash>,
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
                let units = report::list(
                    conn,
                    report::ListFilter {
                        lot: (!lot.is_empty()).then_some(lot.as_str()),
                        state: None,
                    },
                    100,
                )?;
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
    let can_register = who.supervises()
        && matches!(r.unit.state.name(), "uploaded" | "registered")
        && on_behalf::way(&r.unit.serial, r.unit.attestation.as_deref()).is_ok();
    let can_scrap = who.supervises() && r.unit.state.scrappable();
    Ok(UnitPage {
        can_register,
        can_scrap,
        flash: state.sessions.take_flash(&who.token),
        user: who.user,
        role: who.role.to_string(),
        r,
        dps,
    }
    .into_response())
}

/// The scrap form.
#[derive(Debug, serde::Deserialize)]
pub struct ScrapForm {
    #[serde(default)]
    reason: String,
}

/// `POST /units/SERIAL/scrap`: a supervisor takes the unit out of production
/// (`station unit scrap`): its certificates revoked, DPS told to refuse it.
pub async fn scrap(
    State(state): State<Arc<WebState>>,
    Path(serial): Path<String>,
    who: SignedIn,
    Form(form): Form<ScrapForm>,
) -> Result<Response, WebError> {
    let back = format!("/units/{}", path_segment(&serial));
    let products = state.setup.products.clone();
    state
        .supervise(&who, "scrap a unit", &back, move |store, station, actor| {
            let product = crate::line::units::by_serial(store.conn(), &serial)
                .map_err(|e| error_text(&e))?
                .map(|u| u.product)
                .unwrap_or_default();
            let group_target = products
                .get(&product)
                .and_then(|p| crate::line::scrap::group_target(p));
            let done = crate::line::scrap::scrap(
                store,
                (station, actor),
                &serial,
                &form.reason,
                group_target,
            )
            .map_err(|e| error_text(&e))?;
            if let Some(earlier) = done.already {
                return Err(format!("Unit {serial} was scrapped already ({earlier})."));
            }
            let dps = if done.blocks.is_empty() {
                " DPS holds nothing that lets it register.".to_owned()
            } else {
                let targets: Vec<&str> = done.blocks.iter().map(|(t, _)| t.as_str()).collect();
                format!(
                    " DPS ({}) will refuse it once the upload delivers the block.",
                    targets.join(", ")
                )
            };
            Ok(format!(
                "Unit {serial} scrapped: {}.{}{dps}",
                form.reason.trim(),
                if done.revoked.is_empty() {
                    String::new()
                } else {
                    format!(" {} certificate(s) revoked.", done.revoked.len())
                }
            ))
        })
        .await
}

/// `POST /units/SERIAL/register`: the station registers the unit with DPS on its behalf
/// (`station unit register`), and DPS's answer is recorded under the supervisor's name. DPS is
/// asked before the database is written, so a slow DPS holds no other page up.
pub async fn register(
    State(state): State<Arc<WebState>>,
    Path(serial): Path<String>,
    who: SignedIn,
) -> Result<Response, WebError> {
    let back = format!("/units/{}", path_segment(&serial));
    let asked = if who.supervises() {
        ask_on_behalf(&state, serial).await?
    } else {
        Err(String::new())
    };
    state
        .supervise(
            &who,
            "register a unit with DPS",
            &back,
            move |store, station, actor| {
                let (plan, said) = asked?;
                let r = on_behalf::record_said(store, station, actor, &plan, said)
                    .map_err(|e| error_text(&e))?;
                match r.said {
                    Ok(line) => Ok(format!(
                        "Unit {} registered with DPS ({}) by the station on its behalf: {line}.{}",
                        r.serial,
                        r.target,
                        match r.recorded {
                            Recorded::NewlyRegistered => " Recorded as registered.",
                            Recorded::AlreadyRegistered =>
                                " It was recorded as registered already.",
                            Recorded::Unchanged => "",
                        }
                    )),
                    Err(why) => Err(format!(
                        "DPS ({}) refused unit {}'s registration: {why}",
                        r.target, r.serial
                    )),
                }
            },
        )
        .await
}

/// The plan for `serial` and DPS's answer to its registration, or why there is none (for the
/// page); nothing is written.
async fn ask_on_behalf(
    state: &Arc<WebState>,
    serial: String,
) -> Result<Result<(Plan, Said), String>, WebError> {
    let cfg = Arc::clone(&state.setup.cfg);
    let plan = state
        .read(move |conn| Ok(on_behalf::plan(conn, &cfg, &serial, None)))
        .await?;
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return Ok(Err(error_text(&e))),
    };
    // A group member's key is derived in the HSM, an element's key signs in the element:
    // blocking calls, off the async threads.
    let me = Arc::clone(state);
    let keyed = plan.clone();
    let key = tokio::task::spawn_blocking(move || match &me.hsm {
        Some(hsm) => on_behalf::hsm_credential(&me.setup.home, &me.setup.cfg, hsm, &keyed)
            .map_err(|e| error_text(&e)),
        None if keyed.way == on_behalf::Way::KeyFromDps => Ok(None),
        None => Err("the web UI has no HSM session: the unit's key cannot be used".into()),
    })
    .await
    .map_err(|e| WebError::Internal(format!("deriving the unit's key stopped: {e}")))?;
    let key = match key {
        Ok(k) => k,
        Err(e) => return Ok(Err(e)),
    };
    let said = on_behalf::ask(
        &state.setup.home,
        &state.setup.cfg,
        &plan,
        key,
        std::time::Duration::from_secs(state.setup.cfg.registrations.register_wait_s),
    )
    .await;
    Ok(said.map(|said| (plan, said)).map_err(|e| error_text(&e)))
}
