//! The outbox AES key made by `station init` in the real SoftHSM token, reported by
//! `station check`, usable for sealing, and made exactly once. One test function: SoftHSM
//! reads its configuration once per process, so one home per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use station::keys::{OUTBOX_KEY_LABEL, OutboxCipher};

use common::{ok, station};

fn snapshot(home: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::walk(home)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn check_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("outbox key"))
        .unwrap_or_else(|| panic!("no outbox key line in:\n{out}"))
        .to_owned()
}

#[test]
fn init_makes_the_outbox_key_once_and_check_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("H");
    ok(&home, &["init", "--actor", "tester"]);
    assert!(home.join("hsm").join("outbox-key").is_file());

    let checked = ok(&home, &["check"]);
    let l = check_line(&checked);
    assert!(
        l.contains(" ok ") && l.contains("AES-256") && l.contains("seals and opens with AES-GCM"),
        "{l}"
    );
    assert!(
        l.contains("sensitive=yes") && l.contains("extractable=no"),
        "{l}"
    );
    assert!(checked.contains("all checks passed"), "{checked}");

    // A second init changes no byte, token files included: it does not log in.
    let before = snapshot(&home);
    let again = ok(&home, &["init"]);
    assert!(again.contains("nothing changed"), "{again}");
    assert!(snapshot(&home) == before, "a second init changed files");

    let h = station::home::Home::new(&home);
    let cfg = station::config::Config::load(&h).unwrap().config;
    let hsm = station::ca::service::open_hsm(&h, &cfg).unwrap();
    {
        let s = station::ca::service::open_ca_token(&hsm, &h, &cfg).unwrap();
        assert_eq!(s.objects_labelled(OUTBOX_KEY_LABEL).unwrap().len(), 1);
        let k = s.find_secret_key(OUTBOX_KEY_LABEL).unwrap();
        let p = s.object_protection(k, OUTBOX_KEY_LABEL).unwrap();
        assert_eq!(p.sensitive, Some(true));
        assert_eq!(p.always_sensitive, Some(true));
        assert_eq!(p.extractable, Some(false));
        assert_eq!(p.never_extractable, Some(true));
        assert!(!s.secret_value_readable(k));
        let c = OutboxCipher::new(&s).unwrap();
        let sealed = c.seal(b"unit key material").unwrap();
        assert_eq!(c.open(&sealed).unwrap().as_slice(), b"unit key material");
    }

    // Without the marker, init looks again, finds the key and makes no second one.
    std::fs::remove_file(home.join("hsm").join("outbox-key")).unwrap();
    let repaired = ok(&home, &["init"]);
    assert!(repaired.contains("hsm/outbox-key"), "{repaired}");
    {
        let s = station::ca::service::open_ca_token(&hsm, &h, &cfg).unwrap();
        assert_eq!(s.objects_labelled(OUTBOX_KEY_LABEL).unwrap().len(), 1);
        // A home made before the outbox key existed: no key, no marker.
        assert_eq!(s.destroy_labelled(OUTBOX_KEY_LABEL).unwrap(), 1);
    }
    let (good, out) = {
        let o = station()
            .arg("--home")
            .arg(&home)
            .arg("check")
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert!(!good, "check must fail without the outbox key:\n{out}");
    let l = check_line(&out);
    assert!(l.contains("FAIL") || l.contains("fail"), "{l}");
    assert!(l.contains("station init"), "{l}");
    std::fs::remove_file(home.join("hsm").join("outbox-key")).unwrap();
    ok(&home, &["init"]);
    {
        let s = station::ca::service::open_ca_token(&hsm, &h, &cfg).unwrap();
        assert_eq!(s.objects_labelled(OUTBOX_KEY_LABEL).unwrap().len(), 1);
    }
    assert!(ok(&home, &["check"]).contains("all checks passed"));
    let audit = ok(&home, &["audit", "list", "--json"]);
    assert_eq!(audit.matches("station.init.repair").count(), 2, "{audit}");
}
