//! Checks every request passes before its handler: api-version, the test options (latency,
//! quota, injected failures), JSON content type on answers, and operation counting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ServiceError, code};
use super::state::AppState;

/// api-versions clients in use send (C 2018-04-01, C# 2019-03-31, Node/az 2021-10-01).
pub const API_VERSIONS: [&str; 4] = ["2018-04-01", "2019-03-31", "2021-06-01", "2021-10-01"];

fn api_version(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v.to_owned())
}

/// Test option: faults forced on the next requests, for faults the real service shows only
/// under load or in a race (a 429 burst, a 5xx spell, an etag changed between a read and a
/// write). Counters are armed at start (`dps serve --throttle-next ...`) or while serving
/// through [`super::Server::faults`]; each forced answer uses one count.
#[derive(Debug, Default)]
pub struct Faults {
    throttle: AtomicU32,
    throttle_retry_after_s: AtomicU64,
    fail: AtomicU32,
    stale_if_match: AtomicU32,
}

impl Faults {
    /// Answers the next `n` requests 429 with `Retry-After: retry_after_s`.
    pub fn throttle_next(&self, n: u32, retry_after_s: u64) {
        self.throttle_retry_after_s
            .store(retry_after_s.max(1), Ordering::SeqCst);
        self.throttle.store(n, Ordering::SeqCst);
    }

    /// Answers the next `n` requests 503.
    pub fn fail_next(&self, n: u32) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Answers the next `n` requests that carry `If-Match` 412, as if the record changed
    /// since the caller read it.
    pub fn stale_if_match_next(&self, n: u32) {
        self.stale_if_match.store(n, Ordering::SeqCst);
    }

    /// Forced answers still armed: (429s, 503s, 412s).
    pub fn left(&self) -> (u32, u32, u32) {
        (
            self.throttle.load(Ordering::SeqCst),
            self.fail.load(Ordering::SeqCst),
            self.stale_if_match.load(Ordering::SeqCst),
        )
    }

    /// Takes one count; true when one was left.
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The forced answer for this request, if any.
    fn forced(&self, has_if_match: bool) -> Option<ServiceError> {
        if Self::take(&self.throttle) {
            let secs = self.throttle_retry_after_s.load(Ordering::SeqCst);
            return Some(ServiceError::throttled(secs));
        }
        if Self::take(&self.fail) {
            return Some(ServiceError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::UNAVAILABLE,
                "injected failure (test option: fail next)",
            ));
        }
        if has_if_match && Self::take(&self.stale_if_match) {
            return Some(ServiceError::new(
                StatusCode::PRECONDITION_FAILED,
                code::PRECONDITION_FAILED,
                "the etag does not match (injected: test option stale If-Match)",
            ));
        }
        None
    }
}

/// What every call passes before it is served, over HTTPS and MQTT alike: the test options'
/// delay, the operation quota (429 with the wait), the forced faults and the random failure
/// rate.
pub async fn admit(st: &AppState, has_if_match: bool) -> Result<(), ServiceError> {
    if !st.latency.is_zero() {
        tokio::time::sleep(st.latency).await;
    }
    if let Some(q) = &st.quota {
        let taken = match q.lock() {
            Ok(mut b) => b.try_take(Instant::now()),
            Err(_) => return Err(ServiceError::internal()),
        };
        if let Err(wait) = taken {
            let secs = wait.as_secs_f64().ceil().max(1.0);
            // Truncation is fine: the wait is at most a minute.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return Err(ServiceError::throttled(secs as u64));
        }
    }
    if let Some(e) = st.faults.forced(has_if_match) {
        return Err(e);
    }
    if st.fail_rate > 0.0 && rand::random::<f64>() < st.fail_rate {
        return Err(ServiceError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "injected failure (--fail-rate)",
        ));
    }
    Ok(())
}

/// The middleware.
pub async fn gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let version = api_version(req.uri().query());
    match version.as_deref() {
        Some(v) if API_VERSIONS.contains(&v) => {}
        Some(v) => {
            return ServiceError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_API_VERSION,
                format!(
                    "api-version {v:?} is not supported; use one of {}",
                    API_VERSIONS.join(", ")
                ),
            )
            .into_response();
        }
        None => {
            return ServiceError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_API_VERSION,
                "the api-version query parameter is required",
            )
            .into_response();
        }
    }
    if let Err(e) = admit(&st, req.headers().contains_key(header::IF_MATCH)).await {
        return e.into_response();
    }
    let mut resp = next.run(req).await;
    if resp.status().as_u16() < 400 {
        st.ops_pending.fetch_add(1, Ordering::Relaxed);
    }
    resp.headers_mut()
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn forced_faults_count_down_in_order() {
        let f = Faults::default();
        assert!(f.forced(true).is_none());
        f.throttle_next(1, 3);
        f.fail_next(1);
        f.stale_if_match_next(1);
        let e = f.forced(false).unwrap();
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(3))
        );
        assert_eq!(
            f.forced(false).unwrap().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // A 412 only answers a request that carries If-Match.
        assert!(f.forced(false).is_none());
        assert_eq!(
            f.forced(true).unwrap().status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(f.left(), (0, 0, 0));
        assert!(f.forced(true).is_none());
    }

    #[test]
    fn finds_api_version_among_parameters() {
        assert_eq!(
            api_version(Some("a=1&api-version=2021-10-01")).as_deref(),
            Some("2021-10-01")
        );
        assert_eq!(api_version(Some("a=1")), None);
        assert_eq!(api_version(None), None);
    }
}
