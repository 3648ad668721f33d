//! What enrollments and groups share: one generic implementation of create/replace, get,
//! delete, attestation, bulk and query, and their routes, instantiated per record type.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::Right;
use super::body;
use super::error::{ServiceError, code};
use super::state::AppState;
use super::store::{LinkedHub, Table, Tx};
use crate::wire::{AttestationMechanism, BulkMode, ItemType, MAX_BULK_ITEMS, QuerySpecification};

/// Default and largest query page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The extractors of the record handlers.
type St = State<Arc<AppState>>;
type Raw = Result<Bytes, BytesRejection>;

/// An enrollment-like record kept in one table.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {
    /// Its collection's path, lower-case (the URI normaliser lower-cases request paths).
    const PATH: &'static str;
    /// Its table.
    const TABLE: Table;
    /// `x-ms-item-type` of query answers.
    const ITEM: ItemType;
    /// Name in messages.
    const NOUN: &'static str;
    /// JSON name of its id field.
    const ID_FIELD: &'static str;
    /// JSON name of the item list in bulk calls.
    const BULK_FIELD: &'static str;

    /// Validates an id from a path, giving its lower-case key.
    fn key_from_path(id: &str) -> Result<String, ServiceError>;
    /// The record's lower-case key.
    fn key(&self) -> String;
    /// The id as written.
    fn id(&self) -> String;
    /// Its etag.
    fn etag(&self) -> Option<&str>;
    /// Its creation time.
    fn created(&self) -> Option<DateTime<Utc>>;
    /// Sets the service-owned fields.
    fn stamp(&mut self, etag: String, created: DateTime<Utc>, updated: DateTime<Utc>);
    /// Checks the record and fills what the service fills; `prefix` names it in errors.
    fn prepare(&mut self, prefix: &str, linked: &[LinkedHub]) -> Result<(), ServiceError>;
    /// Its attestation.
    fn attestation(&self) -> &AttestationMechanism;
    /// The record as GET and query return it: without symmetric keys and certificate text
    /// (those come only from the attestationmechanism call).
    fn for_output(self) -> Self;
}

/// A fresh etag.
fn new_etag() -> String {
    let mut b = [0u8; 8];
    rand::fill(&mut b[..]);
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"')
}

/// `If-Match` semantics: absent or `*` always pass; otherwise the record must exist with
/// that etag.
fn check_if_match(
    if_match: Option<&str>,
    existing: Option<&str>,
    noun: &str,
) -> Result<(), ServiceError> {
    match if_match.map(str::trim) {
        None | Some("") | Some("*") => Ok(()),
        Some(want) => match existing {
            Some(have) if unquote(have) == unquote(want) => Ok(()),
            Some(_) => Err(ServiceError::precondition_failed(format!(
                "etag does not match the current {noun}"
            ))),
            None => Err(ServiceError::precondition_failed(format!(
                "If-Match given but the {noun} does not exist"
            ))),
        },
    }
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(b) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )],
            b,
        )
            .into_response(),
        Err(_) => ServiceError::internal().into_response(),
    }
}

/// A stored record's JSON decoded; a record that does not decode is logged and is a 500.
pub(super) fn decode<R: DeserializeOwned>(json: &[u8]) -> Result<R, ServiceError> {
    serde_json::from_slice(json).map_err(|e| {
        tracing::error!(error = %e, "stored record does not decode");
        ServiceError::internal()
    })
}

/// Writes one prepared record in `tx`, honouring If-Match. Returns it as stored.
fn write_one<R: Record>(
    tx: &Tx<'_>,
    mut rec: R,
    if_match: Option<&str>,
    mode: BulkMode,
) -> Result<R, ServiceError> {
    let key = rec.key();
    let existing = tx.get(R::TABLE, &key)?;
    match mode {
        BulkMode::Create if existing.is_some() => {
            return Err(ServiceError::conflict(format!(
                "{} {} already exists",
                R::NOUN,
                rec.id()
            )));
        }
        BulkMode::UpdateIfMatchEtag if existing.is_none() => {
            return Err(ServiceError::not_found(format!(
                "{} {} does not exist",
                R::NOUN,
                rec.id()
            )));
        }
        _ => {}
    }
    check_if_match(
        if_match,
        existing.as_ref().map(|r| r.etag.as_str()),
        R::NOUN,
    )?;
    let now = Utc::now();
    let created = match &existing {
        Some(row) => decode::<R>(&row.json)?.created().unwrap_or(now),
        None => now,
    };
    let etag = new_etag();
    rec.stamp(etag.clone(), created, now);
    let json = serde_json::to_vec(&rec).map_err(|_| ServiceError::internal())?;
    tx.put(R::TABLE, &key, None, &etag, &json)?;
    Ok(rec)
}

/// `PUT /{family}/{id}`: create or replace.
async fn put<R: Record>(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Raw,
) -> Result<Response, ServiceError> {
    st.authorize(&headers, Right::EnrollmentWrite)?;
    let path_key = R::key_from_path(&id)?;
    let mut rec: R = body::parse(&headers, raw)?;
    if rec.key() != path_key {
        return Err(ServiceError::invalid(
            R::ID_FIELD,
            format!("{:?} does not match the id in the path", rec.id()),
        ));
    }
    let im = if_match(&headers);
    let stored = st.store.write(|tx| {
        let linked = tx.linked_hubs()?;
        rec.prepare("", &linked)?;
        write_one(tx, rec, im, BulkMode::Update)
    })?;
    Ok(json_response(StatusCode::OK, &stored))
}

/// `GET /{family}/{id}`.
async fn get<R: Record>(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    st.authorize(&headers, Right::EnrollmentRead)?;
    let rec = load::<R>(&st, &id)?;
    Ok(json_response(StatusCode::OK, &rec.for_output()))
}

fn load<R: Record>(st: &Arc<AppState>, id: &str) -> Result<R, ServiceError> {
    let key = R::key_from_path(id)?;
    let row = st.store.read(|tx| tx.get(R::TABLE, &key))?;
    let row =
        row.ok_or_else(|| ServiceError::not_found(format!("{} {id} does not exist", R::NOUN)))?;
    decode(&row.json)
}

/// `DELETE /{family}/{id}`.
async fn delete<R: Record>(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    st.authorize(&headers, Right::EnrollmentWrite)?;
    let key = R::key_from_path(&id)?;
    let im = if_match(&headers);
    st.store.write(|tx| {
        let row = tx
            .get(R::TABLE, &key)?
            .ok_or_else(|| ServiceError::not_found(format!("{} {id} does not exist", R::NOUN)))?;
        check_if_match(im, Some(&row.etag), R::NOUN)?;
        tx.delete(R::TABLE, &key)?;
        Ok::<_, ServiceError>(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /{family}/{id}/attestationmechanism`: the attestation including secrets.
async fn attestation<R: Record>(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    st.authorize(&headers, Right::EnrollmentRead)?;
    let rec = load::<R>(&st, &id)?;
    Ok(json_response(StatusCode::OK, rec.attestation()))
}

/// `POST /{family}`: bulk create/update/delete of at most ten records, one transaction,
/// results per item. A request with an invalid item is refused whole (400, nothing written).
async fn bulk<R: Record>(
    State(st): St,
    headers: HeaderMap,
    raw: Raw,
) -> Result<Response, ServiceError> {
    #[derive(serde::Deserialize)]
    struct Op<R> {
        mode: BulkMode,
        #[serde(alias = "enrollments", alias = "enrollmentGroups")]
        items: Vec<R>,
    }
    st.authorize(&headers, Right::EnrollmentWrite)?;
    // Parse the item list under its real field name so errors name it.
    let value: serde_json::Map<String, serde_json::Value> = body::parse(&headers, raw)?;
    let items_len = value
        .get(R::BULK_FIELD)
        .and_then(|v| v.as_array())
        .map(Vec::len)
        .ok_or_else(|| ServiceError::invalid(R::BULK_FIELD, "is required and must be an array"))?;
    if items_len > MAX_BULK_ITEMS {
        return Err(ServiceError::new(
            StatusCode::BAD_REQUEST,
            code::BULK_TOO_LARGE,
            format!(
                "{}: {items_len} items; at most {MAX_BULK_ITEMS} are allowed per bulk call",
                R::BULK_FIELD
            ),
        ));
    }
    if items_len == 0 {
        return Err(ServiceError::invalid(R::BULK_FIELD, "is empty"));
    }
    let op: Op<R> =
        serde_path_to_error::deserialize(serde_json::Value::Object(value)).map_err(|e| {
            let path = e.path().to_string().replacen("items", R::BULK_FIELD, 1);
            ServiceError::invalid(&path, e.into_inner())
        })?;
    let mut items = op.items;
    let result = st.store.write(|tx| {
        let linked = tx.linked_hubs()?;
        if op.mode != BulkMode::Delete {
            for (i, rec) in items.iter_mut().enumerate() {
                rec.prepare(&format!("{}[{i}]", R::BULK_FIELD), &linked)?;
            }
        }
        let mut errors = Vec::new();
        for rec in items {
            let id = rec.id();
            let outcome = match op.mode {
                BulkMode::Delete => {
                    let key = rec.key();
                    match tx.get(R::TABLE, &key)? {
                        None => Err(ServiceError::not_found(format!(
                            "{} {id} does not exist",
                            R::NOUN
                        ))),
                        Some(row) => match check_if_match(rec.etag(), Some(&row.etag), R::NOUN) {
                            Ok(()) => tx
                                .delete(R::TABLE, &key)
                                .map(|_| ())
                                .map_err(ServiceError::from),
                            Err(e) => Err(e),
                        },
                    }
                }
                BulkMode::UpdateIfMatchEtag => {
                    let etag = rec.etag().map(str::to_owned);
                    match etag {
                        None => Err(ServiceError::invalid(
                            "etag",
                            "is required for updateIfMatchETag",
                        )),
                        Some(e) => write_one(tx, rec, Some(&e), op.mode).map(|_| ()),
                    }
                }
                _ => write_one(tx, rec, None, op.mode).map(|_| ()),
            };
            if let Err(e) = outcome {
                if e.status == StatusCode::INTERNAL_SERVER_ERROR {
                    return Err(e);
                }
                errors.push(serde_json::json!({
                    R::ID_FIELD: id,
                    "errorCode": e.code,
                    "errorStatus": e.message,
                }));
            }
        }
        Ok::<_, ServiceError>(errors)
    })?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"isSuccessful": result.is_empty(), "errors": result}),
    ))
}

/// The page size and continuation of a query request.
pub fn paging(headers: &HeaderMap) -> Result<(usize, Option<String>), ServiceError> {
    let size = match headers.get("x-ms-max-item-count") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ServiceError::invalid("x-ms-max-item-count", format!("must be 1 to {MAX_PAGE}"))
            })?,
    };
    let after = match headers
        .get("x-ms-continuation")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("") => None,
        Some(t) => Some(
            B64URL
                .decode(t.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ServiceError::invalid("x-ms-continuation", "is not a token this service issued")
                })?,
        ),
    };
    Ok((size, after))
}

/// Checks a query text: only "everything" queries are supported.
pub fn check_query(
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(), ServiceError> {
    let spec: QuerySpecification = body::parse(headers, raw)?;
    let q = spec.query.trim().to_ascii_lowercase();
    let everything = q == "*" || (q.starts_with("select *") && !q.contains(" where "));
    if !everything {
        return Err(ServiceError::invalid(
            "query",
            "only \"*\" and \"SELECT * FROM ...\" without WHERE are supported",
        ));
    }
    Ok(())
}

/// A query page: JSON array plus `x-ms-item-type`, `x-ms-max-item-count` and, only when
/// more pages follow, `x-ms-continuation`.
pub fn page_response<T: Serialize>(
    items: &[T],
    item_type: ItemType,
    page_size: usize,
    next_key: Option<&str>,
) -> Response {
    let mut resp = json_response(StatusCode::OK, &items);
    let h = resp.headers_mut();
    h.insert(
        "x-ms-item-type",
        HeaderValue::from_static(item_type.as_str()),
    );
    h.insert("x-ms-max-item-count", HeaderValue::from(page_size));
    if let Some(k) = next_key
        && let Ok(v) = HeaderValue::from_str(&B64URL.encode(k))
    {
        h.insert("x-ms-continuation", v);
    }
    resp
}

/// `POST /{family}/query`.
async fn query<R: Record>(
    State(st): St,
    headers: HeaderMap,
    raw: Raw,
) -> Result<Response, ServiceError> {
    st.authorize(&headers, Right::EnrollmentRead)?;
    check_query(&headers, raw)?;
    let (size, after) = paging(&headers)?;
    let mut rows = st
        .store
        .read(|tx| tx.page(R::TABLE, after.as_deref(), size + 1, None))?;
    let more = rows.len() > size;
    rows.truncate(size);
    let next = if more {
        rows.last().map(|r| r.key.clone())
    } else {
        None
    };
    let items = rows
        .iter()
        .map(|r| decode::<R>(&r.json).map(R::for_output))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(&items, R::ITEM, size, next.as_deref()))
}

/// The routes of one record type, under `R::PATH`.
pub fn routes<R: Record>() -> Router<Arc<AppState>> {
    let p = R::PATH;
    Router::new()
        .route(p, post(bulk::<R>))
        .route(&format!("{p}/query"), post(query::<R>))
        .route(
            &format!("{p}/{{id}}"),
            routing::put(put::<R>).get(get::<R>).delete(delete::<R>),
        )
        .route(
            &format!("{p}/{{id}}/attestationmechanism"),
            post(attestation::<R>),
        )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn if_match_rules() {
        assert!(check_if_match(None, Some("\"a\""), "x").is_ok());
        assert!(check_if_match(Some("*"), None, "x").is_ok());
        assert!(check_if_match(Some("\"a\""), Some("\"a\""), "x").is_ok());
        assert!(check_if_match(Some("a"), Some("\"a\""), "x").is_ok());
        let e = check_if_match(Some("\"b\""), Some("\"a\""), "x").unwrap_err();
        assert_eq!(e.status, StatusCode::PRECONDITION_FAILED);
        assert!(check_if_match(Some("\"b\""), None, "x").is_err());
    }
}
