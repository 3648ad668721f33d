#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The issuing CA's CRL (`station ca crl`): a unit scrapped after it passed has its
//! certificate listed (cessationOfOperation), a certificate a retry replaced is listed
//! (superseded), the unit's new one is not; openssl verifies the CRL against `station ca chain`
//! and, with `-crl_check`, refuses the scrapped unit's certificate and accepts the live one.
//! Each CRL has the next number and is audited.

use std::path::Path;
use std::process::{Command, Output};

use station_e2e::line::{LineRig, plug};
use station_e2e::{UnitSim, text};

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// The PEM of a unit's certificate with this status, from the station's records.
fn cert_pem(rig: &LineRig, serial: &str, status: &str, out: &Path) -> String {
    let (der, serial_hex): (Vec<u8>, String) = rig
        .db()
        .query_row(
            "SELECT c.der, c.serial_hex FROM certificates c JOIN units u ON u.id = c.unit_id
             WHERE u.serial = ?1 AND c.status = ?2",
            [serial, status],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    std::fs::write(out, station::ca::verify::to_pem(&[&der])).unwrap();
    serial_hex
}

#[test]
fn the_crl_lists_scrapped_and_replaced_certificates_and_openssl_refuses_them() {
    let rig = LineRig::new();
    let port = rig.x509_fixture();
    let d = rig.dir.path();
    // The plant publishes the CRL at a URL its certificates name (the home's device profile).
    let profile = rig.home.join("ca/profiles/device.toml");
    let edited = std::fs::read_to_string(&profile).unwrap().replace(
        "crl_urls = []",
        "crl_urls = [\"http://pki.plant.example/station-ca.crl\"]",
    );
    std::fs::write(&profile, edited).unwrap();

    // SX-000001 passes, then fails a later test: scrapped, its certificate revoked.
    let a = UnitSim::start(
        &d.join("a"),
        &["--serial", "SX-000001", "--model", "SX-100"],
    );
    plug(&port, &a.pty);
    let out = rig.provision("SX-000001");
    assert!(out.status.success(), "{}", text(&out));
    let out = rig.station(&[
        "unit",
        "scrap",
        "SX-000001",
        "--reason",
        "failed RF test",
        "--actor",
        "sam",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // SX-000002 is issued a certificate, then fails its read-back; the retry on a sound unit
    // replaces that certificate.
    let b = UnitSim::start(
        &d.join("b"),
        &[
            "--serial",
            "SX-000002",
            "--model",
            "SX-100",
            "--bad-readback",
        ],
    );
    plug(&port, &b.pty);
    let out = rig.provision("SX-000002");
    assert!(!out.status.success(), "{}", text(&out));
    let b2 = UnitSim::start(
        &d.join("b2"),
        &["--serial", "SX-000002", "--model", "SX-100"],
    );
    plug(&port, &b2.pty);
    let out = rig.provision("SX-000002");
    assert!(out.status.success(), "{}", text(&out));

    let revoked = cert_pem(&rig, "SX-000001", "revoked", &d.join("revoked.pem"));
    let superseded = cert_pem(&rig, "SX-000002", "superseded", &d.join("superseded.pem"));
    cert_pem(&rig, "SX-000002", "live", &d.join("live.pem"));

    let shown = text(&openssl(&[
        "x509",
        "-in",
        d.join("live.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]));
    assert!(
        shown.contains("X509v3 CRL Distribution Points")
            && shown.contains("URI:http://pki.plant.example/station-ca.crl"),
        "{shown}"
    );

    let chain = d.join("chain.pem");
    let out = rig.station(&["ca", "chain", "--out", chain.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let crl = d.join("crl.pem");
    let out = rig.station(&[
        "ca",
        "crl",
        "--out",
        crl.to_str().unwrap(),
        "--actor",
        "sam",
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "CRL number 1 written to {}: 2 certificate(s) listed (1 of scrapped units, cessationOfOperation; 1 replaced by a retry, superseded); valid until",
            crl.display()
        )),
        "{said}"
    );

    let verified = openssl(&[
        "crl",
        "-in",
        crl.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
        "-noout",
    ]);
    assert!(text(&verified).contains("verify OK"), "{}", text(&verified));
    let shown = text(&openssl(&[
        "crl",
        "-in",
        crl.to_str().unwrap(),
        "-noout",
        "-text",
    ]));
    let upper = |s: &str| s.to_uppercase();
    assert!(
        shown.contains(&format!("Serial Number: {}", upper(&revoked)))
            && shown.contains(&format!("Serial Number: {}", upper(&superseded))),
        "{shown}"
    );
    assert!(
        shown.contains("Cessation Of Operation") && shown.contains("Superseded"),
        "{shown}"
    );
    assert_eq!(shown.matches("Serial Number:").count(), 2, "{shown}");

    let crl_check = |leaf: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            crl.to_str().unwrap(),
            "-CAfile",
            chain.to_str().unwrap(),
            d.join(leaf).to_str().unwrap(),
        ])
    };
    for gone in ["revoked.pem", "superseded.pem"] {
        let out = crl_check(gone);
        assert!(
            !out.status.success() && text(&out).contains("certificate revoked"),
            "{gone}: {}",
            text(&out)
        );
    }
    let out = crl_check("live.pem");
    assert!(out.status.success(), "{}", text(&out));

    // The next CRL has the next number; each is recorded and audited.
    let out = rig.station(&[
        "ca",
        "crl",
        "--out",
        d.join("crl2.pem").to_str().unwrap(),
        "--days",
        "1",
    ]);
    assert!(
        text(&out).contains("CRL number 2 written"),
        "{}",
        text(&out)
    );
    let audited: i64 = rig
        .db()
        .query_row(
            "SELECT count(*) FROM audit_log WHERE event = 'ca.crl'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 2);
    let out = rig.station(&[
        "ca",
        "crl",
        "--out",
        d.join("crl3.pem").to_str().unwrap(),
        "--days",
        "0",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("--days must be at least 1"),
        "{}",
        text(&out)
    );
    assert!(!d.join("crl3.pem").exists());

    // `station check` says when the published CRL no longer tells the whole story.
    let checked = text(&rig.station(&["check"]));
    assert!(checked.contains("CRL number 2, valid until"), "{checked}");
    let out = rig.station(&[
        "unit",
        "scrap",
        "SX-000002",
        "--reason",
        "dropped",
        "--actor",
        "sam",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let checked = text(&rig.station(&["check"]));
    assert!(
        checked.contains("1 certificate(s) revoked or superseded since CRL number 2")
            && checked.contains("sign and publish a new one: `station ca crl --out FILE`"),
        "{checked}"
    );
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `[ca] crl_file`: `station serve` signs the CRL into the file when it starts, for the
/// plant's web server to publish; `station check` reports it.
#[test]
fn serve_publishes_the_crl_into_the_configured_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("station");
    station_e2e::station_init(&home);
    std::fs::write(
        home.join("config.d/50-crl.toml"),
        "[ca]\ncrl_file = \"public/station-ca.crl\"\n",
    )
    .unwrap();
    let station = |args: &[&str]| {
        Command::new(station_e2e::bin("station"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .env_remove("SOFTHSM2_CONF")
            .output()
            .unwrap()
    };
    let mut serve = Command::new(station_e2e::bin("station"))
        .arg("--home")
        .arg(&home)
        .arg("serve")
        .env_remove("SOFTHSM2_CONF")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let published = home.join("public/station-ca.crl");
    let ok = station_e2e::line::poll_until(60, || {
        std::fs::read_to_string(&published).is_ok_and(|t| t.ends_with("-----END X509 CRL-----\n"))
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(serve.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = serve.wait();
    assert!(ok, "serve published no CRL");
    let chain = dir.path().join("chain.pem");
    let out = station(&["ca", "chain", "--out", chain.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let verified = openssl(&[
        "crl",
        "-in",
        published.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
        "-noout",
    ]);
    assert!(text(&verified).contains("verify OK"), "{}", text(&verified));
    let listed = text(&station(&["audit", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.contains("station") && l.contains("ca.crl")),
        "{listed}"
    );
    let checked = text(&station(&["check"]));
    assert!(checked.contains("CRL number 1, valid until"), "{checked}");
}
