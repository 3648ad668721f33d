//! `/enrollmentGroups`: enrollment groups (matched case-insensitively: the Node SDK also
//! sends `/enrollmentgroups`).

use chrono::{DateTime, Utc};

use super::enrollments::strip_secrets;
use super::error::ServiceError;
use super::records::Record;
use super::store::{LinkedHub, Table};
use super::validate::{self, Owner};
use crate::ids::EnrollmentGroupId;
use crate::wire::{AttestationMechanism, EnrollmentGroup, ItemType};

impl Record for EnrollmentGroup {
    const PATH: &'static str = "/enrollmentgroups";
    const TABLE: Table = Table::Groups;
    const ITEM: ItemType = ItemType::EnrollmentGroup;
    const NOUN: &'static str = "enrollment group";
    const ID_FIELD: &'static str = "enrollmentGroupId";
    const BULK_FIELD: &'static str = "enrollmentGroups";

    fn key_from_path(id: &str) -> Result<String, ServiceError> {
        EnrollmentGroupId::new(id)
            .map(|g| g.canonical())
            .map_err(|e| ServiceError::invalid("enrollmentGroupId", e))
    }
    fn key(&self) -> String {
        self.enrollment_group_id.canonical()
    }
    fn id(&self) -> String {
        self.enrollment_group_id.to_string()
    }
    fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }
    fn created(&self) -> Option<DateTime<Utc>> {
        self.created_date_time_utc
    }
    fn stamp(&mut self, etag: String, created: DateTime<Utc>, updated: DateTime<Utc>) {
        self.etag = Some(etag);
        self.created_date_time_utc = Some(created);
        self.last_updated_date_time_utc = Some(updated);
    }
    fn prepare(&mut self, prefix: &str, linked: &[LinkedHub]) -> Result<(), ServiceError> {
        validate::attestation(&mut self.attestation, prefix, Owner::Group)?;
        validate::allocation(
            self.allocation_policy,
            self.iot_hubs.as_deref(),
            self.iot_hub_host_name.as_deref(),
            self.custom_allocation_definition.is_some(),
            linked,
            prefix,
        )?;
        validate::initial_twin(self.initial_twin.as_ref(), prefix)
    }
    fn attestation(&self) -> &AttestationMechanism {
        &self.attestation
    }
    fn for_output(mut self) -> Self {
        strip_secrets(&mut self.attestation);
        self
    }
}
