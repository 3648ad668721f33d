//! The key operations against a real SoftHSM token (one fresh token per test).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::object::KeyType;
use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::hsm::test_token::fresh_token;

/// The group key of the DPS notes' SAS test vector, used here as a group key.
const VECTOR_KEY: &str = "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=";

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn software_derive(key_b64: &str, registration_id: &str) -> String {
    let k = dps::sas::SharedAccessKey::from_base64(key_b64).unwrap();
    dps::sas::derive_device_key(&k, registration_id)
        .to_base64()
        .expose_secret()
        .to_owned()
}

#[test]
fn derived_keys_follow_the_dps_rule() {
    let (_h, _c, s) = fresh_token("keys-derive");
    assert_eq!(
        import_group_key(&s, "sy-fleet", &secret(VECTOR_KEY)).unwrap(),
        GroupKeyImport::Imported
    );
    for rid in ["sy-SY-000001", "FirstDevice", "unit.with:odd_chars-1"] {
        let k = derive_device_key(&s, "sy-fleet", rid).unwrap();
        assert_eq!(k.expose().len(), 32);
        // Independent software computations: the dps crate's rule, and HMAC by hand.
        assert_eq!(
            k.to_base64().expose_secret(),
            software_derive(VECTOR_KEY, rid)
        );
        use hmac::Mac as _;
        let mut m =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&B64.decode(VECTOR_KEY).unwrap()).unwrap();
        m.update(rid.as_bytes());
        assert_eq!(k.expose(), &m.finalize().into_bytes()[..]);
    }
    // The label ignores case like DPS group ids do.
    let upper = derive_device_key(&s, "SY-Fleet", "FirstDevice").unwrap();
    assert_eq!(
        upper.to_base64().expose_secret(),
        software_derive(VECTOR_KEY, "FirstDevice")
    );
}

#[test]
fn a_missing_group_key_is_named() {
    let (_h, _c, s) = fresh_token("keys-missing");
    let e = derive_device_key(&s, "nobody", "r1").unwrap_err();
    assert!(matches!(e, KeyError::GroupKeyMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("station group sync"), "{e}");
    assert!(!group_key_present(&s, "nobody").unwrap());
}

#[test]
fn the_same_key_again_is_a_no_op_and_another_key_is_refused() {
    let (_h, _c, s) = fresh_token("keys-import");
    assert_eq!(
        import_group_key(&s, "g1", &secret(VECTOR_KEY)).unwrap(),
        GroupKeyImport::Imported
    );
    assert_eq!(
        import_group_key(&s, "G1", &secret(VECTOR_KEY)).unwrap(),
        GroupKeyImport::AlreadyPresent
    );
    let other = B64.encode([7u8; 32]);
    let e = import_group_key(&s, "g1", &secret(&other)).unwrap_err();
    assert!(matches!(e, KeyError::GroupKeyMismatch { .. }), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains(&other) && !text.contains(VECTOR_KEY),
        "{text}"
    );
    // The refused key changed nothing: derivation still uses the first key.
    let k = derive_device_key(&s, "g1", "FirstDevice").unwrap();
    assert_eq!(
        k.to_base64().expose_secret(),
        software_derive(VECTOR_KEY, "FirstDevice")
    );
    assert_eq!(s.objects_labelled(&group_key_label("g1")).unwrap().len(), 1);
}

#[test]
fn bad_group_keys_are_refused_without_echoing_them() {
    let (_h, _c, s) = fresh_token("keys-bad");
    let e = import_group_key(&s, "g", &secret("not base64 !!")).unwrap_err();
    assert!(matches!(e, KeyError::GroupKeyNotBase64 { .. }));
    assert!(!e.to_string().contains("not base64 !!"));
    let short = B64.encode([1u8; 8]);
    let e = import_group_key(&s, "g", &secret(&short)).unwrap_err();
    assert!(
        matches!(e, KeyError::GroupKeyLength { len: 8, .. }),
        "{e:?}"
    );
    assert!(!group_key_present(&s, "g").unwrap());
}

#[test]
fn group_and_outbox_keys_are_sensitive_and_never_leave_the_token() {
    let (_h, _c, s) = fresh_token("keys-attrs");
    import_group_key(&s, "g", &secret(VECTOR_KEY)).unwrap();
    assert!(ensure_outbox_key(&s).unwrap());
    assert!(
        !ensure_outbox_key(&s).unwrap(),
        "second call must not make another key"
    );

    let g = s.find_secret_key(&group_key_label("g")).unwrap();
    let p = s.object_protection(g, "g").unwrap();
    assert_eq!(p.sensitive, Some(true));
    assert_eq!(p.extractable, Some(false));
    assert!(
        !s.secret_value_readable(g),
        "CKA_VALUE of the group key was readable"
    );
    let info = s.secret_key_info(g, "g").unwrap();
    assert_eq!(info.key_type, Some(KeyType::GENERIC_SECRET));

    let a = s.find_secret_key(OUTBOX_KEY_LABEL).unwrap();
    let p = s.object_protection(a, OUTBOX_KEY_LABEL).unwrap();
    assert!(p.problems().is_empty(), "{}", p.summary());
    assert_eq!(p.always_sensitive, Some(true));
    assert!(
        !s.secret_value_readable(a),
        "CKA_VALUE of the AES key was readable"
    );
    let info = s.secret_key_info(a, OUTBOX_KEY_LABEL).unwrap();
    assert_eq!(info.key_type, Some(KeyType::AES));
    assert_eq!(info.value_len, Some(32));
}

#[test]
fn the_outbox_cipher_round_trips_and_refuses_tampering() {
    let (_h, _c, s) = fresh_token("keys-cipher");
    assert!(matches!(
        OutboxCipher::new(&s).unwrap_err(),
        KeyError::OutboxKeyMissing { .. }
    ));
    ensure_outbox_key(&s).unwrap();
    let c = OutboxCipher::new(&s).unwrap();
    let plain = br#"{"target":"local","enrollment":{"primaryKey":"c2VjcmV0"}}"#;
    let sealed = c.seal(plain).unwrap();
    assert_eq!(sealed.len(), 1 + 12 + plain.len() + 16);
    assert!(!sealed.windows(8).any(|w| w == b"c2VjcmV0"));
    assert_eq!(c.open(&sealed).unwrap().as_slice(), plain);
    // A fresh IV per seal: the same plaintext seals differently.
    let again = c.seal(plain).unwrap();
    assert_ne!(again[1..13], sealed[1..13]);
    assert_eq!(c.open(&again).unwrap().as_slice(), plain);
    // Any altered byte (IV, ciphertext or tag) fails authentication.
    for i in [1, 13, 13 + plain.len() / 2, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        let e = c.open(&bad).unwrap_err();
        assert!(matches!(e, KeyError::Authentication), "byte {i}: {e:?}");
    }
    // The session stays usable after a failed open.
    assert_eq!(c.open(&sealed).unwrap().as_slice(), plain);
    assert!(matches!(
        c.open(&[]).unwrap_err(),
        KeyError::SealedFormat(_)
    ));
    let mut v2 = sealed.clone();
    v2[0] = 2;
    assert!(matches!(
        c.open(&v2).unwrap_err(),
        KeyError::SealedFormat(_)
    ));
    assert!(matches!(
        c.open(&sealed[..20]).unwrap_err(),
        KeyError::SealedFormat(_)
    ));
    // Sealed under another token's outbox key: does not open here.
    let (_h2, _c2, s2) = fresh_token("keys-cipher-other");
    ensure_outbox_key(&s2).unwrap();
    let foreign = OutboxCipher::new(&s2).unwrap().seal(plain).unwrap();
    assert!(matches!(
        c.open(&foreign).unwrap_err(),
        KeyError::Authentication
    ));
}

#[test]
fn random_keys_are_64_bytes_and_differ() {
    let (_h, _c, s) = fresh_token("keys-random");
    let a = random_device_key(&s).unwrap();
    let b = random_device_key(&s).unwrap();
    assert_eq!(a.expose().len(), 64);
    assert_ne!(a.expose(), b.expose());
    assert_eq!(
        B64.decode(a.to_base64().expose_secret()).unwrap(),
        a.expose()
    );
}

#[test]
fn debug_output_shows_no_key_material() {
    let (_h, _c, s) = fresh_token("keys-debug");
    import_group_key(&s, "g", &secret(VECTOR_KEY)).unwrap();
    let k = derive_device_key(&s, "g", "FirstDevice").unwrap();
    let b64 = k.to_base64().expose_secret().to_owned();
    ensure_outbox_key(&s).unwrap();
    let c = OutboxCipher::new(&s).unwrap();
    let dbg = format!("{k:?} {:?} {c:?} {:?}", k.to_base64(), s);
    assert!(
        dbg.contains("redacted") || dbg.contains("REDACTED"),
        "{dbg}"
    );
    assert!(!dbg.contains(&b64), "{dbg}");
    assert!(!dbg.contains(&hex::encode(k.expose())), "{dbg}");
    assert!(!dbg.contains(VECTOR_KEY), "{dbg}");
}

#[test]
fn a_kept_key_opens_only_for_its_own_unit() {
    let (_h, _c, s) = fresh_token("keys-kept");
    ensure_outbox_key(&s).unwrap();
    let c = OutboxCipher::new(&s).unwrap();
    let key = random_device_key(&s).unwrap();
    let sealed = c.seal_kept(7, key.expose()).unwrap();
    assert_eq!(c.open_kept(7, &sealed).unwrap().as_slice(), key.expose());
    // Moved to another unit's row: does not open.
    assert!(matches!(
        c.open_kept(8, &sealed).unwrap_err(),
        KeyError::Authentication
    ));
    // Moved into the outbox: does not open as a payload either.
    assert!(matches!(
        c.open(&sealed).unwrap_err(),
        KeyError::Authentication
    ));
    // A key kept by a station from before keys were bound to units (sealed as an outbox
    // payload) still opens for the unit whose row holds it: a unit interrupted across an
    // upgrade is recorded, not factory-reset.
    let legacy = c.seal(key.expose()).unwrap();
    assert_eq!(c.open_kept(7, &legacy).unwrap().as_slice(), key.expose());
}
