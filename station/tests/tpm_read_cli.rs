//! `station tpm read`, run as the real binary against a real swtpm per test.
//!
//! The swtpm fixture lives in the `fixtures` crate; it is included here by path because
//! `fixtures` depends on `station`, and a dev-dependency back onto it would build a second
//! copy of the station library for these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[allow(dead_code)] // each includer uses a different part of the fixture
#[path = "../../fixtures/src/swtpm.rs"]
mod swtpm;

use std::path::Path;
use std::process::Command as Std;

use assert_cmd::Command;
use predicates::prelude::*;
use swtpm::Swtpm;

/// The station binary (`common::station`), with the TSS library's own logging off.
fn station() -> Command {
    let mut c = common::station();
    c.env("TSS2_LOG", "all+none");
    c
}

fn start() -> Swtpm {
    Swtpm::start().expect("starting swtpm (install swtpm, swtpm-tools, tpm2-tools)")
}

/// The registration ID computed without the station: `tpm2_readpublic -o`, sha256sum, base32.
fn independent_registration_id(t: &Swtpm) -> String {
    let file = t.dir().join("ek-independent.pub");
    t.tpm2(
        "readpublic",
        &["-c", "0x81010001", "-o", file.to_str().unwrap()],
    )
    .unwrap();
    let script = format!(
        "sha256sum -b '{}' | cut -d' ' -f1 | xxd -r -p | base32 -w0 | tr -d = | tr A-Z a-z",
        file.display()
    );
    let out = Std::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// A home that does not exist: the diagnostic must not need one.
fn no_home(t: &Swtpm) -> std::path::PathBuf {
    t.dir().join("no-such-home")
}

#[test]
fn acceptance_trusted_swtpm_reads_ok_with_the_independent_registration_id() {
    let t = start();
    let out = station()
        .args(["tpm", "read", "--tcti", &t.tcti(), "--trust-dir"])
        .arg(t.trust_dir())
        .args(["--allow-software-tpm", "--json", "--home"])
        .arg(no_home(&t))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out.stdout);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "ek_certificate",
            "endorsement_key",
            "registration_id",
            "software_tpm",
            "storage_root_key",
            "validation"
        ]
    );
    assert_eq!(v["validation"], "ok");
    assert_eq!(v["software_tpm"], true);
    assert_eq!(v["storage_root_key"], serde_json::Value::Null);
    assert_eq!(v["registration_id"], independent_registration_id(&t));
    let cert = v["ek_certificate"].as_object().unwrap();
    let mut cert_keys: Vec<&str> = cert.keys().map(String::as_str).collect();
    cert_keys.sort_unstable();
    assert_eq!(
        cert_keys,
        ["issuer", "manufacturer", "model", "not_after", "subject"]
    );
    assert_eq!(cert["issuer"], "CN=swtpm-localca");
    assert_eq!(cert["model"], "swtpm");
    // The endorsement key is the TPM2B_PUBLIC tpm2-tools writes, base64.
    let ek = std::fs::read(t.dir().join("ek-independent.pub")).unwrap();
    use base64::Engine as _;
    assert_eq!(
        v["endorsement_key"],
        base64::engine::general_purpose::STANDARD.encode(ek)
    );
    assert!(!no_home(&t).exists(), "a diagnostic must not create a home");
}

#[test]
fn acceptance_empty_trust_dir_fails_validation_with_non_zero_exit() {
    let t = start();
    let empty = tempfile::tempdir().unwrap();
    let out = station()
        .args(["tpm", "read", "--tcti", &t.tcti(), "--trust-dir"])
        .arg(empty.path())
        .args(["--allow-software-tpm", "--json", "--home"])
        .arg(no_home(&t))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v = json_of(&out.stdout);
    let reason = v["validation"].as_str().unwrap();
    assert!(
        reason.contains("not issued by a trusted TPM vendor CA"),
        "{reason}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusted TPM vendor CA"));
    assert_eq!(v["registration_id"], independent_registration_id(&t));
}

#[test]
fn software_tpm_is_refused_without_the_flag() {
    let t = start();
    station()
        .args(["tpm", "read", "--tcti", &t.tcti(), "--trust-dir"])
        .arg(t.trust_dir())
        .arg("--home")
        .arg(no_home(&t))
        .assert()
        .failure()
        .stdout(predicate::str::contains("validation      software TPM"))
        .stderr(predicate::str::contains("allow_software_tpm"));
}

#[test]
fn text_output_shows_the_certificate_and_the_software_warning() {
    let t = start();
    station()
        .args(["tpm", "read", "--tcti", &t.tcti(), "--trust-dir"])
        .arg(t.trust_dir())
        .arg("--allow-software-tpm")
        .arg("--home")
        .arg(no_home(&t))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "EK              0x81010001 RSA-2048",
        ))
        .stdout(predicate::str::contains(
            "manufacturer id:00001014, model swtpm",
        ))
        .stdout(predicate::str::contains("WARNING         SOFTWARE TPM"))
        .stdout(predicate::str::contains("SRK             absent"))
        .stdout(predicate::str::contains("validation      ok"));
}

#[test]
fn home_configuration_supplies_tcti_trust_dir_and_policy() {
    let t = start();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    station()
        .args(["init", "--actor", "tester", "--home"])
        .arg(&home)
        .assert()
        .success();
    assert!(home.join("trust/tpm").is_dir(), "init makes H/trust/tpm");
    // The empty default trust dir: refused.
    let with_tcti = format!(
        "[tpm]\ntcti = \"{}\"\nallow_software_tpm = true\n",
        t.tcti()
    );
    std::fs::write(home.join("config.d/10-tpm.toml"), &with_tcti).unwrap();
    station()
        .args(["tpm", "read", "--json", "--home"])
        .arg(&home)
        .assert()
        .failure()
        .stdout(predicate::str::contains(
            "not issued by a trusted TPM vendor CA",
        ));
    // Vendor roots copied into H/trust/tpm: accepted.
    for e in std::fs::read_dir(t.trust_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), home.join("trust/tpm").join(e.file_name())).unwrap();
    }
    let out = station()
        .args(["tpm", "read", "--json", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out.stdout)["validation"], "ok");
}

#[test]
fn unreachable_tcti_fails_with_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    station()
        .args(["tpm", "read", "--tcti", &tcti, "--home"])
        .arg(Path::new("/nonexistent/station-home"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!(
            "connecting to the TPM at {tcti} failed"
        )));
}

#[test]
fn tpm_in_use_times_out_with_a_clear_message() {
    let t = start();
    let _holder = std::net::TcpStream::connect(("127.0.0.1", t.port())).unwrap();
    station()
        .args([
            "tpm",
            "read",
            "--tcti",
            &t.tcti(),
            "--timeout-secs",
            "2",
            "--home",
        ])
        .arg(no_home(&t))
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .failure()
        .stderr(predicate::str::contains("in use by another client"));
}

#[test]
fn missing_tcti_is_explained() {
    station()
        .args(["tpm", "read", "--home", "/nonexistent/station-home"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("pass --tcti"));
}
