#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Backups of the station database (`station backup`, serve's schedule) and restoring one:
//! a backup taken while units are recorded holds them and restores them, the newer database
//! set aside, never deleted; a backup that is another station's, rewritten (audit chain
//! recomputed) or damaged is refused with nothing changed; `station serve` makes a backup
//! when one is due, prunes the oldest, and holds off a restore while it runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use station_e2e::line::{LineRig, plug};
use station_e2e::{UnitSim, bin, station_init, text};

fn provisioned(rig: &LineRig, serial: &str) {
    let out = rig.provision(serial);
    assert!(out.status.success(), "{}", text(&out));
}

/// `station --home home args...`.
fn station(home: &Path, args: &[&str]) -> Output {
    Command::new(bin("station"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("STATION_LOG")
        .output()
        .unwrap()
}

/// The file a `station backup` says it wrote.
fn written(out: &Output) -> PathBuf {
    let said = text(out);
    assert!(out.status.success(), "{said}");
    let rest = said
        .split("backup written: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{said}"));
    PathBuf::from(rest.split(" (").next().unwrap())
}

/// The files in the home whose name says a restore set them aside.
fn set_aside(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("station.db.replaced-"))
        .collect()
}

fn serials(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare("SELECT serial FROM units ORDER BY serial")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_backup_restores_the_units_it_holds_and_the_newer_database_is_set_aside() {
    let rig = LineRig::new();
    let port = rig.x509_fixture();
    let a = UnitSim::start(
        &rig.dir.path().join("a"),
        &["--serial", "SX-000001", "--model", "SX-100"],
    );
    plug(&port, &a.pty);
    provisioned(&rig, "SX-000001");

    let out = rig.station(&["backup", "--actor", "sam"]);
    let file = written(&out);
    let said = text(&out);
    assert!(
        file.starts_with(rig.home.join("backups"))
            && file
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("station-"),
        "{said}"
    );
    assert!(said.contains("holds 1 unit(s), 1 certificate(s)"), "{said}");
    assert!(
        said.contains("integrity ok, audit chain intact, keyed checkpoint verified with this station's HSM key"),
        "{said}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = text(&rig.station(&["backup", "list"]));
    assert!(
        listed.contains(&file.display().to_string()) && listed.contains("1 backup(s) in"),
        "{listed}"
    );
    let checked = rig.station(&["backup", "check", file.to_str().unwrap()]);
    assert!(
        checked.status.success() && text(&checked).contains("a sound station backup"),
        "{}",
        text(&checked)
    );

    // A unit recorded after the backup: a restore without --force would lose it.
    let b = UnitSim::start(
        &rig.dir.path().join("b"),
        &["--serial", "SX-000002", "--model", "SX-100"],
    );
    plug(&port, &b.pty);
    provisioned(&rig, "SX-000002");
    let out = rig.station(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--actor",
        "sam",
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("audit entries newer than the backup, and 2 units where the backup has 1")
            && said.contains("Run again with --force to restore anyway"),
        "{said}"
    );
    assert!(set_aside(&rig.home).is_empty(), "nothing moved");
    assert_eq!(rig.state("SX-000002").as_deref(), Some("queued"));

    let out = rig.station(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--force",
        "--actor",
        "sam",
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("holds 1 unit(s)"), "{said}");
    let aside = set_aside(&rig.home);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        said.contains(&format!(
            "the database it replaced is set aside as {}",
            aside[0].display()
        )),
        "{said}"
    );
    // The restored database: the unit the backup held, not the later one, which the file set
    // aside still holds.
    assert_eq!(serials(&rig.home.join("station.db")), ["SX-000001"]);
    assert_eq!(serials(&aside[0]), ["SX-000001", "SX-000002"]);
    let shown = rig.station(&["unit", "show", "SX-000001"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let verify = rig.station(&["audit", "verify"]);
    assert!(
        verify.status.success()
            && text(&verify).contains("keyed checkpoint intact")
            && !text(&verify).contains("newer entries are covered"),
        "{}",
        text(&verify)
    );
    let restored: (String, String) = rig
        .db()
        .query_row(
            "SELECT actor, details FROM audit_log WHERE event = 'store.restore'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(restored.0, "sam");
    assert!(
        restored.1.contains("station.db.replaced-"),
        "{}",
        restored.1
    );
    let checked = text(&rig.station(&["check"]));
    assert!(checked.contains("all checks passed"), "{checked}");
}

#[test]
fn a_backup_of_another_station_or_rewritten_or_damaged_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    station_init(&ours);
    station_init(&theirs);
    let audit = |home: &Path| text(&station(home, &["audit", "list", "--limit", "100"]));
    let before = audit(&ours);
    let refused = |file: &Path, expect: &str| {
        for args in [
            vec!["backup", "restore", file.to_str().unwrap(), "--force"],
            vec!["backup", "check", file.to_str().unwrap()],
        ] {
            let out = station(&ours, &args);
            let said = text(&out);
            assert!(!out.status.success(), "{args:?}: {said}");
            assert!(said.contains(expect), "{args:?}: {said}");
        }
        assert!(set_aside(&ours).is_empty());
    };

    // Another station's backup: sound, but its checkpoint is sealed by another HSM key.
    let foreign = written(&station(&theirs, &["backup"]));
    refused(
        &foreign,
        "the keyed checkpoint over entry 1 does not verify with the HSM key",
    );
    let out = station(&ours, &["backup", "restore", foreign.to_str().unwrap()]);
    assert!(
        text(&out).contains("its audit checkpoint does not verify with this station's HSM key, so it is another station's backup or was altered"),
        "{}",
        text(&out)
    );

    // Our own backup with one entry rewritten and the whole unkeyed chain recomputed, as
    // someone with the file could: only the HSM-keyed checkpoint tells.
    let ours_file = written(&station(
        &ours,
        &["backup", "--out", dir.path().join("b.db").to_str().unwrap()],
    ));
    let rewritten = dir.path().join("rewritten.db");
    std::fs::copy(&ours_file, &rewritten).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../station/tests/ca/rechain.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&rewritten)
        .args(["1", "mallory"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    refused(
        &rewritten,
        "entry 1 no longer has the hash the keyed checkpoint recorded",
    );

    // One entry edited without recomputing the chain.
    let edited = dir.path().join("edited.db");
    std::fs::copy(&ours_file, &edited).unwrap();
    rusqlite::Connection::open(&edited)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET actor = 'mallory' WHERE seq = 1;",
        )
        .unwrap();
    refused(
        &edited,
        "is not a usable station backup: its audit chain is broken at entry 1",
    );

    // Not a database at all (a truncated copy, the wrong file).
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    refused(&junk, "is not a usable station backup");
    let half = dir.path().join("half.db");
    let bytes = std::fs::read(&ours_file).unwrap();
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    refused(&half, "is not a usable station backup");

    // Nothing was restored: only our own backup's entry is new.
    let after = audit(&ours);
    assert!(
        after.starts_with(before.trim_end()),
        "{before}\n---\n{after}"
    );
    assert!(!after.contains("store.restore"), "{after}");
    let out = station(&ours, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));

    // The database itself damaged (TEST ONLY: a disk fault, overwritten here): the station
    // names the way back, and a restore needs no --force, as there is nothing readable to lose.
    let db = ours.join("station.db");
    std::fs::write(&db, vec![0x17u8; 16384]).unwrap();
    for side in ["station.db-wal", "station.db-shm"] {
        let _ = std::fs::remove_file(ours.join(side));
    }
    let out = station(&ours, &["audit", "verify"]);
    assert!(
        !out.status.success()
            && text(&out).contains("is damaged or is not a SQLite database (nothing was changed); `station backup list` shows the backups and `station backup restore FILE` puts one back"),
        "{}",
        text(&out)
    );
    let out = station(&ours, &["backup", "restore", ours_file.to_str().unwrap()]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("(it could not be read: database"), "{said}");
    let aside = set_aside(&ours);
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        vec![0x17u8; 16384],
        "kept as it was"
    );
    let out = station(&ours, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A running `station serve`, stopped (SIGTERM) on drop.
struct Serve(std::process::Child);

impl Serve {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn serve_makes_a_due_backup_prunes_the_oldest_and_holds_off_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("station");
    station_init(&home);
    std::fs::write(
        home.join("config.d/50-backup.toml"),
        "[backup]\nstart_delay_s = 0\nkeep = 2\n",
    )
    .unwrap();
    // Two old backups (their content does not matter to pruning), and a file of someone
    // else's that merely sits in the directory.
    let backups = home.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    for old in ["station-20241101T000000Z.db", "station-20250101T000000Z.db"] {
        std::fs::write(backups.join(old), "old").unwrap();
    }
    std::fs::write(backups.join("station-before-upgrade.db"), "mine").unwrap();

    let mut serve = Serve(
        Command::new(bin("station"))
            .arg("--home")
            .arg(&home)
            .arg("serve")
            .env_remove("SOFTHSM2_CONF")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Due at once: the newest backup is years old.
    let deadline = Instant::now() + Duration::from_secs(60);
    let made = loop {
        let audited: Option<String> = rusqlite::Connection::open(home.join("station.db"))
            .unwrap()
            .query_row(
                "SELECT subject FROM audit_log WHERE event = 'store.backup' AND actor = 'station'",
                [],
                |r| r.get(0),
            )
            .ok();
        if let Some(s) = audited {
            break PathBuf::from(s);
        }
        assert!(Instant::now() < deadline, "serve made no backup");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut names: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let made_name = made.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        names,
        [
            "station-20250101T000000Z.db".to_owned(),
            made_name.clone(),
            "station-before-upgrade.db".to_owned()
        ],
        "kept 2 backups, and the file that is not one"
    );
    let checked = station(&home, &["backup", "check", made.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked));

    let out = station(&home, &["backup", "restore", made.to_str().unwrap()]);
    let said = text(&out);
    assert!(
        !out.status.success()
            && said.contains(
                "cannot restore now: a `station serve` is running on this home; stop it first"
            ),
        "{said}"
    );
    assert!(set_aside(&home).is_empty());

    serve.stop();
    // Stopped: the backup restores; serve's own backup entry is not a record it lacks.
    let out = station(&home, &["backup", "restore", made.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&station(&home, &["check"]));
    assert!(
        listed.contains(&format!("newest {made_name}, 0 h old, 2 kept")),
        "{listed}"
    );
}
