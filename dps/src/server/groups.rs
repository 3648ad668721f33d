//! `/enrollmentGroups`: enrollment groups (matched case-insensitively: the Node SDK also
//! sends `/enrollmentgroups`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{post, put};
use chrono::{DateTime, Utc};

use super::enrollments::strip_secrets;
use super::error::ServiceError;
use super::records::{self, Record};
use super::state::AppState;
use super::store::{LinkedHub, Table};
use super::validate::{self, Owner};
use crate::ids::EnrollmentGroupId;
use crate::wire::{AttestationMechanism, EnrollmentGroup, ItemType};

impl Record for EnrollmentGroup {
    const TABLE: Table = Table::Groups;
    const ITEM: ItemType = ItemType::EnrollmentGroup;
    const NOUN: &'static str = "enrollment group";
    const ID_FIELD: &'static str = "enrollmentGroupId";
    const BULK_FIELD: &'static str = "enrollmentGroups";

    fn key_from_path(id: &str) -> Result<String, ServiceError> {
        EnrollmentGroupId::new(id)
            .map(|g| g.canonical())
            .map_err(|e| ServiceError::invalid("enrollmentGroupId", e))
    }
    fn key(&self) -> String {
        self.enrollment_group_id.canonical()
    }
    fn id(&self) -> String {
        self.enrollment_group_id.to_string()
    }
    fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }
    fn created(&self) -> Option<DateTime<Utc>> {
        self.created_date_time_utc
    }
    fn stamp(&mut self, etag: String, created: DateTime<Utc>, updated: DateTime<Utc>) {
        self.etag = Some(etag);
        self.created_date_time_utc = Some(created);
        self.last_updated_date_time_utc = Some(updated);
    }
    fn prepare(&mut self, prefix: &str, linked: &[LinkedHub]) -> Result<(), ServiceError> {
        validate::attestation(&mut self.attestation, prefix, Owner::Group)?;
        validate::allocation(
            self.allocation_policy,
            self.iot_hubs.as_deref(),
            self.iot_hub_host_name.as_deref(),
            self.custom_allocation_definition.is_some(),
            linked,
            prefix,
        )?;
        validate::initial_twin(self.initial_twin.as_ref(), prefix)
    }
    fn attestation(&self) -> &AttestationMechanism {
        &self.attestation
    }
    fn for_output(mut self) -> Self {
        strip_secrets(&mut self.attestation);
        self
    }
}

type St = State<Arc<AppState>>;
type Raw = Result<Bytes, BytesRejection>;

async fn put_one(
    State(st): St,
    Path(id): Path<String>,
    h: HeaderMap,
    raw: Raw,
) -> Result<Response, ServiceError> {
    records::put::<EnrollmentGroup>(&st, &id, &h, raw)
}
async fn get_one(
    State(st): St,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ServiceError> {
    records::get::<EnrollmentGroup>(&st, &id, &h)
}
async fn delete_one(
    State(st): St,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ServiceError> {
    records::delete::<EnrollmentGroup>(&st, &id, &h)
}
async fn attestation(
    State(st): St,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Result<Response, ServiceError> {
    records::attestation::<EnrollmentGroup>(&st, &id, &h)
}
async fn bulk(State(st): St, h: HeaderMap, raw: Raw) -> Result<Response, ServiceError> {
    records::bulk::<EnrollmentGroup>(&st, &h, raw)
}
async fn query(State(st): St, h: HeaderMap, raw: Raw) -> Result<Response, ServiceError> {
    records::query::<EnrollmentGroup>(&st, &h, raw)
}

/// The routes (paths already lower-cased by the URI normaliser).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/enrollmentgroups", post(bulk))
        .route("/enrollmentgroups/query", post(query))
        .route(
            "/enrollmentgroups/{id}",
            put(put_one).get(get_one).delete(delete_one),
        )
        .route(
            "/enrollmentgroups/{id}/attestationmechanism",
            post(attestation),
        )
}
