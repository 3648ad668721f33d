//! `station check`'s TPM lines, run as the real binary (a real swtpm where a TPM is needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[allow(dead_code)] // each includer uses a different part of the fixture
#[path = "../../fixtures/src/swtpm.rs"]
mod swtpm;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

/// The station binary (`common::station`), with the TSS library's own logging off.
fn station() -> Command {
    let mut c = common::station();
    c.env("TSS2_LOG", "all+none");
    c
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

fn check(home: &Path) -> String {
    let out = station()
        .arg("check")
        .arg("--home")
        .arg(home)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn line<'a>(report: &'a str, start: &str) -> Vec<&'a str> {
    report.lines().filter(|l| l.starts_with(start)).collect()
}

#[test]
fn fresh_home_warns_that_no_vendor_root_is_trusted() {
    let (_d, home) = init_home();
    let report = check(&home);
    let policy = line(&report, "tpm rules");
    assert_eq!(policy.len(), 1, "{report}");
    assert!(
        policy[0].contains(" ok ") && policy[0].contains("software TPMs refused"),
        "{report}"
    );
    let trust = line(&report, "tpm trust");
    assert!(
        trust
            .iter()
            .any(|l| l.contains("warn") && l.contains("holds no TPM vendor CA certificate")),
        "{report}"
    );
}

#[test]
fn allowed_software_tpm_is_loud_and_the_tpm_is_probed() {
    let t = swtpm::Swtpm::start().expect("starting swtpm (install swtpm, swtpm-tools, tpm2-tools)");
    let (_d, home) = init_home();
    for e in std::fs::read_dir(t.trust_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), home.join("trust/tpm").join(e.file_name())).unwrap();
    }
    std::fs::write(
        home.join("trust/tpm/key.pem"),
        std::fs::read(t.localca_dir().join("signkey.pem")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        home.join("config.d/10-tpm.toml"),
        format!(
            "[tpm]\ntcti = \"{}\"\nallow_software_tpm = true\n",
            t.tcti()
        ),
    )
    .unwrap();
    let report = check(&home);
    assert!(
        line(&report, "tpm rules")[0].contains("SOFTWARE TPMs ARE ALLOWED"),
        "{report}"
    );
    let trust = line(&report, "tpm trust");
    assert!(
        trust
            .iter()
            .any(|l| l.contains(" ok ") && l.contains("2 certificate(s)")),
        "{report}"
    );
    assert!(
        trust.iter().any(|l| l.contains("warn")
            && l.contains("key.pem")
            && l.contains("only certificates")),
        "{report}"
    );
    assert!(!report.contains("BEGIN"), "{report}");
    let tpm = line(&report, "tpm  ");
    assert_eq!(tpm.len(), 1, "{report}");
    assert!(
        tpm[0].contains("reachable") && tpm[0].contains("SOFTWARE TPM"),
        "{report}"
    );
}

#[test]
fn unreachable_tpm_warns() {
    let (_d, home) = init_home();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        home.join("config.d/10-tpm.toml"),
        format!("[tpm]\ntcti = \"swtpm:host=127.0.0.1,port={port}\"\n"),
    )
    .unwrap();
    let report = check(&home);
    let tpm = line(&report, "tpm  ");
    assert_eq!(tpm.len(), 1, "{report}");
    assert!(
        tpm[0].contains("warn") && tpm[0].contains("connecting to the TPM"),
        "{report}"
    );
}

#[test]
fn bad_tpm_config_is_refused_naming_the_key() {
    let (_d, home) = init_home();
    std::fs::write(
        home.join("config.d/10-tpm.toml"),
        "[tpm]\nek_create_timeout_secs = 10\n",
    )
    .unwrap();
    station()
        .arg("check")
        .arg("--home")
        .arg(&home)
        .assert()
        .failure()
        .stdout(predicate::str::contains("tpm.ek_create_timeout_secs"));
}
