//! Numbered schema migrations. Each runs in one transaction together with its version bump.
//! Never edit a migration that has shipped: add the next number.

/// One migration.
pub struct Migration {
    /// Schema version after this migration.
    pub version: u32,
    /// Short name, recorded in `schema_history`.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order; versions are 1, 2, 3, ...
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "audit_keyed_checkpoint",
        sql: include_str!("migrations/0002_audit_keyed_checkpoint.sql"),
    },
    Migration {
        version: 3,
        name: "tpm_endorsement_keys",
        sql: include_str!("migrations/0003_tpm_endorsement_keys.sql"),
    },
    Migration {
        version: 4,
        name: "outbox_delivery",
        sql: include_str!("migrations/0004_outbox_delivery.sql"),
    },
    Migration {
        version: 5,
        name: "unit_indexes",
        sql: include_str!("migrations/0005_unit_indexes.sql"),
    },
    Migration {
        version: 6,
        name: "unit_keys",
        sql: include_str!("migrations/0006_unit_keys.sql"),
    },
    Migration {
        version: 7,
        name: "certificate_serial_index",
        sql: include_str!("migrations/0007_certificate_serial_index.sql"),
    },
    Migration {
        version: 8,
        name: "drop_outbox_pending",
        sql: include_str!("migrations/0008_drop_outbox_pending.sql"),
    },
    Migration {
        version: 9,
        name: "outbox_exports",
        sql: include_str!("migrations/0009_outbox_exports.sql"),
    },
    Migration {
        version: 10,
        name: "dps_registrations",
        sql: include_str!("migrations/0010_dps_registrations.sql"),
    },
    Migration {
        version: 11,
        name: "certificate_status_check",
        sql: include_str!("migrations/0011_certificate_status_check.sql"),
    },
    Migration {
        version: 12,
        name: "certificate_revocation",
        sql: include_str!("migrations/0012_certificate_revocation.sql"),
    },
];

/// The schema version this build of the station writes.
#[must_use]
pub fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}
