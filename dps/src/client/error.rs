//! Errors of the service client. Retryable and fatal failures are told apart by type.

use std::path::PathBuf;
use std::time::Duration;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reading the extra CA file failed.
    #[error("reading the CA file {path} failed")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("the CA file {path} holds no usable PEM certificate")]
    ParseCa {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// Building the HTTP client failed.
    #[error("building the HTTP client failed")]
    Build(#[source] reqwest::Error),
    /// The request could not be sent or the answer not read (network, TLS, timeout).
    #[error("sending the request to {host} failed")]
    Send {
        /// Service host.
        host: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error status.
    #[error("the service answered {status}: {message}")]
    Service {
        /// HTTP status.
        status: u16,
        /// DPS error code from the body, when present.
        code: Option<i64>,
        /// Message from the body (or the raw body).
        message: String,
        /// Tracking id, for support requests.
        tracking_id: Option<String>,
        /// `Retry-After` of a 429.
        retry_after: Option<Duration>,
    },
    /// The answer was not the expected JSON.
    #[error("decoding the service's answer failed")]
    Decode(#[source] serde_json::Error),
    /// Encoding the request failed.
    #[error("encoding the request failed")]
    Encode(#[source] serde_json::Error),
    /// Retries ran out; the last error is the source.
    #[error("gave up after {attempts} attempts")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// True when the same call may succeed later: connection problems, 429, 5xx, and
    /// exhausted retries of those.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Send { .. } => true,
            Self::Service { status, .. } => *status == 429 || *status >= 500,
            Self::Exhausted { last, .. } => last.is_retryable(),
            _ => false,
        }
    }

    /// The `Retry-After` of a throttled answer (also through exhausted retries).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Service { retry_after, .. } => *retry_after,
            Self::Exhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// The HTTP status of a service error.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Service { status, .. } => Some(*status),
            Self::Exhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}
