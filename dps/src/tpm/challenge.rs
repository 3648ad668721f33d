//! The `authenticationKey` blob, built without a TPM (`shared/notes/dps-tpm.md` F1 and F3;
//! TPM 2.0 Part 1 sections 23 and 24, Part 3 MakeCredential and Duplicate):
//!
//! 1. a 16-byte inner key, sent to the EK as a credential bound to the SRK's Name
//!    (MakeCredential): only that TPM, holding that SRK, recovers it (ActivateCredential);
//! 2. the HMAC-SHA256 key, duplicated to the SRK with that inner key as the inner wrapper:
//!    the TPM imports it under its SRK (Import) and signs the unit's SAS token with it.

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Digest as _, Sha256};

use super::marshal::{
    MarshalError, RsaPublic, hmac_key_public, hmac_key_sensitive, name_of, tpm2b,
};

type HmacSha256 = Hmac<Sha256>;
type CfbEnc = cfb_mode::Encryptor<Aes128>;

/// Why no blob could be built.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// The EK or SRK is not a usable RSA public area.
    #[error(transparent)]
    Key(#[from] MarshalError),
    /// The key's symmetric algorithm is not AES-128, which the unit's Import uses.
    #[error("the {0} protects with {1}-bit keys; DPS TPM attestation needs AES-128")]
    Symmetric(&'static str, u16),
    /// RSA-OAEP encryption to the key failed (a malformed modulus).
    #[error("encrypting to the {0} failed: {1}")]
    Rsa(&'static str, rsa::Error),
}

/// KDFa with SHA-256 (TPM 2.0 Part 1 11.4.10.2): counter-mode HMAC over
/// `[i]32 ‖ label ‖ 00 ‖ context_u ‖ context_v ‖ [bits]32`.
#[must_use]
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let want = usize::try_from(bits / 8).unwrap_or(0);
    let mut out = Vec::with_capacity(want + 32);
    let mut counter: u32 = 1;
    while out.len() < want {
        // HMAC takes keys of any length.
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            break;
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// AES-128-CFB with a zero IV, as the TPM protects credentials and duplicates.
fn cfb(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    // The keys here come from KDFa(…, 128) or are the 16-byte inner key.
    if let Ok(c) = CfbEnc::new_from_slices(key, &[0u8; 16]) {
        c.encrypt(&mut buf);
    }
    buf
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b[..]);
    b
}

/// RSA-OAEP-SHA256 of `seed` to `key`, with the TPM's label (which includes its NUL).
fn oaep(
    key: &RsaPublic,
    what: &'static str,
    label: &str,
    seed: &[u8],
) -> Result<Vec<u8>, ChallengeError> {
    let pk = RsaPublicKey::new(
        BigUint::from_bytes_be(&key.modulus),
        BigUint::from(key.exponent),
    )
    .map_err(|e| ChallengeError::Rsa(what, e))?;
    pk.encrypt(
        &mut rand_core_rng(),
        Oaep::new_with_label::<Sha256, _>(label),
        seed,
    )
    .map_err(|e| ChallengeError::Rsa(what, e))
}

/// The RNG the `rsa` crate takes (rand_core 0.6's traits, from the OS).
fn rand_core_rng() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

/// The `authenticationKey` blob that gives `hmac_key` to the TPM whose EK and SRK are these
/// TPM2B_PUBLIC areas (as the unit sent them, decoded from base64).
pub fn authentication_key_blob(
    ek: &[u8],
    srk: &[u8],
    hmac_key: &[u8],
) -> Result<Vec<u8>, ChallengeError> {
    let ek = RsaPublic::parse(ek, "EK")?;
    let srk = RsaPublic::parse(srk, "SRK")?;
    for (k, what) in [(&ek, "EK"), (&srk, "SRK")] {
        if k.symmetric_bits != 128 {
            return Err(ChallengeError::Symmetric(what, k.symmetric_bits));
        }
    }
    let srk_name = srk.name();
    let inner: [u8; 16] = random();

    // 1. MakeCredential: the inner key to the EK, for the SRK's Name.
    let seed: [u8; 32] = random();
    let secret = oaep(&ek, "EK", "IDENTITY\0", &seed)?;
    let sym = kdfa(
        &seed,
        "STORAGE",
        &srk_name,
        &[],
        u32::from(ek.symmetric_bits),
    );
    let enc_identity = cfb(&sym, &tpm2b(&inner));
    let integrity_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let integrity = hmac(&integrity_key, &[&enc_identity, &srk_name]);
    let mut id_object = tpm2b(&integrity);
    id_object.extend_from_slice(&enc_identity);

    // 2. The HMAC key object.
    let key_seed: [u8; 32] = random();
    let unique = Sha256::new()
        .chain_update(key_seed)
        .chain_update(hmac_key)
        .finalize();
    let public = hmac_key_public(&unique);
    let key_name = name_of(&public);
    let sensitive = tpm2b(&hmac_key_sensitive(&key_seed, hmac_key));

    // 3. Duplicate to the SRK: inner wrapper with the inner key, outer with a seed to the SRK.
    let inner_digest = Sha256::new()
        .chain_update(&sensitive)
        .chain_update(&key_name)
        .finalize();
    let mut inner_plain = tpm2b(&inner_digest);
    inner_plain.extend_from_slice(&sensitive);
    let dup_inner = cfb(&inner, &inner_plain);
    let seed2: [u8; 32] = random();
    let in_sym_seed = oaep(&srk, "SRK", "DUPLICATE\0", &seed2)?;
    let sym2 = kdfa(
        &seed2,
        "STORAGE",
        &key_name,
        &[],
        u32::from(srk.symmetric_bits),
    );
    let enc = cfb(&sym2, &dup_inner);
    let outer_key = kdfa(&seed2, "INTEGRITY", &[], &[], 256);
    let outer = hmac(&outer_key, &[&enc, &key_name]);
    let mut duplicate = tpm2b(&outer);
    duplicate.extend_from_slice(&enc);

    let mut blob = tpm2b(&id_object);
    blob.extend_from_slice(&tpm2b(&secret));
    blob.extend_from_slice(&tpm2b(&duplicate));
    blob.extend_from_slice(&tpm2b(&in_sym_seed));
    blob.extend_from_slice(&tpm2b(&public));
    blob.extend_from_slice(&tpm2b(&[]));
    Ok(blob)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tpm::marshal::split_blob;

    /// An RSA-2048 public area shaped like the SDK's SRK template (F6), around `modulus`.
    fn srk_like(modulus: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
        a.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
        a.extend_from_slice(&0x0003_0472u32.to_be_bytes());
        a.extend_from_slice(&tpm2b(&[]));
        a.extend_from_slice(&0x0006u16.to_be_bytes()); // AES
        a.extend_from_slice(&128u16.to_be_bytes());
        a.extend_from_slice(&0x0043u16.to_be_bytes()); // CFB
        a.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme NULL
        a.extend_from_slice(&2048u16.to_be_bytes());
        a.extend_from_slice(&0u32.to_be_bytes());
        a.extend_from_slice(&tpm2b(modulus));
        tpm2b(&a)
    }

    #[test]
    fn kdfa_counts_blocks_and_truncates() {
        let k = kdfa(b"key", "STORAGE", b"u", b"", 128);
        assert_eq!(k.len(), 16);
        let long = kdfa(b"key", "STORAGE", b"u", b"", 512);
        assert_eq!(long.len(), 64);
        // The first block does not depend on the length asked for beyond the bits field.
        assert_ne!(k[..], long[..16]);
        assert_eq!(kdfa(b"key", "STORAGE", b"u", b"", 128), k);
    }

    #[test]
    fn a_blob_has_six_parts_and_the_sizes_the_sdks_expect() {
        let modulus = [0xC5u8; 256];
        let srk = srk_like(&modulus);
        let blob = authentication_key_blob(&srk, &srk, &[7u8; 32]).unwrap();
        // F1: with RSA-2048 keys and a 32-byte HMAC key, 766 bytes.
        assert_eq!(blob.len(), 766);
        let p = split_blob(&blob).unwrap();
        assert_eq!(p.encrypted_secret.len(), 256);
        assert_eq!(p.in_sym_seed.len(), 256);
        assert!(p.data.is_empty());
        let public = RsaPublic::parse(&srk, "SRK").unwrap();
        assert_eq!(public.modulus, modulus);
        assert_eq!(public.exponent, 65_537);
        assert_eq!(public.symmetric_bits, 128);
    }

    #[test]
    fn keys_the_unit_cannot_import_are_refused_with_a_reason() {
        let mut ecc = srk_like(&[1u8; 256]);
        ecc[3] = 0x23;
        let e = authentication_key_blob(&ecc, &srk_like(&[1u8; 256]), &[0u8; 32]).unwrap_err();
        assert!(e.to_string().contains("EK is an ECC key"), "{e}");
        let e = RsaPublic::parse(&[0, 10, 0, 1], "SRK").unwrap_err();
        assert_eq!(e.to_string(), "SRK is cut short");
    }
}
