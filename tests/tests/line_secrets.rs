#![allow(clippy::unwrap_used, clippy::expect_used)]
//! After a demo-sized run (25 units over the demo's four fixtures, `station serve` with its
//! uploader, `line-sim` playing the factory), no secret is anywhere it should not be: the HSM
//! and unit PINs, the operator badge, the DPS SAS key, the group key and every unit's symmetric
//! key are searched (raw, hex and base64) in every log file, the database and its WAL, the
//! daemon's output, and the Debug output of the configuration and the key types.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::ExposeSecret as _;

use station_e2e::bin;
use station_e2e::line::{LineRig, dps_primary_key};

fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut v = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
    ];
    v.retain(|f| f.len() >= 6);
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

#[test]
fn no_secret_reaches_a_log_the_database_or_debug_output() {
    let rig = LineRig::new();
    let badge = "BADGE-secret-4711-zz";
    // Not digits alone: six digits in a row turn up by chance in the database's nanosecond
    // timestamps and hex fields, and the search below would take them for the PIN.
    let unit_pin = "unit-pin-864209";
    rig.demo_line(badge);
    let serve_out = rig.dir.path().join("serve.out");
    let mut serve = Command::new(bin("station"))
        .arg("--home")
        .arg(&rig.home)
        .arg("serve")
        .env("UNIT_SE_PIN", unit_pin)
        .stdout(std::fs::File::create(&serve_out).unwrap())
        .stderr(std::fs::File::create(rig.dir.path().join("serve.err")).unwrap())
        .spawn()
        .unwrap();
    let work = rig.dir.path().join("line");
    let sim = rig
        .line_sim(25, badge, unit_pin)
        .arg("--keep")
        .output()
        .unwrap();
    let sim_text = format!(
        "{}{}",
        String::from_utf8_lossy(&sim.stdout),
        String::from_utf8_lossy(&sim.stderr)
    );
    if !sim.status.success() {
        let log = std::fs::read_to_string(rig.home.join("logs/station.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "line-sim: {sim_text}\nstation log (last 60 lines):\n{}",
            tail.join("\n")
        );
    }
    // Every unit passes and is uploaded by the daemon's uploader.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = rig
            .db()
            .query_row(
                "SELECT count(*) FROM units WHERE state = 'uploaded'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if n == 25 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of 25 uploaded: {sim_text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(serve.wait().unwrap().success());

    // The secrets of the run.
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("badge".into(), badge.as_bytes().to_vec()),
        ("unit PIN".into(), unit_pin.as_bytes().to_vec()),
    ];
    for pin in ["station-ca", "station-root"] {
        let p = std::fs::read_to_string(rig.home.join(format!("hsm/{pin}.pin"))).unwrap();
        secrets.push((format!("{pin} PIN"), p.trim().as_bytes().to_vec()));
    }
    let cs: dps::sas::ConnectionString =
        std::fs::read_to_string(rig.dir.path().join("dps/connection-string"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let sas = cs.key().to_base64();
    secrets.push((
        "DPS SAS key".into(),
        sas.expose_secret().as_bytes().to_vec(),
    ));
    let group = dps::EnrollmentGroupId::new("sy-10-fleet".to_owned()).unwrap();
    let a = rig.dps(|c| async move { c.group_attestation(&group).await.unwrap() });
    let group_key = dps_primary_key(a).expect("DPS holds a primary key");
    secrets.push(("group key".into(), group_key));
    let mut files = Vec::new();
    walk(&work, &mut files);
    let mut unit_keys = 0;
    for f in files.iter().filter(|f| f.ends_with("unit.json")) {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        if let Some(k) = state["symkey_hex"].as_str() {
            secrets.push((
                format!("unit key in {}", f.display()),
                hex::decode(k).unwrap(),
            ));
            unit_keys += 1;
        }
    }
    assert!(
        unit_keys >= 6,
        "expected the symmetric units' keys, found {unit_keys}"
    );
    // The search itself works: a unit's key is found where it does belong (the unit's flash).
    let (_, last_key) = secrets.last().unwrap();
    let flash: Vec<u8> = files
        .iter()
        .filter(|f| f.ends_with("unit.json"))
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(contains(&flash, hex::encode(last_key).as_bytes()));

    // Where they must not be.
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    let mut logs = Vec::new();
    walk(&rig.home.join("logs"), &mut logs);
    assert!(!logs.is_empty(), "the daemon wrote no log file");
    for f in logs
        .into_iter()
        .chain(["station.db", "station.db-wal"].map(|n| rig.home.join(n)))
        .chain([serve_out, rig.dir.path().join("serve.err")])
    {
        if let Ok(b) = std::fs::read(&f) {
            places.push((f.display().to_string(), b));
        }
    }
    places.push(("line-sim output".into(), sim_text.into_bytes()));
    let home = station::home::Home::new(&rig.home);
    let cfg = station::config::Config::load(&home).unwrap();
    places.push((
        "Debug of the configuration".into(),
        format!("{cfg:?}").into_bytes(),
    ));
    places.push((
        "Debug of the connection string".into(),
        format!("{cs:?}").into_bytes(),
    ));
    let key = station::keys::DeviceKey::from_bytes(secrets.last().unwrap().1.clone());
    places.push((
        "Debug of a device key".into(),
        format!("{key:?}").into_bytes(),
    ));
    let text = dps::wire::KeyText::new(sas.expose_secret());
    places.push((
        "Debug of a key text".into(),
        format!("{text:?}").into_bytes(),
    ));

    for (what, secret) in &secrets {
        for form in forms(secret) {
            for (place, bytes) in &places {
                assert!(!contains(bytes, &form), "{what} found in {place}");
            }
        }
    }
}
