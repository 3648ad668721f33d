//! Service-API authentication: SAS tokens signed with a policy key, and the policy's rights
//! checked per route.

use std::fmt;
use std::str::FromStr;

use axum::http::{HeaderMap, header};

use super::error::ServiceError;
use super::state::AppState;
use crate::sas::{SasToken, SharedAccessKey};

/// A right a policy may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Manage the service (policies, linked hubs).
    ServiceConfig,
    /// Read enrollments and groups.
    EnrollmentRead,
    /// Write enrollments and groups.
    EnrollmentWrite,
    /// Read registration records.
    RegistrationStatusRead,
    /// Delete registration records.
    RegistrationStatusWrite,
}

impl Right {
    /// Every right (what the owner policy holds).
    pub const ALL: [Right; 5] = [
        Self::ServiceConfig,
        Self::EnrollmentRead,
        Self::EnrollmentWrite,
        Self::RegistrationStatusRead,
        Self::RegistrationStatusWrite,
    ];

    /// The name as written in policies.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceConfig => "ServiceConfig",
            Self::EnrollmentRead => "EnrollmentRead",
            Self::EnrollmentWrite => "EnrollmentWrite",
            Self::RegistrationStatusRead => "RegistrationStatusRead",
            Self::RegistrationStatusWrite => "RegistrationStatusWrite",
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown right name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown right {0:?}; known: ServiceConfig, EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite"
)]
pub struct UnknownRight(pub String);

impl FromStr for Right {
    type Err = UnknownRight;
    fn from_str(s: &str) -> Result<Self, UnknownRight> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRight(s.trim().to_owned()))
    }
}

/// Parses a comma-separated list of rights.
pub fn parse_rights(s: &str) -> Result<Vec<Right>, UnknownRight> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Right::from_str)
        .collect()
}

/// Formats rights as stored.
#[must_use]
pub fn format_rights(rights: &[Right]) -> String {
    rights
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl AppState {
    /// Checks the request's SAS token and that its policy holds `right`.
    pub fn authorize(&self, headers: &HeaderMap, right: Right) -> Result<(), ServiceError> {
        let text = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ServiceError::unauthorized("missing Authorization header"))?;
        let token = SasToken::parse(text)
            .map_err(|e| ServiceError::unauthorized(format!("malformed SAS token: {e}")))?;
        let resource = token.resource();
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let known = self.host_names.contains(&resource);
        if !known && host.as_deref() != Some(resource.as_str()) {
            return Err(ServiceError::unauthorized(
                "SAS token resource does not name this service",
            ));
        }
        let name = token
            .key_name()
            .ok_or_else(|| ServiceError::unauthorized("SAS token lacks skn (the policy name)"))?;
        let policy = self.store.read(|tx| tx.policy(name))?;
        let Some((row, primary, secondary)) = policy else {
            return Err(ServiceError::unauthorized("unknown policy"));
        };
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        // Expired is reported only for a token whose signature matched a key.
        let mut outcome = Err(crate::sas::SasError::SignatureMismatch);
        for k in [&primary, &secondary] {
            let key = std::str::from_utf8(k)
                .ok()
                .and_then(|t| SharedAccessKey::from_base64(t).ok());
            let Some(key) = key else { continue };
            match token.verify(&key, now) {
                Ok(()) => {
                    outcome = Ok(());
                    break;
                }
                Err(crate::sas::SasError::SignatureMismatch) => {}
                Err(e) => outcome = Err(e),
            }
        }
        if let Err(e) = outcome {
            return Err(ServiceError::unauthorized(format!(
                "SAS token refused: {e}"
            )));
        }
        let has = parse_rights(&row.rights)
            .unwrap_or_default()
            .contains(&right);
        if !has {
            return Err(ServiceError::unauthorized(format!(
                "policy {} lacks the {right} right",
                row.name
            )));
        }
        Ok(())
    }
}
