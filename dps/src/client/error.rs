//! Errors of the service client. Retryable and fatal failures are told apart by type.

use std::path::{Path, PathBuf};

use crate::wire::ProvisioningServiceErrorDetails;
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
    /// The client certificate and key (PEM) could not be used.
    #[error(
        "the client certificate and key could not be used (PEM: certificate chain, then a PKCS#8, SEC1 or RSA key)"
    )]
    Identity(#[source] reqwest::Error),
    /// A registration was still being assigned when the wait ran out.
    #[error(
        "the registration was still being assigned after {waited:?} (operation {operation_id})"
    )]
    StillAssigning {
        /// The operation last polled.
        operation_id: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The unit's TPM failed (the challenge's import, or signing).
    #[error("the unit's TPM: {0}")]
    Tpm(String),
    /// A TPM unit's first register call was not answered with a challenge.
    #[error(
        "the service answered a TPM unit's first call without a challenge (HTTP 401 with an authenticationKey)"
    )]
    NoTpmChallenge,
    /// Building the HTTP client failed.
    #[error("building the HTTP client failed")]
    Build(#[source] reqwest::Error),
    /// The TLS configuration of a client whose key is in a token could not be made.
    #[error("setting up TLS with the client key failed: {0}")]
    Tls(String),
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

/// The certificates of a PEM CA file, to trust besides the system's.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| ClientError::ParseCa {
        path: path.to_owned(),
        source,
    })
}

impl ClientError {
    /// The error a DPS answer with a failure status stands for: the DPS error body's code,
    /// message and tracking id when it has one, `Retry-After` when given.
    #[must_use]
    pub fn from_answer(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> Self {
        let details: Option<ProvisioningServiceErrorDetails> = serde_json::from_slice(body).ok();
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Self::Service {
            status,
            code: details.as_ref().map(|d| d.error_code),
            message: details.as_ref().map_or_else(
                || String::from_utf8_lossy(body).chars().take(300).collect(),
                |d| d.message.clone(),
            ),
            tracking_id: details.map(|d| d.tracking_id),
            retry_after,
        }
    }

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
