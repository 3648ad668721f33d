//! `station pkcs11 provision` against real SoftHSM unit tokens (in the station's SoftHSM token
//! directory, as in the demo), checked with openssl and pkcs11-tool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Std;

use predicates::prelude::*;

use common::station_in;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const UNIT_PIN: &str = "731942";

fn home_with_unit(label: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    station_in(&home).arg("init").assert().success();
    let out = Std::new("softhsm2-util")
        .env("SOFTHSM2_CONF", home.join("hsm/softhsm2.conf"))
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            UNIT_PIN,
            "--so-pin",
            "88776655",
        ])
        .output()
        .expect("softhsm2-util is needed (scripts/bootstrap installs softhsm2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, home)
}

fn provision(home: &Path, token: &str, pin: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    station_in(home)
        .args(["pkcs11", "provision", "--module", MODULE, "--token", token])
        .args([
            "--registration-id",
            "GW-000001",
            "--pin-env",
            "UNIT_PIN",
            "--actor",
            "line-1",
        ])
        .args(extra)
        .env("UNIT_PIN", pin)
        .assert()
}

#[test]
fn a_unit_element_gets_a_non_extractable_key_and_its_certificate() {
    let (dir, home) = home_with_unit("unit-GW-000001");
    let pem = dir.path().join("gw.pem");
    provision(
        &home,
        "unit-GW-000001",
        UNIT_PIN,
        &["--out", pem.to_str().unwrap()],
    )
    .success()
    .stdout(
        predicate::str::contains("provisioned unit element unit-GW-000001")
            .and(predicate::str::contains("CN=GW-000001")),
    );

    let chain = dir.path().join("chain.pem");
    station_in(&home)
        .args(["ca", "chain", "--out"])
        .arg(&chain)
        .assert()
        .success();
    let v = Std::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&chain)
        .arg(&pem)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));

    // Inside the element: key pair and certificate under one CKA_ID; the key never leaves.
    let o = Std::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", home.join("hsm/softhsm2.conf"))
        .args([
            "--module",
            MODULE,
            "--token-label",
            "unit-GW-000001",
            "--login",
            "--pin",
            UNIT_PIN,
            "-O",
        ])
        .output()
        .expect("pkcs11-tool is needed (scripts/bootstrap installs opensc)");
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(listing.contains("Certificate Object"), "{listing}");
    assert!(listing.contains("never extractable"), "{listing}");
    let ids: Vec<&str> = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("ID:"))
        .collect();
    assert_eq!(ids.len(), 3, "{listing}");
    assert!(ids.iter().all(|l| *l == ids[0]), "{listing}");

    // The CA recorded the certificate; the audit log has the provisioning and stays intact.
    station_in(&home)
        .args(["ca", "list-issued"])
        .assert()
        .success()
        .stdout(predicate::str::contains("GW-000001"));
    station_in(&home)
        .args(["audit", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("pkcs11.provision"));
    station_in(&home)
        .args(["audit", "verify"])
        .assert()
        .success();

    // A second run refuses; rework replaces key and certificate.
    provision(&home, "unit-GW-000001", UNIT_PIN, &[])
        .failure()
        .stderr(predicate::str::contains(
            "unit element unit-GW-000001: already holds a provisioning key",
        ));
    provision(&home, "unit-GW-000001", UNIT_PIN, &["--rework"]).success();
    let o = Std::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", home.join("hsm/softhsm2.conf"))
        .args([
            "--module",
            MODULE,
            "--token-label",
            "unit-GW-000001",
            "--login",
            "--pin",
            UNIT_PIN,
            "-O",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        listing.matches("Certificate Object").count(),
        1,
        "{listing}"
    );
    assert_eq!(
        listing.matches("Private Key Object").count(),
        1,
        "{listing}"
    );

    // The unit PIN is nowhere in the home (database, logs, config).
    for f in common::walk(&home) {
        if f.starts_with(home.join("hsm/tokens")) {
            continue; // SoftHSM's own token store
        }
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !common::contains(&bytes, UNIT_PIN.as_bytes()),
            "PIN in {}",
            f.display()
        );
    }
}

#[test]
fn absent_token_and_wrong_pin_fail_clearly_and_issue_nothing() {
    let (_dir, home) = home_with_unit("unit-GW-000002");
    provision(&home, "unit-GW-999999", UNIT_PIN, &[])
        .failure()
        .stderr(
            predicate::str::contains("unit element: no token found")
                .and(predicate::str::contains("unit-GW-000002")),
        );
    provision(&home, "unit-GW-000002", "000000", &[])
        .failure()
        .stderr(
            predicate::str::contains("unit element unit-GW-000002: login failed")
                .and(predicate::str::contains("refused the PIN"))
                .and(predicate::str::contains("000000").not()),
        );
    // One wrong attempt did not lock the token.
    provision(&home, "unit-GW-000002", UNIT_PIN, &[]).success();
    let out = station_in(&home)
        .args(["ca", "list-issued"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&out).matches("GW-000001").count(),
        1,
        "only the successful run issued"
    );
    station_in(&home)
        .args(["audit", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("pkcs11.provision.failed"));
}
