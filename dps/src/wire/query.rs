//! Query specification and the item types named by `x-ms-item-type`.

use serde::{Deserialize, Serialize};

/// Body of a query request, e.g. `{"query":"*"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpecification {
    /// The query text.
    pub query: String,
}

impl QuerySpecification {
    /// The query that matches everything.
    #[must_use]
    pub fn all() -> Self {
        Self { query: "*".into() }
    }
}

/// Value of the `x-ms-item-type` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    /// Individual enrollments.
    Enrollment,
    /// Enrollment groups.
    EnrollmentGroup,
    /// Registration states.
    DeviceRegistration,
}

impl ItemType {
    /// The header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrollment => "Enrollment",
            Self::EnrollmentGroup => "EnrollmentGroup",
            Self::DeviceRegistration => "DeviceRegistration",
        }
    }
}
