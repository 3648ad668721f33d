//! `/registrations`: registration records (written by the device registration API, `device.rs`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::auth::Right;
use super::error::ServiceError;
use super::records;
use super::state::AppState;
use super::store::Table;
use crate::ids::{EnrollmentGroupId, RegistrationId};
use crate::wire::{DeviceRegistrationState, ItemType};

type St = State<Arc<AppState>>;

/// A registration ID from a path, checked: its lower-case key (records are kept by it).
pub(super) fn key(id: &str) -> Result<String, ServiceError> {
    RegistrationId::new(id)
        .map(|r| r.canonical())
        .map_err(|e| ServiceError::invalid("registrationId", e))
}

async fn get_one(
    State(st): St,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ServiceError> {
    st.authorize(&h, Right::RegistrationStatusRead)?;
    let k = key(&id)?;
    let row = st
        .store
        .read(|tx| tx.get(Table::Registrations, &k))?
        .ok_or_else(|| ServiceError::not_found(format!("registration {id} does not exist")))?;
    let rec: DeviceRegistrationState = records::decode(&row.json)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::to_vec(&rec).map_err(|_| ServiceError::internal())?,
    )
        .into_response())
}

async fn delete_one(
    State(st): St,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ServiceError> {
    st.authorize(&h, Right::RegistrationStatusWrite)?;
    let k = key(&id)?;
    let im = h
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    st.store.write(|tx| {
        let row = tx
            .get(Table::Registrations, &k)?
            .ok_or_else(|| ServiceError::not_found(format!("registration {id} does not exist")))?;
        if let Some(want) = im
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty() && *w != "*")
            && want.trim_matches('"') != row.etag.trim_matches('"')
        {
            return Err(ServiceError::precondition_failed(
                "etag does not match the current registration",
            ));
        }
        tx.delete(Table::Registrations, &k)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn query(
    State(st): St,
    Path(group): Path<String>,
    h: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    st.authorize(&h, Right::RegistrationStatusRead)?;
    let g = EnrollmentGroupId::new(&group)
        .map_err(|e| ServiceError::invalid("enrollmentGroupId", e))?
        .canonical();
    records::check_query(&h, raw)?;
    let (size, after) = records::paging(&h)?;
    let mut rows = st
        .store
        .read(|tx| tx.page(Table::Registrations, after.as_deref(), size + 1, Some(&g)))?;
    let more = rows.len() > size;
    rows.truncate(size);
    let next = if more {
        rows.last().map(|r| r.key.clone())
    } else {
        None
    };
    let items = rows
        .iter()
        .map(|r| records::decode::<DeviceRegistrationState>(&r.json))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(records::page_response(
        &items,
        ItemType::DeviceRegistration,
        size,
        next.as_deref(),
    ))
}

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/registrations/{id}", get(get_one).delete(delete_one))
        .route("/registrations/{id}/query", post(query))
}
