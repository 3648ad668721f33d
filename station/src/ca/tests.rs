//! CA tests against real SoftHSM tokens, checked with the openssl command line.

use std::path::Path;
use std::process::Command;

use super::authority::{Authority, create_root};
use super::error::CaError;
use super::profile::Profiles;
use super::request::{CommonName, SubjectKey, UnitSubject};
use super::verify;
use crate::hsm::test_token::fresh_token;
use crate::hsm::{HsmError, TokenSession};

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is missing: install it with `apt-get install openssl`")
}

fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An openssl-made CSR for a fresh key of `newkey` (e.g. "ec" + curve options).
fn make_csr(dir: &Path, name: &str, keyopts: &[&str], extra: &[&str]) -> Vec<u8> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=ignored-by-station"];
    args.extend_from_slice(keyopts);
    args.extend_from_slice(&[
        "-keyout",
        key.to_str().expect("utf8"),
        "-out",
        csr.to_str().expect("utf8"),
    ]);
    args.extend_from_slice(extra);
    openssl_ok(&args);
    std::fs::read(&csr).expect("read csr")
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

struct TwoTier {
    root_session: TokenSession,
    ca_session: TokenSession,
    root_der: Vec<u8>,
    int_der: Vec<u8>,
}

fn two_tier() -> TwoTier {
    let profiles = Profiles::embedded().expect("profiles");
    let (_h1, _c1, root_session) = fresh_token("root");
    let (_h2, _c2, ca_session) = fresh_token("ca");
    let root_der =
        create_root(&root_session, "root-key", profiles.get("root").expect("p")).expect("root");
    let root = Authority::load(&root_session, "root-key", root_der.clone(), "root").expect("load");
    let int_key = ca_session.generate_p256("ca-key").expect("gen");
    let signer = crate::hsm::HsmSigner::new(&ca_session, int_key);
    let int = root
        .issue_ca(profiles.get("intermediate").expect("p"), &signer)
        .expect("intermediate");
    TwoTier {
        root_session,
        ca_session,
        root_der,
        int_der: int.der,
    }
}

fn write_pem(path: &Path, ders: &[&[u8]]) {
    std::fs::write(path, verify::to_pem(ders)).expect("write pem");
}

#[test]
fn leaf_from_openssl_csr_verifies_x509_strict_with_cn_and_client_auth() {
    let t = two_tier();
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = Profiles::embedded().expect("profiles");
    let ca = Authority::load(&t.ca_session, "ca-key", t.int_der.clone(), "intermediate")
        .expect("load CA");
    // The CSR asks to be a CA; the station must not copy that.
    let csr = make_csr(
        dir.path(),
        "unit",
        &P256,
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let key = SubjectKey::from_csr(&csr, profiles.get("device").expect("p")).expect("csr");
    let cn = CommonName::registration_id("unit-0001").expect("cn");
    let unit = UnitSubject {
        serial_number: Some("SN-42".into()),
        ..UnitSubject::default()
    };
    let leaf = ca
        .issue(profiles.get("device").expect("p"), &key, cn.as_str(), &unit)
        .expect("issue");
    let leaf_pem = dir.path().join("leaf.pem");
    let chain_pem = dir.path().join("chain.pem");
    let root_pem = dir.path().join("root.pem");
    let int_pem = dir.path().join("int.pem");
    write_pem(&leaf_pem, &[&leaf.der]);
    write_pem(&chain_pem, &[&t.int_der, &t.root_der]);
    write_pem(&root_pem, &[&t.root_der]);
    write_pem(&int_pem, &[&t.int_der]);
    let out = openssl_ok(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        root_pem.to_str().expect("utf8"),
        "-untrusted",
        int_pem.to_str().expect("utf8"),
        leaf_pem.to_str().expect("utf8"),
    ]);
    assert!(out.contains(": OK"), "{out}");
    let text = openssl_ok(&[
        "x509",
        "-in",
        leaf_pem.to_str().expect("utf8"),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("Subject: CN = unit-0001, serialNumber = SN-42"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Digital Signature, Key Agreement"), "{text}");
    assert!(
        text.contains("CA:FALSE"),
        "CSR's CA:TRUE must not be copied: {text}"
    );
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert_eq!(leaf.serial.hex().len(), 32);
    assert!(text.contains(&leaf.serial.hex()[..2]));
    // The intermediate: SKI, AKI, critical basicConstraints pathlen 0, keyCertSign.
    let int_text = openssl_ok(&[
        "x509",
        "-in",
        int_pem.to_str().expect("utf8"),
        "-noout",
        "-text",
    ]);
    assert!(
        int_text.contains("X509v3 Basic Constraints: critical"),
        "{int_text}"
    );
    assert!(int_text.contains("CA:TRUE, pathlen:0"), "{int_text}");
    assert!(
        int_text.contains("Certificate Sign, CRL Sign"),
        "{int_text}"
    );
    assert!(
        int_text.contains("X509v3 Subject Key Identifier"),
        "{int_text}"
    );
    assert!(
        int_text.contains("X509v3 Authority Key Identifier"),
        "{int_text}"
    );
    verify::chain(&leaf.der, &[t.int_der.clone(), t.root_der.clone()]).expect("chain");
}

#[test]
fn verification_cert_has_the_code_as_cn_and_verifies() {
    let t = two_tier();
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = Profiles::embedded().expect("profiles");
    let ca =
        Authority::load(&t.ca_session, "ca-key", t.int_der.clone(), "intermediate").expect("load");
    super::authority::check_code("ABC123").expect("code");
    let v = ca
        .verification_cert(profiles.get("verification").expect("p"), "ABC123")
        .expect("verification cert");
    let p = dir.path().join("v.pem");
    write_pem(&p, &[&v.der]);
    let subj = openssl_ok(&[
        "x509",
        "-in",
        p.to_str().expect("utf8"),
        "-noout",
        "-subject",
    ]);
    assert_eq!(subj.trim(), "subject=CN = ABC123");
    verify::chain(&v.der, &[t.int_der.clone(), t.root_der.clone()]).expect("chain");
    let err = super::authority::check_code("ABC 123").expect_err("space");
    assert_eq!(
        err.to_string(),
        "invalid subject common name \"ABC 123\": a verification code has only ASCII letters, digits and -"
    );
}

#[test]
fn csr_with_bad_signature_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut csr = make_csr(dir.path(), "bad", &P256, &["-outform", "DER"]);
    let n = csr.len();
    // The signature BIT STRING is last: change one byte of s.
    csr[n - 3] ^= 0x01;
    let profiles = Profiles::embedded().expect("profiles");
    let err =
        SubjectKey::from_csr(&csr, profiles.get("device").expect("p")).expect_err("bad signature");
    assert_eq!(
        err.to_string(),
        "the CSR signature does not verify with the key it contains"
    );
}

#[test]
fn csr_with_disallowed_curve_or_small_rsa_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profiles = Profiles::embedded().expect("profiles");
    let k1 = make_csr(
        dir.path(),
        "k1",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        &[],
    );
    let device = profiles.get("device").expect("p");
    let err = SubjectKey::from_csr(&k1, device).expect_err("secp256k1");
    assert_eq!(
        err.to_string(),
        "key type EC curve 1.3.132.0.10 is not allowed by profile \"device\" (allowed: EC P-256, EC P-384, RSA >= 2048)"
    );
    let r1024 = make_csr(dir.path(), "r", &["-newkey", "rsa:1024"], &[]);
    let err = SubjectKey::from_csr(&r1024, device).expect_err("rsa 1024");
    assert_eq!(
        err.to_string(),
        "key type RSA-1024 is not allowed by profile \"device\" (allowed: EC P-256, EC P-384, RSA >= 2048)"
    );
    let p384 = make_csr(
        dir.path(),
        "p384",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &[],
    );
    let key = SubjectKey::from_csr(&p384, device).expect("device takes P-384");
    let r2048 = make_csr(dir.path(), "r2", &["-newkey", "rsa:2048"], &[]);
    SubjectKey::from_csr(&r2048, device).expect("device takes RSA-2048");
    let err = key
        .check_allowed(profiles.get("verification").expect("p"))
        .expect_err("verification takes P-256 only");
    assert_eq!(
        err.to_string(),
        "key type EC P-384 is not allowed by profile \"verification\" (allowed: EC P-256)"
    );
}

#[test]
fn extractable_ca_key_is_refused() {
    let (_h, _c, s) = fresh_token("weak");
    let profiles = Profiles::embedded().expect("profiles");
    s.generate_extractable_p256_for_test("weak-key");
    let err = create_root(&s, "weak-key", profiles.get("root").expect("p")).expect_err("weak");
    let CaError::Hsm(inner) = &err else {
        panic!("unexpected {err}");
    };
    assert!(matches!(inner, HsmError::KeyNotProtected { .. }));
    assert_eq!(
        inner.to_string(),
        "key \"weak-key\" is not protected by the token (not sensitive, extractable, was extractable once (never-extractable is false)); refusing to use it"
    );
}

#[test]
fn ca_certificate_not_matching_the_key_is_refused() {
    let t = two_tier();
    // The root certificate paired with the intermediate's key.
    let err = Authority::load(
        &t.ca_session,
        "ca-key",
        t.root_der.clone(),
        "ca/intermediate.pem",
    )
    .expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "CA certificate ca/intermediate.pem does not match HSM key \"ca-key\": its public key is a different key"
    );
    let _ = &t.root_session;
}

#[test]
fn signature_that_does_not_verify_is_never_released() {
    let t = two_tier();
    let profiles = Profiles::embedded().expect("profiles");
    // Misconfiguration past the load-time check: the intermediate key signs, but the
    // certificate in use is the root's, so the new signature cannot verify.
    let ca =
        Authority::load_unchecked(&t.ca_session, "ca-key", t.root_der.clone()).expect("assembled");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SubjectKey::from_csr(
        &make_csr(dir.path(), "u", &P256, &[]),
        profiles.get("device").expect("p"),
    )
    .expect("csr");
    let res = ca.issue(
        profiles.get("device").expect("p"),
        &key,
        "unit-1",
        &UnitSubject::default(),
    );
    let err = res.expect_err("no certificate may come out");
    assert_eq!(
        err.to_string(),
        "the signed certificate does not verify with the CA certificate's public key; it was not released"
    );
}

#[test]
fn serials_are_positive_128_bit_and_distinct() {
    let a = super::CertSerial::random();
    let b = super::CertSerial::random();
    assert_ne!(a, b);
    for s in [a, b] {
        let h = s.hex();
        assert_eq!(h.len(), 32);
        let first = u8::from_str_radix(&h[..2], 16).expect("hex");
        assert!(first & 0x80 == 0 && first & 0x40 != 0);
    }
}

#[test]
fn the_database_refuses_a_second_certificate_with_the_same_serial_from_one_issuer() {
    use crate::ca::service::{RecordContext, record_issued};
    let t = two_tier();
    let profiles = Profiles::embedded().expect("profiles");
    let ca =
        Authority::load(&t.ca_session, "ca-key", t.int_der.clone(), "intermediate").expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = crate::store::Store::create(
        &dir.path().join("s.db"),
        &crate::config::StoreConfig::default(),
    )
    .expect("store");
    let key = SubjectKey::from_csr(
        &make_csr(dir.path(), "u", &P256, &[]),
        profiles.get("device").expect("p"),
    )
    .expect("csr");
    let cert = ca
        .issue(
            profiles.get("device").expect("p"),
            &key,
            "unit-1",
            &UnitSubject::default(),
        )
        .expect("issue");
    let station = crate::ids::StationId::new("st-1").expect("id");
    let rec = RecordContext {
        station: &station,
        actor: "tester",
        event: "ca.issue",
        registration_id: Some("unit-1"),
        unit_id: None,
    };
    let tx = store.conn_mut().transaction().expect("tx");
    let first = record_issued(&tx, ca.issuer_key_id(), &cert, &rec).expect("first");
    // The id given back is the certificate's row, not the audit entry written after it.
    let serial: String = tx
        .query_row(
            "SELECT serial_hex FROM certificates WHERE id = ?1",
            [first],
            |r| r.get(0),
        )
        .expect("row");
    assert_eq!(serial, cert.serial.hex());
    let err = record_issued(&tx, ca.issuer_key_id(), &cert, &rec).expect_err("same serial");
    assert_eq!(err.to_string(), "serial number already issued by this CA");
    // Another issuer may use the same serial.
    let other = record_issued(&tx, "another-issuer", &cert, &rec).expect("other issuer");
    assert_ne!(other, first);
}

#[test]
fn the_release_check_reads_exactly_the_signed_bytes() {
    let t = two_tier();
    let profiles = Profiles::embedded().expect("profiles");
    let ca =
        Authority::load(&t.ca_session, "ca-key", t.int_der.clone(), "intermediate").expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SubjectKey::from_csr(
        &make_csr(dir.path(), "u", &P256, &[]),
        profiles.get("device").expect("p"),
    )
    .expect("csr");
    let leaf = ca
        .issue(
            profiles.get("device").expect("p"),
            &key,
            "unit-1",
            &UnitSubject::default(),
        )
        .expect("issue");

    // The split agrees with x509-parser's reading of the same certificate, and the leaf
    // carries the subject key exactly as it was given.
    let parsed = verify::parse(&leaf.der, "leaf").expect("parse");
    assert_eq!(parsed.public_key().raw, key.spki_der.as_slice());
    let (tbs, alg, sig) = verify::split_signed(&leaf.der).expect("split");
    assert_eq!(tbs, parsed.tbs_certificate.as_ref());
    assert_eq!(sig, parsed.signature_value.data.as_ref());
    assert_eq!(
        alg,
        [
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02
        ]
    );

    let int = verify::parse(&t.int_der, "intermediate").expect("parse");
    let root = verify::parse(&t.root_der, "root").expect("parse");
    let by_int = verify::CaVerifier::new(&int).expect("P-256 key");
    let by_root = verify::CaVerifier::new(&root).expect("P-256 key");
    assert!(by_int.verifies(&leaf.der));
    // Another CA's key, a changed TBS byte, a changed signature byte, trailing bytes: refused.
    assert!(!by_root.verifies(&leaf.der));
    let tbs_at = leaf
        .der
        .windows(tbs.len())
        .position(|w| w == tbs)
        .expect("tbs inside");
    let mut changed = leaf.der.clone();
    changed[tbs_at + tbs.len() - 1] ^= 0x01;
    assert!(!by_int.verifies(&changed));
    let mut changed = leaf.der.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    assert!(!by_int.verifies(&changed));
    let mut trailing = leaf.der.clone();
    trailing.push(0);
    assert!(!by_int.verifies(&trailing));
    assert!(verify::split_signed(&trailing).is_none());
    assert!(verify::split_signed(&leaf.der[..leaf.der.len() - 1]).is_none());

    // P-384 and RSA subject keys also go into the certificate exactly as given.
    let device = profiles.get("device").expect("p");
    for (name, opts) in [
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
        ),
        ("rsa", &["-newkey", "rsa:2048"][..]),
    ] {
        let key = SubjectKey::from_csr(&make_csr(dir.path(), name, opts, &[]), device)
            .expect("allowed key");
        let leaf = ca
            .issue(device, &key, "unit-2", &UnitSubject::default())
            .expect("issue");
        let parsed = verify::parse(&leaf.der, name).expect("parse");
        assert_eq!(parsed.public_key().raw, key.spki_der.as_slice(), "{name}");
        assert!(by_int.verifies(&leaf.der), "{name}");
    }
}

#[test]
fn a_crl_lists_each_certificate_with_its_reason_and_verifies_with_the_ca() {
    use x509_parser::prelude::FromDer;
    let t = two_tier();
    let ca = Authority::load(&t.ca_session, "ca-key", t.int_der.clone(), "intermediate")
        .expect("load CA");
    let at = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time");
    let entries = [
        super::crl::Entry {
            serial_hex: "4a01".into(),
            revoked_at: at,
            reason: super::crl::Reason::Scrapped,
        },
        super::crl::Entry {
            serial_hex: "4b02".into(),
            revoked_at: at,
            reason: super::crl::Reason::Superseded,
        },
    ];
    let der =
        super::crl::sign(&ca, 7, (at, at + time::Duration::days(7)), &entries).expect("signed");
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&der).expect("parse");
    let int = verify::parse(&t.int_der, "intermediate").expect("int");
    assert!(crl.verify_signature(int.public_key()).is_ok());
    assert_eq!(crl.issuer(), int.subject());
    assert_eq!(
        crl.crl_number().map(ToString::to_string).as_deref(),
        Some("7")
    );
    let listed: Vec<(String, String)> = crl
        .iter_revoked_certificates()
        .map(|r| {
            (
                hex::encode(r.raw_serial()),
                r.reason_code()
                    .map(|(_, c)| c.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("4a01".to_owned(), "CessationOfOperation".to_owned()),
            ("4b02".to_owned(), "Superseded".to_owned())
        ]
    );
}

#[test]
fn a_crl_that_does_not_verify_is_never_released() {
    let t = two_tier();
    // The intermediate key signs, but the certificate in use is the root's.
    let ca =
        Authority::load_unchecked(&t.ca_session, "ca-key", t.root_der.clone()).expect("assembled");
    let now = time::OffsetDateTime::now_utc();
    let err = super::crl::sign(&ca, 1, (now, now + time::Duration::days(1)), &[])
        .expect_err("no CRL may come out");
    assert_eq!(
        err.to_string(),
        "the signed CRL does not verify with the CA certificate's public key; it was not released"
    );
}
