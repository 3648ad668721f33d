//! The symmetric-key exchange against `unit-sim`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dps::ids::RegistrationId;
use secrecy::SecretBox;
use station::link::symkey::{SymkeyFlowError, SymkeyIdentity, provision_symkey};
use station::link::{IdentifyError, LinkSettings, SerialLink, Transport, UnitClient};
use station_e2e::UnitSim;

fn identity(key: &[u8]) -> SymkeyIdentity {
    SymkeyIdentity {
        key: SecretBox::new(Box::new(key.to_vec())),
        registration_id: RegistrationId::new("reg-sym-1").unwrap(),
        id_scope: "0ne000TEST".into(),
        global_endpoint: "global.azure-devices-provisioning.net".into(),
    }
}

fn client(sim: &UnitSim) -> UnitClient<SerialLink> {
    let s = LinkSettings {
        timeout: Duration::from_millis(400),
        ..LinkSettings::default()
    };
    UnitClient::new(Transport::new(
        SerialLink::open(&sim.pty, s.baud).unwrap(),
        s,
    ))
}

fn unit_json(sim: &UnitSim) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(sim.state_dir.join("unit.json")).unwrap()).unwrap()
}

#[test]
fn symkey_is_injected_proven_and_locked() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(
        &dir.path().join("unit"),
        &["--serial", "SN-SYM", "--drop-rate", "0.2", "--seed", "11"],
    );
    let key = [0x42u8; 32];
    let id = identity(&key);
    assert!(
        !format!("{id:?}").contains("42, 42"),
        "key leaked into Debug"
    );
    let serial = provision_symkey(&mut client(&sim), Some("SN-SYM"), &id).unwrap();
    assert_eq!(serial, "SN-SYM");
    let state = unit_json(&sim);
    assert_eq!(state["symkey_hex"].as_str().unwrap(), hex::encode(key));
    assert_eq!(state["symkey_meta"][0], "reg-sym-1");
    assert_eq!(state["locked"], true);
}

#[test]
fn wrong_key_fails_the_proof_and_does_not_lock() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(
        &dir.path().join("unit"),
        &["--serial", "SN-SYM-BAD", "--wrong-key"],
    );
    let e =
        provision_symkey(&mut client(&sim), Some("SN-SYM-BAD"), &identity(&[7; 32])).unwrap_err();
    assert!(matches!(e, SymkeyFlowError::ProofMismatch), "{e}");
    assert!(e.to_string().starts_with("prove:"));
    assert_eq!(unit_json(&sim)["locked"], false);
}

#[test]
fn symkey_to_another_unit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = UnitSim::start(&dir.path().join("unit"), &["--serial", "SN-OTHER"]);
    let e =
        provision_symkey(&mut client(&sim), Some("SN-EXPECTED"), &identity(&[7; 32])).unwrap_err();
    assert!(
        matches!(
            e,
            SymkeyFlowError::Identify(IdentifyError::WrongUnit { .. })
        ),
        "{e}"
    );
    assert!(unit_json(&sim)["symkey_hex"].is_null());
}
