//! The TPM 2.0 structures of DPS TPM attestation (TPM 2.0 Part 2), big-endian, sizes as u16.

use sha2::{Digest as _, Sha256};

/// TPM_ALG_RSA.
pub const ALG_RSA: u16 = 0x0001;
/// TPM_ALG_KEYEDHASH.
pub const ALG_KEYEDHASH: u16 = 0x0008;
/// TPM_ALG_SHA256.
pub const ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_HMAC.
pub const ALG_HMAC: u16 = 0x0005;
/// TPM_ALG_NULL.
pub const ALG_NULL: u16 = 0x0010;
/// TPM_ALG_ECC.
pub const ALG_ECC: u16 = 0x0023;

/// TPMA_OBJECT of the HMAC key DPS sends: userWithAuth | noDA | sign (not fixedTPM or
/// fixedParent: it is duplicated into the TPM).
pub const HMAC_KEY_ATTRIBUTES: u32 = 0x0000_0040 | 0x0000_0400 | 0x0004_0000;

/// Why a structure could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarshalError {
    /// It ended early.
    #[error("{0} is cut short")]
    Short(&'static str),
    /// Bytes followed its end.
    #[error("{0} has {1} bytes after its end")]
    Trailing(&'static str, usize),
    /// An ECC key (DPS and the Azure SDKs use RSA EKs and SRKs).
    #[error("the {0} is an ECC key; DPS TPM attestation here takes RSA EKs and SRKs")]
    Ecc(&'static str),
    /// Another key type.
    #[error("the {0} is of TPM algorithm {1:#06x}, not RSA")]
    NotRsa(&'static str, u16),
    /// A name algorithm other than SHA-256.
    #[error("the {0} has name algorithm {1:#06x}, not SHA-256")]
    NameAlg(&'static str, u16),
}

struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MarshalError> {
        if self.rest.len() < n {
            return Err(MarshalError::Short(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, MarshalError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MarshalError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A TPM2B: u16 size, then that many bytes.
    fn tpm2b(&mut self) -> Result<&'a [u8], MarshalError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The parts of an RSA key's public area (TPM2B_PUBLIC) DPS needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    /// The TPMT_PUBLIC inside the TPM2B (what the Name is computed over).
    pub area: Vec<u8>,
    /// Modulus, big-endian.
    pub modulus: Vec<u8>,
    /// Public exponent (the TPM's 0 means 65537).
    pub exponent: u32,
    /// Key bits of its symmetric algorithm (AES-128 for the EK and SRK templates); 0 when
    /// it has none.
    pub symmetric_bits: u16,
}

impl RsaPublic {
    /// Reads a TPM2B_PUBLIC holding an RSA key; `what` names it in errors ("EK", "SRK").
    pub fn parse(tpm2b_public: &[u8], what: &'static str) -> Result<Self, MarshalError> {
        let mut outer = Reader {
            what,
            rest: tpm2b_public,
        };
        let area = outer.tpm2b()?;
        if !outer.rest.is_empty() {
            return Err(MarshalError::Trailing(what, outer.rest.len()));
        }
        let mut r = Reader { what, rest: area };
        match r.u16()? {
            ALG_RSA => {}
            ALG_ECC => return Err(MarshalError::Ecc(what)),
            other => return Err(MarshalError::NotRsa(what, other)),
        }
        let name_alg = r.u16()?;
        if name_alg != ALG_SHA256 {
            return Err(MarshalError::NameAlg(what, name_alg));
        }
        let _attributes = r.u32()?;
        let _auth_policy = r.tpm2b()?;
        // TPMS_RSA_PARMS: symmetric (TPMT_SYM_DEF_OBJECT), scheme (TPMT_RSA_SCHEME), keyBits,
        // exponent.
        let sym = r.u16()?;
        let symmetric_bits = if sym == ALG_NULL {
            0
        } else {
            let bits = r.u16()?;
            let _mode = r.u16()?;
            bits
        };
        let scheme = r.u16()?;
        // RSASSA, RSAPSS and OAEP carry a hash algorithm; RSAES and NULL carry nothing.
        if matches!(scheme, 0x0014 | 0x0016 | 0x0017) {
            let _hash = r.u16()?;
        }
        let _key_bits = r.u16()?;
        let exponent = match r.u32()? {
            0 => 65_537,
            e => e,
        };
        let modulus = r.tpm2b()?.to_vec();
        if !r.rest.is_empty() {
            return Err(MarshalError::Trailing(what, r.rest.len()));
        }
        Ok(Self {
            area: area.to_vec(),
            modulus,
            exponent,
            symmetric_bits,
        })
    }

    /// The key's Name: its name algorithm (SHA-256) and the digest of its public area.
    #[must_use]
    pub fn name(&self) -> Vec<u8> {
        name_of(&self.area)
    }
}

/// The Name of an object whose TPMT_PUBLIC (name algorithm SHA-256) is `area`.
#[must_use]
pub fn name_of(area: &[u8]) -> Vec<u8> {
    let mut n = ALG_SHA256.to_be_bytes().to_vec();
    n.extend_from_slice(&Sha256::digest(area));
    n
}

/// `bytes` as a TPM2B: u16 size, then the bytes.
///
/// # Panics
/// Never for the sizes used here (all under 64 KiB).
#[must_use]
pub fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let n = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut out = n.to_be_bytes().to_vec();
    out.extend_from_slice(&bytes[..usize::from(n)]);
    out
}

/// TPMT_PUBLIC of a KEYEDHASH HMAC-SHA256 key with `unique` (= SHA-256(seed ‖ key)).
#[must_use]
pub fn hmac_key_public(unique: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + 2 + unique.len());
    p.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    p.extend_from_slice(&HMAC_KEY_ATTRIBUTES.to_be_bytes());
    p.extend_from_slice(&tpm2b(&[])); // authPolicy
    p.extend_from_slice(&ALG_HMAC.to_be_bytes()); // scheme
    p.extend_from_slice(&ALG_SHA256.to_be_bytes()); // its hash
    p.extend_from_slice(&tpm2b(unique));
    p
}

/// TPMT_SENSITIVE of a KEYEDHASH key: empty authValue, `seed`, `key`.
#[must_use]
pub fn hmac_key_sensitive(seed: &[u8], key: &[u8]) -> Vec<u8> {
    let mut s = ALG_KEYEDHASH.to_be_bytes().to_vec();
    s.extend_from_slice(&tpm2b(&[]));
    s.extend_from_slice(&tpm2b(seed));
    s.extend_from_slice(&tpm2b(key));
    s
}

/// The six parts of an `authenticationKey` blob, each still in its TPM2B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobParts {
    /// TPM2B_ID_OBJECT: the credential.
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: its seed, to the EK.
    pub encrypted_secret: Vec<u8>,
    /// TPM2B_PRIVATE: the HMAC key's duplicate.
    pub duplicate: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: the duplicate's seed, to the SRK.
    pub in_sym_seed: Vec<u8>,
    /// TPM2B_PUBLIC: the HMAC key's public area.
    pub public: Vec<u8>,
    /// TPM2B_DATA (may be empty).
    pub data: Vec<u8>,
}

/// Splits a blob into its parts (the TPM2B contents, without the size fields).
pub fn split_blob(blob: &[u8]) -> Result<BlobParts, MarshalError> {
    let mut r = Reader {
        what: "authenticationKey",
        rest: blob,
    };
    let parts = BlobParts {
        id_object: r.tpm2b()?.to_vec(),
        encrypted_secret: r.tpm2b()?.to_vec(),
        duplicate: r.tpm2b()?.to_vec(),
        in_sym_seed: r.tpm2b()?.to_vec(),
        public: r.tpm2b()?.to_vec(),
        data: r.tpm2b()?.to_vec(),
    };
    if !r.rest.is_empty() {
        return Err(MarshalError::Trailing("authenticationKey", r.rest.len()));
    }
    Ok(parts)
}
