//! Errors of the key layer; each variant names the operation that failed. Messages never
//! carry key material.

use crate::hsm::HsmError;

/// A failure making, importing or using a line key. HSM errors are boxed: they are large and
/// these results travel through every unit's hot path.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The group key is not in the token (run `station group sync`).
    #[error("the HSM holds no key for enrollment group {group_id} (run `station group sync`)")]
    GroupKeyMissing {
        /// The group.
        group_id: String,
    },
    /// Finding the group key failed.
    #[error("cannot look up the key of enrollment group {group_id} in the HSM")]
    FindGroupKey {
        /// The group.
        group_id: String,
        /// HSM error.
        #[source]
        source: Box<HsmError>,
    },
    /// The HMAC that derives a unit key failed.
    #[error("deriving the key of {registration_id} from group {group_id} failed in the HSM")]
    Derive {
        /// The group.
        group_id: String,
        /// The unit.
        registration_id: String,
        /// HSM error.
        #[source]
        source: Box<HsmError>,
    },
    /// The token's RNG failed.
    #[error("drawing random bytes from the HSM failed")]
    Random(#[source] Box<HsmError>),
    /// The group key from DPS is not base64.
    #[error("the key DPS returned for group {group_id} is not base64")]
    GroupKeyNotBase64 {
        /// The group.
        group_id: String,
    },
    /// The group key from DPS has a length DPS itself would refuse.
    #[error("the key DPS returned for group {group_id} is {len} bytes; DPS keys are 16 to 64")]
    GroupKeyLength {
        /// The group.
        group_id: String,
        /// Decoded length.
        len: usize,
    },
    /// Another key already holds the group's label: refused rather than overwritten.
    #[error(
        "the HSM already holds a different key labelled {label:?} for group {group_id}; the key in DPS changed or another DPS target uses the same group id. Refusing to replace it: units already made carry keys derived from the old one"
    )]
    GroupKeyMismatch {
        /// The group.
        group_id: String,
        /// The token label.
        label: String,
    },
    /// Writing the group key to the token failed.
    #[error("importing the key of group {group_id} into the HSM failed")]
    ImportGroupKey {
        /// The group.
        group_id: String,
        /// HSM error.
        #[source]
        source: Box<HsmError>,
    },
    /// The outbox key is absent.
    #[error("the HSM has no outbox key {label:?} (run `station init` to create it)")]
    OutboxKeyMissing {
        /// Its label.
        label: String,
    },
    /// Finding or making the outbox key failed.
    #[error("cannot find or create the outbox key in the HSM")]
    OutboxKey(#[source] Box<HsmError>),
    /// Encrypting an outbox payload failed.
    #[error("sealing an outbox payload in the HSM failed")]
    Seal(#[source] cryptoki::error::Error),
    /// The sealed payload is not in the station's format.
    #[error("the sealed outbox payload is malformed ({0})")]
    SealedFormat(&'static str),
    /// The payload did not authenticate: altered, or sealed under another key.
    #[error(
        "the sealed outbox payload does not authenticate (altered, or sealed by another HSM key)"
    )]
    Authentication,
    /// Decrypting an outbox payload failed for another reason.
    #[error("opening an outbox payload in the HSM failed")]
    Open(#[source] cryptoki::error::Error),
}
