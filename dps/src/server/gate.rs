//! Checks every request passes before its handler: api-version, the test options (latency,
//! quota, injected failures), JSON content type on answers, and operation counting.

use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    if !st.latency.is_zero() {
        tokio::time::sleep(st.latency).await;
    }
    if let Some(q) = &st.quota {
        let taken = match q.lock() {
            Ok(mut b) => b.try_take(Instant::now()),
            Err(_) => return ServiceError::internal().into_response(),
        };
        if let Err(wait) = taken {
            let secs = wait.as_secs_f64().ceil().max(1.0);
            // Truncation is fine: the wait is at most a minute.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return ServiceError::throttled(secs as u64).into_response();
        }
    }
    if st.fail_rate > 0.0 && rand::random::<f64>() < st.fail_rate {
        return ServiceError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "injected failure (--fail-rate)",
        )
        .into_response();
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
    fn finds_api_version_among_parameters() {
        assert_eq!(
            api_version(Some("a=1&api-version=2021-10-01")).as_deref(),
            Some("2021-10-01")
        );
        assert_eq!(api_version(Some("a=1")), None);
        assert_eq!(api_version(None), None);
    }
}
