//! DPS-style error responses: JSON body `{errorCode, trackingId, message, timestampUtc}` plus
//! the `x-ms-error-code` header. Internal causes go to the log, never to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::store::StoreError;
use crate::wire::ProvisioningServiceErrorDetails;

/// An error answer of the service.
#[derive(Debug)]
pub struct ServiceError {
    /// HTTP status.
    pub status: StatusCode,
    /// Six-digit DPS code.
    pub code: i64,
    /// Message for the caller (never secrets or internals).
    pub message: String,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

/// DPS error codes used by this service (status * 1000 + detail).
pub mod code {
    /// Malformed request (JSON, headers).
    pub const BAD_REQUEST: i64 = 400_000;
    /// Unsupported api-version.
    pub const INVALID_API_VERSION: i64 = 400_001;
    /// A field failed validation.
    pub const ARGUMENT_INVALID: i64 = 400_004;
    /// Too many items in a bulk call.
    pub const BULK_TOO_LARGE: i64 = 400_007;
    /// Missing, malformed, expired or wrong SAS; or a policy without the right.
    pub const UNAUTHORIZED: i64 = 401_002;
    /// The resource does not exist.
    pub const NOT_FOUND: i64 = 404_001;
    /// The method is not supported on the resource.
    pub const METHOD_NOT_ALLOWED: i64 = 405_000;
    /// The record already exists.
    pub const CONFLICT: i64 = 409_001;
    /// `If-Match` did not match.
    pub const PRECONDITION_FAILED: i64 = 412_002;
    /// Body larger than allowed.
    pub const TOO_LARGE: i64 = 413_001;
    /// Body is not JSON.
    pub const UNSUPPORTED_MEDIA_TYPE: i64 = 415_001;
    /// Quota exceeded.
    pub const THROTTLED: i64 = 429_001;
    /// Internal failure.
    pub const INTERNAL: i64 = 500_000;
    /// The service is unavailable for a while.
    pub const UNAVAILABLE: i64 = 503_000;
}

impl ServiceError {
    /// An error with status, code and message.
    pub fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 naming the field that failed.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::ARGUMENT_INVALID,
            format!("{field}: {why}"),
        )
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code::CONFLICT, message)
    }

    /// 412.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            code::PRECONDITION_FAILED,
            message,
        )
    }

    /// 429 with `Retry-After`.
    pub fn throttled(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::THROTTLED,
                "operation quota exceeded; retry after the Retry-After delay",
            )
        }
    }

    /// 500 with a generic message.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "internal error; see the service log",
        )
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %ErrorChain(&e), "store failure");
        Self::internal()
    }
}

/// Displays an error with its `source()` chain, for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(s) = cur {
            write!(f, ": {s}")?;
            cur = s.source();
        }
        Ok(())
    }
}

impl ServiceError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The DPS error body (JSON), as HTTP answers carry it and MQTT replies too.
    #[must_use]
    pub fn body(&self) -> Vec<u8> {
        let body = ProvisioningServiceErrorDetails {
            error_code: self.code,
            tracking_id: uuid::Uuid::new_v4().to_string(),
            message: self.message.clone(),
            info: None,
            timestamp_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Seconds to wait before trying again (a 429).
    #[must_use]
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let text = self.body();
        let mut resp = (self.status, text).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&self.code.to_string()) {
            h.insert("x-ms-error-code", v);
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
