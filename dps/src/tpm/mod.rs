//! DPS TPM attestation, the protocol part (`shared/notes/dps-tpm.md`): the service proves a
//! unit holds the TPM whose endorsement key (EK) is enrolled by sending it a key only that TPM
//! can take in, the `authenticationKey` blob; the unit then signs its SAS token with that key,
//! inside its TPM.
//!
//! - [`marshal`]: the few TPM 2.0 structures involved, big-endian as the TPM writes them: RSA
//!   public areas read (EK, SRK), the HMAC key's public and sensitive areas written, and the
//!   blob's six parts split again on the unit's side.
//! - [`challenge`]: the blob built in software, as a TPM's MakeCredential (to the EK, for the
//!   SRK's Name) and Duplicate (of an HMAC-SHA256 key, to the SRK) would build it: KDFa,
//!   AES-128-CFB, HMAC-SHA256 and RSA-OAEP-SHA256 from the RustCrypto crates.
//!
//! RSA EKs and SRKs only, as the Azure SDKs make them; an ECC EK is refused with a message.

pub mod challenge;
pub mod marshal;

pub use challenge::{ChallengeError, authentication_key_blob};
pub use marshal::{BlobParts, MarshalError, RsaPublic, split_blob};
