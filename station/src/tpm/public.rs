//! A key's TPM2B_PUBLIC as read from the TPM, with the key material it carries.

use std::fmt;

use base64::Engine as _;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{Public, PublicBuffer};
use tss_esapi::traits::Marshall as _;

/// The public key inside a TPM2B_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA key.
    Rsa {
        /// Big-endian modulus.
        modulus: Vec<u8>,
        /// Public exponent (the TPM's 0 already replaced by 65537).
        exponent: u32,
    },
    /// ECC key.
    Ecc {
        /// The curve.
        curve: Curve,
        /// Big-endian X coordinate.
        x: Vec<u8>,
        /// Big-endian Y coordinate.
        y: Vec<u8>,
    },
}

/// The ECC curves an EK may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
}

impl Curve {
    /// Bytes of one coordinate.
    #[must_use]
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
}

impl PublicKey {
    /// Short description, e.g. `RSA-2048` or `ECC P-384`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Rsa { modulus, .. } => format!("RSA-{}", significant(modulus).len() * 8),
            Self::Ecc { curve, .. } => format!("ECC {curve:?}"),
        }
    }

    /// NV index of this key type's EK certificate (TCG EK Credential Profile 2.3, 2.2.1.4/5).
    #[must_use]
    pub fn ek_certificate_index(&self) -> Option<u32> {
        match self {
            Self::Rsa { modulus, .. } => match significant(modulus).len() * 8 {
                2048 => Some(0x01c0_0002),
                3072 => Some(0x01c0_001c),
                4096 => Some(0x01c0_001e),
                _ => None,
            },
            Self::Ecc { curve, .. } => Some(match curve {
                Curve::P256 => 0x01c0_000a,
                Curve::P384 => 0x01c0_0016,
                Curve::P521 => 0x01c0_0018,
            }),
        }
    }
}

/// Strips leading zero bytes of a big-endian integer.
#[must_use]
pub fn significant(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// A TPM2B_PUBLIC exactly as the TPM returned it, and the key it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicArea {
    bytes: Vec<u8>,
    key: PublicKey,
}

/// Why a public area could not be turned into a key the station handles.
#[derive(Debug, thiserror::Error)]
pub enum PublicAreaError {
    /// Marshalling to TPM2B_PUBLIC failed.
    #[error("marshalling the public area failed")]
    Marshal(#[source] tss_esapi::Error),
    /// The key type or curve is not one an EK or SRK uses.
    #[error("unsupported key type: {0}")]
    Unsupported(String),
}

impl PublicArea {
    /// Wraps a public area read from the TPM.
    pub fn from_public(public: &Public) -> Result<Self, PublicAreaError> {
        let key = match public {
            Public::Rsa {
                parameters, unique, ..
            } => {
                let e = parameters.exponent().value();
                PublicKey::Rsa {
                    modulus: unique.value().to_vec(),
                    exponent: if e == 0 { 65537 } else { e },
                }
            }
            Public::Ecc {
                parameters, unique, ..
            } => {
                let curve = match parameters.ecc_curve() {
                    EccCurve::NistP256 => Curve::P256,
                    EccCurve::NistP384 => Curve::P384,
                    EccCurve::NistP521 => Curve::P521,
                    other => return Err(PublicAreaError::Unsupported(format!("{other:?}"))),
                };
                PublicKey::Ecc {
                    curve,
                    x: unique.x().value().to_vec(),
                    y: unique.y().value().to_vec(),
                }
            }
            other => {
                return Err(PublicAreaError::Unsupported(
                    format!("{other:?}").chars().take(40).collect(),
                ));
            }
        };
        // DPS and the registration ID need the size-prefixed TPM2B_PUBLIC, not TPMT_PUBLIC.
        let bytes = PublicBuffer::try_from(public.clone())
            .and_then(|b| b.marshall())
            .map_err(PublicAreaError::Marshal)?;
        Ok(Self { bytes, key })
    }

    /// The TPM2B_PUBLIC bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key inside.
    #[must_use]
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Base64 of the TPM2B_PUBLIC, as DPS wants it.
    #[must_use]
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }
}

impl fmt::Debug for PublicArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicArea({}, {} bytes)",
            self.key.describe(),
            self.bytes.len()
        )
    }
}
