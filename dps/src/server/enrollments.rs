//! `/enrollments`: individual enrollments.

use chrono::{DateTime, Utc};

use super::error::ServiceError;
use super::records::Record;
use super::store::{LinkedHub, Table};
use super::validate::{self, Owner};
use crate::ids::RegistrationId;
use crate::wire::{AttestationMechanism, IndividualEnrollment, ItemType};

impl Record for IndividualEnrollment {
    const PATH: &'static str = "/enrollments";
    const TABLE: Table = Table::Enrollments;
    const ITEM: ItemType = ItemType::Enrollment;
    const NOUN: &'static str = "enrollment";
    const ID_FIELD: &'static str = "registrationId";
    const BULK_FIELD: &'static str = "enrollments";

    fn key_from_path(id: &str) -> Result<String, ServiceError> {
        RegistrationId::new(id)
            .map(|r| r.canonical())
            .map_err(|e| ServiceError::invalid("registrationId", e))
    }
    fn key(&self) -> String {
        self.registration_id.canonical()
    }
    fn id(&self) -> String {
        self.registration_id.to_string()
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
        // Read-only: the service owns the registration record.
        self.registration_state = None;
    }
    fn prepare(&mut self, prefix: &str, linked: &[LinkedHub]) -> Result<(), ServiceError> {
        validate::attestation(&mut self.attestation, prefix, Owner::Enrollment)?;
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

/// Removes symmetric keys and certificate text, keeping the certificate `info`.
pub fn strip_secrets(a: &mut AttestationMechanism) {
    a.clear_symmetric_keys();
    if let Some(x) = a.x509.as_mut() {
        for c in [
            x.client_certificates.as_mut(),
            x.signing_certificates.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            for cert in [c.primary.as_mut(), c.secondary.as_mut()]
                .into_iter()
                .flatten()
            {
                cert.certificate = None;
            }
        }
    }
}
