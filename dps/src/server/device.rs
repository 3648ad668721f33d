//! The device registration API, as Azure DPS serves it over HTTPS:
//!
//! - `PUT /{idScope}/registrations/{registrationId}/register`: the unit authenticates
//!   (`device_auth.rs`: its client certificate or a SAS token), the service chooses its hub
//!   (`allocate.rs`), writes the registration record and answers 202
//!   `{operationId, status: "assigning"}` with `Retry-After`;
//! - `GET /{idScope}/registrations/{registrationId}/operations/{operationId}`: the same
//!   credential; 200 with the record's status (`assigned`, `failed`, `disabled`) and the
//!   record as `registrationState`.
//!
//! The record is written before the 202, so the operation is the record: its id is the
//! record's etag. A poll after a restart of the service still finds it, and a poll for an
//! older operation (the unit registered again since) is a 404.
//!
//! Re-registration follows the enrollment's `reprovisionPolicy`: with `updateHubAssignment`
//! the hub is chosen again, and a move is `deviceDataMigrated` or `deviceDataReset`
//! (`migrateDeviceData`); without it the unit keeps its hub. A disabled enrollment (or group)
//! gives a record with status `disabled`, keeping the hub the unit had; a hub that cannot be
//! chosen gives `failed` with the reason in `errorMessage`. TPM units first get the nonce
//! challenge (`device_tpm.rs`), over HTTPS only. A request's `payload` is accepted and not
//! used: only custom allocation (a webhook, not served here) would read it.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use chrono::Utc;

use super::allocate::allocate;
use super::device_auth::{Attested, Matched, authenticate, sas_of};
use super::error::{ServiceError, code};
use super::peer::PeerCerts;
use super::records::decode;
use super::state::AppState;
use super::store::Table;
use crate::wire::{
    DeviceRegistration, DeviceRegistrationState, ProvisioningStatus, RegistrationOperationStatus,
    RegistrationStatus, RegistrationSubstatus,
};

type St = State<Arc<AppState>>;

/// Seconds a unit is told to wait before its first poll.
pub const RETRY_AFTER_S: u64 = 1;

/// DPS error code of a registration that could not be allocated.
const ALLOCATION_FAILED: i64 = 400_209;

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Result<Response, ServiceError> {
    let body = serde_json::to_vec(value).map_err(|_| ServiceError::internal())?;
    Ok((
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

/// Checks the path's ID scope (this service's) and registration ID (DPS's rules).
pub fn target(st: &AppState, scope: &str, id: &str) -> Result<(), ServiceError> {
    if !scope.eq_ignore_ascii_case(&st.id_scope) {
        return Err(ServiceError::not_found(format!(
            "ID scope {scope} is not this service's ({})",
            st.id_scope
        )));
    }
    super::registrations::key(id).map(|_| ())
}

fn peer_of(ext: Option<Extension<PeerCerts>>) -> PeerCerts {
    ext.map(|Extension(p)| p).unwrap_or_default()
}

fn new_operation_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// What the matched enrollment decides about the unit.
struct Terms<'a> {
    enabled: bool,
    policy: Option<crate::wire::AllocationPolicy>,
    hubs: Option<&'a [String]>,
    reprovision: crate::wire::ReprovisionPolicy,
    device_id: Option<String>,
    group_key: Option<String>,
    name: String,
}

fn terms(a: &Attested) -> Terms<'_> {
    match &a.matched {
        Matched::Individual(e) => Terms {
            enabled: e.provisioning_status != Some(ProvisioningStatus::Disabled),
            policy: e.allocation_policy,
            hubs: e.iot_hubs.as_deref(),
            reprovision: e.reprovision_policy.unwrap_or_default(),
            device_id: e.device_id.as_ref().map(|d| d.as_str().to_owned()),
            group_key: None,
            name: format!("individual enrollment {}", e.registration_id.as_str()),
        },
        Matched::Group(g) => Terms {
            enabled: g.provisioning_status != Some(ProvisioningStatus::Disabled),
            policy: g.allocation_policy,
            hubs: g.iot_hubs.as_deref(),
            reprovision: g.reprovision_policy.unwrap_or_default(),
            device_id: None,
            group_key: Some(g.enrollment_group_id.canonical()),
            name: format!("enrollment group {}", g.enrollment_group_id.as_str()),
        },
    }
}

/// Checks a registration request against the path's registration ID.
pub fn check_request(id: &str, request: &DeviceRegistration) -> Result<(), ServiceError> {
    if let Some(body_id) = &request.registration_id
        && !body_id.eq_ignore_ascii_case(id)
    {
        return Err(ServiceError::invalid(
            "registrationId",
            format!("{body_id:?} in the body differs from {id:?} in the path"),
        ));
    }
    Ok(())
}

/// Registers an authenticated unit: chooses its hub and writes its record. The answer is the
/// operation to poll (`assigning`), over HTTP and MQTT alike.
pub fn register_unit(
    st: &AppState,
    id: &str,
    attested: &Attested,
) -> Result<RegistrationOperationStatus, ServiceError> {
    let key = super::registrations::key(id)?;
    let t = terms(attested);
    let now = Utc::now();
    let operation_id = new_operation_id();
    let state = st.store.write(|tx| {
        let previous: Option<DeviceRegistrationState> = tx
            .get(Table::Registrations, &key)?
            .map(|row| decode(&row.json))
            .transpose()?;
        let prev_hub = previous.as_ref().and_then(|p| p.assigned_hub.clone());
        let mut state = DeviceRegistrationState {
            registration_id: Some(id.to_owned()),
            created_date_time_utc: Some(
                previous
                    .as_ref()
                    .and_then(|p| p.created_date_time_utc)
                    .unwrap_or(now),
            ),
            assigned_hub: prev_hub.clone(),
            device_id: previous.as_ref().and_then(|p| p.device_id.clone()),
            status: None,
            substatus: previous.as_ref().and_then(|p| p.substatus),
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: Some(now),
            etag: Some(operation_id.clone()),
            payload: None,
            tpm: None,
        };
        if !t.enabled {
            state.status = Some(RegistrationStatus::Disabled);
            state.error_message = Some(format!("the {} is disabled", t.name));
        } else {
            let hub = match (&prev_hub, t.reprovision.update_hub_assignment) {
                (Some(h), false) => Ok(h.clone()),
                _ => allocate(t.policy, t.hubs, &tx.linked_hubs()?, &key),
            };
            match hub {
                Ok(hub) => {
                    state.substatus = Some(match &prev_hub {
                        Some(p) if !p.eq_ignore_ascii_case(&hub) => {
                            if t.reprovision.migrate_device_data {
                                RegistrationSubstatus::DeviceDataMigrated
                            } else {
                                RegistrationSubstatus::DeviceDataReset
                            }
                        }
                        Some(_) => state
                            .substatus
                            .unwrap_or(RegistrationSubstatus::InitialAssignment),
                        None => RegistrationSubstatus::InitialAssignment,
                    });
                    state.assigned_hub = Some(hub);
                    state.device_id = Some(t.device_id.clone().unwrap_or_else(|| id.to_owned()));
                    state.status = Some(RegistrationStatus::Assigned);
                }
                Err(e) => {
                    state.status = Some(RegistrationStatus::Failed);
                    state.error_code = Some(ALLOCATION_FAILED);
                    state.error_message = Some(e.0);
                }
            }
        }
        let body = serde_json::to_vec(&state).map_err(|_| ServiceError::internal())?;
        tx.put(
            Table::Registrations,
            &key,
            t.group_key.as_deref(),
            &operation_id,
            &body,
        )?;
        Ok::<_, ServiceError>(state)
    })?;
    tracing::info!(
        registration_id = %id,
        matched = %t.name,
        credential = ?attested.credential,
        status = state.status.map(RegistrationStatus::as_str).unwrap_or_default(),
        hub = state.assigned_hub.as_deref().unwrap_or_default(),
        "device registration"
    );
    Ok(RegistrationOperationStatus {
        operation_id,
        status: RegistrationStatus::Assigning,
        registration_state: None,
    })
}

/// The status of operation `operation_id` of unit `id`: its record, once written.
pub fn operation_status(
    st: &AppState,
    id: &str,
    operation_id: &str,
) -> Result<RegistrationOperationStatus, ServiceError> {
    let key = super::registrations::key(id)?;
    let row = st.store.read(|tx| tx.get(Table::Registrations, &key))?;
    let Some(row) = row.filter(|r| r.etag == operation_id) else {
        return Err(ServiceError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!(
                "operation {operation_id} of {id} does not exist (or the unit registered again since)"
            ),
        ));
    };
    let mut state: DeviceRegistrationState = decode(&row.json)?;
    if state.status == Some(RegistrationStatus::Assigned) {
        state.tpm = st
            .tpm
            .hub_key_blob(&key)
            .map(|authentication_key| crate::wire::TpmAuthenticationKey { authentication_key });
    }
    Ok(RegistrationOperationStatus {
        operation_id: operation_id.to_owned(),
        status: state.status.unwrap_or(RegistrationStatus::Assigning),
        registration_state: Some(state),
    })
}

async fn register(
    State(st): St,
    Path((scope, id)): Path<(String, String)>,
    peer: Option<Extension<PeerCerts>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ServiceError> {
    target(&st, &scope, &id)?;
    let raw =
        raw.map_err(|e| ServiceError::bad_request(format!("reading the body failed: {e}")))?;
    let request = parse_request(&raw)?;
    check_request(&id, &request)?;
    if let Some(tpm) = &request.tpm
        && sas_of(&headers).is_none()
    {
        // A TPM unit's first call: the challenge (device_tpm.rs).
        let challenge = super::device_tpm::challenge(&st, &id, tpm)?;
        return json(StatusCode::UNAUTHORIZED, &challenge);
    }
    let attested = authenticate(&st, &id, sas_of(&headers), &peer_of(peer))?;
    let mut answer = json(StatusCode::ACCEPTED, &register_unit(&st, &id, &attested)?)?;
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    Ok(answer)
}

/// A registration request body; an empty body is an empty request.
pub fn parse_request(raw: &[u8]) -> Result<DeviceRegistration, ServiceError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeviceRegistration::default());
    }
    serde_json::from_slice(raw)
        .map_err(|e| ServiceError::bad_request(format!("the body is not a registration: {e}")))
}

async fn operation(
    State(st): St,
    Path((scope, id, operation_id)): Path<(String, String, String)>,
    peer: Option<Extension<PeerCerts>>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    target(&st, &scope, &id)?;
    authenticate(&st, &id, sas_of(&headers), &peer_of(peer))?;
    json(StatusCode::OK, &operation_status(&st, &id, &operation_id)?)
}

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{scope}/registrations/{id}/register", put(register))
        .route(
            "/{scope}/registrations/{id}/operations/{operation}",
            get(operation),
        )
}
