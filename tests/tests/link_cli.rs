//! `station link ...` against `unit-sim`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use station::cli::link::{PortArgs, ProvisionX509Args, run_provision_x509};
use station::cli::{ActorArg, Context};
use station::home::Home;
use station_e2e::{SoftwareTestIssuer, UnitSim, bin};

#[test]
fn probe_prints_echo_buffer_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(
        &dir.path().join("unit"),
        &["--serial", "SN-PROBE", "--buf-size", "512"],
    );
    let by_id = dir.path().join("usb-ACME_Unit_SN-PROBE-if00");
    std::os::unix::fs::symlink(&sim.pty, &by_id).unwrap();
    let out = Command::new(bin("station"))
        .args(["link", "probe", "--port"])
        .arg(&by_id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("echo        ok"), "{stdout}");
    assert!(stdout.contains("smp buffer  512 bytes x 4"), "{stdout}");
    assert!(stdout.contains("serial      SN-PROBE"), "{stdout}");
    assert!(stdout.contains("caps        x509, symkey"), "{stdout}");
    assert!(stdout.contains("locked      no"), "{stdout}");
}

#[test]
fn probe_of_a_silent_unit_fails_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &["--hang-after", "0"]);
    let out = Command::new(bin("station"))
        .args([
            "link",
            "probe",
            "--timeout-ms",
            "200",
            "--retries",
            "1",
            "--port",
        ])
        .arg(&sim.pty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("echo: no answer from the unit after 2 attempts"),
        "{stderr}"
    );
}

#[test]
fn probe_of_a_missing_port_fails_clearly() {
    let out = Command::new(bin("station"))
        .args([
            "link",
            "probe",
            "--port",
            "/dev/serial/by-id/usb-nothing-here",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn provision_x509_prints_subject_and_fingerprint_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let st = Command::new(bin("station"))
        .arg("--home")
        .arg(&home)
        .args(["init", "--actor", "tester"])
        .status()
        .unwrap();
    assert!(st.success());
    let sim = UnitSim::start(&dir.path().join("unit"), &["--serial", "SN-CLI"]);
    let args = ProvisionX509Args {
        port: PortArgs {
            port: PathBuf::from(&sim.pty),
            baud: 115_200,
            timeout_ms: 500,
            retries: 3,
        },
        registration_id: "reg-cli-1".into(),
        serial: Some("SN-CLI".into()),
        out: None,
        actor: ActorArg {
            actor: Some("tester".into()),
        },
    };
    let ctx = Context {
        home: Home::new(&home),
    };
    // TEST ONLY issuer until the HSM-backed CA is wired in.
    let ca = SoftwareTestIssuer::new();
    run_provision_x509(&ctx, &args, &ca).unwrap();
    let out = Command::new(bin("station"))
        .arg("--home")
        .arg(&home)
        .args(["audit", "list", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let entry = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "link.provision_x509")
        .unwrap_or_else(|| panic!("no audit entry in {text}"));
    assert_eq!(entry["subject"], "SN-CLI");
    assert_eq!(entry["actor"], "tester");
    let details: serde_json::Value = match &entry["details"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        v => v.clone(),
    };
    assert_eq!(details["registration_id"], "reg-cli-1");
    assert_eq!(details["fingerprint_sha256"].as_str().unwrap().len(), 64);
}

fn station(home: &std::path::Path) -> Command {
    let mut c = Command::new(bin("station"));
    c.arg("--home").arg(home).env_remove("SOFTHSM2_CONF");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The whole exchange from the CLI with the real HSM-backed CA (SoftHSM): keygen over the link,
/// issuance from the station CA, put_cert, read-back, lock; recorded and sealed in the audit log.
#[test]
fn provision_x509_with_the_station_ca_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    run_ok(station(&home).arg("init"));
    let sim = UnitSim::start(&dir.path().join("unit"), &["--serial", "SX-000042"]);
    let out = run_ok(
        station(&home)
            .args(["link", "provision-x509", "--port"])
            .arg(&sim.pty)
            .args([
                "--registration-id",
                "SX-000042",
                "--serial",
                "SX-000042",
                "--actor",
                "op-7",
            ]),
    );
    assert!(out.contains("subject     CN=SX-000042"), "{out}");
    let issued = run_ok(station(&home).args(["ca", "list-issued"]));
    assert!(issued.contains("CN=SX-000042"), "{issued}");
    let audit = run_ok(station(&home).args(["audit", "list"]));
    assert!(
        audit.contains("ca.issue") && audit.contains("link.provision_x509"),
        "{audit}"
    );
    let verify = run_ok(station(&home).args(["audit", "verify"]));
    assert!(verify.contains("keyed checkpoint intact"), "{verify}");
    assert!(
        !verify.contains("unsealed") || verify.contains("0 "),
        "{verify}"
    );
    // The unit is locked now: a second run is refused and nothing more is issued.
    let again = station(&home)
        .args(["link", "provision-x509", "--port"])
        .arg(&sim.pty)
        .args(["--registration-id", "SX-000042", "--serial", "SX-000042"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let issued = run_ok(station(&home).args(["ca", "list-issued"]));
    assert_eq!(issued.matches("CN=SX-000042").count(), 1, "{issued}");
}

/// A unit that rejects its certificate: the failure names the step, the unit is not reported
/// provisioned, the certificate the CA signed stays recorded, and the failure is audited.
#[test]
fn provision_x509_failure_is_recorded_not_reported_done() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    run_ok(station(&home).arg("init"));
    let sim = UnitSim::start(
        &dir.path().join("unit"),
        &["--serial", "SX-000043", "--reject-cert"],
    );
    let out = station(&home)
        .args(["link", "provision-x509", "--port"])
        .arg(&sim.pty)
        .args(["--registration-id", "SX-000043", "--serial", "SX-000043"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the unit is NOT provisioned"), "{stderr}");
    assert!(stderr.contains("put_cert"), "{stderr}");
    let issued = run_ok(station(&home).args(["ca", "list-issued"]));
    assert!(issued.contains("CN=SX-000043"), "{issued}");
    let audit = run_ok(station(&home).args(["audit", "list"]));
    assert!(audit.contains("link.provision_x509.failed"), "{audit}");
    run_ok(station(&home).args(["audit", "verify"]));
}
