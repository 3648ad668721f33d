//! Bulk enrollment operations (at most 10 items per call).

use serde::{Deserialize, Serialize};

use super::enrollment::IndividualEnrollment;
use super::group::EnrollmentGroup;

/// The DPS limit of items per bulk call.
pub const MAX_BULK_ITEMS: usize = 10;

/// What a bulk call does with each item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkMode {
    /// Create; an existing item is an error.
    #[serde(rename = "create")]
    Create,
    /// Create or replace.
    #[serde(rename = "update")]
    Update,
    /// Replace only when the item's etag matches.
    // The spec spells it `updateIfMatchETag`; the Node SDK sends `updateIfMatchEtag`.
    #[serde(rename = "updateIfMatchETag", alias = "updateIfMatchEtag")]
    UpdateIfMatchEtag,
    /// Delete.
    #[serde(rename = "delete")]
    Delete,
}

/// A bulk call on individual enrollments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperation {
    /// The operation.
    pub mode: BulkMode,
    /// The items (at most [`MAX_BULK_ITEMS`]).
    pub enrollments: Vec<IndividualEnrollment>,
}

/// A bulk call on enrollment groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperation {
    /// The operation.
    pub mode: BulkMode,
    /// The items (at most [`MAX_BULK_ITEMS`]).
    pub enrollment_groups: Vec<EnrollmentGroup>,
}

/// One failed item of a bulk call on enrollments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationError {
    /// The item.
    pub registration_id: String,
    /// DPS error code.
    pub error_code: i64,
    /// What went wrong.
    pub error_status: String,
}

/// Result of a bulk call on enrollments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// The failed items.
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentOperationError>,
}

/// One failed item of a bulk call on groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationError {
    /// The item.
    pub enrollment_group_id: String,
    /// DPS error code.
    pub error_code: i64,
    /// What went wrong.
    pub error_status: String,
}

/// Result of a bulk call on groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// The failed items.
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentGroupOperationError>,
}
