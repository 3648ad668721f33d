//! Recording a unit's EK in the store, refusing an EK already recorded for another unit.

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use super::public::PublicArea;

/// What recording did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The EK was recorded for the unit.
    New,
    /// The same EK was already recorded for this unit (a retried run).
    AlreadyRecorded,
}

/// Why an EK could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum EkRecordError {
    /// Another unit has this EK.
    #[error(
        "this TPM's endorsement key is already recorded for unit {other_serial}; one TPM cannot identify two units"
    )]
    Duplicate {
        /// The other unit's row id.
        other_unit_id: i64,
        /// The other unit's serial number.
        other_serial: String,
    },
    /// This unit already has another EK.
    #[error(
        "unit {unit_id} already has a different endorsement key recorded; a replaced TPM needs a supervised re-work"
    )]
    Changed {
        /// The unit's row id.
        unit_id: i64,
    },
    /// The database failed.
    #[error("recording the endorsement key failed")]
    Sql(#[source] rusqlite::Error),
}

/// Lowercase hex SHA-256 of the EK's TPM2B_PUBLIC: the key of the UNIQUE constraint.
#[must_use]
pub fn ek_sha256(ek: &PublicArea) -> String {
    hex::encode(Sha256::digest(ek.bytes()))
}

/// Records `ek` for unit `unit_id`, inside the caller's transaction.
///
/// The UNIQUE constraint on the EK hash decides, so two fixtures recording the same TPM at
/// once cannot both succeed; the lookup afterwards only names the other unit.
pub fn record_endorsement_key(
    conn: &Connection,
    unit_id: i64,
    ek: &PublicArea,
) -> Result<Recorded, EkRecordError> {
    let hash = ek_sha256(ek);
    let inserted = conn.execute(
        "INSERT INTO tpm_endorsement_keys (unit_id, ek_sha256, ek_public, recorded_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![unit_id, hash, ek.to_base64(), crate::store::now_utc()],
    );
    match inserted {
        Ok(_) => Ok(Recorded::New),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
            let holder: Option<(i64, Option<String>)> = conn
                .query_row(
                    "SELECT t.unit_id, u.serial FROM tpm_endorsement_keys t
                     LEFT JOIN units u ON u.id = t.unit_id WHERE t.ek_sha256 = ?1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(EkRecordError::Sql)?;
            match holder {
                Some((other, _)) if other == unit_id => Ok(Recorded::AlreadyRecorded),
                Some((other, serial)) => Err(EkRecordError::Duplicate {
                    other_unit_id: other,
                    other_serial: serial.unwrap_or_else(|| format!("#{other}")),
                }),
                None => Err(EkRecordError::Changed { unit_id }),
            }
        }
        Err(e) => Err(EkRecordError::Sql(e)),
    }
}
