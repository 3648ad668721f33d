//! Errors of the PKCS#11 layer; each variant names the operation that failed.

use std::path::PathBuf;

use cryptoki::error::Error as P11Error;

use super::config::{ConfigProblem, TokenSelector};

/// A failure talking to the HSM.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The `[hsm]` section cannot be used as written.
    #[error("invalid [hsm] section")]
    Config(#[source] ConfigProblem),
    /// The PKCS#11 module could not be loaded.
    #[error("cannot load PKCS#11 module {}; check `[hsm] module`", path.display())]
    LoadModule {
        /// Module path.
        path: PathBuf,
        /// Loader error.
        #[source]
        source: P11Error,
    },
    /// C_Initialize failed.
    #[error("PKCS#11 module {} failed to initialise", path.display())]
    Initialize {
        /// Module path.
        path: PathBuf,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Listing slots or reading token information failed.
    #[error("cannot list the tokens of the PKCS#11 module")]
    ListTokens(#[source] P11Error),
    /// No token matches the configured label or serial.
    #[error("no token with {selector} in the PKCS#11 module (tokens present: {present})")]
    TokenNotFound {
        /// What was looked for.
        selector: TokenSelector,
        /// Labels of the tokens that are there.
        present: String,
    },
    /// The PIN file could not be read.
    #[error("cannot read PIN file {}", path.display())]
    ReadPinFile {
        /// PIN file path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PIN environment variable is not set.
    #[error("PIN environment variable {var} is not set")]
    PinEnvMissing {
        /// Variable name.
        var: String,
    },
    /// The PIN is empty.
    #[error("the PIN for token {token} is empty")]
    PinEmpty {
        /// Token label.
        token: String,
    },
    /// The token refused the PIN. Never retried: repeated failures lock the token.
    #[error(
        "token {token} refused the PIN (not retried: repeated wrong PINs lock the token); check the PIN file or variable"
    )]
    PinIncorrect {
        /// Token label.
        token: String,
    },
    /// The token's user PIN is locked.
    #[error("token {token} has locked its user PIN; the security officer must reset it")]
    PinLocked {
        /// Token label.
        token: String,
    },
    /// Login failed for another reason.
    #[error("cannot log in to token {token}")]
    Login {
        /// Token label.
        token: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Opening a session failed.
    #[error("cannot open a session on token {token}")]
    OpenSession {
        /// Token label.
        token: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Searching objects failed.
    #[error("cannot search objects on token {token}")]
    FindObjects {
        /// Token label.
        token: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// No key with the label.
    #[error("token {token} has no key labelled {label:?}")]
    KeyNotFound {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// More than one key with the label: refuse to guess.
    #[error("token {token} has {count} private keys labelled {label:?}; labels must be unique")]
    KeyAmbiguous {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
        /// How many.
        count: usize,
    },
    /// A key with the label already exists (generation refused).
    #[error("token {token} already has a key labelled {label:?}")]
    KeyExists {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// Writing an object (certificate) to the token failed.
    #[error("cannot write object {label:?} to token {token}")]
    CreateObject {
        /// Token label.
        token: String,
        /// Object label.
        label: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Deleting an object from the token failed.
    #[error("cannot delete object {label:?} from token {token}")]
    DestroyObject {
        /// Token label.
        token: String,
        /// Object label.
        label: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Reading attributes failed.
    #[error("cannot read attributes of key {label:?}")]
    ReadAttributes {
        /// Key label.
        label: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// The public key is not a P-256 point the station understands.
    #[error("key {label:?} is not an uncompressed P-256 public key")]
    PublicKeyFormat {
        /// Key label.
        label: String,
    },
    /// The key can leave the token, or is missing a protection: refused.
    #[error("key {label:?} is not protected by the token ({problems}); refusing to use it")]
    KeyNotProtected {
        /// Key label.
        label: String,
        /// What is wrong, e.g. "extractable, never-extractable is false".
        problems: String,
    },
    /// Generating a key failed.
    #[error("cannot generate key {label:?} on token {token}")]
    GenerateKey {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Signing failed.
    #[error("the token failed to sign with key {label:?}")]
    Sign {
        /// Key label.
        label: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// The token returned a signature of the wrong shape.
    #[error("the token returned a malformed signature for key {label:?}")]
    SignatureFormat {
        /// Key label.
        label: String,
    },
    /// Getting random bytes from the token failed.
    #[error("cannot get random bytes from token {token}")]
    Random {
        /// Token label.
        token: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// Initialising a token (embedded SoftHSM default) failed.
    #[error("cannot initialise token {label}")]
    InitToken {
        /// Token label.
        label: String,
        /// Module error.
        #[source]
        source: P11Error,
    },
    /// No free slot to initialise a new token in.
    #[error("the PKCS#11 module has no free slot for a new token {label}")]
    NoFreeSlot {
        /// Token label.
        label: String,
    },
    /// Writing the embedded SoftHSM files failed.
    #[error("cannot write {}", path.display())]
    WriteFile {
        /// File path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}
