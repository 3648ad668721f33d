//! The `dps` command line against a running local service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Service, run_dps, run_dps_env};

#[test]
fn linked_hubs_are_edited_while_the_service_runs() {
    let svc = Service::start(&["--link-hub", "hub-a.example.test=3"]);
    let d = svc.dir.to_str().unwrap().to_owned();
    let create = |hub: &str| {
        run_dps(&[
            "enrollment",
            "create",
            "--data",
            &d,
            "--registration-id",
            "cli-1",
            "--attestation-type",
            "symmetrickey",
            "--iot-hubs",
            hub,
            "--allocation-policy",
            "static",
        ])
    };
    let (ok, _, err) = create("hub-b.example.test");
    assert!(!ok);
    assert!(
        err.contains("iotHubs[0]") && err.contains("not linked"),
        "{err}"
    );
    let (ok, out, err) = run_dps(&[
        "linked-hub",
        "add",
        "--data",
        &d,
        "hub-b.example.test",
        "--weight",
        "7",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("linked hub-b.example.test"));
    let (ok, out, err) = create("hub-b.example.test");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["iotHubs"][0], "hub-b.example.test");
    let (_, out, _) = run_dps(&["linked-hub", "list", "--data", &d]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "hub-a.example.test\tweight=3\tapply_allocation_policy=true",
            "hub-b.example.test\tweight=7\tapply_allocation_policy=true"
        ]
    );
    let (ok, _, _) = run_dps(&["linked-hub", "remove", "--data", &d, "hub-a.example.test"]);
    assert!(ok);
    let (ok, _, err) = run_dps(&["linked-hub", "remove", "--data", &d, "hub-a.example.test"]);
    assert!(!ok && err.contains("not linked"), "{err}");
    let (_, out, _) = run_dps(&["linked-hub", "list", "--data", &d]);
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn enrollment_group_and_registration_commands() {
    let svc = Service::start(&[]);
    let d = svc.dir.to_str().unwrap().to_owned();
    let (ok, out, err) = run_dps(&[
        "enrollment",
        "create",
        "--data",
        &d,
        "--registration-id",
        "tpm-1",
        "--attestation-type",
        "tpm",
        "--endorsement-key",
        "AToAAQALAAMAsgAg",
        "--initial-twin-tags",
        r#"{"site":"f7"}"#,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["initialTwin"]["tags"]["site"], "f7");
    let (ok, out, _) = run_dps(&[
        "enrollment",
        "show",
        "--data",
        &d,
        "--registration-id",
        "TPM-1",
    ]);
    assert!(ok);
    assert!(out.contains("\"registrationId\": \"tpm-1\""));
    let gk = "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=";
    let create_group = |extra: &[&str]| {
        let mut args = vec![
            "group",
            "create",
            "--data",
            &d,
            "--enrollment-group-id",
            "g-1",
            "--attestation-type",
            "symmetrickey",
            "--primary-key",
            gk,
        ];
        args.extend_from_slice(extra);
        run_dps(&args)
    };
    // The answer to a create leaves the keys out (the secondary one was generated) and says so.
    let (ok, out, err) = create_group(&[]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attestation"]["type"], "symmetricKey", "{out}");
    assert!(!out.contains(gk) && !out.contains("ondaryKey"), "{out}");
    assert!(err.contains("not shown: add --show-keys"), "{err}");
    let (ok, out, err) = create_group(&["--show-keys"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attestation"]["symmetricKey"]["primaryKey"], gk, "{out}");
    assert!(v["attestation"]["symmetricKey"]["secondaryKey"].is_string());
    let (_, out, _) = run_dps(&[
        "group",
        "show",
        "--data",
        &d,
        "--enrollment-group-id",
        "g-1",
    ]);
    assert!(!out.contains(gk), "keys are hidden without --show-keys");
    let (_, out, _) = run_dps(&[
        "group",
        "show",
        "--data",
        &d,
        "--enrollment-group-id",
        "g-1",
        "--show-keys",
    ]);
    assert!(out.contains(gk));
    let (_, out, _) = run_dps(&["group", "list", "--data", &d]);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len(),
        1
    );
    let (_, out, _) = run_dps(&["enrollment", "list", "--data", &d, "--page-size", "1"]);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len(),
        1
    );
    let (ok, _, err) = run_dps(&[
        "registration",
        "show",
        "--data",
        &d,
        "--registration-id",
        "tpm-1",
    ]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, _) = run_dps(&[
        "registration",
        "list",
        "--data",
        &d,
        "--enrollment-group-id",
        "g-1",
    ]);
    assert!(ok);
    assert_eq!(out.trim(), "[]");
    let (ok, _, _) = run_dps(&[
        "group",
        "delete",
        "--data",
        &d,
        "--enrollment-group-id",
        "g-1",
    ]);
    assert!(ok);
    let (ok, _, _) = run_dps(&[
        "enrollment",
        "delete",
        "--data",
        &d,
        "--registration-id",
        "tpm-1",
        "--etag",
        "stale",
    ]);
    assert!(!ok);
    let (ok, _, _) = run_dps(&[
        "enrollment",
        "delete",
        "--data",
        &d,
        "--registration-id",
        "tpm-1",
    ]);
    assert!(ok);
    // The same commands work with an explicit connection string and CA file.
    let cs = std::fs::read_to_string(svc.dir.join("connection-string")).unwrap();
    let out = std::process::Command::new(support::dps_bin())
        .args(["enrollment", "list", "--ca-file"])
        .arg(svc.dir.join("ca.pem"))
        .env("DPS_CONNECTION_STRING", cs.trim())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn policies_rights_and_key_regeneration() {
    let svc = Service::start(&[]);
    let d = svc.dir.to_str().unwrap().to_owned();
    let (_, out, _) = run_dps(&["policy", "list", "--data", &d]);
    assert!(out.contains("provisioningserviceowner\tServiceConfig,EnrollmentRead,EnrollmentWrite,RegistrationStatusRead,RegistrationStatusWrite"), "{out}");
    assert!(
        out.contains("enrollmentread\tEnrollmentRead,RegistrationStatusRead"),
        "{out}"
    );
    let (ok, _, err) = run_dps(&[
        "policy",
        "create",
        "--data",
        &d,
        "bad",
        "--rights",
        "Everything",
    ]);
    assert!(!ok && err.contains("unknown right"), "{err}");
    let old = std::fs::read_to_string(svc.dir.join("connection-string")).unwrap();
    let (ok, out, err) = run_dps(&[
        "policy",
        "regenerate-key",
        "--data",
        &d,
        "provisioningserviceowner",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("rewrote"));
    let new = std::fs::read_to_string(svc.dir.join("connection-string")).unwrap();
    assert_ne!(old, new);
    // The old key no longer works, the new one does (the running service reads policies live).
    let old_out = std::process::Command::new(support::dps_bin())
        .args(["enrollment", "list", "--ca-file"])
        .arg(svc.dir.join("ca.pem"))
        .env("DPS_CONNECTION_STRING", old.trim())
        .output()
        .unwrap();
    assert!(!old_out.status.success());
    assert!(String::from_utf8_lossy(&old_out.stderr).contains("401"));
    let (ok, _, err) = run_dps(&["enrollment", "list", "--data", &d]);
    assert!(ok, "{err}");
}

#[test]
fn stats_count_successful_operations_per_day() {
    let svc = Service::start(&[]);
    let d = svc.dir.to_str().unwrap().to_owned();
    for i in 0..3 {
        let (ok, _, err) = run_dps(&[
            "enrollment",
            "create",
            "--data",
            &d,
            "--registration-id",
            &format!("s-{i}"),
            "--attestation-type",
            "symmetrickey",
        ]);
        assert!(ok, "{err}");
    }
    // A failed request is not an operation.
    let (ok, _, _) = run_dps(&[
        "enrollment",
        "show",
        "--data",
        &d,
        "--registration-id",
        "missing",
    ]);
    assert!(!ok);
    // The service flushes its counter every second; SIGTERM flushes the rest.
    let mut svc = svc;
    svc.stop_keep();
    let (ok, out, err) = run_dps(&["stats", "--data", &d]);
    assert!(ok, "{err}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        out.contains("enrollments=3 groups=0 registrations=0"),
        "{out}"
    );
    assert!(out.contains(&format!("{today} operations=3")), "{out}");
}

#[test]
fn compute_device_key_matches_the_library() {
    let gk = "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=";
    let (ok, out, _) = run_dps(&[
        "compute-device-key",
        "--key",
        gk,
        "--registration-id",
        "FirstDevice",
    ]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        include_str!("vectors/derived-first-device.txt").trim()
    );
}

/// `dps … | head` with head already gone: the command ends with the status a shell reports for
/// a closed pipe (141) and says nothing, instead of panicking with a backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(support::dps_bin())
        .args(["compute-device-key", "--registration-id", "FirstDevice"])
        .args(["--key", "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc="])
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn symmetric_keys_can_come_from_the_environment_instead_of_the_command_line() {
    let svc = Service::start(&[]);
    let d = svc.dir.to_str().unwrap().to_owned();
    let pk = "Jq4lhq2vB7LqkeWZ1C2QPaY9LZ8UXkxuB1nXm1YgKNI=";
    let sk = "gC9Vh2a0yCBsQw9EYeuGf8Fj1lT2a9Q6pYh1a0uGg1s=";
    let create = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "enrollment",
            "create",
            "--data",
            &d,
            "--registration-id",
            "env-key-1",
            "--attestation-type",
            "symmetrickey",
            "--show-keys",
        ];
        args.extend_from_slice(extra);
        run_dps_env(&args, env)
    };
    // A variable that is not set: refused by name, nothing created.
    let (ok, _, err) = create(&["--primary-key-env", "T_PK_UNSET"], &[]);
    assert!(
        !ok && err.contains("environment variable T_PK_UNSET is not set"),
        "{err}"
    );
    // Both keys from the environment: the enrollment holds exactly them.
    let (ok, out, err) = create(
        &["--primary-key-env", "T_PK", "--secondary-key-env", "T_SK"],
        &[("T_PK", pk), ("T_SK", sk)],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attestation"]["symmetricKey"]["primaryKey"], pk, "{out}");
    assert_eq!(
        v["attestation"]["symmetricKey"]["secondaryKey"], sk,
        "{out}"
    );
    // A key given both ways is refused.
    let (ok, _, err) = create(
        &["--primary-key", pk, "--primary-key-env", "T_PK"],
        &[("T_PK", pk)],
    );
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

#[test]
fn register_shows_what_a_unit_gets_or_why_it_is_refused() {
    let svc = Service::start(&["--link-hub", "hub-a.example.test"]);
    let d = svc.dir.to_str().unwrap().to_owned();
    let pk = "Jq4lhq2vB7LqkeWZ1C2QPaY9LZ8UXkxuB1nXm1YgKNI=";
    let gk = "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=";
    // unit-4711's individual enrollment, with `extra` options; a registration with `key`.
    let enroll = |extra: &[&str]| {
        let mut args = vec![
            "enrollment",
            "create",
            "--data",
            &d,
            "--registration-id",
            "unit-4711",
            "--attestation-type",
            "symmetrickey",
            "--primary-key-env",
            "PK",
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = run_dps_env(&args, &[("PK", pk)]);
        assert!(ok, "{err}");
    };
    let register = |key: &str| {
        run_dps_env(
            &[
                "register",
                "--data",
                &d,
                "--registration-id",
                "unit-4711",
                "--key-env",
                "K",
            ],
            &[("K", key)],
        )
    };
    enroll(&[]);
    let (ok, _, err) = run_dps_env(
        &[
            "group",
            "create",
            "--data",
            &d,
            "--enrollment-group-id",
            "line-7",
            "--attestation-type",
            "symmetrickey",
            "--primary-key-env",
            "GK",
        ],
        &[("GK", gk)],
    );
    assert!(ok, "{err}");
    // Its own key; a group unit by the group's key.
    let (ok, out, err) = register(pk);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "unit-4711 assigned to hub-a.example.test as device unit-4711 (initialAssignment)"
    );
    let (ok, out, err) = run_dps_env(
        &[
            "register",
            "--data",
            &d,
            "--registration-id",
            "line7-0001",
            "--group-key-env",
            "G",
            "--json",
        ],
        &[("G", gk)],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "assigned", "{out}");
    assert_eq!(v["registrationState"]["deviceId"], "line7-0001", "{out}");
    // A certificate no enrollment trusts; a wrong key; no credential. Nothing is printed
    // but the reason, and no key.
    let tmp = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "unit-9000");
    let cert = p.self_signed(&key).unwrap();
    let (cf, kf) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    std::fs::write(&cf, cert.pem()).unwrap();
    std::fs::write(&kf, key.serialize_pem()).unwrap();
    let (ok, _, err) = run_dps(&[
        "register",
        "--data",
        &d,
        "--registration-id",
        "unit-9000",
        "--cert",
        cf.to_str().unwrap(),
        "--key",
        kf.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("no enrollment for unit-9000"),
        "{err}"
    );
    let (ok, _, err) = register(gk);
    assert!(!ok);
    assert!(
        err.contains("matches no key of the individual enrollment unit-4711"),
        "{err}"
    );
    assert!(!err.contains(gk) && !err.contains(pk), "{err}");
    let (ok, _, err) = run_dps(&["register", "--data", &d, "--registration-id", "unit-4711"]);
    assert!(!ok && err.contains("give the unit's credential"), "{err}");
    // A disabled enrollment: the unit is not assigned, and the command fails saying so.
    enroll(&["--provisioning-status", "disabled"]);
    let (ok, _, err) = register(pk);
    assert!(!ok);
    assert!(
        err.contains("unit-4711 was not assigned: status disabled: the individual enrollment unit-4711 is disabled"),
        "{err}"
    );
}
