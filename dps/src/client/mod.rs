//! A client for the DPS service API (Azure or the local service).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dps::client::{ClientOptions, ServiceClient};
//! let cs: dps::sas::ConnectionString = std::fs::read_to_string("var/dps/connection-string")?.parse()?;
//! let client = ServiceClient::new(cs, ClientOptions::default())?;
//! let e = client.get_enrollment(&"unit-1".parse()?).await?;
//! # Ok(()) }
//! ```
//!
//! Every call retries on its own: a 429 waits for `Retry-After`; 5xx answers and
//! connection failures back off exponentially with jitter (at least 5 s by default). A
//! token bucket keeps the client under an operations-per-minute budget. Bulk calls are
//! split into chunks of at most ten.

pub mod device;
mod error;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::error::ClientError;
use crate::ids::{EnrollmentGroupId, RegistrationId};
use crate::rate::TokenBucket;
use crate::sas::ConnectionString;
use crate::wire::{
    AttestationMechanism, BulkEnrollmentGroupOperation, BulkEnrollmentGroupOperationResult,
    BulkEnrollmentOperation, BulkEnrollmentOperationResult, BulkMode, DeviceRegistrationState,
    EnrollmentGroup, IndividualEnrollment, MAX_BULK_ITEMS, QuerySpecification,
};

/// The api-version this client speaks.
pub const API_VERSION: &str = "2021-10-01";

/// The service's collections: individual enrollments, enrollment groups, registration records.
const ENROLLMENTS: &str = "/enrollments";
const GROUPS: &str = "/enrollmentGroups";
const REGISTRATIONS: &str = "/registrations";

/// How retries behave.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, including the first.
    pub max_attempts: u32,
    /// First back-off after a 5xx or connection failure (Microsoft: at least 5 s).
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Wait after a 429 without `Retry-After`.
    pub default_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(120),
            default_retry_after: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Back-off before attempt `n + 1` after `n` failures: doubling, plus up to 50 % jitter.
    #[must_use]
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .min_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let base = exp.min(self.max_backoff);
        base.mul_f64(1.0 + rand::random::<f64>() * 0.5)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// A PEM file of extra CAs to trust (e.g. the local service's `ca.pem`).
    pub extra_ca_file: Option<PathBuf>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Operations-per-minute budget (`None`: unlimited).
    pub ops_per_min: Option<u32>,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            extra_ca_file: None,
            retry: RetryPolicy::default(),
            ops_per_min: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One page of a query.
#[derive(Debug, Clone)]
pub struct QueryPage<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass to the next call; `None` on the last page.
    pub continuation: Option<String>,
}

/// Outcome of one item of a bulk call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItemResult {
    /// Registration or group id.
    pub id: String,
    /// `Ok` or why it failed.
    pub outcome: Result<(), BulkItemError>,
}

/// Why one bulk item failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItemError {
    /// DPS error code (item error), or the call's HTTP status when the whole call failed.
    pub code: Option<i64>,
    /// What went wrong.
    pub message: String,
    /// Whether sending the item again may succeed.
    pub retryable: bool,
    /// The service's `Retry-After` when the whole call was throttled.
    pub retry_after: Option<Duration>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    cs: ConnectionString,
    opts: ClientOptions,
    bucket: Option<Mutex<TokenBucket>>,
}

/// The service client. Cheap to clone; clones share the connection pool and the budget.
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base", &self.inner.base)
            .field("connection_string", &self.inner.cs)
            .finish_non_exhaustive()
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl ServiceClient {
    /// A client for the service named by `cs` (`HostName` may carry `:port`).
    pub fn new(cs: ConnectionString, opts: ClientOptions) -> Result<Self, ClientError> {
        let mut b = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .user_agent(concat!("station-dps/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.extra_ca_file {
            b = b.tls_certs_merge(error::read_ca_file(path)?);
        }
        let http = b.build().map_err(ClientError::Build)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: format!("https://{}", cs.host_name()),
                bucket: opts
                    .ops_per_min
                    .map(|n| Mutex::new(TokenBucket::per_minute(n))),
                cs,
                opts,
            }),
        })
    }

    async fn take_token(&self) {
        let Some(b) = &self.inner.bucket else { return };
        loop {
            let wait = match b.lock() {
                Ok(mut g) => match g.try_take(Instant::now()) {
                    Ok(()) => return,
                    Err(w) => w,
                },
                // A panic elsewhere poisoned the lock: carry on without the budget.
                Err(_) => return,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends one request with retries; returns the successful answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&'static str, String)],
    ) -> Result<Answer, ClientError> {
        let policy = &self.inner.opts.retry;
        let mut failures = 0u32;
        loop {
            self.take_token().await;
            let result = self.send_once(method.clone(), path, body, extra).await;
            let err = match result {
                Ok(a) => return Ok(a),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            failures += 1;
            if failures >= policy.max_attempts {
                return Err(ClientError::Exhausted {
                    attempts: failures,
                    last: Box::new(err),
                });
            }
            let wait = match &err {
                ClientError::Service {
                    status: 429,
                    retry_after,
                    ..
                } => retry_after.unwrap_or(policy.default_retry_after),
                _ => policy.backoff(failures),
            };
            tracing::debug!(path, failures, ?wait, error = %err, "retrying DPS call");
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&'static str, String)],
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}?api-version={API_VERSION}", self.inner.base);
        let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) + 3600;
        let token = self.inner.cs.token(expiry);
        let mut req = self
            .inner
            .http
            .request(method, &url)
            .header("Authorization", token.expose_secret())
            .header("Accept", "application/json");
        for (k, v) in extra {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json; charset=utf-8")
                .body(b.to_vec());
        }
        let send_err = |source| ClientError::Send {
            host: self.inner.cs.host_name().to_owned(),
            source,
        };
        let resp = req.send().await.map_err(send_err)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(send_err)?.to_vec();
        if status.is_success() {
            return Ok(Answer {
                status,
                headers,
                body,
            });
        }
        Err(ClientError::from_answer(status.as_u16(), &headers, &body))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&'static str, String)],
    ) -> Result<T, ClientError> {
        let a = self.call(method, path, body, extra).await?;
        serde_json::from_slice(&a.body).map_err(ClientError::Decode)
    }

    fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(v).map_err(ClientError::Encode)
    }

    fn if_match(etag: Option<&str>) -> Vec<(&'static str, String)> {
        etag.map(|e| vec![("If-Match", e.to_owned())])
            .unwrap_or_default()
    }

    fn seg(id: &str) -> String {
        urlencoding::encode(id).into_owned()
    }

    /// Creates or replaces an individual enrollment; with `if_match`, only over that etag.
    /// (Unlike the Node SDK, the record's own `etag` field is not sent as `If-Match`.)
    pub async fn create_or_update_enrollment(
        &self,
        e: &IndividualEnrollment,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment, ClientError> {
        self.put_item(ENROLLMENTS, e.registration_id.as_str(), e, if_match)
            .await
    }

    /// Reads an individual enrollment (without secrets).
    pub async fn get_enrollment(
        &self,
        id: &RegistrationId,
    ) -> Result<IndividualEnrollment, ClientError> {
        self.get_item(ENROLLMENTS, id.as_str()).await
    }

    /// Deletes an individual enrollment; with `if_match`, only at that etag.
    pub async fn delete_enrollment(
        &self,
        id: &RegistrationId,
        if_match: Option<&str>,
    ) -> Result<(), ClientError> {
        self.delete_item(ENROLLMENTS, id.as_str(), if_match).await
    }

    /// The attestation of an enrollment including its secrets.
    pub async fn enrollment_attestation(
        &self,
        id: &RegistrationId,
    ) -> Result<AttestationMechanism, ClientError> {
        self.attestation_of(ENROLLMENTS, id.as_str()).await
    }

    /// Creates or replaces an enrollment group.
    pub async fn create_or_update_group(
        &self,
        g: &EnrollmentGroup,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, ClientError> {
        self.put_item(GROUPS, g.enrollment_group_id.as_str(), g, if_match)
            .await
    }

    /// Reads an enrollment group (without secrets).
    pub async fn get_group(&self, id: &EnrollmentGroupId) -> Result<EnrollmentGroup, ClientError> {
        self.get_item(GROUPS, id.as_str()).await
    }

    /// Deletes an enrollment group (its registration records stay).
    pub async fn delete_group(
        &self,
        id: &EnrollmentGroupId,
        if_match: Option<&str>,
    ) -> Result<(), ClientError> {
        self.delete_item(GROUPS, id.as_str(), if_match).await
    }

    /// The attestation of a group including its secrets.
    pub async fn group_attestation(
        &self,
        id: &EnrollmentGroupId,
    ) -> Result<AttestationMechanism, ClientError> {
        self.attestation_of(GROUPS, id.as_str()).await
    }

    /// The path of the item `id` in the collection at `collection`.
    fn item_path(collection: &str, id: &str) -> String {
        format!("{collection}/{}", Self::seg(id))
    }

    /// PUT of `item` as `id` in `collection`; the service answers with the stored record.
    async fn put_item<T: Serialize + DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
        item: &T,
        if_match: Option<&str>,
    ) -> Result<T, ClientError> {
        let body = Self::encode(item)?;
        let path = Self::item_path(collection, id);
        self.json(Method::PUT, &path, Some(&body), &Self::if_match(if_match))
            .await
    }

    /// GET of the item `id` in `collection`.
    async fn get_item<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<T, ClientError> {
        self.json(Method::GET, &Self::item_path(collection, id), None, &[])
            .await
    }

    /// DELETE of the item `id` in `collection`; with `if_match`, only at that etag.
    async fn delete_item(
        &self,
        collection: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = Self::item_path(collection, id);
        self.call(Method::DELETE, &path, None, &Self::if_match(if_match))
            .await
            .map(|_| ())
    }

    /// The attestation (secrets included) of the item `id` in `collection`.
    async fn attestation_of(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<AttestationMechanism, ClientError> {
        let path = format!("{}/attestationmechanism", Self::item_path(collection, id));
        self.json(Method::POST, &path, None, &[]).await
    }

    /// Runs a bulk operation on enrollments, in chunks of at most ten; one result per item,
    /// in order. A chunk whose call failed marks all its items failed.
    pub async fn bulk_enrollments(
        &self,
        mode: BulkMode,
        items: &[IndividualEnrollment],
    ) -> Result<Vec<BulkItemResult>, ClientError> {
        self.bulk(
            ENROLLMENTS,
            items,
            |e| e.registration_id.to_string(),
            |chunk| BulkEnrollmentOperation {
                mode,
                enrollments: chunk.to_vec(),
            },
            |r: BulkEnrollmentOperationResult| {
                r.errors
                    .into_iter()
                    .map(|e| (e.registration_id, e.error_code, e.error_status))
                    .collect()
            },
        )
        .await
    }

    /// Runs a bulk operation on groups, in chunks of at most ten.
    pub async fn bulk_groups(
        &self,
        mode: BulkMode,
        items: &[EnrollmentGroup],
    ) -> Result<Vec<BulkItemResult>, ClientError> {
        self.bulk(
            GROUPS,
            items,
            |g| g.enrollment_group_id.to_string(),
            |chunk| BulkEnrollmentGroupOperation {
                mode,
                enrollment_groups: chunk.to_vec(),
            },
            |r: BulkEnrollmentGroupOperationResult| {
                r.errors
                    .into_iter()
                    .map(|e| (e.enrollment_group_id, e.error_code, e.error_status))
                    .collect()
            },
        )
        .await
    }

    /// A bulk operation on the collection at `path`, in chunks of at most ten: `op` makes a
    /// chunk's request body, `errors` reads the (id, code, status) of each failed item from
    /// its answer.
    async fn bulk<T, Op: Serialize, Answer: DeserializeOwned>(
        &self,
        path: &str,
        items: &[T],
        id: impl Fn(&T) -> String,
        op: impl Fn(&[T]) -> Op,
        errors: impl Fn(Answer) -> Vec<(String, i64, String)>,
    ) -> Result<Vec<BulkItemResult>, ClientError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BULK_ITEMS) {
            let body = Self::encode(&op(chunk))?;
            let r: Result<Answer, _> = self.json(Method::POST, path, Some(&body), &[]).await;
            merge(&mut out, chunk.iter().map(&id), r.map(&errors));
        }
        Ok(out)
    }

    async fn query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<QueryPage<T>, ClientError> {
        let body = Self::encode(&QuerySpecification {
            query: query.to_owned(),
        })?;
        let mut extra = Vec::new();
        if let Some(n) = page_size {
            extra.push(("x-ms-max-item-count", n.to_string()));
        }
        if let Some(c) = continuation {
            extra.push(("x-ms-continuation", c.to_owned()));
        }
        let a = self.call(Method::POST, path, Some(&body), &extra).await?;
        let items = serde_json::from_slice(&a.body).map_err(ClientError::Decode)?;
        let continuation = a
            .headers
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        debug_assert!(a.status.is_success());
        Ok(QueryPage {
            items,
            continuation,
        })
    }

    /// One page of an enrollment query (`"*"` for all).
    pub async fn query_enrollments(
        &self,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<QueryPage<IndividualEnrollment>, ClientError> {
        self.query(
            &format!("{ENROLLMENTS}/query"),
            query,
            page_size,
            continuation,
        )
        .await
    }

    /// One page of a group query.
    pub async fn query_groups(
        &self,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<QueryPage<EnrollmentGroup>, ClientError> {
        self.query(&format!("{GROUPS}/query"), query, page_size, continuation)
            .await
    }

    /// Every enrollment, following continuations.
    pub async fn list_enrollments(
        &self,
        page_size: u32,
    ) -> Result<Vec<IndividualEnrollment>, ClientError> {
        self.list(&format!("{ENROLLMENTS}/query"), page_size).await
    }

    /// Every group, following continuations.
    pub async fn list_groups(&self, page_size: u32) -> Result<Vec<EnrollmentGroup>, ClientError> {
        self.list(&format!("{GROUPS}/query"), page_size).await
    }

    /// Every item a query of `*` at `path` returns, following continuations.
    async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        page_size: u32,
    ) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let p = self
                .query(path, "*", Some(page_size), next.as_deref())
                .await?;
            all.extend(p.items);
            match p.continuation {
                Some(c) => next = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// A unit's registration record.
    pub async fn get_registration_state(
        &self,
        id: &RegistrationId,
    ) -> Result<DeviceRegistrationState, ClientError> {
        self.get_item(REGISTRATIONS, id.as_str()).await
    }

    /// Deletes a unit's registration record.
    pub async fn delete_registration_state(
        &self,
        id: &RegistrationId,
        if_match: Option<&str>,
    ) -> Result<(), ClientError> {
        self.delete_item(REGISTRATIONS, id.as_str(), if_match).await
    }

    /// One page of the registration records of a group.
    pub async fn query_group_registrations(
        &self,
        group: &EnrollmentGroupId,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<QueryPage<DeviceRegistrationState>, ClientError> {
        let path = format!("{}/query", Self::item_path(REGISTRATIONS, group.as_str()));
        self.query(&path, "*", page_size, continuation).await
    }
}

/// Appends one result per id: failed items from `errors`, the rest succeeded; a failed
/// call fails every item of the chunk.
fn merge(
    out: &mut Vec<BulkItemResult>,
    ids: impl Iterator<Item = String>,
    r: Result<Vec<(String, i64, String)>, ClientError>,
) {
    match r {
        Ok(errors) => {
            for id in ids {
                let err = errors.iter().find(|(e, _, _)| e.eq_ignore_ascii_case(&id));
                out.push(BulkItemResult {
                    outcome: match err {
                        None => Ok(()),
                        Some((_, code, status)) => Err(BulkItemError {
                            code: Some(*code),
                            message: status.clone(),
                            retryable: *code / 1000 == 429 || *code / 1000 >= 500,
                            retry_after: None,
                        }),
                    },
                    id,
                });
            }
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let retry_after = e.retry_after();
            // The whole chain: "gave up after 3 attempts" alone does not say what failed.
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                message.push_str(": ");
                message.push_str(&c.to_string());
                cause = c.source();
            }
            let code = e.status().map(i64::from);
            for id in ids {
                out.push(BulkItemResult {
                    id,
                    outcome: Err(BulkItemError {
                        code,
                        message: message.clone(),
                        retryable,
                        retry_after,
                    }),
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_with_jitter() {
        let p = RetryPolicy::default();
        for n in 1..=4u32 {
            let d = p.backoff(n);
            let base = Duration::from_secs(5 * (1 << (n - 1)));
            assert!(d >= base && d <= base.mul_f64(1.5), "{n}: {d:?}");
        }
        assert!(p.backoff(30) <= p.max_backoff.mul_f64(1.5));
    }

    #[test]
    fn retryable_classification() {
        let svc = |status| ClientError::Service {
            status,
            code: None,
            message: String::new(),
            tracking_id: None,
            retry_after: None,
        };
        assert!(svc(429).is_retryable());
        assert!(svc(503).is_retryable());
        assert!(!svc(412).is_retryable());
        assert!(!svc(400).is_retryable());
        assert!(
            ClientError::Exhausted {
                attempts: 3,
                last: Box::new(svc(500))
            }
            .is_retryable()
        );
    }
}
