//! Request bodies: size limit, content type, and JSON parsing that names the failing field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::{ServiceError, code};

/// Largest accepted request body. A bulk call of ten enrollments with full initial twins
/// (8 KB tags + 32 KB desired each) fits.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Parses a JSON body, mapping every failure to a DPS error.
pub fn parse<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ServiceError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServiceError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::TOO_LARGE,
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ServiceError::bad_request("request body could not be read")
        }
    })?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.contains("json") {
            return Err(ServiceError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ));
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { "body" } else { path.as_str() };
                ServiceError::invalid(field, inner)
            }
            _ => ServiceError::bad_request(format!("malformed JSON: {inner}")),
        }
    })
}
