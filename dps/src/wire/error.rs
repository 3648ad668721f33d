//! The DPS error body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Body of every DPS error response (also sent as the `x-ms-error-code` header's code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningServiceErrorDetails {
    /// Six-digit DPS error code; the first three digits are the HTTP status.
    pub error_code: i64,
    /// Correlates the error with server logs.
    #[serde(default)]
    pub tracking_id: String,
    /// What went wrong.
    #[serde(default)]
    pub message: String,
    /// Extra details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Map<String, Value>>,
    /// When the error happened (ISO-8601 text as sent).
    #[serde(default)]
    pub timestamp_utc: String,
}
