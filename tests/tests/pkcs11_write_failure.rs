//! A certificate write that fails in a real element, with no fake: the unit's SoftHSM token is
//! served by `p11-kit server` and reached through p11-kit's client module, and the server is
//! killed after the CA has issued and recorded the certificate, just before the write (a unit
//! pulled off the fixture at the worst moment). One test per file: the client module reads its
//! server address from the environment once per process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command as Std;

use station::ca::service::{self, AuditKey, RecordContext};
use station::ca::{SubjectKey, UnitSubject};
use station::config::Config;
use station::element::{self, ElementTarget, KEY_LABEL};
use station::home::Home;
use station::hsm::Hsm;
use station::hsm::config::PinSource;
use station::store::Store;

use station_e2e::p11::{P11Server, p11_kit_client};
use station_e2e::station_init;

const UNIT_PIN: &str = "731942";
const LABEL: &str = "unit-GW-000009";

fn run(cmd: &mut Std, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} could not run ({e}); scripts/bootstrap installs it"));
    assert!(out.status.success(), "{what}: {}", station_e2e::text(&out));
}

#[test]
fn an_element_that_goes_away_before_the_certificate_write_leaves_nothing_done() {
    let client = p11_kit_client();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("H");
    station_init(&root);
    let conf = root.join("hsm/softhsm2.conf");
    run(
        Std::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", LABEL])
            .args(["--pin", UNIT_PIN, "--so-pin", "88776655"]),
        "softhsm2-util (apt-get install softhsm2)",
    );

    // The element: the unit's token behind a p11-kit server of its own.
    let sock = dir.path().join("element.sock");
    let mut server = P11Server::start(&conf, &sock, &[LABEL]);
    // SAFETY: the only test in this process, before the client module is loaded.
    unsafe {
        std::env::set_var(
            "P11_KIT_SERVER_ADDRESS",
            format!("unix:path={}", sock.display()),
        );
    }
    let pin_file = dir.path().join("unit.pin");
    std::fs::write(&pin_file, format!("{UNIT_PIN}\n")).unwrap();

    // The station side, as `station pkcs11 provision` has it.
    let home = Home::new(&root);
    let cfg = Config::load(&home).unwrap().config;
    let station_hsm = service::open_hsm(&home, &cfg).unwrap();
    let session = service::open_ca_token(&station_hsm, &home, &cfg).unwrap();
    let ca = service::load_issuing(&session, &home, &cfg).unwrap();
    let audit_key = AuditKey::find(&session, &cfg.ca.audit_key_label).unwrap();
    let profiles = service::profiles(&home, &cfg).unwrap();
    let profile = profiles.get("device").unwrap();
    let mut store = Store::open(&home.resolve(&cfg.store.path), &cfg.store).unwrap();
    let station_id = cfg.station_id();

    let element_hsm = Hsm::load_module(&client).unwrap();
    let target = ElementTarget {
        token: Some(LABEL.to_owned()),
        pin: PinSource::File(pin_file),
        rework: false,
    };
    let mut serial = None;
    let result = element::provision(
        &element_hsm,
        &target,
        |p| p.to_path_buf(),
        |spki| {
            let key = SubjectKey::from_spki(spki).map_err(|e| e.to_string())?;
            let cert = ca
                .issue(profile, &key, "GW-000009", &UnitSubject::default())
                .map_err(|e| e.to_string())?;
            let rec = RecordContext {
                station: &station_id,
                actor: "line-1",
                event: "ca.issue",
                registration_id: Some("GW-000009"),
                unit_id: None,
            };
            service::commit_issued(&mut store, &ca, &audit_key, &cert, &rec)
                .map_err(|e| e.to_string())?;
            serial = Some(cert.serial.hex());
            // The element goes away between the CA's record and the write.
            server.kill();
            Ok(cert.der)
        },
    );

    let err = result.expect_err("a write to a vanished element must fail the provisioning");
    assert_eq!(
        err.to_string(),
        format!("unit element {LABEL}: write certificate failed")
    );
    // The CA's record stays 'issued', never 'live'.
    let serial = serial.expect("the CA issued before the write");
    let status: String = store
        .conn()
        .query_row(
            "SELECT status FROM certificates WHERE serial_hex = ?1",
            [&serial],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "issued");
    // The token itself, read directly: the key is there, no certificate was stored.
    let out = Std::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--module",
            station::hsm::config::SOFTHSM_MODULE,
            "--token-label",
            LABEL,
            "--login",
        ])
        .args(["--pin", UNIT_PIN, "-O"])
        .output()
        .expect("pkcs11-tool is missing: apt-get install opensc");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("Private Key Object") && listing.contains(KEY_LABEL),
        "{listing}"
    );
    assert!(!listing.contains("Certificate Object"), "{listing}");
}
