//! `station ca ...`, `station check` and `station audit verify` with the HSM, run as the real
//! binary against real SoftHSM tokens made by `station init` in temp homes. Each command is
//! its own process, so each reads its own SOFTHSM2_CONF.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Std;

use predicates::prelude::*;

use common::station;

fn tool(name: &str, args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut c = Std::new(name);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap_or_else(|_| {
        panic!("{name} is missing: install it (apt-get install openssl softhsm2 opensc sqlite3 python3)")
    })
}

fn ok(name: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = tool(name, args, env);
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn init_home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    station()
        .args(["init", "--actor", "tester", "--home"])
        .arg(&home)
        .assert()
        .success();
    (dir, home)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn make_csr(dir: &Path, name: &str, keyopts: &[&str]) -> PathBuf {
    let csr = dir.join(format!("{name}.csr"));
    let key = dir.join(format!("{name}.key"));
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/CN=from-csr"];
    args.extend_from_slice(keyopts);
    args.extend_from_slice(&["-keyout", s(&key), "-out", s(&csr)]);
    ok("openssl", &args, &[]);
    csr
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// Runs `station ca issue` for `csr`, expecting failure, and returns stderr.
fn issue_fails(home: &Path, csr: &Path, rid: &str) -> String {
    let out = home.parent().unwrap().join("refused.pem");
    let a = station()
        .args(["ca", "issue", "--home", s(home), "--csr", s(csr)])
        .args(["--registration-id", rid, "--out", s(&out)])
        .assert()
        .failure();
    assert!(
        !out.exists(),
        "a refused issuance must not write a certificate"
    );
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

fn config_d(home: &Path, text: &str) {
    std::fs::write(home.join("config.d/50-test.toml"), text).unwrap();
}

#[test]
fn issued_leaf_and_verification_cert_verify_x509_strict_against_the_chain() {
    let (dir, home) = init_home();
    let d = dir.path();
    let csr = make_csr(d, "unit", &P256);
    let leaf = d.join("leaf.pem");
    station()
        .args(["ca", "issue", "--home", s(&home), "--csr", s(&csr)])
        .args(["--registration-id", "unit-0001", "--out", s(&leaf)])
        .assert()
        .success()
        .stdout(predicate::str::contains("issued certificate serial"));
    let chain = d.join("chain.pem");
    station()
        .args(["ca", "chain", "--home", s(&home), "--out", s(&chain)])
        .assert()
        .success();
    let v = ok(
        "openssl",
        &["verify", "-x509_strict", "-CAfile", s(&chain), s(&leaf)],
        &[],
    );
    assert_eq!(v.trim(), format!("{}: OK", leaf.display()));
    let text = ok(
        "openssl",
        &["x509", "-in", s(&leaf), "-noout", "-text"],
        &[],
    );
    assert!(text.contains("Subject: CN = unit-0001\n"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    // The chain file is the issuing CA, then the root.
    let subjects = ok(
        "openssl",
        &["crl2pkcs7", "-nocrl", "-certfile", s(&chain)],
        &[],
    );
    assert!(subjects.contains("BEGIN PKCS7"));

    let vc = d.join("verification.pem");
    station()
        .args(["ca", "verification-cert", "--home", s(&home)])
        .args(["--code", "ABC123", "--out", s(&vc)])
        .assert()
        .success();
    let subj = ok(
        "openssl",
        &["x509", "-in", s(&vc), "-noout", "-subject"],
        &[],
    );
    assert_eq!(subj.trim(), "subject=CN = ABC123");
    ok(
        "openssl",
        &["verify", "-x509_strict", "-CAfile", s(&chain), s(&vc)],
        &[],
    );
    let root_vc = d.join("verification-root.pem");
    station()
        .args([
            "ca",
            "verification-cert",
            "--home",
            s(&home),
            "--ca",
            "root",
        ])
        .args(["--code", "DEF456", "--out", s(&root_vc)])
        .assert()
        .success();
    let root_only = d.join("root.pem");
    std::fs::copy(home.join("ca/root.pem"), &root_only).unwrap();
    ok(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&root_only),
            s(&root_vc),
        ],
        &[],
    );

    station()
        .args(["ca", "list-issued", "--home", s(&home)])
        .assert()
        .success()
        .stdout(predicate::str::contains("CN=unit-0001"))
        .stdout(predicate::str::contains("CN=ABC123"))
        .stdout(predicate::str::contains("CN=DEF456"));
    station()
        .args(["ca", "show", "--home", s(&home)])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "sensitive=yes always-sensitive=yes extractable=no never-extractable=yes",
        ))
        .stdout(predicate::str::contains("chain      verifies"));
    station()
        .args(["check", "--home", s(&home)])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"ca key attributes +ok +sensitive=yes").unwrap())
        .stdout(predicate::str::is_match(r"ca chain +ok +verifies to the root").unwrap())
        .stdout(predicate::str::is_match(r"audit key +ok +keyed checkpoint over entry 4").unwrap());
    station()
        .args(["audit", "verify", "--home", s(&home)])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "keyed checkpoint intact: entry 4 authenticated by the HSM key",
        ));
}

#[test]
fn pkcs11_tool_shows_the_ca_key_sensitive_and_never_extractable() {
    let (_dir, home) = init_home();
    let pin = std::fs::read_to_string(home.join("hsm/station-ca.pin")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.join("hsm/station-ca.pin"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let conf = home.join("hsm/softhsm2.conf");
    let out = ok(
        "pkcs11-tool",
        &[
            "--module",
            "/usr/lib/softhsm/libsofthsm2.so",
            "--token-label",
            "station-ca",
            "--login",
            "--pin",
            pin.trim(),
            "-O",
        ],
        &[("SOFTHSM2_CONF", &conf)],
    );
    let private = out
        .split("Private Key Object")
        .nth(1)
        .expect("a private key object");
    assert!(private.contains("label:      station-ca-key"), "{out}");
    assert!(
        private.contains("Access:     sensitive, always sensitive, never extractable, local"),
        "{out}"
    );
    assert!(private.contains("Usage:      sign\n"), "sign-only: {out}");
}

#[test]
fn bad_csrs_and_registration_ids_are_refused_with_clear_messages() {
    let (dir, home) = init_home();
    let d = dir.path();
    let good = make_csr(d, "good", &P256);

    let err = issue_fails(&home, &good, "unit 0001");
    assert!(
        err.contains("error: invalid subject common name \"unit 0001\": registration ID \"unit 0001\" contains ' ' at position 4"),
        "{err}"
    );
    let long = "u".repeat(65);
    let err = issue_fails(&home, &good, &long);
    assert!(
        err.contains("65 characters; a certificate CN holds at most 64"),
        "{err}"
    );

    let k1 = make_csr(
        d,
        "k1",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
    );
    let err = issue_fails(&home, &k1, "unit-2");
    assert!(
        err.contains("error: key type EC curve 1.3.132.0.10 is not allowed by profile \"device\" (allowed: EC P-256, EC P-384, RSA >= 2048)"),
        "{err}"
    );
    let rsa = make_csr(d, "rsa", &["-newkey", "rsa:1024"]);
    let err = issue_fails(&home, &rsa, "unit-3");
    assert!(
        err.contains("error: key type RSA-1024 is not allowed"),
        "{err}"
    );

    // Flip one byte of the signature (the last bytes of the DER request).
    let der = d.join("bad.der");
    ok(
        "openssl",
        &["req", "-in", s(&good), "-outform", "DER", "-out", s(&der)],
        &[],
    );
    let mut bytes = std::fs::read(&der).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&der, &bytes).unwrap();
    let err = issue_fails(&home, &der, "unit-4");
    assert!(
        err.contains("error: the CSR signature does not verify with the key it contains"),
        "{err}"
    );
    // Nothing was recorded for any refusal.
    station()
        .args(["ca", "list-issued", "--home", s(&home)])
        .assert()
        .success()
        .stdout(predicate::str::contains("CN=").not());
}

#[test]
fn hsm_misconfigurations_give_one_clear_error_each() {
    let (dir, home) = init_home();
    let csr = make_csr(dir.path(), "u", &P256);

    // Wrong PIN: one attempt, one message; the right PIN still works afterwards.
    let pin_file = home.join("hsm/station-ca.pin");
    let right = std::fs::read_to_string(&pin_file).unwrap();
    std::fs::write(&pin_file, "000000\n").unwrap();
    let err = issue_fails(&home, &csr, "unit-1");
    assert!(
        err.contains("error: token station-ca refused the PIN (not retried: repeated wrong PINs lock the token); check the PIN file or variable"),
        "{err}"
    );
    assert!(!err.contains("000000"), "the PIN must not appear: {err}");
    station()
        .args(["check", "--home", s(&home)])
        .assert()
        .failure()
        .stdout(
            predicate::str::is_match(r"hsm ca login +FAIL +token station-ca refused the PIN")
                .unwrap(),
        );
    std::fs::write(&pin_file, &right).unwrap();

    config_d(&home, "[hsm]\nmodule = \"/nonexistent/libpkcs11.so\"\n");
    let err = issue_fails(&home, &csr, "unit-1");
    assert!(
        err.contains(
            "error: cannot load PKCS#11 module /nonexistent/libpkcs11.so; check `[hsm] module`"
        ),
        "{err}"
    );
    station()
        .args(["check", "--home", s(&home)])
        .assert()
        .failure()
        .stdout(predicate::str::is_match(r"hsm module +FAIL +cannot load PKCS#11 module").unwrap());

    config_d(&home, "[hsm]\ntoken = \"no-such-token\"\n");
    let err = issue_fails(&home, &csr, "unit-1");
    assert!(
        err.contains(
            "error: no token with label \"no-such-token\" in the PKCS#11 module (tokens present: "
        ),
        "{err}"
    );

    config_d(&home, "[ca]\nkey_label = \"absent-key\"\n");
    let err = issue_fails(&home, &csr, "unit-1");
    assert!(
        err.contains("error: token station-ca has no key labelled \"absent-key\""),
        "{err}"
    );

    // The root certificate where the issuing CA's should be: not the HSM key's certificate.
    std::fs::remove_file(home.join("config.d/50-test.toml")).unwrap();
    let int = home.join("ca/intermediate.pem");
    let saved = std::fs::read(&int).unwrap();
    std::fs::copy(home.join("ca/root.pem"), &int).unwrap();
    let err = issue_fails(&home, &csr, "unit-1");
    assert!(
        err.contains("error: CA certificate ca/intermediate.pem does not match HSM key \"station-ca-key\": its public key is a different key"),
        "{err}"
    );
    station()
        .args(["check", "--home", s(&home)])
        .assert()
        .failure()
        .stdout(
            predicate::str::is_match(
                r"ca certificate +FAIL +CA certificate ca/intermediate.pem does not match",
            )
            .unwrap(),
        );
    std::fs::write(&int, saved).unwrap();
    let out = dir.path().join("ok.pem");
    station()
        .args(["ca", "issue", "--home", s(&home), "--csr", s(&csr)])
        .args(["--registration-id", "unit-1", "--out", s(&out)])
        .assert()
        .success();
}

#[test]
fn an_extractable_ca_key_is_refused() {
    let (dir, home) = init_home();
    let d = dir.path();
    // A key that once existed in clear: imported, so never-extractable is false.
    let key = d.join("weak.pem");
    let pk8 = d.join("weak.pk8");
    ok(
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            s(&key),
        ],
        &[],
    );
    ok(
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            s(&key),
            "-out",
            s(&pk8),
        ],
        &[],
    );
    let pin = std::fs::read_to_string(home.join("hsm/station-ca.pin")).unwrap();
    let conf = home.join("hsm/softhsm2.conf");
    ok(
        "softhsm2-util",
        &[
            "--import",
            s(&pk8),
            "--token",
            "station-ca",
            "--label",
            "weak-key",
            "--id",
            "77",
            "--pin",
            pin.trim(),
        ],
        &[("SOFTHSM2_CONF", &conf)],
    );
    config_d(&home, "[ca]\nkey_label = \"weak-key\"\n");
    let csr = make_csr(d, "u", &P256);
    let err = issue_fails(&home, &csr, "unit-1");
    assert!(
        err.contains("error: key \"weak-key\" is not protected by the token (")
            && err.contains("refusing to use it"),
        "{err}"
    );
    assert!(
        err.contains("was extractable once (never-extractable is false)"),
        "{err}"
    );
    station()
        .args(["check", "--home", s(&home)])
        .assert()
        .failure()
        .stdout(
            predicate::str::is_match(r"ca key attributes +FAIL +.*refusing to issue with it")
                .unwrap(),
        );
}

#[test]
fn rewriting_the_audit_chain_without_the_hsm_key_is_detected() {
    for rewrite_mac_hash in [false, true] {
        let (dir, home) = init_home();
        let csr = make_csr(dir.path(), "u", &P256);
        for i in 0..3 {
            station()
                .args(["ca", "issue", "--home", s(&home), "--csr", s(&csr)])
                .args(["--registration-id", &format!("unit-{i}")])
                .args(["--out", s(&dir.path().join(format!("{i}.pem")))])
                .assert()
                .success();
        }
        station()
            .args(["audit", "verify", "--home", s(&home)])
            .assert()
            .success();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ca/rechain.py");
        let db = home.join("station.db");
        let mut args = vec![s(&script), s(&db), "2", "mallory"];
        if rewrite_mac_hash {
            args.push("--mac-hash");
        }
        ok("python3", &args, &[]);
        let out = station()
            .args(["audit", "verify", "--home", s(&home)])
            .assert()
            .failure()
            .get_output()
            .stdout
            .clone();
        let out = String::from_utf8(out).unwrap();
        // The unkeyed chain was recomputed and looks intact; only the keyed checkpoint tells.
        assert!(out.contains("audit chain intact: 4 entries"), "{out}");
        let expected = if rewrite_mac_hash {
            "keyed checkpoint BROKEN: the keyed checkpoint over entry 4 does not verify with the HSM key"
        } else {
            "keyed checkpoint BROKEN: entry 4 no longer has the hash the keyed checkpoint recorded"
        };
        assert!(out.contains(expected), "{out}");
    }
}

#[test]
fn external_root_csr_and_import() {
    let (dir, home) = init_home();
    let d = dir.path();
    // The production path: a new issuing key in the HSM, certified by a root kept elsewhere.
    config_d(
        &home,
        "[ca]\nkey_label = \"issuing-2\"\ncert = \"ca/issuing-2.pem\"\nroot_cert = \"ca/external-chain.pem\"\n",
    );
    let csr = d.join("issuing.csr");
    station()
        .args(["ca", "csr", "--home", s(&home), "--out", s(&csr)])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "wrote a CSR for HSM key \"issuing-2\"",
        ));
    ok(
        "openssl",
        &["req", "-in", s(&csr), "-verify", "-noout"],
        &[],
    );

    let root_key = d.join("ext-root.key");
    let root = d.join("ext-root.pem");
    ok(
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            s(&root_key),
        ],
        &[],
    );
    ok(
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            s(&root_key),
            "-subj",
            "/CN=External Root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:1",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            s(&root),
        ],
        &[],
    );
    let ext = d.join("int.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    let int = d.join("issuing-2.pem");
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&root),
            "-CAkey",
            s(&root_key),
            "-set_serial",
            "7",
            "-days",
            "1825",
            "-extfile",
            s(&ext),
            "-out",
            s(&int),
        ],
        &[],
    );

    // Refused: a certificate over another key (the station's own first intermediate).
    let other = home.join("ca/intermediate.pem");
    let a = station()
        .args([
            "ca",
            "import",
            "--home",
            s(&home),
            "--cert",
            s(&other),
            "--chain",
            s(&home.join("ca/root.pem")),
        ])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(
        err.contains("does not match HSM key \"issuing-2\": its public key is a different key"),
        "{err}"
    );
    // Refused: the right certificate with a chain that does not verify it.
    let a = station()
        .args([
            "ca",
            "import",
            "--home",
            s(&home),
            "--cert",
            s(&int),
            "--chain",
            s(&home.join("ca/root.pem")),
        ])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&a.get_output().stderr).into_owned();
    assert!(
        err.contains("error: certificate chain does not verify: CN=Station Issuing CA")
            || err.contains("error: certificate chain does not verify: "),
        "{err}"
    );
    assert!(!home.join("ca/issuing-2.pem").exists());

    station()
        .args([
            "ca",
            "import",
            "--home",
            s(&home),
            "--cert",
            s(&int),
            "--chain",
            s(&root),
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "installed the issuing CA certificate",
        ));
    let leaf_csr = make_csr(d, "unit", &P256);
    let leaf = d.join("leaf.pem");
    station()
        .args(["ca", "issue", "--home", s(&home), "--csr", s(&leaf_csr)])
        .args(["--registration-id", "unit-ext-1", "--out", s(&leaf)])
        .assert()
        .success();
    let chain = d.join("chain.pem");
    station()
        .args(["ca", "chain", "--home", s(&home), "--out", s(&chain)])
        .assert()
        .success();
    ok(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&chain),
            s(&leaf),
        ],
        &[],
    );
    station()
        .args(["audit", "verify", "--home", s(&home)])
        .assert()
        .success();
}

#[test]
fn check_warns_when_a_ca_certificate_is_near_expiry() {
    let (_dir, home) = init_home();
    // The issuing CA is valid for about ten years: a threshold above that must warn.
    config_d(&home, "[ca]\nexpiry_warn_days = 4000\n");
    station()
        .args(["check", "--home", s(&home)])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r"ca expiry +warn +CN=Station Issuing CA, O=Station expires first, in 36\d\d days: renew the CA",
            )
            .unwrap(),
        );
}

/// `station ca bench` (what `scripts/bench ca` runs): with `--turns` it reports each slice and
/// waits for its turn; the issuance stream's last fsync is reported as a slice of no
/// certificates; every certificate it counts is recorded, with its audit entry, before it
/// prints its rates.
#[test]
fn the_ca_bench_records_every_certificate_it_counts_and_reports_its_slices() {
    let (_dir, home) = init_home();
    let out = station()
        .args(["ca", "bench", "--home", s(&home)])
        .args(["--count", "300", "--batch", "128", "--turns"])
        .write_stdin("go\n".repeat(3))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let counts: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("slice raw="))
        .map(|l| l.rsplit_once(" n=").unwrap().1)
        .collect();
    assert_eq!(counts, ["250", "50", "0"], "{out}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("raw-sign/s=")
            && last.contains(" floor/s=")
            && last.contains(" issuance/s="),
        "{out}"
    );
    let db = home.join("station.db");
    let recorded = ok(
        "sqlite3",
        &[
            s(&db),
            "SELECT count(*), count(DISTINCT registration_id) FROM certificates \
             WHERE registration_id LIKE 'bench-unit-%'; \
             SELECT count(*) FROM audit_log WHERE event = 'ca.issue' AND actor = 'bench';",
        ],
        &[],
    );
    assert_eq!(recorded, "300|300\n300\n");
    station()
        .args(["audit", "verify", "--home", s(&home)])
        .assert()
        .success();
}
