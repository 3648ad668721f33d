#![allow(clippy::unwrap_used, clippy::expect_used)]
//! DPS TPM attestation end to end, on its own: a TPM (swtpm, manufactured with its EK) takes
//! the local DPS's challenge through `station::tpm::dps_unit` (ActivateCredential, Import,
//! Load, HMAC in the TPM) and registers, even when the service first answers 429; a TPM whose
//! EK no enrollment holds is refused and told why. `station tpm register` audits DPS's answers
//! and records the station's unit as registered at its hub.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use dps::client::ClientError;
use dps::client::device::{DeviceClient, DeviceCredential, DeviceOptions, TpmUnit as _};
use dps::wire::{AttestationMechanism, IndividualEnrollment, RegistrationStatus};
use fixtures::swtpm::Swtpm;
use station::tpm::dps_unit::DpsTpmUnit;
use station::tpm::registration_id::registration_id;
use station_e2e::line::{DpsService, LineRig};
use station_e2e::text;

fn device(dps: &DpsService) -> DeviceClient {
    let scope = std::fs::read_to_string(dps.dir.join("id-scope")).unwrap();
    DeviceClient::new(
        &format!("localhost:{}", dps.port),
        scope.trim(),
        DeviceCredential::Tpm,
        DeviceOptions {
            extra_ca_file: Some(dps.dir.join("ca.pem")),
            max_wait: Duration::from_secs(60),
            ..DeviceOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn a_tpm_takes_the_challenge_and_registers_even_after_a_429_and_another_tpm_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dps");
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = DpsTpmUnit::open(&swtpm.tcti()).unwrap();
    let rid = registration_id(tpm.endorsement_key());

    // The TPM's enrollment, as the station uploads it: the EK's TPM2B_PUBLIC.
    let dps = DpsService::start(&dir, &[]);
    let enrollment = IndividualEnrollment::new(
        rid.clone(),
        AttestationMechanism::tpm(B64.encode(tpm.endorsement_key())),
    );
    rt.block_on(dps.client().create_or_update_enrollment(&enrollment, None))
        .unwrap();
    dps.stop();

    // Back on the same data, busy: the first call (the challenge) is answered 429.
    let dps = DpsService::start(
        &dir,
        &["--throttle-next", "1", "--throttle-retry-after", "1"],
    );
    let started = Instant::now();
    let done = rt
        .block_on(device(&dps).register_tpm(&rid, &mut tpm, None))
        .unwrap();
    assert_eq!(done.status, RegistrationStatus::Assigned, "{done:?}");
    let state = done.registration_state.unwrap();
    assert!(
        matches!(
            state.assigned_hub.as_deref(),
            Some("hub-a.local" | "hub-b.local")
        ),
        "{state:?}"
    );
    // The hub key came in its own blob, which the TPM imported (register_tpm fails otherwise).
    assert!(state.tpm.is_some());
    // It waited out the 429's Retry-After and the poll's, not less.
    assert!(started.elapsed() >= Duration::from_secs(2));
    let rec = rt
        .block_on(dps.client().get_registration_state(&rid))
        .unwrap();
    assert_eq!(rec.status, Some(RegistrationStatus::Assigned));

    // Another TPM, never enrolled: refused with the reason, and no record.
    let other = Swtpm::start().unwrap();
    let mut stranger = DpsTpmUnit::open(&other.tcti()).unwrap();
    let stranger_id = registration_id(stranger.endorsement_key());
    let e = rt
        .block_on(device(&dps).register_tpm(&stranger_id, &mut stranger, None))
        .unwrap_err();
    match e {
        ClientError::Service {
            status, message, ..
        } => {
            assert_eq!(status, 401);
            assert!(
                message.contains("no individual enrollment for"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = rt
        .block_on(dps.client().get_registration_state(&stranger_id))
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
}

#[test]
fn station_tpm_register_tells_what_the_unit_will_get_in_the_field() {
    let rig = LineRig::new();
    let swtpm = Swtpm::start().unwrap();
    let tcti = swtpm.tcti();
    // Its EK, read and the TPM closed again (swtpm serves one client at a time).
    let ek = DpsTpmUnit::open(&tcti).unwrap().endorsement_key().to_vec();
    let rid = registration_id(&ek);
    // The station passed this unit and uploaded its enrollment (its row as the line leaves it).
    rig.db()
        .execute(
            "INSERT INTO units (serial, product, registration_id, state, state_data, created_at, updated_at)
             VALUES ('ST-000777', 'sensor-tpm', ?1, 'uploaded', '{\"etag\":\"e\"}', 't', 't')",
            [rid.as_str()],
        )
        .unwrap();
    let register = ["tpm", "register", "--tcti", &tcti, "--actor", "eve"];
    // Not enrolled yet: refused, with DPS's reason.
    let out = rig.station(&register);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("no individual enrollment for {}", rid.as_str())),
        "{}",
        text(&out)
    );
    let enrollment =
        IndividualEnrollment::new(rid.clone(), AttestationMechanism::tpm(B64.encode(&ek)));
    rig.dps(|c| async move {
        c.create_or_update_enrollment(&enrollment, None)
            .await
            .unwrap();
    });
    assert_eq!(rig.state("ST-000777").as_deref(), Some("uploaded"));
    let out = rig.station(&register);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("{} assigned to hub-", rid.as_str())),
        "{said}"
    );
    assert!(
        said.contains("unit ST-000777: recorded as registered"),
        "{said}"
    );
    // The unit turned registered at the hub DPS gave it; both of DPS's answers are audited.
    let (state, hub): (String, String) = rig
        .db()
        .query_row(
            "SELECT u.state, r.assigned_hub FROM units u JOIN dps_registrations r ON r.unit_id = u.id
             WHERE u.serial = 'ST-000777'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, "registered");
    assert!(
        said.contains(&format!("assigned to {hub} as device")),
        "{said}"
    );
    let audited: Vec<(String, String, String)> = rig
        .db()
        .prepare(
            "SELECT event, actor, details FROM audit_log
             WHERE event IN ('tpm.register', 'unit.registered') ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let events: Vec<(&str, &str)> = audited
        .iter()
        .map(|(e, a, _)| (e.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            ("tpm.register", "eve"),
            ("tpm.register", "eve"),
            ("unit.registered", "eve")
        ]
    );
    let refused: serde_json::Value = serde_json::from_str(&audited[0].2).unwrap();
    assert_eq!(refused["assigned"], false);
    assert_eq!(refused["serial"], "ST-000777");
    assert!(
        refused["outcome"]
            .as_str()
            .unwrap()
            .contains("no individual enrollment for"),
        "{refused}"
    );
    let assigned: serde_json::Value = serde_json::from_str(&audited[1].2).unwrap();
    assert_eq!(assigned["assigned"], true);
    let out = rig.station(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}
