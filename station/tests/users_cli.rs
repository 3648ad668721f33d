//! `station user ...` as the real binary: roles, passwords and badges from stdin or env, clear
//! errors, and no password or badge in clear anywhere in the home.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use predicates::prelude::*;
use secrecy::SecretString;
use station::config::StoreConfig;
use station::operators::{self, BadgeKey, OperatorError};
use station::store::Store;
use station::trigger::parse::Badge;

use common::station_in;

fn home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("H");
    station_in(&home).arg("init").assert().success();
    (dir, home)
}

const PASSWORD: &str = "correct-horse-battery";
const BADGE: &str = "BADGE-4711-XYZ";

#[test]
fn users_are_added_listed_and_disabled_with_secrets_kept_out_of_the_home() {
    let (_d, home) = home();
    station_in(&home)
        .args([
            "user",
            "add",
            "alice",
            "--role",
            "supervisor",
            "--name",
            "Alice A.",
            "--password-stdin",
            "--badge-stdin",
            "--actor",
            "admin",
        ])
        .write_stdin(format!("{PASSWORD}\n{BADGE}\n"))
        .assert()
        .success()
        .stdout(predicate::str::contains("added user alice (supervisor)"));
    station_in(&home)
        .args(["user", "add", "bob"])
        .env("BOB_PW", "short")
        .args(["--password-env", "BOB_PW"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("at least 8 characters"));
    station_in(&home)
        .args(["user", "add", "alice"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("user alice already exists"));
    station_in(&home)
        .args(["user", "add", "carol", "--badge-env", "CAROL_BADGE"])
        .env("CAROL_BADGE", BADGE)
        .assert()
        .failure()
        .stderr(predicate::str::contains("already assigned to user alice"));
    station_in(&home)
        .args(["user", "add", "bad name"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "user name \"bad name\" is not valid",
        ));
    station_in(&home)
        .args(["user", "passwd", "nobody", "--password-env", "X"])
        .env("X", "long-enough-pw")
        .assert()
        .failure()
        .stderr(predicate::str::contains("no user named nobody"));

    station_in(&home)
        .args(["user", "list"])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r"alice\s+supervisor\s+set\s+set\s+active\s+Alice A\.")
                .unwrap(),
        );

    // Fixture logon by badge, and web logon by password, through the library.
    let key = BadgeKey::load(&home.join("secrets/badge.key")).unwrap();
    {
        let store = Store::open(&home.join("station.db"), &StoreConfig::default()).unwrap();
        let op = operators::by_badge(store.conn(), &key, &Badge::new(SecretString::from(BADGE)))
            .unwrap();
        assert_eq!(op.username, "alice");
        assert!(matches!(
            operators::by_badge(store.conn(), &key, &Badge::new(SecretString::from("OTHER"))),
            Err(OperatorError::UnknownBadge)
        ));
        assert!(
            operators::authenticate(store.conn(), "alice", &SecretString::from(PASSWORD)).is_ok()
        );
        assert!(matches!(
            operators::authenticate(store.conn(), "alice", &SecretString::from("wrong-password")),
            Err(OperatorError::BadCredentials)
        ));
    }

    station_in(&home)
        .args(["user", "disable", "alice"])
        .assert()
        .success();
    {
        let store = Store::open(&home.join("station.db"), &StoreConfig::default()).unwrap();
        assert!(matches!(
            operators::by_badge(store.conn(), &key, &Badge::new(SecretString::from(BADGE))),
            Err(OperatorError::Disabled(u)) if u == "alice"
        ));
    }
    station_in(&home)
        .args(["audit", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("user.add").and(predicate::str::contains("user.disable")));

    // Neither secret appears in clear in any file of the home (database, WAL, config, logs).
    for entry in common::walk(&home) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in [PASSWORD, BADGE] {
            assert!(
                !common::contains(&bytes, secret.as_bytes()),
                "{secret} found in {}",
                entry.display()
            );
        }
    }
}
