//! The foundation's command line, run as the real binary: init, check, audit, and every kind of
//! bad input (config, home, database, audit tampering) with the message a person sees and proof
//! that no file changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use predicates::prelude::*;
use station::ids::StationId;
use station::store::audit::{self, AuditEvent};

use common::station;

fn init_home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    station()
        .args(["init", "--home"])
        .arg(&home)
        .args(["--actor", "tester"])
        .assert()
        .success()
        .stdout(predicate::str::contains("initialised station home"));
    (dir, home)
}

/// Every file under `root` with its bytes, for "nothing changed" checks. The SoftHSM token
/// store (`hsm/tokens/`) is left out: it is the HSM's own state, and SoftHSM rewrites
/// `token.object` on every login, which `check` must do.
/// SoftHSM rewrites its token files on every login, and `check` logs in: those files are left
/// out where a command that talks to the HSM ran (`with_tokens = false`).
fn snapshot_with(root: &Path, with_tokens: bool) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let tokens = root.join("hsm").join("tokens");
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == tokens && !with_tokens {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot_with(root, false)
}

fn sqlite(db: &Path, sql: &str) {
    let out = Std::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 CLI is needed (scripts/bootstrap installs it)");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends `n` more audit entries the way the station does.
fn add_entries(home: &Path, n: usize) {
    let mut store = station::store::Store::open(
        &home.join("station.db"),
        &station::config::StoreConfig::default(),
    )
    .unwrap();
    let st = StationId::new("test-station").unwrap();
    for i in 0..n {
        let tx = store.conn_mut().transaction().unwrap();
        audit::append(
            &tx,
            &st,
            &AuditEvent {
                actor: "tester",
                event: "test.entry",
                subject: &format!("SN-{i}"),
                details: serde_json::json!({ "i": i }),
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }
}

#[test]
fn init_then_check_passes_and_a_second_init_changes_nothing() {
    let (_d, home) = init_home();
    let db = home.join("station.db");
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(home.join("config.d").is_dir());
    assert!(home.join("logs").is_dir());
    let toml = std::fs::read_to_string(home.join("station.toml")).unwrap();
    assert_eq!(toml, station::config::REFERENCE);

    station()
        .args(["check", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("all checks passed"))
        // Column width follows the longest check name, which later parts lengthen.
        .stdout(predicate::str::is_match(r"\naudit +ok +1 entries, chain intact").unwrap())
        // Whether `serve` may hold the write turn at real-time priority: this process has the
        // same rights as the one `check` runs in.
        .stdout(
            predicate::str::is_match(match station::store::priority::available() {
                Ok(()) => r"\nwrite turn +ok +real-time priority while held".to_owned(),
                Err(e) => format!(r"\nwrite turn +warn +real-time priority refused \({e}\)"),
            })
            .unwrap(),
        );

    // Turned off, it is not tried.
    std::fs::write(
        home.join("config.d/50-turn.toml"),
        "[store]\nrealtime_write_turn = false\n",
    )
    .unwrap();
    station()
        .args(["check", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r"\nwrite turn +ok +normal priority \(\[store\] realtime_write_turn = false\)",
            )
            .unwrap(),
        );
    std::fs::remove_file(home.join("config.d/50-turn.toml")).unwrap();

    // Without the right to real-time priority (here: root without CAP_SYS_NICE), the check
    // warns and says how to grant it; nothing fails.
    let root = nix::unistd::Uid::effective().is_root();
    let mut unprivileged = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--inh-caps=-sys_nice", "--bounding-set=-sys_nice"])
            .arg(station().get_program());
        for var in common::CALLER_ENV {
            c.env_remove(var);
        }
        assert_cmd::Command::from_std(c)
    } else {
        station()
    };
    unprivileged
        .args(["check", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("all checks passed"))
        .stdout(
            predicate::str::is_match(
                r"\nwrite turn +warn +real-time priority refused \(.*\): under load units wait longer for the database; give the station CAP_SYS_NICE or an RTPRIO limit of 1 \(LimitRTPRIO=1\)",
            )
            .unwrap(),
        );

    // Every file, HSM token files included: a second init does not even log in to the HSM.
    let before = snapshot_with(&home, true);
    station()
        .args(["init", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "already initialised; nothing changed",
        ));
    assert_eq!(
        snapshot_with(&home, true),
        before,
        "a second init must leave every file byte-identical"
    );

    let out = station()
        .args(["audit", "list", "--json", "--home"])
        .arg(&home)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "station.init");
    assert_eq!(lines[0]["actor"], "tester");
    assert_eq!(lines[0]["seq"], 1);

    station()
        .args(["audit", "verify", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("audit chain intact: 1 entries"));
}

#[test]
fn init_completes_a_half_made_home() {
    let (_d, home) = init_home();
    std::fs::remove_dir(home.join("config.d")).unwrap();
    station()
        .args(["init", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("created config.d"));
    station()
        .args(["audit", "list", "--home"])
        .arg(&home)
        .assert()
        .success()
        .stdout(predicate::str::contains("station.init.repair"));
}

fn check_fails_with(home: &Path, needles: &[&str]) {
    let before = snapshot(home);
    let assert = station()
        .args(["check", "--home"])
        .arg(home)
        .assert()
        .failure();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    for n in needles {
        assert!(out.contains(n), "expected {n:?} in:\n{out}");
    }
    assert_eq!(snapshot(home), before, "a failed check must change nothing");
}

#[test]
fn bad_config_names_file_and_key_and_changes_nothing() {
    let (_d, home) = init_home();
    let main = home.join("station.toml");

    std::fs::write(
        home.join("config.d/50-extra.toml"),
        "[store]\nfsync = true\n",
    )
    .unwrap();
    check_fails_with(
        &home,
        &["config", "FAIL", "50-extra.toml", "fsync", "unknown field"],
    );
    std::fs::remove_file(home.join("config.d/50-extra.toml")).unwrap();

    std::fs::write(&main, "[store]\nbusy_timeout_ms = \"soon\"\n").unwrap();
    check_fails_with(
        &home,
        &["station.toml", "store.busy_timeout_ms", "invalid type"],
    );

    std::fs::write(&main, "[store]\nsynchronous = \"sometimes\"\n").unwrap();
    check_fails_with(
        &home,
        &[
            "store.synchronous",
            "unknown variant `sometimes`",
            "`full`",
            "`normal`",
        ],
    );

    std::fs::write(&main, "[store\n").unwrap();
    check_fails_with(&home, &["station.toml", "not valid TOML"]);

    std::fs::remove_file(&main).unwrap();
    check_fails_with(&home, &["station.toml is missing", "station init"]);
}

#[test]
fn unusable_homes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    station()
        .args(["check", "--home"])
        .arg(&missing)
        .assert()
        .failure()
        .stdout(predicate::str::contains("does not exist"));
    station()
        .args(["audit", "verify", "--home"])
        .arg(&missing)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("error: station home")
                .and(predicate::str::contains("does not exist")),
        );
    assert!(!missing.exists(), "check must not create the home");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    station()
        .args(["check", "--home"])
        .arg(&file)
        .assert()
        .failure()
        .stdout(predicate::str::contains("is not a directory"));
    station()
        .args(["init", "--home"])
        .arg(&file)
        .assert()
        .failure()
        .stderr(predicate::str::contains("exists and is not a directory"));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn newer_schema_is_refused_and_untouched() {
    let (_d, home) = init_home();
    sqlite(
        &home.join("station.db"),
        "UPDATE schema_version SET version = 42;",
    );
    check_fails_with(
        &home,
        &[
            "database",
            "schema version 42",
            "newer than this station supports",
        ],
    );
    let before = snapshot(&home);
    station()
        .args(["init", "--home"])
        .arg(&home)
        .assert()
        .success();
    station()
        .args(["audit", "verify", "--home"])
        .arg(&home)
        .assert()
        .failure()
        .stderr(predicate::str::contains("schema version 42"));
    assert_eq!(snapshot(&home), before);
}

#[test]
fn corrupted_database_is_refused_and_untouched() {
    let (_d, home) = init_home();
    let db = home.join("station.db");
    let mut bytes = std::fs::read(&db).unwrap();
    // Destroy the header: the file no longer says it is a SQLite database.
    for b in bytes.iter_mut().take(100) {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    check_fails_with(
        &home,
        &["database", "FAIL", "damaged or is not a SQLite database"],
    );
    station()
        .args(["audit", "verify", "--home"])
        .arg(&home)
        .assert()
        .failure()
        .stderr(predicate::str::contains("damaged"));
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}

/// `station audit list | head -1`: once head has gone, the station ends with the status a shell
/// reports for a closed pipe (141) and prints nothing, instead of panicking with a backtrace.
/// Any other error still reaches the person: the same command on a missing home says so.
#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    let (_dir, home) = init_home();
    // `audit list` into a pipe whose reader is closed.
    let list_into_closed_pipe = |home: &Path| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = Std::new(assert_cmd::cargo::cargo_bin("station"));
        for var in common::CALLER_ENV {
            cmd.env_remove(var);
        }
        cmd.args(["audit", "list", "--home"])
            .arg(home)
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .output()
            .unwrap()
    };
    let out = list_into_closed_pipe(&home);
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = list_into_closed_pipe(&home.join("missing"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
}

/// Each kind of tampering, done with the sqlite3 CLI on the file: verify exits non-zero and
/// names the first bad entry.
#[test]
fn every_kind_of_audit_tampering_is_caught() {
    let drop = "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;";
    let cases = [
        (
            "alteration",
            "UPDATE audit_log SET details = '{\"i\":99}' WHERE seq = 3;",
            "entry 3",
            "altered",
        ),
        (
            "deletion",
            "DELETE FROM audit_log WHERE seq = 4;",
            "entry 4",
            "missing",
        ),
        (
            "truncation",
            "DELETE FROM audit_log WHERE seq >= 5;",
            "entry 5",
            "removed from the end",
        ),
        (
            "reordering",
            "UPDATE audit_log SET seq = -2 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = -2;",
            "entry 2",
            "",
        ),
        (
            "insertion",
            "INSERT INTO audit_log SELECT 7, ts, actor, station_id, event, subject, details, hash, hash FROM audit_log WHERE seq = 6;",
            "entry 7",
            "",
        ),
        (
            "insertion in the middle",
            "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 4; UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100; INSERT INTO audit_log SELECT 4, ts, 'mallory', station_id, event, subject, details, hash, hash FROM audit_log WHERE seq = 3;",
            "entry 4",
            "",
        ),
    ];
    for (kind, sql, entry, why) in cases {
        let (_d, home) = init_home();
        add_entries(&home, 5);
        station()
            .args(["audit", "verify", "--home"])
            .arg(&home)
            .assert()
            .success()
            .stdout(predicate::str::contains("intact: 6 entries"));
        sqlite(&home.join("station.db"), &format!("{drop} {sql}"));
        let out = station()
            .args(["audit", "verify", "--home"])
            .arg(&home)
            .assert()
            .failure()
            .get_output()
            .stdout
            .clone();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("BROKEN") && out.contains(entry) && out.contains(why),
            "{kind}: {out}"
        );
        check_fails_with(&home, &["audit", "FAIL", entry]);
    }
}
