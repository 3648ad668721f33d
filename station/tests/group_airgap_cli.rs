//! Enrollment groups on an air-gapped station: a product whose DPS target has
//! `delivery = "export"` is not synced (the station says where and how to make its group), and a
//! symmetric group's key is brought into the HSM with `station group import-key` from the
//! environment or standard input, never from the command line, never shown or recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ok, run, walk};

const SYM: &str = r#"
model = "SY-20"
serial_pattern = "SY-[0-9]{6}"
dps_target = "offline"
attestation = { kind = "symmetric-group" }
enrollment = { kind = "group", group_id = "sy-20-fleet" }
registration_id = "sy-{serial}"
"#;

const X509: &str = r#"
model = "SX-200"
serial_pattern = "SX-[0-9]{6}"
dps_target = "offline"
attestation = { kind = "x509-link" }
enrollment = { kind = "group", group_id = "sx-200-fleet" }
"#;

const KEY: &str = "O+H9VTcdJP0Tqkl7bh4nVG0OJNrAataMpuWB54D0VEc=";
const OTHER: &str = "Jq4lhq2vB7LqkeWZ1C2QPaY9LZ8UXkxuB1nXm1YgKNI=";

#[test]
fn an_air_gapped_group_is_made_elsewhere_and_its_key_imported_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("H");
    ok(&home, &["init", "--actor", "tester"]);
    std::fs::create_dir_all(home.join("products")).unwrap();
    std::fs::write(home.join("products/sy-20.toml"), SYM).unwrap();
    std::fs::write(home.join("products/sx-200.toml"), X509).unwrap();
    std::fs::write(
        home.join("config.d/50-offline.toml"),
        "[dps.targets.offline]\ndelivery = \"export\"\nid_scope = \"0ne00000009\"\n",
    )
    .unwrap();

    // Sync makes no DPS call for the target; it says what to do instead, and succeeds.
    let out = ok(&home, &["group", "sync", "--actor", "tester"]);
    assert!(
        out.contains("group sy-20-fleet (product sy-20, target offline): not synced")
            && out.contains("station group import-key --product sy-20 --key-env VAR"),
        "{out}"
    );
    assert!(
        out.contains("group sx-200-fleet (product sx-200, target offline): not synced")
            && out.contains("--attestation-type x509"),
        "{out}"
    );

    let import = |args: &[&str], env: &[(&str, &str)], stdin: Option<&str>| {
        let mut c = common::station();
        c.arg("--home").arg(&home).args(["group", "import-key"]);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        if let Some(text) = stdin {
            c.write_stdin(text.as_bytes().to_vec());
        }
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // `--key-env T_KEY` for `product`, with T_KEY set to `value` (unset: None).
    let from_env = |product: &str, value: Option<&str>| {
        let env: Vec<(&str, &str)> = value.map(|v| ("T_KEY", v)).into_iter().collect();
        import(
            &[
                "--product",
                product,
                "--key-env",
                "T_KEY",
                "--actor",
                "tester",
            ],
            &env,
            None,
        )
    };
    // Not given, not set, or not base64: refused by what is wrong, without the text.
    let (good, _, err) = import(&["--product", "sy-20", "--actor", "tester"], &[], None);
    assert!(!good && err.contains("--key-env"), "{err}");
    let (good, _, err) = from_env("sy-20", None);
    assert!(
        !good && err.contains("environment variable T_KEY is not set"),
        "{err}"
    );
    let (good, _, err) = from_env("sy-20", Some("not base64 at all!"));
    assert!(!good && !err.contains("not base64 at all"), "{err}");
    // An x509 group has no key.
    let (good, _, err) = from_env("sx-200", Some(KEY));
    assert!(
        !good && err.contains("product sx-200 is not enrolled in a symmetric-key group"),
        "{err}"
    );

    // The key, from the environment: imported; the same key again from stdin: already there.
    let (good, out, err) = from_env("sy-20", Some(KEY));
    assert!(good, "{out}{err}");
    assert!(
        out.contains("group sy-20-fleet (product sy-20): hsm key imported"),
        "{out}"
    );
    let (good, out, err) = import(
        &["--product", "sy-20", "--key-stdin", "--actor", "tester"],
        &[],
        Some(&format!("{KEY}\n")),
    );
    assert!(good, "{out}{err}");
    assert!(
        out.contains("hsm key already in the HSM (the same key)"),
        "{out}"
    );
    // Another key under the group's label: refused, the first one stays.
    let (good, _, err) = from_env("sy-20", Some(OTHER));
    assert!(!good && err.contains("could not be imported"), "{err}");
    let (good, _, err) = import(
        &["--product", "sy-20", "--key-stdin", "--actor", "tester"],
        &[],
        Some(""),
    );
    assert!(!good && err.contains("standard input ended"), "{err}");

    // Show asks no DPS, and reads the key's presence from the HSM.
    let out = ok(&home, &["group", "show", "--product", "sy-20"]);
    assert!(
        out.contains("in DPS:      not asked (delivery = \"export\"")
            && out.contains("hsm key:     present"),
        "{out}"
    );

    // Every attempt is audited, and the key is nowhere: not in the audit log, not in any file
    // of the home (SoftHSM's token files hold it encrypted).
    let (good, audit, _) = run(&home, &["audit", "list", "--json"]);
    assert!(good);
    assert_eq!(audit.matches("group.import-key").count(), 4, "{audit}");
    ok(&home, &["audit", "verify"]);
    for f in walk(&home) {
        let bytes = std::fs::read(&f).unwrap();
        for k in [KEY, OTHER] {
            assert!(
                !bytes.windows(k.len()).any(|w| w == k.as_bytes()),
                "{} holds a group key",
                f.display()
            );
        }
    }
}
