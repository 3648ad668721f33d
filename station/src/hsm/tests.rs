//! Tests of the HSM layer against real SoftHSM2 tokens.

use cryptoki::object::ObjectClass;
use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};

use super::config::{TokenConfig, TokenSelector};
use super::error::HsmError;
use super::signer::HsmSigner;
use super::test_token::{fresh_token, fresh_token_unopened, token_dir};

#[test]
fn generated_key_is_sensitive_never_extractable_and_signs() {
    let (_hsm, _cfg, s) = fresh_token("gen");
    let key = s.generate_p256("ca-key").expect("generate");
    assert_eq!(key.point.len(), 65);
    let prot = s.require_protected(&key).expect("protected");
    assert_eq!(prot.sensitive, Some(true));
    assert_eq!(prot.extractable, Some(false));
    assert_eq!(prot.never_extractable, Some(true));
    assert_eq!(prot.decrypt, Some(false));

    let signer = HsmSigner::new(&s, key.clone());
    let msg = b"to be signed";
    let der = signer.sign_der(msg).expect("sign");
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.point).expect("point");
    let sig = p256::ecdsa::Signature::from_der(&der).expect("der sig");
    vk.verify(msg, &sig)
        .expect("signature verifies with the public key");

    let found = s.find_ec_key("ca-key").expect("find by label");
    assert_eq!(found.id, key.id);
    assert_eq!(found.point, key.point);
}

#[test]
fn second_key_with_same_label_is_refused() {
    let (_hsm, _cfg, s) = fresh_token("dup");
    s.generate_p256("k").expect("generate");
    let err = s.generate_p256("k").expect_err("duplicate label");
    assert!(matches!(err, HsmError::KeyExists { .. }), "{err}");
}

#[test]
fn missing_key_is_a_clear_error() {
    let (_hsm, _cfg, s) = fresh_token("nokey");
    let err = s.find_ec_key("absent").expect_err("no key");
    assert_eq!(
        err.to_string(),
        format!("token {} has no key labelled \"absent\"", s.token())
    );
}

#[test]
fn wrong_pin_is_one_clear_error_and_does_not_lock() {
    // Login state is per process and token in PKCS#11: use a token nobody logged in to.
    let (hsm, cfg) = fresh_token_unopened("pin");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.pin");
    std::fs::write(&bad, "0000\n").expect("write");
    let wrong = TokenConfig {
        pin_file: Some(bad),
        ..cfg.clone()
    };
    let err = hsm
        .open(&wrong, |p| p.to_path_buf())
        .expect_err("wrong PIN");
    let label = cfg.token.clone().expect("label");
    assert_eq!(
        err.to_string(),
        format!(
            "token {label} refused the PIN (not retried: repeated wrong PINs lock the token); check the PIN file or variable"
        )
    );
    // Exactly one attempt was made: the right PIN still works afterwards.
    hsm.open(&cfg, |p| p.to_path_buf())
        .expect("right PIN after one failure");
}

#[test]
fn missing_token_names_the_tokens_present() {
    let (hsm, _cfg, _s) = fresh_token("present");
    let err = hsm
        .find_token(&TokenSelector::Label("no-such-token".into()))
        .expect_err("absent token");
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "no token with label \"no-such-token\" in the PKCS#11 module (tokens present: "
        ),
        "{msg}"
    );
}

#[test]
fn missing_module_is_a_clear_error() {
    let err = super::module::Hsm::load_module(std::path::Path::new("/nonexistent/libpkcs11.so"))
        .expect_err("no module");
    assert_eq!(
        err.to_string(),
        "cannot load PKCS#11 module /nonexistent/libpkcs11.so; check `[hsm] module`"
    );
}

#[test]
fn hmac_key_is_secret_and_macs_in_the_token() {
    let (_hsm, _cfg, s) = fresh_token("hmac");
    let k = s.generate_hmac_key("audit").expect("generate");
    assert!(s.has_key("audit", ObjectClass::SECRET_KEY).expect("find"));
    let a = s.hmac_sha256(k, "audit", b"checkpoint 1").expect("mac");
    let b = s.hmac_sha256(k, "audit", b"checkpoint 1").expect("mac");
    let c = s.hmac_sha256(k, "audit", b"checkpoint 2").expect("mac");
    assert_eq!(a.len(), 32);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let found = s.find_secret_key("audit").expect("find");
    assert_eq!(
        s.hmac_sha256(found, "audit", b"checkpoint 1").expect("mac"),
        a
    );
    // A host-side SHA-256 of the data is not the MAC: the key matters.
    assert_ne!(a, Sha256::digest(b"checkpoint 1").to_vec());
}

#[test]
fn a_token_is_found_by_serial_as_well_as_by_label() {
    let (hsm, cfg, _s) = fresh_token("serial");
    let label = cfg.token.clone().expect("label");
    let by_label = hsm
        .find_token(&TokenSelector::Label(label.clone()))
        .expect("by label");
    let serial = hsm
        .context()
        .get_token_info(by_label)
        .expect("info")
        .serial_number()
        .trim()
        .to_owned();
    let by_serial = hsm
        .find_token(&TokenSelector::Serial(serial.clone()))
        .expect("by serial");
    assert_eq!(by_label, by_serial);
    // A session opened through a serial-only section logs in to the same token.
    let by_serial_cfg = TokenConfig {
        token: None,
        token_serial: Some(serial),
        ..cfg
    };
    let s = hsm
        .open(&by_serial_cfg, |p| p.to_path_buf())
        .expect("open by serial");
    assert!(s.token().starts_with("serial "));
}

#[test]
fn a_token_that_cannot_be_read_does_not_hide_the_others() {
    let (hsm, cfg, _s) = fresh_token("readable");
    let (_h, damaged) = fresh_token_unopened("damaged");
    let damaged = damaged.token.expect("label");
    // What a process killed while SoftHSM rewrote a token file leaves: an empty token.object.
    let file = std::fs::read_dir(token_dir())
        .expect("token dir")
        .map(|e| e.expect("entry").path().join("token.object"))
        .find(|f| {
            std::fs::read(f)
                .is_ok_and(|b| b.windows(damaged.len()).any(|w| w == damaged.as_bytes()))
        })
        .expect("the damaged token's file");
    std::fs::write(&file, b"").expect("empty the token file");

    let label = cfg.token.clone().expect("label");
    hsm.find_token(&TokenSelector::Label(label.clone()))
        .expect("the readable token is still found");
    let labels = hsm.token_labels().expect("labels");
    assert!(labels.contains(&label), "{labels:?}");
    assert!(!labels.contains(&damaged), "{labels:?}");
    let err = hsm
        .find_token(&TokenSelector::Label(damaged.clone()))
        .expect_err("the damaged token cannot be used");
    assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err}");
}

/// The objects of this session that are session copies of token keys, with their protection.
fn session_copies(s: &super::session::TokenSession) -> Vec<(bool, bool, bool)> {
    use cryptoki::object::{Attribute, AttributeType};
    s.session
        .find_objects(&[Attribute::Label(
            super::session::SESSION_COPY_LABEL.to_vec(),
        )])
        .expect("find")
        .into_iter()
        .map(|h| {
            let attrs = s
                .session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Token,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )
                .expect("attributes");
            let flag = |t: AttributeType| {
                attrs.iter().find_map(|a| match (a, t) {
                    (Attribute::Token(b), AttributeType::Token)
                    | (Attribute::Sensitive(b), AttributeType::Sensitive)
                    | (Attribute::Extractable(b), AttributeType::Extractable) => Some(*b),
                    _ => None,
                })
            };
            (
                flag(AttributeType::Token).expect("token"),
                flag(AttributeType::Sensitive).expect("sensitive"),
                flag(AttributeType::Extractable).expect("extractable"),
            )
        })
        .collect()
}

#[test]
fn a_key_used_again_is_used_through_an_unexportable_session_copy_of_itself() {
    let (_hsm, _cfg, s) = fresh_token("hot");
    let key = s.generate_p256("ca-key").expect("generate");
    let mac_key = s.generate_hmac_key("audit").expect("hmac key");
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.point).expect("point");

    // First use: through the token object, nothing copied.
    let first = s.hmac_sha256(mac_key, "audit", b"checkpoint").expect("mac");
    let signer = HsmSigner::new(&s, key.clone());
    let der = signer.sign_der(b"one").expect("sign");
    vk.verify(
        b"one",
        &p256::ecdsa::Signature::from_der(&der).expect("sig"),
    )
    .expect("first signature verifies");
    assert!(
        session_copies(&s).is_empty(),
        "a key used once is not copied"
    );

    // Second use on: through the copy, which is the same key.
    let again = s.hmac_sha256(mac_key, "audit", b"checkpoint").expect("mac");
    assert_eq!(
        first, again,
        "the copy computes the same MAC: it is the same key"
    );
    for msg in [b"two".as_slice(), b"three"] {
        let der = signer.sign_der(msg).expect("sign");
        vk.verify(msg, &p256::ecdsa::Signature::from_der(&der).expect("sig"))
            .expect("signature through the copy verifies with the key's public point");
    }
    let copies = session_copies(&s);
    assert_eq!(copies.len(), 2, "one copy per key used again: {copies:?}");
    for (token, sensitive, extractable) in copies {
        assert!(!token, "a copy lives in the session only");
        assert!(sensitive, "a copy is as sensitive as its key");
        assert!(!extractable, "a copy is as unexportable as its key");
    }
    // The copies are never found as the keys themselves.
    assert_eq!(
        s.find_ec_key("ca-key").expect("one key").private,
        key.private
    );
    assert_eq!(s.find_secret_key("audit").expect("one key"), mac_key);

    // Destroying a key destroys its copy too.
    s.destroy_labelled("audit").expect("destroy");
    assert_eq!(session_copies(&s).len(), 1);
}

#[test]
fn a_secret_key_is_found_once_per_session_and_looked_up_again_once_found_gone() {
    let (hsm, cfg, a) = fresh_token("found");
    let key = a.generate_hmac_key("group-key").expect("hmac key");
    assert_eq!(a.find_secret_key("group-key").expect("found"), key);
    a.hmac_sha256(key, "group key", b"unit-1").expect("mac");
    // Another session deletes it (another tool would do so from another process).
    let b = hsm.open(&cfg, |p| p.to_path_buf()).expect("second session");
    assert_eq!(b.destroy_labelled("group-key").expect("destroy"), 1);
    // This session still holds the handle it found: its next use is the one that fails...
    let stale = a.find_secret_key("group-key").expect("remembered");
    assert_eq!(stale, key);
    a.hmac_sha256(stale, "group key", b"unit-2")
        .expect_err("the key is gone");
    // ...and the session then looks it up again.
    assert!(matches!(
        a.find_secret_key("group-key").expect_err("gone"),
        HsmError::KeyNotFound { .. }
    ));
}
